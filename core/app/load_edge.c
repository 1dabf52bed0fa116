/*
 * load_edge.c -- reading what a conf (or one of its servers) says about
 * HTTPS at the edge beside its routes: `redirect_https` (its plain
 * listeners answer with a redirect, gateway/dispatch.c) and `tls.hsts`
 * (the Strict-Transport-Security line its TLS listeners add to every
 * response, http/http_resp.c), with the port the redirect's Location
 * names (the first of its tls.listen). The loader
 * (lib/moongate/tls_extras.lua) checked the values; this copies them into
 * g->edge[server].
 */
#include "app/app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first port of t.tls.listen (the loader's { {host=, port=}, ... }),
 * or 0. */
static int mg_load_edge_port(lua_State *L, int tls) {
    int port = 0;
    lua_getfield(L, tls, "listen");
    if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, 1);
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "port");
            if (lua_isnumber(L, -1))
                port = (int)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return port;
}

static int mg_load_edge_hsts(mg_edge_t *e, lua_State *L, int tls) {
    size_t n;
    const char *v;
    lua_getfield(L, tls, "hsts");
    v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (v && n > 0) {
        e->hsts_len = sizeof("Strict-Transport-Security: \r\n") - 1 + n;
        e->hsts = malloc(e->hsts_len + 1);
        if (e->hsts == NULL) {
            lua_pop(L, 1);
            return MG_ERR;
        }
        snprintf(e->hsts, e->hsts_len + 1, "Strict-Transport-Security: %s\r\n", v);
    }
    lua_pop(L, 1);
    return MG_OK;
}

/* The conf or server table at t into e. */
static int mg_load_edge_one(mg_edge_t *e, lua_State *L, int t) {
    lua_getfield(L, t, "redirect_https");
    if (lua_isnumber(L, -1))
        e->redirect_https = (int)lua_tonumber(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "tls");
    if (lua_istable(L, -1)) {
        int tls = lua_gettop(L);
        e->https_port = mg_load_edge_port(L, tls);
        if (e->https_port == 443)
            e->https_port = 0;
        if (mg_load_edge_hsts(e, L, tls) != MG_OK) {
            lua_pop(L, 1);
            return MG_ERR;
        }
    }
    lua_pop(L, 1);
    return MG_OK;
}

int mg_load_edge(mg_gen_t *g, lua_State *L, int genidx) {
    int i, n, rc = MG_OK;
    lua_getfield(L, genidx, "servers");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    /* load.c made g->edge (the peers' part) for every route table */
    if (g->nedge < n + 1) {
        mg_edge_t *e = realloc(g->edge, sizeof(mg_edge_t) * (n + 1));
        if (e == NULL) {
            lua_pop(L, 1);
            return MG_ERR;
        }
        memset(e + g->nedge, 0, sizeof(mg_edge_t) * (n + 1 - g->nedge));
        g->edge = e;
        g->nedge = n + 1;
    }
    for (i = 1; i <= n && rc == MG_OK; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_istable(L, -1))
            rc = mg_load_edge_one(&g->edge[i], L, lua_gettop(L));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, genidx, "conf");
    if (rc == MG_OK && lua_istable(L, -1))
        rc = mg_load_edge_one(&g->edge[0], L, lua_gettop(L));
    lua_pop(L, 1);
    return rc;
}
