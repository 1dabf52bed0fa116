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
    const char *route; /* the route's name: the session holds its generation */
    unsigned gen_id;
    char head[]; /* the line up to "status" */
};

mg_http_wslog_t *mg_http_wslog_new(mg_req_t *r) {
    char esc[400], head[4096], more[2700];
    mg_http_wslog_t *a;
    const mg_req_tls_t *t = mg_req_tls_info(r);
    char tls[400] = "", sni[300];
    int n;
    if (mg_http_log_off(r))
        return NULL;
    mg_http_log_path(r, esc, sizeof(esc));
    mg_http_log_fields(r, more, sizeof(more));
    if (t) { /* wss://: the HTTP lines' tls object */
        if (t->sni)
            mg_json_escape(sni, sizeof(sni), t->sni);
        snprintf(tls, sizeof(tls), "\"tls\":{\"version\":\"%s\",\"cipher\":\"%s\",\"sni\":%s%s%s},",
                 t->version ? t->version : "", t->cipher ? t->cipher : "", t->sni ? "\"" : "",
                 t->sni ? sni : "null", t->sni ? "\"" : "");
    }
    n = snprintf(head, sizeof(head),
                 "{\"type\":\"access\",\"time\":%.3f,\"request_id\":\"%s\",\"remote\":\"%s\","
                 "\"method\":\"GET\",\"path\":\"%s\",\"status\":101%s,%s",
                 r->t_start, r->request_id, mg_req_client_ip(r), esc, more, tls);
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    a = malloc(sizeof(*a) + n + 1);
    if (a == NULL)
        return NULL;
    a->t_start = r->t_start;
    a->route = r->route->name ? r->route->name : r->route->rule;
    a->gen_id = r->gen->id;
    memcpy(a->head, head, n + 1);
    return a;
}

void mg_http_wslog_end(mg_http_wslog_t *a, int mode, int code, const char *by, const uint64_t *msgs,
                       uint64_t in, uint64_t out) {
    static const char *modes[] = {"", "tunnel", "relay", "handler"};
    char line[5120], ws[320];
    int n;
    if (a == NULL)
        return;
    if (msgs)
        snprintf(ws, sizeof(ws),
                 "\"mode\":\"%s\",\"close_code\":%d,\"close_by\":\"%s\",\"messages_in\":%llu,"
                 "\"messages_out\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu",
                 modes[mode], code, by, (unsigned long long)msgs[0], (unsigned long long)msgs[1],
                 (unsigned long long)in, (unsigned long long)out);
    else /* a tunnel does not parse frames: no close code, no message counts */
        snprintf(ws, sizeof(ws),
                 "\"mode\":\"tunnel\",\"close_code\":null,\"close_by\":\"%s\",\"bytes_in\":%llu,"
                 "\"bytes_out\":%llu",
                 by, (unsigned long long)in, (unsigned long long)out);
    n = snprintf(line, sizeof(line),
                 "%s\"bytes\":%llu,\"duration_ms\":%.3f,\"route\":\"%s\",\"generation\":%u,"
                 "\"bytes_in\":%llu,\"bytes_out\":%llu,\"websocket\":{%s}}\n",
                 a->head, (unsigned long long)out, (mg_now() - a->t_start) * 1000.0, a->route,
                 a->gen_id, (unsigned long long)in, (unsigned long long)out, ws);
    if (n > 0)
        mg_access_log_write(line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
    free(a);
}
