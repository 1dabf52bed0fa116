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
void mg_lua_co_pool_free(mg_gen_t *gen);
void mg_lua_handler_start(mg_req_t *r);
void mg_lua_access_start(mg_req_t *r);
void mg_lua_req_unlink(mg_req_t *r); /* the request ends: its req table lets go of it */
/* header_filter plugins: `lines` ("Name: value\r\n"...) in, the edited
 * lines into out, *status updated. MG_ERR leaves the head as it was. */
int mg_lua_header_filter(mg_req_t *r, int *status, const char *lines, size_t len,
                         struct evbuffer *out);
void mg_lua_log(mg_req_t *r, double duration_ms); /* log plugins */

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
