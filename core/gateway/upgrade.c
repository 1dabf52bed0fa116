/*
 * upgrade.c -- from an HTTP upgrade request to a running WebSocket: the
 * handshake check (RFC 6455 4.2.1, on the request; the pure parts are
 * ws/ws_handshake.c), then by the route's mode: handler mode answers 101
 * and hands the connection to the Lua handler (lua_ws.c); tunnel and relay
 * modes send the upgrade to the upstream (its forwarding headers from
 * fwd.c; the relay with its own key and `Connection: Upgrade` exactly)
 * while the client waits, pass a refusal or failure back to the client,
 * and on the upstream's 101 answer the client and start the tunnel
 * (tunnel.c) or the relay (relay.c).
 */
#include "gateway/upgrade.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mg_write_all(mg_io_t *io, const char *p, size_t n) {
    /* only for short heads on fresh sockets; a full socket buffer here
     * means the peer is not reading at all */
    while (n) {
        ssize_t w = mg_io_write(io, p, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return MG_ERR;
        }
        p += w;
        n -= w;
    }
    return MG_OK;
}

static void mg_upgrade_line(struct evbuffer *b, const char *name, const char *value) {
    mg_line_add(b, name, strlen(name), value, strlen(value));
}

/* Our 101 to the client (handler and relay modes). */
static int mg_upgrade_send_101(mg_io_t *io, const mg_ws_hs_t *hs) {
    static const char l1[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\n";
    struct evbuffer *b = evbuffer_new();
    int rc;
    evbuffer_add(b, l1, sizeof(l1) - 1);
    mg_upgrade_line(b, "Sec-WebSocket-Accept", hs->accept);
    if (hs->protocol[0])
        mg_upgrade_line(b, "Sec-WebSocket-Protocol", hs->protocol);
    if (hs->pmd)
        mg_upgrade_line(b, "Sec-WebSocket-Extensions", hs->pmd_resp);
    evbuffer_add(b, "\r\n", 2);
    rc = mg_write_all(io, (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    return rc;
}

/* The upgrade request for the upstream: the client's end-to-end headers
 * and the forwarding headers (fwd.c) around our Upgrade. `own_key` (relay)
 * replaces the client's WebSocket headers with ours. NULL: out of memory. */
static struct evbuffer *mg_upgrade_upstream_head(mg_req_t *r, const char *own_key,
                                                 const char *protocol) {
    struct evbuffer *h = evbuffer_new();
    const char *path = r->hbuf;
    size_t plen = r->url_len;
    mg_ws_conf_t *wc = r->route->ws;
    struct evbuffer_iovec v;
    mg_fwd_t fwd;

    if (h == NULL)
        return NULL;
    if (wc->upstream_path) {
        path = wc->upstream_path;
        plen = strlen(path);
    } else if (r->route->strip_prefix && r->route->prefix) {
        size_t k = mg_route_strip_len(r->route, path, r->path_len);
        path += k;
        plen -= k;
    }
    evbuffer_add(h, "GET ", 4);
    if (plen == 0 || path[0] != '/')
        evbuffer_add(h, "/", 1);
    evbuffer_add(h, path, plen);
    if (wc->upstream_path && !strchr(wc->upstream_path, '?') && r->url_len > r->path_len)
        evbuffer_add(h, r->hbuf + r->path_len, r->url_len - r->path_len); /* the client's query */
    evbuffer_add(h, " HTTP/1.1\r\n", 11);
    if (evbuffer_reserve_space(h, (ev_ssize_t)mg_fwd_size(r), &v, 1) < 1) {
        evbuffer_free(h);
        return NULL;
    }
    v.iov_len = mg_fwd_headers(r, v.iov_base, own_key ? MG_FWD_DROP_WS_KEYS : 0, &fwd);
    evbuffer_commit_space(h, &v, 1);
    /* exactly this: some backends refuse "keep-alive, Upgrade" */
    evbuffer_add(h, "Upgrade: websocket\r\nConnection: Upgrade\r\n", 41);
    if (own_key) {
        mg_upgrade_line(h, "Sec-WebSocket-Key", own_key);
        mg_upgrade_line(h, "Sec-WebSocket-Version", "13");
        if (protocol && protocol[0])
            mg_upgrade_line(h, "Sec-WebSocket-Protocol", protocol);
    }
    if (evbuffer_reserve_space(h, (ev_ssize_t)mg_fwd_size(r) + 2, &v, 1) < 1) {
        evbuffer_free(h);
        return NULL;
    }
    v.iov_len = mg_fwd_tail(r, &fwd, v.iov_base);
    memcpy((char *)v.iov_base + v.iov_len, "\r\n", 2);
    v.iov_len += 2;
    evbuffer_commit_space(h, &v, 1);
    return h;
}

/* ---- pending upgrade: the client waits while we reach the upstream ---- */

static void mg_upgrade_free(mg_upgrade_t *p) {
    if (p->ctx_ref != LUA_NOREF)
        luaL_unref(p->gen->L, LUA_REGISTRYINDEX, p->ctx_ref);
    mg_io_close(&p->cio);
    if (p->resp)
        evbuffer_free(p->resp);
    free(p->pre);
    free(p->alog); /* not handed on nor written: the client is gone */
    mg_gen_release(p->gen);
    free(p);
}

/* The upgrade request in moongate_http_requests_total and its duration
 * histogram, with the status the client got (101, or 200 for RFC 8441; a
 * refusal's), as an HTTP request's answer is counted when it ends. */
static void mg_upgrade_count(int met, int met_m, double t_start, int status, uint64_t out) {
    (void)met, (void)met_m, (void)t_start, (void)status, (void)out; /* MG_METRICS_OFF */
    mg_met_http(met, met_m, status, mg_now() - t_start, 0, out);
}

static void mg_upgrade_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                               int64_t clen, int chunked) {
    mg_upgrade_t *p = ud;
    mg_fwd_tokens_t tok = {.count = 0};
    int i;
    (void)http_minor, (void)clen, (void)chunked;
    /* the upstream refused the upgrade: pass its answer on, then close */
    p->status = status;
    p->resp = evbuffer_new();
    evbuffer_add_printf(p->resp, "HTTP/1.1 %d %s\r\n", status, mg_http_status_text(status));
    for (i = 0; i < nhdrs; i++)
        if (MG_NAME_IS(hdrs[i].name, hdrs[i].nlen, "connection"))
            mg_fwd_conn_tokens(&tok, hdrs[i].value, hdrs[i].vlen);
    for (i = 0; i < nhdrs; i++) {
        if (mg_http_hop_by_hop(hdrs[i].name, hdrs[i].nlen) ||
            mg_fwd_tokens_has(&tok, hdrs[i].name, hdrs[i].nlen))
            continue;
        mg_line_add(p->resp, hdrs[i].name, hdrs[i].nlen, hdrs[i].value, hdrs[i].vlen);
    }
}

static struct evbuffer *mg_upgrade_body;

static int mg_upgrade_on_body(void *ud, const char *data, size_t len) {
    mg_upgrade_t *p = ud;
    if (mg_upgrade_body == NULL)
        mg_upgrade_body = evbuffer_new();
    (void)p;
    if (evbuffer_get_length(mg_upgrade_body) + len <= 65536)
        evbuffer_add(mg_upgrade_body, data, len);
    return 0;
}

static void mg_upgrade_on_done(void *ud) {
    mg_upgrade_t *p = ud;
    size_t bl = mg_upgrade_body ? evbuffer_get_length(mg_upgrade_body) : 0;
    size_t n;
    evbuffer_add_printf(p->resp, "Content-Length: %zu\r\nConnection: close\r\n\r\n", bl);
    if (bl)
        evbuffer_add_buffer(p->resp, mg_upgrade_body);
    n = evbuffer_get_length(p->resp);
    if (mg_write_all(&p->cio, (const char *)evbuffer_pullup(p->resp, -1), n) != MG_OK)
        n = 0;
    mg_io_shutdown(&p->cio);
    mg_upgrade_count(p->met, p->met_m, p->t_start, p->status, n);
    mg_http_wslog_refused(p->alog, p->status, p->status, n);
    p->alog = NULL;
    mg_upgrade_free(p);
}

static void mg_upgrade_on_error(void *ud, int status, const char *msg) {
    mg_upgrade_t *p = ud;
    char body[600], head[200];
    int bl, hl;
    if (mg_upgrade_body)
        evbuffer_drain(mg_upgrade_body, evbuffer_get_length(mg_upgrade_body));
    if (status == 0)
        status = 502;
    mg_warn("request %s: websocket upstream: %s (%d)", p->request_id, msg, status);
    bl = mg_json_error_body(body, sizeof(body), msg, p->request_id);
    hl = snprintf(head, sizeof(head),
                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n\r\n",
                  status, mg_http_status_text(status), bl);
    if (mg_write_all(&p->cio, head, hl) != MG_OK || mg_write_all(&p->cio, body, bl) != MG_OK)
        hl = bl = 0;
    mg_io_shutdown(&p->cio);
    mg_upgrade_count(p->met, p->met_m, p->t_start, status, (uint64_t)hl + (uint64_t)bl);
    mg_http_wslog_refused(p->alog, status, p->status, (uint64_t)hl + (uint64_t)bl);
    p->alog = NULL;
    mg_upgrade_free(p);
}

/* The upstream's 101: the tunnel passes it on as it came; the relay checks
 * the upstream's answer to our key and answers the client itself. */
static void mg_upgrade_on_upgrade(void *ud, mg_io_t *uio, mg_kv_t *hdrs, int nhdrs,
                                  const char *extra, size_t extralen) {
    mg_upgrade_t *p = ud;
    int i, rc;
    if (p->mode == MG_WS_TUNNEL) {
        struct evbuffer *head = evbuffer_new();
        static const char l1[] = "HTTP/1.1 101 Switching Protocols\r\n";
        evbuffer_add(head, l1, sizeof(l1) - 1);
        for (i = 0; i < nhdrs; i++)
            mg_line_add(head, hdrs[i].name, hdrs[i].nlen, hdrs[i].value, hdrs[i].vlen);
        evbuffer_add(head, "\r\n", 2);
        size_t hl = evbuffer_get_length(head);
        rc = mg_write_all(&p->cio, (const char *)evbuffer_pullup(head, -1), hl);
        evbuffer_free(head);
        if (rc == MG_OK) {
            mg_upgrade_count(p->met, p->met_m, p->t_start, p->ok_status, hl);
            mg_tunnel_start(p, uio, extra, extralen);
        }
    } else {
        char want[40];
        int ok = 0;
        mg_ws_accept_for(p->key, strlen(p->key), want);
        for (i = 0; i < nhdrs; i++)
            if (MG_NAME_IS(hdrs[i].name, hdrs[i].nlen, "sec-websocket-accept") &&
                hdrs[i].vlen == strlen(want) && memcmp(hdrs[i].value, want, hdrs[i].vlen) == 0)
                ok = 1;
        if (!ok) {
            mg_io_close(uio);
            p->status = 101; /* what the upstream said, for the access log */
            mg_upgrade_on_error(p, 502, "upstream sent a bad websocket handshake");
            return;
        }
        if (mg_upgrade_send_101(&p->cio, &p->hs) == MG_OK) {
            mg_upgrade_count(p->met, p->met_m, p->t_start, p->ok_status, 0);
            mg_relay_start(p, uio, extra, extralen);
        }
    }
    mg_upgrade_free(p); /* and what the mode did not take */
}

static const mg_ux_sink_t mg_upgrade_sink = {
    .on_head = mg_upgrade_on_head,
    .on_body = mg_upgrade_on_body,
    .on_done = mg_upgrade_on_done,
    .on_error = mg_upgrade_on_error,
    .on_upgrade = mg_upgrade_on_upgrade,
};

/* ---- the handshake check ---- */

/* Reads the request's handshake headers; the checks on their values are
 * ws/ws_handshake.c's. */
int mg_ws_handshake_check(mg_req_t *r, mg_ws_hs_t *hs, const char **why) {
    mg_ws_conf_t *wc = r->route->ws;
    const char *v, *key;
    size_t vl, kl;

    memset(hs, 0, sizeof(*hs));
    if (r->method != HTTP_GET || r->http_minor < 1) {
        *why = "websocket handshake needs GET and HTTP/1.1";
        return 400;
    }
    v = mg_req_header(r, "upgrade", &vl);
    if (v == NULL || !mg_ws_token_in(v, vl, "websocket")) {
        *why = "websocket handshake needs Upgrade: websocket";
        return 400;
    }
    v = mg_req_header(r, "connection", &vl);
    if (v == NULL || !mg_ws_token_in(v, vl, "upgrade")) {
        *why = "websocket handshake needs Connection: Upgrade";
        return 400;
    }
    v = mg_req_header(r, "sec-websocket-version", &vl);
    if (v == NULL || vl != 2 || memcmp(v, "13", 2) != 0) {
        *why = "unsupported websocket version";
        return 426;
    }
    key = mg_req_header(r, "sec-websocket-key", &kl);
    if (mg_req_header_n(r, "sec-websocket-key", 1, &vl) != NULL) {
        *why = "repeated Sec-WebSocket-Key";
        return 400;
    }
    if (!mg_ws_key_ok(key, kl)) {
        *why = "bad Sec-WebSocket-Key";
        return 400;
    }
    if (r->clen > 0 || r->chunked) {
        *why = "websocket handshake with a body";
        return 400;
    }
    if (wc->norigins) {
        v = mg_req_header(r, "origin", &vl);
        if (!mg_ws_origin_ok(wc, v, vl)) {
            *why = "origin not allowed";
            return 403;
        }
    }
    mg_ws_accept_for(key, kl, hs->accept);
    /* repeated header lines form one list (RFC 6455 11.3.4); the
     * client's order of preference wins among the route's protocols */
    for (int line = 0; wc->nprotocols && !hs->protocol[0] &&
                       (v = mg_req_header_n(r, "sec-websocket-protocol", line, &vl)) != NULL;
         line++)
        mg_ws_pick_protocol(wc, v, vl, hs);
    if (wc->deflate && wc->mode != MG_WS_TUNNEL)
        for (int line = 0;
             !hs->pmd && (v = mg_req_header_n(r, "sec-websocket-extensions", line, &vl)) != NULL;
             line++)
            mg_ws_negotiate_pmd(v, vl, hs);
    return 0;
}

/* ---- entry: the HTTP session hands over its connection ---- */

void mg_ws_takeover(mg_req_t *r, mg_io_t *io, const char *pre, size_t pre_len) {
    mg_ws_conf_t *wc = r->route->ws;
    mg_ws_hs_t hs;
    const char *why;
    mg_upgrade_t *p;
    struct evbuffer *head;

    if (mg_ws_handshake_check(r, &hs, &why) != 0) {
        mg_io_close(io); /* checked before; cannot fail here */
        return;
    }
    if (wc->mode == MG_WS_HANDLER) {
        if (mg_upgrade_send_101(io, &hs) != MG_OK) {
            mg_io_close(io);
            return;
        }
        mg_upgrade_count(mg_route_met(r->route), mg_met_method_class(r->method), r->t_start,
                         r->h2_ws ? 200 : 101, 0);
        mg_lua_ws_start(r, io, &hs, pre, pre_len);
        return;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        mg_io_close(io);
        return;
    }
    mg_io_move(&p->cio, io);
    p->gen = r->gen;
    mg_gen_retain(p->gen);
    p->route = r->route;
    p->mode = wc->mode;
    p->hs = hs;
    p->ctx_ref = wc->mode == MG_WS_RELAY ? mg_lua_ws_ctx_ref(r) : LUA_NOREF;
    p->alog = mg_http_wslog_new(r);
    p->met = mg_route_met(r->route);
    p->met_m = mg_met_method_class(r->method);
    p->t_start = r->t_start;
    p->ok_status = r->h2_ws ? 200 : 101;
    memcpy(p->request_id, r->request_id, sizeof(p->request_id));
    if (pre_len) {
        p->pre = malloc(pre_len);
        if (p->pre) {
            memcpy(p->pre, pre, pre_len);
            p->pre_len = pre_len;
        }
    }
    if (wc->mode == MG_WS_RELAY) {
        mg_ws_key(p->key);
        head = mg_upgrade_upstream_head(r, p->key, hs.protocol);
    } else {
        head = mg_upgrade_upstream_head(r, NULL, NULL);
    }
    {
        mg_ux_t *ux =
            head ? mg_ux_start(r->route->upstream, head, 1, 0, &mg_upgrade_sink, p, 0) : NULL;
        if (ux == NULL) { /* out of memory */
            mg_upgrade_free(p);
            return;
        }
        mg_ux_end(ux);
    }
}
