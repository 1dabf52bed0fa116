/*
 * lua.h -- the Lua layer: HTTP handlers and access hooks as coroutines and
 * the moongate module (lua_api.c), the request body and response API
 * (lua_resp.c), the HTTP client (lua_client.c), WebSocket handlers and
 * hooks (lua_ws.c), shared dicts (shdict.c) and crypto (crypto.c).
 */
#ifndef MG_LUA_H
#define MG_LUA_H

#include "http/http.h"
#include "upstream/upstream.h"
#include "ws/ws.h"

/* ---- shdict.c, crypto.c ---- */
int mg_shdict_create(const char *name, size_t size); /* master, before fork */
void mg_shdict_open_api(lua_State *L);               /* pushes core.shdict */
void mg_crypto_open_api(lua_State *L);               /* pushes core.crypto */
/* A string value of dict `name` copied into out (at most cap bytes): its
 * length, or -1 (no such dict or key, not a string, too long). */
ssize_t mg_shdict_get_str(const char *name, const char *k, size_t kl, char *out, size_t cap);
/* the metrics' shared-dict family (a loop/metrics.h extra): bytes used and free */
void mg_shdict_metrics(struct evbuffer *out);

/* ---- lua_api.c: handlers as coroutines, the moongate module ---- */
void mg_lua_open_api(lua_State *L);
/* Set in a thread that loads a generation beside the event loop's: the
 * API then refuses what needs the loop (moongate.timer), as at load time
 * in the master. */
extern _Thread_local int mg_lua_off_loop;
void mg_lua_co_pool_free(mg_gen_t *gen);
void mg_lua_handler_start(mg_req_t *r);
void mg_lua_access_start(mg_req_t *r);
void mg_lua_req_unlink(mg_req_t *r); /* the request ends: its req table lets go of it */
/* header_filter plugins: `lines` ("Name: value\r\n"...) in, the edited
 * lines into out, *status updated. MG_ERR leaves the head as it was. */
int mg_lua_header_filter(mg_req_t *r, int *status, const char *lines, size_t len,
                         struct evbuffer *out);
void mg_lua_log(mg_req_t *r, double duration_ms); /* log plugins */

/* ---- lua_proxy.c: moongate.proxy, a script hands the request to the C proxy ----
 * The plan a handler or access hook made (r->lproxy), read by the proxy
 * (gateway/proxy.c) when it builds the upstream request and takes the
 * response. The buffer holds the path, then the query, then the content
 * type; each length is -1 when not given. Plans are pooled per worker. */
struct mg_lproxy_s {
    mg_lproxy_t *next_free;
    mg_upstream_t *up; /* one of the request's generation's upstreams */
    char *buf;
    size_t cap;
    int path_len;   /* -1: the client's path (after strip_prefix) */
    int query_len;  /* -1: the client's query; 0: none */
    int ctype_len;  /* -1: any response; else its Content-Type must contain this */
    int timeout_ms; /* 0: the upstream's own response and body timeouts */
    int err_ref;    /* on_error: LUA_NOREF none; 0 in r->gen's "moongate.proxy_errs" at
                     * r->access_req_ref (its req table's slot, lua_api.c); else a
                     * registry ref of r->gen->L (no slot) */
};
static inline const char *mg_lproxy_path(const mg_lproxy_t *p) { return p->buf; }
static inline const char *mg_lproxy_query(const mg_lproxy_t *p) {
    return p->buf + (p->path_len > 0 ? p->path_len : 0);
}
static inline const char *mg_lproxy_ctype(const mg_lproxy_t *p) {
    return mg_lproxy_query(p) + (p->query_len > 0 ? p->query_len : 0);
}
/* What the Lua layer calls above itself, registered once per worker by the
 * gateway (mg_gateway_init): a handler's coroutine ended after
 * moongate.proxy, and the C proxy takes r; pre holds the body bytes the
 * handler's target had received (the callee drains it). */
typedef struct {
    void (*proxy)(mg_req_t *r, struct evbuffer *pre);
} mg_lua_hooks_t;
void mg_lua_set_hooks(const mg_lua_hooks_t *h);
/* The upstream failed before any response byte (status 502/504, reason):
 * answers with the script's on_error when it gave one. 1: answered; 0:
 * not (no on_error, or it failed: the caller answers). */
int mg_lua_proxy_error(mg_req_t *r, int status, const char *reason);
/* The request goes: its plan returns to the pool. */
void mg_lua_proxy_free(mg_req_t *r);

/* ---- lua_ws.c */
/* Takes the client's connection from io (mg_io_move), whatever happens. */
void mg_lua_ws_start(mg_req_t *r, mg_io_t *io, const mg_ws_hs_t *hs, const char *pre, size_t len);
void mg_lua_ws_open_api(lua_State *L);
/* A registry reference to req.ctx of the upgrade request (a new table when
 * no hook made one). */
int mg_lua_ws_ctx_ref(mg_req_t *r);
/* Runs an on_message hook (synchronously: it must not yield) with msg
 * {data, kind, direction} and ctx. Returns 1 to pass (*out set, possibly
 * rewritten: valid until the caller resets L's top), 0 to drop, -1 to close
 * with *code and reason (64 bytes). */
int mg_lua_ws_msg_hook(lua_State *L, int ref, int ctx_ref, int op, const char *dir,
                       const char *data, size_t len, const char **out, size_t *outlen, int *code,
                       char *reason);
/* ws_open (code 0) and ws_close hook lists, with {code, reason} and ctx. */
void mg_lua_ws_run_hooks(lua_State *L, int list_ref, int ctx_ref, int code, const char *reason);

#endif
