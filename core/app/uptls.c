/*
 * uptls.c -- the TLS side of upstreams with https:// or wss:// servers:
 * at load, one client SSL_CTX per such upstream from its `tls` table (the
 * loader read the files through the load's snapshot and passes their
 * bytes, so every process parses the master's bytes). What OpenSSL refuses
 * (no certificate in a CA file, a key that does not match its
 * certificate, ...) refuses the generation with "file: reason". The
 * contexts and the sessions kept for resumption belong to the generation
 * and go with its destructor; connections still open keep theirs
 * (OpenSSL counts an SSL's references to its context).
 *
 * An upstream that verifies against the system's store, with its servers'
 * own names and no client certificate, shares the process's default client
 * context (net/tls.c), as moongate.http.request's https:// URLs do (so they
 * share pooled connections too); every other one gets its own (sharing the
 * system's store when it uses it). A pooled connection is only reused with
 * the context it was made with.
 */
#include "app/app.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* "file: reason" from OpenSSL's queue (cleared), or `dflt`. */
static int mg_uptls_err(char *err, size_t errlen, const char *file, const char *dflt) {
    unsigned long e = ERR_peek_last_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s", file, why ? why : dflt);
    return MG_ERR;
}

static BIO *mg_uptls_bio(lua_State *L, int t, const char *k) {
    size_t n;
    const char *pem;
    lua_getfield(L, t, k);
    pem = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* the string stays in the table (and the BIO reads it now) */
    return pem ? BIO_new_mem_buf(pem, (int)n) : NULL;
}

/* The CA certificates of `file` (PEM, one or more) become the trusted store. */
static int mg_uptls_ca(SSL_CTX *c, lua_State *L, int t, const char *file, char *err,
                       size_t errlen) {
    BIO *b = mg_uptls_bio(L, t, "ca_pem");
    X509_STORE *st = SSL_CTX_get_cert_store(c);
    X509 *x;
    int n = 0;
    if (b == NULL)
        return mg_uptls_err(err, errlen, file, "out of memory");
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_cert(st, x);
        X509_free(x);
        if (!ok) {
            BIO_free(b);
            return mg_uptls_err(err, errlen, file, "cannot add the certificate");
        }
        n++;
    }
    BIO_free(b);
    ERR_clear_error(); /* the end of the PEM data */
    if (n == 0) {
        snprintf(err, errlen, "%s: no PEM certificate found", file);
        return MG_ERR;
    }
    return MG_OK;
}

/* The client certificate (with its chain) and its key. */
static int mg_uptls_cert(SSL_CTX *c, lua_State *L, int t, const char *cfile, const char *kfile,
                         char *err, size_t errlen) {
    BIO *b = mg_uptls_bio(L, t, "cert_pem");
    X509 *x;
    EVP_PKEY *k;
    if (b == NULL)
        return mg_uptls_err(err, errlen, cfile, "out of memory");
    x = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
    if (x == NULL || SSL_CTX_use_certificate(c, x) != 1) {
        X509_free(x);
        BIO_free(b);
        return mg_uptls_err(err, errlen, cfile, "no PEM certificate found");
    }
    X509_free(x);
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
        if (SSL_CTX_add0_chain_cert(c, x) != 1) {
            X509_free(x);
            BIO_free(b);
            return mg_uptls_err(err, errlen, cfile, "bad chain certificate");
        }
    BIO_free(b);
    ERR_clear_error();
    b = mg_uptls_bio(L, t, "key_pem");
    if (b == NULL)
        return mg_uptls_err(err, errlen, kfile, "out of memory");
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (k == NULL || SSL_CTX_use_PrivateKey(c, k) != 1) {
        EVP_PKEY_free(k);
        return mg_uptls_err(err, errlen, kfile, "no PEM private key found");
    }
    EVP_PKEY_free(k);
    if (SSL_CTX_check_private_key(c) != 1)
        return mg_uptls_err(err, errlen, kfile, "the key does not match the certificate");
    return MG_OK;
}

static char *mg_uptls_str(lua_State *L, int t, const char *k) {
    char *v = NULL;
    lua_getfield(L, t, k);
    if (lua_type(L, -1) == LUA_TSTRING)
        v = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return v;
}

/* The context of one upstream from its tls table at t. */
static int mg_uptls_one(mg_upstream_t *u, lua_State *L, int t, char *err, size_t errlen) {
    char *ca = mg_uptls_str(L, t, "ca"), *cert = mg_uptls_str(L, t, "cert");
    char *key = mg_uptls_str(L, t, "key");
    int verify, rc = MG_OK;
    SSL_CTX *c;

    lua_getfield(L, t, "verify");
    verify = lua_toboolean(L, -1);
    lua_pop(L, 1);
    u->tls_noverify = !verify;
    u->tls_name = mg_uptls_str(L, t, "server_name");
    u->tls_sess = calloc(u->npeers ? u->npeers : 1, sizeof(void *));
    if (verify && ca == NULL && cert == NULL && u->tls_name == NULL) {
        c = mg_io_tls_client_default();
        if (c)
            SSL_CTX_up_ref(c);
    } else {
        c = mg_io_tls_client_ctx_new(verify);
    }
    if (c == NULL || u->tls_sess == NULL) {
        snprintf(err, errlen, "upstream %s: cannot make a TLS context", u->name);
        SSL_CTX_free(c);
        rc = MG_ERR;
        goto done;
    }
    u->tls = c;
    if (verify && ca && mg_uptls_ca(c, L, t, ca, err, errlen) != MG_OK)
        rc = MG_ERR;
    else if (verify && ca == NULL && c != mg_io_tls_client_default()) {
        /* the system's store, shared with the default context */
        SSL_CTX *d = mg_io_tls_client_default();
        if (d)
            SSL_CTX_set1_cert_store(c, SSL_CTX_get_cert_store(d));
    }
    if (rc == MG_OK && cert && key && mg_uptls_cert(c, L, t, cert, key, err, errlen) != MG_OK)
        rc = MG_ERR;
done:
    free(ca);
    free(cert);
    free(key);
    return rc;
}

int mg_load_uptls(mg_gen_t *g, lua_State *L, int conf, char *err, size_t errlen) {
    int i, n, rc = MG_OK;
    lua_getfield(L, conf, "upstreams");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (i = 1; i <= n && i <= g->nupstreams && rc == MG_OK; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "tls");
        if (lua_istable(L, -1))
            rc = mg_uptls_one(&g->upstreams[i - 1], L, lua_gettop(L), err, errlen);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return rc;
}

void mg_load_uptls_free(mg_gen_t *g) {
    for (int i = 0; i < g->nupstreams; i++) {
        mg_upstream_t *u = &g->upstreams[i];
        for (int k = 0; u->tls_sess && k < u->npeers; k++)
            SSL_SESSION_free(u->tls_sess[k]);
        free(u->tls_sess);
        free(u->tls_name);
        SSL_CTX_free(u->tls);
        u->tls_sess = NULL;
        u->tls_name = NULL;
        u->tls = NULL;
    }
}
