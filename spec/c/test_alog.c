/*
 * test_alog.c -- the access-log formatter: base's appender (core/base/fmt.c:
 * integers, fixed-point milliseconds, JSON escaping with its caps, the ISO
 * 8601 time cached per second), the HTTP line (core/http/http.c:
 * mg_http_log_line) against the snprintf formatter it replaced, kept here
 * as the oracle, its bounds on hostile fields, and the WebSocket line
 * (core/http/alog.c) through the real access-log buffer into a file.
 */
#include "ct.h"
#include "ct_req.h"
#include "http/http_int.h"
#include "loop/loop.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* the appender over a buffer with guard bytes after cap */
static char buf[16384];
#define GUARD 64
static mg_fmt_t fmt_over(size_t cap) {
    mg_fmt_t b = {buf, 0, cap};
    memset(buf, '#', sizeof(buf));
    return b;
}
static const char *fmt_str(mg_fmt_t *b) {
    static char out[sizeof(buf) + 1];
    memcpy(out, b->p, b->len);
    out[b->len] = '\0';
    return out;
}
static int guard_ok(size_t cap) {
    for (size_t i = cap; i < cap + GUARD && i < sizeof(buf); i++)
        if (buf[i] != '#')
            return 0;
    return 1;
}

static const char *milli(int64_t v) {
    mg_fmt_t b = fmt_over(64);
    mg_fmt_milli(&b, v);
    return fmt_str(&b);
}

static void fixed_point_ms(void) {
    char want[64];
    CHECK_STR(milli(0), "0.000");
    CHECK_STR(milli(1), "0.001");
    CHECK_STR(milli(42), "0.042");
    CHECK_STR(milli(999), "0.999");
    CHECK_STR(milli(1000), "1.000");
    CHECK_STR(milli(1234567), "1234.567");
    CHECK_STR(milli(-1005), "-1.005");
    CHECK_STR(milli(-7), "-0.007");
    CHECK_STR(milli(1796172570801LL), "1796172570.801");
    CHECK_STR(milli(INT64_MAX), "9223372036854775.807");
    CHECK_STR(milli(INT64_MIN), "-9223372036854775.808");
    /* what %.3f printed of v / 1000.0, over a spread of magnitudes */
    for (int64_t v = 1; v < 4000000000000LL; v = v * 7 + 3) {
        snprintf(want, sizeof(want), "%.3f", (double)v / 1000.0);
        CHECK_STR(milli(v), want);
        snprintf(want, sizeof(want), "%.3f", (double)-v / 1000.0);
        CHECK_STR(milli(-v), want);
    }
    /* the line's "time": the seconds' digits kept while the second lasts,
     * the same text as mg_fmt_milli's, back and forth across seconds */
    {
        static const int64_t ts[] = {1796172570801LL,
                                     1796172570999LL,
                                     1796172571000LL,
                                     1796172570002LL,
                                     999,
                                     0,
                                     1000,
                                     9999999999999LL,
                                     10000000000000LL,
                                     1796172571000LL,
                                     -1005};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            char got[64];
            mg_fmt_t b = {got, 0, sizeof(got)};
            mg_fmt_put_time_ms(&b, ts[i]);
            got[b.len] = '\0';
            CHECK_STR(got, milli(ts[i]));
        }
    }
    /* the durations as the line computes them */
    CHECK_INT(mg_fmt_round(0.0625 * 1e6), 62500);
    CHECK_INT(mg_fmt_round(0.4999), 0);
    CHECK_INT(mg_fmt_round(0.5), 1);
    CHECK_INT(mg_fmt_round(-0.5), -1);
    CHECK_INT(mg_fmt_round(-2.4), -2);
    CHECK_INT(mg_fmt_round(0.0 / 0.0), 0);
    CHECK(mg_fmt_round(1e30) == INT64_MAX);
    CHECK(mg_fmt_round(-1e30) == INT64_MIN);
    CHECK_INT(mg_fmt_round(1796172570.801 * 1000.0), 1796172570801LL);
}

static void integers(void) {
    mg_fmt_t b = fmt_over(64);
    mg_fmt_u64(&b, 0);
    mg_fmt_ch(&b, ' ');
    mg_fmt_u64(&b, UINT64_MAX);
    mg_fmt_ch(&b, ' ');
    mg_fmt_i64(&b, INT64_MIN);
    mg_fmt_ch(&b, ' ');
    mg_fmt_i64(&b, -1);
    CHECK_STR(fmt_str(&b), "0 18446744073709551615 -9223372036854775808 -1");
    /* every value below 100000 (the short paths: 1 to 4 digits), then
     * every length, around each power of ten, against printf */
    {
        int ok = 1;
        for (uint64_t v = 0; v < 100000; v++) {
            char want[32];
            b = fmt_over(64);
            mg_fmt_u64(&b, v);
            snprintf(want, sizeof(want), "%llu", (unsigned long long)v);
            if (b.len != strlen(want) || memcmp(b.p, want, b.len) != 0)
                ok = 0;
        }
        CHECK(ok);
    }
    for (uint64_t p = 1, i = 0; i < 20; i++, p *= 10) {
        for (uint64_t d = 0; d < 3; d++) {
            char want[32];
            uint64_t v = p - 1 + d;
            b = fmt_over(64);
            mg_fmt_u64(&b, v);
            snprintf(want, sizeof(want), "%llu", (unsigned long long)v);
            CHECK_STR(fmt_str(&b), want);
        }
    }
}

/* mg_fmt_put_short: every length 0 .. 48 (each of its word copies and
 * memcpy past 32), the bytes and nothing past them */
static void short_copies(void) {
    char src[64];
    int ok = 1;
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (char)('A' + i % 50);
    for (size_t n = 0; n <= 48; n++) {
        mg_fmt_t b = fmt_over(100);
        mg_fmt_put_ch(&b, '<');
        mg_fmt_put_short(&b, src + 3, n);
        if (b.len != n + 1 || memcmp(b.p + 1, src + 3, n) != 0 || buf[n + 1] != '#')
            ok = 0;
    }
    CHECK(ok);
}

/* mg_json_escape as it was before fmt.c: the oracle for the caps */
static size_t old_escape(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = ch;
        }
    }
    out[o] = '\0';
    return o;
}

static void escaping(void) {
    static const char *in[] = {"",
                               "plain/ascii?x=1",
                               "say \"hi\" \\ there",
                               "tab\there\r\nnl",
                               "\x01\x1f\x7f\x80\xc3\xa9\xff",
                               "a\"b\\c\x05"
                               "defghijklmnopqrstuvwxyz0123456789",
                               "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
                               "caf\xc3\xa9 \xe2\x82\xac 100"};
    char want[512], got[512];
    for (size_t k = 0; k < sizeof(in) / sizeof(in[0]); k++) {
        for (size_t cap = 1; cap < 200; cap++) {
            size_t wn = old_escape(want, cap, in[k]);
            mg_fmt_t b = fmt_over(cap + 100);
            mg_fmt_json(&b, in[k], strlen(in[k]), cap);
            CHECK_STR(fmt_str(&b), want);
            CHECK(b.len <= (cap ? cap - 1 : 0));
            CHECK_INT(mg_json_escape(got, cap, in[k]), wn);
            CHECK_STR(got, want);
        }
    }
    /* n bounds it; a NUL ends it */
    {
        mg_fmt_t b = fmt_over(100);
        mg_fmt_json(&b, "abc\"def", 4, 100);
        CHECK_STR(fmt_str(&b), "abc\\\"");
        b = fmt_over(100);
        mg_fmt_json(&b, "ab\0cd", 5, 100);
        CHECK_STR(fmt_str(&b), "ab");
    }
}

/* The 8-bytes-at-a-time scan: each byte that needs an escape and its
 * neighbours that do not, at every offset of strings of 1 .. 40 bytes
 * (the scan's words of 16 and 8, the overlapping last word and the byte tail), with
 * every cap around the string's escaped length (the cap landing inside
 * an escape, or on the byte just before one), against the oracle; with
 * n exact and with n SIZE_MAX over a string allocated to its NUL (ASan
 * sees a read past it). */
static void escaping_swar(void) {
    static const unsigned char odd[] = {0x01, 0x1f, 0x20, 0x21, '"',  '#',  '[',  '\\',
                                        ']',  0x7e, 0x7f, 0x80, 0xc3, 0xfe, 0xff, 'a'};
    char want[256];
    int ok = 1;
    for (size_t len = 1; len <= 40; len++)
        for (size_t at = 0; at < len; at++)
            for (size_t k = 0; k < sizeof(odd); k++) {
                char *in = malloc(len + 1);
                memset(in, 'x', len);
                in[at] = (char)odd[k];
                if (at + 3 < len) /* a second one further on: the first is found first */
                    in[at + 3] = '\\';
                in[len] = '\0';
                for (size_t cap = 1; cap < 7 * len + 12; cap++) {
                    mg_fmt_t b = fmt_over(cap + 100);
                    size_t wn = old_escape(want, cap, in);
                    mg_fmt_json(&b, in, len, cap);
                    if (b.len != wn || memcmp(b.p, want, wn) != 0)
                        ok = 0;
                    b = fmt_over(cap + 100);
                    mg_fmt_json(&b, in, SIZE_MAX, cap);
                    if (b.len != wn || memcmp(b.p, want, wn) != 0)
                        ok = 0;
                }
                free(in);
            }
    CHECK(ok);
    /* a NUL at any offset ends it; n bounds the scan even without one */
    for (size_t at = 0; at < 16; at++) {
        char in[24];
        mg_fmt_t b = fmt_over(100);
        memset(in, 'y', sizeof(in));
        in[at] = '\0';
        mg_fmt_json(&b, in, sizeof(in), 100);
        CHECK_INT(b.len, at);
        b = fmt_over(100);
        mg_fmt_json(&b, in + at + 1, 8, 100);
        CHECK_STR(fmt_str(&b), "yyyyyyyy");
    }
    /* the checked path, a builder short of room: the fast path's output
     * cut at the room, never past it */
    {
        const char *in = "abcdefgh\"ijklmnopq\x01rstuvwxyz0123456789\xff-tail";
        mg_fmt_t full = fmt_over(1000);
        char all[512];
        size_t an;
        mg_fmt_json(&full, in, strlen(in), 400);
        an = full.len;
        memcpy(all, full.p, an);
        for (size_t room = 0; room <= an; room++) {
            mg_fmt_t b = fmt_over(room);
            mg_fmt_json(&b, in, strlen(in), 400);
            CHECK(b.len == room && memcmp(b.p, all, room) == 0 && guard_ok(room));
        }
    }
}

static void caps(void) {
    /* the appender never writes past cap, whatever is appended */
    mg_fmt_t b = fmt_over(10);
    char big[300];
    memset(big, '"', sizeof(big));
    mg_fmt_lit(&b, "0123456");
    mg_fmt_u64(&b, UINT64_MAX);
    CHECK_INT(b.len, 10);
    mg_fmt_json(&b, big, sizeof(big), 1000);
    mg_fmt_milli(&b, -123456);
    mg_fmt_iso_ms(&b, 0);
    mg_fmt_ch(&b, 'x');
    CHECK_INT(b.len, 10);
    CHECK_STR(fmt_str(&b), "0123456184");
    CHECK(guard_ok(10));
    /* a field's escape cap holds even with room in the line */
    b = fmt_over(4000);
    mg_fmt_json(&b, big, sizeof(big), 400);
    CHECK(b.len <= 399 && b.len >= 390 && b.len % 2 == 0);
    CHECK(guard_ok(4000));
}

/* gmtime + strftime, the oracle for the cached time */
static const char *iso_want(int64_t ms) {
    static char w[64];
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    size_t n;
    gmtime_r(&s, &tm);
    n = strftime(w, sizeof(w), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(w + n, sizeof(w) - n, ".%03dZ", (int)(ms % 1000));
    return w;
}
static const char *iso(int64_t ms) {
    mg_fmt_t b = fmt_over(64);
    mg_fmt_iso_ms(&b, ms);
    return fmt_str(&b);
}

static void iso_time_cached(void) {
    char out[MG_ISO_TIME_MAX];
    CHECK_STR(iso(0), "1970-01-01T00:00:00.000Z");
    /* across second, day, leap-day and year boundaries, and back */
    CHECK_STR(iso(951782399999LL), "2000-02-28T23:59:59.999Z");
    CHECK_STR(iso(951782400000LL), "2000-02-29T00:00:00.000Z");
    CHECK_STR(iso(951782400001LL), "2000-02-29T00:00:00.001Z");
    CHECK_STR(iso(951782399998LL), "2000-02-28T23:59:59.998Z");
    CHECK_STR(iso(1767225599999LL), "2025-12-31T23:59:59.999Z");
    CHECK_STR(iso(1767225600000LL), "2026-01-01T00:00:00.000Z");
    CHECK_STR(iso(1796172570801LL), "2026-12-02T00:49:30.801Z");
    CHECK_STR(iso(1796172570999LL), "2026-12-02T00:49:30.999Z");
    CHECK_STR(iso(1796172571000LL), "2026-12-02T00:49:31.000Z");
    CHECK_STR(iso(-5), "1970-01-01T00:00:00.000Z");
    for (int64_t ms = 1796172500000LL; ms < 1796172700000LL; ms += 997)
        CHECK_STR(iso(ms), iso_want(ms));
    /* the date worked out without gmtime: a second of every day from 1970
     * to 9999 (the step moves the time of day too), each month's first
     * and last second, and the years past 9999 (strftime's as ever) */
    for (int64_t s = 0; s < 253402300800LL; s += 86400 + 3607)
        CHECK_STR(iso(s * 1000 + 5), iso_want(s * 1000 + 5));
    CHECK_STR(iso(253402300799999LL), "9999-12-31T23:59:59.999Z");
    CHECK_STR(iso(253402300800000LL), iso_want(253402300800000LL));
    CHECK_STR(iso(4102444800000LL), "2100-01-01T00:00:00.000Z");
    CHECK_STR(iso(4107542399000LL), "2100-02-28T23:59:59.000Z");
    CHECK_STR(iso(4107542400000LL), "2100-03-01T00:00:00.000Z");
    /* mg_iso_time (double seconds) cuts the milliseconds, as it always did */
    CHECK_INT(mg_iso_time(out, 1796172570.9999), 24);
    CHECK_STR(out, "2026-12-02T00:49:30.999Z");
    mg_iso_time(out, 1796172571.0);
    CHECK_STR(out, "2026-12-02T00:49:31.000Z");
}

/* ---- the HTTP line ---- */

static char hbuf[16384];
static mg_hdr_t hdrs[16];
static mg_req_t req;
static mg_gen_t gen;
static mg_route_t route;
static mg_edge_t edge[1];
static int sess_token;
static mg_addr_t laddr[2];

static char peer_ip[MG_PEER_IP_MAX] = "192.0.2.7";
static const char *fake_peer_ip(const mg_req_t *r) {
    (void)r;
    return peer_ip;
}
static int fake_tls(const mg_req_t *r) {
    (void)r;
    return 0;
}
static mg_req_tls_t fake_tls_info_v;
static const mg_req_tls_t *fake_tls_info(const mg_req_t *r) {
    (void)r;
    return fake_tls_info_v.version ? &fake_tls_info_v : NULL;
}
static const mg_http_sess_ops_t fake_sess = {
    .peer_ip = fake_peer_ip, .tls = fake_tls, .tls_info = fake_tls_info};

static void request(const char *url, const char *const *kv) {
    memset(edge, 0, sizeof(edge));
    gen.edge = edge;
    gen.nedge = 1;
    gen.id = 7;
    gen.access_log = 1;
    memset(&route, 0, sizeof(route));
    route.rule = "/plain";
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, url, kv);
    req.path_len = (uint32_t)strlen(url);
    req.sess = &sess_token;
    req.sops = &fake_sess;
    req.gen = &gen;
    req.route = &route;
    req.lidx = 1;
    req.method = HTTP_GET;
    req.state = MG_REQ_DONE; /* a request whose head was whole */
    req.status = 200;
    req.bytes_out = 20;
    req.t_start = 1796172570.25; /* exact in binary: no rounding tie */
    strcpy(req.request_id, "f30837d3c1d9486988c2af90bb503389");
    snprintf(laddr[0].host, sizeof(laddr[0].host), "0.0.0.0");
    laddr[0].port = 8080;
    snprintf(laddr[1].host, sizeof(laddr[1].host), "127.0.0.1");
    laddr[1].port = 19093;
    mg_worker.laddr = laddr;
    mg_worker.nfd = 2;
}

static const char *line(const mg_req_tls_t *t, double now) {
    static char out[MG_ACCESS_LINE_MAX + 1];
    mg_fmt_t b = {out, 0, MG_ACCESS_LINE_MAX};
    mg_http_log_line(&b, &req, t, now);
    out[b.len] = '\0';
    return out;
}

/* the line as http.c printed it before (targets without a query: the
 * redaction is checked on its own below) */
static const char *old_line(const mg_req_tls_t *t, double now) {
    static char out[4096];
    char esc[400], path[400], more[2800], up[160] = "", ups[80] = "", tls[400] = "", ts[32],
                                          host[1220], ua[1220], lis[80] = "";
    const char *names[2] = {"Host", "User-Agent"};
    char *dst[2] = {host, ua};
    size_t pl = req.url_len < 300 ? req.url_len : 300;
    uint64_t in = req.body_rx + strlen(llhttp_method_name((llhttp_method_t)req.method)) +
                  req.url_len + 12 + 2;
    memcpy(path, req.hbuf, pl);
    path[pl] = '\0';
    old_escape(esc, sizeof(esc), path);
    if (t) {
        char sni[300];
        if (t->sni)
            old_escape(sni, sizeof(sni), t->sni);
        snprintf(tls, sizeof(tls), ",\"tls\":{\"version\":\"%s\",\"cipher\":\"%s\",\"sni\":%s%s%s}",
                 t->version, t->cipher, t->sni ? "\"" : "", t->sni ? sni : "null",
                 t->sni ? "\"" : "");
    }
    for (int k = 0; k < 2; k++) {
        char v[201];
        size_t len = 0;
        const char *h = mg_req_header(&req, names[k], &len);
        if (h == NULL) {
            snprintf(dst[k], 1220, "null");
            continue;
        }
        if (len > 200)
            len = 200;
        memcpy(v, h, len);
        v[len] = '\0';
        dst[k][0] = '"';
        old_escape(dst[k] + 1, 1218, v);
        len = strlen(dst[k]);
        dst[k][len] = '"';
        dst[k][len + 1] = '\0';
    }
    for (int i = 0; i < req.nhdrs; i++)
        in += req.hdrs[i].nlen + req.hdrs[i].vlen + 4;
    { /* the old mg_iso_time: strftime, the milliseconds cut */
        time_t sec = (time_t)req.t_start;
        struct tm tm;
        size_t tl;
        gmtime_r(&sec, &tm);
        tl = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(ts + tl, sizeof(ts) - tl, ".%03dZ", (int)((req.t_start - (double)sec) * 1000.0));
    }
    snprintf(lis, sizeof(lis), "%s:%d", laddr[req.lidx].host, laddr[req.lidx].port);
    snprintf(more, sizeof(more),
             ",\"remote\":\"%s\",\"host\":%s,\"listener\":\"%s\",\"user_agent\":%s",
             mg_req_client_ip(&req), host, lis, ua);
    if (req.up_addr) {
        snprintf(ups, sizeof(ups), ",\"upstream_status\":%d,\"upstream_ms\":%.3f", req.up_status,
                 req.up_ms);
        snprintf(up, sizeof(up), ",\"upstream_addr\":\"%s\"", req.up_addr);
    }
    /* the key order of the one-piece line (what a client and a route
     * repeat last); the values as ever */
    snprintf(out, sizeof(out),
             "{\"type\":\"access\",\"time\":%.3f,\"timestamp\":\"%s\",\"request_id\":\"%s\","
             "\"method\":\"%s\",\"path\":\"%s\",\"status\":%d,\"bytes\":%llu,"
             "\"duration_ms\":%.3f%s,\"bytes_in\":%llu,\"bytes_out\":%llu%s%s,\"route\":\"%s\","
             "\"generation\":%u%s}\n",
             req.t_start, ts, req.request_id, llhttp_method_name((llhttp_method_t)req.method), esc,
             req.status, (unsigned long long)req.bytes_out, (now - req.t_start) * 1000.0, ups,
             (unsigned long long)in, (unsigned long long)req.bytes_out, more, up,
             req.route ? (req.route->name ? req.route->name : req.route->rule) : "", req.gen->id,
             tls);
    return out;
}

static void http_line(void) {
    const char *kv[] = {"Host", "127.0.0.1:19093", "Accept", "*/*", NULL};
    request("/plain", kv);
    req.up_addr = "127.0.0.1:19001";
    req.up_status = 200;
    req.up_ms = 3.994;
    CHECK_STR(
        line(NULL, req.t_start + 0.0625),
        "{\"type\":\"access\",\"time\":1796172570.250,\"timestamp\":"
        "\"2026-12-02T00:49:30.250Z\",\"request_id\":\"f30837d3c1d9486988c2af90bb503389\","
        "\"method\":\"GET\",\"path\":\"/plain\",\"status\":200,\"bytes\":20,"
        "\"duration_ms\":62.500,\"upstream_status\":200,\"upstream_ms\":3.994,\"bytes_in\":59,"
        "\"bytes_out\":20,\"remote\":\"192.0.2.7\",\"host\":\"127.0.0.1:19093\",\"listener\":"
        "\"127.0.0.1:19093\",\"user_agent\":null,\"upstream_addr\":\"127.0.0.1:19001\","
        "\"route\":\"/plain\",\"generation\":7}\n");
    CHECK_STR(line(NULL, req.t_start + 0.0625), old_line(NULL, req.t_start + 0.0625));
    /* a head refused before it was whole: no method yet, not DELETE (0) */
    req.state = MG_REQ_HEAD;
    req.method = 0;
    CHECK(strstr(line(NULL, req.t_start), "\"method\":\"-\",") != NULL);
}

static void http_line_as_before(void) {
    /* each variation against the old formatter */
    static char ua[600], longpath[1200], hostile_host[300];
    mg_req_tls_t t = {"TLSv1.3", "TLS_AES_256_GCM_SHA384", "api.example.test", NULL};
    mg_req_tls_t t_nosni = {"TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", NULL, NULL};
    mg_req_tls_t t_bad = {"TLSv1.3", "TLS_AES_128_GCM_SHA256", "x\"\x01\xff", NULL};
    for (size_t i = 0; i < sizeof(ua) - 1; i++)
        ua[i] = "ab\"\\\x01\x7f\xe9z"[i % 8];
    for (size_t i = 0; i < sizeof(longpath) - 1; i++)
        longpath[i] = i == 0 ? '/' : "p\"\x7f/"[i % 4];
    for (size_t i = 0; i < sizeof(hostile_host) - 1; i++)
        hostile_host[i] = "\x01\""[i % 2];
    {
        const char *kv[] = {"host", "h.test", "User-Agent", "curl/8.0 \"quoted\"", NULL};
        request("/a/b", kv);
        CHECK_STR(line(NULL, req.t_start + 1.5), old_line(NULL, req.t_start + 1.5));
        CHECK_STR(line(&t, req.t_start + 1.5), old_line(&t, req.t_start + 1.5));
        CHECK_STR(line(&t_nosni, req.t_start), old_line(&t_nosni, req.t_start));
        CHECK_STR(line(&t_bad, req.t_start), old_line(&t_bad, req.t_start));
        req.route = NULL; /* no route: "" */
        req.status = 404;
        req.method = HTTP_DELETE;
        req.body_rx = 12345;
        CHECK_STR(line(NULL, req.t_start + 0.001953125), old_line(NULL, req.t_start + 0.001953125));
        route.name = "named route";
        req.route = &route;
        req.up_addr = "10.0.0.1:8080";
        req.up_status = 0;
        req.up_ms = 1234.5;
        CHECK_STR(line(NULL, req.t_start + 2), old_line(NULL, req.t_start + 2));
    }
    {
        const char *kv[] = {"User-Agent", ua,           "X-Other", "v", "HOST",
                            hostile_host, "User-Agent", "second",  NULL};
        request(longpath, kv); /* cut to 300, then escaped to at most 399 */
        CHECK_STR(line(&t, req.t_start + 0.25), old_line(&t, req.t_start + 0.25));
        req.lidx = 0;
        CHECK_STR(line(NULL, req.t_start + 0.25), old_line(NULL, req.t_start + 0.25));
        req.lidx = 5; /* not a listener: "" */
        mg_worker.nfd = 2;
        CHECK(strstr(line(NULL, req.t_start), "\"listener\":\"\"") != NULL);
    }
}

/* the redaction as http.c did it before its one pass (strchr per
 * parameter over a NUL-ended copy): the oracle for the in-place pass */
static size_t old_redact(char *path, size_t len) {
    static const char *secret[] = {"token", "access_token", "api_key", "apikey",
                                   "key",   "password",     "secret",  "jwt"};
    char *q = strchr(path, '?');
    while (q) {
        char *name = q + 1, *eq = strchr(name, '='), *amp = strchr(name, '&');
        if (eq && (amp == NULL || eq < amp)) {
            char dec[32];
            size_t nl = 0;
            for (char *c = name; c < eq && nl < sizeof(dec) - 1; c++) {
                char ch = *c;
                if (ch == '+') {
                    ch = ' ';
                } else if (ch == '%' && c + 2 < eq && isxdigit((unsigned char)c[1]) &&
                           isxdigit((unsigned char)c[2])) {
                    char hex[3] = {c[1], c[2], 0};
                    ch = (char)strtol(hex, NULL, 16);
                    c += 2;
                }
                dec[nl++] = ch;
            }
            for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
                if (nl == strlen(secret[i]) && strncasecmp(dec, secret[i], nl) == 0) {
                    char *end = amp ? amp : path + len;
                    size_t tail = (size_t)(path + len - end);
                    memmove(eq + 2, end, tail + 1);
                    eq[1] = '-';
                    len = (size_t)(eq + 2 - path) + tail;
                    amp = strchr(eq + 1, '&');
                    break;
                }
        }
        q = amp;
    }
    return len;
}

/* the in-place pass (a target with nothing to escape, redacted where it
 * is stored in the line) and the copy (a target to escape) against the
 * oracle, over queries with secrets first, last, empty, repeated, encoded,
 * without '=', and an '=' inside a value */
static void http_line_redacts_as_before(void) {
    static const char *q[] = {"?token=abc",
                              "?a=1&token=abc",
                              "?token=&x=1",
                              "?key=&key=&key=",
                              "?TOKEN=a=b&jwt=c&x",
                              "?%74oken=x&%6Bey=y&%6g=z",
                              "?access_token=1&api_key=2&apikey=3&password=4&secret=5",
                              "?tok=1&tokens=2&to+ken=3&=4&&&key",
                              "?x=token=1&key",
                              "??token=1",
                              "?i=2199",
                              "?k=%2&key=%",
                              "?a&b&c=&jwt=123456789012345678901234567890",
                              "?%61%63%63%65%73%73%5f%74%6f%6b%65%6e=long"};
    static const char *pre[] = {"/ws", "/a\"b", "/\x01"};
    int ok = 1;
    for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++)
        for (size_t j = 0; j < sizeof(pre) / sizeof(pre[0]); j++) {
            char url[200], want[400], esc[400], got[800];
            const char *at, *l;
            size_t wl;
            snprintf(url, sizeof(url), "%s%s", pre[j], q[i]);
            request(url, NULL);
            memcpy(want, url, strlen(url) + 1);
            wl = old_redact(want, strlen(url));
            want[wl] = '\0';
            old_escape(esc, sizeof(esc), want);
            snprintf(got, sizeof(got), "\"path\":\"%s\",", esc);
            l = line(NULL, req.t_start);
            at = strstr(l, got);
            if (at == NULL) {
                printf("# %s: %s\n", url, l);
                ok = 0;
            }
        }
    CHECK(ok);
    /* a target of 300 bytes of "key=&" grows by 60, under the cut */
    {
        static char url[400], want[500];
        url[0] = '/';
        url[1] = '?';
        for (size_t i = 2; i < 300; i++)
            url[i] = "key=&"[(i - 2) % 5];
        url[300] = '\0';
        request(url, NULL);
        memcpy(want, url, 301);
        want[old_redact(want, 300)] = '\0';
        CHECK(strstr(line(NULL, req.t_start), want) != NULL);
        CHECK(strlen(want) > 350);
    }
}

/* targets of 8 to 16 bytes, the query's '=' and '&' told by the plain
 * check's vectors (a query without a name of 3 bytes before an '=' is not
 * looked at again): every pair of pieces after a few prefixes, as before */
static void http_line_redacts_short(void) {
    static const char *piece[] = {"key=1", "jwt=", "a=1", "x",   "tok=",   "&",  "=",
                                  "?",     "ke=y", "KEY", "ab=", "%6Bey=", "i=2"};
    static const char *pre[] = {"/",        "/p",           "/abc",
                                "/abcdefg", "/abcdefghijk", "/abcdefghijklmnopq"};
    /* after the target in the head's buffer: bytes a mask that let them
     * in would take for the query's */
    const char *kv[] = {"?&=", "=&?=", NULL};
    int ok = 1, n = 0, n32 = 0;
    for (size_t p = 0; p < sizeof(pre) / sizeof(pre[0]); p++)
        for (size_t i = 0; i < sizeof(piece) / sizeof(piece[0]); i++)
            for (size_t j = 0; j < sizeof(piece) / sizeof(piece[0]); j++) {
                char url[64], want[128], got[256];
                size_t wl;
                snprintf(url, sizeof(url), "%s?%s%s", pre[p], piece[i], piece[j]);
                request(url, (i + j) % 2 ? kv : NULL);
                memcpy(want, url, strlen(url) + 1);
                wl = old_redact(want, strlen(url));
                want[wl] = '\0';
                snprintf(got, sizeof(got), "\"path\":\"%s\",", want);
                if (strstr(line(NULL, req.t_start), got) == NULL) {
                    printf("# %s: %s\n", url, want);
                    ok = 0;
                }
                n += strlen(url) >= 8 && strlen(url) <= 16;
                n32 += strlen(url) > 16 && strlen(url) <= 32;
            }
    CHECK(ok);
    CHECK(n > 200);   /* most of them in the one vector's range */
    CHECK(n32 > 200); /* and in the two vectors' */
}

/* the line's start, kept per second: its two times as the appends write
 * them, across seconds back and forth, before the epoch (not kept), past
 * the year 9999, a NaN start (0), and second 0 (the piece it starts as) */
static void http_line_time_kept(void) {
    static const double ts[] = {0.0,          0.5,           0.9995,          1.0,
                                59.999,       1796172570.25, 1796172570.999,  1796172571.0,
                                1796172570.5, -1.5,          -0.0004,         -1e300,
                                0.001,        3e11,          3e11 + 0.123,    1e300,
                                0.0 / 0.0,    1796172571.75, 1796172571.0005, 0.25};
    int ok = 1;
    request("/t", NULL);
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
        char want[256];
        mg_fmt_t w = {want, 0, sizeof(want)};
        int64_t ms;
        req.t_start = ts[i];
        ms = mg_fmt_round(ts[i] * 1000.0);
        mg_fmt_lit(&w, "{\"type\":\"access\",\"time\":");
        mg_fmt_milli(&w, ms);
        mg_fmt_lit(&w, ",\"timestamp\":\"");
        mg_fmt_iso_ms(&w, ms);
        mg_fmt_lit(&w, "\",\"request_id\":\"f30837d3c1d9486988c2af90bb503389\",\"method\":");
        want[w.len] = '\0';
        if (strncmp(line(NULL, 0), want, w.len) != 0) {
            printf("# %.17g: %s\n", ts[i], line(NULL, 0));
            ok = 0;
        }
    }
    CHECK(ok);
}

/* "remote" to "generation" kept: the address by its bytes (the same
 * buffer with another address is another line), the method's piece by
 * its number, a head refused before its method as "-" */
static void http_line_piece_kept(void) {
    request("/p", NULL);
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"192.0.2.7\",") != NULL);
    snprintf(peer_ip, sizeof(peer_ip), "192.0.2.70");
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"192.0.2.70\",") != NULL);
    snprintf(peer_ip, sizeof(peer_ip), "2001:db8::1");
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"2001:db8::1\",") != NULL);
    snprintf(peer_ip, sizeof(peer_ip), "2001:db8::2");
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"2001:db8::2\",") != NULL);
    snprintf(peer_ip, sizeof(peer_ip), "2001:db8:85a3::8a2e:370:7334"); /* past one vector */
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"2001:db8:85a3::8a2e:370:7334\",") != NULL);
    snprintf(peer_ip, sizeof(peer_ip), "2001:db8:85a3::8a2e:370:7335");
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"2001:db8:85a3::8a2e:370:7335\",") != NULL);
    peer_ip[0] = '\0';
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"\",") != NULL);
    req.sess = NULL; /* the client gone: "" */
    CHECK(strstr(line(NULL, req.t_start), ",\"remote\":\"\",") != NULL);
    req.sess = &sess_token;
    snprintf(peer_ip, sizeof(peer_ip), "192.0.2.7");
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    req.method = HTTP_POST;
    CHECK(strstr(line(NULL, req.t_start), "\"method\":\"POST\",\"path\":\"/p\",") != NULL);
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    req.state = MG_REQ_HEAD;
    CHECK(strstr(line(NULL, req.t_start), "\"method\":\"-\",\"path\":\"/p\",") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"bytes_in\":17,") != NULL); /* "-", "/p", 14 */
    req.state = MG_REQ_DONE;
    req.method = HTTP_GET;
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    /* the statuses by the three-digit table, and outside it */
    req.up_addr = "127.0.0.1:9";
    {
        static const int st[] = {0, 99, 100, 101, 200, 502, 999, 1000, -1, 12345};
        for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
            req.status = st[i];
            req.up_status = st[sizeof(st) / sizeof(st[0]) - 1 - i];
            CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
        }
    }
    req.up_addr = NULL;
    req.status = 200;
}

/* the escaped route kept from line to line: a name at the same address
 * in a new generation (the old one freed, its memory reused) is not the
 * old name; another route of the same generation is not either */
static void http_line_route_kept(void) {
    static char name[32];
    request("/r", NULL);
    snprintf(name, sizeof(name), "alpha \"1\"");
    route.name = name;
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"alpha \\\"1\\\"\",") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"alpha \\\"1\\\"\",") != NULL);
    snprintf(name, sizeof(name), "beta");
    gen.id = 8;
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"beta\",\"generation\":8") != NULL);
    route.name = "gamma";
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"gamma\",") != NULL);
    route.name = NULL; /* its rule */
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"/plain\",") != NULL);
    req.route = NULL;
    CHECK(strstr(line(NULL, req.t_start), "\"route\":\"\",") != NULL);
}

/* Host, listener and User-Agent kept from line to line: a line whose
 * values, listener or listeners' table differ is not the last one's */
static void http_line_client_kept(void) {
    const char *a[] = {"Host", "a.example", "User-Agent", "ua/1", NULL};
    const char *b[] = {"Host", "a.example", "User-Agent", "ua/2", NULL};
    const char *c[] = {"Host", "a.exampl\"", "User-Agent", "ua/2", NULL};
    const char *d[] = {"User-Agent", "ua/2", NULL};
    const char *e[] = {"Host", "a.example", NULL};
    static mg_addr_t other[2];
    request("/p", a);
    CHECK(strstr(line(NULL, req.t_start),
                 ",\"host\":\"a.example\",\"listener\":\"127.0.0.1:19093\","
                 "\"user_agent\":\"ua/1\"") != NULL);
    CHECK(strstr(line(NULL, req.t_start),
                 ",\"host\":\"a.example\",\"listener\":\"127.0.0.1:19093\","
                 "\"user_agent\":\"ua/1\"") != NULL);
    request("/p", b);
    CHECK(strstr(line(NULL, req.t_start), "\"user_agent\":\"ua/2\"") != NULL);
    request("/p", c);
    CHECK(strstr(line(NULL, req.t_start), "\"host\":\"a.exampl\\\"\",") != NULL);
    { /* 16 to 32 bytes: compared as two overlapping 16-byte halves */
        const char *f[] = {"Host", "h0123456789abcdef.xy", NULL};
        const char *g[] = {"Host", "h0123456789abXdef.xy", NULL};
        request("/p", f);
        CHECK(strstr(line(NULL, req.t_start), "\"host\":\"h0123456789abcdef.xy\",") != NULL);
        request("/p", g);
        CHECK(strstr(line(NULL, req.t_start), "\"host\":\"h0123456789abXdef.xy\",") != NULL);
    }
    request("/p", d);
    CHECK(strstr(line(NULL, req.t_start), "\"host\":null,") != NULL);
    request("/p", e);
    CHECK(strstr(line(NULL, req.t_start), "\"user_agent\":null,") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"host\":\"a.example\",") != NULL);
    req.lidx = 0;
    CHECK(strstr(line(NULL, req.t_start), "\"listener\":\"0.0.0.0:8080\"") != NULL);
    memcpy(other, laddr, sizeof(other));
    other[0].port = 8081;
    mg_worker.laddr = other;
    CHECK(strstr(line(NULL, req.t_start), "\"listener\":\"0.0.0.0:8081\"") != NULL);
    mg_worker.laddr = laddr;
    CHECK(strstr(line(NULL, req.t_start), "\"listener\":\"0.0.0.0:8080\"") != NULL);
}

/* the upstream server's name kept by its address: another is not it */
static void http_line_up_addr_kept(void) {
    static char s1[80] = "127.0.0.1:9001", s2[80] = "[::1]:9002";
    request("/p", NULL);
    req.up_status = 200;
    req.up_addr = s1;
    CHECK(strstr(line(NULL, req.t_start), "\"upstream_addr\":\"127.0.0.1:9001\",") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"upstream_addr\":\"127.0.0.1:9001\",") != NULL);
    req.up_addr = s2;
    CHECK(strstr(line(NULL, req.t_start), "\"upstream_addr\":\"[::1]:9002\",") != NULL);
    req.up_addr = NULL;
    CHECK(strstr(line(NULL, req.t_start), "upstream_addr") == NULL);
}

static void http_line_redacts(void) {
    request("/ws?token=s3cr3t&room=1&%74oken=x&API_KEY=k&key=&keep=me", NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"path\":\"/ws?token=-&room=1&%74oken=-&API_KEY=-&key=-"
                                          "&keep=me\"") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "s3cr3t") == NULL);
    /* the request's own bytes are untouched */
    CHECK(memcmp(req.hbuf, "/ws?token=s3cr3t", 16) == 0);
}

/* the head checks work out Host, User-Agent and the head's bytes while the
 * head is in cache (log_ready): the same line as looking them up at the end */
static int checked(int minor, const char *url, const char *const *kv) {
    llhttp_t p;
    request(url, kv);
    memset(&p, 0, sizeof(p));
    p.method = HTTP_GET;
    p.http_major = 1;
    p.http_minor = (uint8_t)minor;
    return mg_http_check_head(&req, &p);
}

static void http_line_head_checked(void) {
    const char *kv[] = {"X-A",          "1",          "user-agent", "UA/1 \"x\"", "Host",
                        "example.test", "User-Agent", "second",     NULL};
    const char *no_ua[] = {"Host", "example.test", NULL};
    const char *ten[] = {"User-Agent", "old/1.0", NULL};
    const char *bad[] = {"User-Agent", "u", "Host", "a\x01b", NULL};
    char want[4096];
    CHECK_INT(checked(1, "/x?y=1", kv), 0);
    CHECK(req.log_ready);
    snprintf(want, sizeof(want), "%s", line(NULL, req.t_start + 0.5));
    CHECK_STR(want, old_line(NULL, req.t_start + 0.5));
    CHECK(strstr(want, "\"host\":\"example.test\",") != NULL);
    CHECK(strstr(want, "\"user_agent\":\"UA/1 \\\"x\\\"\"") != NULL);
    CHECK_INT(checked(1, "/", no_ua), 0);
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    CHECK_INT(checked(0, "/", ten), 0); /* HTTP/1.0 without Host: null */
    CHECK(strstr(line(NULL, req.t_start), "\"host\":null,") != NULL);
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    /* absolute-form: the target's authority is the Host, the bytes follow */
    CHECK_INT(checked(1, "http://other.test:8080/p/q", kv), 0);
    CHECK(req.log_ready);
    CHECK(strstr(line(NULL, req.t_start), "\"path\":\"/p/q\"") != NULL);
    CHECK(strstr(line(NULL, req.t_start), "\"host\":\"other.test:8080\"") != NULL);
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
    /* refused in the middle of the checks: looked up at the end instead */
    CHECK_INT(checked(1, "/", bad), 400);
    CHECK(!req.log_ready);
    CHECK_STR(line(NULL, req.t_start), old_line(NULL, req.t_start));
}

/* every field at its worst at once: the line is bounded and still ends */
static void http_line_bounded(void) {
    static char ua[4000], host[4000], path[4000], rname[3000], up[1000];
    mg_req_tls_t t = {"TLSv1.3", "TLS_AES_256_GCM_SHA384", NULL, NULL};
    static char sni[1000];
    const char *kv[] = {"Host", host, "User-Agent", ua, NULL};
    const char *l;
    size_t n;
    memset(ua, '\x01', sizeof(ua) - 1);
    memset(host, '"', sizeof(host) - 1);
    memset(path, '\x7f', sizeof(path) - 1);
    path[0] = '/';
    memset(rname, '\\', sizeof(rname) - 1);
    memset(up, '\x02', sizeof(up) - 1);
    memset(sni, '\x03', sizeof(sni) - 1);
    t.sni = sni;
    request(path, kv);
    route.name = rname;
    req.up_addr = up;
    req.up_status = 502;
    req.up_ms = 1e300; /* saturated, never past the buffer */
    l = line(&t, 1e300);
    n = strlen(l);
    CHECK(n < 6000);
    CHECK(n >= 2 && l[n - 2] == '}' && l[n - 1] == '\n');
    CHECK(strchr(l, '\n') == l + n - 1);
    CHECK(strstr(l, "\"bytes_out\":20,") != NULL);
    CHECK(strstr(l, ",\"user_agent\":\"\\u0001") != NULL);
    /* a builder with too little room cuts, and the line still ends */
    {
        static char small[101];
        mg_fmt_t b = {small, 0, 100};
        memset(small, '#', sizeof(small));
        mg_http_log_line(&b, &req, &t, 1e300);
        CHECK_INT(b.len, 100);
        CHECK(small[98] == '}' && small[99] == '\n' && small[100] == '#');
    }
}

/* a builder short of room for the line's worst case: the line built aside
 * is cut where the checked appends cut it, "}\n" kept, nothing past cap */
static void http_line_short_builder(void) {
    static char small[4096];
    mg_req_tls_t t = {"TLSv1.3", "TLS_AES_256_GCM_SHA384", "sni.test", NULL};
    const char *kv[] = {"Host", "h.test", "User-Agent", "ua \"1\"", NULL};
    char whole[4096];
    size_t wl;
    request("/p?x=1&token=t", kv);
    req.up_addr = "127.0.0.1:1";
    req.up_status = 200;
    req.up_ms = 1.5;
    snprintf(whole, sizeof(whole), "%s", line(&t, req.t_start + 0.5));
    wl = strlen(whole);
    CHECK(wl > 300 && wl < sizeof(whole) - 1);
    for (size_t cap = 2; cap <= wl + 2; cap++) {
        mg_fmt_t b = {small, 0, cap};
        size_t want = cap < wl ? cap : wl;
        memset(small, '#', sizeof(small));
        mg_http_log_line(&b, &req, &t, req.t_start + 0.5);
        CHECK_INT(b.len, want);
        CHECK(memcmp(small, whole, want - 2) == 0 && memcmp(small + want - 2, "}\n", 2) == 0);
        CHECK(small[cap] == '#');
    }
    /* a TLS name longer than any OpenSSL's is cut at MG_HTTP_LOG_TLS_NAME */
    {
        static char longname[300];
        memset(longname, 'C', sizeof(longname) - 1);
        t.cipher = longname;
        CHECK(strstr(line(&t, req.t_start), "\"cipher\":\"CCCC") != NULL);
        CHECK_INT(strlen(line(&t, req.t_start + 0.5)),
                  wl - strlen("TLS_AES_256_GCM_SHA384") + MG_HTTP_LOG_TLS_NAME);
    }
}

/* ---- the buffer and the WebSocket line, through a file ---- */

static char *read_all(const char *path, size_t *n) {
    static char out[1 << 20];
    int fd = open(path, O_RDONLY);
    ssize_t k;
    *n = 0;
    if (fd < 0)
        return NULL;
    while ((k = read(fd, out + *n, sizeof(out) - 1 - *n)) > 0)
        *n += (size_t)k;
    close(fd);
    out[*n] = '\0';
    return out;
}

static void buffer_and_ws_line(void) {
    char path[] = "/tmp/moongate-ct-alog-XXXXXX";
    int fd = mkstemp(path);
    size_t n;
    char *all, *p;
    int count = 0, ok = 1;
    mg_http_wslog_t *a;
    uint64_t msgs[2] = {3, 4};
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    close(fd);
    mg_access_log_open(path);
    /* 1000 lines of ~330 bytes: several 64 KiB flushes, each line whole and in order */
    for (int i = 0; i < 1000; i++) {
        mg_fmt_t b;
        mg_access_log_begin(&b, MG_ACCESS_LINE_MAX);
        mg_fmt_lit(&b, "{\"n\":");
        mg_fmt_u64(&b, (uint64_t)i);
        mg_fmt_lit(&b, ",\"pad\":\"");
        for (int k = 0; k < 32; k++)
            mg_fmt_lit(&b, "0123456789");
        mg_fmt_ch(&b, '"');
        mg_http_log_end(&b);
        mg_access_log_commit(&b);
    }
    {
        const char *kv[] = {"Host", "h", "User-Agent", "python-websockets/11", NULL};
        request("/ws?token=abc", kv);
        route.name = "chat";
        req.status = 101;
        a = mg_http_wslog_new(&req);
        CHECK(a != NULL);
        mg_http_wslog_end(a, 3 /* handler */, 1000, "client", msgs, 111, 222);
        fake_tls_info_v = (mg_req_tls_t){"TLSv1.3", "TLS_AES_128_GCM_SHA256", "h", NULL};
        a = mg_http_wslog_new(&req);
        fake_tls_info_v.version = NULL;
        mg_http_wslog_end(a, 1 /* tunnel */, 0, "upstream", NULL, 5, 6);
        gen.access_log = 0;
        CHECK(mg_http_wslog_new(&req) == NULL);
        gen.access_log = 1;
    }
    mg_access_log_flush();
    mg_access_log_open("stderr");
    all = read_all(path, &n);
    unlink(path);
    CHECK(all != NULL);
    if (all == NULL)
        return;
    for (p = all; count < 1000 && *p; count++) {
        char want[32];
        char *nl = strchr(p, '\n');
        int wl = snprintf(want, sizeof(want), "{\"n\":%d,\"pad\":\"", count);
        if (nl == NULL || strncmp(p, want, wl) != 0 || nl[-1] != '}' || nl - p != wl + 320 + 2)
            ok = 0;
        p = nl ? nl + 1 : p + strlen(p);
    }
    CHECK(ok);
    CHECK_INT(count, 1000);
    /* the handler session's line: duration from the clock, the rest exact */
    {
        const char *head = "{\"type\":\"access\",\"time\":1796172570.250,\"request_id\":"
                           "\"f30837d3c1d9486988c2af90bb503389\",\"remote\":\"192.0.2.7\","
                           "\"method\":\"GET\",\"path\":\"/ws?token=-\",\"status\":101,"
                           "\"timestamp\":\"2026-12-02T00:49:30.250Z\",\"host\":\"h\","
                           "\"listener\":\"127.0.0.1:19093\",\"user_agent\":"
                           "\"python-websockets/11\",\"bytes\":222,\"duration_ms\":";
        const char *tail =
            ",\"route\":\"chat\",\"generation\":7,\"bytes_in\":111,\"bytes_out\":222,"
            "\"websocket\":{\"mode\":\"handler\",\"close_code\":1000,\"close_by\":"
            "\"client\",\"messages_in\":3,\"messages_out\":4,\"bytes_in\":111,"
            "\"bytes_out\":222}}\n";
        const char *tls_head = "\"user_agent\":\"python-websockets/11\",\"tls\":{\"version\":"
                               "\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\",\"sni\":\"h\"},"
                               "\"bytes\":6,\"duration_ms\":";
        const char *tun_tail =
            ",\"route\":\"chat\",\"generation\":7,\"bytes_in\":5,\"bytes_out\":6,"
            "\"websocket\":{\"mode\":\"tunnel\",\"close_code\":null,\"close_by\":"
            "\"upstream\",\"bytes_in\":5,\"bytes_out\":6}}\n";
        char *l1 = p, *l2 = strchr(p, '\n');
        CHECK(strncmp(l1, head, strlen(head)) == 0);
        CHECK(l2 != NULL && strncmp(l2 + 1 - strlen(tail), tail, strlen(tail)) == 0);
        if (l2) {
            CHECK(strstr(l2 + 1, tls_head) != NULL);
            CHECK(strlen(l2 + 1) > strlen(tun_tail) &&
                  strcmp(l2 + 1 + strlen(l2 + 1) - strlen(tun_tail), tun_tail) == 0);
        }
    }
}

int main(void) {
    CT_RUN(fixed_point_ms);
    CT_RUN(integers);
    CT_RUN(short_copies);
    CT_RUN(escaping);
    CT_RUN(escaping_swar);
    CT_RUN(caps);
    CT_RUN(iso_time_cached);
    CT_RUN(http_line_time_kept); /* first: the line's start as it starts, second 0's */
    CT_RUN(http_line);
    CT_RUN(http_line_as_before);
    CT_RUN(http_line_route_kept);
    CT_RUN(http_line_client_kept);
    CT_RUN(http_line_up_addr_kept);
    CT_RUN(http_line_piece_kept);
    CT_RUN(http_line_redacts);
    CT_RUN(http_line_redacts_as_before);
    CT_RUN(http_line_redacts_short);
    CT_RUN(http_line_head_checked);
    CT_RUN(http_line_bounded);
    CT_RUN(http_line_short_builder);
    CT_RUN(buffer_and_ws_line);
    return ct_end();
}
