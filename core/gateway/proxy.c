/*
 * proxy.c -- the C fast path: a request on an upstream route is forwarded
 * with its body streamed as it arrives, and the response streamed back,
 * with backpressure both ways (MG_HIGH_WATER / MG_LOW_WATER). No Lua runs
 * here: the route's header_filter plugins are the gateway's response-head
 * phase (mg_gw_head_filter, dispatch.c). The request head's forwarding
 * headers come from fwd.c; on the way back, hop-by-hop headers and those
 * the upstream's Connection header names are dropped (RFC 9110 7.6.1).
 * The proxy is a target (mg_target_t): the HTTP session feeds it the
 * body and tells it when the client drains or goes.
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void mg_proxy_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                             int64_t clen, int chunked);
static int mg_proxy_on_body(void *ud, const char *data, size_t len);
static void mg_proxy_on_done(void *ud);
static void mg_proxy_on_error(void *ud, int status, const char *msg);
static void mg_proxy_on_drain(void *ud);
static void mg_proxy_on_flush(void *ud);
static void mg_proxy_body(mg_req_t *r, const char *data, size_t len);
static void mg_proxy_body_end(mg_req_t *r);
static void mg_proxy_client_drained(mg_req_t *r);
static void mg_proxy_client_gone(mg_req_t *r);

/* what the HTTP session calls while an exchange holds the request */
static const mg_target_t mg_proxy_target = {
    .body = mg_proxy_body,
    .body_end = mg_proxy_body_end,
    .drained = mg_proxy_client_drained,
    .gone = mg_proxy_client_gone,
    .keeps_req = 0,
};

/* the exchange let go of the request (ended, failed, cancelled) */
static void mg_proxy_detach(mg_req_t *r) {
    r->ux = NULL;
    r->target = NULL;
}

static const mg_ux_sink_t mg_proxy_sink = {
    .on_head = mg_proxy_on_head,
    .on_body = mg_proxy_on_body,
    .on_done = mg_proxy_on_done,
    .on_error = mg_proxy_on_error,
    .on_drain = mg_proxy_on_drain,
    .on_flush = mg_proxy_on_flush,
};

static int mg_proxy_method_idempotent(int m) {
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_PUT || m == HTTP_DELETE ||
           m == HTTP_OPTIONS || m == HTTP_TRACE;
}

/* Builds the upstream request and starts the exchange: to the route's
 * upstream with the client's target, or as moongate.proxy's plan says
 * (r->lproxy: its upstream, path, query, timeout). pre: body bytes the Lua
 * handler's target received before the hand-off (NULL: none; drained
 * into the head, chunk-framed when the client chunks). Returns 0, or -1
 * after answering. */
static int mg_proxy_begin(mg_req_t *r, struct evbuffer *pre) {
    struct evbuffer *h = mg_ux_buf_new();
    mg_route_t *rt = r->route;
    const mg_lproxy_t *lp = r->lproxy;
    const char *path = r->hbuf, *query = r->hbuf + r->path_len;
    const char *m = llhttp_method_name((llhttp_method_t)r->method);
    size_t path_len = r->path_len, query_len = r->url_len - r->path_len; /* with its '?' */
    size_t ml = strlen(m), o = 0;
    struct evbuffer_iovec v;
    char *out;
    int end_now, slash = 0;
    mg_fwd_t fwd;

    if (lp && lp->path_len >= 0) {
        path = mg_lproxy_path(lp);
        path_len = (size_t)lp->path_len;
    } else if (rt->strip_prefix && rt->prefix) {
        size_t k = mg_route_strip_len(rt, path, path_len);
        path += k;
        path_len -= k;
        slash = path_len == 0 || path[0] != '/';
    }
    if (lp && lp->query_len >= 0) {
        query = mg_lproxy_query(lp);
        query_len = (size_t)lp->query_len; /* without its '?' */
    }
    /* the whole head in one piece of h, written once: its size is bounded
     * by the request line, mg_fwd_size and the framing line */
    if (h == NULL || evbuffer_reserve_space(
                         h,
                         (ev_ssize_t)(ml + path_len + query_len + mg_fwd_size(r) +
                                      sizeof(" / ? HTTP/1.1\r\nContent-Length: \r\n\r\n") + 24),
                         &v, 1) < 1) {
        if (h)
            evbuffer_free(h);
        mg_resp_json_error(r, 500, "out of memory");
        return -1;
    }
    out = v.iov_base;
#define MG_PUT(s, n) (memcpy(out + o, (s), (n)), o += (n))
#define MG_PUTS(lit) MG_PUT(lit, sizeof(lit) - 1)
    MG_PUT(m, ml);
    MG_PUTS(" ");
    if (slash)
        MG_PUTS("/");
    MG_PUT(path, path_len);
    if (lp && lp->query_len >= 0) {
        if (query_len > 0) {
            MG_PUTS("?");
            MG_PUT(query, query_len);
        }
    } else {
        MG_PUT(query, query_len);
    }
    MG_PUTS(" HTTP/1.1\r\n");
    o += mg_fwd_headers(r, out + o, MG_FWD_DROP_EXPECT, &fwd);
    o += mg_fwd_tail(r, &fwd, out + o);
    if (r->chunked) {
        MG_PUTS("Transfer-Encoding: chunked\r\n");
    } else if (r->clen >= 0) {
        char num[24];
        o += mg_line_put(out + o, "Content-Length", 14, num, mg_utoa(num, (uint64_t)r->clen));
    }
    MG_PUTS("\r\n");
#undef MG_PUT
#undef MG_PUTS
    v.iov_len = o;
    evbuffer_commit_space(h, &v, 1);
    /* what the handler's target took in already goes first, in the head's
     * buffer: a retry on another connection sends it again */
    if (pre && evbuffer_get_length(pre)) {
        if (r->chunked) {
            char hex[24];
            int n = snprintf(hex, sizeof(hex), "%zx\r\n", evbuffer_get_length(pre));
            evbuffer_add(h, hex, n);
            evbuffer_add_buffer(h, pre);
            evbuffer_add(h, "\r\n", 2);
        } else {
            evbuffer_add_buffer(h, pre);
        }
    }
    end_now = (!r->chunked && r->clen <= 0) || (pre && r->state == MG_REQ_DONE);
    if (pre && r->chunked && r->state == MG_REQ_DONE)
        evbuffer_add(h, "0\r\n\r\n", 5);

    r->ux = mg_ux_start(lp ? lp->up : rt->upstream, h, mg_proxy_method_idempotent(r->method),
                        r->method == HTTP_HEAD, &mg_proxy_sink, r, lp ? lp->timeout_ms : 0);
    if (r->ux == NULL) {
        mg_resp_json_error(r, 502, "out of memory");
        return -1;
    }
    r->target = &mg_proxy_target;
    /* the Lua target may have paused the client past its high-water mark */
    if (pre && r->state != MG_REQ_DONE && !mg_req_gone(r))
        mg_req_read_pause(r, mg_ux_pending(r->ux) > MG_HIGH_WATER);
    if (end_now)
        mg_ux_end(r->ux); /* the request is complete (the last use of r here) */
    return 0;
}

void mg_proxy_start(mg_req_t *r) { mg_proxy_begin(r, NULL); }

/* moongate.proxy from a handler (mg_lua_hooks_t.proxy): the coroutine
 * ended; the proxy takes the request. Outside the HTTP session's parser,
 * so an answer here ends the request at once. */
static void mg_proxy_from_lua(mg_req_t *r, struct evbuffer *pre) {
    if (mg_proxy_begin(r, pre) < 0)
        mg_req_target_done(r);
}

static const mg_lua_hooks_t mg_proxy_lua_hooks = {.proxy = mg_proxy_from_lua};

void mg_proxy_init(void) { mg_lua_set_hooks(&mg_proxy_lua_hooks); }

static void mg_proxy_body(mg_req_t *r, const char *data, size_t len) {
    if (r->chunked) {
        char hex[24];
        int n = snprintf(hex, sizeof(hex), "%zx\r\n", len);
        mg_ux_send(r->ux, hex, n);
        if (r->ux == NULL)
            return;
        mg_ux_send(r->ux, data, len);
        if (r->ux == NULL)
            return;
        mg_ux_send(r->ux, "\r\n", 2);
    } else {
        mg_ux_send(r->ux, data, len);
    }
    /* the upstream is slower than the client; on_drain resumes, also when a
     * later send of the same read (one per chunk) empties the buffer */
    if (r->ux && !mg_req_gone(r) && mg_ux_pending(r->ux) > MG_HIGH_WATER)
        mg_req_read_pause(r, 1);
}

static void mg_proxy_body_end(mg_req_t *r) {
    if (r->chunked) {
        mg_ux_send(r->ux, "0\r\n\r\n", 5);
        if (r->ux == NULL)
            return;
    }
    if (r->chunked || r->clen > 0)
        mg_ux_end(r->ux);
}

static void mg_proxy_client_drained(mg_req_t *r) {
    if (r->ux)
        mg_ux_pause(r->ux, 0);
}

static void mg_proxy_client_gone(mg_req_t *r) {
    if (r->ux) {
        mg_ux_cancel(r->ux);
        mg_proxy_detach(r);
    }
}

/* moongate.proxy's content_type: does the response's Content-Type contain
 * it (any case)? A response without a body passes. */
static int mg_proxy_ctype_ok(const mg_lproxy_t *lp, int status, mg_kv_t *hdrs, int nhdrs,
                             int64_t clen, int head_only) {
    const char *want = mg_lproxy_ctype(lp);
    size_t wl = (size_t)lp->ctype_len;
    int w0 = (unsigned char)want[0] | 0x20;
    if (head_only || status == 204 || status == 304 || clen == 0)
        return 1;
    for (int i = 0; i < nhdrs; i++) {
        if (!mg_name_eq(hdrs[i].name, hdrs[i].nlen, "content-type", 12))
            continue;
        /* want anywhere in the value, any case; the first byte folded
         * (| 0x20 keeps bytes equal without case equal) before the call,
         * as mg_name_eq does: most positions stop there */
        for (size_t j = 0; j + wl <= hdrs[i].vlen; j++)
            if (((unsigned char)hdrs[i].value[j] | 0x20) == w0 &&
                strncasecmp(hdrs[i].value + j, want, wl) == 0)
                return 1;
        return 0;
    }
    return 0;
}

/* Response head, as the client will see it; built in one per-worker
 * buffer since the upstream head is bounded (64 KiB). */
static char mg_proxy_hbuf[80 * 1024];

static void mg_proxy_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                             int64_t clen, int chunked) {
    mg_req_t *r = ud;
    mg_fwd_tokens_t tok = {.count = 0};
    size_t o = 0;
    int i;
    (void)http_minor, (void)chunked;
    r->up_status = status;
    r->up_addr = mg_ux_peer_name(r->ux);
    if (r->lproxy && r->lproxy->ctype_len > 0 &&
        !mg_proxy_ctype_ok(r->lproxy, status, hdrs, nhdrs, clen, r->method == HTTP_HEAD)) {
        /* moongate.proxy's content_type: this answer is not one to pass on */
        mg_ux_cancel(r->ux);
        mg_proxy_on_error(r, 502, "upstream response of another content type");
        return;
    }

    for (i = 0; i < nhdrs; i++)
        if (mg_name_eq(hdrs[i].name, hdrs[i].nlen, "connection", 10))
            mg_fwd_conn_tokens(&tok, hdrs[i].value, hdrs[i].vlen);
    for (i = 0; i < nhdrs; i++) {
        mg_kv_t *h = &hdrs[i];
        if (mg_http_hop_by_hop(h->name, h->nlen) ||
            (tok.count && mg_fwd_tokens_has(&tok, h->name, h->nlen)) ||
            mg_name_is4(h->name, h->nlen, "date") ||
            mg_http_lines_have(r->rxhdrs.p, r->rxhdrs.len, h->name, h->nlen))
            continue;
        if (o + h->nlen + h->vlen + 4 > sizeof(mg_proxy_hbuf))
            break;
        o += mg_line_put(mg_proxy_hbuf + o, h->name, h->nlen, h->value, h->vlen);
    }
    if (r->rxhdrs.len && o + r->rxhdrs.len <= sizeof(mg_proxy_hbuf)) {
        memcpy(mg_proxy_hbuf + o, r->rxhdrs.p, r->rxhdrs.len); /* req:set_response_header() */
        o += r->rxhdrs.len;
    }
    /* the route's response-head phase (dispatch.c: header_filter plugins) */
    o = mg_gw_head_filter(r, &status, mg_proxy_hbuf, o, sizeof(mg_proxy_hbuf));
    /* a HEAD response keeps the upstream's Content-Length; chunked and
     * close-delimited bodies are re-framed for this client */
    mg_resp_head(r, status, mg_proxy_hbuf, o, clen);
}

static int mg_proxy_on_body(void *ud, const char *data, size_t len) {
    mg_req_t *r = ud;
    if (mg_req_gone(r))
        return 0;
    mg_resp_body(r, data, len);
    return mg_req_pending(r) > MG_HIGH_WATER;
}

static void mg_proxy_on_flush(void *ud) {
    mg_req_t *r = ud;
    if (mg_req_gone(r))
        return;
    mg_req_flush(r);
    /* the write may have drained it all: then no write event will come
     * to resume the upstream, so do it here */
    if (r->ux && !mg_req_gone(r) && mg_req_pending(r) < MG_LOW_WATER)
        mg_ux_pause(r->ux, 0);
}

static void mg_proxy_on_done(void *ud) {
    mg_req_t *r = ud;
    r->up_ms = r->ux ? mg_ux_ms(r->ux) : 0; /* the access log's upstream_ms */
    mg_proxy_detach(r);
    mg_resp_end(r);
    mg_req_target_done(r);
}

static void mg_proxy_on_error(void *ud, int status, const char *msg) {
    mg_req_t *r = ud;
    if (r->ux && r->up_addr == NULL)
        r->up_addr = mg_ux_peer_name(r->ux);
    r->up_ms = r->ux ? mg_ux_ms(r->ux) : 0;
    mg_proxy_detach(r);
    if (status && !r->resp_started) {
        mg_warn("request %s: %s %.*s: %s (%d)", r->request_id,
                llhttp_method_name((llhttp_method_t)r->method), (int)r->path_len, r->hbuf, msg,
                status);
        /* moongate.proxy's on_error answers, or the JSON error */
        if (!mg_lua_proxy_error(r, status, msg))
            mg_resp_json_error(r, status, msg);
        mg_req_target_done(r);
        return;
    }
    mg_req_abort(r);
}

static void mg_proxy_on_drain(void *ud) {
    mg_req_t *r = ud;
    if (!mg_req_gone(r))
        mg_req_read_pause(r, 0);
}
