/*
 * mg.h -- moongate's shared types: process, worker, generation, connection,
 * request. Every core/ file includes this one header; each module's public
 * functions are declared here, grouped by file, so the whole API reads on a
 * few screens (as Redis's server.h does).
 */
#ifndef MG_H
#define MG_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <strings.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <llhttp.h>
#include <lua.h>

#define MG_VERSION "0.1.0"

#define MG_OK 0
#define MG_ERR -1
#define MG_AGAIN -2

/* Output above this many bytes pauses the producer (backpressure). */
#define MG_HIGH_WATER (256 * 1024)
#define MG_LOW_WATER (64 * 1024)
#define MG_READ_CHUNK (64 * 1024)

/* ---- log.c ---- */
enum { MG_LOG_DEBUG, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };
extern int mg_log_level;
void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define mg_debug(...) (mg_log_level <= MG_LOG_DEBUG ? mg_log(MG_LOG_DEBUG, __VA_ARGS__) : (void)0)
#define mg_info(...) mg_log(MG_LOG_INFO, __VA_ARGS__)
#define mg_warn(...) mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_error(...) mg_log(MG_LOG_ERROR, __VA_ARGS__)
int mg_log_level_parse(const char *s);
/* Access log: one JSON line per request, buffered per worker (flushed at
 * 32 KiB, on a 200 ms timer and at exit) so it costs no syscall per request. */
void mg_access_log_init(struct event_base *base);
void mg_access_log_write(const char *line, size_t len);
void mg_access_log_flush(void);

/* ---- conf: durations are in milliseconds, sizes in bytes ---- */
typedef struct {
    char host[64];
    int port;
    int server; /* 0 = the main route table, then conf.servers in name order */
} mg_addr_t;

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
} mg_upstream_t;

typedef struct {
    int read, write, idle, header, drain, body; /* ms; 0 = none */
} mg_timeouts_t;

typedef struct {
    size_t header_size;
    int header_count;
    size_t body_size;
} mg_limits_t;

/* ---- route table (compiled from scripts/routes.lua) ---- */
typedef struct mg_ws_conf_s mg_ws_conf_t; /* ws.h */
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
    size_t body_size; /* 0 = unlimited */
    int index;        /* position in routes.lua */
    mg_ws_conf_t *ws; /* WebSocket route, or NULL */
    int server;       /* which server's table it belongs to */
    int access_ref;   /* access hook (function or list), LUA_NOREF if none */
    int hf_ref;       /* header_filter list (plugins), LUA_NOREF if none */
    int log_ref;      /* log list (plugins), LUA_NOREF if none */
} mg_route_t;

/* A generation: one load of conf + scripts, with its own Lua state. Requests
 * hold a reference; the last one out of a superseded generation frees it. */
typedef struct mg_gen_s {
    unsigned id;
    int refs;
    lua_State *L;
    char *conf_file;
    mg_addr_t *listen;
    int nlisten;
    int workers;
    long long max_open_files; /* soft RLIMIT_NOFILE wanted at start; 0 = the hard limit */
    int access_log;
    int log_level; /* MG_LOG_*, applied when the generation becomes current; -1: unset */
    mg_timeouts_t timeouts;
    mg_limits_t limits;
    mg_upstream_t *upstreams;
    int nupstreams;
    mg_route_t *routes;
    int nroutes;
    int max_websockets;      /* per worker */
    struct mg_co_s *co_pool; /* finished coroutines kept for reuse (lua_api.c) */
    int nco_pool;
    int entry_refs[8]; /* init.lua's registry functions, by MG_ENTRY_* (0: not looked up) */
    char **shd_names;  /* conf.shared_dicts (used at startup only) */
    size_t *shd_sizes;
    int nshd;
    char **desc; /* one line per route, for reload diffs */
    int ndesc;
} mg_gen_t;

/* ---- gen.c ---- */
extern mg_gen_t *mg_gen_current;
/* Loads a generation. snap_fd -1: read the files from the disk and keep
 * what was read (mg_snap_export); else a snapshot memfd from the master to
 * load exactly those bytes (borrowed). id 0: the next number. */
mg_gen_t *mg_gen_load(const char *conf_file, int snap_fd, unsigned id, char *err, size_t errlen);
extern mg_gen_t *mg_gen_pending;     /* loaded, not yet serving (a reload in progress) */
void mg_gen_activate(mg_gen_t *gen); /* becomes current; old one released */
void mg_gen_retain(mg_gen_t *gen);
void mg_gen_release(mg_gen_t *gen);
mg_upstream_t *mg_gen_upstream(mg_gen_t *gen, const char *name, size_t len);
void mg_gen_log_diff(mg_gen_t *old, mg_gen_t *gen);
const char *mg_lib_dir(void);

/* ---- snap.c: the files a generation loads, read once ---- */
void mg_snap_install(lua_State *L); /* file readers go through an empty snapshot */
int mg_snap_import(lua_State *L, int fd, char *err, size_t errlen); /* snapshot from memfd */
int mg_snap_scan(lua_State *L, int dirs, char *err, size_t errlen); /* + .lua under dirs */
void mg_snap_stop(lua_State *L); /* loading done: file readers but require read the disk */
void mg_snap_drop(lua_State *L); /* frees all but the modules require resolves from */
int mg_snap_export(lua_State *L, char *err, size_t errlen); /* sealed memfd, or -1; then drop */

/* ---- router.c ---- */
typedef struct {
    const char *name, *value;
    size_t nlen, vlen;
} mg_kv_t;

int mg_route_compile(mg_route_t *r, char *err, size_t errlen);
/* Returns the first matching route (the table is sorted by priority) or NULL.
 * Params, if wanted, are filled as (name, value) slices of path. */
mg_route_t *mg_route_match(mg_gen_t *gen, int server, int method, const char *host, size_t hostlen,
                           const char *path, size_t pathlen, mg_kv_t *params, int *nparams);
size_t mg_route_strip_len(const mg_route_t *rt, const char *path, size_t path_len);
/* The server (route table) of this worker's listening socket `lidx`. */
int mg_gen_server_of(mg_gen_t *gen, int lidx);

/* ---- conn / request (http.c) ---- */
typedef struct mg_conn_s mg_conn_t;
/* Header lines "Name: value\r\n" in one flat buffer (per request, kept
 * with the recycled request). */
typedef struct {
    char *p;
    size_t len, cap;
} mg_lines_t;

typedef struct mg_req_s mg_req_t;
typedef struct mg_ux_s mg_ux_t;
typedef struct mg_co_s mg_co_t;

typedef struct {
    uint32_t noff, nlen, voff, vlen; /* offsets into req->hbuf */
} mg_hdr_t;

enum { MG_REQ_HEAD, MG_REQ_BODY, MG_REQ_DONE };
enum { MG_ACCESS_NONE, MG_ACCESS_RUNNING, MG_ACCESS_OK, MG_ACCESS_DENIED };

struct mg_req_s {
    mg_req_t *next_free;
    mg_conn_t *conn; /* NULL once the client is gone */
    mg_gen_t *gen;
    mg_route_t *route;
    int state;
    int method;
    int http_minor;
    int keep_alive;
    int expect_continue;
    int chunked;      /* request body is chunked */
    int64_t clen;     /* Content-Length, -1 if none */
    uint64_t body_rx; /* body bytes received so far */
    int status;       /* response status sent */
    int resp_started; /* response head queued */
    int resp_done;
    int resp_chunked;   /* we chunk-encode the response body */
    int resp_close;     /* close after response (no framing / errors) */
    int ws_upgrade;     /* a valid WebSocket handshake: hand off after parsing */
    int ws_valid;       /* a valid handshake on a WebSocket route (req.websocket) */
    int access_state;   /* MG_ACCESS_*: the route's access hook */
    int access_req_ref; /* the req table scripts see (anchored until the request ends) */
    mg_lines_t xhdrs;   /* "Name: value\r\n" lines set by req:set_header() */
    mg_lines_t rxhdrs;  /* response header lines set by req:set_response_header() */
    uint64_t bytes_out;
    double t_start;
    /* target side */
    mg_ux_t *ux; /* proxy exchange */
    mg_co_t *co; /* Lua handler */
    /* head storage: url + header names/values, bounded by limits.header_size */
    uint32_t url_len;
    int nhdrs;
    int hstate;        /* 0 none, 1 in field, 2 in value */
    int host_idx;      /* index of Host header or -1 */
    int xrid_idx;      /* X-Request-Id index or -1 */
    uint32_t path_len; /* url = path [? query] */
    char request_id[40];
    size_t hcap, hlen;
    char *hbuf;
    mg_hdr_t *hdrs;
    int hdrs_cap;
};

struct mg_conn_s {
    int fd;
    int closing;   /* close once output is flushed */
    int paused;    /* parser paused between pipelined requests */
    int rd_off;    /* reading disabled (backpressure) */
    int wr_on;     /* write event armed */
    int tmode;     /* which timeout is armed */
    uint64_t nreq; /* requests served on this connection */
    struct event rev, wev, tev;
    struct evbuffer *out;
    char *in; /* saved unparsed input (pipelining) */
    size_t in_len, in_cap;
    llhttp_t parser;
    mg_req_t *req;
    struct sockaddr_storage peer;
    char peer_ip[48];
    int is_tls;
    int lidx;               /* listening socket it came from */
    mg_conn_t *prev, *next; /* all connections of the worker */
};

void mg_http_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx);
void mg_http_close_idle(void); /* stopping: close connections between requests */
void mg_conn_flush(mg_conn_t *c);
void mg_conn_read_enable(mg_conn_t *c, int on);
size_t mg_conn_pending(mg_conn_t *c);
/* Response helpers. Headers in `extra` are full "Name: value\r\n" lines. */
void mg_resp_head(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen);
void mg_resp_body(mg_req_t *r, const char *data, size_t len);
void mg_resp_end(mg_req_t *r);
void mg_resp_json_error(mg_req_t *r, int status, const char *msg);
void mg_req_target_done(mg_req_t *r); /* target finished with the response */
/* The access hook ended (allowed or it answered): go on with the request. */
void mg_http_access_finish(mg_req_t *r);
/* Is `name` overridden by req:set_header()? */
int mg_req_xhdr_has(mg_req_t *r, const char *name, size_t len);
int mg_lines_have(const char *p, size_t n, const char *name, size_t len);
int mg_evlines_have(struct evbuffer *lines, const char *name, size_t len);
int mg_lines_add(mg_lines_t *l, const char *s, size_t n);
uint64_t mg_rng_next(void); /* the worker's xorshift128+ (request ids, WebSocket masks) */
void mg_lines_remove(mg_lines_t *l, const char *name, size_t len);
void mg_lines_merge(struct evbuffer *dst, const mg_lines_t *src);
void mg_req_xhdrs_append(mg_req_t *r, struct evbuffer *h);
/* Appends the client's header line hd as "Name: value\r\n". */
void mg_req_copy_header(mg_req_t *r, mg_hdr_t *hd, struct evbuffer *h);
void mg_req_abort(mg_req_t *r); /* target failed mid-response: close */
const char *mg_req_header(mg_req_t *r, const char *name, size_t *len);
/* The nth (0-based) header line with this name, or NULL. */
const char *mg_req_header_n(mg_req_t *r, const char *name, int nth, size_t *len);
const char *mg_status_text(int status);
int mg_http_hop_by_hop(const char *name, size_t len);
/* A header a script sets: the name a token, the value free of control
 * characters but HTAB (RFC 9110 5.1, 5.5). 1 if fine. */
int mg_http_field_ok(const char *name, size_t nlen, const char *value, size_t vlen);
double mg_now(void);
double mg_now_coarse(void); /* mg_now to the kernel's tick */
/* Decimal digits of v into buf (no NUL); returns the length. */
size_t mg_utoa(char *buf, uint64_t v);
/* Escapes s for a JSON string (ASCII out) into out (cap bytes, NUL ended). */
/* Header and token names compare without case (RFC 9110 5.1); MG_NAME_IS
 * takes a literal. The one copy: proxy, WebSocket and forwarding use it. */
static inline int mg_name_eq(const char *n, size_t l, const char *lit, size_t ll) {
    return l == ll && strncasecmp(n, lit, l) == 0;
}
#define MG_NAME_IS(n, l, lit) mg_name_eq((n), (l), (lit), sizeof(lit) - 1)
size_t mg_json_escape(char *out, size_t cap, const char *s);
int mg_json_error_body(char *out, size_t cap, const char *msg, const char *request_id);
/* http.c: the request target as access-log lines (HTTP and WebSocket
 * sessions) show it: cut to 300 bytes, query credentials as "-", escaped. */
void mg_log_path(const mg_req_t *r, char *esc, size_t cap);

/* ---- upstream.c: pooled upstream exchanges ---- */
typedef struct {
    /* Response head parsed: status and raw header lines (hop-by-hop kept;
     * the sink filters). Borrowed until the callback returns. */
    void (*on_head)(void *ud, int status, int http_minor, mg_kv_t *hdrs, int nhdrs, int64_t clen,
                    int chunked);
    /* Body bytes; return 1 to ask the exchange to pause reading, -1 to
     * refuse the response (the exchange fails: on_error with status 0). */
    int (*on_body)(void *ud, const char *data, size_t len);
    void (*on_done)(void *ud);
    /* Failure: status is 502 or 504 if nothing was delivered yet, else 0. */
    void (*on_error)(void *ud, int status, const char *msg);
    /* Request body may be sent again: the upstream drained below low water. */
    void (*on_drain)(void *ud);
    /* A batch of upstream input was handled: a good time to write. */
    void (*on_flush)(void *ud);
    /* Set for upgrade requests: a fresh connection is used, and a 101
     * hands its fd to the sink (which then owns it) with the response
     * headers and any bytes read past the head. The exchange ends there. */
    void (*on_upgrade)(void *ud, int fd, mg_kv_t *hdrs, int nhdrs, const char *extra,
                       size_t extralen);
} mg_ux_sink_t;

/* Starts an exchange; takes ownership of `head` (an evbuffer with the full
 * request head). Body bytes follow with mg_ux_send(); mg_ux_end() marks the
 * end of the request. The sink is called until on_done/on_error, after which
 * the exchange frees itself. */
mg_ux_t *mg_ux_start(mg_upstream_t *up, struct evbuffer *head, int idempotent, int head_only,
                     const mg_ux_sink_t *sink, void *ud, int timeout_ms);
void mg_ux_send(mg_ux_t *ux, const char *data, size_t len);
void mg_ux_end(mg_ux_t *ux);
size_t mg_ux_pending(mg_ux_t *ux); /* request bytes not yet written */
void mg_ux_pause(mg_ux_t *ux, int on);
void mg_ux_cancel(mg_ux_t *ux); /* the sink is gone: no more callbacks */
mg_peer_t *mg_peer_get(const char *host, int port);
void mg_peer_str(mg_peer_t *p, char *buf, size_t len);

/* ---- fwd.c: forwarding headers (proxy and WebSocket upstream handshake) ---- */
/* The header names a Connection header lists, for removal (RFC 9110 7.6.1);
 * names past the first MG_FWD_TOKENS_MAX are not seen. */
#define MG_FWD_TOKENS_MAX 16
typedef struct {
    const char *n[MG_FWD_TOKENS_MAX];
    size_t l[MG_FWD_TOKENS_MAX];
    int count;
} mg_fwd_tokens_t;
/* Adds the names of one Connection header value to t. */
void mg_fwd_conn_tokens(mg_fwd_tokens_t *t, const char *v, size_t len);
int mg_fwd_tokens_has(const mg_fwd_tokens_t *t, const char *name, size_t len);
/* The X-Forwarded-Proto value: the scheme the client spoke to moongate
 * ("http", or "https" on a TLS connection), whatever the client claims. */
const char *mg_fwd_proto(const mg_req_t *r, size_t *len);
/* What mg_fwd_headers also leaves out of the client's headers: */
#define MG_FWD_DROP_EXPECT 1u  /* Expect (the proxy answers 100-continue itself) */
#define MG_FWD_DROP_WS_KEYS 2u /* Sec-WebSocket-* (the relay sends its own) */
typedef struct {
    const char *xff; /* the client's X-Forwarded-For (the last one), or NULL */
    size_t xff_len;
} mg_fwd_t;
/* Appends the client's end-to-end headers, then the req:set_header()
 * lines, to h; notes in f what mg_fwd_tail needs. */
void mg_fwd_headers(mg_req_t *r, struct evbuffer *h, unsigned drop, mg_fwd_t *f);
/* Appends X-Forwarded-Host (or Host) to h, then writes the X-Forwarded-For,
 * X-Forwarded-Proto and X-Request-Id lines to tail (at least
 * MG_FWD_TAIL_MAX bytes, the caller may go on writing there and adds it to
 * h) and returns their length. */
#define MG_FWD_TAIL_MAX 160
size_t mg_fwd_tail(mg_req_t *r, const mg_fwd_t *f, struct evbuffer *h, char *tail);

/* ---- proxy.c ---- */
void mg_proxy_start(mg_req_t *r);
void mg_proxy_body(mg_req_t *r, const char *data, size_t len);
void mg_proxy_body_end(mg_req_t *r);
void mg_proxy_client_drained(mg_req_t *r);
void mg_proxy_client_gone(mg_req_t *r);

/* ---- shdict.c, crypto.c ---- */
int mg_shdict_create(const char *name, size_t size); /* master, before fork */
void mg_shdict_open_api(lua_State *L);               /* pushes core.shdict */
void mg_crypto_open_api(lua_State *L);               /* pushes core.crypto */

/* ---- lua_api.c: handlers as coroutines, the moongate module ---- */
void mg_lua_open_api(lua_State *L);
void mg_co_pool_free(mg_gen_t *gen);
void mg_lua_handler_start(mg_req_t *r);
void mg_lua_access_start(mg_req_t *r);
void mg_req_unlink(mg_req_t *r); /* the request ends: its req table lets go of it */
/* header_filter plugins: `lines` ("Name: value\r\n"...) in, the edited
 * lines into out, *status updated. MG_ERR leaves the head as it was. */
int mg_lua_header_filter(mg_req_t *r, int *status, const char *lines, size_t len,
                         struct evbuffer *out);
void mg_lua_log(mg_req_t *r, double duration_ms); /* log plugins */
void mg_lua_body(mg_req_t *r, const char *data, size_t len);
void mg_lua_body_end(mg_req_t *r);
void mg_lua_client_drained(mg_req_t *r);
void mg_lua_client_gone(mg_req_t *r);

/* ---- worker (server.c) ---- */
typedef struct {
    struct event_base *base;
    int id;
    int nfd;
    int *fds;         /* listening sockets of this worker */
    mg_addr_t *laddr; /* their addresses (as at startup), same order */
    struct event **lev;
    int stopping;
    uint64_t active;   /* connections open */
    uint64_t inflight; /* requests in progress */
    char scratch[MG_READ_CHUNK];
    uint64_t rng[2];
    const struct timeval *ct[8]; /* common timeouts */
} mg_worker_t;

extern mg_worker_t mg_worker;
const struct timeval *mg_timeout_tv(int ms);
void mg_worker_run(int id, int *fds, int nfd, int ctl);

/* The control channel between the master and one worker: a SOCK_SEQPACKET
 * socketpair, one message per record. A reload is two-phase: PREPARE
 * (with the generation's snapshot memfd) -> READY or REFUSE, then COMMIT ->
 * SERVING, or ABORT. */
enum {
    MG_CTL_PREPARE = 'P',
    MG_CTL_READY = 'K',
    MG_CTL_REFUSE = 'E',
    MG_CTL_COMMIT = 'C',
    MG_CTL_SERVING = 'S',
    MG_CTL_ABORT = 'A',
};
typedef struct {
    char op;        /* MG_CTL_* */
    unsigned id;    /* the generation */
    char text[480]; /* REFUSE: why */
} mg_ctl_msg_t;
int mg_ctl_send(int sock, int op, unsigned id, const char *text, int fd); /* fd -1: none */
int mg_ctl_recv(int sock, mg_ctl_msg_t *m, int *fd); /* MG_OK, MG_AGAIN, MG_ERR (closed) */
void mg_request_id(char *out);                       /* 32 hex chars + NUL */
void mg_server_stop_accept(void);

/* ---- main.c ---- */
extern const char *mg_conf_path;

#endif
