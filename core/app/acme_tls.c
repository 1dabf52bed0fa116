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
    SSL_CTX *ctx;  /* NULL until a certificate is stored */
    int warned;    /* "no certificate yet" was logged */
    double asked;  /* on_demand: mg_now() the ACME process was last asked for it */
    SSL_CTX *alpn; /* a tls-alpn-01 challenge in progress: its certificate, or NULL */
} mg_acme_cert_t;

#define MG_ACME_ASK_AGAIN 60.0 /* s: an on_demand name still without one is asked again */

/* The start's section (storage, on_demand.allow): the worker's own copy,
 * as the generation it came with may go at a reload. */
static mg_acme_conf_t mg_acme_w;
static mg_acme_cert_t *mg_acme_certs; /* the names, then on_demand ones as they come */
static int mg_acme_ncerts, mg_acme_cap;
static int mg_acme_ctl = -1; /* the control channel, to ask for on_demand names */

#define MG_ACME_PEM_MAX (1024 * 1024) /* bytes: a chain and a key are a few KiB */

/* A server context for the PEM file (certificates, then the key), or NULL
 * with why in err. The protocol versions and ciphers stay the listener's
 * (an SSL keeps its own when the servername callback switches contexts);
 * this one brings the certificate, moongate's ALPN (h2 first when the
 * listener the handshake came on offers it) and no session cache, as
 * tls_ctx.c's do. */
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
    mg_tls_ctx_set_alpn(ctx, MG_TLS_ALPN_LISTENER); /* h2 where the listener offers it */
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
    char path[4096], err[600];
    SSL_CTX *ctx;
    snprintf(path, sizeof(path), "%s/%s.pem", mg_acme_w.storage, c->name);
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

/* ---- tls-alpn-01 (RFC 8737): while a challenge runs for a name, its
 * handshakes get a context whose ALPN callback takes acme-tls/1 when
 * offered, and whose certificate callback (run after ALPN in TLS 1.3) keeps
 * the challenge certificate only for acme-tls/1: others get the name's ACME
 * certificate when it has one (during a renewal), or the challenge's when
 * none exists yet (a first order, for the seconds of the validation). A
 * validator speaking TLS 1.2 sees ALPN only after the certificate is
 * chosen: it gets the challenge certificate only while the name has none. */

static int mg_acme_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                  const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char acme[] = "\x0a"
                                        "acme-tls/1",
                               h2[] = "\x02h2", http[] = "\x08http/1.1";
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, acme, sizeof(acme) - 1, in, inlen) ==
            OPENSSL_NPN_NEGOTIATED ||
        (mg_tls_listener_h2(ssl) &&
         SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2) - 1, in, inlen) ==
             OPENSSL_NPN_NEGOTIATED) ||
        SSL_select_next_proto((unsigned char **)out, outlen, http, sizeof(http) - 1, in, inlen) ==
            OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK;
}

static int mg_acme_alpn_cert_cb(SSL *ssl, void *arg) {
    mg_acme_cert_t *c = arg;
    const unsigned char *p = NULL;
    unsigned int n = 0;
    STACK_OF(X509) *chain = NULL;
    SSL_get0_alpn_selected(ssl, &p, &n);
    if ((n == 10 && memcmp(p, "acme-tls/1", 10) == 0) || c->ctx == NULL)
        return 1;
    SSL_CTX_get0_chain_certs(c->ctx, &chain);
    if (SSL_use_certificate(ssl, SSL_CTX_get0_certificate(c->ctx)) != 1 ||
        SSL_use_PrivateKey(ssl, SSL_CTX_get0_privatekey(c->ctx)) != 1 ||
        SSL_set1_chain(ssl, chain) != 1)
        return 0; /* fails the handshake rather than serve the wrong certificate */
    return 1;
}

static void mg_acme_alpn_load(mg_acme_cert_t *c) {
    char path[4096], err[600];
    SSL_CTX *ctx;
    snprintf(path, sizeof(path), "%s/%s.alpn.pem", mg_acme_w.storage, c->name);
    ctx = mg_acme_ctx_load(path, err, sizeof(err));
    if (ctx) {
        SSL_CTX_set_alpn_select_cb(ctx, mg_acme_alpn_select_cb, NULL);
        SSL_CTX_set_cert_cb(ctx, mg_acme_alpn_cert_cb, c);
        mg_debug("worker %d: acme: tls-alpn-01 certificate for %s", mg_worker.id, c->name);
    }
    SSL_CTX_free(c->alpn); /* none (the challenge ended): gone */
    c->alpn = ctx;
}

static mg_acme_cert_t *mg_acme_find(const char *name) {
    for (int i = 0; i < mg_acme_ncerts; i++)
        if (strcmp(mg_acme_certs[i].name, name) == 0)
            return &mg_acme_certs[i];
    return NULL;
}

/* An on_demand name seen for the first time: its stored certificate, or
 * the ACME process is asked for one. NULL when the table is full. */
static mg_acme_cert_t *mg_acme_add(const char *name) {
    mg_acme_cert_t *c;
    if (mg_acme_ncerts >= mg_acme_cap) {
        static double warned;
        if (mg_now() - warned > 60) {
            warned = mg_now();
            mg_warn("worker %d: acme: on_demand.max (%d) names reached: %s gets the default "
                    "certificate",
                    mg_worker.id, mg_acme_w.od_max, name);
        }
        return NULL;
    }
    c = &mg_acme_certs[mg_acme_ncerts];
    memset(c, 0, sizeof(*c));
    c->name = strdup(name);
    if (c->name == NULL)
        return NULL;
    mg_acme_ncerts++;
    mg_acme_cert_load(c, 1); /* obtained before (another worker asked, or a past run) */
    return c;
}

/* The servername callback's hook: the ACME context for name (lower-case),
 * or NULL for the listener's own certificates. A linear scan: the names
 * are at most 100 plus on_demand.max, and most handshakes match early. */
static SSL_CTX *mg_acme_sni(const char *name) {
    mg_acme_cert_t *c;
    if (name == NULL)
        return NULL;
    c = mg_acme_find(name);
    if (c == NULL && mg_acme_w.od_max > 0 && mg_acme_allowed(&mg_acme_w, name))
        c = mg_acme_add(name);
    if (c && c->alpn)
        return c->alpn;
    if (c == NULL || c->ctx)
        return c ? c->ctx : NULL;
    if (c->asked >= 0 && mg_acme_w.od_max > 0 && mg_now() - c->asked >= MG_ACME_ASK_AGAIN &&
        mg_acme_ctl >= 0 && mg_acme_allowed(&mg_acme_w, name)) {
        /* the master passes it on; the ACME process orders it once */
        mg_app_ctl_send(mg_acme_ctl, MG_CTL_WANT, 0, name, -1);
        c->asked = mg_now();
    }
    if (!c->warned) {
        c->warned = 1;
        mg_warn("worker %d: acme: no certificate for %s yet (the ACME process is ordering "
                "it, or failed: see its log): the default certificate serves",
                mg_worker.id, c->name);
    }
    return NULL;
}

void mg_acme_worker_init(int ctl) {
    mg_acme_conf_t *conf = mg_gen_current->acme;
    if (conf == NULL)
        return;
    mg_acme_ctl = ctl;
    mg_acme_w.storage = strdup(conf->storage);
    mg_acme_w.od_max = conf->od_max;
    mg_acme_w.allow = calloc((size_t)conf->nallow + 1, sizeof(char *));
    for (int i = 0; mg_acme_w.allow && i < conf->nallow; i++)
        if ((mg_acme_w.allow[mg_acme_w.nallow] = strdup(conf->allow[i])) != NULL)
            mg_acme_w.nallow++;
    mg_acme_cap = conf->nnames + conf->od_max;
    mg_acme_certs = calloc((size_t)mg_acme_cap + 1, sizeof(*mg_acme_certs));
    if (mg_acme_certs == NULL || mg_acme_w.storage == NULL) {
        mg_error("worker %d: acme: out of memory: no ACME certificates served", mg_worker.id);
        return;
    }
    for (int i = 0; i < conf->nnames; i++) {
        mg_acme_cert_t *c = &mg_acme_certs[mg_acme_ncerts];
        c->name = strdup(conf->names[i]);
        if (c->name == NULL)
            break;
        c->asked = -1; /* a configured name: the ACME process orders it unasked */
        mg_acme_ncerts++;
        mg_acme_cert_load(c, 1); /* none yet is normal at the first start */
    }
    mg_tls_sni_hook = mg_acme_sni;
}

void mg_acme_worker_update(const char *name) {
    mg_acme_cert_t *c;
    int alpn = strncmp(name, "alpn:", 5) == 0; /* a tls-alpn-01 challenge began or ended */
    if (mg_acme_certs == NULL)
        return;
    name += alpn ? 5 : 0;
    c = mg_acme_find(name);
    if (alpn) {
        if (c == NULL && mg_acme_allowed(&mg_acme_w, name))
            c = mg_acme_add(name);
        if (c)
            mg_acme_alpn_load(c);
        return;
    }
    if (c == NULL && mg_acme_allowed(&mg_acme_w, name))
        c = mg_acme_add(name); /* loads it */
    else if (c)
        mg_acme_cert_load(c, 0);
    if (c && c->ctx)
        mg_info("worker %d: acme: new certificate for %s serves new handshakes", mg_worker.id,
                name);
}

void mg_acme_metrics(struct evbuffer *out) {
    for (int i = 0; i < mg_acme_ncerts; i++) {
        const mg_acme_cert_t *c = &mg_acme_certs[i];
        double na = c->ctx ? mg_tls_not_after(c->ctx) : 0;
        if (na > 0 && strpbrk(c->name, "\"\\\n") == NULL)
            evbuffer_add_printf(out,
                                "moongate_tls_certificate_expiry_timestamp_seconds{server=\"acme\","
                                "name=\"%s\"} %.0f\n",
                                c->name, na);
    }
}
