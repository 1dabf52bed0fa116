/*
 * alog.c -- the access-log line of an upgraded request: a WebSocket
 * session, written when the session ends, in the HTTP lines' format plus a
 * "websocket" object. It lives below the sessions' owners (the Lua handler
 * mode in lua/, the tunnel and the relay in gateway/), which hand in how it
 * ended and what it carried as plain values.
 */
#include "http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mg_http_wslog_s {
    double t_start;
    const char *route; /* the route's name or rule: the session holds its generation */
    unsigned gen_id;
    uint64_t req_in;   /* the upgrade request's bytes: line, headers, blank line */
    size_t status_off; /* where the status's three digits are in head */
    size_t head_len;
    char head[]; /* the line up to "bytes" */
};

mg_http_wslog_t *mg_http_wslog_new(mg_req_t *r) {
    char head[MG_HTTP_LOG_WORST]; /* the parts append unchecked */
    mg_fmt_t b = {head, 0, sizeof(head)};
    mg_http_wslog_t *a;
    const mg_req_tls_t *t;
    int64_t t_ms;
    if (mg_http_log_off(r))
        return NULL;
    t = mg_req_tls_info(r);
    t_ms = mg_fmt_round(r->t_start * 1000.0);
    size_t status_off;
    uint64_t in;
    if (r->h2_ws) { /* RFC 8441: the stream's CONNECT, answered 200 */
        mg_http_log_start(&b, r, t_ms, "CONNECT");
        mg_fmt_put_lit(&b, ",\"protocol\":\"HTTP/2.0\",\"status\":200");
    } else {
        mg_http_log_start(&b, r, t_ms, "GET");
        mg_fmt_put_lit(&b, ",\"status\":101");
    }
    status_off = b.len - 3;
    in = mg_http_log_fields(&b, r, t_ms) + (r->h2_ws ? 7 : 3) + r->url_len + 12 + 2;
    mg_fmt_put_ch(&b, ',');
    if (t) { /* wss://: the HTTP lines' tls object */
        mg_http_log_tls(&b, t);
        mg_fmt_put_ch(&b, ',');
    }
    a = malloc(sizeof(*a) + b.len);
    if (a == NULL)
        return NULL;
    a->t_start = r->t_start;
    a->route = r->route ? (r->route->name ? r->route->name : r->route->rule) : NULL;
    a->gen_id = r->gen->id;
    a->req_in = in;
    a->status_off = status_off;
    a->head_len = b.len;
    memcpy(a->head, head, b.len);
    return a;
}

/* The fields after the head that every line of a session has. */
static void mg_http_wslog_tail(mg_fmt_t *b, const mg_http_wslog_t *a, uint64_t out) {
    mg_fmt_mem(b, a->head, a->head_len);
    mg_fmt_lit(b, "\"bytes\":");
    mg_fmt_u64(b, out);
    mg_fmt_lit(b, ",\"duration_ms\":");
    mg_fmt_milli(b, mg_fmt_round((mg_now() - a->t_start) * 1e6));
    mg_fmt_lit(b, ",\"route\":\"");
    if (a->route)
        mg_fmt_json(b, a->route, SIZE_MAX, 400);
    mg_fmt_lit(b, "\",\"generation\":");
    mg_fmt_u64(b, a->gen_id);
}

void mg_http_wslog_refused(mg_http_wslog_t *a, int status, int up_status, uint64_t out) {
    mg_fmt_t b;
    if (a == NULL)
        return;
    if (status >= 100 && status <= 599) { /* the head said 101 (or 200): the real answer */
        a->head[a->status_off] = (char)('0' + status / 100);
        a->head[a->status_off + 1] = (char)('0' + status / 10 % 10);
        a->head[a->status_off + 2] = (char)('0' + status % 10);
    }
    mg_access_log_begin(&b, MG_ACCESS_LINE_MAX);
    mg_http_wslog_tail(&b, a, out);
    if (up_status) {
        mg_fmt_lit(&b, ",\"upstream_status\":");
        mg_fmt_i64(&b, up_status);
    }
    mg_fmt_lit(&b, ",\"bytes_in\":");
    mg_fmt_u64(&b, a->req_in);
    mg_fmt_lit(&b, ",\"bytes_out\":");
    mg_fmt_u64(&b, out);
    mg_http_log_end(&b);
    mg_access_log_commit(&b);
    free(a);
}

void mg_http_wslog_end(mg_http_wslog_t *a, int mode, int code, const char *by, const uint64_t *msgs,
                       uint64_t in, uint64_t out) {
    static const char *modes[] = {"", "tunnel", "relay", "handler"};
    mg_fmt_t b;
    if (a == NULL)
        return;
    mg_access_log_begin(&b, MG_ACCESS_LINE_MAX);
    mg_http_wslog_tail(&b, a, out);
    mg_fmt_lit(&b, ",\"bytes_in\":");
    mg_fmt_u64(&b, in);
    mg_fmt_lit(&b, ",\"bytes_out\":");
    mg_fmt_u64(&b, out);
    if (msgs) {
        mg_fmt_lit(&b, ",\"websocket\":{\"mode\":\"");
        mg_fmt_str(&b, modes[mode]);
        mg_fmt_lit(&b, "\",\"close_code\":");
        mg_fmt_i64(&b, code);
        mg_fmt_lit(&b, ",\"close_by\":\"");
        mg_fmt_str(&b, by);
        mg_fmt_lit(&b, "\",\"messages_in\":");
        mg_fmt_u64(&b, msgs[0]);
        mg_fmt_lit(&b, ",\"messages_out\":");
        mg_fmt_u64(&b, msgs[1]);
    } else { /* a tunnel does not parse frames: no close code, no message counts */
        mg_fmt_lit(&b, ",\"websocket\":{\"mode\":\"tunnel\",\"close_code\":null,\"close_by\":\"");
        mg_fmt_str(&b, by);
        mg_fmt_ch(&b, '"');
    }
    mg_fmt_lit(&b, ",\"bytes_in\":");
    mg_fmt_u64(&b, in);
    mg_fmt_lit(&b, ",\"bytes_out\":");
    mg_fmt_u64(&b, out);
    mg_fmt_ch(&b, '}');
    mg_http_log_end(&b);
    mg_access_log_commit(&b);
    free(a);
}
