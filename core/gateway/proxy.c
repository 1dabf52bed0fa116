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

void mg_proxy_start(mg_req_t *r) {
    struct evbuffer *h = evbuffer_new();
    mg_route_t *rt = r->route;
    const char *url = r->hbuf;
    size_t url_len = r->url_len;
    mg_fwd_t fwd;

    if (h == NULL) {
        mg_resp_json_error(r, 500, "out of memory");
        return;
    }
    {
        const char *m = llhttp_method_name((llhttp_method_t)r->method);
        evbuffer_add(h, m, strlen(m));
        evbuffer_add(h, " ", 1);
    }
    if (rt->strip_prefix && rt->prefix) {
        size_t k = mg_route_strip_len(rt, url, r->path_len);
        url += k;
        url_len -= k;
        if (url_len == 0 || url[0] != '/')
            evbuffer_add(h, "/", 1);
    }
    evbuffer_add(h, url, url_len);
    evbuffer_add(h, " HTTP/1.1\r\n", 11);
    mg_fwd_headers(r, h, MG_FWD_DROP_EXPECT, &fwd);
    {
        /* the tail of the head in one buffer, without printf */
        char tail[MG_FWD_TAIL_MAX + 64];
        size_t o = mg_fwd_tail(r, &fwd, h, tail);
#define MG_PUT(s, n) (memcpy(tail + o, (s), (n)), o += (n))
#define MG_PUTS(lit) MG_PUT(lit, sizeof(lit) - 1)
        if (r->chunked) {
            MG_PUTS("Transfer-Encoding: chunked\r\n");
        } else if (r->clen >= 0) {
            char num[24];
            o += mg_line_put(tail + o, "Content-Length", 14, num, mg_utoa(num, (uint64_t)r->clen));
        }
        MG_PUTS("\r\n");
#undef MG_PUT
#undef MG_PUTS
        evbuffer_add(h, tail, o);
    }

    r->ux = mg_ux_start(rt->upstream, h, mg_proxy_method_idempotent(r->method),
                        r->method == HTTP_HEAD, &mg_proxy_sink, r, 0);
    if (r->ux == NULL) {
        mg_resp_json_error(r, 502, "out of memory");
        return;
    }
    r->target = &mg_proxy_target;
    if (!r->chunked && r->clen <= 0)
        mg_ux_end(r->ux); /* no body: the request is complete */
}

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

    for (i = 0; i < nhdrs; i++)
        if (mg_name_eq(hdrs[i].name, hdrs[i].nlen, "connection", 10))
            mg_fwd_conn_tokens(&tok, hdrs[i].value, hdrs[i].vlen);
    for (i = 0; i < nhdrs; i++) {
        mg_kv_t *h = &hdrs[i];
        if (mg_http_hop_by_hop(h->name, h->nlen) || mg_fwd_tokens_has(&tok, h->name, h->nlen) ||
            mg_name_eq(h->name, h->nlen, "date", 4) ||
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
