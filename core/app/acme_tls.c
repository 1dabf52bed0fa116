/*
 * acme_tls.c -- a worker's side of automatic certificates: one SSL_CTX per
 * ACME name, built from <storage>/<name>.pem (the chain, then the key, as
 * the ACME process writes it), handed to the TLS listeners' servername
 * callback through mg_tls_sni_hook, so new handshakes for that name get the
 * ACME certificate while open connections keep the context they shook
 * hands with (an SSL holds a reference to its SSL_CTX). Read at the
 * worker's start and again for one name when the master says it changed
 * (MG_CTL_CERT): a few KiB from the local disk, once per certificate, not
 * per connection. While a name has none, the hook returns NULL (the
 * listener's default certificate serves) and the log says why, once.
 */
#include "app/app.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    SSL_CTX *ctx; /* NULL until a certificate is stored */
    int warned;   /* "no certificate yet" was logged */
} mg_acme_cert_t;

/* TEMPORARY until branch tls lands (it defines the hook in its tls_ctx.c) */
SSL_CTX *(*mg_tls_sni_hook)(const char *name);

static mg_acme_cert_t *mg_acme_certs;
static int mg_acme_ncerts;

/* ALPN on the ACME context too: after the servername callback switches
 * contexts, OpenSSL asks the new one's callback. HTTP/1.1 only for now. */
static int mg_acme_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                           const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char ours[] = "\x08http/1.1";
    (void)ssl, (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

/* A server context for the PEM file (certificates, then the key), or NULL
 * with why in err. */
static SSL_CTX *mg_acme_ctx_load(const char *path, char *err, size_t errlen) {
    BIO *b = BIO_new_file(path, "r");
    SSL_CTX *ctx = NULL;
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;
    int n = 0;
    if (b == NULL) {
        snprintf(err, errlen, "%.400s: cannot open", path);
        goto fail;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        snprintf(err, errlen, "%.400s: cannot create a TLS context", path);
        goto fail;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (n++ == 0 ? SSL_CTX_use_certificate(ctx, x) != 1
                     : SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            X509_free(x);
            snprintf(err, errlen, "%.400s: bad certificate %d", path, n);
            goto fail;
        }
        if (n == 1)
            X509_free(x); /* use_certificate took its own reference; add0 took ours */
    }
    ERR_clear_error();
    if (n == 0) {
        snprintf(err, errlen, "%.400s: no certificate", path);
        goto fail;
    }
    BIO_free(b);
    b = BIO_new_file(path, "r");
    pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    if (pk == NULL || SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%.400s: no private key matching the certificate", path);
        goto fail;
    }
    EVP_PKEY_free(pk);
    BIO_free(b);
    SSL_CTX_set_alpn_select_cb(ctx, mg_acme_alpn_cb, NULL);
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    EVP_PKEY_free(pk);
    BIO_free(b);
    SSL_CTX_free(ctx);
    return NULL;
}

static void mg_acme_cert_load(mg_acme_cert_t *c, int quiet) {
    mg_acme_conf_t *conf = mg_gen_current->acme;
    char path[4096], err[600];
    SSL_CTX *ctx;
    snprintf(path, sizeof(path), "%s/%s.pem", conf->storage, c->name);
    ctx = mg_acme_ctx_load(path, err, sizeof(err));
    if (ctx == NULL) {
        if (!quiet)
            mg_error("worker %d: acme: %s: the previous certificate goes on serving", mg_worker.id,
                     err);
        return;
    }
    SSL_CTX_free(c->ctx); /* connections on it keep their own reference */
    c->ctx = ctx;
    c->warned = 0;
    mg_debug("worker %d: acme: serving %s for %s", mg_worker.id, path, c->name);
}

static SSL_CTX *mg_acme_sni(const char *name) {
    if (name == NULL)
        return NULL;
    for (int i = 0; i < mg_acme_ncerts; i++) {
        mg_acme_cert_t *c = &mg_acme_certs[i];
        if (strcasecmp(c->name, name) != 0)
            continue;
        if (c->ctx == NULL && !c->warned) {
            c->warned = 1;
            mg_warn("worker %d: acme: no certificate for %s yet (the ACME process is ordering "
                    "it, or failed: see its log): the default certificate serves",
                    mg_worker.id, c->name);
        }
        return c->ctx;
    }
    return NULL;
}

void mg_acme_worker_init(void) {
    mg_acme_conf_t *conf = mg_gen_current->acme;
    if (conf == NULL || conf->nnames == 0)
        return;
    mg_acme_certs = calloc((size_t)conf->nnames, sizeof(*mg_acme_certs));
    if (mg_acme_certs == NULL)
        return;
    for (int i = 0; i < conf->nnames; i++) {
        mg_acme_certs[i].name = strdup(conf->names[i]);
        if (mg_acme_certs[i].name == NULL)
            break;
        mg_acme_ncerts++;
        mg_acme_cert_load(&mg_acme_certs[i], 1); /* none yet is normal at the first start */
    }
    mg_tls_sni_hook = mg_acme_sni;
}

void mg_acme_worker_update(const char *name) {
    if (mg_gen_current->acme == NULL)
        return;
    for (int i = 0; i < mg_acme_ncerts; i++)
        if (strcasecmp(mg_acme_certs[i].name, name) == 0) {
            mg_acme_cert_load(&mg_acme_certs[i], 0);
            mg_info("worker %d: acme: new certificate for %s serves new handshakes", mg_worker.id,
                    name);
            return;
        }
}
