/*
 * upstream.h -- upstream servers (peers, their pools and health) and
 * exchanges: one HTTP/1.1 request and response with an upstream, streamed
 * both ways through a sink of callbacks (upstream.c).
 */
#ifndef MG_UPSTREAM_H
#define MG_UPSTREAM_H

#include "conf/conf.h"
#include "net/io.h"

#include <llhttp.h>

typedef struct mg_ux_s mg_ux_t;

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
     * hands it to the sink, which takes it from io (mg_io_move; what it
     * leaves there is closed after the call), with the response headers
     * and any bytes read past the head. The exchange ends there. */
    void (*on_upgrade)(void *ud, mg_io_t *io, mg_kv_t *hdrs, int nhdrs, const char *extra,
                       size_t extralen);
} mg_ux_sink_t;

/* Starts an exchange; takes ownership of `head` (an evbuffer with the full
 * request head). Body bytes follow with mg_ux_send(); mg_ux_end() marks the
 * end of the request. The sink is called until on_done/on_error, after which
 * the exchange frees itself. */
mg_ux_t *mg_ux_start(mg_upstream_t *up, struct evbuffer *head, int idempotent, int head_only,
                     const mg_ux_sink_t *sink, void *ud, int timeout_ms);
/* An empty evbuffer for mg_ux_start's head, from the exchanges' recycled
 * ones (evbuffer_new when none is left); NULL when out of memory. */
struct evbuffer *mg_ux_buf_new(void);
void mg_ux_send(mg_ux_t *ux, const char *data, size_t len);
void mg_ux_end(mg_ux_t *ux);
size_t mg_ux_pending(mg_ux_t *ux); /* request bytes not yet written */
void mg_ux_pause(mg_ux_t *ux, int on);
void mg_ux_cancel(mg_ux_t *ux); /* the sink is gone: no more callbacks */
/* The server an exchange is on or last tried ("host:port"), or NULL. */
const char *mg_ux_peer_name(const mg_ux_t *ux);
/* How long the exchange took (ms), from mg_ux_start to its end as the
 * upstream saw it (before the sink's on_done or on_error), or so far:
 * the clock read the metrics take, shared with the access log. */
double mg_ux_ms(const mg_ux_t *ux);

/* ---- health (upstream.c, health.c) ----
 * A server is healthy unless marked down passively (max_fails failures in
 * a row: skipped for fail_timeout, or, when its upstream has a
 * health_check, until it rises again) or by its active health check (fall
 * failures in a row; rise passes bring it back). Each worker checks the
 * servers of its current generation's upstreams itself: the state is this
 * worker's. */
typedef struct {
    int healthy;       /* gets traffic */
    int checked;       /* an active health check runs for it */
    int active_down;   /* marked down until it rises (by its checks, or max_fails with checks) */
    int passive_down;  /* within fail_timeout after max_fails failures (no checks) */
    int fails;         /* consecutive failed requests (passive) */
    int last_status;   /* the last check's status (0: no answer, or none yet) */
    double last_check; /* when the last check ended (mg_now clock; 0: none yet) */
    uint64_t checks_ok, checks_failed;
    uint64_t ejections; /* marked down while checked */
} mg_up_health_t;
void mg_up_peer_health(const mg_peer_t *p, mg_up_health_t *h);
/* "host:port" (kept as long as the worker: peers are never freed). */
const char *mg_up_peer_name(const mg_peer_t *p);
/* The active checks of gen's upstreams replace the running ones (a
 * generation became current); NULL stops them all. health.c. */
void mg_up_health_start(mg_gen_t *gen);
/* The worker's peer for host:port, plain or TLS (tls: pools apart). */
mg_peer_t *mg_up_peer_get(const char *host, int port, int tls);
void mg_up_peer_str(mg_peer_t *p, char *buf, size_t len);
/* A peer as this worker sees it, for the admin API (gateway/admin.c). */
typedef struct {
    int healthy; /* not marked down by the passive checks */
    int fails;   /* consecutive failures */
    int idle;    /* pooled connections */
    int tls;
} mg_up_peer_stat_t;
void mg_up_peer_stat(const mg_peer_t *p, mg_up_peer_stat_t *s);

#endif
