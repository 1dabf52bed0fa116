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

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    SSL_CTX *ctx; /* NULL until a certificate is stored */
    int warned;   /* "no certificate yet" was logged */
} mg_acme_cert_t;

static mg_acme_cert_t *mg_acme_certs;
static int mg_acme_ncerts;

#define MG_ACME_PEM_MAX (1024 * 1024) /* bytes: a chain and a key are a few KiB */

/* A server context for the PEM file (certificates, then the key), or NULL
 * with why in err. The protocol versions and ciphers stay the listener's
 * (an SSL keeps its own when the servername callback switches contexts);
 * this one brings the certificate, moongate's ALPN and no session cache,
 * as tls_ctx.c's do. */
static SSL_CTX *mg_acme_ctx_load(const char *path, char *err, size_t errlen) {
    static const unsigned char sid[] = "moongate-acme";
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    SSL_CTX *ctx = NULL;
    if (f == NULL) {
        snprintf(err, errlen, "%.400s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(MG_ACME_PEM_MAX);
    if (buf)
        n = fread(buf, 1, MG_ACME_PEM_MAX, f);
    if (buf == NULL || ferror(f) || n == MG_ACME_PEM_MAX) {
        snprintf(err, errlen, "%.400s: unreadable, or over %d bytes", path, MG_ACME_PEM_MAX);
        goto fail;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        snprintf(err, errlen, "%.400s: cannot create a TLS context", path);
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_COMPRESSION);
    /* one file: the certificates and the key are read from the same bytes */
    if (mg_tls_ctx_add_pem(ctx, buf, n, buf, n, path, path, err, errlen) != MG_OK)
        goto fail;
    mg_tls_ctx_set_alpn(ctx);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    free(buf);
    fclose(f);
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    free(buf);
    fclose(f);
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
