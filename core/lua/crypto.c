/*
 * crypto.c -- `moongate.crypto`: the primitives plugins need (JWT above
 * all), on OpenSSL: HMAC-SHA256, SHA-256, SHA-1 (Redis names scripts by
 * it: moongate.redis), RS256/ES256 signature checks,
 * base64url, and a constant-time compare. Keys arrive as PEM; parsed keys
 * are cached per PEM string (a verify per request must not re-parse).
 */
#include "lua/lua.h"

#include <lauxlib.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#define MG_KEY_CACHE 16

static struct {
    char *pem;
    EVP_PKEY *key;
} mg_key_cache[MG_KEY_CACHE];
static int mg_key_next;

static EVP_PKEY *mg_crypto_key(const char *pem, size_t len) {
    BIO *bio;
    EVP_PKEY *k;
    int i;
    for (i = 0; i < MG_KEY_CACHE; i++)
        if (mg_key_cache[i].pem && strlen(mg_key_cache[i].pem) == len &&
            memcmp(mg_key_cache[i].pem, pem, len) == 0)
            return mg_key_cache[i].key;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return NULL;
    k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (k == NULL)
        return NULL;
    i = mg_key_next++ % MG_KEY_CACHE;
    free(mg_key_cache[i].pem);
    EVP_PKEY_free(mg_key_cache[i].key);
    mg_key_cache[i].pem = strndup(pem, len);
    mg_key_cache[i].key = k;
    return k;
}

static int mg_crypto_hmac_sha256(lua_State *L) {
    size_t kl, dl;
    const char *k = luaL_checklstring(L, 1, &kl), *d = luaL_checklstring(L, 2, &dl);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int ol = 0;
    if (HMAC(EVP_sha256(), k, (int)kl, (const unsigned char *)d, dl, out, &ol) == NULL)
        return luaL_error(L, "hmac_sha256 failed");
    lua_pushlstring(L, (const char *)out, ol);
    return 1;
}

static int mg_crypto_sha256(lua_State *L) {
    size_t dl;
    const char *d = luaL_checklstring(L, 1, &dl);
    unsigned char out[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)d, dl, out);
    lua_pushlstring(L, (const char *)out, sizeof(out));
    return 1;
}

static int mg_crypto_sha1(lua_State *L) {
    size_t dl;
    const char *d = luaL_checklstring(L, 1, &dl);
    unsigned char out[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)d, dl, out);
    lua_pushlstring(L, (const char *)out, sizeof(out));
    return 1;
}

/* verify(alg, pem, data, sig): alg "RS256" or "ES256" (sig = r||s, 64 bytes). */
static int mg_crypto_verify(lua_State *L) {
    const char *alg = luaL_checkstring(L, 1);
    size_t pl, dl, sl, derlen = 0;
    const char *pem = luaL_checklstring(L, 2, &pl);
    const char *data = luaL_checklstring(L, 3, &dl);
    const char *sig = luaL_checklstring(L, 4, &sl);
    EVP_PKEY *key = mg_crypto_key(pem, pl);
    EVP_MD_CTX *ctx;
    unsigned char *der = NULL;
    const unsigned char *vsig = (const unsigned char *)sig;
    int ok, es = strcmp(alg, "ES256") == 0;

    if (!es && strcmp(alg, "RS256") != 0)
        return luaL_error(L, "crypto.verify: unsupported algorithm %s", alg);
    if (key == NULL) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "bad public key");
        return 2;
    }
    if ((es && EVP_PKEY_base_id(key) != EVP_PKEY_EC) ||
        (!es && EVP_PKEY_base_id(key) != EVP_PKEY_RSA)) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "key does not match the algorithm");
        return 2;
    }
    if (es) {
        /* JWS carries r||s; OpenSSL wants DER */
        ECDSA_SIG *es_sig;
        BIGNUM *r, *s;
        if (sl != 64) {
            lua_pushboolean(L, 0);
            lua_pushliteral(L, "bad signature length");
            return 2;
        }
        es_sig = ECDSA_SIG_new();
        r = BN_bin2bn((const unsigned char *)sig, 32, NULL);
        s = BN_bin2bn((const unsigned char *)sig + 32, 32, NULL);
        ECDSA_SIG_set0(es_sig, r, s);
        derlen = (size_t)i2d_ECDSA_SIG(es_sig, &der);
        ECDSA_SIG_free(es_sig);
        vsig = der;
        sl = derlen;
    }
    ctx = EVP_MD_CTX_new();
    ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
         EVP_DigestVerify(ctx, vsig, sl, (const unsigned char *)data, dl) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    lua_pushboolean(L, ok);
    if (!ok) {
        lua_pushliteral(L, "signature mismatch");
        return 2;
    }
    return 1;
}

static const char mg_b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int mg_crypto_b64url_encode(lua_State *L) {
    size_t n, i, o = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        char q[4] = {mg_b64url[v >> 18], mg_b64url[(v >> 12) & 63], mg_b64url[(v >> 6) & 63],
                     mg_b64url[v & 63]};
        luaL_addlstring(&b, q, 4);
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        char q[2] = {mg_b64url[v >> 18], mg_b64url[(v >> 12) & 63]};
        luaL_addlstring(&b, q, 2);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        char q[3] = {mg_b64url[v >> 18], mg_b64url[(v >> 12) & 63], mg_b64url[(v >> 6) & 63]};
        luaL_addlstring(&b, q, 3);
    }
    (void)o;
    luaL_pushresult(&b);
    return 1;
}

/* Decodes base64url (padding optional); nil, err on bad input. */
static int mg_crypto_b64url_decode(lua_State *L) {
    size_t n, i;
    const char *s = luaL_checklstring(L, 1, &n);
    uint32_t acc = 0;
    int bits = 0;
    luaL_Buffer b;
    while (n > 0 && s[n - 1] == '=')
        n--;
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        const char *p = memchr(mg_b64url, s[i], 64);
        if (p == NULL || s[i] == '\0') {
            lua_pushnil(L);
            lua_pushliteral(L, "bad base64url");
            return 2;
        }
        acc = acc << 6 | (uint32_t)(p - mg_b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            luaL_addchar(&b, (char)((acc >> bits) & 0xff));
        }
    }
    if (n % 4 == 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "bad base64url length");
        return 2;
    }
    luaL_pushresult(&b);
    return 1;
}

static int mg_crypto_equal(lua_State *L) {
    size_t al, bl, i;
    const char *a = luaL_checklstring(L, 1, &al), *b = luaL_checklstring(L, 2, &bl);
    unsigned char diff = al != bl;
    /* time depends on the first argument's length only */
    for (i = 0; i < al; i++)
        diff |= (unsigned char)(a[i] ^ (i < bl ? b[i] : 0));
    lua_pushboolean(L, diff == 0);
    return 1;
}

void mg_crypto_open_api(lua_State *L) {
    static const luaL_Reg f[] = {
        {"hmac_sha256", mg_crypto_hmac_sha256},
        {"sha256", mg_crypto_sha256},
        {"sha1", mg_crypto_sha1},
        {"verify", mg_crypto_verify},
        {"b64url_encode", mg_crypto_b64url_encode},
        {"b64url_decode", mg_crypto_b64url_decode},
        {"equal", mg_crypto_equal},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, f);
}
