/*
 * dispatch.c -- what happens to a request once its head is parsed and
 * checked by the HTTP layer: the https redirect of a plain listener
 * (redirect_https), routing, the route-level checks (no route,
 * the body limit, a WebSocket route's handshake and socket limit), the
 * access step (Lua hooks in a coroutine of their own; it resumes through
 * r->access_done), choosing the target (the C proxy, a Lua handler, the
 * upgrade to WebSocket) and feeding it the body. These are the HTTP
 * layer's hooks (mg_http_hooks_t), registered once per worker by
 * mg_gateway_init. A refused request runs and forwards nothing: every
 * check here comes before the access step and the target.
 */
#include "gateway/gateway.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

/* ACME http-01 challenges (RFC 8555 8.3) are fetched over plain HTTP:
 * never redirected */
#define MG_GW_ACME_PREFIX "/.well-known/acme-challenge/"

/* redirect_https on a plain listener: every request gets a 301/308 to the
 * same host (its port dropped) and target over https, on the conf's first
 * TLS port unless it is 443, before routing (RFC 9110 15.4.2, 15.4.9). A
 * Host is needed to name the target (HTTP/1.1 requires one; a 1.0 request
 * without gets 400). 1: answered; 0: not redirected. */
static int mg_gw_redirect_https(mg_req_t *r, const mg_edge_t *e) {
    const char *host, *end;
    size_t hl, n, cap;
    char *loc, body[96];
    int bl;

    if (r->path_len >= sizeof(MG_GW_ACME_PREFIX) - 1 &&
        memcmp(r->hbuf, MG_GW_ACME_PREFIX, sizeof(MG_GW_ACME_PREFIX) - 1) == 0)
        return 0;
    r->resp_close = !(r->clen <= 0 && !r->chunked); /* the body is not read */
    if (r->host_idx < 0) {
        mg_resp_json_error(r, 400, "a redirect to https needs a Host header");
        return 1;
    }
    host = r->hbuf + r->hdrs[r->host_idx].voff;
    hl = r->hdrs[r->host_idx].vlen;
    /* the port goes: host:port, [v6]:port */
    end = host[0] == '[' ? memchr(host, ']', hl) : NULL;
    if (end)
        hl = (size_t)(end + 1 - host);
    else if ((end = memchr(host, ':', hl)) != NULL)
        hl = (size_t)(end - host);
    cap = sizeof("Location: https://:65535\r\nContent-Type: text/plain\r\n") + hl + r->url_len;
    loc = malloc(cap); /* bounded by limits.header_size; only on this path */
    if (loc == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return 1;
    }
    memcpy(loc, "Location: https://", 18);
    n = 18;
    memcpy(loc + n, host, hl);
    n += hl;
    if (e->https_port) {
        loc[n++] = ':';
        n += mg_utoa(loc + n, (unsigned)e->https_port);
    }
    memcpy(loc + n, r->hbuf, r->url_len);
    n += r->url_len;
#define MG_GW_LOC_END "\r\nContent-Type: text/plain\r\n"
    memcpy(loc + n, MG_GW_LOC_END, sizeof(MG_GW_LOC_END) - 1);
    n += sizeof(MG_GW_LOC_END) - 1;
    bl = snprintf(body, sizeof(body), "%d: this server is served over https\n", e->redirect_https);
    mg_resp_head(r, e->redirect_https, loc, n, bl);
    mg_resp_body(r, body, (size_t)bl);
    r->resp_done = 1;
    free(loc);
    return 1;
}

/* A WebSocket route's handshake, checked before its access hook runs so
 * that a refused handshake runs and forwards nothing. 0 = go on: a valid
 * upgrade (r->ws_valid, what req.websocket shows hooks), or plain HTTP to
 * a route with an upstream; -1 = refused and answered. */
static int mg_gw_ws_check(mg_req_t *r) {
    mg_ws_hs_t hs;
    const char *why;
    size_t ul;
    int st;

    if (mg_req_header(r, "upgrade", &ul) == NULL) {
        if (r->route->upstream)
            return 0; /* plain HTTP on a WebSocket upstream route */
        mg_resp_json_error_with(r, 426, "this route speaks WebSocket",
                                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        return -1;
    }
    st = mg_ws_handshake_check(r, &hs, &why);
    if (st == 426) {
        mg_resp_json_error_with(r, 426, why, "Sec-WebSocket-Version: 13\r\n");
        return -1;
    }
    if (st) {
        mg_resp_json_error(r, st, why);
        return -1;
    }
    if (mg_ws_count() >= (uint64_t)r->gen->max_websockets) {
        mg_warn("request %s: websocket limit (%d per worker) reached", r->request_id,
                r->gen->max_websockets);
        mg_resp_json_error(r, 503, "too many websockets");
        return -1;
    }
    r->ws_valid = 1;
    return 0;
}

/* A WebSocket route after its access hook: the HTTP session hands the
 * transport over (the upgrade hook) once the request is fully parsed, or
 * plain HTTP is proxied. The socket limit is checked again: the hook may
 * have waited. */
static void mg_gw_ws_route(mg_req_t *r) {
    if (!r->ws_valid) {
        mg_proxy_start(r);
        return;
    }
    if (mg_ws_count() >= (uint64_t)r->gen->max_websockets) {
        mg_resp_json_error(r, 503, "too many websockets");
        return;
    }
    r->ws_upgrade = 1;
}

/* To its target, once access allows it. */
static void mg_gw_dispatch(mg_req_t *r) {
    mg_req_body_start(r);
    if (r->route->ws) {
        mg_gw_ws_route(r);
        return;
    }
    if (r->expect_continue && (r->clen > 0 || r->chunked))
        mg_req_continue(r);
    if (r->route->upstream)
        mg_proxy_start(r);
    else
        mg_lua_handler_start(r);
}

/* the request whose access step is being started: a hook that decides at
 * once (without yielding) ends inside mg_lua_access_start */
static mg_req_t *mg_gw_deciding;

/* r->access_done: the access hooks ended (allowed, or they answered). */
static void mg_gw_access_done(mg_req_t *r) {
    if (mg_req_gone(r)) {
        mg_req_resume(r); /* the session frees it */
        return;
    }
    if (r->access_state == MG_ACCESS_DENIED)
        r->resp_done = 1;
    if (r == mg_gw_deciding)
        return; /* decided at once: mg_gw_head goes on */
    if (r->access_state == MG_ACCESS_OK)
        mg_gw_dispatch(r);
    mg_req_resume(r);
}

/* A trusted balancer in front says the client spoke https to it: then a
 * plain request is not redirected (it would loop). */
static int mg_gw_behind_https(mg_req_t *r) {
    size_t n;
    const char *v;
    if (!mg_req_peer_trusted(r))
        return 0;
    v = mg_req_header(r, "x-forwarded-proto", &n);
    return v && MG_NAME_IS(v, n, "https");
}

static int mg_gw_head(mg_req_t *r) {
    const char *host = NULL;
    size_t hostlen = 0;
    int server = mg_gen_server_of(r->gen, r->lidx);
    const mg_edge_t *e = mg_gen_edge(r->gen, server);

    if (mg_worker.laddr[r->lidx].admin)
        return mg_admin_serve(r); /* never routed (admin.c) */
    if (r->gen->health_path && server == 0 && !r->h2_ws && r->path_len == r->gen->health_path_len &&
        memcmp(r->hbuf, r->gen->health_path, r->path_len) == 0) {
        r->resp_close = !(r->clen <= 0 && !r->chunked);
        mg_admin_ready(r); /* health_path: /readyz on the main listeners */
        return MG_HTTP_GO_ON;
    }
    if (!r->h2_ws && mg_gw_acme_challenge(r))
        return MG_HTTP_GO_ON; /* before routing and any redirect to https */
    if (e && e->redirect_https && !mg_req_tls(r) && !mg_gw_behind_https(r) &&
        mg_gw_redirect_https(r, e))
        return MG_HTTP_GO_ON;
    if (r->host_idx >= 0) {
        host = r->hbuf + r->hdrs[r->host_idx].voff;
        hostlen = r->hdrs[r->host_idx].vlen;
    }
    r->route =
        mg_route_match(r->gen, server, r->method, host, hostlen, r->hbuf, r->path_len, NULL, NULL);
    if (r->route == NULL) {
        r->resp_close = !(r->clen <= 0 && !r->chunked);
        mg_resp_json_error(r, 404, "no route");
        return MG_HTTP_GO_ON;
    }
    if (r->route->body_size && r->clen > 0 && (uint64_t)r->clen > r->route->body_size) {
        mg_resp_json_error(r, 413, "request body too large");
        return MG_HTTP_GO_ON;
    }
    if (r->h2_ws && r->route->ws == NULL) {
        /* RFC 8441: a 2xx would open a WebSocket the route does not serve */
        mg_resp_json_error(r, 400, "this route does not speak WebSocket");
        return MG_HTTP_GO_ON;
    }
    if (r->route->ws && mg_gw_ws_check(r) < 0)
        return MG_HTTP_GO_ON;
    /* access hooks first; Lua handler routes run them in the handler's
     * own coroutine (moongate.run), the others in one of their own */
    if (r->route->access_ref != LUA_NOREF && (r->route->upstream || r->route->ws)) {
        r->access_state = MG_ACCESS_RUNNING;
        r->access_done = mg_gw_access_done;
        mg_gw_deciding = r;
        mg_lua_access_start(r);
        mg_gw_deciding = NULL;
        if (r->access_state == MG_ACCESS_RUNNING)
            return MG_HTTP_PAUSE; /* the body waits until the hook decides */
        if (r->access_state == MG_ACCESS_DENIED)
            return MG_HTTP_GO_ON;
    }
    mg_gw_dispatch(r);
    return MG_HTTP_GO_ON;
}

static int mg_gw_body(mg_req_t *r, const char *data, size_t len) {
    if (r->route == NULL || (r->resp_done && !r->target))
        return 0; /* answered already (404/413): discard */
    if (r->route->body_size && r->body_rx > r->route->body_size) {
        if (r->resp_started)
            return -1;
        if (r->target && !r->target->keeps_req)
            r->target->gone(r); /* the proxy stops; a handler learns it at the end */
        mg_resp_json_error(r, 413, "request body too large");
        return 0;
    }
    if (r->target)
        r->target->body(r, data, len);
    return 0;
}

/* The response-head phase of a proxied request: the route's header_filter
 * plugins see and edit the head as a Lua table. head holds len bytes of
 * "Name: value\r\n" lines (cap at most); returns the new length. */
size_t mg_gw_head_filter(mg_req_t *r, int *status, char *head, size_t len, size_t cap) {
    struct evbuffer *out;
    if (r->route->hf_ref == LUA_NOREF)
        return len;
    out = evbuffer_new();
    if (out && mg_lua_header_filter(r, status, head, len, out) == MG_OK) {
        len = evbuffer_get_length(out);
        if (len > cap)
            len = cap;
        evbuffer_remove(out, head, len);
    }
    if (out)
        evbuffer_free(out);
    return len;
}

/* the log phase: the route's log plugins */
static void mg_gw_done(mg_req_t *r) {
    if (r->route && r->route->log_ref != LUA_NOREF)
        mg_lua_log(r, (mg_now() - r->t_start) * 1000.0);
}

/* the request goes: what Lua kept of it (its req table, moongate.proxy's plan) */
static void mg_gw_freed(mg_req_t *r) {
    mg_lua_proxy_free(r);
    mg_lua_req_unlink(r);
}

static const mg_http_hooks_t mg_gw_hooks = {
    .head = mg_gw_head,
    .body = mg_gw_body,
    .upgrade = mg_ws_takeover, /* upgrade.c: moves the transport out */
    .done = mg_gw_done,
    .freed = mg_gw_freed,
};

void mg_gateway_init(void) {
    mg_http_set_hooks(&mg_gw_hooks);
    mg_proxy_init();
    mg_admin_init();
}
