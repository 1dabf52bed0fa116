/*
 * fwd.c -- the forwarding headers, for every request moongate sends on to
 * an upstream (the proxy's request head and the WebSocket upgrade of the
 * tunnel and the relay): the names a Connection header lists, which a
 * proxy removes with the hop-by-hop headers (RFC 9110 7.6.1), and the
 * X-Forwarded-Proto value, decided here only.
 */
#include "mg.h"

#include <string.h>
#include <strings.h>

void mg_fwd_conn_tokens(mg_fwd_tokens_t *t, const char *v, size_t len) {
    size_t i = 0;
    while (i < len && t->count < MG_FWD_TOKENS_MAX) {
        size_t s;
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < len && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i > s) {
            t->n[t->count] = v + s;
            t->l[t->count++] = i - s;
        }
    }
}

int mg_fwd_tokens_has(const mg_fwd_tokens_t *t, const char *n, size_t l) {
    for (int i = 0; i < t->count; i++)
        if (t->l[i] == l && strncasecmp(t->n[i], n, l) == 0)
            return 1;
    return 0;
}

const char *mg_fwd_proto(const mg_req_t *r, size_t *len) {
    if (r->conn && r->conn->is_tls) {
        *len = 5;
        return "https";
    }
    *len = 4;
    return "http";
}
