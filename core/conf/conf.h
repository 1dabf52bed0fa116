/*
 * conf.h -- what one load of the conf and scripts produced, as the data
 * path reads it: upstreams, timeouts and limits, WebSocket settings, the
 * compiled route table (router.c) and generations with their refcounts
 * and the current one (gen.c). Durations are in milliseconds, sizes in
 * bytes. Loading one is the app layer's job (app/load.c).
 */
#ifndef MG_CONF_H
#define MG_CONF_H

#include "loop/loop.h"
#include "loop/metrics.h"

#include <lua.h>

typedef struct mg_peer_s mg_peer_t;

typedef struct {
    char name[64];
    mg_peer_t **peers; /* worker-level peers (pools, health) */
    int npeers;
    unsigned rr;          /* round-robin cursor */
    int keepalive;        /* idle connections kept per peer */
    int connect_timeout;  /* ms */
    int response_timeout; /* ms, from the request sent in full to the whole response head */
    int body_timeout;     /* ms, the longest gap in body progress, either way */
    int max_fails;
    int fail_timeout; /* ms */
    /* active health checks (upstream/health.c): hc_interval 0 = none */
    int hc_interval, hc_timeout; /* ms */
    int hc_expect, hc_rise, hc_fall;
    char hc_path[128];
    /* https:// and wss:// servers (app/uptls.c): the SSL_CTX (a reference
     * the generation holds), the SNI and verified name (NULL: each server's
     * host), tls.verify = false, and per server (as peers) a session to
     * resume (SSL_SESSION) or NULL; tls_sess NULL: none are kept */
    void *tls;
    char *tls_name;
    int tls_noverify;
    int tls_warned; /* this worker warned that verification is off */
    void **tls_sess;
    int met; /* its metrics label (loop/metrics.h) + 1; 0 until first use */
} mg_upstream_t;

static inline int mg_upstream_met(mg_upstream_t *up) {
    if (up->met == 0)
        up->met = 1 + mg_met_name(up->name, MG_MET_K_UPSTREAM);
    return up->met - 1;
}

typedef struct {
    int read, write, idle, header, drain, body; /* ms; 0 = none */
} mg_timeouts_t;

typedef struct {
    size_t header_size;
    int header_count;
    size_t body_size;
    int h2_streams; /* HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS per connection */
} mg_limits_t;

/* ---- the hop before moongate (trusted_proxies, proxy_protocol) ---- */
/* A CIDR block: its address in network order, 4 bytes (IPv4) or 16
 * (IPv6); an IPv4-mapped IPv6 address matches as IPv4. */
typedef struct {
    uint8_t addr[16];
    uint8_t len;  /* 4 or 16 */
    uint8_t bits; /* prefix length */
} mg_cidr_t;

/* What the main conf, or one entry of `servers`, says about its edge,
 * beside its routes: its peers (trusted_proxies, proxy_protocol; read by
 * app/load.c), the redirect of its plain listeners (gateway/dispatch.c)
 * and the HSTS line of its TLS ones (http/http_resp.c; both read by
 * app/load_edge.c). */
typedef struct {
    mg_cidr_t *trusted; /* trusted_proxies: their X-Forwarded-* are believed */
    int ntrusted;
    int proxy_protocol; /* every listener of it expects a PROXY v1/v2 header */
    int redirect_https; /* 0, or 301/308: plain listeners answer with a redirect */
    int https_port;     /* the first tls.listen port (0: none, or 443): the Location's */
    char *hsts;         /* "Strict-Transport-Security: ...\r\n", or NULL */
    size_t hsts_len;
    int no_access_log; /* the server's access_log = false: its requests are not logged */
    int h2c;           /* its plain listeners take prior-knowledge HTTP/2 (h2c = true) */
} mg_edge_t;

/* ---- WebSocket routes ---- */
enum { MG_WS_TUNNEL = 1, MG_WS_RELAY, MG_WS_HANDLER };

/* Per-route settings, read from the route's `websocket` table. */
typedef struct mg_ws_conf_s mg_ws_conf_t;
struct mg_ws_conf_s {
    int mode;
    int hb_interval;      /* ms between heartbeats to the client; 0 = none */
    int hb_timeout;       /* ms of peer silence before closing; 0 = never */
    int hb_message;       /* send {"type":"ping","ts":N} */
    int hb_frames;        /* send ping frames too */
    uint64_t max_message; /* bytes */
    size_t send_buffer;   /* bytes queued before the overflow policy */
    int deflate;
    int drain_on_reload;
    int idle; /* ms, tunnel: no bytes either way */
    char **protocols;
    int nprotocols;
    char **origins;
    int norigins;
    char *upstream_path; /* relay: path on the upstream (NULL: the request's) */
    int on_message_ref;  /* per-message hook, LUA_NOREF if none */
    int ws_open_ref;     /* hook lists, LUA_NOREF if none */
    int ws_close_ref;
};

#define MG_ROUTE_MAX_SEGS 32

typedef struct {
    const char *lit; /* literal segment, or NULL for a {param} */
    size_t len;
    const char *param; /* param name (for handlers) */
} mg_seg_t;

typedef struct {
    char *rule; /* path or prefix as written */
    char *name; /* label for logs */
    int prefix; /* 1 = prefix match on whole segments */
    int nsegs;  /* segments of rule */
    mg_seg_t *segs;
    int has_params;
    uint64_t methods; /* bit per llhttp method; 0 = any */
    char *host;       /* lower-case, or NULL */
    mg_upstream_t *upstream;
    int handler_ref; /* LUA_NOREF unless a Lua handler */
    int strip_prefix;
    /* access_log = false on the route or its server */
    int no_access_log;
    size_t body_size; /* 0 = unlimited */
    int index;        /* position in routes.lua */
    mg_ws_conf_t *ws; /* WebSocket route, or NULL */
    int server;       /* which server's table it belongs to */
    int access_ref;   /* access hook (function or list), LUA_NOREF if none */
    int hf_ref;       /* header_filter list (plugins), LUA_NOREF if none */
    int log_ref;      /* log list (plugins), LUA_NOREF if none */
    int met;          /* its metrics label (loop/metrics.h) + 1; 0 until first use */
} mg_route_t;

/* A route's metrics label index: its name or rule, interned at first use. */
static inline int mg_route_met(mg_route_t *rt) {
    if (rt == NULL)
        return MG_MET_NONE;
    if (rt->met == 0)
        rt->met = 1 + mg_met_name(rt->name ? rt->name : rt->rule, MG_MET_K_ROUTE);
    return rt->met - 1;
}

/* A generation's routes compiled into tries on segments (router.c). */
typedef struct mg_rtab_s mg_rtab_t;

/* A generation: one load of conf + scripts, with its own Lua state. Requests
 * hold a reference; the last one out of a superseded generation frees it. */
typedef struct mg_gen_s mg_gen_t;
struct mg_gen_s {
    unsigned id;
    int refs;
    lua_State *L;
    char *conf_file;
    mg_addr_t *listen;
    int nlisten;
    int workers;
    long long max_open_files; /* soft RLIMIT_NOFILE wanted at start; 0 = the hard limit */
    int access_log;
    /* the access log's destination, applied at activation: NULL or "stderr",
     * "stdout", or a file */
    char *access_log_dest;
    int log_level; /* MG_LOG_*, applied when the generation becomes current; -1: unset */
    mg_timeouts_t timeouts;
    mg_limits_t limits;
    mg_edge_t *edge; /* per server: [0] the main conf, then conf.servers in order */
    int nedge;
    mg_upstream_t *upstreams;
    int nupstreams;
    mg_route_t *routes; /* in match order: a route's position is its rank */
    int nroutes;
    mg_rtab_t *rtab;         /* routes as tries (mg_route_build), or NULL: matched linearly */
    int max_websockets;      /* per worker */
    int h2_websocket;        /* http2_websocket: RFC 8441 extended CONNECT on HTTP/2 */
    struct mg_co_s *co_pool; /* finished coroutines kept for reuse (lua_api.c) */
    int nco_pool;
    int entry_refs[8]; /* init.lua's registry functions, by MG_ENTRY_* (0: not looked up) */
    char **shd_names;  /* conf.shared_dicts (used at startup only) */
    size_t *shd_sizes;
    int nshd;
    void *acme;  /* conf.acme (app's mg_acme_conf_t), or NULL; freed by dtor */
    char **desc; /* one line per route, for reload diffs (the master's loads only) */
    int ndesc;
    int desc_wanted;    /* the master's load: mg_load_desc makes desc when a diff asks */
    char **desc_sorted; /* the same, sorted: mg_gen_desc_has */
    /* TLS, per server (0 = the main conf): the default SSL_CTX of its TLS
     * listeners (SNI picks the others from it), or NULL; void * keeps
     * OpenSSL out of this header. Made at load and freed by the dtor
     * (app/tls_ctx.c); open connections hold their own references. */
    void **tls_ctx;
    int ntls_ctx;
    int tls_ticket_rotate; /* seconds between session-ticket key rotations (the master's) */
    /* the admin API (gateway/admin.c): admin.token (NULL: none, only the
     * health and metrics endpoints answer), health_path on the main
     * listeners (NULL: none), and the JSON of GET /config and GET /routes
     * (moongate.loader admin_json), made on first use: mg_gen_admin_docs */
    char *admin_token;
    char *health_path;
    size_t health_path_len;
    char *admin_config, *admin_routes;
    /* per route object of admin_routes: its metrics label and the offset
     * of its closing brace (GET /routes adds the hits there) */
    char **admin_route_names;
    size_t *admin_route_ends;
    int nadmin_routes;
    char *admin_page; /* GET / (lib/moongate/admin/dashboard.html), or NULL */
    size_t admin_page_len;
    /* set by whoever loaded it: makes admin_config, admin_routes and the
     * route marks from the generation's Lua state (a 10 000-route table's
     * documents cost as much as checking it: no load waits for them) */
    void (*admin_build)(mg_gen_t *gen);
    int admin_built;
    int draining;     /* listed in mg_gen_draining */
    double loaded_at; /* wall-clock seconds of the load */
    /* set by whoever loaded it: frees what it made beside the C tables
     * (the Lua state and its coroutines), before the tables go */
    void (*dtor)(mg_gen_t *gen);
};

/* ---- gen.c ---- */
extern mg_gen_t *mg_gen_current;
extern mg_gen_t *mg_gen_pending; /* loaded, not yet serving (a reload in progress) */
/* superseded generations still held by requests or sockets (this process),
 * in no order; one leaves the list when it is freed */
#define MG_GEN_DRAINING_MAX 32
extern mg_gen_t *mg_gen_draining[MG_GEN_DRAINING_MAX];
extern int mg_gen_ndraining;
void mg_gen_activate(mg_gen_t *gen); /* becomes current; old one released */
void mg_gen_retain(mg_gen_t *gen);
void mg_gen_release(mg_gen_t *gen);
void mg_gen_free(mg_gen_t *gen); /* a load that failed, or the last release */
/* The admin documents of gen (admin_config, admin_routes), made on the
 * first call (admin_build); either may stay NULL (not available). */
void mg_gen_admin_docs(mg_gen_t *gen);
mg_upstream_t *mg_gen_upstream(mg_gen_t *gen, const char *name, size_t len);
void mg_gen_log_diff(mg_gen_t *old, mg_gen_t *gen);
/* Sorts a copy of gen->desc once (after the load read it), so that a
 * reload's diff of 10 000 routes is not 10 000 x 10 000 comparisons. */
void mg_gen_desc_sort(mg_gen_t *gen);
int mg_gen_desc_has(const mg_gen_t *gen, const char *line);

/* ---- router.c ---- */
int mg_route_compile(mg_route_t *r, char *err, size_t errlen);
/* Builds gen->rtab from gen->routes (compiled, in match order): done once
 * per load, after the last route is read; freed by mg_gen_free. */
int mg_route_build(mg_gen_t *gen, char *err, size_t errlen);
void mg_route_table_free(mg_gen_t *gen);
size_t mg_route_table_bytes(const mg_gen_t *gen); /* what gen->rtab holds */
/* Returns the matching route of lowest position (the table is sorted by
 * priority) or NULL: through gen->rtab if built, else by a scan.
 * Params, if wanted, are filled as (name, value) slices of path. */
mg_route_t *mg_route_match(mg_gen_t *gen, int server, int method, const char *host, size_t hostlen,
                           const char *path, size_t pathlen, mg_kv_t *params, int *nparams);
/* The same answer by scanning every route: the reference for the tests. */
mg_route_t *mg_route_match_linear(mg_gen_t *gen, int server, int method, const char *host,
                                  size_t hostlen, const char *path, size_t pathlen, mg_kv_t *params,
                                  int *nparams);
/* The params (name, value slices of path) of route r for a path it
 * matched, as mg_route_match gives them, without walking the table;
 * returns their count (0 when r does not match path). */
int mg_route_params_of(mg_route_t *r, const char *path, size_t pathlen, mg_kv_t *params,
                       int *nparams);
size_t mg_route_strip_len(const mg_route_t *rt, const char *path, size_t path_len);
/* The server (route table) of this worker's listening socket `lidx`. */
int mg_gen_server_of(mg_gen_t *gen, int lidx);
/* The edge settings of route table `server`, or NULL (none set). */
static inline const mg_edge_t *mg_gen_edge(const mg_gen_t *gen, int server) {
    return server >= 0 && server < gen->nedge ? &gen->edge[server] : NULL;
}

#endif
