/*
 * acme_crypto.c -- what the ACME protocol needs of OpenSSL, for the ACME
 * process's Lua (lib/moongate/acme.lua): P-256 keys (new, from PEM, to PEM,
 * the public point for the JWK), ES256 signatures in the JWS form (RFC 7518
 * 3.4: r||s, 32 bytes each, not DER), a CSR for a list of DNS names (RFC
 * 8555 7.4), and a certificate's facts (validity, serial, issuer).
 * Misuse raises; a failure of the input (a bad PEM) returns nil, reason.
 */
#include "app/acme_int.h"

#include <lauxlib.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MG_ACME_KEY_MT "moongate.acme.key"

static int mg_acme_ssl_fail(lua_State *L, const char *what) {
    char buf[256];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, e ? buf : "failed");
    return 2;
}

static EVP_PKEY *mg_acme_key_check(lua_State *L, int idx) {
    EVP_PKEY **k = luaL_checkudata(L, idx, MG_ACME_KEY_MT);
    if (*k == NULL)
        luaL_error(L, "acme: key freed");
    return *k;
}

static void mg_acme_key_push(lua_State *L, EVP_PKEY *pk) {
    EVP_PKEY **k = lua_newuserdata(L, sizeof(*k));
    *k = pk;
    luaL_getmetatable(L, MG_ACME_KEY_MT);
    lua_setmetatable(L, -2);
}

static int mg_acme_key_gc(lua_State *L) {
    EVP_PKEY **k = luaL_checkudata(L, 1, MG_ACME_KEY_MT);
    EVP_PKEY_free(*k);
    *k = NULL;
    return 0;
}

/* key_new() -> a fresh P-256 key */
static int mg_acme_key_new(lua_State *L) {
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    if (pk == NULL)
        return mg_acme_ssl_fail(L, "P-256 key generation");
    mg_acme_key_push(L, pk);
    return 1;
}

/* key_load(pem) -> key, or nil, reason (a P-256 key only: ES256 is what
 * this client signs with) */
static int mg_acme_key_load(lua_State *L) {
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    BIO *b = BIO_new_mem_buf(pem, (int)n);
    EVP_PKEY *pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    char curve[32] = "";
    size_t cl = 0;
    BIO_free(b);
    if (pk == NULL)
        return mg_acme_ssl_fail(L, "not a PEM private key");
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_EC ||
        !EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve),
                                        &cl) ||
        strcmp(curve, "prime256v1") != 0) {
        EVP_PKEY_free(pk);
        lua_pushnil(L);
        lua_pushliteral(L, "not a P-256 (prime256v1) EC key");
        return 2;
    }
    mg_acme_key_push(L, pk);
    return 1;
}

/* key:pem() -> the private key as PKCS#8 PEM */
static int mg_acme_key_pem(lua_State *L) {
    EVP_PKEY *pk = mg_acme_key_check(L, 1);
    BIO *b = BIO_new(BIO_s_mem());
    char *p;
    long n;
    if (b == NULL || !PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(b);
        return mg_acme_ssl_fail(L, "PEM_write_bio_PrivateKey");
    }
    n = BIO_get_mem_data(b, &p);
    lua_pushlstring(L, p, (size_t)n);
    BIO_free(b);
    return 1;
}

/* key:point() -> x, y: the public point's coordinates, 32 bytes each */
static int mg_acme_key_point(lua_State *L) {
    EVP_PKEY *pk = mg_acme_key_check(L, 1);
    BIGNUM *x = NULL, *y = NULL;
    unsigned char bx[32], by[32];
    int ok = EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_X, &x) &&
             EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_Y, &y) &&
             BN_bn2binpad(x, bx, 32) == 32 && BN_bn2binpad(y, by, 32) == 32;
    BN_free(x);
    BN_free(y);
    if (!ok)
        return mg_acme_ssl_fail(L, "EC public point");
    lua_pushlstring(L, (const char *)bx, 32);
    lua_pushlstring(L, (const char *)by, 32);
    return 2;
}

/* key:sign(data) -> the ES256 signature r||s (64 bytes) */
static int mg_acme_key_sign(lua_State *L) {
    EVP_PKEY *pk = mg_acme_key_check(L, 1);
    size_t dl, sl = 0;
    const char *d = luaL_checklstring(L, 2, &dl);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80], raw[64];
    const unsigned char *p = der;
    ECDSA_SIG *sig = NULL;
    const BIGNUM *r, *s;
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
             EVP_DigestSign(md, NULL, &sl, (const unsigned char *)d, dl) == 1 &&
             sl <= sizeof(der) && EVP_DigestSign(md, der, &sl, (const unsigned char *)d, dl) == 1;
    EVP_MD_CTX_free(md);
    if (ok && (sig = d2i_ECDSA_SIG(NULL, &p, (long)sl)) != NULL) {
        ECDSA_SIG_get0(sig, &r, &s);
        ok = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32;
        ECDSA_SIG_free(sig);
    } else {
        ok = 0;
    }
    if (!ok)
        return mg_acme_ssl_fail(L, "ES256 signature");
    lua_pushlstring(L, (const char *)raw, 64);
    return 1;
}

/* csr(key, {names}) -> DER of a CSR for these DNS names (the first is the
 * subject's CN too), signed with key */
static int mg_acme_csr(lua_State *L) {
    EVP_PKEY *pk = mg_acme_key_check(L, 1);
    X509_REQ *req = NULL;
    X509_NAME *subj;
    X509_EXTENSION *ext = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    luaL_Buffer san;
    const char *first = NULL;
    unsigned char *der = NULL;
    int n, len, i;

    luaL_checktype(L, 2, LUA_TTABLE);
    n = (int)lua_objlen(L, 2);
    if (n < 1 || n > 100)
        return luaL_error(L, "acme csr: 1 to 100 names");
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "acme csr: names must be strings");
        if (i == 1)
            first = lua_tostring(L, -1); /* kept alive: the table holds it */
        lua_pop(L, 1);
    }
    luaL_buffinit(L, &san);
    for (i = 1; i <= n; i++) {
        luaL_addstring(&san, i > 1 ? ",DNS:" : "DNS:");
        lua_rawgeti(L, 2, i);
        luaL_addvalue(&san);
    }
    luaL_pushresult(&san);
    req = X509_REQ_new();
    if (req == NULL || !X509_REQ_set_version(req, 0))
        goto fail;
    subj = X509_REQ_get_subject_name(req);
    if (!X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)first, -1, -1,
                                    0))
        goto fail;
    ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, lua_tostring(L, -1));
    exts = sk_X509_EXTENSION_new_null();
    if (ext == NULL || exts == NULL || !sk_X509_EXTENSION_push(exts, ext))
        goto fail;
    if (!X509_REQ_add_extensions(req, exts) || !X509_REQ_set_pubkey(req, pk) ||
        X509_REQ_sign(req, pk, EVP_sha256()) <= 0)
        goto fail;
    len = i2d_X509_REQ(req, &der);
    if (len <= 0)
        goto fail;
    lua_pushlstring(L, (const char *)der, (size_t)len);
    OPENSSL_free(der);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return 1;
fail:
    if (exts)
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    else
        X509_EXTENSION_free(ext);
    X509_REQ_free(req);
    return mg_acme_ssl_fail(L, "CSR");
}

static int mg_acme_asn1_time(const ASN1_TIME *t, double *out) {
    struct tm tm;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    *out = (double)timegm(&tm);
    return 1;
}

/* cert_info(pem) -> {not_before, not_after (Unix seconds), serial (hex),
 * issuer, subject, count (certificates in the chain)}, or nil, reason */
static int mg_acme_cert_info(lua_State *L) {
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    BIO *b = BIO_new_mem_buf(pem, (int)n);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL, *more;
    double nb, na;
    char name[512];
    BIGNUM *bn;
    char *hex;
    int count = 1;
    if (x == NULL) {
        BIO_free(b);
        return mg_acme_ssl_fail(L, "no PEM certificate");
    }
    while ((more = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        X509_free(more);
        count++;
    }
    ERR_clear_error(); /* the end of the PEM data */
    BIO_free(b);
    if (!mg_acme_asn1_time(X509_get0_notBefore(x), &nb) ||
        !mg_acme_asn1_time(X509_get0_notAfter(x), &na)) {
        X509_free(x);
        lua_pushnil(L);
        lua_pushliteral(L, "unreadable validity dates");
        return 2;
    }
    lua_createtable(L, 0, 6);
    lua_pushnumber(L, nb);
    lua_setfield(L, -2, "not_before");
    lua_pushnumber(L, na);
    lua_setfield(L, -2, "not_after");
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    hex = bn ? BN_bn2hex(bn) : NULL;
    lua_pushstring(L, hex ? hex : "");
    lua_setfield(L, -2, "serial");
    OPENSSL_free(hex);
    BN_free(bn);
    X509_NAME_oneline(X509_get_issuer_name(x), name, sizeof(name));
    lua_pushstring(L, name);
    lua_setfield(L, -2, "issuer");
    X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
    lua_pushstring(L, name);
    lua_setfield(L, -2, "subject");
    lua_pushinteger(L, count);
    lua_setfield(L, -2, "count");
    X509_free(x);
    return 1;
}

/* alpn_cert(key, name, digest) -> the PEM of the tls-alpn-01 certificate
 * (RFC 8737 3): self-signed with key, for name, valid a day, with the
 * critical acmeIdentifier extension holding the 32-byte digest (SHA-256
 * of the key authorization) as a DER OCTET STRING */
static int mg_acme_alpn_cert(lua_State *L) {
    EVP_PKEY *pk = mg_acme_key_check(L, 1);
    const char *name = luaL_checkstring(L, 2);
    size_t dl;
    const char *digest = luaL_checklstring(L, 3, &dl);
    unsigned char der[34], serial[16];
    X509 *x = NULL;
    X509_NAME *subj;
    X509_EXTENSION *san = NULL, *id = NULL;
    ASN1_OBJECT *oid = NULL;
    ASN1_OCTET_STRING *os = NULL;
    BIGNUM *bn = NULL;
    BIO *b = NULL;
    char *p, sanv[300];
    long n;
    int ok = 0;
    if (dl != 32)
        return luaL_error(L, "acme alpn_cert: the digest is 32 bytes");
    if (strlen(name) > 253)
        return luaL_error(L, "acme alpn_cert: name too long");
    der[0] = 0x04; /* OCTET STRING, 32 bytes */
    der[1] = 0x20;
    memcpy(der + 2, digest, 32);
    snprintf(sanv, sizeof(sanv), "DNS:%s", name);
    x = X509_new();
    subj = x ? X509_get_subject_name(x) : NULL;
    if (x == NULL || !X509_set_version(x, 2) || RAND_bytes(serial, sizeof(serial)) != 1)
        goto fail;
    serial[0] &= 0x7f; /* positive */
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (bn == NULL || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 86400) ||
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, subj) || !X509_set_pubkey(x, pk))
        goto fail;
    san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, sanv);
    oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1); /* id-pe-acmeIdentifier */
    os = ASN1_OCTET_STRING_new();
    if (san == NULL || oid == NULL || os == NULL || !ASN1_OCTET_STRING_set(os, der, sizeof(der)))
        goto fail;
    id = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, os);
    if (id == NULL || !X509_add_ext(x, san, -1) || !X509_add_ext(x, id, -1) ||
        X509_sign(x, pk, EVP_sha256()) <= 0)
        goto fail;
    b = BIO_new(BIO_s_mem());
    if (b == NULL || !PEM_write_bio_X509(b, x))
        goto fail;
    n = BIO_get_mem_data(b, &p);
    lua_pushlstring(L, p, (size_t)n);
    ok = 1;
fail:
    BIO_free(b);
    X509_EXTENSION_free(san);
    X509_EXTENSION_free(id);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(os);
    BN_free(bn);
    X509_free(x);
    return ok ? 1 : mg_acme_ssl_fail(L, "tls-alpn-01 certificate");
}

void mg_acme_crypto_open(lua_State *L) {
    static const luaL_Reg m[] = {
        {"pem", mg_acme_key_pem},
        {"point", mg_acme_key_point},
        {"sign", mg_acme_key_sign},
        {NULL, NULL},
    };
    luaL_newmetatable(L, MG_ACME_KEY_MT);
    luaL_register(L, NULL, m);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, mg_acme_key_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_pushcfunction(L, mg_acme_key_new);
    lua_setfield(L, -2, "key_new");
    lua_pushcfunction(L, mg_acme_key_load);
    lua_setfield(L, -2, "key_load");
    lua_pushcfunction(L, mg_acme_csr);
    lua_setfield(L, -2, "csr");
    lua_pushcfunction(L, mg_acme_cert_info);
    lua_setfield(L, -2, "cert_info");
    lua_pushcfunction(L, mg_acme_alpn_cert);
    lua_setfield(L, -2, "alpn_cert");
}
