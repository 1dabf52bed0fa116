/*
 * lua_api.c -- Lua handlers as coroutines and the `moongate.core` module
 * they call (wrapped by lib/moongate/init.lua). Every API that waits
 * (sleep, the HTTP client, reading the body, a write the client is slow
 * to take) yields the coroutine and resumes it from an event callback, so
 * nothing a script does blocks the worker's loop. This file has the
 * coroutines, the req table (req:header(), req:set_header()...), starting
 * a route's handler or its access hooks (which end through
 * r->access_done), the header_filter and log hooks, and the module's
 * small functions; the body and response (the Lua target) are lua_resp.c,
 * sleep/timers/the HTTP client lua_client.c, WebSockets lua_ws.c.
 *
 * Misuse raises (luaL_error); expected failures return nil, err.
 */
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* per thread: a worker's generations load in a helper thread (app/worker.c),
 * which runs no coroutine and has no event loop */
_Thread_local mg_co_t *mg_lua_co_cur;
_Thread_local int mg_lua_off_loop;

/* ---- coroutine lifecycle ---- */

/* Coroutines that ended cleanly are kept per generation and reused: a
 * request on a Lua route then costs no new thread, registry slot or
 * malloc. A pooled one holds no reference on its generation; the pool
 * goes with the generation (mg_lua_co_pool_free). */
#define MG_CO_POOL 128

mg_co_t *mg_lua_co_new(mg_gen_t *gen) {
    mg_co_t *co = gen->co_pool;
    if (co) {
        struct evbuffer *body = co->body;
        lua_State *L = co->L;
        int ref = co->ref;
        gen->co_pool = co->next_free;
        gen->nco_pool--;
        memset(co, 0, sizeof(*co));
        co->L = L;
        co->ref = ref;
        co->body = body;
    } else {
        co = calloc(1, sizeof(*co));
        if (co == NULL)
            return NULL;
        co->L = lua_newthread(gen->L);
        /* "moongate.cos": the state's request coroutines, by which init.lua
         * tells a call from one of them (moongate.proxy through the FFI)
         * from one in a coroutine a script made */
        lua_getfield(gen->L, LUA_REGISTRYINDEX, "moongate.cos");
        if (lua_istable(gen->L, -1)) {
            lua_pushvalue(gen->L, -2);
            lua_pushboolean(gen->L, 1);
            lua_rawset(gen->L, -3);
        }
        lua_pop(gen->L, 1);
        co->ref = luaL_ref(gen->L, LUA_REGISTRYINDEX);
    }
    co->gen = gen;
    mg_gen_retain(gen);
    evtimer_assign(&co->tev, mg_worker.base, NULL, NULL);
    return co;
}

void mg_lua_co_pool_free(mg_gen_t *gen) {
    while (gen->co_pool) {
        mg_co_t *co = gen->co_pool;
        gen->co_pool = co->next_free;
        if (co->body)
            evbuffer_free(co->body);
        free(co); /* its thread goes with the generation's state */
    }
}

static void mg_lua_co_free(mg_co_t *co) {
    mg_gen_t *gen = co->gen;
    event_del(&co->tev);
    mg_lua_http_end(co);
    mg_lua_socket_co_end(co);
    if (co->reusable && gen->nco_pool < MG_CO_POOL && !co->hbody && !co->hhead &&
        !co->tmp_up.peers) {
        lua_settop(co->L, 0);
        if (co->body)
            evbuffer_drain(co->body, evbuffer_get_length(co->body));
        co->next_free = gen->co_pool;
        gen->co_pool = co;
        gen->nco_pool++;
        mg_gen_release(gen); /* may free gen, and this pool with it */
        return;
    }
    if (co->body)
        evbuffer_free(co->body);
    if (co->hbody)
        evbuffer_free(co->hbody);
    if (co->hhead)
        evbuffer_free(co->hhead);
    free(co->tmp_up.peers);
    luaL_unref(co->gen->L, LUA_REGISTRYINDEX, co->ref);
    mg_gen_release(co->gen);
    free(co);
}

static void mg_lua_co_end(mg_co_t *co) {
    mg_req_t *r = co->req;
    if (co->lws)
        mg_lua_ws_co_end(co);
    if (r && r->lproxy && r->resp_started)
        mg_lua_proxy_ignored(r); /* moongate.proxy, then an answer of its own */
    if (co->access && r) {
        r->co = NULL;
        r->target = NULL;
        co->req = NULL;
        if (r->resp_started)
            r->access_state = MG_ACCESS_DENIED;
        else if (r->access_state == MG_ACCESS_RUNNING) /* moongate.proxy, or the hook failed */
            r->access_state = r->lproxy && co->reusable ? MG_ACCESS_OK : MG_ACCESS_DENIED;
        if (r->access_state == MG_ACCESS_DENIED && !r->resp_started)
            mg_resp_json_error(r, 500, "internal error");
        mg_lua_co_free(co);
        r->access_done(r); /* dispatch goes on */
        return;
    }
    if (r) {
        r->co = NULL;
        r->target = NULL;
        co->req = NULL;
        if (r->lproxy && !r->resp_started && !mg_req_gone(r)) {
            mg_lua_proxy_handoff(r, co); /* moongate.proxy: the C proxy takes r */
            mg_lua_co_free(co);
            return;
        }
        if (!r->resp_started)
            mg_resp_json_error(r, 500, "handler sent no response");
        else if (!r->resp_done) {
            mg_resp_end(r);
        }
        mg_lua_co_free(co);
        mg_req_target_done(r);
        return;
    }
    mg_lua_co_free(co);
}

void mg_lua_co_resume(mg_co_t *co, int nargs) {
    mg_co_t *prev = mg_lua_co_cur;
    int st;

    co->wait = MG_W_NONE;
    mg_lua_co_cur = co;
    st = lua_resume(co->L, nargs);
    mg_lua_co_cur = prev;
    if (st == LUA_YIELD)
        return;
    co->reusable = st == 0;
    /* moongate.run_access returns true when every hook allowed the request */
    if (st == 0 && co->access && co->req && lua_gettop(co->L) > 0 && lua_toboolean(co->L, -1))
        co->req->access_state = MG_ACCESS_OK;
    if (st != 0) {
        lua_State *L = co->gen->L;
        const char *msg = lua_tostring(co->L, -1);
        luaL_traceback(L, co->L, msg ? msg : "(error object is not a string)", 0);
        mg_error("%s%s: lua error: %s",
                 co->req   ? "request "
                 : co->lws ? "websocket handler"
                           : "timer",
                 co->req ? co->req->request_id : "", lua_tostring(L, -1));
        lua_pop(L, 1);
        if (co->lws)
            mg_lua_ws_error(co);
        if (co->req && !co->req->resp_started)
            mg_resp_json_error(co->req, 500, "internal error");
        else if (co->req)
            co->req->resp_close = 1;
    }
    mg_lua_co_end(co);
}

mg_co_t *mg_lua_co_check(lua_State *L, const char *what) {
    mg_co_t *co = mg_lua_co_cur;
    if (co == NULL || co->L != L)
        luaL_error(L,
                   "%s: only inside a handler or timer (not at load time or in a nested coroutine)",
                   what);
    return co;
}

mg_req_t *mg_lua_co_req(lua_State *L, const char *what) {
    mg_co_t *co = mg_lua_co_check(L, what);
    if (co->req == NULL)
        luaL_error(L, "%s: no request in a timer", what);
    return co->req;
}

/* ---- handler start ---- */

void mg_lua_push_lower(lua_State *L, const char *s, size_t len) {
    char buf[256];
    size_t i, n = len < sizeof(buf) ? len : sizeof(buf);
    for (i = 0; i < n; i++)
        buf[i] = (s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i];
    lua_pushlstring(L, buf, n);
}

void mg_lua_push_entry(lua_State *L, mg_gen_t *gen, int which) {
    static const char *const names[] = {
        "moongate.run",       "moongate.run_access", "moongate.run_header_filter",
        "moongate.run_hooks", "moongate.req_mt",     "moongate.reqs",
        "moongate.proxy_errs"};
    if (gen->entry_refs[which] == 0) {
        lua_getfield(gen->L, LUA_REGISTRYINDEX, names[which]);
        gen->entry_refs[which] = luaL_ref(gen->L, LUA_REGISTRYINDEX); /* LUA_REFNIL if absent */
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, gen->entry_refs[which]);
}

/* A req table holds its request's id (lua_ffi.c: what the FFI calls take)
 * under this light userdata key: no string to intern, and out of the way
 * of scripts' own fields. false once the request is over, absent once
 * every lazy field was filled (mg_lua_push_req_filled). */
static char mg_lua_req_key;

/* Pushes r's req table. It is made once per request, with method, path
 * and its id only (method and path stay readable after the request, as
 * documented): headers, params, id, http_version, remote_addr,
 * query_string and ctx are filled on first use (req_mt.__index, through the FFI or core.req_fill),
 * so a hook that reads none of them costs no header strings. A coroutine's
 * entry makes it in Lua (init.lua's req_new, from what mg_lua_co_for_req
 * passes); the other callers here (mg_lua_req_make). The table is anchored
 * until the request ends (mg_lua_req_unlink) in the generation's
 * "moongate.reqs" table: at its FFI slot + 1 (r->access_req_ref; an
 * array index, cheaper than a registry ref), or under r's address when no
 * id could be made (r->access_req_ref 0). */
static void mg_lua_req_make(lua_State *L, mg_req_t *r, int64_t id);

void mg_lua_push_req_kept(lua_State *L, mg_req_t *r) {
    mg_lua_push_entry(L, r->gen, MG_ENTRY_REQS);
    if (r->access_req_ref > 0) {
        lua_rawgeti(L, -1, r->access_req_ref);
    } else {
        lua_pushlightuserdata(L, r);
        lua_rawget(L, -2);
    }
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) { /* init.lua's req_new failed (out of memory): made here */
        lua_pop(L, 1);
        mg_lua_req_make(L, r,
                        r->access_req_ref > 0 ? mg_lua_ffi_slot_id(r->access_req_ref - 1) : -1);
    }
}

/* Makes, anchors and pushes r's req table, with id (-1: none could be
 * made). */
static void mg_lua_req_make(lua_State *L, mg_req_t *r, int64_t id) {
    /* method, path, the id and ctx, and room for four lazy fields: reading
     * the query (query_string, query, query_repeated) and the params, as
     * the seed's auth hook does, then costs no rehash of the table */
    lua_createtable(L, 0, 8);
    lua_pushstring(L, llhttp_method_name((llhttp_method_t)r->method));
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->hbuf, r->path_len);
    lua_setfield(L, -2, "path");
    lua_pushlightuserdata(L, &mg_lua_req_key);
    lua_pushnumber(L, (lua_Number)id); /* exact: below 2^53 */
    lua_rawset(L, -3);
    mg_lua_push_entry(L, r->gen, MG_ENTRY_REQ_MT);
    lua_setmetatable(L, -2);
    mg_lua_push_entry(L, r->gen, MG_ENTRY_REQS); /* req, reqs */
    if (id >= 0) {
        r->access_req_ref = (int)MG_LUA_FFI_SLOT(id) + 1; /* below 2^24 */
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, r->access_req_ref);
    } else {
        if (r->access_req_ref > 0) /* a slot whose id went: let it go */
            mg_lua_ffi_slot_free((uint32_t)(r->access_req_ref - 1));
        r->access_req_ref = 0;
        lua_pushlightuserdata(L, r);
        lua_pushvalue(L, -3);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
}

void mg_lua_push_req(lua_State *L, mg_req_t *r) {
    if (r->access_req_ref != LUA_NOREF)
        mg_lua_push_req_kept(L, r);
    else
        mg_lua_req_make(L, r, mg_lua_ffi_id_new(r));
}

/* Pushes a lazy field of r's req table: "headers", "params", "id",
 * "http_version", "remote_addr", "query_string", "websocket", "scheme"
 * or "tls" (nil on a plain connection). */
static void mg_lua_req_field(lua_State *L, mg_req_t *r, const char *k) {
    mg_kv_t params[MG_ROUTE_MAX_SEGS];
    int np = MG_ROUTE_MAX_SEGS, i;

    if (k[0] == 'i') {
        lua_pushstring(L, r->request_id);
    } else if (k[0] == 'r') {
        lua_pushstring(L, mg_req_client_ip(r));
    } else if (k[0] == 'q') {
        if (r->url_len > r->path_len)
            lua_pushlstring(L, r->hbuf + r->path_len + 1, r->url_len - r->path_len - 1);
        else
            lua_pushliteral(L, "");
    } else if (k[0] == 'w') {
        lua_pushboolean(L, r->ws_valid);
    } else if (k[0] == 's') {
        if (mg_req_tls(r))
            lua_pushliteral(L, "https");
        else
            lua_pushliteral(L, "http");
    } else if (k[0] == 't') {
        const mg_req_tls_t *t = mg_req_tls_info(r);
        if (t == NULL) {
            lua_pushnil(L);
            return;
        }
        lua_createtable(L, 0, 4);
        lua_pushstring(L, t->version);
        lua_setfield(L, -2, "version");
        lua_pushstring(L, t->cipher);
        lua_setfield(L, -2, "cipher");
        lua_pushstring(L, t->sni); /* nil when NULL */
        lua_setfield(L, -2, "sni");
        lua_pushstring(L, t->client_subject);
        lua_setfield(L, -2, "client_subject");
    } else if (k[0] == 'h' && k[1] == 't') {
        lua_pushstring(L, r->http2 ? "2.0" : r->http_minor ? "1.1" : "1.0");
    } else if (k[0] == 'h') {
        lua_createtable(L, 0, r->nhdrs);
        for (i = 0; i < r->nhdrs; i++) {
            mg_hdr_t *h = &r->hdrs[i];
            mg_lua_push_lower(L, r->hbuf + h->noff, h->nlen);
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) {
                /* repeated header: join with ", " */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, r->hbuf + h->voff, h->vlen);
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, r->hbuf + h->voff, h->vlen);
            }
            lua_rawset(L, -3);
        }
    } else {
        lua_createtable(L, 0, 2);
        if (r->route->has_params &&
            mg_route_params_of(r->route, r->hbuf, r->path_len, params, &np) > 0) {
            for (i = 0; i < np; i++) {
                lua_pushlstring(L, params[i].name, params[i].nlen);
                lua_pushlstring(L, params[i].value, params[i].vlen);
                lua_rawset(L, -3);
            }
        }
    }
}

static const char *const mg_lua_req_lazy[] = {"headers",      "params",      "id",
                                              "http_version", "remote_addr", "query_string",
                                              "websocket",    "scheme",      "tls"};

/* The request of the req table at index 1; NULL once its lazy fields are
 * all filled; raises once the request is over. */
static mg_req_t *mg_lua_req_of(lua_State *L, const char *what, const char *name) {
    mg_req_t *r;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushlightuserdata(L, &mg_lua_req_key);
    lua_rawget(L, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    r = lua_isnumber(L, -1) ? mg_lua_ffi_req((int64_t)lua_tonumber(L, -1)) : NULL;
    if (r == NULL)
        luaL_error(L,
                   "req%s%s: the request is over (read it while the request runs; "
                   "copy what a timer needs)",
                   what, name);
    lua_pop(L, 1);
    return r;
}

/* core.req_fill(req, name): sets and returns a lazy field, while the
 * request lives. */
static int mg_lua_core_req_fill(lua_State *L) {
    const char *k = luaL_checkstring(L, 2);
    mg_req_t *r = mg_lua_req_of(L, ".", k); /* the message is formatted only on error */
    if (r == NULL)
        return 0;
    mg_lua_req_field(L, r, k);
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, k);
    return 1;
}

void mg_lua_push_req_filled(lua_State *L, mg_req_t *r) {
    int t;
    mg_lua_push_req(L, r);
    t = lua_gettop(L);
    for (size_t i = 0; i < sizeof(mg_lua_req_lazy) / sizeof(mg_lua_req_lazy[0]); i++) {
        lua_pushstring(L, mg_lua_req_lazy[i]);
        lua_rawget(L, t);
        if (lua_isnil(L, -1)) {
            mg_lua_req_field(L, r, mg_lua_req_lazy[i]);
            lua_setfield(L, t, mg_lua_req_lazy[i]);
        }
        lua_pop(L, 1);
    }
    lua_pushlightuserdata(L, &mg_lua_req_key); /* all there: r may go */
    lua_rawget(L, t);
    if (lua_isnumber(L, -1)) /* its slot still anchors the table, until r ends */
        mg_lua_ffi_id_detach((int64_t)lua_tonumber(L, -1));
    lua_pop(L, 1);
    lua_pushlightuserdata(L, &mg_lua_req_key);
    lua_pushnil(L);
    lua_rawset(L, t);
}

void mg_lua_req_unlink(mg_req_t *r) {
    lua_State *L = r->gen->L;
    mg_lua_push_entry(L, r->gen, MG_ENTRY_REQS); /* reqs */
    if (r->access_req_ref > 0) {
        lua_rawgeti(L, -1, r->access_req_ref);
    } else {
        lua_pushlightuserdata(L, r);
        lua_rawget(L, -2);
    }
    if (lua_istable(L, -1)) { /* not when init.lua's req_new failed (out of memory) */
        lua_pushlightuserdata(L, &mg_lua_req_key); /* reqs, req, id */
        lua_rawget(L, -2);
        if (lua_isnumber(L, -1)) { /* never filled: say so rather than read freed memory */
            lua_pushlightuserdata(L, &mg_lua_req_key);
            lua_pushboolean(L, 0);
            lua_rawset(L, -4);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (r->access_req_ref > 0) {
        lua_pushnil(L);
        lua_rawseti(L, -2, r->access_req_ref);
        mg_lua_ffi_slot_free((uint32_t)(r->access_req_ref - 1)); /* its ids reach nothing now */
    } else {
        lua_pushlightuserdata(L, r);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    r->access_req_ref = LUA_NOREF;
}

/* Pushes req.ctx of the kept req table, or a fresh table. */
static void mg_lua_push_ctx(lua_State *L, mg_req_t *r) {
    if (r->access_req_ref != LUA_NOREF) {
        mg_lua_push_req_kept(L, r);
        lua_getfield(L, -1, "ctx");
        lua_remove(L, -2);
        if (lua_istable(L, -1))
            return;
        lua_pop(L, 1);
    }
    lua_newtable(L);
}

int mg_lua_header_filter(mg_req_t *r, int *status, const char *lines, size_t len,
                         struct evbuffer *out) {
    lua_State *L = r->gen->L;
    int top = lua_gettop(L);
    const char *p = lines, *end = lines + len, *drop, *add;
    size_t dl, al;

    mg_lua_push_entry(L, r->gen, MG_ENTRY_HF);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->hf_ref);
    lua_pushinteger(L, *status);
    lua_pushlstring(L, lines, len); /* read lazily by res.headers */
    mg_lua_push_ctx(L, r);
    if (lua_pcall(L, 4, 3, 0) != 0) {
        mg_error("request %s: header_filter: %s", r->request_id, lua_tostring(L, -1));
        lua_settop(L, top);
        return MG_ERR;
    }
    /* status, the names changed ("\nname\n...", lower-case) and the lines
     * to add (already checked: no CR/LF, no hop-by-hop names) */
    if (lua_isnumber(L, -3))
        *status = (int)lua_tointeger(L, -3);
    drop = lua_tolstring(L, -2, &dl);
    add = lua_tolstring(L, -1, &al);
    while (p < end) {
        const char *colon = memchr(p, ':', end - p), *eol = memchr(p, '\n', end - p);
        char key[130];
        size_t nl;
        if (colon == NULL || eol == NULL)
            break;
        nl = (size_t)(colon - p);
        if (drop && dl > 1 && nl + 2 <= sizeof(key)) {
            key[0] = '\n';
            for (size_t i = 0; i < nl; i++)
                key[i + 1] = (p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i];
            key[nl + 1] = '\n';
            if (memmem(drop, dl, key, nl + 2)) {
                p = eol + 1;
                continue;
            }
        }
        evbuffer_add(out, p, eol + 1 - p);
        p = eol + 1;
    }
    if (add && al)
        evbuffer_add(out, add, al);
    lua_settop(L, top);
    return MG_OK;
}

void mg_lua_log(mg_req_t *r, double duration_ms) {
    lua_State *L = r->gen->L;
    int top = lua_gettop(L);
    mg_lua_push_entry(L, r->gen, MG_ENTRY_HOOKS);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->log_ref);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
    lua_pushnumber(L, (lua_Number)r->bytes_out);
    lua_setfield(L, -2, "bytes");
    lua_pushnumber(L, duration_ms);
    lua_setfield(L, -2, "duration_ms");
    lua_pushstring(L, r->request_id);
    lua_setfield(L, -2, "request_id");
    lua_pushstring(L, llhttp_method_name((llhttp_method_t)r->method));
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->hbuf, r->path_len);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, mg_req_client_ip(r));
    lua_setfield(L, -2, "remote_addr");
    mg_lua_push_ctx(L, r);
    if (lua_pcall(L, 3, 0, 0) != 0)
        mg_error("request %s: log hook: %s", r->request_id, lua_tostring(L, -1));
    lua_settop(L, top);
}

/* A coroutine for request r, its stack set to: entry (a registry function
 * of init.lua), the route's function `ref`, then either the method's
 * number, the path, the request's id and its slot + 1, of which the entry
 * makes the req table and anchors it (init.lua's req_new: compiled Lua,
 * no C API call per field), or the req table and three nils (made
 * already, or no id could be made). NULL after answering 500 when out of
 * memory. */
static mg_co_t *mg_lua_co_for_req(mg_req_t *r, int entry, int ref) {
    mg_co_t *co = mg_lua_co_new(r->gen);
    int64_t id = -1;

    if (co == NULL) {
        mg_resp_json_error(r, 500, "out of memory");
        return NULL;
    }
    co->req = r;
    r->co = co;
    r->target = &mg_lua_target;
    if (co->body == NULL) /* a reused coroutine keeps its (drained) buffer */
        co->body = evbuffer_new();
    mg_lua_push_entry(co->L, r->gen, entry);
    lua_rawgeti(co->L, LUA_REGISTRYINDEX, ref);
    if (r->access_req_ref == LUA_NOREF && (id = mg_lua_ffi_id_new(r)) >= 0) {
        r->access_req_ref = (int)MG_LUA_FFI_SLOT(id) + 1;
        lua_pushinteger(co->L, r->method);
        lua_pushlstring(co->L, r->hbuf, r->path_len);
        lua_pushnumber(co->L, (lua_Number)id); /* exact: below 2^53 */
        lua_pushinteger(co->L, r->access_req_ref);
        return co;
    }
    if (r->access_req_ref == LUA_NOREF)
        mg_lua_req_make(co->L, r, -1);
    else
        mg_lua_push_req_kept(co->L, r);
    lua_pushnil(co->L);
    lua_pushnil(co->L);
    lua_pushnil(co->L);
    return co;
}

/* The route's access hooks, in a coroutine of their own (upstream and
 * WebSocket routes). moongate.run_access answers the client itself when a
 * hook says no, and calls core.access_done() when all say yes. The
 * WebSocket handler, header_filter and log hooks see the same req (ctx). */
void mg_lua_access_start(mg_req_t *r) {
    mg_co_t *co = mg_lua_co_for_req(r, MG_ENTRY_ACCESS, r->route->access_ref);

    if (co == NULL) {
        r->access_state = MG_ACCESS_DENIED;
        return;
    }
    co->access = 1;
    /* a refusal's head goes through header_filter too (CORS on a 401) */
    if (r->route->hf_ref != LUA_NOREF)
        lua_rawgeti(co->L, LUA_REGISTRYINDEX, r->route->hf_ref);
    else
        lua_pushnil(co->L);
    mg_lua_co_resume(co, 6);
}

/* core.resp_headers_into(t): moves req:set_response_header()'s headers
 * into t (lower-case names t does not have), for header_filter hooks on a
 * handler's response; returns t. */
static int mg_lua_core_resp_headers_into(lua_State *L) {
    mg_req_t *r = mg_lua_co_req(L, "response");
    const char *p, *end;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    p = r->rxhdrs.p;
    end = p + r->rxhdrs.len;
    while (p < end) {
        const char *colon = memchr(p, ':', end - p), *eol = memchr(p, '\n', end - p);
        if (colon == NULL || eol == NULL || colon > eol)
            break;
        mg_lua_push_lower(L, p, colon - p);
        lua_pushvalue(L, -1);
        lua_rawget(L, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, colon + 2, eol - 1 - (colon + 2));
            lua_rawset(L, 1);
        } else {
            lua_pop(L, 2);
        }
        p = eol + 1;
    }
    r->rxhdrs.len = 0;
    return 1;
}

/* access_done(): the hooks allowed the request. */
static int mg_lua_core_access_done(lua_State *L) {
    mg_req_t *r = mg_lua_co_req(L, "access_done");
    r->access_state = MG_ACCESS_OK;
    return 0;
}

void mg_lua_handler_start(mg_req_t *r) {
    mg_co_t *co = mg_lua_co_for_req(r, MG_ENTRY_RUN, r->route->handler_ref);

    if (co == NULL)
        return;
    if (r->route->access_ref != LUA_NOREF)
        lua_rawgeti(co->L, LUA_REGISTRYINDEX, r->route->access_ref);
    else
        lua_pushnil(co->L);
    if (r->route->hf_ref != LUA_NOREF)
        lua_rawgeti(co->L, LUA_REGISTRYINDEX, r->route->hf_ref);
    else
        lua_pushnil(co->L);
    mg_lua_co_resume(co, 7);
}

/* ---- misc ---- */

static int mg_lua_core_now(lua_State *L) {
    lua_pushnumber(L, mg_now());
    return 1;
}

static int mg_lua_core_time(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)mg_now());
    return 1;
}

static int mg_lua_core_log(lua_State *L) {
    const char *lvl = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    lua_Debug ar;
    char where[200] = "";
    if (lua_getstack(L, 2, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(where, sizeof(where), "%s:%d: ", ar.short_src, ar.currentline);
    mg_log(mg_log_level_parse(lvl), "%s%s", where, msg);
    return 0;
}

static int mg_lua_core_worker_id(lua_State *L) {
    lua_pushinteger(L, mg_worker.id);
    return 1;
}

/* gen_retired(): true once the calling coroutine's generation is no longer
 * the current one (a reload replaced it) or the worker is stopping: for
 * loops that run for the worker's life (moongate.redis's subscriber) */
static int mg_lua_core_gen_retired(lua_State *L) {
    mg_co_t *co = mg_lua_co_cur;
    lua_pushboolean(L, mg_worker.stopping || (co != NULL && co->gen != mg_gen_current));
    return 1;
}

static const luaL_Reg mg_core_funcs[] = {
    {"now", mg_lua_core_now},
    {"time", mg_lua_core_time},
    {"log", mg_lua_core_log},
    {"worker_id", mg_lua_core_worker_id},
    {"gen_retired", mg_lua_core_gen_retired},
    {"ws_broadcast", mg_lua_ws_broadcast},
    {"access_done", mg_lua_core_access_done},
    {"req_fill", mg_lua_core_req_fill},
    {"resp_headers_into", mg_lua_core_resp_headers_into},
    {NULL, NULL},
};

void mg_lua_open_api(lua_State *L) {
    lua_createtable(L, 256, 0); /* the req tables of the requests in flight, by FFI slot */
    lua_setfield(L, LUA_REGISTRYINDEX, "moongate.reqs");
    lua_createtable(L, 256, 0); /* moongate.proxy's on_error, by the same index (lua_proxy.c) */
    lua_setfield(L, LUA_REGISTRYINDEX, "moongate.proxy_errs");
    lua_newtable(L); /* the request coroutines (mg_lua_co_new), weak keys */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "moongate.cos");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_newtable(L);
    luaL_register(L, NULL, mg_core_funcs);
    lua_pushlightuserdata(L, &mg_lua_req_key); /* init.lua finds a req table's request here */
    lua_setfield(L, -2, "req_key");
    lua_createtable(L, 48, 0); /* the methods' names by llhttp's numbers (r->method) */
#define MG_LUA_METHOD(num, name, string)                                                           \
    lua_pushliteral(L, #string);                                                                   \
    lua_rawseti(L, -2, num);
    HTTP_ALL_METHOD_MAP(MG_LUA_METHOD)
#undef MG_LUA_METHOD
    lua_setfield(L, -2, "methods");
    mg_lua_inject_resp_api(L);
    mg_lua_inject_client_api(L);
    mg_lua_inject_socket_api(L);
    mg_lua_inject_proxy_api(L);
    lua_pushstring(L, MG_VERSION);
    lua_setfield(L, -2, "version");
    mg_shdict_open_api(L);
    lua_setfield(L, -2, "shdict");
    mg_crypto_open_api(L);
    lua_setfield(L, -2, "crypto");
    lua_setfield(L, -2, "moongate.core");
    lua_pop(L, 2);
    mg_lua_ws_open_api(L);
    /* lib/moongate/init.lua registers moongate.run and moongate.run_timer */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate");
    if (lua_pcall(L, 1, 0, 0) != 0) {
        mg_error("cannot load the moongate Lua module: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}
