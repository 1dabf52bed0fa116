/*
 * loop.h -- one worker's shared machinery: the event base and the worker
 * record (its listening sockets, counters, scratch memory), libevent's
 * common timeouts (mg_timeout_tv; the hot timeouts use timer.h instead),
 * the clock, random numbers and request ids (loop.c).
 */
#ifndef MG_LOOP_H
#define MG_LOOP_H

#include "base/base.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

/* A listening address as configured. */
typedef struct {
    char host[64];
    int proxy_protocol; /* a PROXY v1/v2 header comes first (http/proxy_proto.c) */
    int port;
    int server; /* 0 = the main route table, then conf.servers in name order */
    int tls;    /* a TLS listener (the conf's or server's tls.listen) */
    int admin;  /* the admin listener (admin.listen): gateway/admin.c answers, never routed */
    int h2; /* speaks HTTP/2 (http/h2.c): ALPN h2 (TLS: tls.http2), prior knowledge (plain: h2c) */
} mg_addr_t;

typedef struct {
    struct event_base *base;
    int id;
    int nfd;
    int *fds;         /* listening sockets of this worker */
    mg_addr_t *laddr; /* their addresses (as at startup), same order */
    struct event **lev;
    int stopping;
    uint64_t active;   /* connections open */
    uint64_t inflight; /* requests in progress */
    /* TLS handshakes that failed (bad or truncated ClientHello, no shared
     * cipher, a client certificate refused, a close mid-handshake):
     * counted by net/tls.c, which logs at most once per second with the
     * count since its last line */
    uint64_t tls_failed;        /* since the worker started */
    uint64_t tls_failed_logged; /* tls_failed at the last log line */
    double tls_failed_reported; /* mg_now() of that line */
    char scratch[MG_READ_CHUNK];
    uint64_t rng[2];
    const struct timeval *ct[8]; /* common timeouts */
} mg_worker_t;

extern mg_worker_t mg_worker;
void mg_loop_log_init(void); /* libevent's messages through mg_log */
const struct timeval *mg_timeout_tv(int ms);
double mg_now(void);
double mg_now_coarse(void);    /* mg_now to the kernel's tick */
uint64_t mg_rng_next(void);    /* the worker's xorshift128+ (request ids, WebSocket masks) */
void mg_request_id(char *out); /* 32 hex chars + NUL */

#endif
