/*
 * upstream_int.h -- what upstream.c gives health.c: a peer's active-health
 * state (kept in the peer, which upstream.c owns) and the few peer fields
 * a check needs.
 */
#ifndef MG_UPSTREAM_INT_H
#define MG_UPSTREAM_INT_H

#include "upstream/upstream.h"

#include <sys/socket.h>

typedef struct {
    char name[80]; /* "host:port", for logs (stable: peers are never freed) */
    int on;        /* an upstream of the current generation checks it */
    int down;      /* marked down: no traffic until it passes `rise` checks */
    int oks;       /* consecutive checks passed */
    int fails;     /* consecutive checks failed */
    int last_status;
    double last; /* mg_now() of the last check's end; 0: none yet */
    uint64_t ok_total, failed_total;
    uint64_t ejections; /* times it was marked down with a check on */
} mg_peer_hc_t;

mg_peer_hc_t *mg_up_peer_hc(mg_peer_t *p);
/* The worker's peers: mg_up_peer_next(NULL) is the first. */
mg_peer_t *mg_up_peer_next(mg_peer_t *p);
const char *mg_up_peer_host(const mg_peer_t *p);
/* Its address (0: it did not resolve). */
int mg_up_peer_addr(const mg_peer_t *p, struct sockaddr_storage *ss, socklen_t *len);
int mg_up_peer_is_tls(const mg_peer_t *p);
/* Marked down (1) or up again (0): while down the passive mark holds it
 * (down_until for ever), so every reader of passive health agrees. */
void mg_up_peer_mark(const char *upname, mg_peer_t *p, int down); /* upname NULL: not known */
/* A failed request on a server its upstream checks: counted against
 * max_fails, whose ejection lasts until the server rises (1), or 0 when
 * the server is not checked (the passive rule applies). */
int mg_up_hc_failed(mg_upstream_t *up, mg_peer_t *p);
/* A server not marked down by its checks, from the next in turn; NULL if none. */
mg_peer_t *mg_up_hc_pick(mg_upstream_t *up, int *idx);

#endif
