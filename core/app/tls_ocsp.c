/*
 * tls_ocsp.c -- OCSP stapling (RFC 6066 8, RFC 6960) from a configured
 * response file: a certificates entry's `ocsp = "file.der"`, as nginx's
 * ssl_stapling_file. The certificate loading (tls_ctx.c) calls
 * mg_tls_ocsp_staple for each certificate that has one; the response is
 * checked at load (a response that would make clients refuse the
 * connection is refused with the generation instead) and kept on the
 * certificate itself (X509 ex_data), so each certificate of a context
 * (ECDSA and RSA for one name) staples its own, and it goes when the
 * generation's contexts go. Refreshing it is the operator's job: fetch a
 * new response (openssl ocsp ... -respout file.der, certbot, a cron job)
 * and reload; moongate never talks to the responder, so no handshake
 * waits for the network.
 */
#include "app/app.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* The response a certificate staples: its DER bytes. */
typedef struct {
    unsigned char *der;
    int len;
} mg_tls_ocsp_t;

static int mg_tls_ocsp_idx = -1;

static void mg_tls_ocsp_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                                void *argp) {
    mg_tls_ocsp_t *o = ptr;
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (o) {
        OPENSSL_free(o->der);
        OPENSSL_free(o);
    }
}

/* The status_request callback: the chosen certificate's response, copied
 * (OpenSSL frees what it is given once sent). Only handshakes that ask
 * for it pay the copy, about 1.5 KB. */
static int mg_tls_ocsp_cb(SSL *ssl, void *arg) {
    X509 *cert = SSL_get_certificate(ssl);
    mg_tls_ocsp_t *o = cert ? X509_get_ex_data(cert, mg_tls_ocsp_idx) : NULL;
    unsigned char *copy;
    (void)arg;
    if (o == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    copy = OPENSSL_memdup(o->der, o->len);
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, o->len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* cert's issuer among the chain certificates of ctx, or NULL */
static X509 *mg_tls_ocsp_issuer(SSL_CTX *ctx, X509 *cert) {
    STACK_OF(X509) *chain = NULL;
    int i;
    if (SSL_CTX_get0_chain_certs(ctx, &chain) != 1 || chain == NULL)
        return NULL;
    for (i = 0; i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        if (X509_check_issued(c, cert) == X509_V_OK)
            return c;
    }
    return NULL;
}

/* The single response about cert in bs: by its full id (issuer name and
 * key hashes, serial) when the issuer is known, else by serial alone. */
static OCSP_SINGLERESP *mg_tls_ocsp_find(OCSP_BASICRESP *bs, X509 *cert, X509 *issuer) {
    int i, n = OCSP_resp_count(bs);
    if (issuer) {
        OCSP_CERTID *id = OCSP_cert_to_id(NULL, cert, issuer);
        int k = id ? OCSP_resp_find(bs, id, -1) : -1;
        OCSP_CERTID_free(id);
        return k >= 0 ? OCSP_resp_get0(bs, k) : NULL;
    }
    for (i = 0; i < n; i++) {
        OCSP_SINGLERESP *sr = OCSP_resp_get0(bs, i);
        ASN1_INTEGER *serial = NULL;
        if (OCSP_id_get0_info(NULL, NULL, NULL, &serial,
                              (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(sr)) == 1 &&
            serial && ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(cert)) == 0)
            return sr;
    }
    return NULL;
}

/* Why the response cannot be stapled for cert, or NULL if it can. */
static const char *mg_tls_ocsp_check(SSL_CTX *ctx, X509 *cert, const unsigned char *der, size_t len,
                                     char *why, size_t whylen) {
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    OCSP_BASICRESP *bs = NULL;
    OCSP_SINGLERESP *sr;
    ASN1_GENERALIZEDTIME *thisupd = NULL, *nextupd = NULL;
    const char *bad = NULL;
    int st, reason;

    if (resp == NULL || p != der + len) {
        bad = "not a DER-encoded OCSP response";
        goto done;
    }
    st = OCSP_response_status(resp);
    if (st != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        snprintf(why, whylen, "the OCSP response's status is %s, not successful",
                 OCSP_response_status_str(st));
        bad = why;
        goto done;
    }
    bs = OCSP_response_get1_basic(resp);
    if (bs == NULL) {
        bad = "the OCSP response is not a basic response";
        goto done;
    }
    sr = mg_tls_ocsp_find(bs, cert, mg_tls_ocsp_issuer(ctx, cert));
    if (sr == NULL) {
        bad = "the OCSP response is not about this certificate (its serial and issuer)";
        goto done;
    }
    st = OCSP_single_get0_status(sr, &reason, NULL, &thisupd, &nextupd);
    if (st != V_OCSP_CERTSTATUS_GOOD) {
        snprintf(why, whylen, "the OCSP response says the certificate is %s",
                 OCSP_cert_status_str(st));
        bad = why;
        goto done;
    }
    /* as a client checks it: 5 minutes of clock skew, no age limit */
    if (OCSP_check_validity(thisupd, nextupd, 300, -1) != 1)
        bad = nextupd && X509_cmp_current_time(nextupd) < 0
                  ? "the OCSP response has expired (past its nextUpdate): fetch a new one"
                  : "the OCSP response is not valid yet (its thisUpdate is ahead)";
done:
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    return bad;
}

int mg_tls_ocsp_staple(SSL_CTX *ctx, X509 *cert, const char *file, const void *der, size_t len,
                       char *err, size_t errlen) {
    mg_tls_ocsp_t *o;
    const char *bad;
    char why[160];

    if (cert == NULL)
        cert = SSL_CTX_get0_certificate(ctx);
    if (cert == NULL) {
        snprintf(err, errlen, "%s: no certificate to staple the OCSP response to", file);
        return MG_ERR;
    }
    if (len == 0 || len > 1024 * 1024) {
        snprintf(err, errlen, "%s: %s", file,
                 len ? "too big for an OCSP response (over 1 MiB)" : "empty");
        return MG_ERR;
    }
    bad = mg_tls_ocsp_check(ctx, cert, der, len, why, sizeof(why));
    if (bad) {
        snprintf(err, errlen, "%s: %s", file, bad);
        return MG_ERR;
    }
    if (mg_tls_ocsp_idx < 0)
        mg_tls_ocsp_idx = X509_get_ex_new_index(0, NULL, NULL, NULL, mg_tls_ocsp_free_cb);
    o = OPENSSL_zalloc(sizeof(*o));
    if (mg_tls_ocsp_idx < 0 || o == NULL || (o->der = OPENSSL_memdup(der, len)) == NULL) {
        OPENSSL_free(o);
        snprintf(err, errlen, "%s: out of memory", file);
        return MG_ERR;
    }
    o->len = (int)len;
    /* a certificate stapled twice (the same X509 in two contexts) keeps
     * the last response */
    mg_tls_ocsp_free_cb(NULL, X509_get_ex_data(cert, mg_tls_ocsp_idx), NULL, 0, 0, NULL);
    X509_set_ex_data(cert, mg_tls_ocsp_idx, o);
    SSL_CTX_set_tlsext_status_cb(ctx, mg_tls_ocsp_cb);
    return MG_OK;
}
