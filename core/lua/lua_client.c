/*
 * lua_client.c -- what a Lua coroutine waits on besides its own request:
 * sleep(), timers (each runs in a fresh coroutine) and the HTTP client
 * (an upstream exchange whose head and body resume the caller). Nothing
 * here blocks the worker's loop.
 */
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void mg_lua_http_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                                int64_t clen, int chunked);
static int mg_lua_http_on_body(void *ud, const char *data, size_t len);
static void mg_lua_http_on_done(void *ud);
static void mg_lua_http_on_error(void *ud, int status, const char *msg);

static const mg_ux_sink_t mg_lua_http_sink = {
    .on_head = mg_lua_http_on_head,
    .on_body = mg_lua_http_on_body,
    .on_done = mg_lua_http_on_done,
    .on_error = mg_lua_http_on_error,
};

static void mg_lua_co_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_co_t *co = arg;
    int n = co->targs;
    (void)fd, (void)what;
    co->targs = 0;
    mg_lua_co_resume(co, n);
}

/* Resumes co after s seconds (negative: at the next loop turn). */
static void mg_lua_co_sleep_for(mg_co_t *co, double s) {
    struct timeval tv;
    if (s < 0)
        s = 0;
    tv.tv_sec = (long)s;
    tv.tv_usec = (long)((s - (double)tv.tv_sec) * 1e6);
    co->wait = MG_W_SLEEP;
    evtimer_assign(&co->tev, mg_worker.base, mg_lua_co_timer_cb, co);
    evtimer_add(&co->tev, &tv);
}

static int mg_lua_core_sleep(lua_State *L) {
    mg_co_t *co = mg_lua_co_check(L, "moongate.sleep");
    mg_lua_co_sleep_for(co, luaL_checknumber(L, 1));
    return lua_yield(L, 0);
}

/* timer(seconds, fn, ...): fn(...) runs later in its own coroutine */
static int mg_lua_core_timer(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    int nargs = lua_gettop(L) - 2, i;
    mg_gen_t *gen = mg_lua_co_cur ? mg_lua_co_cur->gen : mg_gen_current;
    mg_co_t *co;

    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (gen == NULL || mg_worker.base == NULL || mg_lua_off_loop)
        return luaL_error(L, "moongate.timer: no event loop at load time");
    co = mg_lua_co_new(gen);
    if (co == NULL)
        return luaL_error(L, "out of memory");
    /* the coroutine's stack: fn, args...; the first resume passes the args */
    for (i = 2; i <= nargs + 2; i++)
        lua_pushvalue(L, i);
    lua_xmove(L, co->L, nargs + 1);
    co->targs = nargs;
    mg_lua_co_sleep_for(co, s);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- HTTP client ----
 * Buffered (the default): the whole body comes back in resp.body, up to
 * max_body bytes; past that the exchange is cut and the call returns
 * nil, "response body too large (limit N)".
 * Streamed (stream = true): the call returns after the head; resp:read()
 * yields the body in chunks (reading from the upstream pauses while more
 * than MG_HIGH_WATER bytes wait for the script), nil at its end. */

static void mg_lua_http_free_bufs(mg_co_t *co) {
    if (co->hbody)
        evbuffer_free(co->hbody);
    if (co->hhead)
        evbuffer_free(co->hhead);
    co->hbody = co->hhead = NULL;
}

void mg_lua_http_end(mg_co_t *co) {
    if (co->ux) {
        mg_ux_cancel(co->ux);
        co->ux = NULL;
    }
    mg_lua_http_free_bufs(co);
    co->hstream = 0;
}

/* Pushes the response table {status, headers[, body]}. */
static void mg_lua_http_push_resp(mg_co_t *co) {
    lua_State *L = co->L;
    size_t hl = evbuffer_get_length(co->hhead), off = 0;
    const char *hp = (const char *)evbuffer_pullup(co->hhead, -1);

    lua_createtable(L, 0, 3);
    lua_pushinteger(L, co->hstatus);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, 8);
    while (off < hl) {
        size_t nl = strlen(hp + off), vl;
        mg_lua_push_lower(L, hp + off, nl);
        off += nl + 1;
        vl = strlen(hp + off);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, hp + off, vl);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, hp + off, vl);
        }
        lua_rawset(L, -3);
        off += vl + 1;
    }
    lua_setfield(L, -2, "headers");
    if (co->hstream) {
        lua_pushinteger(L, co->hsid);
        lua_setfield(L, -2, "_stream");
    } else {
        lua_pushlstring(L, (const char *)evbuffer_pullup(co->hbody, -1),
                        evbuffer_get_length(co->hbody));
        lua_setfield(L, -2, "body");
    }
}

static void mg_lua_http_on_head(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs,
                                int64_t clen, int chunked) {
    mg_co_t *co = ud;
    (void)http_minor, (void)chunked;
    co->hstatus = status;
    for (int i = 0; i < nhdrs; i++) {
        evbuffer_add(co->hhead, hdrs[i].name, hdrs[i].nlen);
        evbuffer_add(co->hhead, "", 1);
        evbuffer_add(co->hhead, hdrs[i].value, hdrs[i].vlen);
        evbuffer_add(co->hhead, "", 1);
    }
    if (co->hstream) {
        /* the caller resumes with the head; the body follows on resp:read() */
        mg_lua_http_push_resp(co);
        evbuffer_free(co->hhead);
        co->hhead = NULL;
        mg_lua_co_resume(co, 1);
        return;
    }
    if (clen >= 0 && (uint64_t)clen > co->hmax)
        co->htoobig = 1; /* refused at the first body byte */
}

static int mg_lua_http_on_body(void *ud, const char *data, size_t len) {
    mg_co_t *co = ud;
    if (co->hstream) {
        if (co->wait == MG_W_HREAD) {
            lua_pushlstring(co->L, data, len);
            mg_lua_co_resume(co, 1); /* co may be gone now (its exchange cancelled) */
            return 0;
        }
        if (co->hbody == NULL)
            return -1;
        evbuffer_add(co->hbody, data, len);
        return evbuffer_get_length(co->hbody) > MG_HIGH_WATER;
    }
    if (co->htoobig || evbuffer_get_length(co->hbody) + len > co->hmax) {
        co->htoobig = 1;
        return -1; /* the exchange ends now: no more bytes are read */
    }
    evbuffer_add(co->hbody, data, len);
    return 0;
}

static void mg_lua_http_on_done(void *ud) {
    mg_co_t *co = ud;
    co->ux = NULL;
    if (co->hstream) {
        co->hdone = 1;
        if (co->wait == MG_W_HREAD) {
            lua_pushnil(co->L);
            mg_lua_co_resume(co, 1);
        }
        return;
    }
    mg_lua_http_push_resp(co);
    mg_lua_http_free_bufs(co);
    mg_lua_co_resume(co, 1);
}

static void mg_lua_http_on_error(void *ud, int status, const char *msg) {
    mg_co_t *co = ud;
    co->ux = NULL;
    if (status == 504)
        msg = "timeout"; /* every 504 of an exchange is one of its timers */
    if (co->hstream && co->wait != MG_W_HTTP) {
        /* after the head: resp:read() reports it */
        co->hdone = 1;
        co->herr = msg;
        if (co->wait == MG_W_HREAD) {
            lua_pushnil(co->L);
            lua_pushstring(co->L, msg);
            mg_lua_co_resume(co, 2);
        }
        return;
    }
    mg_lua_http_free_bufs(co);
    co->hstream = 0;
    lua_pushnil(co->L);
    if (co->htoobig)
        lua_pushfstring(co->L, "response body too large (limit %d)", (int)co->hmax);
    else
        lua_pushstring(co->L, msg);
    mg_lua_co_resume(co, 2);
}

/* http_read(id): the next chunk of a streamed response, nil at its end,
 * or nil, err */
static int mg_lua_core_http_read(lua_State *L) {
    mg_co_t *co = mg_lua_co_check(L, "resp:read");
    unsigned sid = (unsigned)luaL_checkinteger(L, 1);
    if (!co->hstream || sid != co->hsid) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (co->hbody && evbuffer_get_length(co->hbody)) {
        size_t n = evbuffer_get_length(co->hbody);
        lua_pushlstring(L, (const char *)evbuffer_pullup(co->hbody, -1), n);
        evbuffer_drain(co->hbody, n);
        if (co->ux)
            mg_ux_pause(co->ux, 0);
        return 1;
    }
    if (co->hdone) {
        lua_pushnil(L);
        if (co->herr == NULL)
            return 1;
        lua_pushstring(L, co->herr);
        return 2;
    }
    co->wait = MG_W_HREAD;
    if (co->ux)
        mg_ux_pause(co->ux, 0);
    return lua_yield(L, 0);
}

/* http_close(id): drops a streamed response (the upstream connection is
 * closed if the body was not read to its end) */
static int mg_lua_core_http_close(lua_State *L) {
    mg_co_t *co = mg_lua_co_check(L, "resp:close");
    unsigned sid = (unsigned)luaL_checkinteger(L, 1);
    if (co->hstream && sid == co->hsid)
        mg_lua_http_end(co);
    return 0;
}

/* url= calls: the coroutine's own one-server upstream for "http://host[:port]"
 * or "https://host[:port]", with the defaults of an upstream in the conf
 * (moongate.loader). https verifies the server against the system's CA
 * store (net/tls.c's default context; SSL_CERT_FILE replaces the store) and
 * the URL's host; an upstream named in the conf brings its own `tls`.
 * Raises on a bad url. */
static mg_upstream_t *mg_lua_http_url_upstream(lua_State *L, mg_co_t *co, const char *url) {
    char host[64];
    int port, tls = strncmp(url, "https://", 8) == 0, n;
    void *ctx = NULL;
    port = tls ? 443 : 80;
    n = tls ? sscanf(url, "https://%63[^:/]:%d", host, &port)
            : sscanf(url, "http://%63[^:/]:%d", host, &port);
    if (n < 1)
        luaL_error(L, "moongate.http.request: bad url '%s'", url);
    if (tls && (ctx = mg_io_tls_client_default()) == NULL)
        luaL_error(L, "moongate.http.request: no TLS client context");
    free(co->tmp_up.peers);
    memset(&co->tmp_up, 0, sizeof(co->tmp_up));
    co->tmp_up.peers = calloc(1, sizeof(mg_peer_t *));
    co->tmp_up.peers[0] = mg_up_peer_get(host, port, tls);
    co->tmp_up.npeers = co->tmp_up.peers[0] ? 1 : 0;
    snprintf(co->tmp_up.name, sizeof(co->tmp_up.name), "%.40s:%d", host, port);
    co->tmp_up.keepalive = 16;
    co->tmp_up.connect_timeout = 5000;
    co->tmp_up.response_timeout = 60000;
    co->tmp_up.body_timeout = 60000;
    co->tmp_up.max_fails = 0;
    co->tmp_up.tls = ctx; /* the process's: not the coroutine's to free */
    return &co->tmp_up;
}

/* http_request(method, upstream_or_nil, url_or_nil, target, headers, body, timeout,
 *              max_body, stream) */
static int mg_lua_core_http_request(lua_State *L) {
    mg_co_t *co = mg_lua_co_check(L, "moongate.http.request");
    const char *method = luaL_checkstring(L, 1);
    const char *target = luaL_checkstring(L, 4);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 6, NULL, &blen);
    double timeout = luaL_optnumber(L, 7, 0);
    double max_body = luaL_optnumber(L, 8, MG_HTTP_MAX_BODY);
    int stream = lua_toboolean(L, 9);
    mg_upstream_t *up = NULL;
    struct evbuffer *h;
    const char *bad;
    int has_ctype = 0;
    char hostport[96];

    if (max_body < 0 || max_body > 2147483647.0)
        return luaL_error(L, "moongate.http.request: max_body must be 0 .. 2147483647");
    mg_lua_http_end(co); /* a streamed response still open on this coroutine */
    if (lua_isstring(L, 2)) {
        size_t nl;
        const char *name = lua_tolstring(L, 2, &nl);
        up = mg_gen_upstream(co->gen, name, nl);
        if (up == NULL)
            return luaL_error(L, "moongate.http.request: unknown upstream '%s'", name);
    } else {
        up = mg_lua_http_url_upstream(L, co, luaL_checkstring(L, 3));
    }
    if (up->npeers == 0)
        return luaL_error(L, "moongate.http.request: upstream has no servers");
    if (strpbrk(method, " \r\n") || strpbrk(target, " \r\n") || target[0] != '/')
        return luaL_error(L, "moongate.http.request: bad method or path");
    h = evbuffer_new();
    mg_up_peer_str(up->peers[0], hostport, sizeof(hostport));
    evbuffer_add_printf(h, "%s %s HTTP/1.1\r\n", method, target);
    mg_line_add(h, "Host", 4, hostport, strlen(hostport));
    if ((bad = mg_lua_header_lines(L, 5, h, &has_ctype)) != NULL) {
        evbuffer_free(h);
        return luaL_error(L, "moongate.http.request: bad header %s", bad);
    }
    if (co->req)
        mg_line_add(h, "X-Request-Id", 12, co->req->request_id, strlen(co->req->request_id));
    if (body) {
        char num[24];
        mg_line_add(h, "Content-Length", 14, num, mg_utoa(num, blen));
    }
    evbuffer_add(h, "\r\n", 2);
    if (body)
        evbuffer_add(h, body, blen);
    co->hbody = evbuffer_new();
    co->hhead = evbuffer_new();
    co->hmax = (size_t)max_body;
    co->htoobig = 0;
    co->hstream = stream;
    co->hdone = 0;
    co->herr = NULL;
    co->hsid++;
    co->wait = MG_W_HTTP;
    co->ux = mg_ux_start(up, h, body == NULL, strcmp(method, "HEAD") == 0, &mg_lua_http_sink, co,
                         (int)(timeout * 1000));
    if (co->ux == NULL) {
        mg_lua_http_free_bufs(co);
        co->hstream = 0;
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    mg_ux_end(co->ux);
    return lua_yield(L, 0);
}

static const luaL_Reg mg_client_funcs[] = {
    {"sleep", mg_lua_core_sleep},
    {"timer", mg_lua_core_timer},
    {"http_request", mg_lua_core_http_request},
    {"http_read", mg_lua_core_http_read},
    {"http_close", mg_lua_core_http_close},
    {NULL, NULL},
};

void mg_lua_inject_client_api(lua_State *L) { luaL_register(L, NULL, mg_client_funcs); }
