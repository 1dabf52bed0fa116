/*
 * fwd.c -- the forwarding headers, for every request moongate sends on to
 * an upstream: the proxy's request head (proxy.c) and the WebSocket
 * upgrade of the tunnel and the relay (gateway/upgrade.c). One place decides what
 * of the client's head goes on and what moongate adds:
 *   - dropped: the hop-by-hop headers and the names the client's
 *     Connection header lists (RFC 9110 7.6.1), the headers a script
 *     replaces with req:set_header(), and the client's own X-Forwarded-
 *     Proto/-Host and X-Request-Id (moongate sets them), except that a
 *     peer in its server's trusted_proxies (mg_req_peer_trusted) keeps its
 *     X-Forwarded-Proto/-Host: a balancer in front knows the scheme and
 *     host the client used, we do not;
 *   - added: the req:set_header() lines, X-Forwarded-Host (Host when an
 *     HTTP/1.0 client sent none), X-Forwarded-For (the client's chain, then
 *     the peer), X-Forwarded-Proto (mg_fwd_proto) and X-Request-Id, the
 *     first and the third unless a trusted peer's go on.
 * The caller writes the request line, its own framing or upgrade headers
 * and the blank line. The Connection-token helpers also serve the way
 * back (the proxy's response head, a refused upgrade's answer). No allocation: everything goes into
 * the caller's buffer, room for mg_fwd_size(r) bytes (the proxy reserves its whole head in its
 * evbuffer at once: one copy of each line, no evbuffer_add per line).
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* the longest tail mg_fwd_tail writes: the fixed text, a peer address and
 * a request id */
_Static_assert(sizeof("X-Forwarded-For: \r\nX-Forwarded-Proto: https\r\nX-Request-Id: \r\n") - 1 +
                       MG_PEER_IP_MAX + sizeof(((mg_req_t *)0)->request_id) <=
                   MG_FWD_TAIL_MAX,
               "MG_FWD_TAIL_MAX too small");

void mg_fwd_conn_tokens(mg_fwd_tokens_t *t, const char *v, size_t len) {
    size_t i = 0;
    while (i < len && t->count < MG_FWD_TOKENS_MAX) {
        size_t s;
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < len && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i > s) {
            t->n[t->count] = v + s;
            t->l[t->count++] = i - s;
        }
    }
}

int mg_fwd_tokens_has(const mg_fwd_tokens_t *t, const char *n, size_t l) {
    for (int i = 0; i < t->count; i++)
        if (mg_name_eq(t->n[i], t->l[i], n, l))
            return 1;
    return 0;
}

const char *mg_fwd_proto(const mg_req_t *r, size_t *len) {
    if (mg_req_tls(r)) {
        *len = 5;
        return "https";
    }
    *len = 4;
    return "http";
}

size_t mg_fwd_size(const mg_req_t *r) {
    /* the fixed text, the peer, the id; ", " after the client's chain (its
     * value is counted with the client's lines) */
    size_t n = MG_FWD_TAIL_MAX + 2 + r->xhdrs.len;
    for (int i = 0; i < r->nhdrs; i++)
        n += r->hdrs[i].nlen + r->hdrs[i].vlen + 4;
    if (r->host_idx >= 0)
        n += sizeof("X-Forwarded-Host: \r\n") - 1 + r->hdrs[r->host_idx].vlen;
    else
        n += sizeof("Host: \r\n") - 1 + MG_FWD_HOST_MAX;
    return n;
}

/* The names req:set_header() set or removed (r->xhdrs), read once for
 * the loop over the client's headers; 0 when there are more than a
 * mg_fwd_tokens_t holds (the caller then asks mg_req_xhdr_has). */
static int mg_fwd_xnames(const mg_req_t *r, mg_fwd_tokens_t *t) {
    const char *p = r->xhdrs.p, *end = p + r->xhdrs.len;
    t->count = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p), *colon;
        if (eol == NULL)
            break;
        if ((colon = memchr(p, ':', eol - p)) != NULL) {
            if (t->count == MG_FWD_TOKENS_MAX)
                return 0;
            t->n[t->count] = p;
            t->l[t->count++] = (size_t)(colon - p);
        }
        p = eol + 1;
    }
    return 1;
}

size_t mg_fwd_headers(mg_req_t *r, char *out, unsigned drop, mg_fwd_t *f) {
    mg_fwd_tokens_t tok = {.count = 0}, xn = {.count = 0};
    int xall = r->xhdrs.len == 0 || mg_fwd_xnames(r, &xn); /* xn holds every set name */
    size_t o = 0;
    int i;

    f->xff = NULL;
    f->xff_len = 0;
    f->keep_proto = f->keep_host = 0;
    for (i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *hd = &r->hdrs[i];
        if (MG_NAME_IS(r->hbuf + hd->noff, hd->nlen, "connection"))
            mg_fwd_conn_tokens(&tok, r->hbuf + hd->voff, hd->vlen);
    }
    for (i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *hd = &r->hdrs[i];
        const char *n = r->hbuf + hd->noff;
        size_t l = hd->nlen;
        /* the token lists asked only when they hold something (most
         * clients send no Connection header, most scripts set none) */
        if (mg_http_hop_by_hop(n, l) || (tok.count && mg_fwd_tokens_has(&tok, n, l)) ||
            (xall ? xn.count && mg_fwd_tokens_has(&xn, n, l) : mg_req_xhdr_has(r, n, l)))
            continue;
        if (MG_NAME_IS(n, l, "x-forwarded-for")) {
            f->xff = r->hbuf + hd->voff; /* the chain goes on in mg_fwd_tail */
            f->xff_len = hd->vlen;
            continue;
        }
        if (MG_NAME_IS(n, l, "x-forwarded-proto") || MG_NAME_IS(n, l, "x-forwarded-host")) {
            /* a trusted proxy's go on (asked only when there is one) */
            if (mg_req_peer_trusted(r)) {
                o += mg_line_put(out + o, n, l, r->hbuf + hd->voff, hd->vlen);
                if (l == sizeof("x-forwarded-proto") - 1)
                    f->keep_proto = 1;
                else
                    f->keep_host = 1;
            }
            continue;
        }
        if (MG_NAME_IS(n, l, "x-request-id"))
            continue;
        if ((drop & MG_FWD_DROP_EXPECT) && MG_NAME_IS(n, l, "expect"))
            continue;
        if ((drop & MG_FWD_DROP_WS_KEYS) && (MG_NAME_IS(n, l, "sec-websocket-key") ||
                                             MG_NAME_IS(n, l, "sec-websocket-extensions") ||
                                             MG_NAME_IS(n, l, "sec-websocket-protocol") ||
                                             MG_NAME_IS(n, l, "sec-websocket-version")))
            continue;
        o += mg_line_put(out + o, n, l, r->hbuf + hd->voff, hd->vlen);
    }
    return o + mg_req_xhdrs_put(r, out + o);
}

size_t mg_fwd_tail(mg_req_t *r, const mg_fwd_t *f, char *tail) {
    size_t o = 0, l;
    const char *s;

    if (r->host_idx >= 0) {
        if (!f->keep_host)
            o += mg_line_put(tail, "X-Forwarded-Host", 16, r->hbuf + r->hdrs[r->host_idx].voff,
                             r->hdrs[r->host_idx].vlen);
    } else {
        /* HTTP/1.0 without Host: the upstream still needs one */
        char peer[MG_FWD_HOST_MAX] = "localhost";
        mg_upstream_t *up = r->lproxy ? r->lproxy->up : r->route ? r->route->upstream : NULL;
        if (up && up->npeers)
            mg_up_peer_str(up->peers[0], peer, sizeof(peer));
        o += mg_line_put(tail, "Host", 4, peer, strlen(peer));
    }
#define MG_PUT(p, n) (memcpy(tail + o, (p), (n)), o += (n))
#define MG_PUTS(lit) MG_PUT(lit, sizeof(lit) - 1)
    MG_PUTS("X-Forwarded-For: ");
    if (f->xff) {
        MG_PUT(f->xff, f->xff_len);
        MG_PUTS(", ");
    }
    s = mg_req_peer_ip(r);
    l = strlen(s);
    MG_PUT(s, l);
    MG_PUTS("\r\n");
    if (!f->keep_proto) {
        MG_PUTS("X-Forwarded-Proto: ");
        s = mg_fwd_proto(r, &l);
        MG_PUT(s, l);
        MG_PUTS("\r\n");
    }
    MG_PUTS("X-Request-Id: ");
    l = strlen(r->request_id);
    MG_PUT(r->request_id, l);
    MG_PUTS("\r\n");
#undef MG_PUT
#undef MG_PUTS
    return o;
}
