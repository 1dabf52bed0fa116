/*
 * relay.c -- the relay mode of a WebSocket route: moongate terminates the
 * client's socket and holds its own to the upstream (both ws/ sockets),
 * and passes each message on through the route's on_message hook, with
 * backpressure, a client's protocol failure held back until the upstream
 * has answered, the close passed on, and the ws_open / ws_close hooks.
 */
#include "gateway/upgrade.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

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

    rc = mg_lua_ws_msg_hook(L, rl->hook_ref, rl->ctx_ref, op, from == 0 ? "client" : "upstream",
                            data, len, &out, &outlen, &code, reason);
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
    mg_lua_ws_run_hooks(rl->gen->L, rl->route->ws->ws_close_ref, rl->ctx_ref, code, reason);
    luaL_unref(rl->gen->L, LUA_REGISTRYINDEX, rl->ctx_ref);
    mg_gen_release(rl->gen);
    free(rl);
}

/* Terminates the client's socket (p->cio, answered with our 101 already)
 * and opens our own to the upstream (uio), taking both, p's req.ctx and
 * its access-log line, then relays message by message. */
void mg_relay_start(mg_upgrade_t *p, mg_io_t *uio, const char *extra, size_t extralen) {
    mg_relay_t *rl = calloc(1, sizeof(*rl));

    if (rl == NULL) {
        mg_io_close(uio);
        return; /* the caller closes the client's connection with p */
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
        mg_lua_ws_run_hooks(rl->gen->L, rl->route->ws->ws_open_ref, rl->ctx_ref, 0, NULL);
    }
}
