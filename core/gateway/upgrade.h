/*
 * upgrade.h -- inside the gateway's WebSocket upgrade: what upgrade.c hands
 * the mode it starts once the upstream accepted (tunnel.c, relay.c).
 */
#ifndef MG_UPGRADE_H
#define MG_UPGRADE_H

#include "gateway/gateway.h"

/* An upgrade waiting for the upstream, then handed on. */
typedef struct {
    mg_io_t cio; /* the client's connection */
    mg_gen_t *gen;
    mg_route_t *route;
    int mode;
    mg_ws_hs_t hs;
    char key[32]; /* relay: our key to the upstream */
    char *pre;    /* client bytes read past its head */
    size_t pre_len;
    int status; /* non-101 answer being relayed */
    struct evbuffer *resp;
    char request_id[40];
    int ctx_ref; /* req.ctx for the relay's hooks */
    mg_http_wslog_t *alog;
    int met, met_m; /* the request's metrics labels: route, method class */
    double t_start; /* when its head began */
    int ok_status;  /* what the client is told on success: 101, or 200 (RFC 8441) */
} mg_upgrade_t;

/* Each takes the upstream's connection (uio), and from p the client's
 * connection and whatever else it keeps (alog; the relay ctx_ref too),
 * even when it fails; the caller frees p and what is left in it. extra:
 * the upstream's bytes read past its 101. */
void mg_tunnel_start(mg_upgrade_t *p, mg_io_t *uio, const char *extra, size_t extralen);
void mg_relay_start(mg_upgrade_t *p, mg_io_t *uio, const char *extra, size_t extralen);

#endif
