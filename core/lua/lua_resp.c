/*
 * lua_resp.c -- a Lua handler's request body and response: req:body()
 * and req:read() (yielding until the bytes arrive, with the client's
 * reading paused past the high-water mark), res:send() and res:write()
 * (yielding while the client is slow to take what was written), and what
 * happens to the coroutine when the client drains or goes away: the Lua
 * handler as a target (mg_lua_target), all through the request API.
 */
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static void mg_lua_push_all(mg_co_t *co) {
    size_t n = evbuffer_get_length(co->body);
    lua_pushlstring(co->L, (const char *)evbuffer_pullup(co->body, -1), n);
    evbuffer_drain(co->body, n);
    co->body_taken += n; /* moongate.proxy can no longer send it */
}

static void mg_lua_body(mg_req_t *r, const char *data, size_t len) {
    mg_co_t *co = r->co;
    evbuffer_add(co->body, data, len);
    if (co->wait == MG_W_READ) {
        mg_lua_push_all(co);
        mg_lua_co_resume(co, 1);
        return;
    }
    if (co->wait != MG_W_BODY && !mg_req_gone(r) && evbuffer_get_length(co->body) > MG_HIGH_WATER)
        mg_req_read_pause(r, 1);
}

static void mg_lua_body_end(mg_req_t *r) {
    mg_co_t *co = r->co;
    if (co->wait == MG_W_BODY || co->wait == MG_W_READ) {
        if (r->resp_done) {
            lua_pushnil(co->L);
            lua_pushliteral(co->L, "request body too large");
            mg_lua_co_resume(co, 2);
            return;
        }
        if (co->wait == MG_W_READ && evbuffer_get_length(co->body) == 0)
            lua_pushnil(co->L);
        else
            mg_lua_push_all(co);
        mg_lua_co_resume(co, 1);
    }
}

static int mg_lua_core_req_body(lua_State *L) {
    mg_req_t *r = mg_lua_co_req(L, "req:body");
    mg_co_t *co = r->co;
    if (r->state == MG_REQ_DONE || mg_req_gone(r)) {
        mg_lua_push_all(co);
        return 1;
    }
    co->wait = MG_W_BODY;
    if (!mg_req_gone(r))
        mg_req_read_pause(r, 0);
    return lua_yield(L, 0);
}

static int mg_lua_core_req_read(lua_State *L) {
    mg_req_t *r = mg_lua_co_req(L, "req:read");
    mg_co_t *co = r->co;
    if (evbuffer_get_length(co->body)) {
        mg_lua_push_all(co);
        if (!mg_req_gone(r))
            mg_req_read_pause(r, 0);
        return 1;
    }
    if (r->state == MG_REQ_DONE || mg_req_gone(r)) {
        lua_pushnil(L);
        return 1;
    }
    co->wait = MG_W_READ;
    if (!mg_req_gone(r))
        mg_req_read_pause(r, 0);
    return lua_yield(L, 0);
}

static void mg_lua_client_drained(mg_req_t *r) {
    mg_co_t *co = r->co;
    if (co->wait == MG_W_DRAIN) {
        lua_pushboolean(co->L, 1);
        mg_lua_co_resume(co, 1);
    }
}

static void mg_lua_client_gone(mg_req_t *r) {
    mg_co_t *co = r->co;
    /* the coroutine goes on (it may hold upstream work); its writes are
     * dropped and whoever waits for the client learns it left */
    if (co->wait == MG_W_DRAIN || co->wait == MG_W_READ || co->wait == MG_W_BODY) {
        int wait = co->wait;
        lua_pushnil(co->L);
        lua_pushliteral(co->L, "closed");
        if (wait == MG_W_BODY) {
            lua_pop(co->L, 2);
            mg_lua_push_all(co);
            mg_lua_co_resume(co, 1);
        } else {
            mg_lua_co_resume(co, 2);
        }
    }
}

const mg_target_t mg_lua_target = {
    .body = mg_lua_body,
    .body_end = mg_lua_body_end,
    .drained = mg_lua_client_drained,
    .gone = mg_lua_client_gone,
    .keeps_req = 1, /* the coroutine goes on; it frees the request when it ends */
};

/* ---- response ---- */

/* Appends "Name: value\r\n" lines from the table at idx; refuses a name
 * that is not a token and control characters (CR, LF, ...) in a value.
 * Returns instead of raising, so that no caller's buffer leaks. */
const char *mg_lua_header_lines(lua_State *L, int idx, struct evbuffer *out, int *has_ctype) {
    static char bad[64];
    if (!lua_istable(L, idx))
        return NULL;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t nl, vl;
        const char *n, *v;
        lua_pushvalue(L, -2);
        n = lua_tolstring(L, -1, &nl);
        v = lua_tolstring(L, -2, &vl);
        if (n == NULL || v == NULL || !mg_http_field_ok(n, nl, v, vl)) {
            snprintf(bad, sizeof(bad), "%s", n ? n : "?");
            lua_pop(L, 3);
            return bad;
        }
        if (mg_http_hop_by_hop(n, nl)) {
            lua_pop(L, 2);
            continue;
        }
        if (MG_NAME_IS(n, nl, "content-type"))
            *has_ctype |= 1;
        if (MG_NAME_IS(n, nl, "x-request-id"))
            *has_ctype |= 2; /* set by the script: ours is not added */
        mg_line_add(out, n, nl, v, vl);
        lua_pop(L, 2);
    }
    return NULL;
}

/* res_write(status, headers, chunk): the first call sends the head */
static int mg_lua_core_res_write(lua_State *L) {
    mg_req_t *r = mg_lua_co_req(L, "res:write");
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);

    if (mg_req_gone(r)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (r->resp_done)
        return luaL_error(L, "res:write: the response is already complete");
    if (!r->resp_started) {
        struct evbuffer *h = evbuffer_new();
        int has_ctype = 0;
        const char *bad = mg_lua_header_lines(L, 2, h, &has_ctype);
        if (bad) {
            evbuffer_free(h);
            return luaL_error(L, "bad response header %s", bad);
        }
        mg_http_lines_merge(h, &r->rxhdrs);
        if (!(has_ctype & 2))
            mg_line_add(h, "X-Request-Id", 12, r->request_id, strlen(r->request_id));
        mg_resp_head(r, luaL_optint(L, 1, 200), (const char *)evbuffer_pullup(h, -1),
                     evbuffer_get_length(h), -1);
        evbuffer_free(h);
    }
    mg_resp_body(r, data, len);
    mg_req_flush(r);
    if (!mg_req_gone(r) && mg_req_pending(r) > MG_HIGH_WATER) {
        r->co->wait = MG_W_DRAIN; /* the client is slow: wait for it */
        return lua_yield(L, 0);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg mg_lua_resp_funcs[] = {
    {"req_body", mg_lua_core_req_body},
    {"req_read", mg_lua_core_req_read},
    {"res_write", mg_lua_core_res_write},
    {NULL, NULL},
};

void mg_lua_inject_resp_api(lua_State *L) { luaL_register(L, NULL, mg_lua_resp_funcs); }
