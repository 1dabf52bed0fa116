/*
 * ws_http.c -- from an HTTP upgrade request to a running WebSocket: the
 * 101 answer for handler mode, the tunnel (Upgrade proxied, then bytes
 * spliced both ways with backpressure and an idle timeout) and the relay
 * (moongate terminates the client's socket and opens its own to the
 * upstream, `Connection: Upgrade` exactly, then relays message by message
 * through the route's on_message hook).
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- shared bits ---- */

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

static void mg_ws_101(struct evbuffer *b, const mg_ws_hs_t *hs) {
    evbuffer_add_printf(b,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                        hs->accept);
    if (hs->protocol[0])
        evbuffer_add_printf(b, "Sec-WebSocket-Protocol: %s\r\n", hs->protocol);
    if (hs->pmd)
        evbuffer_add_printf(b, "Sec-WebSocket-Extensions: %s\r\n", hs->pmd_resp);
    evbuffer_add(b, "\r\n", 2);
}

static int mg_ws_send_101(mg_io_t *io, const mg_ws_hs_t *hs) {
    struct evbuffer *b = evbuffer_new();
    int rc;
    mg_ws_101(b, hs);
    rc = mg_write_all(io, (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    return rc;
}

/* The upgrade request for the upstream: the client's end-to-end headers
 * and the forwarding headers (fwd.c) around our Upgrade. `own_key` (relay)
 * replaces the client's WebSocket headers with ours. */
static struct evbuffer *mg_ws_upstream_head(mg_req_t *r, const char *own_key,
                                            const char *protocol) {
    struct evbuffer *h = evbuffer_new();
    const char *path = r->hbuf;
    size_t plen = r->url_len;
    mg_ws_conf_t *wc = r->route->ws;
    mg_fwd_t fwd;
    char tail[MG_FWD_TAIL_MAX];
    size_t o;

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
    mg_fwd_headers(r, h, own_key ? MG_FWD_DROP_WS_KEYS : 0, &fwd);
    /* exactly this: some backends refuse "keep-alive, Upgrade" */
    evbuffer_add_printf(h, "Upgrade: websocket\r\nConnection: Upgrade\r\n");
    if (own_key) {
        evbuffer_add_printf(h, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", own_key);
        if (protocol && protocol[0])
            evbuffer_add_printf(h, "Sec-WebSocket-Protocol: %s\r\n", protocol);
    }
    o = mg_fwd_tail(r, &fwd, h, tail);
    evbuffer_add(h, tail, o);
    evbuffer_add(h, "\r\n", 2);
    return h;
}

/* ---- pending upgrade: the client waits while we reach the upstream ---- */

typedef struct {
    mg_io_t cio; /* the client's connection */
    mg_gen_t *gen;
    mg_route_t *route;
    int mode;
    mg_ws_hs_t hs;
    char key[32]; /* relay: our key to the upstream */
    char *pre;    /* client bytes read past its head */
    size_t pre_len;
    int status; /* non-101 answer being relayed */
    struct evbuffer *resp;
    char request_id[40];
    int ctx_ref; /* req.ctx for the relay's hooks */
    mg_http_wslog_t *alog;
} mg_wsp_t;

static void mg_wsp_free(mg_wsp_t *p) {
    if (p->ctx_ref != LUA_NOREF)
        luaL_unref(p->gen->L, LUA_REGISTRYINDEX, p->ctx_ref);
    mg_io_close(&p->cio);
    if (p->resp)
        evbuffer_free(p->resp);
    free(p->pre);
    free(p->alog); /* not handed on: the upgrade did not happen */
    mg_gen_release(p->gen);
    free(p);
}

static void mg_wsp_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                           int64_t clen, int chunked) {
    mg_wsp_t *p = ud;
    mg_fwd_tokens_t tok = {.count = 0};
    int i;
    (void)http_minor, (void)clen, (void)chunked;
    /* the upstream refused the upgrade: pass its answer on, then close */
    p->status = status;
    p->resp = evbuffer_new();
    evbuffer_add_printf(p->resp, "HTTP/1.1 %d %s\r\n", status, mg_status_text(status));
    for (i = 0; i < nhdrs; i++)
        if (MG_NAME_IS(hdrs[i].name, hdrs[i].nlen, "connection"))
            mg_fwd_conn_tokens(&tok, hdrs[i].value, hdrs[i].vlen);
    for (i = 0; i < nhdrs; i++) {
        if (mg_http_hop_by_hop(hdrs[i].name, hdrs[i].nlen) ||
            mg_fwd_tokens_has(&tok, hdrs[i].name, hdrs[i].nlen))
            continue;
        evbuffer_add(p->resp, hdrs[i].name, hdrs[i].nlen);
        evbuffer_add(p->resp, ": ", 2);
        evbuffer_add(p->resp, hdrs[i].value, hdrs[i].vlen);
        evbuffer_add(p->resp, "\r\n", 2);
    }
}

static struct evbuffer *mg_wsp_body;

static int mg_wsp_on_body(void *ud, const char *data, size_t len) {
    mg_wsp_t *p = ud;
    if (mg_wsp_body == NULL)
        mg_wsp_body = evbuffer_new();
    (void)p;
    if (evbuffer_get_length(mg_wsp_body) + len <= 65536)
        evbuffer_add(mg_wsp_body, data, len);
    return 0;
}

static void mg_wsp_on_done(void *ud) {
    mg_wsp_t *p = ud;
    size_t bl = mg_wsp_body ? evbuffer_get_length(mg_wsp_body) : 0;
    evbuffer_add_printf(p->resp, "Content-Length: %zu\r\nConnection: close\r\n\r\n", bl);
    if (bl)
        evbuffer_add_buffer(p->resp, mg_wsp_body);
    mg_write_all(&p->cio, (const char *)evbuffer_pullup(p->resp, -1), evbuffer_get_length(p->resp));
    mg_io_shutdown(&p->cio);
    mg_wsp_free(p);
}

static void mg_wsp_on_error(void *ud, int status, const char *msg) {
    mg_wsp_t *p = ud;
    char body[600], head[200];
    int bl, hl;
    if (mg_wsp_body)
        evbuffer_drain(mg_wsp_body, evbuffer_get_length(mg_wsp_body));
    if (status == 0)
        status = 502;
    mg_warn("request %s: websocket upstream: %s (%d)", p->request_id, msg, status);
    bl = mg_json_error_body(body, sizeof(body), msg, p->request_id);
    hl = snprintf(head, sizeof(head),
                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n\r\n",
                  status, mg_status_text(status), bl);
    mg_write_all(&p->cio, head, hl);
    mg_write_all(&p->cio, body, bl);
    mg_io_shutdown(&p->cio);
    mg_wsp_free(p);
}

static void mg_wsp_on_upgrade(void *ud, mg_io_t *uio, mg_kv_t *hdrs, int nhdrs, const char *extra,
                              size_t extralen);

static const mg_ux_sink_t mg_wsp_sink = {
    .on_head = mg_wsp_on_head,
    .on_body = mg_wsp_on_body,
    .on_done = mg_wsp_on_done,
    .on_error = mg_wsp_on_error,
    .on_upgrade = mg_wsp_on_upgrade,
};

/* ---- tunnel ---- */

typedef struct mg_tunnel_s {
    struct mg_tunnel_s *prev, *next;
    mg_io_t io[2];           /* 0 client, 1 upstream */
    struct evbuffer *out[2]; /* pending bytes towards io[i] */
    struct event rev[2], wev[2], tev;
    int rd_off[2], wr_on[2], eof[2];
    int shut[2];       /* we shut io[i]'s writing (once) */
    int first;         /* the side whose end came first, -1 none yet */
    uint64_t bytes[2]; /* read from side i */
    double last;
    int idle_ms;
    int drain; /* on_reload = "drain" */
    mg_gen_t *gen;
    mg_http_wslog_t *alog;
} mg_tunnel_t;

static mg_tunnel_t *mg_tunnels;

/* Ends the tunnel; `by` says who ended it for the access log (NULL: the
 * side whose end came first). */
static void mg_tunnel_free(mg_tunnel_t *t, const char *by) {
    mg_ws_end_t e = {0, by};
    if (by == NULL)
        e.by = t->first == 0 ? "client" : t->first == 1 ? "upstream" : "none";
    mg_http_wslog_end(t->alog, MG_WS_TUNNEL, 0, e.by, NULL, t->bytes[0], t->bytes[1]);
    if (t->prev)
        t->prev->next = t->next;
    else
        mg_tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    for (int i = 0; i < 2; i++) {
        event_del(&t->rev[i]);
        event_del(&t->wev[i]);
        mg_io_close(&t->io[i]);
        evbuffer_free(t->out[i]);
    }
    event_del(&t->tev);
    mg_gen_release(t->gen);
    free(t);
    mg_worker.active--;
    mg_ws_sockets--;
}

static int mg_tunnel_flush(mg_tunnel_t *t, int i);

/* Bytes from side `from` go to the other side. */
static int mg_tunnel_pass(mg_tunnel_t *t, int from, const char *data, size_t len) {
    int to = !from;
    if (evbuffer_get_length(t->out[to]) == 0) {
        ssize_t w = mg_io_write(&t->io[to], data, len);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return MG_ERR;
        if (w < 0)
            w = 0;
        data += w;
        len -= w;
    }
    if (len) {
        evbuffer_add(t->out[to], data, len);
        if (mg_tunnel_flush(t, to) != MG_OK)
            return MG_ERR;
        if (evbuffer_get_length(t->out[to]) > MG_HIGH_WATER && !t->rd_off[from]) {
            event_del(&t->rev[from]); /* the other side is slower: pause */
            t->rd_off[from] = 1;
        }
    }
    return MG_OK;
}

static void mg_tunnel_shut(mg_tunnel_t *t, int i) {
    if (!t->shut[i]) {
        mg_io_shutdown(&t->io[i]);
        t->shut[i] = 1;
    }
}

/* One read; 1 = read again (the buffer was full). The read events are
 * level-triggered: an EOF or a reset that came with a short read's bytes
 * (FIN, reset, or the EPOLLHUP of a socket we shut) wakes the next
 * epoll_wait again, with no extra recv here. A side that stops reading
 * (paused, or at its end) has its read event removed. */
static int mg_tunnel_read_once(mg_tunnel_t *t, int from) {
    ssize_t n;
    n = mg_io_read(&t->io[from], mg_worker.scratch, sizeof(mg_worker.scratch));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        /* one side finished: pass the half-close on, end when both did */
        t->eof[from] = 1;
        if (t->first < 0)
            t->first = from;
        event_del(&t->rev[from]);
        t->rd_off[from] = 1;
        if (n < 0 || (t->eof[0] && t->eof[1])) {
            mg_tunnel_free(t, NULL);
            return 0;
        }
        if (evbuffer_get_length(t->out[!from]) == 0)
            mg_tunnel_shut(t, !from);
        return 0;
    }
    t->last = mg_now_coarse();
    t->bytes[from] += n;
    if (mg_tunnel_pass(t, from, mg_worker.scratch, n) != MG_OK) {
        mg_tunnel_free(t, from == 0 ? "upstream" : "client"); /* the other side failed */
        return 0;
    }
    /* a full read, or bytes the transport still holds: read again */
    return ((size_t)n == sizeof(mg_worker.scratch) || mg_io_pending(&t->io[from])) &&
           !t->rd_off[from];
}

static void mg_tunnel_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    int from = fd == t->io[0].fd ? 0 : 1;
    (void)what;
    while (mg_tunnel_read_once(t, from))
        ;
}

/* MG_ERR: io[i] failed (a reset): the caller ends the tunnel. Not left to
 * the read side: that side may be paused, and the write event, level-
 * triggered like every EPOLLERR, would fire again at once. */
static int mg_tunnel_flush(mg_tunnel_t *t, int i) {
    size_t left = evbuffer_get_length(t->out[i]);
    if (left) {
        int n = mg_io_write_evbuffer(&t->io[i], t->out[i]);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return MG_ERR;
        left = evbuffer_get_length(t->out[i]);
    }
    if (left && !t->wr_on[i]) {
        event_add(&t->wev[i], NULL);
        t->wr_on[i] = 1;
    } else if (!left && t->wr_on[i]) {
        event_del(&t->wev[i]);
        t->wr_on[i] = 0;
    }
    if (left < MG_LOW_WATER && t->rd_off[!i] && !t->eof[!i]) {
        event_add(&t->rev[!i], NULL);
        t->rd_off[!i] = 0;
    }
    if (!left && t->eof[!i])
        mg_tunnel_shut(t, i);
    return MG_OK;
}

static void mg_tunnel_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    int i = fd == t->io[0].fd ? 0 : 1;
    (void)what;
    t->last = mg_now_coarse();
    if (mg_tunnel_flush(t, i) != MG_OK)
        mg_tunnel_free(t, i == 0 ? "client" : "upstream");
}

static void mg_tunnel_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    double idle = mg_now() - t->last;
    (void)fd, (void)what;
    if (idle * 1000 >= t->idle_ms - 1) {
        mg_debug("tunnel idle for %.1fs, closing", idle);
        mg_tunnel_free(t, "moongate");
        return;
    }
    event_add(&t->tev, mg_timeout_tv(t->idle_ms));
}

static void mg_tunnel_start(mg_wsp_t *p, mg_io_t *uio, mg_kv_t *hdrs, int nhdrs, const char *extra,
                            size_t extralen) {
    mg_tunnel_t *t = calloc(1, sizeof(*t));
    struct evbuffer *head = evbuffer_new();
    int i;

    /* the upstream's 101, as it sent it */
    evbuffer_add_printf(head, "HTTP/1.1 101 Switching Protocols\r\n");
    for (i = 0; i < nhdrs; i++) {
        evbuffer_add(head, hdrs[i].name, hdrs[i].nlen);
        evbuffer_add(head, ": ", 2);
        evbuffer_add(head, hdrs[i].value, hdrs[i].vlen);
        evbuffer_add(head, "\r\n", 2);
    }
    evbuffer_add(head, "\r\n", 2);
    if (t == NULL || mg_write_all(&p->cio, (const char *)evbuffer_pullup(head, -1),
                                  evbuffer_get_length(head)) != MG_OK) {
        evbuffer_free(head);
        free(t);
        mg_io_close(uio);
        mg_wsp_free(p);
        return;
    }
    evbuffer_free(head);
    mg_io_move(&t->io[0], &p->cio);
    mg_io_move(&t->io[1], uio);
    t->gen = p->gen;
    mg_gen_retain(t->gen);
    t->idle_ms = p->route->ws->idle;
    t->drain = p->route->ws->drain_on_reload;
    t->first = -1;
    t->alog = p->alog;
    p->alog = NULL;
    t->last = mg_now();
    for (i = 0; i < 2; i++) {
        t->out[i] = evbuffer_new();
        event_assign(&t->rev[i], mg_worker.base, t->io[i].fd, EV_READ | EV_PERSIST,
                     mg_tunnel_read_cb, t);
        event_assign(&t->wev[i], mg_worker.base, t->io[i].fd, EV_WRITE | EV_PERSIST,
                     mg_tunnel_write_cb, t);
        event_add(&t->rev[i], NULL);
    }
    evtimer_assign(&t->tev, mg_worker.base, mg_tunnel_timer_cb, t);
    if (t->idle_ms > 0)
        event_add(&t->tev, mg_timeout_tv(t->idle_ms));
    mg_worker.active++;
    mg_ws_sockets++;
    t->next = mg_tunnels;
    if (mg_tunnels)
        mg_tunnels->prev = t;
    mg_tunnels = t;
    /* bytes that came early, in either direction */
    if (p->pre_len && mg_tunnel_pass(t, 0, p->pre, p->pre_len) != MG_OK)
        mg_tunnel_free(t, "upstream");
    else if (extralen && mg_tunnel_pass(t, 1, extra, extralen) != MG_OK)
        mg_tunnel_free(t, "client");
    mg_wsp_free(p);
}

/* Stopping: a tunnel has no close handshake to offer, so it just ends. */
void mg_ws_tunnels_close_all(void) {
    while (mg_tunnels)
        mg_tunnel_free(mg_tunnels, "moongate");
}

/* A reload that supersedes a draining route's generation: as the other
 * modes' sockets get their 1012 at once, its tunnels end at once. A tunnel
 * does not parse frames, so it cannot say 1012: both sides get their
 * connection closed (after what the tunnel holds for them, best effort). */
void mg_ws_tunnels_drain(mg_gen_t *newgen) {
    mg_tunnel_t *t = mg_tunnels;
    while (t) {
        mg_tunnel_t *next = t->next;
        if (t->gen != newgen && t->drain) {
            for (int i = 0; i < 2; i++)
                if (evbuffer_get_length(t->out[i]))
                    mg_io_write_evbuffer(&t->io[i], t->out[i]);
            mg_tunnel_free(t, "moongate");
        }
        t = next;
    }
}

/* ---- relay ---- */

typedef struct {
    mg_ws_t *side[2]; /* 0 client, 1 upstream */
    int closing;
    int up_first; /* the upstream's end came first */
    mg_ws_end_t end;
    mg_ws_stats_t st; /* the client side's, kept when it ends */
    mg_http_wslog_t *alog;
    struct event fail_tev; /* a failed client's close waits for the upstream's answers */
    double fail_at;
    int fail_armed;
    int hook_ref; /* the route's on_message hook (LUA_NOREF: none) */
    int ctx_ref;  /* req.ctx of the upgrade request, for the hooks */
    mg_gen_t *gen;
    mg_route_t *route;
} mg_relay_t;

static void mg_relay_on_message(void *ud, mg_ws_t *ws, int op, const char *data, size_t len);
static void mg_relay_on_close(void *ud, mg_ws_t *ws, int code, const char *reason);
static void mg_relay_on_drain(void *ud, mg_ws_t *ws);
static void mg_relay_on_fail(void *ud, mg_ws_t *ws);

static const mg_ws_ops_t mg_relay_ops = {
    .on_message = mg_relay_on_message,
    .on_close = mg_relay_on_close,
    .on_drain = mg_relay_on_drain,
    .on_fail = mg_relay_on_fail,
};

/* The route's on_message hook sees the message; -1 when it closed the relay. */
static int mg_relay_hook(mg_relay_t *rl, int from, int op, const char *data, size_t len) {
    lua_State *L = rl->gen->L;
    int top = lua_gettop(L), code = 1000, rc;
    const char *out = data;
    size_t outlen = len;
    char reason[64];

    rc = mg_ws_msg_hook(L, rl->hook_ref, rl->ctx_ref, op, from == 0 ? "client" : "upstream", data,
                        len, &out, &outlen, &code, reason);
    if (rc == 1)
        mg_ws_send(rl->side[!from], op, out, outlen);
    lua_settop(L, top);
    if (rc < 0) {
        if (code < 1000 || code > 4999)
            code = 1000;
        rl->closing = 1;
        /* what the hook passed before still reaches its side first */
        mg_ws_close(rl->side[0], code, reason);
        mg_ws_close(rl->side[1], code, reason);
        return -1;
    }
    return 0;
}

static void mg_relay_on_message(void *ud, mg_ws_t *ws, int op, const char *data, size_t len) {
    mg_relay_t *rl = ud;
    int from = ws == rl->side[0] ? 0 : 1;

    if (rl->closing || rl->side[!from] == NULL)
        return;
    if (rl->hook_ref == LUA_NOREF) /* no hook: straight on */
        mg_ws_send(rl->side[!from], op, data, len);
    else if (mg_relay_hook(rl, from, op, data, len) < 0)
        return;
    /* a slow receiver pauses the sender rather than growing the queue */
    if (rl->side[!from] && mg_ws_queued(rl->side[!from]) > MG_HIGH_WATER)
        mg_ws_pause(rl->side[from], 1);
}

static void mg_relay_on_drain(void *ud, mg_ws_t *ws) {
    mg_relay_t *rl = ud;
    int to = ws == rl->side[0] ? 0 : 1;
    if (rl->side[!to])
        mg_ws_pause(rl->side[!to], 0);
}

#define MG_RELAY_FAIL_QUIET 0.3 /* s of upstream silence: its answers are in */
#define MG_RELAY_FAIL_MAX 3.0   /* s at most a failed client's close waits */

static void mg_relay_fail_cb(evutil_socket_t fd, short what, void *arg) {
    mg_relay_t *rl = arg;
    double now = mg_now(), last;
    (void)fd, (void)what;
    rl->fail_armed = 0;
    if (rl->side[1] == NULL)
        return;
    last = mg_ws_last_rx(rl->side[1]);
    if (last < rl->fail_at)
        last = rl->fail_at;
    if (now - last < MG_RELAY_FAIL_QUIET && now - rl->fail_at < MG_RELAY_FAIL_MAX) {
        event_add(&rl->fail_tev, mg_timeout_tv(50));
        rl->fail_armed = 1;
        return;
    }
    /* its close reply ends that side; mg_relay_on_close lets the client's go */
    mg_ws_close(rl->side[1], 1001, "client protocol error");
}

/* The client broke the protocol: its close (with the right code) is held
 * while the upstream answers what the client sent before the bad frame
 * (until it has been quiet for 0.3 s, at most 3 s), then the upstream is
 * closed, and its answers reach the client before the client's close. */
static void mg_relay_on_fail(void *ud, mg_ws_t *ws) {
    mg_relay_t *rl = ud;
    if (ws != rl->side[0] || rl->side[1] == NULL || rl->fail_armed)
        return;
    mg_ws_hold_close(ws, 1);
    rl->fail_at = mg_now();
    evtimer_assign(&rl->fail_tev, mg_worker.base, mg_relay_fail_cb, rl);
    event_add(&rl->fail_tev, mg_timeout_tv(50));
    rl->fail_armed = 1;
}

static void mg_relay_on_close(void *ud, mg_ws_t *ws, int code, const char *reason) {
    mg_relay_t *rl = ud;
    int side = ws == rl->side[0] ? 0 : 1;
    mg_ws_t *other = rl->side[!side];
    if (side == 0) {
        mg_ws_end_info(ws, &rl->end, "client");
        if (rl->up_first && strcmp(rl->end.by, "moongate") == 0)
            rl->end.by = "upstream";
        rl->st = *mg_ws_stats(ws);
    } else if (other) {
        rl->up_first = 1;
    }
    rl->side[side] = NULL;
    if (other) {
        /* pass a real close code on; abnormal ends become 1011/1001 */
        if (code == 1005 || code == 1006 || code == 1015 || code < 1000)
            code = side == 1 ? 1011 : 1001;
        mg_ws_close(other, code, reason && *reason ? reason : "peer closed");
        mg_ws_hold_close(other, 0); /* a client's held close goes now */
        return;
    }
    if (rl->fail_armed)
        event_del(&rl->fail_tev);
    {
        uint64_t msgs[2] = {rl->st.msgs_in, rl->st.msgs_out};
        mg_http_wslog_end(rl->alog, MG_WS_RELAY, rl->end.code, rl->end.by, msgs, rl->st.bytes_in,
                          rl->st.bytes_out);
    }
    mg_ws_run_hooks(rl->gen->L, rl->route->ws->ws_close_ref, rl->ctx_ref, code, reason);
    luaL_unref(rl->gen->L, LUA_REGISTRYINDEX, rl->ctx_ref);
    mg_gen_release(rl->gen);
    free(rl);
}

static void mg_relay_start(mg_wsp_t *p, mg_io_t *uio, mg_kv_t *hdrs, int nhdrs, const char *extra,
                           size_t extralen) {
    char want[40];
    int i, ok = 0;
    mg_relay_t *rl;

    mg_ws_accept_for(p->key, strlen(p->key), want);
    for (i = 0; i < nhdrs; i++)
        if (MG_NAME_IS(hdrs[i].name, hdrs[i].nlen, "sec-websocket-accept") &&
            hdrs[i].vlen == strlen(want) && memcmp(hdrs[i].value, want, hdrs[i].vlen) == 0)
            ok = 1;
    if (!ok) {
        mg_io_close(uio);
        mg_wsp_on_error(p, 502, "upstream sent a bad websocket handshake");
        return;
    }
    if (mg_ws_send_101(&p->cio, &p->hs) != MG_OK) {
        mg_io_close(uio);
        mg_wsp_free(p);
        return;
    }
    rl = calloc(1, sizeof(*rl));
    if (rl == NULL) {
        mg_io_close(uio);
        mg_wsp_free(p); /* closes the client's socket */
        return;
    }
    rl->gen = p->gen;
    mg_gen_retain(rl->gen);
    rl->route = p->route;
    rl->hook_ref = p->route->ws->on_message_ref;
    rl->ctx_ref = p->ctx_ref;
    p->ctx_ref = LUA_NOREF;
    rl->alog = p->alog;
    p->alog = NULL;
    /* each socket takes its connection, or closes it if it cannot start */
    rl->side[0] =
        mg_ws_new(&p->cio, 0, p->gen, p->route, &p->hs, p->pre, p->pre_len, &mg_relay_ops, rl);
    rl->side[1] = mg_ws_new(uio, 1, p->gen, p->route, NULL, extra, extralen, &mg_relay_ops, rl);
    if (rl->side[0] == NULL || rl->side[1] == NULL) {
        if (rl->side[0])
            mg_ws_abort(rl->side[0]);
        if (rl->side[1])
            mg_ws_abort(rl->side[1]);
        luaL_unref(rl->gen->L, LUA_REGISTRYINDEX, rl->ctx_ref);
        mg_gen_release(rl->gen);
        free(rl->alog);
        free(rl);
    } else {
        mg_ws_run_hooks(rl->gen->L, rl->route->ws->ws_open_ref, rl->ctx_ref, 0, NULL);
    }
    mg_wsp_free(p);
}

static void mg_wsp_on_upgrade(void *ud, mg_io_t *uio, mg_kv_t *hdrs, int nhdrs, const char *extra,
                              size_t extralen) {
    mg_wsp_t *p = ud;
    if (p->mode == MG_WS_TUNNEL)
        mg_tunnel_start(p, uio, hdrs, nhdrs, extra, extralen);
    else
        mg_relay_start(p, uio, hdrs, nhdrs, extra, extralen);
}

/* ---- the handshake check ---- */

/* Validates an upgrade request (RFC 6455 4.2.1). Returns 0, or the status
 * to refuse with (400, 403, 426) and *why. */
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

/* ---- entry: the HTTP connection hands over its socket ---- */

void mg_ws_takeover(mg_req_t *r, mg_io_t *io, const char *pre, size_t pre_len) {
    mg_ws_conf_t *wc = r->route->ws;
    mg_ws_hs_t hs;
    const char *why;
    mg_wsp_t *p;
    struct evbuffer *head;

    if (mg_ws_handshake_check(r, &hs, &why) != 0) {
        mg_io_close(io); /* checked before; cannot fail here */
        return;
    }
    if (wc->mode == MG_WS_HANDLER) {
        if (mg_ws_send_101(io, &hs) != MG_OK) {
            mg_io_close(io);
            return;
        }
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
    p->ctx_ref = wc->mode == MG_WS_RELAY ? mg_ws_ctx_ref(r) : LUA_NOREF;
    p->alog = mg_http_wslog_new(r);
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
        head = mg_ws_upstream_head(r, p->key, hs.protocol);
    } else {
        head = mg_ws_upstream_head(r, NULL, NULL);
    }
    {
        mg_ux_t *ux = mg_ux_start(r->route->upstream, head, 1, 0, &mg_wsp_sink, p, 0);
        if (ux == NULL) {
            mg_wsp_free(p);
            return;
        }
        mg_ux_end(ux);
    }
}
