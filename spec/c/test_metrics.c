/*
 * test_metrics.c -- the shared counters and their Prometheus text
 * (core/loop/metrics.c): slots summed at render, histograms cumulative with
 * +Inf, _sum and _count, gauges zeroed on a slot's restart while counters
 * stay, the bounded name table overflowing into "(other)", label escaping,
 * and HELP/TYPE once per family. With MG_METRICS_OUT set, the rendered text
 * is written there (spec 62 runs promtool on it).
 */
#include "ct.h"
#include "loop/metrics.h"

#include <llhttp.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

static char text[1 << 20];

static const char *render(void) {
    struct evbuffer *b = evbuffer_new();
    size_t n;
    mg_metrics_render(b);
    n = evbuffer_get_length(b);
    if (n >= sizeof(text))
        n = sizeof(text) - 1;
    evbuffer_remove(b, text, n);
    text[n] = '\0';
    evbuffer_free(b);
    return text;
}

static int has(const char *line) { return strstr(render(), line) != NULL; }

static int count_of(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static int r_api, r_ws, up_a, srv;

/* the bucket of a duration: the 4-compare search against the scan it
 * replaced, at every bound, either side of it, and the odd values */
static int bucket_scan(double secs) {
    int i = 0;
    while (i < MG_MET_BUCKETS - 1 && secs > mg_met_bounds[i])
        i++;
    return i;
}

static void buckets(void) {
    const double odd[] = {0.0 / 0.0, -1.0 / 0.0, 1.0 / 0.0, -1, -0.0, 0, 1e-12, 11, 1e300};
    for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++)
        CHECK_INT(mg_met_bucket(odd[k]), bucket_scan(odd[k]));
    for (int j = 0; j < MG_MET_BUCKETS - 1; j++) {
        double b = mg_met_bounds[j];
        CHECK_INT(mg_met_bucket(b), j);
        CHECK_INT(mg_met_bucket(b * (1 - 1e-12)), j);
        CHECK_INT(mg_met_bucket(b * (1 + 1e-12)), j + 1);
    }
    for (double s = -0.001; s < 12; s += 0.0000731)
        CHECK_INT(mg_met_bucket(s), bucket_scan(s));
}

/* mg_met_hist's bucket by the microseconds' power of two, and its sum,
 * against the scan and the conversion: every bound, either side of it by
 * an ulp and by 1e-12, each power of two of us either side, the odd
 * values, a sweep */
static int hist_bucket(double secs, uint64_t *sum) {
    mg_met_hist_t h;
    memset(&h, 0, sizeof(h));
    mg_met_hist(&h, secs);
    *sum = h.sum_us;
    for (int b = 0; b < MG_MET_BUCKETS; b++)
        if (h.b[b] == 1)
            return b;
    return -1;
}

static void hist_buckets(void) {
    const double odd[] = {0.0 / 0.0, -1.0 / 0.0, 1.0 / 0.0, -1,    -0.0,   0,     1e-12,
                          5e-7,      1e-6,       11,        1e300, 9.1e12, 9.3e12};
    int ok = 1;
    uint64_t sum;
#define HB(x)                                                                                      \
    do {                                                                                           \
        double x_ = (x);                                                                           \
        if (hist_bucket(x_, &sum) != bucket_scan(x_) ||                                            \
            (x_ > 0 && x_ < 1e13 && sum != (uint64_t)(x_ * 1e6))) {                                \
            printf("# %.17g: %d %d\n", x_, hist_bucket(x_, &sum), bucket_scan(x_));                \
            ok = 0;                                                                                \
        }                                                                                          \
    } while (0)
    for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++)
        HB(odd[k]);
    for (int j = 0; j < MG_MET_BUCKETS - 1; j++) {
        double b = mg_met_bounds[j];
        HB(b);
        HB(nextafter(b, 0));
        HB(nextafter(b, 1e9));
        HB(b * (1 - 1e-12));
        HB(b * (1 + 1e-12));
    }
    for (int lg = 0; lg < 45; lg++) {
        double p = ldexp(1, lg) / 1e6;
        HB(p);
        HB(nextafter(p, 0));
        HB(nextafter(p, 1e9));
    }
    for (double s = -0.001; s < 12; s += 0.0000731)
        HB(s);
#undef HB
    CHECK(ok);
    /* the status class by its multiply, against the division */
    for (int st = -3; st <= 1000 && ok; st++) {
        int want = st >= 100 && st < 600 ? st / 100 : 0;
        uint64_t before = mg_met->n[MG_MET_OTHER].http_req[MG_MET_M_GET][want];
        mg_met_http(MG_MET_OTHER, MG_MET_M_GET, st, 0.001, 0, 0);
        ok = mg_met->n[MG_MET_OTHER].http_req[MG_MET_M_GET][want] == before + 1;
    }
    CHECK(ok);
}

static void setup(void) {
    const char *ls[2] = {"127.0.0.1:8080", "0.0.0.0:8443"};
    CHECK_INT(mg_metrics_init(2, ls, 2), MG_OK);
    r_api = mg_met_name("/api/", MG_MET_K_ROUTE);
    r_ws = mg_met_name("chat \"room\"\\x", MG_MET_K_ROUTE);
    up_a = mg_met_name("backend", MG_MET_K_UPSTREAM);
    srv = mg_met_name("backend|127.0.0.1:9001", MG_MET_K_SERVER);
    CHECK(r_api > MG_MET_NONE);
    CHECK(r_ws > r_api);
    CHECK_INT(mg_met_name("/api/", MG_MET_K_ROUTE), r_api); /* interned once */
}

static void http_summed(void) {
    mg_metrics_attach(0, getpid());
    mg_met_http(r_api, mg_met_method_class(HTTP_GET), 200, 0.0005, 10, 100);
    mg_met_http(r_api, mg_met_method_class(HTTP_GET), 204, 0.02, 0, 5);
    mg_met_conn(0, 0, 1);
    mg_metrics_attach(1, getpid());
    mg_met_http(r_api, mg_met_method_class(HTTP_GET), 201, 3.0, 1, 1);
    mg_met_http(r_api, mg_met_method_class(HTTP_POST), 503, 20.0, 0, 0);
    mg_met_http(MG_MET_NONE, mg_met_method_class(HTTP_PROPFIND), 404, 0.001, 0, 9);
    mg_met_conn(1, 1, 2);
    render();
    CHECK(strstr(text,
                 "moongate_http_requests_total{route=\"/api/\",method=\"GET\",status=\"2xx\"} "
                 "3\n") != NULL);
    CHECK(strstr(text, "moongate_http_requests_total{route=\"/api/\",method=\"POST\","
                       "status=\"5xx\"} 1\n") != NULL);
    CHECK(strstr(text, "moongate_http_requests_total{route=\"(none)\",method=\"other\","
                       "status=\"4xx\"} 1\n") != NULL);
    /* cumulative buckets: 0.0005 <= 1 ms; 0.02 <= 25 ms; 3 s <= 5 s; 20 s only in +Inf */
    CHECK(strstr(text,
                 "moongate_http_request_duration_seconds_bucket{route=\"/api/\",le=\"0.001\"} "
                 "1\n") != NULL);
    CHECK(strstr(text,
                 "moongate_http_request_duration_seconds_bucket{route=\"/api/\",le=\"0.025\"} "
                 "2\n") != NULL);
    CHECK(strstr(text, "moongate_http_request_duration_seconds_bucket{route=\"/api/\",le=\"5\"} "
                       "3\n") != NULL);
    CHECK(strstr(text, "moongate_http_request_duration_seconds_bucket{route=\"/api/\",le=\"10\"} "
                       "3\n") != NULL);
    CHECK(strstr(text, "moongate_http_request_duration_seconds_bucket{route=\"/api/\",le=\"+Inf\"} "
                       "4\n") != NULL);
    CHECK(strstr(text, "moongate_http_request_duration_seconds_count{route=\"/api/\"} 4\n") !=
          NULL);
    CHECK(strstr(text, "moongate_http_request_duration_seconds_sum{route=\"/api/\"} 23.020500\n") !=
          NULL);
    CHECK(strstr(text, "moongate_http_received_bytes_total{route=\"/api/\"} 11\n") != NULL);
    CHECK(strstr(text, "moongate_http_sent_bytes_total{route=\"/api/\"} 106\n") != NULL);
    CHECK(strstr(text, "moongate_http_open_connections{listener=\"127.0.0.1:8080\","
                       "protocol=\"http\"} 1\n") != NULL);
    CHECK(strstr(text, "moongate_http_open_connections{listener=\"0.0.0.0:8443\","
                       "protocol=\"https\"} 2\n") != NULL);
    /* one HELP and one TYPE per family */
    CHECK_INT(count_of(text, "# TYPE moongate_http_requests_total counter\n"), 1);
    CHECK_INT(count_of(text, "# TYPE moongate_http_request_duration_seconds histogram\n"), 1);
}

static void restart_keeps_counters(void) {
    mg_metrics_slot_reset(1); /* the master saw worker 1 die */
    CHECK(has("moongate_http_open_connections{listener=\"0.0.0.0:8443\",protocol=\"https\"} 0\n"));
    CHECK(has("moongate_http_open_connections{listener=\"127.0.0.1:8080\",protocol=\"http\"} 1\n"));
    CHECK(has("moongate_http_requests_total{route=\"/api/\",method=\"GET\",status=\"2xx\"} 3\n"));
    mg_metrics_worker_restarted();
    CHECK(has("moongate_workers_restarted_total 1\n"));
}

static void upstream_and_health(void) {
    mg_metrics_attach(0, getpid());
    mg_met->n[up_a].up_req += 3;
    mg_met->n[up_a].up_err[MG_MET_E_TIMEOUT]++;
    mg_met_hist(&mg_met->n[up_a].up_time, 0.004);
    mg_met->n[up_a].up_pool = 2;
    mg_met->n[up_a].up_idle = 1;
    mg_met->health[srv] = 1;
    render();
    CHECK(strstr(text, "moongate_upstream_requests_total{upstream=\"backend\"} 3\n") != NULL);
    CHECK(
        strstr(text, "moongate_upstream_errors_total{upstream=\"backend\",kind=\"timeout\"} 1\n"));
    CHECK(
        strstr(text, "moongate_upstream_errors_total{upstream=\"backend\",kind=\"connect\"} 0\n"));
    CHECK(strstr(text, "moongate_upstream_response_time_seconds_bucket{upstream=\"backend\","
                       "le=\"0.005\"} 1\n"));
    CHECK(strstr(text, "moongate_upstream_pool_connections{upstream=\"backend\"} 2\n"));
    CHECK(strstr(text, "moongate_upstream_pool_idle_connections{upstream=\"backend\"} 1\n"));
    CHECK(strstr(text,
                 "moongate_upstream_server_up{upstream=\"backend\",server=\"127.0.0.1:9001\"} "
                 "1\n"));
    /* a route is not an upstream: no upstream series for it */
    CHECK(strstr(text, "moongate_upstream_requests_total{upstream=\"/api/\"}") == NULL);
    mg_metrics_attach(1, getpid());
    mg_met->health[srv] = 2; /* one worker has it down */
    mg_met->n[srv].up_eject++;
    CHECK(has("moongate_upstream_server_up{upstream=\"backend\",server=\"127.0.0.1:9001\"} 0\n"));
    CHECK(has("moongate_upstream_server_ejections_total{upstream=\"backend\","
              "server=\"127.0.0.1:9001\"} 1\n"));
}

static void websockets(void) {
    mg_metrics_attach(0, getpid());
    mg_met_ws_open(r_ws, MG_MET_WS_RELAY, 7, 1);
    mg_met_ws_open(r_ws, MG_MET_WS_RELAY, 7, 1);
    mg_met->n[r_ws].ws_msgs[MG_MET_IN] += 5;
    mg_met->n[r_ws].ws_bytes[MG_MET_OUT] += 50;
    mg_met->n[r_ws].ws_close[mg_met_ws_code(1012)][mg_met_ws_side("moongate")]++;
    mg_met->n[r_ws].ws_close[mg_met_ws_code(4001)][mg_met_ws_side("client")]++;
    mg_met->n[r_ws].ws_drained++;
    mg_metrics_attach(1, getpid());
    mg_met_ws_open(r_ws, MG_MET_WS_HANDLER, 7, 1);
    mg_met_ws_open(r_ws, MG_MET_WS_HANDLER, 8, 1);
    mg_met_ws_open(r_api, MG_MET_WS_TUNNEL, 8, 1);
    mg_met_ws_open(r_api, MG_MET_WS_TUNNEL, 8, -1); /* closed again: no series */
    render();
    /* route x mode x generation, summed over the slots */
    CHECK(strstr(text, "moongate_websocket_open_sockets{route=\"chat \\\"room\\\"\\\\x\","
                       "mode=\"relay\",generation=\"7\"} 2\n"));
    CHECK(strstr(text, "moongate_websocket_open_sockets{route=\"chat \\\"room\\\"\\\\x\","
                       "mode=\"handler\",generation=\"8\"} 1\n"));
    CHECK(strstr(text, "moongate_websocket_open_sockets{route=\"/api/\"") == NULL);
    {
        mg_met_ws_row_t rows[8];
        int n = mg_metrics_ws_rows(rows, 8), total = 0;
        CHECK_INT(n, 3);
        for (int i = 0; i < n; i++)
            total += (int)rows[i].open;
        CHECK_INT(total, 4);
        CHECK_INT(mg_metrics_ws_rows(rows, 1), 1); /* bounded by the caller's rows */
    }
    /* the name's quote and backslash are escaped */
    CHECK(strstr(text,
                 "moongate_ws_open_sockets{route=\"chat \\\"room\\\"\\\\x\",mode=\"relay\"} 2\n"));
    CHECK(strstr(text, "moongate_ws_open_sockets_by_generation{generation=\"7\"} 3\n"));
    CHECK(strstr(text, "moongate_ws_open_sockets_by_generation{generation=\"8\"} 1\n"));
    CHECK(strstr(text,
                 "moongate_ws_messages_total{route=\"chat \\\"room\\\"\\\\x\",direction=\"in\"} "
                 "5\n"));
    CHECK(strstr(text, "moongate_ws_message_bytes_total{route=\"chat \\\"room\\\"\\\\x\","
                       "direction=\"out\"} 50\n"));
    CHECK(strstr(text, "moongate_ws_closes_total{route=\"chat \\\"room\\\"\\\\x\",code=\"1012\","
                       "side=\"gateway\"} 1\n"));
    CHECK(strstr(text, "moongate_ws_closes_total{route=\"chat \\\"room\\\"\\\\x\",code=\"4xxx\","
                       "side=\"client\"} 1\n"));
    CHECK(strstr(text, "moongate_ws_drained_total{route=\"chat \\\"room\\\"\\\\x\"} 1\n"));
}

/* the readers of the admin API: sums over the slots, a restart zeroes gauges */
static void readers(void) {
    mg_met_up_sum_t u;
    mg_met_gen_row_t g[8];
    CHECK_INT(mg_met_find("/api/"), r_api);
    CHECK_INT(mg_met_find("/never-interned"), -1);
    CHECK(strcmp(mg_met_name_str(r_api), "/api/") == 0);
    uint64_t before = mg_metrics_http_requests(r_api), tmo;
    mg_metrics_upstream_sum(up_a, &u);
    tmo = u.errors[MG_MET_E_TIMEOUT];
    mg_metrics_attach(0, getpid());
    mg_met_http(r_api, MG_MET_M_GET, 200, 0.001, 0, 0);
    mg_met_http(r_api, MG_MET_M_POST, 503, 0.001, 0, 0);
    mg_metrics_attach(1, getpid());
    mg_met_http(r_api, MG_MET_M_OTHER, 0, 0.001, 0, 0);
    mg_met->n[up_a].up_err[MG_MET_E_TIMEOUT] += 2;
    CHECK_INT(mg_metrics_http_requests(r_api), before + 3); /* every method, status, slot */
    CHECK_INT(mg_metrics_http_requests(-1), 0);
    mg_metrics_attach(0, getpid());
    mg_met->n[up_a].up_err[MG_MET_E_TIMEOUT]++;
    mg_metrics_upstream_sum(up_a, &u);
    CHECK_INT(u.errors[MG_MET_E_TIMEOUT], tmo + 3);
    /* generations in use: published absolute per slot, summed */
    mg_met_gen_use(5, 1700000000.0, 2);
    mg_met_gen_use(6, 1700000100.0, 1);
    mg_metrics_attach(1, getpid());
    mg_met_gen_use(5, 1700000000.0, 3);
    mg_met_gen_use(21, 1700000200.0, 4); /* 21 % 16 == 5: the entry is 5's, not counted */
    CHECK_INT(mg_metrics_gen_rows(g, 8), 2);
    for (int i = 0; i < 2; i++) {
        if (g[i].id == 5) {
            CHECK_INT(g[i].in_use, 5);
            CHECK(g[i].loaded_at == 1700000000.0);
        } else {
            CHECK_INT(g[i].id, 6);
            CHECK_INT(g[i].in_use, 1);
        }
    }
    mg_met_gen_use(5, 1700000000.0, 0);
    mg_metrics_slot_reset(0); /* worker 0 died: what it held went with it */
    CHECK_INT(mg_metrics_gen_rows(g, 8), 0);
}

static void process(void) {
    mg_metrics_generation(3, 1700000000.5);
    mg_metrics_reload(MG_MET_RELOAD_OK);
    mg_metrics_reload(MG_MET_RELOAD_FAILED);
    mg_metrics_reload(MG_MET_RELOAD_FAILED);
    render();
    CHECK(strstr(text, "moongate_reloads_total{result=\"ok\"} 1\n"));
    CHECK(strstr(text, "moongate_reloads_total{result=\"failed\"} 2\n"));
    CHECK(strstr(text, "moongate_generation 3\n"));
    CHECK(strstr(text, "moongate_last_reload_success_timestamp_seconds 1700000000.500\n"));
    CHECK(strstr(text, "moongate_process_open_fds ") != NULL);
    CHECK(strstr(text, "moongate_process_max_fds ") != NULL);
}

static void names_bounded(void) {
    char n[32];
    int last = 0;
    for (int i = 0; i < MG_MET_NAMES + 10; i++) {
        snprintf(n, sizeof(n), "/scan/%d", i);
        last = mg_met_name(n, MG_MET_K_ROUTE);
    }
    CHECK_INT(last, MG_MET_OTHER);
    CHECK_INT(mg_met_name("/api/", MG_MET_K_ROUTE), r_api); /* the old ones still resolve */
    mg_met_http(MG_MET_OTHER, MG_MET_M_GET, 200, 0.001, 0, 0);
    CHECK(has("moongate_http_requests_total{route=\"(other)\",method=\"GET\",status=\"2xx\"} 1\n"));
}

static void promtool_file(void) {
    const char *path = getenv("MG_METRICS_OUT");
    struct evbuffer *b;
    FILE *f;
    if (path == NULL)
        return;
    f = fopen(path, "w");
    CHECK(f != NULL);
    b = evbuffer_new();
    mg_metrics_render(b); /* the whole text, past text[]'s bound */
    if (f) {
        CHECK_INT(fwrite(evbuffer_pullup(b, -1), 1, evbuffer_get_length(b), f),
                  evbuffer_get_length(b));
        fclose(f);
    }
    evbuffer_free(b);
}

int main(void) {
    CT_RUN(buckets);
    CT_RUN(hist_buckets);
    CT_RUN(setup);
    CT_RUN(http_summed);
    CT_RUN(restart_keeps_counters);
    CT_RUN(upstream_and_health);
    CT_RUN(websockets);
    CT_RUN(readers);
    CT_RUN(process);
    CT_RUN(names_bounded);
    CT_RUN(promtool_file);
    return ct_end();
}
