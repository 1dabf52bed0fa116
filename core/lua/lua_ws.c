/*
 * lua_ws.c -- handler-mode WebSockets: a Lua coroutine owns the socket.
 * `ws:recv()` yields until a message (or the close) arrives; `ws:send()`
 * never yields (the socket's send_buffer cap and its overflow policy bound
 * memory); any coroutine may send, so one poller can feed many sockets.
 *
 * The Lua-side object is a userdata (mg_lws_t). The socket keeps a registry
 * reference to it while open, so the C side never points at collected
 * memory; when the socket ends the reference goes and Lua may collect it.
 */
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#define MG_LWS_MT "moongate.websocket"

struct mg_lws_s {
    mg_ws_t *ws; /* NULL once the socket is gone */
    mg_ws_conf_t *conf;
    int ctx_ref;    /* req.ctx, for the hooks */
    mg_co_t *owner; /* the handler coroutine */
    mg_co_t *waiter;
    lua_State *L; /* the generation's main state */
    int ref;      /* registry anchor while the socket lives */
    int closed;
    int code;
    char reason[128];
    char protocol[64];
    struct evbuffer *q;    /* messages not yet received: [op][len:u32][bytes] */
    mg_http_wslog_t *alog; /* the session's access-log line, written at its end */
};

static void mg_lua_ws_on_message(void *ud, mg_ws_t *ws, int op, const char *data, size_t len);
static void mg_lua_ws_on_close(void *ud, mg_ws_t *ws, int code, const char *reason);
static void mg_lua_ws_deliver(mg_lws_t *l, mg_ws_t *ws, int op, const char *data, size_t len);

static const mg_ws_ops_t mg_lua_ws_ops = {
    .on_message = mg_lua_ws_on_message,
    .on_close = mg_lua_ws_on_close,
    .on_drain = NULL,
};

static void mg_lua_ws_push_msg(lua_State *L, int op, const char *data, size_t len) {
    lua_pushlstring(L, data, len);
    lua_pushstring(L, op == WSLAY_BINARY_FRAME ? "binary" : "text");
}

static void mg_lua_ws_on_message(void *ud, mg_ws_t *ws, int op, const char *data, size_t len) {
    mg_lws_t *l = ud;
    int top = lua_gettop(l->L);
    if (l->conf->on_message_ref != LUA_NOREF) {
        /* plugins' ws_message and the route's on_message see it first */
        int code = 1000, rc;
        char reason[64];
        rc = mg_lua_ws_msg_hook(l->L, l->conf->on_message_ref, l->ctx_ref, op, "client", data, len,
                                &data, &len, &code, reason);
        if (rc <= 0) {
            lua_settop(l->L, top);
            if (rc < 0)
                mg_ws_close(ws, code, reason);
            return;
        }
    }
    mg_lua_ws_deliver(l, ws, op, data, len);
    lua_settop(l->L, top);
}

static void mg_lua_ws_deliver(mg_lws_t *l, mg_ws_t *ws, int op, const char *data, size_t len) {
    if (l->waiter) {
        mg_co_t *co = l->waiter;
        l->waiter = NULL;
        mg_lua_ws_push_msg(co->L, op, data, len);
        mg_lua_co_resume(co, 2);
        return;
    }
    {
        unsigned char h[5];
        uint32_t n = (uint32_t)len;
        h[0] = (unsigned char)op;
        memcpy(h + 1, &n, 4);
        evbuffer_add(l->q, h, 5);
        evbuffer_add(l->q, data, len);
    }
    /* the handler is not reading: stop reading the socket too */
    if (evbuffer_get_length(l->q) > MG_HIGH_WATER)
        mg_ws_pause(ws, 1);
}

static void mg_lua_ws_on_close(void *ud, mg_ws_t *ws, int code, const char *reason) {
    mg_lws_t *l = ud;
    mg_ws_end_t end;
    const mg_ws_stats_t *st = mg_ws_stats(ws);
    uint64_t msgs[2] = {st->msgs_in, st->msgs_out};
    mg_ws_end_info(ws, &end, "client");
    mg_http_wslog_end(l->alog, MG_WS_HANDLER, end.code, end.by, msgs, st->bytes_in, st->bytes_out);
    l->alog = NULL;
    l->ws = NULL;
    l->closed = 1;
    l->code = code;
    snprintf(l->reason, sizeof(l->reason), "%s", reason ? reason : "");
    if (l->waiter) {
        mg_co_t *co = l->waiter;
        l->waiter = NULL;
        lua_pushnil(co->L);
        lua_pushliteral(co->L, "closed");
        lua_pushinteger(co->L, code);
        lua_pushstring(co->L, l->reason);
        mg_lua_co_resume(co, 4);
    }
    mg_lua_ws_run_hooks(l->L, l->conf->ws_close_ref, l->ctx_ref, code, l->reason);
    luaL_unref(l->L, LUA_REGISTRYINDEX, l->ctx_ref);
    l->ctx_ref = LUA_NOREF;
    if (l->ref != LUA_NOREF) {
        luaL_unref(l->L, LUA_REGISTRYINDEX, l->ref);
        l->ref = LUA_NOREF;
    }
}

static mg_lws_t *mg_lua_ws_check(lua_State *L) { return luaL_checkudata(L, 1, MG_LWS_MT); }

static int mg_lua_ws_recv(lua_State *L) {
    mg_lws_t *l = mg_lua_ws_check(L);
    mg_co_t *co = mg_lua_co_check(L, "ws:recv");
    if (evbuffer_get_length(l->q) >= 5) {
        unsigned char h[5];
        uint32_t n;
        evbuffer_remove(l->q, h, 5);
        memcpy(&n, h + 1, 4);
        lua_pushlstring(L, (const char *)evbuffer_pullup(l->q, n), n);
        evbuffer_drain(l->q, n);
        lua_pushstring(L, h[0] == WSLAY_BINARY_FRAME ? "binary" : "text");
        if (l->ws && evbuffer_get_length(l->q) < MG_LOW_WATER)
            mg_ws_pause(l->ws, 0);
        return 2;
    }
    if (l->closed || l->ws == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushinteger(L, l->code);
        lua_pushstring(L, l->reason);
        return 4;
    }
    if (l->waiter)
        return luaL_error(L, "ws:recv: another coroutine is already receiving");
    l->waiter = co;
    return lua_yield(L, 0);
}

/* One message to one socket, through the route's message hooks if it has
 * any (run on L's stack: a rewritten message stays there until the caller
 * resets it). 1 sent, 0 dropped by a hook, -1 the socket is gone. */
static int mg_lua_ws_send_one(lua_State *L, mg_lws_t *l, int op, const char *data, size_t len) {
    int rc = 1;
    if (l->ws && l->conf->on_message_ref != LUA_NOREF) {
        int code = 1000;
        char reason[64];
        rc = mg_lua_ws_msg_hook(L, l->conf->on_message_ref, l->ctx_ref, op, "server", data, len,
                                &data, &len, &code, reason);
        if (rc < 0 && l->ws)
            mg_ws_close(l->ws, code, reason);
    }
    if (l->ws == NULL || rc < 0 || (rc > 0 && mg_ws_send(l->ws, op, data, len) != MG_OK))
        return -1;
    return rc > 0;
}

static int mg_lua_ws_send(lua_State *L) {
    mg_lws_t *l = mg_lua_ws_check(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *kind = luaL_optstring(L, 3, "text");
    int op = strcmp(kind, "binary") == 0 ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
    int rc = mg_lua_ws_send_one(L, l, op, data, len);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, rc > 0);
    return 1;
}

/* moongate.ws_broadcast(set, data [, "binary"]): data to every handler-mode
 * socket that is a key of set ({ [ws] = true, ... }), as ws:send would, in
 * one C loop: O(sockets) sends without a Lua call per socket (a poller's
 * fan-out to thousands of them). Other keys are skipped. A socket that
 * closes meanwhile may clear its key (its handler may run inside a send
 * that found the peer gone): clearing is what lua_next allows during a
 * traversal; adding keys is not, and nothing here adds any. Returns the
 * number of sockets sent to. */
int mg_lua_ws_broadcast(lua_State *L) {
    size_t len;
    int sent = 0, top;
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *data = luaL_checklstring(L, 2, &len);
    const char *kind = luaL_optstring(L, 3, "text");
    int op = strcmp(kind, "binary") == 0 ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
    lua_settop(L, 2);
    lua_pushnil(L); /* first key */
    while (lua_next(L, 1) != 0) {
        lua_pop(L, 1); /* the value; the key stays for lua_next */
        mg_lws_t *l = luaL_testudata(L, -1, MG_LWS_MT);
        if (l == NULL || l->ws == NULL)
            continue;
        top = lua_gettop(L);
        if (mg_lua_ws_send_one(L, l, op, data, len) > 0)
            sent++;
        lua_settop(L, top); /* what a hook left */
    }
    lua_pushinteger(L, sent);
    return 1;
}

static int mg_lua_ws_ping(lua_State *L) {
    mg_lws_t *l = mg_lua_ws_check(L);
    size_t len;
    const char *data = luaL_optlstring(L, 2, "", &len);
    if (len > 125)
        return luaL_error(L, "ws:ping: payload over 125 bytes");
    if (l->ws == NULL || mg_ws_send(l->ws, WSLAY_PING, data, len) != MG_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int mg_lua_ws_close(lua_State *L) {
    mg_lws_t *l = mg_lua_ws_check(L);
    int code = luaL_optint(L, 2, 1000);
    const char *reason = luaL_optstring(L, 3, "");
    if (code < 1000 || code > 4999 || (code >= 1004 && code <= 1006) || code == 1015)
        return luaL_error(L, "ws:close: invalid close code %d", code);
    if (strlen(reason) > 123)
        return luaL_error(L, "ws:close: reason over 123 bytes");
    if (l->ws)
        mg_ws_close(l->ws, code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

static int mg_lua_ws_index(lua_State *L) {
    mg_lws_t *l = mg_lua_ws_check(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "protocol") == 0) {
        if (l->protocol[0])
            lua_pushstring(L, l->protocol);
        else
            lua_pushnil(L);
        return 1;
    }
    if (strcmp(k, "closed") == 0) {
        lua_pushboolean(L, l->closed);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, k);
    return 1;
}

static int mg_lua_ws_gc(lua_State *L) {
    mg_lws_t *l = luaL_checkudata(L, 1, MG_LWS_MT);
    if (l->q) {
        evbuffer_free(l->q);
        l->q = NULL;
    }
    return 0;
}

void mg_lua_ws_open_api(lua_State *L) {
    static const luaL_Reg m[] = {
        {"recv", mg_lua_ws_recv},
        {"send", mg_lua_ws_send},
        {"ping", mg_lua_ws_ping},
        {"close", mg_lua_ws_close},
        {NULL, NULL},
    };
    luaL_newmetatable(L, MG_LWS_MT);
    luaL_register(L, NULL, m);
    lua_pushcfunction(L, mg_lua_ws_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, mg_lua_ws_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

void mg_lua_ws_error(mg_co_t *co) {
    if (co->lws && co->lws->ws)
        mg_ws_close(co->lws->ws, 1011, "internal error");
}

void mg_lua_ws_co_end(mg_co_t *co) {
    mg_lws_t *l = co->lws;
    co->lws = NULL;
    if (l->waiter == co)
        l->waiter = NULL;
    l->owner = NULL;
    /* the handler returned: the socket ends with it */
    if (l->ws)
        mg_ws_close(l->ws, 1000, "");
}

void mg_lua_ws_start(mg_req_t *r, mg_io_t *io, const mg_ws_hs_t *hs, const char *pre, size_t len) {
    lua_State *L = r->gen->L;
    mg_co_t *co = mg_lua_co_new(r->gen);
    mg_lws_t *l;

    if (co == NULL) {
        mg_io_close(io);
        return;
    }
    l = lua_newuserdata(co->L, sizeof(*l));
    memset(l, 0, sizeof(*l));
    l->L = L;
    l->ref = LUA_NOREF;
    l->q = evbuffer_new();
    snprintf(l->protocol, sizeof(l->protocol), "%s", hs->protocol);
    luaL_getmetatable(co->L, MG_LWS_MT);
    lua_setmetatable(co->L, -2);
    lua_pushvalue(co->L, -1);
    lua_xmove(co->L, L, 1);
    l->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    l->conf = r->route->ws;
    l->ctx_ref = mg_lua_ws_ctx_ref(r);
    l->alog = mg_http_wslog_new(r);
    l->ws = mg_ws_new(io, 0, r->gen, r->route, hs, pre, len, &mg_lua_ws_ops, l);
    if (l->ws)
        mg_lua_ws_run_hooks(L, l->conf->ws_open_ref, l->ctx_ref, 0, NULL);
    if (l->ws == NULL) { /* mg_ws_new closed the connection */
        luaL_unref(L, LUA_REGISTRYINDEX, l->ref);
        l->ref = LUA_NOREF;
        l->closed = 1;
        l->code = 1011;
        free(l->alog);
        l->alog = NULL;
    }
    co->lws = l;
    l->owner = co;
    /* stack: ws; call handler(ws, req) */
    lua_rawgeti(co->L, LUA_REGISTRYINDEX, r->route->handler_ref);
    lua_insert(co->L, -2);
    /* what the access hook saw, all fields filled: the handler outlives r */
    mg_lua_push_req_filled(co->L, r); /* with its metatable */
    mg_lua_co_resume(co, 2);
}

int mg_lua_ws_ctx_ref(mg_req_t *r) {
    lua_State *L = r->gen->L;
    if (r->access_req_ref != LUA_NOREF) {
        mg_lua_push_req_kept(L, r);
        lua_getfield(L, -1, "ctx");
        lua_remove(L, -2);
        if (lua_istable(L, -1))
            return luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pop(L, 1);
    }
    lua_newtable(L);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

int mg_lua_ws_msg_hook(lua_State *L, int ref, int ctx_ref, int op, const char *dir,
                       const char *data, size_t len, const char **out, size_t *outlen, int *code,
                       char *reason) {
    int top = lua_gettop(L);
    *out = data;
    *outlen = len;
    if (ref == LUA_NOREF)
        return 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, data, len);
    lua_setfield(L, -2, "data");
    lua_pushstring(L, op == WSLAY_BINARY_FRAME ? "binary" : "text");
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, dir);
    lua_setfield(L, -2, "direction");
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx_ref);
    if (lua_pcall(L, 2, 3, 0) != 0) {
        mg_error("websocket on_message hook: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        *code = 1011;
        snprintf(reason, 64, "internal error");
        return -1;
    }
    if (lua_type(L, -3) == LUA_TSTRING) {
        *out = lua_tolstring(L, -3, outlen); /* stays on the stack for the caller */
        return 1;
    }
    if (lua_type(L, -3) == LUA_TBOOLEAN && lua_toboolean(L, -3)) {
        lua_settop(L, top);
        return 1; /* true: pass unchanged */
    }
    if (lua_type(L, -3) == LUA_TBOOLEAN) {
        *code = lua_isnumber(L, -2) ? (int)lua_tointeger(L, -2) : 1000;
        snprintf(reason, 64, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
        lua_settop(L, top);
        return -1;
    }
    lua_settop(L, top);
    return 0;
}

void mg_lua_ws_run_hooks(lua_State *L, int list_ref, int ctx_ref, int code, const char *reason) {
    int top = lua_gettop(L);
    if (list_ref == LUA_NOREF)
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, "moongate.run_hooks");
    lua_rawgeti(L, LUA_REGISTRYINDEX, list_ref);
    lua_createtable(L, 0, 2);
    if (code) {
        lua_pushinteger(L, code);
        lua_setfield(L, -2, "code");
        lua_pushstring(L, reason ? reason : "");
        lua_setfield(L, -2, "reason");
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx_ref);
    if (lua_pcall(L, 3, 0, 0) != 0)
        mg_error("websocket %s hook: %s", code ? "ws_close" : "ws_open", lua_tostring(L, -1));
    lua_settop(L, top);
}
