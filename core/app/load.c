/*
 * load.c -- loading a generation: a fresh LuaJIT state in which
 * lib/moongate/loader.lua validates the conf file and scripts (every file
 * read through the snapshot, snap.c), then the C copy of what the data path
 * needs (listeners, upstreams, compiled routes). Loading never touches the
 * current generation, so a failed load changes nothing.
 */
#include "app/app.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned mg_gen_seq;

static double mg_load_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* the CPU time of the calling thread: what a load costs, beside how long
 * it waited for a core */
static double mg_load_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- a worker's Lua collections, in steps ----
 * At 10 000 routes, a full collection of a new generation's state and the
 * lua_close of the old one cost 100 to 250 ms each: done at once on a
 * worker's loop they stall every connection it serves. A worker
 * (mg_load_gc_defer set) queues them instead, and mg_load_gc_step does a
 * slice of them at a time between events: a state to settle is done after
 * one finished cycle; a retired one (its generation freed; the references
 * the generation's C side held dropped first, so that its routes become
 * garbage) after two, and is then closed, with little left to free. */
typedef struct mg_load_gc {
    lua_State *L;
    int close; /* retired: lua_close at the end */
    int ends;  /* GC cycles finished since queued (or retired) */
    struct mg_load_gc *next;
} mg_load_gc_t;

static mg_load_gc_t *mg_load_gc_list;
void (*mg_load_gc_defer)(void);

static mg_load_gc_t *mg_load_gc_find(lua_State *L) {
    for (mg_load_gc_t *e = mg_load_gc_list; e; e = e->next)
        if (e->L == L)
            return e;
    return NULL;
}

/* queues L; NULL if out of memory (the caller does it now) */
static mg_load_gc_t *mg_load_gc_add(lua_State *L, int close) {
    mg_load_gc_t *e = mg_load_gc_find(L), **t;
    if (e) {
        e->close |= close;
        e->ends = 0;
        return e;
    }
    if ((e = calloc(1, sizeof(*e))) == NULL)
        return NULL;
    e->L = L;
    e->close = close;
    for (t = &mg_load_gc_list; *t; t = &(*t)->next)
        ;
    *t = e;
    mg_load_gc_defer(); /* the worker schedules the steps */
    return e;
}

int mg_load_gc_step(double budget_ms) {
    double until = mg_load_ms() + budget_ms;
    while (mg_load_gc_list) {
        mg_load_gc_t *e = mg_load_gc_list;
        if (lua_gc(e->L, LUA_GCSTEP, 64) && ++e->ends >= (e->close ? 2 : 1)) {
            mg_load_gc_list = e->next;
            if (e->close)
                lua_close(e->L);
            free(e);
        }
        if (mg_load_ms() >= until)
            break;
    }
    return mg_load_gc_list != NULL;
}

/* What goes with a generation beside its C tables: its coroutines, its
 * Lua state and its TLS contexts. */
static void mg_load_dtor(mg_gen_t *g) {
    lua_State *L = g->L;
    mg_tls_ctx_free(g);
    mg_lua_co_pool_free(g);
    mg_acme_conf_free(g->acme);
    g->acme = NULL;
    g->L = NULL;
    if (L && mg_load_gc_defer && !mg_lua_off_loop) { /* never from a loading thread */
        /* what held the routes alive: the generation table and the refs */
        lua_pushnil(L);
        lua_setfield(L, LUA_REGISTRYINDEX, "moongate.gen");
        for (int i = 0; i < g->nroutes; i++) {
            mg_route_t *r = &g->routes[i];
            int refs[] = {r->handler_ref, r->access_ref, r->hf_ref, r->log_ref};
            for (size_t k = 0; k < sizeof(refs) / sizeof(refs[0]); k++)
                if (refs[k] != LUA_NOREF && refs[k] != LUA_REFNIL)
                    luaL_unref(L, LUA_REGISTRYINDEX, refs[k]);
            r->handler_ref = r->access_ref = r->hf_ref = r->log_ref = LUA_NOREF;
            if (r->ws) {
                int wr[] = {r->ws->on_message_ref, r->ws->ws_open_ref, r->ws->ws_close_ref};
                for (size_t k = 0; k < sizeof(wr) / sizeof(wr[0]); k++)
                    if (wr[k] != LUA_NOREF && wr[k] != LUA_REFNIL)
                        luaL_unref(L, LUA_REGISTRYINDEX, wr[k]);
                r->ws->on_message_ref = r->ws->ws_open_ref = r->ws->ws_close_ref = LUA_NOREF;
            }
        }
        if (mg_load_gc_add(L, 1) != NULL)
            L = NULL;
    }
    if (L)
        lua_close(L);
    mg_load_uptls_free(g);
}

/* The Lua tree: MOONGATE_LIB; else <exe dir>/lib (a source checkout:
 * ./moongate beside lib/); else <exe dir>/../share/moongate/lib (make
 * install: PREFIX/bin/moongate and PREFIX/share/moongate/lib, wherever
 * PREFIX and DESTDIR put them). Read once. */
const char *mg_load_lib_dir(void) {
    static char dir[PATH_MAX];
    char probe[PATH_MAX + 64];
    const char *env;
    ssize_t n;
    char *slash;

    if (dir[0])
        return dir;
    env = getenv("MOONGATE_LIB");
    if (env && *env) {
        snprintf(dir, sizeof(dir), "%s", env);
        return dir;
    }
    n = readlink("/proc/self/exe", dir, sizeof(dir) - 32);
    if (n <= 0) {
        snprintf(dir, sizeof(dir), "lib");
        return dir;
    }
    dir[n] = '\0';
    slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    snprintf(probe, sizeof(probe), "%s/lib/moongate/loader.lua", dir);
    if (access(probe, R_OK) != 0) {
        snprintf(probe, sizeof(probe), "%s/../share/moongate/lib/moongate/loader.lua", dir);
        if (access(probe, R_OK) == 0) {
            strcat(dir, "/../share/moongate/lib");
            return dir;
        }
    }
    strcat(dir, "/lib");
    return dir;
}

/* The loader's notes (gen.notes: { level, text } each): the effective
 * listeners and upstreams and where each came from, the environment's
 * unknown MOONGATE_* variables, the demo's tokens outside demo mode. The
 * master logs them at start and on every reload it loads from the disk. */
static void mg_load_log_notes(lua_State *L, int genidx) {
    int n;
    lua_getfield(L, genidx, "notes");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_istable(L, -1)) {
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                const char *lvl = lua_tostring(L, -2), *text = lua_tostring(L, -1);
                if (strcmp(lvl, "warn") == 0)
                    mg_warn("%s", text);
                else
                    mg_info("%s", text);
            }
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Field readers. The loader (lib/moongate/loader.lua, routes.lua) writes
 * every field with its default, so the defaults live there only: `dflt` is
 * what an absent field reads as (0, or a position), never a second copy. */
static int mg_load_field_int(lua_State *L, int idx, const char *k, int dflt) {
    int v = dflt;
    lua_getfield(L, idx, k);
    if (lua_isnumber(L, -1))
        v = (int)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int mg_load_field_ms(lua_State *L, int idx, const char *k, int dflt) {
    int v = dflt;
    lua_getfield(L, idx, k);
    if (lua_isnumber(L, -1))
        v = (int)(lua_tonumber(L, -1) * 1000.0 + 0.5);
    lua_pop(L, 1);
    return v;
}

static char *mg_load_field_str(lua_State *L, int idx, const char *k) {
    char *v = NULL;
    lua_getfield(L, idx, k);
    if (lua_type(L, -1) == LUA_TSTRING)
        v = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return v;
}

/* Appends the addresses in the list at the top of L (the loader's
 * { {host=, port=}, ... }: it wrote every field and the defaults) to
 * g->listen, for route table `server` (0 = the main one). */
static int mg_load_add_listen(mg_gen_t *g, lua_State *L, int server) {
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    mg_addr_t *a = realloc(g->listen, sizeof(mg_addr_t) * (g->nlisten + n + 1));
    if (a == NULL)
        return MG_ERR;
    g->listen = a;
    for (int k = 1; k <= n; k++) {
        mg_addr_t *x = &g->listen[g->nlisten++];
        char *h;
        lua_rawgeti(L, -1, k);
        memset(x, 0, sizeof(*x));
        h = mg_load_field_str(L, lua_gettop(L), "host");
        snprintf(x->host, sizeof(x->host), "%s", h ? h : "");
        free(h);
        x->port = mg_load_field_int(L, lua_gettop(L), "port", 0);
        x->server = server;
        lua_pop(L, 1);
    }
    return MG_OK;
}

/* conf.admin (the loader's { listen = {...}, token = }, or nil): its
 * listeners (no route table: server -1) and token; conf.health_path. */
static int mg_load_read_admin(mg_gen_t *g, lua_State *L, int conf) {
    int first = g->nlisten;
    g->health_path = mg_load_field_str(L, conf, "health_path");
    g->health_path_len = g->health_path ? strlen(g->health_path) : 0;
    lua_getfield(L, conf, "admin");
    if (lua_istable(L, -1)) {
        g->admin_token = mg_load_field_str(L, lua_gettop(L), "token");
        lua_getfield(L, -1, "listen");
        if (mg_load_add_listen(g, L, -1) != MG_OK)
            return MG_ERR;
        lua_pop(L, 1);
        for (int i = first; i < g->nlisten; i++)
            g->listen[i].admin = 1;
    }
    lua_pop(L, 1);
    return MG_OK;
}

/* GET /routes's hits: per route of the document, its metrics label and
 * where its object ends (loader.admin_json's 3rd value: name, offset, ...).
 * Offsets out of the document or not at a "}" leave the list empty. */
static void mg_load_read_route_marks(mg_gen_t *g, lua_State *L, int t) {
    int n = (int)lua_objlen(L, t) / 2;
    size_t dlen = strlen(g->admin_routes), prev = 0;
    if (n <= 0)
        return;
    g->admin_route_names = calloc((size_t)n, sizeof(char *));
    g->admin_route_ends = calloc((size_t)n, sizeof(size_t));
    if (g->admin_route_names == NULL || g->admin_route_ends == NULL)
        return;
    for (int i = 0; i < n; i++) {
        const char *name;
        lua_Number end;
        lua_rawgeti(L, t, 2 * i + 1);
        lua_rawgeti(L, t, 2 * i + 2);
        name = lua_tostring(L, -2);
        end = lua_tonumber(L, -1);
        if (name == NULL || end < (lua_Number)prev || end >= (lua_Number)dlen ||
            g->admin_routes[(size_t)end] != '}' ||
            (g->admin_route_names[i] = strdup(name)) == NULL) {
            lua_pop(L, 2);
            break;
        }
        g->admin_route_ends[i] = prev = (size_t)end;
        g->nadmin_routes = i + 1;
        lua_pop(L, 2);
    }
}

/* The admin API's documents (GET /config, GET /routes, moongate -T):
 * loader.admin_json(gen) on the generation's own state, on the first
 * request for one (mg_gen_admin_docs): at 10 000 routes they cost as much
 * as the checks, and most generations are never asked. The generation
 * table is the one the load kept in the registry; nothing changes it. */
static void mg_load_admin_build(mg_gen_t *g) {
    lua_State *L = g->L;
    int top;
    if (L == NULL)
        return;
    top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "moongate.loader");
    lua_getfield(L, -1, "admin_json");
    lua_getfield(L, LUA_REGISTRYINDEX, "moongate.gen");
    if (!lua_isfunction(L, -2) || !lua_istable(L, -1)) {
        lua_settop(L, top);
        return;
    }
    if (lua_pcall(L, 1, 3, 0) != 0) {
        mg_warn("admin: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return;
    }
    if (lua_type(L, -3) == LUA_TSTRING)
        g->admin_config = strdup(lua_tostring(L, -3));
    if (lua_type(L, -2) == LUA_TSTRING)
        g->admin_routes = strdup(lua_tostring(L, -2));
    if (g->admin_routes && lua_istable(L, -1))
        mg_load_read_route_marks(g, L, lua_gettop(L));
    lua_settop(L, top);
}

/* The dashboard's page (GET /), read at load through the snapshot. */
static void mg_load_read_admin_page(mg_gen_t *g, lua_State *L, int loader) {
    lua_getfield(L, loader, "admin_page");
    if (!lua_isfunction(L, -1) || lua_pcall(L, 0, 1, 0) != 0) {
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if ((g->admin_page = malloc(n ? n : 1)) != NULL) {
            memcpy(g->admin_page, s, n);
            g->admin_page_len = n;
        }
    }
    lua_pop(L, 1);
}

/* g->edge[server] from the table at idx (the main conf, or one of
 * gen.servers): trusted_proxies as the loader left it ({ {bytes = 4 or 16
 * bytes, bits = n}, ... }, checked) and proxy_protocol. */
static int mg_load_read_edge(mg_gen_t *g, lua_State *L, int idx, int server) {
    mg_edge_t *e;
    int n;
    if (server >= g->nedge) {
        e = realloc(g->edge, sizeof(mg_edge_t) * (server + 1));
        if (e == NULL)
            return MG_ERR;
        memset(e + g->nedge, 0, sizeof(mg_edge_t) * (server + 1 - g->nedge));
        g->edge = e;
        g->nedge = server + 1;
    }
    e = &g->edge[server];
    lua_getfield(L, idx, "access_log"); /* a server's access_log = false */
    e->no_access_log = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "proxy_protocol");
    e->proxy_protocol = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "h2c");
    e->h2c = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "trusted_proxies");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    if (n > 0 && (e->trusted = calloc(n, sizeof(mg_cidr_t))) == NULL)
        return MG_ERR;
    for (int k = 1; k <= n; k++) {
        mg_cidr_t *c = &e->trusted[e->ntrusted];
        size_t len = 0;
        const char *b;
        lua_rawgeti(L, -1, k);
        lua_getfield(L, -1, "bytes");
        b = lua_tolstring(L, -1, &len);
        c->bits = (uint8_t)mg_load_field_int(L, lua_gettop(L) - 1, "bits", 0);
        if (b && (len == 4 || len == 16) && c->bits <= len * 8) {
            memcpy(c->addr, b, len);
            c->len = (uint8_t)len;
            e->ntrusted++;
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return MG_OK;
}

static int mg_load_read_conf(mg_gen_t *g, lua_State *L, int conf) {
    int i, n;

    lua_getfield(L, conf, "shared_dicts");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    g->shd_names = calloc(n ? n : 1, sizeof(char *));
    g->shd_sizes = calloc(n ? n : 1, sizeof(size_t));
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        g->shd_names[g->nshd] = mg_load_field_str(L, lua_gettop(L), "name");
        lua_getfield(L, -1, "size");
        g->shd_sizes[g->nshd++] = (size_t)lua_tonumber(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);

    g->workers = mg_load_field_int(L, conf, "workers", 0);
    lua_getfield(L, conf, "max_open_files");
    g->max_open_files = lua_isnumber(L, -1) ? (long long)lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    lua_getfield(L, conf, "access_log"); /* true, false, "stderr", "stdout" or a file */
    g->access_log = lua_toboolean(L, -1);
    if (lua_type(L, -1) == LUA_TSTRING &&
        (g->access_log_dest = strdup(lua_tostring(L, -1))) == NULL)
        return MG_ERR;
    lua_pop(L, 1);
    {
        char *lvl = mg_load_field_str(L, conf, "log_level");
        if (lvl) {
            g->log_level = mg_log_level_parse(lvl);
            free(lvl);
        }
    }

    lua_getfield(L, conf, "timeouts");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        g->timeouts.read = mg_load_field_ms(L, t, "read", 0);
        g->timeouts.write = mg_load_field_ms(L, t, "write", 0);
        g->timeouts.idle = mg_load_field_ms(L, t, "idle", 0);
        g->timeouts.header = mg_load_field_ms(L, t, "header", 0);
        g->timeouts.drain = mg_load_field_ms(L, t, "drain", 0);
        g->timeouts.body = mg_load_field_ms(L, t, "body", 0);
    }
    lua_pop(L, 1);

    lua_getfield(L, conf, "http2_websocket");
    g->h2_websocket = lua_toboolean(L, -1);
    lua_pop(L, 1);

    lua_getfield(L, conf, "limits");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        g->limits.header_size = (size_t)mg_load_field_int(L, t, "header_size", 0);
        g->limits.header_count = mg_load_field_int(L, t, "header_count", 0);
        g->max_websockets = mg_load_field_int(L, t, "websockets", 0);
        g->limits.h2_streams = mg_load_field_int(L, t, "h2_streams", 0);
        lua_getfield(L, t, "body_size");
        g->limits.body_size = lua_isnumber(L, -1) ? (size_t)lua_tonumber(L, -1) : 0;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (g->limits.header_size < 256)
        g->limits.header_size = 256;
    if (g->limits.header_count < 1)
        g->limits.header_count = 1;
    if (g->limits.h2_streams < 1)
        g->limits.h2_streams = 1;

    lua_getfield(L, conf, "listen");
    if (mg_load_add_listen(g, L, 0) != MG_OK)
        return MG_ERR;
    lua_pop(L, 1);
    if (mg_load_read_admin(g, L, conf) != MG_OK)
        return MG_ERR;
    if (mg_load_read_edge(g, L, conf, 0) != MG_OK)
        return MG_ERR;

    lua_getfield(L, conf, "upstreams");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    g->upstreams = calloc(n ? n : 1, sizeof(mg_upstream_t));
    for (i = 1; i <= n; i++) {
        mg_upstream_t *u = &g->upstreams[g->nupstreams++];
        int t, ns, k;
        char *name;
        lua_rawgeti(L, -1, i);
        t = lua_gettop(L);
        name = mg_load_field_str(L, t, "name");
        snprintf(u->name, sizeof(u->name), "%s", name ? name : "?");
        free(name);
        u->keepalive = mg_load_field_int(L, t, "keepalive", 0);
        u->connect_timeout = mg_load_field_ms(L, t, "connect_timeout", 0);
        u->response_timeout = mg_load_field_ms(L, t, "response_timeout", 0);
        u->body_timeout = mg_load_field_ms(L, t, "body_timeout", 0);
        u->max_fails = mg_load_field_int(L, t, "max_fails", 0);
        u->fail_timeout = mg_load_field_ms(L, t, "fail_timeout", 0);
        lua_getfield(L, t, "health_check"); /* checked by the loader */
        if (lua_istable(L, -1)) {
            int hc = lua_gettop(L);
            char *path = mg_load_field_str(L, hc, "path");
            snprintf(u->hc_path, sizeof(u->hc_path), "%s", path ? path : "/");
            free(path);
            u->hc_interval = mg_load_field_ms(L, hc, "interval", 0);
            u->hc_timeout = mg_load_field_ms(L, hc, "timeout", 0);
            u->hc_expect = mg_load_field_int(L, hc, "expect", 200);
            u->hc_rise = mg_load_field_int(L, hc, "rise", 1);
            u->hc_fall = mg_load_field_int(L, hc, "fall", 1);
        }
        lua_pop(L, 1);
        lua_getfield(L, t, "servers");
        ns = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        u->peers = calloc(ns ? ns : 1, sizeof(mg_peer_t *));
        for (k = 1; k <= ns; k++) {
            char *h;
            int port, tls;
            lua_rawgeti(L, -1, k);
            h = mg_load_field_str(L, lua_gettop(L), "host");
            port = mg_load_field_int(L, lua_gettop(L), "port", 0);
            lua_getfield(L, -1, "tls");
            tls = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (h)
                u->peers[u->npeers++] = mg_up_peer_get(h, port, tls);
            free(h);
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return MG_OK;
}

char **mg_load_str_list(lua_State *L, int idx, const char *k, int *n) {
    char **v = NULL;
    int i, cnt;
    *n = 0;
    lua_getfield(L, idx, k);
    cnt = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    if (cnt) {
        v = calloc(cnt, sizeof(char *));
        for (i = 1; v && i <= cnt; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) == LUA_TSTRING)
                v[(*n)++] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return v;
}

/* A registry reference to the non-empty list t[k], or LUA_NOREF. */
static int mg_load_list_ref(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    if (lua_istable(L, -1) && lua_objlen(L, -1) > 0)
        return luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return LUA_NOREF;
}

static mg_ws_conf_t *mg_load_read_ws(lua_State *L, int t) {
    mg_ws_conf_t *w;
    char *mode;
    int hb;
    lua_getfield(L, t, "websocket");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    t = lua_gettop(L);
    mode = mg_load_field_str(L, t, "mode");
    w->mode = mode && strcmp(mode, "relay") == 0     ? MG_WS_RELAY
              : mode && strcmp(mode, "handler") == 0 ? MG_WS_HANDLER
                                                     : MG_WS_TUNNEL;
    free(mode);
    lua_getfield(L, t, "heartbeat");
    hb = lua_gettop(L);
    if (lua_istable(L, hb)) {
        w->hb_interval = mg_load_field_ms(L, hb, "interval", 0);
        w->hb_timeout = mg_load_field_ms(L, hb, "timeout", 0);
        lua_getfield(L, hb, "message");
        w->hb_message = lua_toboolean(L, -1);
        lua_getfield(L, hb, "ping_frames");
        w->hb_frames = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "max_message");
    w->max_message = lua_isnumber(L, -1) ? (uint64_t)lua_tonumber(L, -1) : 0;
    lua_getfield(L, t, "send_buffer");
    w->send_buffer = lua_isnumber(L, -1) ? (size_t)lua_tonumber(L, -1) : 0;
    lua_getfield(L, t, "deflate");
    w->deflate = lua_toboolean(L, -1);
    lua_pop(L, 3);
    w->idle = mg_load_field_ms(L, t, "idle", 0);
    w->protocols = mg_load_str_list(L, t, "protocols", &w->nprotocols);
    w->origins = mg_load_str_list(L, t, "origins", &w->norigins);
    w->upstream_path = mg_load_field_str(L, t, "upstream_path");
    w->on_message_ref = LUA_NOREF;
    w->ws_open_ref = mg_load_list_ref(L, t, "ws_open");
    w->ws_close_ref = mg_load_list_ref(L, t, "ws_close");
    lua_getfield(L, t, "on_message");
    if (lua_isfunction(L, -1))
        w->on_message_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);
    lua_pop(L, 1);
    return w;
}

/* Appends the routes of one table (server) to g->routes. */
/* The keys mg_load_read_routes reads of every route, pushed once: a
 * lua_getfield with a C string interns its key on every call (10 000
 * routes: 160 000 calls). */
enum {
    MG_RK_RULE,
    MG_RK_NAME,
    MG_RK_HOST,
    MG_RK_KIND,
    MG_RK_INDEX,
    MG_RK_STRIP,
    MG_RK_ALOG,
    MG_RK_BODY,
    MG_RK_METHODS,
    MG_RK_UPSTREAM,
    MG_RK_HANDLER,
    MG_RK_ACCESS,
    MG_RK_HF,
    MG_RK_LOG,
    MG_RK_N
};
static const char *const mg_load_route_keys[MG_RK_N] = {
    "rule",      "name",    "host",     "kind",    "index",  "strip_prefix",  "access_log",
    "body_size", "methods", "upstream", "handler", "access", "header_filter", "log"};

/* pushes t[key], key the kth of the keys pushed at kbase */
static void mg_load_rget(lua_State *L, int t, int kbase, int k) {
    lua_pushvalue(L, kbase + k);
    lua_gettable(L, t);
}

static char *mg_load_rstr(lua_State *L, int t, int kbase, int k) {
    char *v = NULL;
    size_t len;
    const char *s;
    mg_load_rget(L, t, kbase, k);
    if (lua_type(L, -1) == LUA_TSTRING && (s = lua_tolstring(L, -1, &len)) != NULL &&
        (v = malloc(len + 1)) != NULL)
        memcpy(v, s, len + 1);
    lua_pop(L, 1);
    return v;
}

static int mg_load_rlist_ref(lua_State *L, int t, int kbase, int k) {
    mg_load_rget(L, t, kbase, k);
    if (lua_istable(L, -1) && lua_objlen(L, -1) > 0)
        return luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return LUA_NOREF;
}

static int mg_load_read_routes(mg_gen_t *g, lua_State *L, int routes, int server, char *err,
                               size_t errlen) {
    int i, n = (int)lua_objlen(L, routes), kbase = lua_gettop(L) + 1;
    mg_route_t *nr = realloc(g->routes, sizeof(mg_route_t) * (g->nroutes + n + 1));

    if (nr == NULL)
        return MG_ERR;
    g->routes = nr;
    memset(g->routes + g->nroutes, 0, sizeof(mg_route_t) * (n + 1));
    for (i = 0; i < MG_RK_N; i++)
        lua_pushstring(L, mg_load_route_keys[i]);
    for (i = 1; i <= n; i++) {
        mg_route_t *r = &g->routes[g->nroutes++];
        r->server = server;
        r->access_ref = LUA_NOREF;
        int t;
        char *up, cerr[200];
        lua_rawgeti(L, routes, i);
        t = lua_gettop(L);
        r->handler_ref = LUA_NOREF;
        r->rule = mg_load_rstr(L, t, kbase, MG_RK_RULE);
        r->name = mg_load_rstr(L, t, kbase, MG_RK_NAME);
        r->host = mg_load_rstr(L, t, kbase, MG_RK_HOST);
        mg_load_rget(L, t, kbase, MG_RK_KIND);
        r->prefix = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "prefix") == 0;
        lua_pop(L, 1);
        mg_load_rget(L, t, kbase, MG_RK_INDEX);
        r->index = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : i;
        lua_pop(L, 1);
        mg_load_rget(L, t, kbase, MG_RK_STRIP);
        r->strip_prefix = lua_toboolean(L, -1);
        lua_pop(L, 1);
        /* the route's, or its server's, access_log = false */
        mg_load_rget(L, t, kbase, MG_RK_ALOG);
        r->no_access_log = (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) ||
                           (server < g->nedge && g->edge[server].no_access_log);
        lua_pop(L, 1);
        mg_load_rget(L, t, kbase, MG_RK_BODY);
        r->body_size = lua_isnumber(L, -1) ? (size_t)lua_tonumber(L, -1) : g->limits.body_size;
        lua_pop(L, 1);
        mg_load_rget(L, t, kbase, MG_RK_METHODS);
        if (lua_istable(L, -1)) {
            int m, nm = (int)lua_objlen(L, -1);
            for (m = 1; m <= nm; m++) {
                const char *ms;
                int e;
                lua_rawgeti(L, -1, m);
                ms = lua_tostring(L, -1);
                for (e = 0; ms && e < 64; e++) {
                    const char *nm2 = llhttp_method_name((llhttp_method_t)e);
                    if (nm2 && strcmp(nm2, ms) == 0) {
                        r->methods |= 1ULL << e;
                        break;
                    }
                }
                lua_pop(L, 1);
            }
            if (r->methods == 0) /* only unknown methods: match none */
                r->methods = 1ULL << 63;
        }
        lua_pop(L, 1);
        r->ws = mg_load_read_ws(L, t);
        if (r->ws) {
            char *onr = mg_load_field_str(L, t, "on_reload");
            r->ws->drain_on_reload = onr && strcmp(onr, "drain") == 0;
            free(onr);
        }
        mg_load_rget(L, t, kbase, MG_RK_UPSTREAM);
        if (lua_type(L, -1) == LUA_TSTRING) {
            up = (char *)lua_tostring(L, -1);
            r->upstream = mg_gen_upstream(g, up, strlen(up)); /* as C reads it */
        }
        lua_pop(L, 1);
        mg_load_rget(L, t, kbase, MG_RK_HANDLER);
        if (lua_isfunction(L, -1))
            r->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
        r->access_ref = mg_load_rlist_ref(L, t, kbase, MG_RK_ACCESS);
        r->hf_ref = mg_load_rlist_ref(L, t, kbase, MG_RK_HF);
        r->log_ref = mg_load_rlist_ref(L, t, kbase, MG_RK_LOG);
        lua_pop(L, 1);
        if (r->rule == NULL || (r->upstream == NULL && r->handler_ref == LUA_NOREF)) {
            snprintf(err, errlen, "route #%d: no rule or target", r->index);
            return MG_ERR;
        }
        if (mg_route_compile(r, cerr, sizeof(cerr)) != MG_OK) {
            snprintf(err, errlen, "route #%d (%s): %s", r->index, r->rule, cerr);
            return MG_ERR;
        }
    }
    lua_settop(L, kbase - 1);
    return MG_OK;
}

/* The tls table of the conf or server table at t: its listeners (after
 * the plain ones) and its contexts (tls_ctx.c). The main conf also says
 * how often the master rotates the ticket keys. */
static int mg_load_read_tls(mg_gen_t *g, lua_State *L, int t, int server, char *err,
                            size_t errlen) {
    int first = g->nlisten, tls;
    if (server == 0)
        g->tls_ticket_rotate = mg_load_field_int(L, t, "tls_ticket_rotate", 0);
    lua_getfield(L, t, "tls");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return MG_OK;
    }
    tls = lua_gettop(L);
    lua_getfield(L, tls, "listen");
    if (mg_load_add_listen(g, L, server) != MG_OK) {
        snprintf(err, errlen, "out of memory");
        return MG_ERR;
    }
    lua_pop(L, 1);
    lua_getfield(L, tls, "http2"); /* the loader put the conf's default in */
    for (int i = first; i < g->nlisten; i++) {
        g->listen[i].tls = 1;
        g->listen[i].h2 = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    if (mg_tls_ctx_load(g, L, tls, server, err, errlen) != MG_OK)
        return MG_ERR;
    lua_pop(L, 1);
    return MG_OK;
}

lua_State *mg_load_lua_state(void) {
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    luaL_openlibs(L);
    /* lib/?.lua first, so moongate's own modules are found */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", mg_load_lib_dir(), mg_load_lib_dir(),
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    return L;
}

/* conf.servers: more listeners, each with its own route table. */
static int mg_load_read_servers(mg_gen_t *g, lua_State *L, int genidx, char *err, size_t errlen) {
    int i, n;
    lua_getfield(L, genidx, "servers");
    n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (i = 1; i <= n; i++) {
        int t;
        lua_rawgeti(L, -1, i);
        t = lua_gettop(L);
        if (mg_load_read_edge(g, L, t, i) != MG_OK) {
            snprintf(err, errlen, "out of memory");
            return MG_ERR;
        }
        lua_getfield(L, t, "listen");
        if (mg_load_add_listen(g, L, i) != MG_OK) {
            snprintf(err, errlen, "out of memory");
            return MG_ERR;
        }
        lua_pop(L, 1);
        if (mg_load_read_tls(g, L, t, i, err, errlen) != MG_OK)
            return MG_ERR;
        lua_getfield(L, t, "routes");
        if (lua_istable(L, -1) && mg_load_read_routes(g, L, lua_gettop(L), i, err, errlen) != MG_OK)
            return MG_ERR;
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return MG_OK;
}

static void mg_load_read_desc(mg_gen_t *g, lua_State *L, int loader, int genidx) {
    int i, n;
    lua_getfield(L, loader, "describe");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_pushvalue(L, genidx);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    n = (int)lua_objlen(L, -1);
    g->desc = calloc(n ? n : 1, sizeof(char *));
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) == LUA_TSTRING)
            g->desc[g->ndesc++] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    mg_gen_desc_sort(g);
}

void mg_load_desc(mg_gen_t *g) {
    lua_State *L = g ? g->L : NULL;
    int top;
    if (L == NULL || !g->desc_wanted)
        return;
    g->desc_wanted = 0;
    top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "moongate.loader");
    lua_getfield(L, LUA_REGISTRYINDEX, "moongate.gen");
    if (lua_istable(L, top + 2) && lua_istable(L, top + 3))
        mg_load_read_desc(g, L, top + 2, top + 3);
    lua_settop(L, top);
}

void mg_load_settle(mg_gen_t *gen) {
    if (gen == NULL || gen->L == NULL)
        return;
    if (!mg_load_gc_defer || mg_load_gc_add(gen->L, 0) == NULL)
        lua_gc(gen->L, LUA_GCCOLLECT, 0);
}

/* early: a worker's load from the disk (mg_load_gen_early), which then
 * makes the generation's snapshot or is confirmed by one (mg_load_adopt).
 * master: the master's own generation (from the disk, or from the
 * snapshot a worker made): its notes are logged and its route lines
 * (reload diffs) made when asked. A load from the disk records every
 * module under the generation's directories (the snapshot's scan). */
static mg_gen_t *mg_load_gen_as(const char *conf_file, int snap_fd, unsigned id, int early,
                                int master, char *err, size_t errlen) {
    mg_gen_t *g = calloc(1, sizeof(*g));
    lua_State *L;
    int loader, genidx, pause;
    double t0 = mg_load_ms(), c0 = mg_load_cpu_ms(), t1, t2, t3;

    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->log_level = -1;
    g->dtor = mg_load_dtor;
    g->conf_file = strdup(conf_file);
    L = g->L = mg_load_lua_state();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state");
        goto fail;
    }
    /* a load builds its tables and leaves half of what it allocates as
     * garbage, which settling collects later (in slices in a worker): the
     * collector waits for 4x the live heap meanwhile, not 2x (10 000
     * routes: 8% fewer instructions, about 5 MB more at the peak) */
    pause = lua_gc(L, LUA_GCSETPAUSE, 400);
    /* every file the load reads goes through one snapshot (snap.c) */
    mg_load_snap_install(L);
    if (snap_fd >= 0 && mg_load_snap_import(L, snap_fd, err, errlen) != MG_OK)
        goto fail;
    mg_lua_open_api(L);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.loader");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    loader = lua_gettop(L);
    lua_getfield(L, loader, "load");
    lua_pushstring(L, conf_file);
    lua_newtable(L);
    lua_pushinteger(L, sysconf(_SC_NPROCESSORS_ONLN));
    lua_setfield(L, -2, "ncpu");
    if (lua_pcall(L, 2, 2, 0) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_istable(L, -2)) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "load failed");
        goto fail;
    }
    lua_pop(L, 1);
    t1 = mg_load_ms();
    genidx = lua_gettop(L);
    lua_getfield(L, genidx, "conf");
    if (mg_load_read_conf(g, L, lua_gettop(L)) != MG_OK) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (mg_load_uptls(g, L, lua_gettop(L), err, errlen) != MG_OK)
        goto fail;
    if (mg_load_read_tls(g, L, lua_gettop(L), 0, err, errlen) != MG_OK)
        goto fail;
    lua_getfield(L, -1, "acme");
    g->acme = mg_acme_conf_read(L, lua_gettop(L));
    lua_pop(L, 2);
    lua_getfield(L, genidx, "routes");
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: routes missing", conf_file);
        goto fail;
    }
    if (mg_load_read_routes(g, L, lua_gettop(L), 0, err, errlen) != MG_OK)
        goto fail;
    lua_pop(L, 1);
    if (mg_load_read_servers(g, L, genidx, err, errlen) != MG_OK)
        goto fail;
    /* every table's trie, here in each process that loads the generation
     * (the master checking it, then each worker): never per request */
    t2 = mg_load_ms();
    if (mg_route_build(g, err, errlen) != MG_OK)
        goto fail;
    t3 = mg_load_ms();
    /* every listener of a conf or server with proxy_protocol, TLS ones too;
     * h2c on its plain ones (TLS ones speak h2 by ALPN: tls.http2, above) */
    for (int k = 0; k < g->nlisten; k++) {
        int srv = g->listen[k].server;
        g->listen[k].proxy_protocol = srv >= 0 && srv < g->nedge && g->edge[srv].proxy_protocol;
        if (!g->listen[k].tls)
            g->listen[k].h2 = srv >= 0 && srv < g->nedge && g->edge[srv].h2c;
    }
    /* the route lines reload diffs compare: the master's (a worker's own
     * loads never diff) */
    g->desc_wanted = master; /* mg_load_desc, when a diff asks */
    mg_load_read_admin_page(g, L, loader);
    g->admin_build = mg_load_admin_build;
    g->loaded_at = (double)time(NULL);
    if (mg_load_edge(g, L, genidx) != MG_OK) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* from the disk (the master's load, or a worker's early one, whose
     * snapshot may become the generation's): every module a handler may
     * require later is read now */
    if (snap_fd < 0) {
        lua_getfield(L, genidx, "snap_dirs");
        if (mg_load_snap_scan(L, lua_gettop(L), err, errlen) != MG_OK)
            goto fail;
        lua_pop(L, 1);
    }
    if (master)
        mg_load_log_notes(L, genidx);
    /* keep the generation table alive for handlers that close over it */
    lua_setfield(L, LUA_REGISTRYINDEX, "moongate.gen");
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSETPAUSE, pause);
    mg_load_snap_stop(L);
    if (snap_fd >= 0)
        mg_load_snap_drop(L);
    if (!early) {
        if (id == 0)
            id = mg_gen_seq + 1;
        g->id = mg_gen_seq = id;
    }
    mg_debug("load of generation %u%s: %.0f ms (scripts and checks %.0f, C tables %.0f, tries "
             "%.0f, the rest %.0f; %d routes; CPU %.0f ms)",
             id, early ? " (early, id 0 until confirmed)" : "", mg_load_ms() - t0, t1 - t0, t2 - t1,
             t3 - t2, mg_load_ms() - t3, g->nroutes, mg_load_cpu_ms() - c0);
    return g;

fail:
    mg_gen_free(g);
    return NULL;
}

mg_gen_t *mg_load_gen(const char *conf_file, int snap_fd, unsigned id, char *err, size_t errlen) {
    return mg_load_gen_as(conf_file, snap_fd, id, 0, snap_fd < 0, err, errlen);
}

mg_gen_t *mg_load_gen_master(const char *conf_file, int snap_fd, unsigned id, char *err,
                             size_t errlen) {
    return mg_load_gen_as(conf_file, snap_fd, id, 0, 1, err, errlen);
}

mg_gen_t *mg_load_gen_early(const char *conf_file, char *err, size_t errlen) {
    return mg_load_gen_as(conf_file, -1, 0, 1, 0, err, errlen);
}

unsigned mg_load_id_reserve(void) { return ++mg_gen_seq; }

int mg_load_adopt(mg_gen_t *g, int snap_fd, unsigned id, char *err, size_t errlen) {
    if (g == NULL || g->L == NULL || g->id != 0 ||
        mg_load_snap_adopt(g->L, snap_fd, err, errlen) != MG_OK)
        return MG_ERR;
    g->id = mg_gen_seq = id;
    return MG_OK;
}
