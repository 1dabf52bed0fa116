/*
 * acme_http01.c -- the http-01 challenge responder (RFC 8555 8.3): a plain
 * listener answers GET /.well-known/acme-challenge/<token> with the key
 * authorization the ACME process (app/acme.c) put in the shared dict
 * "moongate.acme", before routing and before any redirect to HTTPS, so an
 * ACME server can validate while every route stays as it is. Costs nothing
 * on other paths: one length check and one memcmp; the dict lookup only
 * for the challenge prefix.
 */
#include "gateway/gateway.h"

#define MG_ACME_PREFIX "/.well-known/acme-challenge/"
#define MG_ACME_PREFIX_LEN (sizeof(MG_ACME_PREFIX) - 1)
#define MG_ACME_TOKEN_MAX 128 /* pebble and Let's Encrypt use 43 */

static int mg_gw_acme_token_ok(const char *t, size_t n) {
    if (n == 0 || n > MG_ACME_TOKEN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0; /* base64url only (RFC 8555 8.3) */
    }
    return 1;
}

int mg_gw_acme_challenge(mg_req_t *r) {
    char ka[256];
    const char *tok;
    size_t tl;
    ssize_t n;
    if (r->path_len <= MG_ACME_PREFIX_LEN ||
        memcmp(r->hbuf, MG_ACME_PREFIX, MG_ACME_PREFIX_LEN) != 0)
        return 0;
    if ((r->method != HTTP_GET && r->method != HTTP_HEAD) || mg_req_tls(r))
        return 0; /* http-01 is plain GET (RFC 8555 8.3); the routes may have the rest */
    tok = r->hbuf + MG_ACME_PREFIX_LEN;
    tl = r->path_len - MG_ACME_PREFIX_LEN;
    if (!mg_gw_acme_token_ok(tok, tl))
        return 0;
    n = mg_shdict_get_str(MG_ACME_DICT, tok, tl, ka, sizeof(ka));
    if (n < 0)
        return 0; /* not ours (or no ACME at all): routing decides */
    r->resp_close = !(r->clen <= 0 && !r->chunked);
    mg_resp_head(r, 200, "Content-Type: application/octet-stream\r\n",
                 sizeof("Content-Type: application/octet-stream\r\n") - 1, n);
    mg_resp_body(r, ka, (size_t)n); /* the session sends no body to HEAD */
    r->resp_done = 1;
    mg_info("acme: http-01 challenge %.*s answered for %s", (int)tl, tok, mg_req_peer_ip(r));
    return 1;
}
