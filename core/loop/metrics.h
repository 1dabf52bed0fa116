/*
 * metrics.h -- the Prometheus counters (metrics.c). The master maps one
 * shared region before forking (mg_metrics_init): a bounded table of label
 * names (routes, upstreams, servers) and one fixed-layout record per worker
 * slot. A worker adds into its own slot only (mg_met points at it): plain
 * adds, no lock, no syscall, no allocation. A scrape sums every slot
 * (mg_metrics_render). Counters outlive a worker's restart (the slot is
 * kept); gauges (open connections, sockets, pools) are zeroed when the
 * slot's worker dies or starts, since what they counted died with it.
 *
 * This layer only stores and renders: callers above pass names (interned
 * once, mg_met_name) and small indices.
 */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include "base/base.h"

#include <event2/buffer.h>
#include <stdint.h>

#define MG_MET_NAMES 1024   /* label names; past that, "(other)" */
#define MG_MET_NAME_LEN 144 /* bytes of one, NUL included (longer: cut) */
#define MG_MET_BUCKETS 14   /* 1 ms ... 10 s, then +Inf */
#define MG_MET_LISTENERS 32 /* listeners by index; past that, not counted */
#define MG_MET_GENS 16      /* open sockets by generation: a ring by id */
#define MG_MET_CODES 16     /* WebSocket close codes (mg_met_ws_code) */

#define MG_MET_OTHER 0 /* name index of "(other)": the table was full */
#define MG_MET_NONE 1  /* name index of "(none)": no route matched */
#define MG_MET_ADMIN 2 /* name index of "(admin)": the admin listener's requests */

/* what a name labels (a name can be several) */
enum { MG_MET_K_ROUTE = 1, MG_MET_K_UPSTREAM = 2, MG_MET_K_SERVER = 4 };
/* method classes */
enum {
    MG_MET_M_GET,
    MG_MET_M_HEAD,
    MG_MET_M_POST,
    MG_MET_M_PUT,
    MG_MET_M_DELETE,
    MG_MET_M_PATCH,
    MG_MET_M_OPTIONS,
    MG_MET_M_OTHER,
    MG_MET_NMETHOD
};
/* upstream error kinds */
enum { MG_MET_E_CONNECT, MG_MET_E_TIMEOUT, MG_MET_E_BAD, MG_MET_NERR };
/* WebSocket modes, directions (from the client: in), who closed */
enum { MG_MET_WS_HANDLER, MG_MET_WS_TUNNEL, MG_MET_WS_RELAY, MG_MET_NMODE };
enum { MG_MET_IN, MG_MET_OUT };
enum { MG_MET_BY_CLIENT, MG_MET_BY_GATEWAY, MG_MET_BY_UPSTREAM, MG_MET_BY_NONE, MG_MET_NSIDE };
/* reload results */
enum { MG_MET_RELOAD_OK, MG_MET_RELOAD_FAILED };

typedef struct {
    uint64_t b[MG_MET_BUCKETS]; /* per bucket, not cumulative (render adds up) */
    uint64_t sum_us;            /* microseconds */
} mg_met_hist_t;

/* One name's counters and gauges, together: a request adds into its
 * route's record and its upstream's, a few adjacent cache lines each (a
 * slot laid out field by field, one array per family, put each of a
 * request's ~8 adds on a page of its own, and since every array was a
 * multiple of 4 KiB, the adds of the small indices on the same few L1
 * sets). The request path's first: a route's bytes, duration and requests,
 * an upstream's requests, pool and time. Gauges (zeroed on restart):
 * up_pool, up_idle, ws_open, ws_rgen (mg_metrics_slot_reset). */
typedef struct {
    _Alignas(64) uint64_t http_bytes[2]; /* in, out */
    mg_met_hist_t http_dur;
    uint64_t up_req;
    int64_t up_pool; /* gauge, by upstream: connections open (busy + idle) */
    int64_t up_idle; /* gauge */
    mg_met_hist_t up_time;
    uint64_t http_req[MG_MET_NMETHOD][6]; /* status class 0 (none) .. 5 */
    uint64_t up_err[MG_MET_NERR];
    uint64_t up_eject; /* by server */
    uint64_t ws_msgs[2];
    uint64_t ws_bytes[2];
    uint64_t ws_pings;
    uint64_t ws_dead;
    uint64_t ws_drained;
    uint64_t ws_overflow;
    uint64_t ws_close[MG_MET_CODES][MG_MET_NSIDE];
    int64_t ws_open[MG_MET_NMODE]; /* gauge */
    /* gauge: by mode and generation (the ring's entry: its id is ws_gen_id) */
    int32_t ws_rgen[MG_MET_NMODE][MG_MET_GENS];
} mg_met_rec_t;

/* One worker slot: the worker's own gauges (zeroed on restart), then one
 * record per name (n[name]). */
typedef struct {
    int32_t pid;
    int64_t conns[MG_MET_LISTENERS][2]; /* plain, TLS */
    int64_t ws_gen[MG_MET_GENS];
    uint32_t ws_gen_id[MG_MET_GENS];
    /* generations in use (requests, sockets; not the worker's own "current"
     * reference), published by conf/gen.c: a ring by id like ws_gen */
    int64_t gen_use[MG_MET_GENS];
    uint32_t gen_use_id[MG_MET_GENS];
    double gen_at[MG_MET_GENS]; /* its loaded_at */
    /* by server: 0 unknown, 1 up, 2 down (set at every pick: kept dense) */
    uint8_t health[MG_MET_NAMES];
    mg_met_rec_t n[MG_MET_NAMES];
} mg_met_slot_t;

/* The worker's own slot; before mg_metrics_init (moongate -t, the C unit
 * tests) a private one, so an increment never needs a check. */
extern mg_met_slot_t *mg_met;

/* master, before forking: the shared region for nslots workers; listener
 * labels ("host:port", by listener index). MG_OK or MG_ERR (errno). */
int mg_metrics_init(int nslots, const char *const *listeners, int nlisteners);
/* a worker at start (and the master when the slot's worker died): gauges to 0 */
void mg_metrics_slot_reset(int slot);
/* a worker at start: mg_met = its slot */
void mg_metrics_attach(int slot, int pid);
/* master: process-wide values */
void mg_metrics_reload(int result);                    /* MG_MET_RELOAD_* */
void mg_metrics_generation(unsigned gen, double when); /* serving since when (Unix time) */
void mg_metrics_worker_restarted(void);

/* The index of name (a route's name or rule, an upstream, "upstream|host:port"
 * for a server), interned once into the shared table and marked kind; at
 * load or first use, never per request. MG_MET_OTHER when full. */
int mg_met_name(const char *name, int kind);

/* Extra families rendered at scrape time by the layers above (shared dicts,
 * certificates): up to 8, registered once per worker. */
typedef void (*mg_metrics_extra_fn)(struct evbuffer *out);
void mg_metrics_add_extra(mg_metrics_extra_fn fn);

/* The whole process family, Prometheus text format 0.0.4. */
void mg_metrics_render(struct evbuffer *out);

/* ---- readers for the admin API (sums over every worker slot) ---- */

/* the index of a name already interned, or -1 (never interns) */
int mg_met_find(const char *name);
const char *mg_met_name_str(int name);
uint64_t mg_metrics_http_requests(int name); /* all methods and statuses */
typedef struct {
    uint64_t requests, errors[MG_MET_NERR];
    int64_t pool, idle;
} mg_met_up_sum_t;
void mg_metrics_upstream_sum(int name, mg_met_up_sum_t *out);
/* open WebSockets by route, mode and generation: up to max rows, nonzero
 * only; returns how many */
typedef struct {
    int name, mode;
    unsigned gen;
    int64_t open;
} mg_met_ws_row_t;
int mg_metrics_ws_rows(mg_met_ws_row_t *rows, int max);
/* generations in use in some worker (requests and sockets still on them):
 * up to max rows; ws = sockets open on it */
typedef struct {
    unsigned id;
    double loaded_at;
    int64_t in_use, ws;
} mg_met_gen_row_t;
int mg_metrics_gen_rows(mg_met_gen_row_t *rows, int max);
unsigned mg_metrics_serving(void); /* the master's serving generation */

/* ---- increments (the request path: plain adds) ---- */

/* the class of an llhttp method, by a table (an inline load, not a
 * switch behind a call: one per request) */
#define MG_MET_MCLASS_N 64
extern const uint8_t mg_met_mclass[MG_MET_MCLASS_N]; /* class ^ MG_MET_M_OTHER */
static inline int mg_met_method_class(int llhttp_method) {
    return llhttp_method >= 0 && llhttp_method < MG_MET_MCLASS_N
               ? mg_met_mclass[llhttp_method] ^ MG_MET_M_OTHER
               : MG_MET_M_OTHER;
}
int mg_met_ws_code(int code);

/* the histograms' upper bounds, 1 ms .. 10 s (metrics.c) */
extern const double mg_met_bounds[MG_MET_BUCKETS - 1];

/* the histogram bucket of secs: the bounds under it counted by four
 * compares, a binary search of the 13 (a NaN compares false and takes 0, as the
 * linear scan did) */
static inline int mg_met_bucket(double secs) {
    int i = secs > mg_met_bounds[7] ? 8 : 0;
    if (secs > mg_met_bounds[i + 3])
        i += 4;
    if (i < 12 && secs > mg_met_bounds[i + 1])
        i += 2;
    if (secs > mg_met_bounds[i])
        i++;
    return i;
}

/* The bucket by the duration's microseconds, us: no two bounds share a
 * power of two of microseconds (1 ms is in [512, 1024) us, 2.5 ms in
 * [2048, 4096), ...), so the bounds under 2^lg us are mg_met_lg_base[lg]
 * (those below are surely under secs, those above surely not: a bound is
 * a whole number of us, not a power of two) and the one in [2^lg,
 * 2^(lg+1)), if any, mg_met_lg_bound[lg] (else +Inf), is compared as the
 * search compares it: one compare instead of four. */
extern const uint8_t mg_met_lg_base[64];
extern const double mg_met_lg_bound[64];

static inline void mg_met_hist(mg_met_hist_t *h, double secs) {
    if (secs > 0 && secs < 9.2e12) { /* the us fit an int64: its conversion, one instruction */
        uint64_t us = (uint64_t)(int64_t)(secs * 1e6);
        int lg = 63 - __builtin_clzll(us | 1);
        h->b[mg_met_lg_base[lg] + (secs > mg_met_lg_bound[lg])]++;
        h->sum_us += us;
        return;
    }
    h->b[mg_met_bucket(secs)]++;
    h->sum_us += secs > 0 ? (uint64_t)(secs * 1e6) : 0;
}

/* who closed as the access log says it ("client", "moongate", "upstream", "none") */
static inline int mg_met_ws_side(const char *by) {
    return by == NULL     ? MG_MET_BY_NONE
           : by[0] == 'c' ? MG_MET_BY_CLIENT
           : by[0] == 'm' ? MG_MET_BY_GATEWAY
           : by[0] == 'u' ? MG_MET_BY_UPSTREAM
                          : MG_MET_BY_NONE;
}

/* MG_METRICS_OFF (bench/metrics.sh's baseline build): no increment at all,
 * arguments not evaluated; MG_MET(stmt) wraps the direct adds of callers. */
#ifdef MG_METRICS_OFF
#define MG_MET_ON 0
#define MG_MET(x) ((void)0)
#define mg_met_http(...) ((void)0)
#define mg_met_conn(...) ((void)0)
#define mg_met_ws_open(...) ((void)0)
#define mg_met_gen_use(...) ((void)0)
#else
#define MG_MET_ON 1
#define MG_MET(x) ((void)(x))
static inline void mg_met_http(int name, int method_class, int status, double secs, uint64_t in,
                               uint64_t out) {
    /* the status class; s * 41 >> 12 is s / 100 over [100, 600) */
    int sc = (unsigned)status - 100u < 500u ? status * 41 >> 12 : 0;
    mg_met_rec_t *n = &mg_met->n[name];
    n->http_bytes[0] += in;
    n->http_bytes[1] += out;
    mg_met_hist(&n->http_dur, secs);
    n->http_req[method_class][sc]++;
}

static inline void mg_met_conn(int lidx, int tls, int delta) {
    if (lidx >= 0 && lidx < MG_MET_LISTENERS)
        mg_met->conns[lidx][tls != 0] += delta;
}

/* a WebSocket (or tunnel) opened (+1) or closed (-1) on route name, mode,
 * generation gen. Sixteen generations at once at most: one that finds its
 * ring entry held by another id is counted with it. */
static inline void mg_met_ws_open(int name, int mode, unsigned gen, int delta) {
    unsigned i = gen % MG_MET_GENS;
    if (mg_met->ws_gen[i] == 0)
        mg_met->ws_gen_id[i] = gen;
    mg_met->ws_gen[i] += delta;
    mg_met->n[name].ws_open[mode] += delta;
    mg_met->n[name].ws_rgen[mode][i] += delta;
}

/* conf/gen.c: generation gen (loaded at) has in_use references of
 * requests and sockets in this worker */
static inline void mg_met_gen_use(unsigned gen, double at, int64_t in_use) {
    unsigned i = gen % MG_MET_GENS;
    if (mg_met->gen_use_id[i] != gen) {
        if (mg_met->gen_use[i] != 0 || in_use == 0)
            return; /* the entry is another live generation's */
        mg_met->gen_use_id[i] = gen;
        mg_met->gen_at[i] = at;
    }
    mg_met->gen_use[i] = in_use;
}

#endif

#endif
