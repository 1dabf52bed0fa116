/*
 * ws.h -- the ws layer: WebSocket sockets (RFC 6455, RFC 7692) on top of
 * wslay, over a transport (net/io.h): one endpoint, client- or server-side,
 * owned by the handler mode (lua/lua_ws.c) or the relay (gateway/relay.c);
 * its life, reading and heartbeats (ws.c), writing and the close (ws_send.c)
 * and the pure parts of the opening handshake (ws_handshake.c). Reading the
 * handshake from a request is the gateway's (gateway/upgrade.c).
 */
#ifndef MG_WS_H
#define MG_WS_H

#include "conf/conf.h"
#include "net/io.h"

#include <wslay/wslay.h>
#include <zlib.h>

typedef struct mg_ws_s mg_ws_t;

/* What one endpoint carried, for the access log: whole messages and their
 * payload bytes (after inflating), each way. */
typedef struct {
    uint64_t msgs_in, msgs_out;
    uint64_t bytes_in, bytes_out;
} mg_ws_stats_t;

/* How a session ended, for its access-log line. */
typedef struct {
    int code;       /* close code of the close handshake; 1006 = none */
    const char *by; /* "client", "upstream", "moongate" or "none" */
} mg_ws_end_t;

/* What the owner of a socket (handler coroutine, relay) hears. */
typedef struct {
    /* A complete message; borrowed until return. */
    void (*on_message)(void *ud, mg_ws_t *ws, int opcode, const char *data, size_t len);
    /* The socket is gone (closed handshake done, error, or timeout). The
     * socket is freed right after this returns. */
    void (*on_close)(void *ud, mg_ws_t *ws, int code, const char *reason);
    /* Queued output dropped below the low-water mark. */
    void (*on_drain)(void *ud, mg_ws_t *ws);
    /* The peer broke the protocol: reading has stopped and the close (with
     * its code) is queued. NULL: it goes out after what is queued. */
    void (*on_fail)(void *ud, mg_ws_t *ws);
} mg_ws_ops_t;

/* Handshake result carried from the HTTP request to the socket. */
typedef struct {
    char accept[32];    /* Sec-WebSocket-Accept */
    char protocol[64];  /* chosen subprotocol or "" */
    int pmd;            /* permessage-deflate negotiated */
    int pmd_client_nct; /* client_no_context_takeover */
    char pmd_resp[160]; /* the extension line we answer with */
} mg_ws_hs_t;

/* ws.c: a socket's life and reading */
/* Takes the connection from io (mg_io_move: io is left empty), also when
 * it fails (NULL: the connection is closed). */
mg_ws_t *mg_ws_new(mg_io_t *io, int client, mg_gen_t *gen, mg_route_t *route, const mg_ws_hs_t *hs,
                   const char *pre, size_t pre_len, const mg_ws_ops_t *ops, void *ud);
void mg_ws_abort(mg_ws_t *ws); /* drop without a close handshake; no callbacks */
void mg_ws_set_owner(mg_ws_t *ws, const mg_ws_ops_t *ops, void *ud);
const mg_ws_stats_t *mg_ws_stats(mg_ws_t *ws);
double mg_ws_last_rx(mg_ws_t *ws); /* when the peer's last bytes came */
/* Who closed and with which code, as seen when on_close runs. */
void mg_ws_end_info(mg_ws_t *ws, mg_ws_end_t *out, const char *peer);
/* After a reload: client sockets of draining routes not in newgen get 1012. */
void mg_ws_drain_route_sockets(mg_gen_t *newgen);
uint64_t mg_ws_count(void); /* client-facing sockets and tunnels */
/* Client-facing sockets, and the gateway's tunnels, which count themselves. */
extern uint64_t mg_ws_sockets;
void mg_ws_close_all(int code, const char *reason); /* client-facing sockets */

/* ws_send.c: writing */
int mg_ws_send(mg_ws_t *ws, int opcode, const char *data, size_t len);
void mg_ws_close(mg_ws_t *ws, int code, const char *reason);
void mg_ws_pause(mg_ws_t *ws, int on); /* stops (on) or resumes reading */
size_t mg_ws_queued(mg_ws_t *ws);      /* bytes waiting to be sent */
/* Holds back (on) or lets go (off) the frames wslay queued, the close
 * above all, while messages sent meanwhile still go out first. */
void mg_ws_hold_close(mg_ws_t *ws, int on);

/* ws_handshake.c: the pure parts of the opening handshake */
void mg_ws_key(char *out); /* a fresh Sec-WebSocket-Key */
void mg_ws_accept_for(const char *key, size_t len, char *out);
/* 1 if tok is one of the comma-separated tokens of v (case-insensitive) */
int mg_ws_token_in(const char *v, size_t len, const char *tok);
/* 1 if key is a Sec-WebSocket-Key: 16 bytes in base64 */
int mg_ws_key_ok(const char *key, size_t len);
/* 1 if the Origin value v (NULL: none) is one of the route's origins */
int mg_ws_origin_ok(const mg_ws_conf_t *wc, const char *v, size_t vl);
/* The first of one Sec-WebSocket-Protocol line's protocols the route
 * offers into hs->protocol (left "" when none is). */
void mg_ws_pick_protocol(const mg_ws_conf_t *wc, const char *v, size_t vl, mg_ws_hs_t *hs);
/* Picks the first permessage-deflate offer in a Sec-WebSocket-Extensions
 * value (len bytes) we can honour; sets hs->pmd (window bits),
 * hs->pmd_client_nct and hs->pmd_resp, or leaves hs->pmd 0. */
void mg_ws_negotiate_pmd(const char *v, size_t len, mg_ws_hs_t *hs);

#endif
