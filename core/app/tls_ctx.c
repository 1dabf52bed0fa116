/*
 * tls_ctx.c -- the TLS contexts of a generation, and the session-ticket
 * keys all workers share.
 *
 * A conf or server with a `tls` table gets one context per certificate
 * (the loader read the PEM bytes through the generation's snapshot, so a
 * worker builds exactly the master's): the first is the default, and the
 * default's servername callback picks the context of the name the client
 * asked for (exact, then "*.rest" for its first label; mg_tls_sni_hook
 * first when set). An ECDSA and an RSA certificate for the same names go
 * into one context, and OpenSSL picks by the client's signature
 * algorithms. The name table hangs off the default context (ex_data), so
 * it lives as long as a connection that started on it, whatever became of
 * the generation; g->tls_ctx holds one reference per server, dropped by
 * the generation's destructor (mg_tls_ctx_free), and every SSL holds its
 * own (OpenSSL counts them): open connections keep their certificate
 * across a reload.
 *
 * Session tickets: keys in one shared mapping made by the master before it
 * forks (mg_tls_tkeys_init), so a ticket one worker issued resumes on any
 * other; the master rotates them (mg_tls_tkeys_rotate, every
 * tls.ticket_rotate seconds) and the two previous keys still decrypt.
 * Workers read the keys under a sequence counter (the master is the only
 * writer). No server-side session cache: tickets resume across workers, a
 * per-worker cache could not, and it costs memory per session.
 */
#include "app/app.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <openssl/core_names.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>

SSL_CTX *(*mg_tls_sni_hook)(const char *name);

/* ALPN: what the server offers, in its order of preference (wire format:
 * a length byte before each name). With http2 on, "h2" comes first: the
 * HTTP/1.1 session hands an h2 connection to http/h2.c after the handshake. */
static const unsigned char mg_tls_alpn[] = "\x08http/1.1";
static const unsigned char mg_tls_alpn_h2[] = "\x02h2\x08http/1.1";
/* A context not of a listener (ACME's, switched to by mg_tls_sni_hook)
 * offers what the listener the handshake came on offers: the listener's
 * contexts say whether that is h2 (ctx ex_data, set with their ALPN), the
 * servername callback copies it to the SSL before it switches (ssl
 * ex_data), and the switched-to context's ALPN callback reads it there. */
static int mg_tls_ctx_h2_idx = -1, mg_tls_ssl_h2_idx = -1;
static const char mg_tls_alpn_as_listener; /* mg_tls_alpn_cb's arg for MG_TLS_ALPN_LISTENER */

/* ---- session-ticket keys (shared memory) ---- */

#define MG_TLS_TKEYS 3 /* [0] encrypts; [1] and [2], the previous ones, still decrypt */

typedef struct {
    unsigned char name[16], aes[32], hmac[32];
} mg_tls_tkey_t;

typedef struct {
    unsigned seq; /* odd while the master writes */
    mg_tls_tkey_t key[MG_TLS_TKEYS];
} mg_tls_tkeys_t;

static mg_tls_tkeys_t *mg_tls_tkeys;

static int mg_tls_tkey_new(mg_tls_tkey_t *k) {
    return RAND_bytes(k->name, sizeof(k->name)) == 1 && RAND_bytes(k->aes, sizeof(k->aes)) == 1 &&
                   RAND_bytes(k->hmac, sizeof(k->hmac)) == 1
               ? MG_OK
               : MG_ERR;
}

int mg_tls_tkeys_init(void) {
    void *p = mmap(NULL, sizeof(mg_tls_tkeys_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return MG_ERR;
    mg_tls_tkeys = p;
    for (int i = 0; i < MG_TLS_TKEYS; i++)
        if (mg_tls_tkey_new(&mg_tls_tkeys->key[i]) != MG_OK)
            return MG_ERR;
    return MG_OK;
}

void mg_tls_tkeys_rotate(void) {
    mg_tls_tkey_t k;
    mg_tls_tkeys_t *t = mg_tls_tkeys;
    if (t == NULL || mg_tls_tkey_new(&k) != MG_OK)
        return;
    __atomic_add_fetch(&t->seq, 1, __ATOMIC_ACQ_REL);
    memmove(&t->key[1], &t->key[0], sizeof(t->key[0]) * (MG_TLS_TKEYS - 1));
    t->key[0] = k;
    __atomic_add_fetch(&t->seq, 1, __ATOMIC_RELEASE);
    OPENSSL_cleanse(&k, sizeof(k));
}

/* A consistent copy of the keys: MG_OK, or MG_ERR (none, or the master
 * kept writing, which it does for a few stores once an hour). */
static int mg_tls_tkeys_copy(mg_tls_tkey_t *out) {
    mg_tls_tkeys_t *t = mg_tls_tkeys;
    if (t == NULL)
        return MG_ERR;
    for (int tries = 0; tries < 1000; tries++) {
        unsigned s = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (s & 1)
            continue;
        memcpy(out, t->key, sizeof(t->key));
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&t->seq, __ATOMIC_RELAXED) == s)
            return MG_OK;
    }
    return MG_ERR;
}

static int mg_tls_tkey_use(const mg_tls_tkey_t *k, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                           EVP_MAC_CTX *hctx, int enc) {
    OSSL_PARAM p[3];
    p[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac));
    p[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    p[2] = OSSL_PARAM_construct_end();
    if (EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv, enc) != 1 ||
        EVP_MAC_CTX_set_params(hctx, p) != 1)
        return MG_ERR;
    return MG_OK;
}

/* OpenSSL's ticket callback: 1 (encrypted, or decrypted with the current
 * key), 2 (decrypted with an older key: issue a new ticket), 0 (unknown
 * key: a full handshake), -1 (error). */
static int mg_tls_ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                            EVP_MAC_CTX *hctx, int enc) {
    mg_tls_tkey_t k[MG_TLS_TKEYS];
    int rc = 0;
    (void)s;
    if (mg_tls_tkeys_copy(k) != MG_OK)
        return 0; /* no ticket, or a full handshake */
    if (enc) {
        memcpy(name, k[0].name, 16);
        rc = RAND_bytes(iv, 16) == 1 && /* AES-CBC's IV */
                     mg_tls_tkey_use(&k[0], iv, cctx, hctx, 1) == MG_OK
                 ? 1
                 : -1;
    } else {
        for (int i = 0; i < MG_TLS_TKEYS; i++)
            if (memcmp(name, k[i].name, 16) == 0) {
                rc = mg_tls_tkey_use(&k[i], iv, cctx, hctx, 0) != MG_OK ? -1 : i == 0 ? 1 : 2;
                break;
            }
    }
    OPENSSL_cleanse(k, sizeof(k));
    return rc;
}

/* ---- the name table of one conf/server (SNI) ---- */

typedef struct {
    char *name;   /* lower-case; "*.example.com" for a wildcard */
    SSL_CTX *ctx; /* a reference; NULL: the default context itself */
} mg_tls_name_t;

typedef struct {
    mg_tls_name_t *v; /* sorted by name */
    int n;
} mg_tls_sni_t;

static int mg_tls_sni_idx = -1;

static void mg_tls_sni_free(mg_tls_sni_t *t) {
    if (t == NULL)
        return;
    for (int i = 0; i < t->n; i++) {
        free(t->v[i].name);
        SSL_CTX_free(t->v[i].ctx);
    }
    free(t->v);
    free(t);
}

/* ex_data free: the default context goes, its table with it */
static void mg_tls_sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp) {
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    mg_tls_sni_free(ptr);
}

static int mg_tls_name_cmp(const void *a, const void *b) {
    return strcmp(((const mg_tls_name_t *)a)->name, ((const mg_tls_name_t *)b)->name);
}

static mg_tls_name_t *mg_tls_sni_find(mg_tls_sni_t *t, const char *name) {
    mg_tls_name_t key = {(char *)name, NULL};
    return t->n ? bsearch(&key, t->v, t->n, sizeof(*t->v), mg_tls_name_cmp) : NULL;
}

/* The servername callback of a default context: the context of the
 * client's name, or the default (no alert: a client that asked for a name
 * we lack sees the default certificate and decides). O(log names). */
static int mg_tls_sni_cb(SSL *ssl, int *alert, void *arg) {
    mg_tls_sni_t *t = arg;
    const char *sn = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char low[256];
    size_t n, i;
    mg_tls_name_t *e;
    (void)alert;
    if (sn == NULL || (n = strlen(sn)) == 0 || n >= sizeof(low))
        return SSL_TLSEXT_ERR_OK;
    for (i = 0; i < n; i++)
        low[i] = (sn[i] >= 'A' && sn[i] <= 'Z') ? (char)(sn[i] + 32) : sn[i];
    if (low[n - 1] == '.')
        n--;
    low[n] = '\0';
    if (mg_tls_sni_hook) {
        SSL_CTX *h = mg_tls_sni_hook(low);
        if (h) {
            int h2 = mg_tls_ctx_h2_idx >= 0 &&
                     SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), mg_tls_ctx_h2_idx) != NULL;
            if (mg_tls_ssl_h2_idx >= 0)
                SSL_set_ex_data(ssl, mg_tls_ssl_h2_idx, h2 ? (void *)mg_tls_alpn_h2 : NULL);
            SSL_set_SSL_CTX(ssl, h);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    if (t == NULL)
        return SSL_TLSEXT_ERR_OK;
    e = mg_tls_sni_find(t, low);
    if (e == NULL) {
        char *dot = strchr(low, '.');
        if (dot && dot > low) { /* "a.example.com" -> "*.example.com" */
            dot[-1] = '*';
            e = mg_tls_sni_find(t, dot - 1);
        }
    }
    if (e && e->ctx)
        SSL_set_SSL_CTX(ssl, e->ctx);
    return SSL_TLSEXT_ERR_OK;
}

int mg_tls_listener_h2(SSL *ssl) {
    return mg_tls_ssl_h2_idx >= 0 && SSL_get_ex_data(ssl, mg_tls_ssl_h2_idx) != NULL;
}

/* arg non-NULL: h2 is offered too (&mg_tls_alpn_as_listener: when the
 * listener offers it). The server's preference wins (RFC 7301 3.2): a
 * client offering both gets h2. */
static int mg_tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
    unsigned char *o;
    const unsigned char *ours;
    unsigned ourlen;
    if (arg == &mg_tls_alpn_as_listener)
        arg = mg_tls_listener_h2(ssl) ? (void *)mg_tls_alpn_h2 : NULL;
    ours = arg ? mg_tls_alpn_h2 : mg_tls_alpn;
    ourlen = arg ? sizeof(mg_tls_alpn_h2) - 1 : sizeof(mg_tls_alpn) - 1;
    if (SSL_select_next_proto(&o, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* none in common: go on without ALPN */
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

void mg_tls_ctx_set_alpn(SSL_CTX *ctx, int h2) {
    if (h2 == MG_TLS_ALPN_LISTENER) {
        if (mg_tls_ssl_h2_idx < 0)
            mg_tls_ssl_h2_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        SSL_CTX_set_alpn_select_cb(ctx, mg_tls_alpn_cb, (void *)&mg_tls_alpn_as_listener);
        return;
    }
    if (mg_tls_ctx_h2_idx < 0)
        mg_tls_ctx_h2_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (mg_tls_ctx_h2_idx >= 0)
        SSL_CTX_set_ex_data(ctx, mg_tls_ctx_h2_idx, h2 ? (void *)mg_tls_alpn_h2 : NULL);
    SSL_CTX_set_alpn_select_cb(ctx, mg_tls_alpn_cb, h2 ? (void *)mg_tls_alpn_h2 : NULL);
}

/* ---- reading the loader's tls table ---- */

/* The settings every context of one conf/server shares. */
typedef struct {
    const char *at; /* "conf/moongate.lua:12: tls", for messages */
    int min_version, max_version;
    const char *ciphers, *ciphersuites;
    int verify; /* 0 none, SSL_VERIFY_PEER [| FAIL_IF_NO_PEER_CERT] */
    const char *ca, *ca_pem;
    size_t ca_len;
    int tickets;
    int http2;       /* ALPN offers h2 before http/1.1 (tls.http2) */
    int ticket_life; /* seconds a ticket is good for */
    unsigned char sid[32];
    unsigned sid_len;
} mg_tls_opts_t;

static const char *mg_tls_field(lua_State *L, int t, const char *k, size_t *len) {
    const char *v;
    lua_getfield(L, t, k);
    v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
    lua_pop(L, 1); /* the string stays alive: t holds it */
    return v;
}

static int mg_tls_version(const char *s) {
    return s && strcmp(s, "TLSv1.2") == 0   ? TLS1_2_VERSION
           : s && strcmp(s, "TLSv1.3") == 0 ? TLS1_3_VERSION
                                            : 0;
}

/* The last OpenSSL error's reason, for a message. */
static const char *mg_tls_ossl_reason(void) {
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "not in PEM format";
}

/* Every context of a conf/server the same: a context switched to by SNI
 * serves the handshake with its own callbacks and verify store. */
static SSL_CTX *mg_tls_ctx_new(const mg_tls_opts_t *o, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: cannot create a TLS context", o->at);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, o->min_version);
    SSL_CTX_set_max_proto_version(ctx, o->max_version);
    /* an unexpected EOF reads as the end (tls.c); no renegotiation (a
     * client could make us redo handshakes at will) */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_COMPRESSION);
    if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
        snprintf(err, errlen, "%s.ciphers: no cipher of '%s' is known to OpenSSL", o->at,
                 o->ciphers);
        goto fail;
    }
    if (o->ciphersuites && SSL_CTX_set_ciphersuites(ctx, o->ciphersuites) != 1) {
        snprintf(err, errlen,
                 "%s.ciphersuites: '%s' is not a list of TLS 1.3 suites known to OpenSSL", o->at,
                 o->ciphersuites);
        goto fail;
    }
    mg_tls_ctx_set_alpn(ctx, o->http2);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, o->sid, o->sid_len);
    if (o->tickets) {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, mg_tls_ticket_cb);
        SSL_CTX_set_timeout(ctx, o->ticket_life);
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    if (o->verify) {
        BIO *b = BIO_new_mem_buf(o->ca_pem, (int)o->ca_len);
        STACK_OF(X509_INFO) *inf = b ? PEM_X509_INFO_read_bio(b, NULL, NULL, NULL) : NULL;
        STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
        X509_STORE *st = SSL_CTX_get_cert_store(ctx);
        int n = 0;
        for (int i = 0; inf && i < sk_X509_INFO_num(inf); i++) {
            X509_INFO *xi = sk_X509_INFO_value(inf, i);
            if (xi->x509 == NULL)
                continue;
            X509_STORE_add_cert(st, xi->x509);
            if (names) {
                X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(xi->x509));
                if (nm && !sk_X509_NAME_push(names, nm))
                    X509_NAME_free(nm);
            }
            n++;
        }
        sk_X509_INFO_pop_free(inf, X509_INFO_free);
        BIO_free(b);
        if (n == 0) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            snprintf(err, errlen, "%s.client_certificate.ca: %s: no PEM certificate in it", o->at,
                     o->ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
        SSL_CTX_set_verify(ctx, o->verify, NULL);
        SSL_CTX_set_verify_depth(ctx, 8);
    }
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* The DNS names of x, lower-case: its subjectAltName DNS entries, or its
 * CN when it has none. Returns the count (at most max). */
static int mg_tls_cert_names(X509 *x, char **out, int max) {
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = 0;
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && n < max; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int l = ASN1_STRING_length(g->d.dNSName);
            if (l > 0 && l < 256 && memchr(d, 0, (size_t)l) == NULL)
                out[n++] = strndup((const char *)d, (size_t)l);
        }
    }
    GENERAL_NAMES_free(sans);
    if (n == 0) {
        char cn[256];
        int l = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
        if (l > 0 && (size_t)l < sizeof(cn))
            out[n++] = strdup(cn);
    }
    for (int i = 0; i < n; i++)
        for (char *p = out[i]; p && *p; p++)
            *p = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
    return n;
}

/* ASN1_TIME as text ("Jan  1 00:00:00 2020 GMT"). */
static void mg_tls_time_text(const ASN1_TIME *t, char *out, size_t len) {
    BIO *b = BIO_new(BIO_s_mem());
    int n = b && ASN1_TIME_print(b, t) ? BIO_read(b, out, (int)len - 1) : -1;
    out[n > 0 ? n : 0] = '\0';
    BIO_free(b);
}

int mg_tls_ctx_add_pem(SSL_CTX *ctx, const char *cert_pem, size_t cert_len, const char *key_pem,
                       size_t key_len, const char *cert_name, const char *key_name, char *err,
                       size_t errlen) {
    BIO *b = BIO_new_mem_buf(cert_pem, (int)cert_len);
    X509 *leaf = b ? PEM_read_bio_X509_AUX(b, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    char when[64];
    int rc = MG_ERR;

    if (leaf == NULL) {
        snprintf(err, errlen, "%s: no PEM certificate in it (%s)", cert_name, mg_tls_ossl_reason());
        goto done;
    }
    for (;;) { /* the rest of the file: the chain, leaf first */
        X509 *c = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (c == NULL)
            break;
        if (chain == NULL || !sk_X509_push(chain, c)) {
            X509_free(c);
            snprintf(err, errlen, "%s: out of memory", cert_name);
            goto done;
        }
    }
    ERR_clear_error(); /* the end of the file reads as an error */
    BIO_free(b);
    b = BIO_new_mem_buf(key_pem, (int)key_len);
    key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"") : NULL;
    if (key == NULL) {
        snprintf(err, errlen, "%s: no PEM private key in it, or one with a passphrase (%s)",
                 key_name, mg_tls_ossl_reason());
        goto done;
    }
    if (X509_check_private_key(leaf, key) != 1) {
        snprintf(err, errlen, "%s: the key does not match the certificate in %s", key_name,
                 cert_name);
        goto done;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        mg_tls_time_text(X509_get0_notAfter(leaf), when, sizeof(when));
        snprintf(err, errlen, "%s: the certificate expired on %s", cert_name, when);
        goto done;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        mg_tls_time_text(X509_get0_notBefore(leaf), when, sizeof(when));
        snprintf(err, errlen, "%s: the certificate is not valid before %s", cert_name, when);
        goto done;
    }
    /* the key selects its slot (RSA, ECDSA...): the chain goes with it */
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_set1_chain(ctx, chain) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s: OpenSSL refuses it: %s", cert_name, mg_tls_ossl_reason());
        goto done;
    }
    rc = MG_OK;
done:
    ERR_clear_error();
    BIO_free(b);
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

/* One context per set of names: certificates of different key types for
 * the same names share one. */
#define MG_TLS_MAX_NAMES 1024 /* DNS names read from one certificate */

typedef struct {
    SSL_CTX *ctx;
    char **names;
    int nnames;
    unsigned types; /* bit per key type held */
} mg_tls_group_t;

static unsigned mg_tls_key_type(const char *cert_pem, size_t len) {
    BIO *b = BIO_new_mem_buf(cert_pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = x ? X509_get0_pubkey(x) : NULL;
    int id = k ? EVP_PKEY_get_base_id(k) : 0;
    X509_free(x);
    BIO_free(b);
    ERR_clear_error();
    return id == EVP_PKEY_RSA ? 1u : id == EVP_PKEY_EC ? 2u : id == EVP_PKEY_RSA_PSS ? 4u : 8u;
}

static int mg_tls_same_names(const mg_tls_group_t *g, char **names, int n) {
    if (g->nnames != n)
        return 0;
    for (int i = 0; i < n; i++) {
        int found = 0;
        for (int k = 0; k < n && !found; k++)
            found = strcmp(names[i], g->names[k]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

static void mg_tls_names_free(char **v, int n) {
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Reads the settings of the tls table at t. MG_OK or MG_ERR (err set). */
static int mg_tls_read_opts(lua_State *L, int t, int server, mg_tls_opts_t *o, char *err,
                            size_t errlen) {
    size_t len;
    memset(o, 0, sizeof(*o));
    o->at = mg_tls_field(L, t, "at", &len);
    if (o->at == NULL)
        o->at = "tls";
    o->min_version = TLS1_2_VERSION;
    o->max_version = TLS1_3_VERSION;
    lua_getfield(L, t, "protocols");
    if (lua_istable(L, -1)) {
        int n = (int)lua_objlen(L, -1), lo = 0, hi = 0;
        for (int i = 1; i <= n; i++) {
            int v;
            lua_rawgeti(L, -1, i);
            v = mg_tls_version(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (v && (lo == 0 || v < lo))
                lo = v;
            if (v > hi)
                hi = v;
        }
        if (lo) {
            o->min_version = lo;
            o->max_version = hi;
        }
    }
    lua_pop(L, 1);
    o->ciphers = mg_tls_field(L, t, "ciphers", &len);
    o->ciphersuites = mg_tls_field(L, t, "ciphersuites", &len);
    lua_getfield(L, t, "session_tickets");
    o->tickets = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "http2");
    o->http2 = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "ticket_lifetime");
    o->ticket_life = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : 7200;
    lua_pop(L, 1);
    lua_getfield(L, t, "client_certificate");
    if (lua_istable(L, -1)) {
        int c = lua_gettop(L);
        const char *v = mg_tls_field(L, c, "verify", &len);
        o->ca = mg_tls_field(L, c, "ca", &len);
        o->ca_pem = mg_tls_field(L, c, "ca_pem", &o->ca_len);
        o->verify = SSL_VERIFY_PEER;
        if (v && strcmp(v, "required") == 0)
            o->verify |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        if (o->ca_pem == NULL) {
            snprintf(err, errlen, "%s.client_certificate: no CA file read", o->at);
            lua_pop(L, 1);
            return MG_ERR;
        }
    }
    lua_pop(L, 1); /* the table stays alive: t holds it */
    /* the session id context: a session (ticket) resumes only on the conf
     * or server that made it; from its name, which a reload keeps (its
     * position in servers may change) */
    {
        const char *sid = mg_tls_field(L, t, "sid", &len);
        char dflt[32];
        unsigned int n = 0;
        if (sid == NULL) {
            snprintf(dflt, sizeof(dflt), "server %d", server);
            sid = dflt;
            len = strlen(dflt);
        }
        if (EVP_Digest(sid, len, o->sid, &n, EVP_sha256(), NULL) != 1 || n > sizeof(o->sid))
            n = 0;
        o->sid_len = n;
    }
    return MG_OK;
}

/* Builds the contexts of one certificates entry into groups. */
static int mg_tls_read_cert(lua_State *L, int e, int idx, const mg_tls_opts_t *o,
                            mg_tls_group_t *gs, int *ngs, char *err, size_t errlen) {
    size_t cl = 0, kl = 0, dummy;
    const char *cert = mg_tls_field(L, e, "cert", &dummy);
    const char *key = mg_tls_field(L, e, "key", &dummy);
    const char *cpem = mg_tls_field(L, e, "cert_pem", &cl);
    const char *kpem = mg_tls_field(L, e, "key_pem", &kl);
    const char *at = mg_tls_field(L, e, "at", &dummy);
    size_t dl = 0;
    const char *ocsp = mg_tls_field(L, e, "ocsp", &dummy);
    const char *der = mg_tls_field(L, e, "ocsp_der", &dl);
    char **names = calloc(MG_TLS_MAX_NAMES, sizeof(char *)), e2[400];
    int n, i;
    unsigned type;
    mg_tls_group_t *g = NULL;
    X509 *x;
    BIO *b;

    if (names == NULL || cpem == NULL || kpem == NULL) {
        free(names);
        snprintf(err, errlen, "%s: certificate #%d not read", o->at, idx);
        return MG_ERR;
    }
    b = BIO_new_mem_buf(cpem, (int)cl);
    x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    n = x ? mg_tls_cert_names(x, names, MG_TLS_MAX_NAMES) : 0;
    X509_free(x);
    ERR_clear_error();
    type = mg_tls_key_type(cpem, cl);
    for (i = 0; i < *ngs && g == NULL; i++)
        if (n > 0 && !(gs[i].types & type) && mg_tls_same_names(&gs[i], names, n))
            g = &gs[i];
    if (g == NULL) {
        g = &gs[*ngs];
        memset(g, 0, sizeof(*g));
        g->ctx = mg_tls_ctx_new(o, err, errlen);
        if (g->ctx == NULL) {
            mg_tls_names_free(names, n);
            return MG_ERR;
        }
        g->names = names;
        g->nnames = n;
        (*ngs)++;
        names = NULL;
    }
    if (mg_tls_ctx_add_pem(g->ctx, cpem, cl, kpem, kl, cert ? cert : "?", key ? key : "?", e2,
                           sizeof(e2)) != MG_OK) {
        snprintf(err, errlen, "%s: %s", at ? at : o->at, e2);
        if (names)
            mg_tls_names_free(names, n);
        return MG_ERR;
    }
    if (ocsp && mg_tls_ocsp_staple(g->ctx, NULL, ocsp, der ? der : "", der ? dl : 0, e2,
                                   sizeof(e2)) != MG_OK) { /* tls_ocsp.c */
        snprintf(err, errlen, "%s: %s", at ? at : o->at, e2);
        if (names)
            mg_tls_names_free(names, n);
        return MG_ERR;
    }
    g->types |= type;
    if (names)
        mg_tls_names_free(names, n);
    if (g->nnames == 0 && idx > 1) {
        snprintf(err, errlen,
                 "%s: %s: the certificate names no DNS name (subjectAltName or CN): only the "
                 "first, the default, may lack one",
                 at ? at : o->at, cert ? cert : "?");
        return MG_ERR;
    }
    return MG_OK;
}

/* The name table: every name of every group, the first group to name one
 * keeps it. Set on the default context (groups[0]). */
static int mg_tls_sni_build(mg_tls_group_t *gs, int ngs) {
    mg_tls_sni_t *t = calloc(1, sizeof(*t));
    int total = 0, i, k;
    if (t == NULL)
        return MG_ERR;
    for (i = 0; i < ngs; i++)
        total += gs[i].nnames;
    t->v = calloc(total ? total : 1, sizeof(*t->v));
    if (t->v == NULL) {
        free(t);
        return MG_ERR;
    }
    for (i = 0; i < ngs; i++)
        for (k = 0; k < gs[i].nnames; k++) {
            mg_tls_name_t e = {gs[i].names[k], NULL};
            int dup = 0;
            for (int j = 0; j < t->n && !dup; j++)
                dup = strcmp(t->v[j].name, e.name) == 0;
            if (dup)
                continue;
            e.name = strdup(e.name);
            if (e.name == NULL)
                continue;
            if (i > 0) {
                SSL_CTX_up_ref(gs[i].ctx);
                e.ctx = gs[i].ctx;
            }
            t->v[t->n++] = e;
        }
    qsort(t->v, t->n, sizeof(*t->v), mg_tls_name_cmp);
    if (mg_tls_sni_idx < 0)
        mg_tls_sni_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, mg_tls_sni_ex_free);
    if (mg_tls_sni_idx < 0 || SSL_CTX_set_ex_data(gs[0].ctx, mg_tls_sni_idx, t) != 1) {
        mg_tls_sni_free(t);
        return MG_ERR;
    }
    SSL_CTX_set_tlsext_servername_callback(gs[0].ctx, mg_tls_sni_cb);
    SSL_CTX_set_tlsext_servername_arg(gs[0].ctx, t);
    return MG_OK;
}

int mg_tls_ctx_load(mg_gen_t *g, lua_State *L, int t, int server, char *err, size_t errlen) {
    mg_tls_opts_t o;
    mg_tls_group_t *gs = NULL;
    int ngs = 0, n, i, rc = MG_ERR;
    void **v;

    if (mg_tls_read_opts(L, t, server, &o, err, errlen) != MG_OK)
        return MG_ERR;
    lua_getfield(L, t, "certificates");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    if (n == 0) {
        lua_pop(L, 1);
        return MG_OK; /* settings only (the main conf's, for ticket_rotate) */
    }
    gs = calloc((size_t)n, sizeof(*gs));
    if (gs == NULL) {
        snprintf(err, errlen, "out of memory");
        lua_pop(L, 1);
        return MG_ERR;
    }
    for (i = 1; i <= n; i++) {
        int e;
        lua_rawgeti(L, -1, i);
        e = lua_gettop(L);
        rc = mg_tls_read_cert(L, e, i, &o, gs, &ngs, err, errlen);
        /* the key's bytes need not outlive the load in the Lua state */
        lua_pushnil(L);
        lua_setfield(L, e, "key_pem");
        lua_pop(L, 1);
        if (rc != MG_OK)
            break;
    }
    lua_pop(L, 1);
    if (rc == MG_OK && mg_tls_sni_build(gs, ngs) != MG_OK) {
        snprintf(err, errlen, "%s: out of memory", o.at);
        rc = MG_ERR;
    }
    if (rc == MG_OK) {
        if (server >= g->ntls_ctx) {
            v = realloc(g->tls_ctx, sizeof(void *) * (size_t)(server + 1));
            if (v == NULL) {
                snprintf(err, errlen, "out of memory");
                rc = MG_ERR;
            } else {
                memset(v + g->ntls_ctx, 0, sizeof(void *) * (size_t)(server + 1 - g->ntls_ctx));
                g->tls_ctx = v;
                g->ntls_ctx = server + 1;
            }
        }
    }
    if (rc == MG_OK) {
        SSL_CTX_free(g->tls_ctx[server]);
        g->tls_ctx[server] = gs[0].ctx; /* the table holds the others */
        gs[0].ctx = NULL;
    }
    /* the group's references: the table took its own */
    for (i = 0; i < ngs; i++) {
        SSL_CTX_free(gs[i].ctx);
        mg_tls_names_free(gs[i].names, gs[i].nnames);
    }
    free(gs);
    return rc;
}

void mg_tls_ctx_free(mg_gen_t *g) {
    for (int i = 0; i < g->ntls_ctx; i++)
        SSL_CTX_free(g->tls_ctx[i]);
    free(g->tls_ctx);
    g->tls_ctx = NULL;
    g->ntls_ctx = 0;
}

/* ---- metrics ---- */

double mg_tls_not_after(void *sslctx) {
    SSL_CTX *ctx = sslctx;
    X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
    struct tm tm;
    if (x == NULL || !ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm))
        return 0;
    return (double)timegm(&tm);
}

/* Each name the serving generation's certificates cover, by server (0:
 * the main conf), with its certificate's notAfter; read at scrape time. */
void mg_tls_ctx_metrics(struct evbuffer *out) {
    mg_gen_t *g = mg_gen_current;
    evbuffer_add_printf(out, "# HELP moongate_tls_certificate_expiry_timestamp_seconds Unix time "
                             "a served certificate expires (notAfter), by server and name.\n"
                             "# TYPE moongate_tls_certificate_expiry_timestamp_seconds gauge\n");
    for (int s = 0; g && s < g->ntls_ctx; s++) {
        SSL_CTX *d = g->tls_ctx[s];
        mg_tls_sni_t *t = d && mg_tls_sni_idx >= 0 ? SSL_CTX_get_ex_data(d, mg_tls_sni_idx) : NULL;
        for (int i = 0; t && i < t->n; i++) {
            double na = mg_tls_not_after(t->v[i].ctx ? t->v[i].ctx : d);
            if (na > 0 && strpbrk(t->v[i].name, "\"\\\n") == NULL)
                evbuffer_add_printf(
                    out,
                    "moongate_tls_certificate_expiry_timestamp_seconds{server=\"%d\","
                    "name=\"%s\"} %.0f\n",
                    s, t->v[i].name, na);
        }
    }
    mg_acme_metrics(out); /* the ACME certificates this worker serves (acme_tls.c) */
}
