/*
 * admin.c -- the admin listener (admin.listen): answered here, before and
 * instead of routing, from a table of endpoints (method, path, whether it
 * needs the token, a function). The built-in ones: GET /healthz, /readyz
 * and /metrics answer without a token; GET /routes, /upstreams,
 * /generations, /websockets, /config and POST /reload need
 * `Authorization: Bearer <admin.token>`; the dashboard page (GET /) holds
 * no data and sends the token it is given with its own requests. Other parts register
 * theirs with mg_admin_register, once per worker at start. Counts are the
 * process family's, summed over every worker's slot of the metrics shm
 * (loop/metrics.c): /metrics, the hits of /routes, the requests, errors and
 * pools of /upstreams, the requests and sockets per generation of
 * /generations, the sockets of /websockets. What only a worker knows (a
 * server's health and idle connections, the refs of its own draining
 * generations, its socket count) is this worker's (the connection landed
 * on one) and says so; /reload is the master's.
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MG_ADMIN_MAX 48  /* endpoints */
#define MG_ADMIN_WAIT 16 /* POST /reload requests waiting for the master, per worker */

typedef struct {
    const char *method, *path;
    int needs_token;
    mg_admin_fn fn;
} mg_admin_ep_t;

static mg_admin_ep_t mg_admin_eps[MG_ADMIN_MAX];
static int mg_admin_neps;

int (*mg_admin_reload_hook)(unsigned seq);

/* the metrics engineer's renderer (loop/metrics.c), when linked in */

void mg_admin_register(const char *method, const char *path, int needs_token, mg_admin_fn fn) {
    for (int i = 0; i < mg_admin_neps; i++)
        if (strcmp(mg_admin_eps[i].method, method) == 0 &&
            strcmp(mg_admin_eps[i].path, path) == 0) {
            mg_admin_eps[i].needs_token = needs_token; /* a later one replaces it */
            mg_admin_eps[i].fn = fn;
            return;
        }
    if (mg_admin_neps == MG_ADMIN_MAX) {
        mg_error("admin: more than %d endpoints: %s %s not served", MG_ADMIN_MAX, method, path);
        return;
    }
    mg_admin_eps[mg_admin_neps++] = (mg_admin_ep_t){method, path, needs_token, fn};
}

void mg_admin_reply(mg_req_t *r, int status, const char *ctype, const char *body, size_t len) {
    char hdrs[160];
    int hl = snprintf(hdrs, sizeof(hdrs), "Content-Type: %s\r\nCache-Control: no-store\r\n", ctype);
    mg_resp_head(r, status, hdrs, (size_t)hl, (int64_t)len);
    mg_resp_body(r, body, len);
    r->resp_done = 1;
}

/* Sends b as the answer (and empties it). */
static void mg_admin_reply_buf(mg_req_t *r, int status, const char *ctype, struct evbuffer *b) {
    size_t n = evbuffer_get_length(b);
    const char *p = n ? (const char *)evbuffer_pullup(b, -1) : "";
    mg_admin_reply(r, status, ctype, p ? p : "", p ? n : 0);
    evbuffer_drain(b, n);
}

static void mg_admin_json(mg_req_t *r, int status, struct evbuffer *b) {
    mg_admin_reply_buf(r, status, "application/json", b);
}

/* A JSON string: escaped (mg_json_escape: ASCII), cut at 1790 bytes. */
static void mg_admin_str(struct evbuffer *b, const char *s) {
    char esc[1800];
    mg_json_escape(esc, sizeof(esc), s ? s : "");
    evbuffer_add_printf(b, "\"%.1790s\"", esc);
}

/* ---- health ---- */

static void mg_admin_healthz(mg_req_t *r, const char *q, size_t ql) {
    static const char ok[] = "{\"status\":\"ok\"}\n";
    (void)q, (void)ql;
    mg_admin_reply(r, 200, "application/json", ok, sizeof(ok) - 1);
}

/* Ready: a generation serves, the worker is not draining, and every
 * upstream with servers has one this worker does not hold down. */
void mg_admin_ready(mg_req_t *r) {
    mg_gen_t *g = r->gen;
    const char *why = NULL;
    char msg[160];
    if (g == NULL || mg_gen_current == NULL)
        why = "no generation loaded";
    else if (mg_worker.stopping)
        why = "draining";
    for (int i = 0; why == NULL && i < g->nupstreams; i++) {
        mg_upstream_t *u = &g->upstreams[i];
        int up = 0;
        for (int k = 0; k < u->npeers && !up; k++) {
            mg_up_peer_stat_t s;
            mg_up_peer_stat(u->peers[k], &s);
            up = s.healthy;
        }
        if (u->npeers > 0 && !up) {
            snprintf(msg, sizeof(msg), "upstream %s has no healthy server", u->name);
            why = msg;
        }
    }
    if (why) {
        struct evbuffer *b = evbuffer_new();
        if (b == NULL) {
            mg_resp_json_error(r, 503, why);
            return;
        }
        evbuffer_add_printf(b, "{\"status\":\"unavailable\",\"reason\":");
        mg_admin_str(b, why);
        evbuffer_add_printf(b, "}\n");
        mg_admin_json(r, 503, b);
        evbuffer_free(b);
        return;
    }
    {
        char body[96];
        int n = snprintf(body, sizeof(body), "{\"status\":\"ready\",\"generation\":%u}\n", g->id);
        mg_admin_reply(r, 200, "application/json", body, (size_t)n);
    }
}

static void mg_admin_readyz(mg_req_t *r, const char *q, size_t ql) {
    (void)q, (void)ql;
    mg_admin_ready(r);
}

/* ---- metrics ---- */

static void mg_admin_metrics(mg_req_t *r, const char *q, size_t ql) {
    struct evbuffer *b = evbuffer_new();
    (void)q, (void)ql;
    if (b == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    mg_metrics_render(b); /* loop/metrics.c: every worker's counters, summed */
    mg_admin_reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

/* ---- the API (JSON) ---- */

static void mg_admin_doc(mg_req_t *r, const char *doc) {
    static const char none[] = "{\"error\":\"not available\"}\n";
    if (doc == NULL) {
        mg_admin_reply(r, 503, "application/json", none, sizeof(none) - 1);
        return;
    }
    mg_admin_reply(r, 200, "application/json", doc, strlen(doc));
}

static void mg_admin_config(mg_req_t *r, const char *q, size_t ql) {
    (void)q, (void)ql;
    mg_gen_admin_docs(r->gen);
    mg_admin_doc(r, r->gen->admin_config);
}

/* the load's document with each route's "hits": requests answered on its
 * metrics label (its name or rule), summed over every worker */
static void mg_admin_routes(mg_req_t *r, const char *q, size_t ql) {
    mg_gen_t *g = r->gen;
    const char *doc;
    struct evbuffer *b;
    size_t at = 0;
    (void)q, (void)ql;
    mg_gen_admin_docs(g);
    doc = g->admin_routes;
    if (doc == NULL || g->nadmin_routes == 0) {
        mg_admin_doc(r, doc);
        return;
    }
    if ((b = evbuffer_new()) == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    for (int i = 0; i < g->nadmin_routes; i++) {
        size_t end = g->admin_route_ends[i];
        evbuffer_add(b, doc + at, end - at);
        evbuffer_add_printf(
            b, ",\"hits\":%llu",
            (unsigned long long)mg_metrics_http_requests(mg_met_find(g->admin_route_names[i])));
        at = end;
    }
    evbuffer_add(b, doc + at, strlen(doc + at));
    mg_admin_json(r, 200, b);
    evbuffer_free(b);
}

static void mg_admin_upstreams(mg_req_t *r, const char *q, size_t ql) {
    mg_gen_t *g = r->gen;
    struct evbuffer *b = evbuffer_new();
    (void)q, (void)ql;
    if (b == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    evbuffer_add_printf(b, "{\"worker\":%d,\"generation\":%u,\"upstreams\":[", mg_worker.id, g->id);
    for (int i = 0; i < g->nupstreams; i++) {
        mg_upstream_t *u = &g->upstreams[i];
        mg_met_up_sum_t m;
        evbuffer_add_printf(b, "%s{\"name\":", i ? "," : "");
        mg_admin_str(b, u->name);
        mg_metrics_upstream_sum(mg_upstream_met(u), &m);
        evbuffer_add_printf(
            b,
            ",\"keepalive\":%d,\"connect_timeout_ms\":%d,"
            "\"response_timeout_ms\":%d,\"max_fails\":%d,\"fail_timeout_ms\":%d,"
            "\"requests\":%llu,\"errors\":{\"connect\":%llu,\"timeout\":%llu,"
            "\"bad_response\":%llu},\"pool\":{\"open\":%lld,\"idle\":%lld},"
            "\"servers\":[",
            u->keepalive, u->connect_timeout, u->response_timeout, u->max_fails, u->fail_timeout,
            (unsigned long long)m.requests, (unsigned long long)m.errors[MG_MET_E_CONNECT],
            (unsigned long long)m.errors[MG_MET_E_TIMEOUT],
            (unsigned long long)m.errors[MG_MET_E_BAD], (long long)m.pool, (long long)m.idle);
        for (int k = 0; k < u->npeers; k++) {
            mg_up_peer_stat_t s;
            char name[96];
            mg_up_peer_stat(u->peers[k], &s);
            mg_up_peer_str(u->peers[k], name, sizeof(name));
            evbuffer_add_printf(b, "%s{\"address\":", k ? "," : "");
            mg_admin_str(b, name);
            evbuffer_add_printf(b, ",\"tls\":%s,\"healthy\":%s,\"fails\":%d,\"idle\":%d}",
                                s.tls ? "true" : "false", s.healthy ? "true" : "false", s.fails,
                                s.idle);
        }
        evbuffer_add_printf(b, "]}");
    }
    evbuffer_add_printf(b, "]}\n");
    mg_admin_json(r, 200, b);
    evbuffer_free(b);
}

/* one generation: what this worker knows of it (routes, upstreams; -1 if it
 * has none of its own), and the process family's requests and sockets on it */
static void mg_admin_gen_json(struct evbuffer *b, unsigned id, const char *state, double at,
                              const mg_gen_t *g, const mg_met_gen_row_t *rows, int nrows) {
    long long in_use = 0, ws = 0;
    for (int i = 0; i < nrows; i++)
        if (rows[i].id == id) {
            in_use = (long long)rows[i].in_use;
            ws = (long long)rows[i].ws;
            if (at <= 0)
                at = rows[i].loaded_at;
        }
    evbuffer_add_printf(b,
                        "{\"id\":%u,\"state\":\"%s\",\"loaded_at\":%.0f,\"in_use\":%lld,"
                        "\"websockets\":%lld,\"routes\":%d,\"upstreams\":%d}",
                        id, state, at, in_use, ws, g ? g->nroutes : -1, g ? g->nupstreams : -1);
}

/* The serving generation, a pending one, and the superseded ones still
 * held by requests or sockets in any worker ("draining", until the last
 * one lets go), with the process family's counts (metrics shm); this
 * worker's own draining list beside. */
static void mg_admin_generations(mg_req_t *r, const char *q, size_t ql) {
    struct evbuffer *b = evbuffer_new();
    mg_met_gen_row_t rows[MG_MET_GENS * 4];
    int n = mg_metrics_gen_rows(rows, (int)(sizeof(rows) / sizeof(rows[0])));
    mg_gen_t *cur = mg_gen_current;
    (void)q, (void)ql;
    if (b == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    evbuffer_add_printf(b,
                        "{\"worker\":%d,\"pid\":%d,\"connections\":%llu,\"requests\":%llu,"
                        "\"generations\":[",
                        mg_worker.id, (int)getpid(), (unsigned long long)mg_worker.active,
                        (unsigned long long)mg_worker.inflight);
    mg_admin_gen_json(b, cur->id, "serving", cur->loaded_at, cur, rows, n);
    if (mg_gen_pending) {
        evbuffer_add(b, ",", 1);
        mg_admin_gen_json(b, mg_gen_pending->id, "loading", mg_gen_pending->loaded_at,
                          mg_gen_pending, rows, n);
    }
    /* older than the serving one and still in use somewhere */
    for (int i = 0; i < n; i++) {
        const mg_gen_t *mine = NULL;
        if (rows[i].id >= cur->id || rows[i].in_use <= 0)
            continue;
        for (int k = 0; k < mg_gen_ndraining; k++)
            if (mg_gen_draining[k]->id == rows[i].id)
                mine = mg_gen_draining[k];
        evbuffer_add(b, ",", 1);
        mg_admin_gen_json(b, rows[i].id, "draining", mine ? mine->loaded_at : 0, mine, rows, n);
    }
    evbuffer_add_printf(b, "],\"this_worker_draining\":[");
    for (int k = 0; k < mg_gen_ndraining; k++)
        evbuffer_add_printf(b, "%s{\"id\":%u,\"refs\":%d}", k ? "," : "", mg_gen_draining[k]->id,
                            mg_gen_draining[k]->refs);
    evbuffer_add_printf(b, "]}\n");
    mg_admin_json(r, 200, b);
    evbuffer_free(b);
}

/* Open sockets by route, mode and generation, all workers (metrics shm);
 * this worker's count and limit beside. */
static void mg_admin_websockets(mg_req_t *r, const char *q, size_t ql) {
    static mg_met_ws_row_t rows[4 * MG_MET_NAMES];
    int n = mg_metrics_ws_rows(rows, (int)(sizeof(rows) / sizeof(rows[0])));
    static const char *const modes[MG_MET_NMODE] = {"handler", "tunnel", "relay"};
    struct evbuffer *b = evbuffer_new();
    long long total = 0;
    (void)q, (void)ql;
    if (b == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++)
        total += (long long)rows[i].open;
    evbuffer_add_printf(b,
                        "{\"worker\":%d,\"generation\":%u,\"open\":%lld,\"worker_open\":%llu,"
                        "\"limit\":%d,\"sockets\":[",
                        mg_worker.id, mg_gen_current->id, total, (unsigned long long)mg_ws_count(),
                        mg_gen_current->max_websockets);
    for (int i = 0; i < n; i++) {
        evbuffer_add_printf(b, "%s{\"route\":", i ? "," : "");
        mg_admin_str(b, mg_met_name_str(rows[i].name));
        evbuffer_add_printf(b, ",\"mode\":\"%s\",\"generation\":%u,\"open\":%lld}",
                            modes[rows[i].mode], rows[i].gen, (long long)rows[i].open);
    }
    evbuffer_add_printf(b, "]}\n");
    mg_admin_json(r, 200, b);
    evbuffer_free(b);
}

static void mg_admin_page(mg_req_t *r, const char *q, size_t ql) {
    (void)q, (void)ql;
    if (r->gen->admin_page == NULL) {
        mg_resp_json_error(r, 404, "no dashboard (lib/moongate/admin/dashboard.html)");
        return;
    }
    mg_admin_reply(r, 200, "text/html; charset=utf-8", r->gen->admin_page, r->gen->admin_page_len);
}

/* ---- POST /reload: the master reloads as on SIGHUP and answers ---- */

#define MG_ADMIN_RELOAD_WAIT 30 /* seconds: the master answers within its reload timeout */
static struct {
    mg_req_t *r;
    unsigned seq;
    struct event timer;
} mg_admin_wait[MG_ADMIN_WAIT];
static unsigned mg_admin_seq;

static void mg_admin_wait_drop(mg_req_t *r) {
    for (int i = 0; i < MG_ADMIN_WAIT; i++)
        if (mg_admin_wait[i].r == r) {
            mg_admin_wait[i].r = NULL;
            evtimer_del(&mg_admin_wait[i].timer);
        }
}

static void mg_admin_wait_timeout_cb(evutil_socket_t fd, short what, void *arg) {
    static const char body[] = "{\"result\":\"unknown\",\"error\":\"the master did not "
                               "answer in time: see its log\"}\n";
    int i = (int)(intptr_t)arg;
    mg_req_t *r = mg_admin_wait[i].r;
    (void)fd, (void)what;
    if (r == NULL)
        return;
    mg_admin_wait[i].r = NULL;
    r->target = NULL;
    mg_admin_reply(r, 504, "application/json", body, sizeof(body) - 1);
    mg_resp_end(r);
    mg_req_target_done(r);
}

static void mg_admin_wait_body(mg_req_t *r, const char *data, size_t len) {
    (void)r, (void)data, (void)len; /* a reload takes no body */
}
static void mg_admin_wait_end(mg_req_t *r) { (void)r; }
static void mg_admin_wait_drained(mg_req_t *r) { (void)r; }
static void mg_admin_wait_gone(mg_req_t *r) {
    mg_admin_wait_drop(r);
    r->target = NULL;
}

static const mg_target_t mg_admin_wait_target = {
    .body = mg_admin_wait_body,
    .body_end = mg_admin_wait_end,
    .drained = mg_admin_wait_drained,
    .gone = mg_admin_wait_gone,
    .keeps_req = 0,
};

static void mg_admin_reload(mg_req_t *r, const char *q, size_t ql) {
    int slot = -1;
    (void)q, (void)ql;
    for (int i = 0; i < MG_ADMIN_WAIT && slot < 0; i++)
        if (mg_admin_wait[i].r == NULL)
            slot = i;
    if (mg_worker.stopping) {
        mg_resp_json_error(r, 503, "draining");
        return;
    }
    if (slot < 0 || mg_admin_reload_hook == NULL) {
        mg_resp_json_error(r, 503, "too many reloads waiting");
        return;
    }
    if (++mg_admin_seq == 0)
        mg_admin_seq = 1;
    if (mg_admin_reload_hook(mg_admin_seq) != MG_OK) {
        mg_resp_json_error(r, 503, "the master's control channel is gone");
        return;
    }
    mg_admin_wait[slot].r = r;
    mg_admin_wait[slot].seq = mg_admin_seq;
    evtimer_assign(&mg_admin_wait[slot].timer, mg_worker.base, mg_admin_wait_timeout_cb,
                   (void *)(intptr_t)slot);
    evtimer_add(&mg_admin_wait[slot].timer, mg_timeout_tv(MG_ADMIN_RELOAD_WAIT * 1000));
    r->target = &mg_admin_wait_target;
}

void mg_admin_reload_answer(unsigned seq, int status, const char *json) {
    for (int i = 0; i < MG_ADMIN_WAIT; i++) {
        mg_req_t *r = mg_admin_wait[i].r;
        if (r == NULL || mg_admin_wait[i].seq != seq)
            continue;
        mg_admin_wait[i].r = NULL;
        evtimer_del(&mg_admin_wait[i].timer);
        r->target = NULL; /* still here: a client gone took it out (gone) */
        mg_admin_reply(r, status, "application/json", json, strlen(json));
        mg_resp_end(r);
        mg_req_target_done(r);
        return;
    }
}

/* ---- the admin listener's requests ---- */

/* Authorization: Bearer <token>, compared in constant time. */
static int mg_admin_authorized(mg_req_t *r) {
    const char *tok = r->gen->admin_token, *v;
    size_t n, tl;
    unsigned diff = 0;
    if (tok == NULL)
        return 0;
    v = mg_req_header(r, "authorization", &n);
    if (v == NULL || n < 7 || !mg_name_eq(v, 7, "bearer ", 7))
        return 0;
    v += 7, n -= 7;
    while (n && *v == ' ')
        v++, n--;
    tl = strlen(tok);
    if (n != tl)
        return 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned)(v[i] ^ tok[i]);
    return diff == 0;
}

int mg_admin_serve(mg_req_t *r) {
    const char *path = r->hbuf, *q = NULL, *m;
    size_t pl = r->path_len, ql = 0;
    const mg_admin_ep_t *hit = NULL;
    int path_known = 0;

    r->resp_close = !(r->clen <= 0 && !r->chunked); /* a body is not read */
    if (r->url_len > pl + 1) {
        q = r->hbuf + pl + 1;
        ql = r->url_len - pl - 1;
    }
    m = llhttp_method_name((llhttp_method_t)r->method);
    for (int i = 0; i < mg_admin_neps && hit == NULL; i++) {
        const mg_admin_ep_t *e = &mg_admin_eps[i];
        if (strlen(e->path) != pl || memcmp(e->path, path, pl) != 0)
            continue;
        path_known = 1;
        if (strcmp(e->method, m) == 0 || (r->method == HTTP_HEAD && strcmp(e->method, "GET") == 0))
            hit = e;
    }
    if (hit == NULL) {
        if (path_known)
            mg_resp_json_error(r, 405, "method not allowed");
        else
            mg_resp_json_error(r, 404, "no such admin endpoint");
        return MG_HTTP_GO_ON;
    }
    if (hit->needs_token && !mg_admin_authorized(r)) {
        if (r->gen->admin_token == NULL)
            mg_resp_json_error(r, 403,
                               "no admin token configured (admin.token, "
                               "MOONGATE_ADMIN_TOKEN): only /healthz, /readyz and "
                               "/metrics answer");
        else
            mg_resp_json_error_with(r, 401, "this endpoint needs Authorization: Bearer <token>",
                                    "WWW-Authenticate: Bearer realm=\"moongate admin\"\r\n");
        return MG_HTTP_GO_ON;
    }
    hit->fn(r, q, ql);
    return MG_HTTP_GO_ON;
}

void mg_admin_init(void) {
    mg_admin_register("GET", "/healthz", 0, mg_admin_healthz);
    mg_admin_register("GET", "/readyz", 0, mg_admin_readyz);
    mg_admin_register("GET", "/metrics", 0, mg_admin_metrics);
    /* the page holds no data: it asks for the token and sends it itself */
    mg_admin_register("GET", "/", 0, mg_admin_page);
    mg_admin_register("GET", "/routes", 1, mg_admin_routes);
    mg_admin_register("GET", "/upstreams", 1, mg_admin_upstreams);
    mg_admin_register("GET", "/generations", 1, mg_admin_generations);
    mg_admin_register("GET", "/websockets", 1, mg_admin_websockets);
    mg_admin_register("GET", "/config", 1, mg_admin_config);
    mg_admin_register("POST", "/reload", 1, mg_admin_reload);
}
