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

const double mg_met_bounds[MG_MET_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,  0.5,    1,     2.5,  5,     10};
/* mg_met_hist's tables, by lg = floor(log2(us)): the bounds below 2^lg us
 * and the one in [2^lg, 2^(lg+1)) us (1 ms: lg 9; 10 s: lg 23), checked
 * against mg_met_bucket by spec/c/test_metrics.c */
#define MG_MET_INF (1.0 / 0.0)
const uint8_t mg_met_lg_base[64] = {
    [10] = 1, [11] = 1, [12] = 2,  [13] = 3,  [14] = 4,  [15] = 5,  [16] = 6,        [17] = 7,
    [18] = 8, [19] = 9, [20] = 10, [21] = 10, [22] = 11, [23] = 12, [24 ... 63] = 13};
const double mg_met_lg_bound[64] = {[0 ... 8] = MG_MET_INF,
                                    [9] = 0.001,
                                    [10] = MG_MET_INF,
                                    [11] = 0.0025,
                                    [12] = 0.005,
                                    [13] = 0.01,
                                    [14] = 0.025,
                                    [15] = 0.05,
                                    [16] = 0.1,
                                    [17] = 0.25,
                                    [18] = 0.5,
                                    [19] = 1,
                                    [20] = MG_MET_INF,
                                    [21] = 2.5,
                                    [22] = 5,
                                    [23] = 10,
                                    [24 ... 63] = MG_MET_INF};
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

/* each class xor MG_MET_M_OTHER, so that the methods not named are 0 */
const uint8_t mg_met_mclass[MG_MET_MCLASS_N] = {
    [HTTP_GET] = MG_MET_M_GET ^ MG_MET_M_OTHER,
    [HTTP_HEAD] = MG_MET_M_HEAD ^ MG_MET_M_OTHER,
    [HTTP_POST] = MG_MET_M_POST ^ MG_MET_M_OTHER,
    [HTTP_PUT] = MG_MET_M_PUT ^ MG_MET_M_OTHER,
    [HTTP_DELETE] = MG_MET_M_DELETE ^ MG_MET_M_OTHER,
    [HTTP_PATCH] = MG_MET_M_PATCH ^ MG_MET_M_OTHER,
    [HTTP_OPTIONS] = MG_MET_M_OPTIONS ^ MG_MET_M_OTHER,
};

int mg_met_ws_code(int code) {
    for (int i = 0; i < MG_MET_CODES - 2; i++)
        if (mg_met_codes[i] == code)
            return i;
    return code >= 4000 && code <= 4999 ? MG_MET_CODES - 2 : MG_MET_CODES - 1;
}

static void mg_met_names_seed(mg_met_hdr_t *h) {
    snprintf(h->names[MG_MET_OTHER].name, MG_MET_NAME_LEN, "(other)");
    snprintf(h->names[MG_MET_NONE].name, MG_MET_NAME_LEN, "(none)");
    snprintf(h->names[MG_MET_ADMIN].name, MG_MET_NAME_LEN, "(admin)");
    h->names[MG_MET_OTHER].state = h->names[MG_MET_NONE].state = 2;
    h->names[MG_MET_ADMIN].state = 2;
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
    memset(s, 0, offsetof(mg_met_slot_t, n)); /* pid, conns .. health */
    for (int i = 0; i < MG_MET_NAMES; i++) {
        mg_met_rec_t *r = &s->n[i];
        r->up_pool = r->up_idle = 0;
        memset(r->ws_open, 0, sizeof(r->ws_open));
        memset(r->ws_rgen, 0, sizeof(r->ws_rgen));
    }
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
    for (int i = MG_MET_ADMIN + 1; i < MG_MET_NAMES; i++) {
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
        if (i > MG_MET_ADMIN && !(e->kind & (uint32_t)kind))
            continue;
        if ((i == MG_MET_NONE || i == MG_MET_ADMIN) && kind != MG_MET_K_ROUTE)
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

/* the slots' sum of the 64-bit cell at byte offset off of a slot (a gauge
 * is int64_t: its two's complement adds up the same) */
static uint64_t mg_met_sum_at(size_t off) {
    uint64_t v = 0;
    for (int s = 0; s < mg_met_h->nslots; s++)
        v += *(const uint64_t *)((const char *)&mg_met_slots[s] + off);
    return v;
}

/* a label beside the name's, with its values by cell index (n 1 and lab
 * NULL: none) */
typedef struct {
    const char *lab;
    const char *const *vals;
    int n;
} mg_met_dim_t;

#define MG_MET_NODIM ((mg_met_dim_t){NULL, NULL, 1})

/* One series per collected name and per value of up to two more labels:
 * fam{lab="name",a="..",b=".."} the slots' sum of the 64-bit cell at
 * base + name * stride + (ia * b.n + ib) * 8. flags: MG_MET_F_SIGNED (a
 * gauge), MG_MET_F_NONZERO (leave zeros out). */
enum { MG_MET_F_SIGNED = 1, MG_MET_F_NONZERO = 2 };
static void mg_met_rows(struct evbuffer *out, const char *fam, const char *lab, size_t base,
                        size_t stride, mg_met_dim_t a, mg_met_dim_t b, int flags) {
    for (int k = 0; k < mg_met_nm.n; k++)
        for (int ia = 0; ia < a.n; ia++)
            for (int ib = 0; ib < b.n; ib++) {
                uint64_t v = mg_met_sum_at(base + (size_t)mg_met_nm.idx[k] * stride +
                                           (size_t)(ia * b.n + ib) * sizeof(uint64_t));
                if (v == 0 && (flags & MG_MET_F_NONZERO))
                    continue;
                evbuffer_add_printf(out, "%s{%s=\"%s\"", fam, lab, mg_met_nm.esc[k]);
                if (a.lab)
                    evbuffer_add_printf(out, ",%s=\"%s\"", a.lab, a.vals[ia]);
                if (b.lab)
                    evbuffer_add_printf(out, ",%s=\"%s\"", b.lab, b.vals[ib]);
                if (flags & MG_MET_F_SIGNED)
                    evbuffer_add_printf(out, "} %lld\n", (long long)(int64_t)v);
                else
                    evbuffer_add_printf(out, "} %llu\n", (unsigned long long)v);
            }
}

/* a family's cells of name 0 (field of mg_met_rec_t), one record apart */
#define MG_MET_FIELD_OFF(field) offsetof(mg_met_slot_t, n[0].field)
#define MG_MET_STRIDE sizeof(mg_met_rec_t)
#define MG_MET_FIELD_N(field) ((int)(sizeof(((mg_met_rec_t *)0)->field) / sizeof(uint64_t)))

/* a family: its header, then one series per name (field: one cell) */
#define MG_MET_FAM(out, fam, type, help, lab, field, flags)                                        \
    do {                                                                                           \
        mg_met_head(out, fam, type, help);                                                         \
        mg_met_rows(out, fam, lab, MG_MET_FIELD_OFF(field), MG_MET_STRIDE, MG_MET_NODIM,           \
                    MG_MET_NODIM, flags);                                                          \
    } while (0)
/* by name and one more label (field is [n], vals n strings) */
#define MG_MET_FAM2(out, fam, type, help, lab, field, alab, avals, flags)                          \
    do {                                                                                           \
        mg_met_head(out, fam, type, help);                                                         \
        mg_met_rows(out, fam, lab, MG_MET_FIELD_OFF(field), MG_MET_STRIDE,                         \
                    (mg_met_dim_t){alab, avals, MG_MET_FIELD_N(field)}, MG_MET_NODIM, flags);      \
    } while (0)
/* by name and two more labels (field is [an][bn]) */
#define MG_MET_FAM3(out, fam, type, help, lab, field, alab, avals, an, blab, bvals, flags)         \
    do {                                                                                           \
        mg_met_head(out, fam, type, help);                                                         \
        mg_met_rows(out, fam, lab, MG_MET_FIELD_OFF(field), MG_MET_STRIDE,                         \
                    (mg_met_dim_t){alab, avals, an},                                               \
                    (mg_met_dim_t){blab, bvals, MG_MET_FIELD_N(field) / (an)}, flags);             \
    } while (0)

static void mg_met_hist_out(struct evbuffer *out, const char *fam, const char *lab, size_t off,
                            int i) {
    uint64_t cum = 0;
    size_t at = off + (size_t)i * MG_MET_STRIDE;
    for (int b = 0; b < MG_MET_BUCKETS; b++) {
        cum += mg_met_sum_at(at + offsetof(mg_met_hist_t, b) + (size_t)b * sizeof(uint64_t));
        evbuffer_add_printf(out, "%s_bucket{%s,le=\"%s\"} %llu\n", fam, lab, mg_met_bound_str[b],
                            (unsigned long long)cum);
    }
    evbuffer_add_printf(out, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", fam, lab,
                        mg_met_sum_at(at + offsetof(mg_met_hist_t, sum_us)) / 1e6, fam, lab,
                        (unsigned long long)cum);
}

/* a histogram family by name (off: name 0's mg_met_hist_t) */
static void mg_met_hist_fam(struct evbuffer *out, const char *fam, const char *help,
                            const char *lab, size_t off) {
    char l[2 * MG_MET_NAME_LEN + 32];
    mg_met_head(out, fam, "histogram", help);
    for (int k = 0; k < mg_met_nm.n; k++) {
        snprintf(l, sizeof(l), "%s=\"%s\"", lab, mg_met_nm.esc[k]);
        mg_met_hist_out(out, fam, l, off, mg_met_nm.idx[k]);
    }
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
    mg_met_collect(MG_MET_K_ROUTE);
    MG_MET_FAM3(out, "moongate_http_requests_total", "counter",
                "HTTP requests answered, by route, method and status class.", "route", http_req,
                "method", mg_met_methods, MG_MET_NMETHOD, "status", mg_met_status,
                MG_MET_F_NONZERO);
    mg_met_hist_fam(out, "moongate_http_request_duration_seconds",
                    "Time from the request's first byte to its response's end, by route.", "route",
                    MG_MET_FIELD_OFF(http_dur));
    /* http_bytes[0] in, [1] out: a family each */
    mg_met_head(out, "moongate_http_received_bytes_total", "counter",
                "Request body bytes received, by route.");
    mg_met_rows(out, "moongate_http_received_bytes_total", "route", MG_MET_FIELD_OFF(http_bytes),
                MG_MET_STRIDE, MG_MET_NODIM, MG_MET_NODIM, 0);
    mg_met_head(out, "moongate_http_sent_bytes_total", "counter",
                "Response body bytes sent, by route.");
    mg_met_rows(out, "moongate_http_sent_bytes_total", "route",
                MG_MET_FIELD_OFF(http_bytes) + sizeof(uint64_t), MG_MET_STRIDE, MG_MET_NODIM,
                MG_MET_NODIM, 0);
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
    MG_MET_FAM(out, "moongate_upstream_requests_total", "counter",
               "Requests sent to an upstream (each try counts).", "upstream", up_req, 0);
    MG_MET_FAM2(out, "moongate_upstream_errors_total", "counter",
                "Failed upstream exchanges, by kind (connect, timeout, bad_response).", "upstream",
                up_err, "kind", mg_met_errs, 0);
    mg_met_hist_fam(out, "moongate_upstream_response_time_seconds",
                    "Time from sending the request to the upstream's complete response.",
                    "upstream", MG_MET_FIELD_OFF(up_time));
    MG_MET_FAM(out, "moongate_upstream_pool_connections", "gauge",
               "Upstream connections open (busy and idle), by upstream.", "upstream", up_pool,
               MG_MET_F_SIGNED);
    MG_MET_FAM(out, "moongate_upstream_pool_idle_connections", "gauge",
               "Idle keep-alive connections in the pools, by upstream.", "upstream", up_idle,
               MG_MET_F_SIGNED);
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
                            (unsigned long long)MG_MET_SUM(S->n[mg_met_nm.idx[k]].up_eject));
    }
}

/* the distinct generations of a per-slot ring (ids, and the values summed
 * over the slots): up to max */
static int mg_met_ring(size_t val_off, size_t id_off, unsigned *ids, int64_t *vals, int max) {
    int n = 0;
    for (int s = 0; s < mg_met_h->nslots; s++)
        for (int g = 0; g < MG_MET_GENS; g++) {
            const char *sl = (const char *)&mg_met_slots[s];
            int64_t v = ((const int64_t *)(sl + val_off))[g];
            unsigned id = ((const uint32_t *)(sl + id_off))[g];
            int j;
            if (v == 0)
                continue;
            for (j = 0; j < n && ids[j] != id; j++)
                ;
            if (j == n && n == max)
                continue;
            if (j == n) {
                ids[n] = id;
                vals[n++] = 0;
            }
            vals[j] += v;
        }
    return n;
}

#define MG_MET_RING_MAX (MG_MET_GENS * 4) /* distinct generations shown (more: left out) */

int mg_metrics_ws_rows(mg_met_ws_row_t *rows, int max) {
    int n = 0;
    for (int s = 0; s < mg_met_h->nslots; s++) {
        const mg_met_slot_t *S = &mg_met_slots[s];
        for (int i = 0; i < MG_MET_NAMES; i++) {
            if (!S->n[i].ws_open[0] && !S->n[i].ws_open[1] && !S->n[i].ws_open[2])
                continue;
            for (int m = 0; m < MG_MET_NMODE; m++)
                for (int g = 0; g < MG_MET_GENS; g++) {
                    int j;
                    if (S->n[i].ws_rgen[m][g] == 0)
                        continue;
                    for (j = 0; j < n; j++)
                        if (rows[j].name == i && rows[j].mode == m &&
                            rows[j].gen == S->ws_gen_id[g])
                            break;
                    if (j == n && n == max)
                        continue;
                    if (j == n)
                        rows[n++] = (mg_met_ws_row_t){i, m, S->ws_gen_id[g], 0};
                    rows[j].open += S->n[i].ws_rgen[m][g];
                }
        }
    }
    return n;
}

static void mg_met_render_ws(struct evbuffer *out) {
    unsigned ids[MG_MET_RING_MAX];
    int64_t vals[MG_MET_RING_MAX];
    static mg_met_ws_row_t rows[4 * MG_MET_NAMES];
    int n;
    mg_met_collect(MG_MET_K_ROUTE);
    MG_MET_FAM2(out, "moongate_ws_open_sockets", "gauge",
                "WebSocket sockets open, by route and mode (handler, tunnel, relay).", "route",
                ws_open, "mode", mg_met_modes, MG_MET_F_SIGNED | MG_MET_F_NONZERO);
    mg_met_head(out, "moongate_ws_open_sockets_by_generation", "gauge",
                "WebSocket sockets open, by the generation (reload) they were accepted on.");
    n = mg_met_ring(offsetof(mg_met_slot_t, ws_gen), offsetof(mg_met_slot_t, ws_gen_id), ids, vals,
                    MG_MET_RING_MAX);
    for (int j = 0; j < n; j++)
        evbuffer_add_printf(out, "moongate_ws_open_sockets_by_generation{generation=\"%u\"} %lld\n",
                            ids[j], (long long)vals[j]);
    mg_met_head(out, "moongate_websocket_open_sockets", "gauge",
                "WebSocket sockets open, by route, mode and generation.");
    n = mg_metrics_ws_rows(rows, (int)(sizeof(rows) / sizeof(rows[0])));
    for (int j = 0; j < n; j++) {
        char esc[2 * MG_MET_NAME_LEN];
        mg_met_esc(esc, sizeof(esc), mg_met_h->names[rows[j].name].name);
        evbuffer_add_printf(out,
                            "moongate_websocket_open_sockets{route=\"%s\",mode=\"%s\","
                            "generation=\"%u\"} %lld\n",
                            esc, mg_met_modes[rows[j].mode], rows[j].gen, (long long)rows[j].open);
    }
    MG_MET_FAM2(out, "moongate_ws_messages_total", "counter",
                "WebSocket messages, by route and direction (in: from the client).", "route",
                ws_msgs, "direction", mg_met_dirs, 0);
    MG_MET_FAM2(out, "moongate_ws_message_bytes_total", "counter",
                "WebSocket message payload bytes, by route and direction.", "route", ws_bytes,
                "direction", mg_met_dirs, 0);
    MG_MET_FAM3(out, "moongate_ws_closes_total", "counter",
                "WebSocket sockets closed, by route, close code and who closed.", "route", ws_close,
                "code", mg_met_code_str, MG_MET_CODES, "side", mg_met_sides, MG_MET_F_NONZERO);
    MG_MET_FAM(out, "moongate_ws_pings_sent_total", "counter", "Heartbeat pings sent, by route.",
               "route", ws_pings, 0);
    MG_MET_FAM(out, "moongate_ws_dead_peers_total", "counter",
               "Sockets dropped because the peer stopped answering pings.", "route", ws_dead, 0);
    MG_MET_FAM(out, "moongate_ws_drained_total", "counter",
               "Sockets closed with 1012 when a reload or stop drained them.", "route", ws_drained,
               0);
    MG_MET_FAM(out, "moongate_ws_send_overflows_total", "counter",
               "Sockets closed because their send buffer overflowed.", "route", ws_overflow, 0);
}

/* ---- readers (gateway/admin.c) ---- */

int mg_met_find(const char *name) {
    char key[MG_MET_NAME_LEN];
    snprintf(key, sizeof(key), "%s", name ? name : "");
    for (int i = 0; i < MG_MET_NAMES; i++) {
        mg_met_entry_t *e = &mg_met_h->names[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == 2 && strcmp(e->name, key) == 0)
            return i;
    }
    return -1;
}

const char *mg_met_name_str(int name) {
    return name >= 0 && name < MG_MET_NAMES ? mg_met_h->names[name].name : "";
}

uint64_t mg_metrics_http_requests(int name) {
    uint64_t v = 0;
    if (name < 0 || name >= MG_MET_NAMES)
        return 0;
    for (int m = 0; m < MG_MET_NMETHOD; m++)
        for (int c = 0; c < 6; c++)
            v += MG_MET_SUM(S->n[name].http_req[m][c]);
    return v;
}

void mg_metrics_upstream_sum(int name, mg_met_up_sum_t *o) {
    memset(o, 0, sizeof(*o));
    if (name < 0 || name >= MG_MET_NAMES)
        return;
    o->requests = MG_MET_SUM(S->n[name].up_req);
    for (int e = 0; e < MG_MET_NERR; e++)
        o->errors[e] = MG_MET_SUM(S->n[name].up_err[e]);
    o->pool = (int64_t)MG_MET_SUM(S->n[name].up_pool);
    o->idle = (int64_t)MG_MET_SUM(S->n[name].up_idle);
}

int mg_metrics_gen_rows(mg_met_gen_row_t *rows, int max) {
    unsigned ids[MG_MET_RING_MAX], wids[MG_MET_RING_MAX];
    int64_t vals[MG_MET_RING_MAX], wvals[MG_MET_RING_MAX];
    int n = mg_met_ring(offsetof(mg_met_slot_t, gen_use), offsetof(mg_met_slot_t, gen_use_id), ids,
                        vals, MG_MET_RING_MAX);
    int nw = mg_met_ring(offsetof(mg_met_slot_t, ws_gen), offsetof(mg_met_slot_t, ws_gen_id), wids,
                         wvals, MG_MET_RING_MAX);
    int out = 0;
    for (int j = 0; j < n && out < max; j++) {
        mg_met_gen_row_t *r = &rows[out++];
        r->id = ids[j];
        r->in_use = vals[j];
        r->ws = 0;
        r->loaded_at = 0;
        for (int w = 0; w < nw; w++)
            if (wids[w] == ids[j])
                r->ws = wvals[w];
        for (int s = 0; s < mg_met_h->nslots; s++) {
            unsigned g = ids[j] % MG_MET_GENS;
            if (mg_met_slots[s].gen_use_id[g] == ids[j] && mg_met_slots[s].gen_at[g] > 0)
                r->loaded_at = mg_met_slots[s].gen_at[g];
        }
    }
    return out;
}

unsigned mg_metrics_serving(void) { return mg_met_h->gen; }

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
