/*
 * lua_proxy.c -- moongate.proxy{...}: a handler or an access hook decides,
 * then hands the request to the C proxy (gateway/proxy.c), which streams
 * both bodies in C with its backpressure. core.proxy checks the call and
 * records a plan on the request (r->lproxy: the upstream, path, query,
 * the response's content type, a timeout, on_error) and the headers to
 * set or remove (r->xhdrs, as req:set_header()); lib/moongate/init.lua
 * returns moongate.proxy's mark, the coroutine ends, and then
 *   - after an upstream route's access hooks, dispatch starts the proxy
 *     with the plan (the request counts as allowed);
 *   - after a handler (or a handler route's access hooks), the coroutine's
 *     end hands the request up through the gateway's hook
 *     (mg_lua_hooks_t), with the body bytes the Lua target received
 *     meanwhile: the Lua layer never calls the proxy itself.
 * A call that cannot be honoured (an unknown upstream, a request body the
 * script already read, a WebSocket upgrade, bad arguments) answers 500
 * JSON with the reason at once, and is logged with the script's line.
 * The upstream's failures before any response byte can be answered by the
 * script's on_error (mg_lua_proxy_error), run outside any coroutine.
 */
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const mg_lua_hooks_t *mg_lua_hooks;

void mg_lua_set_hooks(const mg_lua_hooks_t *h) { mg_lua_hooks = h; }

/* the target (path and query) and the content type: bounds */
#define MG_LPROXY_TARGET_MAX (32 * 1024)
#define MG_LPROXY_CTYPE_MAX 128
/* plans kept for reuse, and the largest buffer a pooled one keeps */
#define MG_LPROXY_POOL 256
#define MG_LPROXY_KEEP 4096

static mg_lproxy_t *mg_lproxy_free_list;
static int mg_lproxy_free_count;

/* The plan's on_error goes (p->err_ref: lua.h). Kept at its request's
 * slot, it costs two lua_rawseti a call, not luaL_ref and luaL_unref. */
static void mg_lproxy_err_drop(mg_req_t *r, mg_lproxy_t *p) {
    lua_State *L = r->gen->L;
    if (p->err_ref == 0) {
        mg_lua_push_entry(L, r->gen, MG_ENTRY_PROXY_ERRS);
        lua_pushnil(L);
        lua_rawseti(L, -2, r->access_req_ref);
        lua_pop(L, 1);
    } else if (p->err_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, p->err_ref);
    }
    p->err_ref = LUA_NOREF;
}

void mg_lua_proxy_free(mg_req_t *r) {
    mg_lproxy_t *p = r->lproxy;
    if (p == NULL)
        return;
    mg_lproxy_err_drop(r, p);
    r->lproxy = NULL;
    if (mg_lproxy_free_count >= MG_LPROXY_POOL) {
        free(p->buf);
        free(p);
        return;
    }
    if (p->cap > MG_LPROXY_KEEP) {
        free(p->buf);
        p->buf = NULL;
        p->cap = 0;
    }
    p->next_free = mg_lproxy_free_list;
    mg_lproxy_free_list = p;
    mg_lproxy_free_count++;
}

/* r's plan, fresh (a second call replaces the first); NULL: out of memory */
static mg_lproxy_t *mg_lproxy_take(mg_req_t *r, size_t need) {
    mg_lproxy_t *p = r->lproxy;
    if (p == NULL) {
        p = mg_lproxy_free_list;
        if (p) {
            mg_lproxy_free_list = p->next_free;
            mg_lproxy_free_count--;
        } else if ((p = calloc(1, sizeof(*p))) == NULL) {
            return NULL;
        }
        p->err_ref = LUA_NOREF;
        r->lproxy = p;
    } else {
        mg_lproxy_err_drop(r, p);
    }
    if (need > p->cap) {
        char *b = realloc(p->buf, need);
        if (b == NULL)
            return NULL;
        p->buf = b;
        p->cap = need;
    }
    p->up = NULL;
    p->path_len = p->query_len = p->ctype_len = -1;
    p->timeout_ms = 0;
    return p;
}

/* The call is refused: logged with the script's line, answered 500 JSON
 * with the reason (unless the response began). Returns false to Lua. */
static int mg_lproxy_refuse(lua_State *L, mg_req_t *r, const char *fmt, ...) {
    char msg[300], where[200] = "";
    lua_Debug ar;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* level 1: moongate.proxy (init.lua); 2: the script that called it,
     * unless it tail-called (`return moongate.proxy{...}`): then the route */
    if (lua_getstack(L, 2, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 &&
        strstr(ar.short_src, "moongate/init.lua") == NULL)
        snprintf(where, sizeof(where), "%s:%d: ", ar.short_src, ar.currentline);
    mg_error("request %s: route %s: %s%s", r->request_id,
             r->route ? (r->route->name ? r->route->name : r->route->rule) : "-", where, msg);
    mg_lua_proxy_free(r); /* no plan: what was answered stands */
    if (!r->resp_started)
        mg_resp_json_error(r, 500, msg);
    lua_pushboolean(L, 0);
    return 1;
}

/* A request-target part: no control characters, no space, no '#'; a path
 * starts with '/' and has no '?'. */
static int mg_lproxy_target_ok(const char *s, size_t n, int path) {
    /* bit 1: refused in a query, bit 2: in a path; one load a byte */
    static unsigned char bad[256];
    static int made;
    unsigned char mask = path ? 2 : 1, acc = 0;
    if (!made) {
        for (int c = 0; c < 256; c++)
            bad[c] = (unsigned char)((c <= 0x20 || c == 0x7f || c == '#') ? 3 : c == '?' ? 2 : 0);
        made = 1;
    }
    if (path && (n == 0 || s[0] != '/'))
        return 0;
    for (size_t i = 0; i < n; i++)
        acc |= bad[(unsigned char)s[i]];
    return (acc & mask) == 0;
}

/* a call's timeout in seconds as the plan's ms (at least 1), or -1 when
 * it is not in (0, 86400] */
static int mg_lproxy_timeout_ms(double s) {
    int ms;
    if (!(s > 0 && s <= 86400))
        return -1;
    ms = (int)(s * 1000 + 0.5);
    return ms < 1 ? 1 : ms;
}

/* The checked call's plan: its upstream, timeout, path, query and content
 * type (each NULL for none) copied into r's plan; NULL out of memory. */
static mg_lproxy_t *mg_lproxy_record(mg_req_t *r, mg_upstream_t *up, int timeout_ms,
                                     const char *path, size_t pl, const char *q, size_t ql,
                                     const char *ct, size_t cl) {
    mg_lproxy_t *p = mg_lproxy_take(r, pl + ql + cl + 1);
    if (p == NULL)
        return NULL;
    p->up = up;
    p->timeout_ms = timeout_ms;
    if (path) {
        memcpy(p->buf, path, pl);
        p->path_len = (int)pl;
    }
    if (q) {
        memcpy(p->buf + pl, q, ql);
        p->query_len = (int)ql;
    }
    if (ct) {
        memcpy(p->buf + pl + ql, ct, cl);
        p->ctype_len = (int)cl;
    }
    return p;
}

/* One header of a call's table (name and value checked) into r->xhdrs:
 * n: v, or with v NULL (false) a removal of the client's n. MG_OK, or
 * MG_ERR out of memory. */
static int mg_lproxy_header_put(mg_req_t *r, const char *n, size_t nl, const char *v, size_t vl) {
    if (mg_http_hop_by_hop(n, nl))
        return MG_OK; /* framing stays moongate's */
    if (r->xhdrs.len)
        mg_http_lines_remove(&r->xhdrs, n, nl);
    /* "Name:" alone is a removal of the client's header (fwd.c) */
    if (v)
        return mg_http_lines_put(&r->xhdrs, n, nl, v, vl);
    return mg_http_lines_add(&r->xhdrs, n, nl) != MG_OK ? MG_ERR
                                                        : mg_http_lines_add(&r->xhdrs, ":\r\n", 3);
}

/* The headers table at idx into r->xhdrs: a string or number sets (the
 * client's of that name is not sent), false removes the client's. NULL,
 * or the first bad name (copied). */
static const char *mg_lproxy_headers(lua_State *L, int idx, mg_req_t *r) {
    static char bad[64];
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t nl = 0, vl = 0;
        const char *n = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
        const char *v = NULL;
        char num[32];
        int t = lua_type(L, -1), rc;
        if (t == LUA_TNUMBER) {
            lua_Number d = lua_tonumber(L, -1);
            if (d == (lua_Number)(long long)d && d > -1e15 && d < 1e15)
                vl = (size_t)snprintf(num, sizeof(num), "%lld", (long long)d);
            else
                vl = (size_t)snprintf(num, sizeof(num), "%.14g", d);
            v = num;
        } else if (t == LUA_TSTRING) {
            v = lua_tolstring(L, -1, &vl);
        } else if (!(t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
            n = NULL; /* true, a table...: refused */
        }
        if (n == NULL || !mg_http_field_ok(n, nl, v, v ? vl : 0)) {
            snprintf(bad, sizeof(bad), "%s",
                     lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "(not a name)");
            lua_pop(L, 2);
            return bad;
        }
        lua_pop(L, 1);
        rc = mg_lproxy_header_put(r, n, nl, v, vl);
        if (rc != MG_OK) {
            snprintf(bad, sizeof(bad), "%s (out of memory)", n);
            lua_pop(L, 1);
            return bad;
        }
    }
    return NULL;
}

/* core.proxy(upstream, path, query, headers, timeout, content_type,
 * on_error): records the plan; true, or false once refused (answered). */
static int mg_lua_core_proxy(lua_State *L) {
    mg_co_t *co = mg_lua_co_check(L, "moongate.proxy");
    mg_req_t *r = co->req;
    size_t ul = 0, pl = 0, ql = 0, cl = 0;
    const char *uname, *path = NULL, *query = NULL, *ctype = NULL, *bad;
    mg_upstream_t *up;
    mg_lproxy_t *p;
    int timeout_ms = 0, t[8];

    if (r == NULL)
        return luaL_error(L, "moongate.proxy: no request in a timer");
    lua_settop(L, 7);
    for (int i = 1; i <= 7; i++) /* each argument's type, asked once */
        t[i] = lua_type(L, i);
    if (r->resp_started) {
        /* the client has a response head already: nothing to hand over */
        mg_error("request %s: moongate.proxy after the response began", r->request_id);
        lua_pushboolean(L, 0);
        return 1;
    }
    if (t[1] != LUA_TSTRING)
        return mg_lproxy_refuse(L, r, "moongate.proxy: upstream (a name) is required");
    uname = lua_tolstring(L, 1, &ul);
    up = mg_gen_upstream(r->gen, uname, ul);
    if (up == NULL)
        return mg_lproxy_refuse(L, r, "moongate.proxy: no upstream named '%.64s'", uname);
    if (r->ws_valid)
        return mg_lproxy_refuse(L, r,
                                "moongate.proxy: not for a WebSocket upgrade (a route's "
                                "websocket mode relays those)");
    if (co->body_taken)
        return mg_lproxy_refuse(L, r,
                                "moongate.proxy: the request body was already read by the "
                                "script (req:body(), req:read()); it can no longer be proxied");
    if (t[2] != LUA_TNIL) {
        path = t[2] == LUA_TSTRING ? lua_tolstring(L, 2, &pl) : NULL;
        if (path == NULL || !mg_lproxy_target_ok(path, pl, 1))
            return mg_lproxy_refuse(L, r,
                                    "moongate.proxy: bad path (a string starting with '/', "
                                    "without spaces, control characters, '?' or '#')");
    }
    if (t[3] == LUA_TSTRING) {
        query = lua_tolstring(L, 3, &ql);
        if (!mg_lproxy_target_ok(query, ql, 0))
            return mg_lproxy_refuse(L, r,
                                    "moongate.proxy: bad query (spaces, control "
                                    "characters or '#')");
    } else if (t[3] == LUA_TBOOLEAN && !lua_toboolean(L, 3)) {
        query = "";
    } else if (t[3] != LUA_TNIL) {
        return mg_lproxy_refuse(L, r, "moongate.proxy: query must be a table, a string or false");
    }
    if (pl + ql > MG_LPROXY_TARGET_MAX)
        return mg_lproxy_refuse(L, r, "moongate.proxy: path and query longer than %d bytes",
                                MG_LPROXY_TARGET_MAX);
    if (t[5] != LUA_TNIL &&
        (timeout_ms = mg_lproxy_timeout_ms(t[5] == LUA_TNUMBER ? lua_tonumber(L, 5) : -1)) < 0)
        return mg_lproxy_refuse(L, r, "moongate.proxy: timeout must be seconds in (0, 86400]");
    if (t[6] != LUA_TNIL) {
        ctype = t[6] == LUA_TSTRING ? lua_tolstring(L, 6, &cl) : NULL;
        if (ctype == NULL || cl == 0 || cl > MG_LPROXY_CTYPE_MAX)
            return mg_lproxy_refuse(L, r,
                                    "moongate.proxy: content_type must be a string of "
                                    "1 to 128 bytes");
    }
    if (t[7] != LUA_TNIL && t[7] != LUA_TFUNCTION)
        return mg_lproxy_refuse(L, r, "moongate.proxy: on_error must be a function");
    if (t[4] != LUA_TNIL) {
        if (t[4] != LUA_TTABLE)
            return mg_lproxy_refuse(L, r, "moongate.proxy: headers must be a table");
        if ((bad = mg_lproxy_headers(L, 4, r)) != NULL)
            return mg_lproxy_refuse(L, r, "moongate.proxy: bad header %s", bad);
    }
    p = mg_lproxy_record(r, up, timeout_ms, path, pl, query, ql, ctype, cl);
    if (p == NULL)
        return mg_lproxy_refuse(L, r, "moongate.proxy: out of memory");
    if (t[7] == LUA_TFUNCTION && r->access_req_ref > 0) {
        mg_lua_push_entry(L, r->gen, MG_ENTRY_PROXY_ERRS); /* the state all threads share */
        lua_pushvalue(L, 7);
        lua_rawseti(L, -2, r->access_req_ref);
        lua_pop(L, 1);
        p->err_ref = 0;
    } else if (t[7] == LUA_TFUNCTION) {
        lua_pushvalue(L, 7);
        p->err_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the registry all threads share */
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- moongate.proxy through the FFI (init.lua) ----
 * The usual call (from a request's own coroutine, arguments of the types
 * core.proxy takes and that it would accept) records the same plan
 * without the C API: a classic function ends the caller's trace, and
 * reading seven arguments through the stack costs more than the plan. A
 * call these would not take as it is gets 1 and nothing changed, and
 * init.lua hands it to core.proxy, which then refuses, logs or records it
 * exactly as before. */

/* The call's arguments (flags: 1 a query was given (false: ""), 2 a
 * timeout, 4 an on_error): 0 when the plan is recorded (its headers follow,
 * mg_lua_ffi_proxy_header; *slot: where init.lua keeps on_error), 1 when
 * core.proxy must take the call. */
int mg_lua_ffi_proxy(const char *u, size_t ul, const char *path, size_t pl, const char *q,
                     size_t ql, double timeout, const char *ct, size_t cl, int flags, int *slot) {
    mg_co_t *co = mg_lua_co_cur;
    mg_req_t *r = co ? co->req : NULL;
    mg_upstream_t *up;
    mg_lproxy_t *p;
    int timeout_ms = 0;

    if (r == NULL || r->resp_started || r->ws_valid || co->body_taken)
        return 1;
    if ((up = mg_gen_upstream(r->gen, u, ul)) == NULL)
        return 1;
    if (path && !mg_lproxy_target_ok(path, pl, 1))
        return 1;
    if (!(flags & 1))
        q = NULL;
    if ((q && !mg_lproxy_target_ok(q, ql, 0)) || pl + ql > MG_LPROXY_TARGET_MAX)
        return 1;
    if ((flags & 2) && (timeout_ms = mg_lproxy_timeout_ms(timeout)) < 0)
        return 1;
    if (ct && (cl == 0 || cl > MG_LPROXY_CTYPE_MAX))
        return 1;
    if ((flags & 4) && r->access_req_ref <= 0)
        return 1; /* core.proxy keeps that one under a registry ref */
    if ((p = mg_lproxy_record(r, up, timeout_ms, path, pl, q, ql, ct, cl)) == NULL)
        return 1;
    if (flags & 4) {
        p->err_ref = 0; /* init.lua stores it at *slot */
        *slot = r->access_req_ref;
    }
    return 0;
}

/* One header of the call's table after mg_lua_ffi_proxy (v NULL: false, a
 * removal): 0, or 1 when core.proxy must take the call (a bad name or
 * value: it refuses with the name; out of memory). */
int mg_lua_ffi_proxy_header(const char *n, size_t nl, const char *v, size_t vl) {
    mg_co_t *co = mg_lua_co_cur;
    if (co == NULL || co->req == NULL || !mg_http_field_ok(n, nl, v, v ? vl : 0))
        return 1;
    return mg_lproxy_header_put(co->req, n, nl, v, vl) != MG_OK;
}

void mg_lua_proxy_ignored(mg_req_t *r) {
    mg_error("request %s: route %s: moongate.proxy was called, then the script answered "
             "itself: its answer went out, not the proxy's (return moongate.proxy{...})",
             r->request_id, r->route ? (r->route->name ? r->route->name : r->route->rule) : "-");
    mg_lua_proxy_free(r);
}

void mg_lua_proxy_handoff(mg_req_t *r, mg_co_t *co) {
    if (mg_lua_hooks == NULL) {
        mg_resp_json_error(r, 500, "moongate.proxy: no proxy in this process");
        mg_req_target_done(r);
        return;
    }
    mg_lua_hooks->proxy(r, co->body);
}

int mg_lua_proxy_error(mg_req_t *r, int status, const char *reason) {
    mg_lproxy_t *p = r->lproxy;
    lua_State *L = r->gen->L;
    int top, st, has_ctype = 0;
    size_t blen;
    const char *body, *bad;
    struct evbuffer *h;

    if (p == NULL || p->err_ref == LUA_NOREF || mg_req_gone(r) || r->resp_started)
        return 0;
    top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "moongate.proxy_error"); /* init.lua */
    if (p->err_ref == 0) {
        mg_lua_push_entry(L, r->gen, MG_ENTRY_PROXY_ERRS);
        lua_rawgeti(L, -1, r->access_req_ref);
        lua_remove(L, -2);
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->err_ref);
    }
    lua_pushinteger(L, status);
    lua_pushstring(L, reason);
    mg_lua_push_req(L, r);
    /* outside any coroutine: a yield in on_error fails here */
    if (lua_pcall(L, 4, 4, 0) != 0) {
        mg_error("request %s: moongate.proxy on_error: %s", r->request_id, lua_tostring(L, -1));
        lua_settop(L, top);
        return 0;
    }
    st = (int)lua_tointeger(L, top + 1);
    body = lua_tolstring(L, top + 2, &blen);
    if (st < 100 || st > 999 || body == NULL) {
        mg_error("request %s: moongate.proxy on_error: bad status or body", r->request_id);
        lua_settop(L, top);
        return 0;
    }
    h = evbuffer_new();
    if (h == NULL) {
        lua_settop(L, top);
        return 0;
    }
    if ((bad = mg_lua_header_lines(L, top + 3, h, &has_ctype)) != NULL) {
        mg_error("request %s: moongate.proxy on_error: bad response header %s", r->request_id, bad);
        evbuffer_free(h);
        lua_settop(L, top);
        return 0;
    }
    mg_http_lines_merge(h, &r->rxhdrs); /* req:set_response_header() */
    if (mg_http_evlines_have(h, "content-type", 12))
        has_ctype |= 1;
    if (!(has_ctype & 1) && blen && lua_isstring(L, top + 4)) {
        size_t tl;
        const char *ct = lua_tolstring(L, top + 4, &tl);
        mg_line_add(h, "Content-Type", 12, ct, tl);
    }
    if (!(has_ctype & 2))
        mg_line_add(h, "X-Request-Id", 12, r->request_id, strlen(r->request_id));
    if (st >= 400 && r->state != MG_REQ_DONE)
        r->resp_close = 1; /* the unread body would be taken for a request */
    mg_resp_head(r, st, (const char *)evbuffer_pullup(h, -1), evbuffer_get_length(h),
                 (st < 200 || st == 204 || st == 304) ? -1 : (int64_t)blen);
    mg_resp_body(r, body, blen);
    r->resp_done = 1;
    evbuffer_free(h);
    lua_settop(L, top);
    return 1;
}

static const luaL_Reg mg_lua_proxy_funcs[] = {
    {"proxy", mg_lua_core_proxy},
    {NULL, NULL},
};

void mg_lua_inject_proxy_api(lua_State *L) { luaL_register(L, NULL, mg_lua_proxy_funcs); }
