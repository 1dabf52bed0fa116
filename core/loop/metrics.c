/*
 * metrics.c -- the shared counters and their Prometheus text (metrics.h).
 *
 * Layout: one anonymous MAP_SHARED region made by the master before the
 * first fork: a header (the interned names, the listeners' labels, the
 * master's own values) and then one mg_met_slot_t per worker slot. Names
 * are interned with a compare-and-swap per entry (0 free, 1 being written,
 * 2 ready), at a route's or upstream's first use in a worker, so two
 * workers interning the same new route at once agree on one index.
 */
#include "loop/metrics.h"

#include "base/base.h"

#include <dirent.h>
#include <errno.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct {
    uint32_t state; /* 0 free, 1 being written, 2 ready */
    uint32_t kind;  /* MG_MET_K_* bits */
    char name[MG_MET_NAME_LEN];
} mg_met_entry_t;

typedef struct {
    mg_met_entry_t names[MG_MET_NAMES];
    char listeners[MG_MET_LISTENERS][80];
    int nlisteners;
    int nslots;
    int32_t master_pid;
    uint32_t gen;
    uint64_t reloads[2];
    uint64_t restarted;
    double last_reload; /* time of the last successful reload (or the start) */
} mg_met_hdr_t;

static mg_met_hdr_t mg_met_hdr0;
static mg_met_slot_t mg_met_slot0;
static mg_met_hdr_t *mg_met_h = &mg_met_hdr0;
static mg_met_slot_t *mg_met_slots = &mg_met_slot0;
mg_met_slot_t *mg_met = &mg_met_slot0;

static mg_metrics_extra_fn mg_met_extra[8];
static int mg_met_nextra;

static const double mg_met_bounds[MG_MET_BUCKETS - 1] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const char *const mg_met_bound_str[MG_MET_BUCKETS] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",  "0.5",    "1",     "2.5",  "5",     "10",   "+Inf"};
static const char *const mg_met_methods[MG_MET_NMETHOD] = {"GET",    "HEAD",  "POST",    "PUT",
                                                           "DELETE", "PATCH", "OPTIONS", "other"};
static const char *const mg_met_status[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
static const char *const mg_met_errs[MG_MET_NERR] = {"connect", "timeout", "bad_response"};
static const char *const mg_met_modes[MG_MET_NMODE] = {"handler", "tunnel", "relay"};
static const char *const mg_met_dirs[2] = {"in", "out"};
static const char *const mg_met_sides[MG_MET_NSIDE] = {"client", "gateway", "upstream", "none"};
/* close codes by index (mg_met_ws_code); the last two are ranges */
static const int mg_met_codes[MG_MET_CODES - 2] = {1000, 1001, 1002, 1003, 1005, 1006, 1007,
                                                   1008, 1009, 1010, 1011, 1012, 1013, 1014};
static const char *const mg_met_code_str[MG_MET_CODES] = {
    "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008",
    "1009", "1010", "1011", "1012", "1013", "1014", "4xxx", "other"};

int mg_met_bucket(double secs) {
    int i = 0;
    while (i < MG_MET_BUCKETS - 1 && secs > mg_met_bounds[i])
        i++;
    return i;
}

int mg_met_method_class(int m) {
    switch (m) {
    case HTTP_GET: return MG_MET_M_GET;
    case HTTP_HEAD: return MG_MET_M_HEAD;
    case HTTP_POST: return MG_MET_M_POST;
    case HTTP_PUT: return MG_MET_M_PUT;
    case HTTP_DELETE: return MG_MET_M_DELETE;
    case HTTP_PATCH: return MG_MET_M_PATCH;
    case HTTP_OPTIONS: return MG_MET_M_OPTIONS;
    default: return MG_MET_M_OTHER;
    }
}

int mg_met_ws_code(int code) {
    for (int i = 0; i < MG_MET_CODES - 2; i++)
        if (mg_met_codes[i] == code)
            return i;
    return code >= 4000 && code <= 4999 ? MG_MET_CODES - 2 : MG_MET_CODES - 1;
}

static void mg_met_names_seed(mg_met_hdr_t *h) {
    snprintf(h->names[MG_MET_OTHER].name, MG_MET_NAME_LEN, "(other)");
    snprintf(h->names[MG_MET_NONE].name, MG_MET_NAME_LEN, "(none)");
    h->names[MG_MET_OTHER].state = h->names[MG_MET_NONE].state = 2;
}

int mg_metrics_init(int nslots, const char *const *listeners, int nlisteners) {
    size_t hsz = (sizeof(mg_met_hdr_t) + 4095) & ~(size_t)4095, sz;
    char *mem;
    if (nslots < 1)
        nslots = 1;
    sz = hsz + (size_t)nslots * sizeof(mg_met_slot_t);
    mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return MG_ERR;
    mg_met_h = (mg_met_hdr_t *)mem;
    /* names interned before this (none today) carry over */
    memcpy(mg_met_h->names, mg_met_hdr0.names, sizeof(mg_met_hdr0.names));
    mg_met_names_seed(mg_met_h);
    mg_met_slots = (mg_met_slot_t *)(mem + hsz);
    mg_met_h->nslots = nslots;
    mg_met_h->master_pid = (int32_t)getpid();
    mg_met_h->nlisteners = nlisteners < MG_MET_LISTENERS ? nlisteners : MG_MET_LISTENERS;
    for (int i = 0; i < mg_met_h->nlisteners; i++)
        snprintf(mg_met_h->listeners[i], sizeof(mg_met_h->listeners[i]), "%s", listeners[i]);
    mg_met = &mg_met_slot0; /* the master counts nothing of its own */
    return MG_OK;
}

void mg_metrics_slot_reset(int slot) {
    mg_met_slot_t *s;
    if (slot < 0 || slot >= mg_met_h->nslots)
        return;
    s = &mg_met_slots[slot];
    memset(&s->conns, 0, sizeof(*s) - offsetof(mg_met_slot_t, conns));
}

void mg_metrics_attach(int slot, int pid) {
    if (slot < 0 || slot >= mg_met_h->nslots)
        return;
    mg_metrics_slot_reset(slot);
    mg_met = &mg_met_slots[slot];
    mg_met->pid = pid;
}

void mg_metrics_reload(int result) { mg_met_h->reloads[result == MG_MET_RELOAD_OK ? 0 : 1]++; }

void mg_metrics_generation(unsigned gen, double when) {
    mg_met_h->gen = gen;
    mg_met_h->last_reload = when;
}

void mg_metrics_worker_restarted(void) { mg_met_h->restarted++; }

int mg_met_name(const char *name, int kind) {
    mg_met_hdr_t *h = mg_met_h;
    char key[MG_MET_NAME_LEN];
    if (h->names[MG_MET_NONE].state != 2)
        mg_met_names_seed(h);
    snprintf(key, sizeof(key), "%s", name ? name : "");
    for (int i = 2; i < MG_MET_NAMES; i++) {
        mg_met_entry_t *e = &h->names[i];
        uint32_t st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);
        if (st == 0) {
            uint32_t zero = 0;
            if (__atomic_compare_exchange_n(&e->state, &zero, 1, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                memcpy(e->name, key, sizeof(key));
                __atomic_or_fetch(&e->kind, (uint32_t)kind, __ATOMIC_RELAXED);
                __atomic_store_n(&e->state, 2, __ATOMIC_RELEASE);
                return i;
            }
            st = zero;
        }
        /* another worker is writing this entry: a memcpy away (bounded wait) */
        for (long spin = 0; st == 1 && spin < 100000000L; spin++)
            st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);
        if (st == 2 && strcmp(e->name, key) == 0) {
            if ((__atomic_load_n(&e->kind, __ATOMIC_RELAXED) & (uint32_t)kind) != (uint32_t)kind)
                __atomic_or_fetch(&e->kind, (uint32_t)kind, __ATOMIC_RELAXED);
            return i;
        }
    }
    return MG_MET_OTHER;
}

void mg_metrics_add_extra(mg_metrics_extra_fn fn) {
    for (int i = 0; i < mg_met_nextra; i++)
        if (mg_met_extra[i] == fn)
            return;
    if (mg_met_nextra < 8)
        mg_met_extra[mg_met_nextra++] = fn;
}

/* ---- rendering ---- */

/* a label value, escaped as the text format wants (\\, \", \n) */
static void mg_met_esc(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            out[o++] = '\\';
            out[o++] = *s;
        } else if (*s == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else
            out[o++] = *s;
    }
    out[o] = '\0';
}

static void mg_met_head(struct evbuffer *out, const char *name, const char *type,
                        const char *help) {
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* names of kind k that are ready, escaped, in idx order */
typedef struct {
    int n;
    int idx[MG_MET_NAMES];
    char esc[MG_MET_NAMES][2 * MG_MET_NAME_LEN];
} mg_met_names_t;

static mg_met_names_t mg_met_nm;

static void mg_met_collect(int kind) {
    mg_met_nm.n = 0;
    for (int i = 0; i < MG_MET_NAMES; i++) {
        mg_met_entry_t *e = &mg_met_h->names[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != 2)
            continue;
        if (i > MG_MET_NONE && !(e->kind & (uint32_t)kind))
            continue;
        if (i == MG_MET_NONE && kind != MG_MET_K_ROUTE)
            continue;
        mg_met_nm.idx[mg_met_nm.n] = i;
        mg_met_esc(mg_met_nm.esc[mg_met_nm.n], sizeof(mg_met_nm.esc[0]), e->name);
        mg_met_nm.n++;
    }
}

#define MG_MET_SUM(expr)                                                                           \
    ({                                                                                             \
        uint64_t sum_ = 0;                                                                         \
        for (int s_ = 0; s_ < mg_met_h->nslots; s_++) {                                            \
            const mg_met_slot_t *S = &mg_met_slots[s_];                                            \
            sum_ += (uint64_t)(expr);                                                              \
        }                                                                                          \
        sum_;                                                                                      \
    })

static void mg_met_hist_out(struct evbuffer *out, const char *fam, const char *lab, size_t off,
                            int i) {
    uint64_t cum = 0, sum_us = 0;
    for (int b = 0; b < MG_MET_BUCKETS; b++) {
        for (int s = 0; s < mg_met_h->nslots; s++)
            cum += ((const mg_met_hist_t *)((const char *)&mg_met_slots[s] + off))[i].b[b];
        evbuffer_add_printf(out, "%s_bucket{%s,le=\"%s\"} %llu\n", fam, lab, mg_met_bound_str[b],
                            (unsigned long long)cum);
    }
    for (int s = 0; s < mg_met_h->nslots; s++)
        sum_us += ((const mg_met_hist_t *)((const char *)&mg_met_slots[s] + off))[i].sum_us;
    evbuffer_add_printf(out, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", fam, lab, sum_us / 1e6, fam,
                        lab, (unsigned long long)cum);
}

/* a server name is "upstream|host:port" */
static void mg_met_server_labels(char *out, size_t cap, const char *esc) {
    const char *bar = strchr(esc, '|');
    if (bar)
        snprintf(out, cap, "upstream=\"%.*s\",server=\"%s\"", (int)(bar - esc), esc, bar + 1);
    else
        snprintf(out, cap, "upstream=\"\",server=\"%s\"", esc);
}

static void mg_met_render_http(struct evbuffer *out) {
    char lab[256];
    mg_met_collect(MG_MET_K_ROUTE);
    mg_met_head(out, "moongate_http_requests_total", "counter",
                "HTTP requests answered, by route, method and status class.");
    for (int k = 0; k < mg_met_nm.n; k++) {
        int i = mg_met_nm.idx[k];
        for (int m = 0; m < MG_MET_NMETHOD; m++)
            for (int c = 0; c < 6; c++) {
                uint64_t v = MG_MET_SUM(S->http_req[i][m][c]);
                if (v)
                    evbuffer_add_printf(out,
                                        "moongate_http_requests_total{route=\"%s\",method=\"%s\","
                                        "status=\"%s\"} %llu\n",
                                        mg_met_nm.esc[k], mg_met_methods[m], mg_met_status[c],
                                        (unsigned long long)v);
            }
    }
    mg_met_head(out, "moongate_http_request_duration_seconds", "histogram",
                "Time from the request's first byte to its response's end, by route.");
    for (int k = 0; k < mg_met_nm.n; k++) {
        snprintf(lab, sizeof(lab), "route=\"%s\"", mg_met_nm.esc[k]);
        mg_met_hist_out(out, "moongate_http_request_duration_seconds", lab,
                        offsetof(mg_met_slot_t, http_dur), mg_met_nm.idx[k]);
    }
    mg_met_head(out, "moongate_http_received_bytes_total", "counter",
                "Request body bytes received, by route.");
    for (int k = 0; k < mg_met_nm.n; k++)
        evbuffer_add_printf(out, "moongate_http_received_bytes_total{route=\"%s\"} %llu\n",
                            mg_met_nm.esc[k],
                            (unsigned long long)MG_MET_SUM(S->http_bytes[mg_met_nm.idx[k]][0]));
    mg_met_head(out, "moongate_http_sent_bytes_total", "counter",
                "Response body bytes sent, by route.");
    for (int k = 0; k < mg_met_nm.n; k++)
        evbuffer_add_printf(out, "moongate_http_sent_bytes_total{route=\"%s\"} %llu\n",
                            mg_met_nm.esc[k],
                            (unsigned long long)MG_MET_SUM(S->http_bytes[mg_met_nm.idx[k]][1]));
    mg_met_head(out, "moongate_http_open_connections", "gauge",
                "Client connections open, by listener and protocol.");
    for (int l = 0; l < mg_met_h->nlisteners; l++) {
        char esc[160];
        mg_met_esc(esc, sizeof(esc), mg_met_h->listeners[l]);
        for (int t = 0; t < 2; t++)
            evbuffer_add_printf(out,
                                "moongate_http_open_connections{listener=\"%s\",protocol=\"%s\"} "
                                "%lld\n",
                                esc, t ? "https" : "http",
                                (long long)(int64_t)MG_MET_SUM(S->conns[l][t]));
    }
}

static void mg_met_render_upstream(struct evbuffer *out) {
    char lab[256];
    mg_met_collect(MG_MET_K_UPSTREAM);
    mg_met_head(out, "moongate_upstream_requests_total", "counter",
                "Requests sent to an upstream (each try counts).");
    for (int k = 0; k < mg_met_nm.n; k++)
        evbuffer_add_printf(out, "moongate_upstream_requests_total{upstream=\"%s\"} %llu\n",
                            mg_met_nm.esc[k],
                            (unsigned long long)MG_MET_SUM(S->up_req[mg_met_nm.idx[k]]));
    mg_met_head(out, "moongate_upstream_errors_total", "counter",
                "Failed upstream exchanges, by kind (connect, timeout, bad_response).");
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int e = 0; e < MG_MET_NERR; e++)
            evbuffer_add_printf(
                out, "moongate_upstream_errors_total{upstream=\"%s\",kind=\"%s\"} %llu\n",
                mg_met_nm.esc[k], mg_met_errs[e],
                (unsigned long long)MG_MET_SUM(S->up_err[mg_met_nm.idx[k]][e]));
    mg_met_head(out, "moongate_upstream_response_time_seconds", "histogram",
                "Time from sending the request to the upstream's complete response.");
    for (int k = 0; k < mg_met_nm.n; k++) {
        snprintf(lab, sizeof(lab), "upstream=\"%s\"", mg_met_nm.esc[k]);
        mg_met_hist_out(out, "moongate_upstream_response_time_seconds", lab,
                        offsetof(mg_met_slot_t, up_time), mg_met_nm.idx[k]);
    }
    mg_met_head(out, "moongate_upstream_pool_connections", "gauge",
                "Upstream connections open (busy and idle), by upstream.");
    for (int k = 0; k < mg_met_nm.n; k++)
        evbuffer_add_printf(out, "moongate_upstream_pool_connections{upstream=\"%s\"} %lld\n",
                            mg_met_nm.esc[k],
                            (long long)(int64_t)MG_MET_SUM(S->up_pool[mg_met_nm.idx[k]]));
    mg_met_head(out, "moongate_upstream_pool_idle_connections", "gauge",
                "Idle keep-alive connections in the pools, by upstream.");
    for (int k = 0; k < mg_met_nm.n; k++)
        evbuffer_add_printf(out, "moongate_upstream_pool_idle_connections{upstream=\"%s\"} %lld\n",
                            mg_met_nm.esc[k],
                            (long long)(int64_t)MG_MET_SUM(S->up_idle[mg_met_nm.idx[k]]));
    mg_met_collect(MG_MET_K_SERVER);
    mg_met_head(out, "moongate_upstream_server_up", "gauge",
                "1 while a server gets traffic, 0 while some worker has it marked down.");
    for (int k = 0; k < mg_met_nm.n; k++) {
        int i = mg_met_nm.idx[k], down = 0;
        for (int s = 0; s < mg_met_h->nslots; s++)
            down |= mg_met_slots[s].pid > 0 && mg_met_slots[s].health[i] == 2;
        mg_met_server_labels(lab, sizeof(lab), mg_met_nm.esc[k]);
        evbuffer_add_printf(out, "moongate_upstream_server_up{%s} %d\n", lab, !down);
    }
    mg_met_head(out, "moongate_upstream_server_ejections_total", "counter",
                "Times a server was marked down after failures.");
    for (int k = 0; k < mg_met_nm.n; k++) {
        mg_met_server_labels(lab, sizeof(lab), mg_met_nm.esc[k]);
        evbuffer_add_printf(out, "moongate_upstream_server_ejections_total{%s} %llu\n", lab,
                            (unsigned long long)MG_MET_SUM(S->up_eject[mg_met_nm.idx[k]]));
    }
}

static void mg_met_render_route_counter(struct evbuffer *out, const char *fam, const char *help,
                                        size_t off) {
    mg_met_head(out, fam, "counter", help);
    for (int k = 0; k < mg_met_nm.n; k++) {
        uint64_t v = 0;
        for (int s = 0; s < mg_met_h->nslots; s++)
            v += ((const uint64_t *)((const char *)&mg_met_slots[s] + off))[mg_met_nm.idx[k]];
        evbuffer_add_printf(out, "%s{route=\"%s\"} %llu\n", fam, mg_met_nm.esc[k],
                            (unsigned long long)v);
    }
}

static void mg_met_render_ws(struct evbuffer *out) {
    mg_met_collect(MG_MET_K_ROUTE);
    mg_met_head(out, "moongate_ws_open_sockets", "gauge",
                "WebSocket sockets open, by route and mode (handler, tunnel, relay).");
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int m = 0; m < MG_MET_NMODE; m++) {
            int64_t v = (int64_t)MG_MET_SUM(S->ws_open[mg_met_nm.idx[k]][m]);
            if (v)
                evbuffer_add_printf(out,
                                    "moongate_ws_open_sockets{route=\"%s\",mode=\"%s\"} %lld\n",
                                    mg_met_nm.esc[k], mg_met_modes[m], (long long)v);
        }
    mg_met_head(out, "moongate_ws_open_sockets_by_generation", "gauge",
                "WebSocket sockets open, by the generation (reload) they were accepted on.");
    {
        uint32_t ids[MG_MET_GENS * 4]; /* distinct generations shown (more: left out) */
        int64_t vals[MG_MET_GENS * 4];
        int n = 0;
        for (int s = 0; s < mg_met_h->nslots; s++)
            for (int g = 0; g < MG_MET_GENS; g++) {
                int j;
                if (mg_met_slots[s].ws_gen[g] == 0)
                    continue;
                for (j = 0; j < n && ids[j] != mg_met_slots[s].ws_gen_id[g]; j++)
                    ;
                if (j == n && n == MG_MET_GENS * 4)
                    continue;
                if (j == n) {
                    ids[n] = mg_met_slots[s].ws_gen_id[g];
                    vals[n++] = 0;
                }
                vals[j] += mg_met_slots[s].ws_gen[g];
            }
        for (int j = 0; j < n; j++)
            evbuffer_add_printf(out,
                                "moongate_ws_open_sockets_by_generation{generation=\"%u\"} %lld\n",
                                ids[j], (long long)vals[j]);
    }
    mg_met_head(out, "moongate_ws_messages_total", "counter",
                "WebSocket messages, by route and direction (in: from the client).");
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int d = 0; d < 2; d++)
            evbuffer_add_printf(out,
                                "moongate_ws_messages_total{route=\"%s\",direction=\"%s\"} %llu\n",
                                mg_met_nm.esc[k], mg_met_dirs[d],
                                (unsigned long long)MG_MET_SUM(S->ws_msgs[mg_met_nm.idx[k]][d]));
    mg_met_head(out, "moongate_ws_message_bytes_total", "counter",
                "WebSocket message payload bytes, by route and direction.");
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int d = 0; d < 2; d++)
            evbuffer_add_printf(
                out, "moongate_ws_message_bytes_total{route=\"%s\",direction=\"%s\"} %llu\n",
                mg_met_nm.esc[k], mg_met_dirs[d],
                (unsigned long long)MG_MET_SUM(S->ws_bytes[mg_met_nm.idx[k]][d]));
    mg_met_head(out, "moongate_ws_closes_total", "counter",
                "WebSocket sockets closed, by route, close code and who closed.");
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int c = 0; c < MG_MET_CODES; c++)
            for (int sd = 0; sd < MG_MET_NSIDE; sd++) {
                uint64_t v = MG_MET_SUM(S->ws_close[mg_met_nm.idx[k]][c][sd]);
                if (v)
                    evbuffer_add_printf(out,
                                        "moongate_ws_closes_total{route=\"%s\",code=\"%s\","
                                        "side=\"%s\"} %llu\n",
                                        mg_met_nm.esc[k], mg_met_code_str[c], mg_met_sides[sd],
                                        (unsigned long long)v);
            }
    mg_met_render_route_counter(out, "moongate_ws_pings_sent_total",
                                "Heartbeat pings sent, by route.",
                                offsetof(mg_met_slot_t, ws_pings));
    mg_met_render_route_counter(out, "moongate_ws_dead_peers_total",
                                "Sockets dropped because the peer stopped answering pings.",
                                offsetof(mg_met_slot_t, ws_dead));
    mg_met_render_route_counter(out, "moongate_ws_drained_total",
                                "Sockets closed with 1012 when a reload or stop drained them.",
                                offsetof(mg_met_slot_t, ws_drained));
    mg_met_render_route_counter(out, "moongate_ws_send_overflows_total",
                                "Sockets closed because their send buffer overflowed.",
                                offsetof(mg_met_slot_t, ws_overflow));
}

/* descriptors of one process (/proc/PID/fd), -1 if unreadable */
static long mg_met_fds(int pid) {
    char path[64];
    long n = 0;
    DIR *d;
    struct dirent *e;
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    d = opendir(path);
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void mg_met_render_process(struct evbuffer *out) {
    struct rlimit rl;
    long fds = 0, n;
    int workers = 0;
    mg_met_head(out, "moongate_reloads_total", "counter", "Reloads, by result (ok, failed).");
    evbuffer_add_printf(out, "moongate_reloads_total{result=\"ok\"} %llu\n",
                        (unsigned long long)mg_met_h->reloads[0]);
    evbuffer_add_printf(out, "moongate_reloads_total{result=\"failed\"} %llu\n",
                        (unsigned long long)mg_met_h->reloads[1]);
    mg_met_head(out, "moongate_generation", "gauge", "The generation (conf load) serving.");
    evbuffer_add_printf(out, "moongate_generation %u\n", mg_met_h->gen);
    mg_met_head(out, "moongate_last_reload_success_timestamp_seconds", "gauge",
                "Unix time of the last successful reload (or of the start).");
    evbuffer_add_printf(out, "moongate_last_reload_success_timestamp_seconds %.3f\n",
                        mg_met_h->last_reload);
    mg_met_head(out, "moongate_workers_restarted_total", "counter",
                "Workers that died and were restarted.");
    evbuffer_add_printf(out, "moongate_workers_restarted_total %llu\n",
                        (unsigned long long)mg_met_h->restarted);
    if (mg_met_h->master_pid > 0 && (n = mg_met_fds(mg_met_h->master_pid)) > 0)
        fds += n;
    for (int s = 0; s < mg_met_h->nslots; s++)
        if (mg_met_slots[s].pid > 0 && (n = mg_met_fds(mg_met_slots[s].pid)) > 0) {
            fds += n;
            workers++;
        }
    mg_met_head(out, "moongate_workers", "gauge", "Worker processes running.");
    evbuffer_add_printf(out, "moongate_workers %d\n", workers);
    mg_met_head(out, "moongate_process_open_fds", "gauge",
                "Descriptors open in the master and all workers.");
    evbuffer_add_printf(out, "moongate_process_open_fds %ld\n", fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        mg_met_head(out, "moongate_process_max_fds", "gauge",
                    "The descriptor limit of each process (RLIMIT_NOFILE).");
        evbuffer_add_printf(out, "moongate_process_max_fds %llu\n",
                            (unsigned long long)rl.rlim_cur);
    }
}

void mg_metrics_render(struct evbuffer *out) {
    mg_met_render_http(out);
    mg_met_render_upstream(out);
    mg_met_render_ws(out);
    mg_met_render_process(out);
    for (int i = 0; i < mg_met_nextra; i++)
        mg_met_extra[i](out);
}
