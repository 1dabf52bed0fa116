/*
 * ws.h -- WebSocket sockets (RFC 6455, RFC 7692) on top of wslay: the
 * per-route configuration, the socket object shared by the handler and
 * relay modes, and the tunnel.
 */
#ifndef MG_WS_H
#define MG_WS_H

#include "mg.h"

#include <wslay/wslay.h>
#include <zlib.h>

enum { MG_WS_TUNNEL = 1, MG_WS_RELAY, MG_WS_HANDLER };

/* Per-route settings, read from the route's `websocket` table. */
struct mg_ws_conf_s {
    int mode;
    int hb_interval;      /* ms between heartbeats to the client; 0 = none */
    int hb_timeout;       /* ms of peer silence before closing; 0 = never */
    int hb_message;       /* send {"type":"ping","ts":N} */
    int hb_frames;        /* send ping frames too */
    uint64_t max_message; /* bytes */
    size_t send_buffer;   /* bytes queued before the overflow policy */
    int deflate;
    int drain_on_reload;
    int idle; /* ms, tunnel: no bytes either way */
    char **protocols;
    int nprotocols;
    char **origins;
    int norigins;
    char *upstream_path; /* relay: path on the upstream (NULL: the request's) */
    int on_message_ref;  /* per-message hook, LUA_NOREF if none */
    int ws_open_ref;     /* hook lists, LUA_NOREF if none */
    int ws_close_ref;
};

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

/* ws.c */
int mg_ws_handshake_check(mg_req_t *r, mg_ws_hs_t *hs, const char **why);
mg_ws_t *mg_ws_new(int fd, int client, mg_gen_t *gen, mg_route_t *route, const mg_ws_hs_t *hs,
                   const char *pre, size_t pre_len, const mg_ws_ops_t *ops, void *ud);
int mg_ws_send(mg_ws_t *ws, int opcode, const char *data, size_t len);
void mg_ws_close(mg_ws_t *ws, int code, const char *reason);
void mg_ws_abort(mg_ws_t *ws); /* drop without a close handshake; no callbacks */
void mg_ws_set_owner(mg_ws_t *ws, const mg_ws_ops_t *ops, void *ud);
void mg_ws_pause(mg_ws_t *ws, int on);
size_t mg_ws_queued(mg_ws_t *ws);
/* Holds back (on) or lets go (off) the frames wslay queued, the close
 * above all, while messages sent meanwhile still go out first. */
void mg_ws_hold_close(mg_ws_t *ws, int on);
const mg_ws_stats_t *mg_ws_stats(mg_ws_t *ws);
double mg_ws_last_rx(mg_ws_t *ws); /* when the peer's last bytes came */
/* Who closed and with which code, as seen when on_close runs. */
void mg_ws_end_info(mg_ws_t *ws, mg_ws_end_t *out, const char *peer);
void mg_ws_drain_route_sockets(mg_gen_t *newgen);
uint64_t mg_ws_count(void); /* client-facing sockets and tunnels */
extern uint64_t mg_ws_sockets;
void mg_ws_close_all(int code, const char *reason);
void mg_ws_key(char *out); /* a fresh Sec-WebSocket-Key */
void mg_ws_accept_for(const char *key, size_t len, char *out);

/* ws_http.c: hand-off from the HTTP connection */
void mg_ws_takeover(mg_req_t *r, int fd, const char *pre, size_t pre_len);
void mg_ws_tunnels_close_all(void);
/* Closes the tunnels of routes with on_reload = "drain" not in newgen. */
void mg_ws_tunnels_drain(mg_gen_t *newgen);

/* ws_http.c: a session's access-log line, in the HTTP lines' format plus a
 * "websocket" object. mg_ws_alog_new copies what it needs from r (NULL when
 * the access log is off); mg_ws_alog_end writes the line and frees it. st
 * NULL: a tunnel (bytes only, no messages, no close code). in/out: bytes
 * from and to the client. */
typedef struct mg_ws_alog_s mg_ws_alog_t;
mg_ws_alog_t *mg_ws_alog_new(mg_req_t *r);
void mg_ws_alog_end(mg_ws_alog_t *a, int mode, const mg_ws_end_t *end, const mg_ws_stats_t *st,
                    uint64_t in, uint64_t out);

/* lua_ws.c */
void mg_lua_ws_start(mg_req_t *r, int fd, const mg_ws_hs_t *hs, const char *pre, size_t len);
void mg_lua_ws_open_api(lua_State *L);
/* A registry reference to req.ctx of the upgrade request (a new table when
 * no hook made one). */
int mg_ws_ctx_ref(mg_req_t *r);
/* Runs an on_message hook (synchronously: it must not yield) with msg
 * {data, kind, direction} and ctx. Returns 1 to pass (*out set, possibly
 * rewritten: valid until the caller resets L's top), 0 to drop, -1 to close
 * with *code and reason (64 bytes). */
int mg_ws_msg_hook(lua_State *L, int ref, int ctx_ref, int op, const char *dir, const char *data,
                   size_t len, const char **out, size_t *outlen, int *code, char *reason);
/* ws_open (code 0) and ws_close hook lists, with {code, reason} and ctx. */
void mg_ws_run_hooks(lua_State *L, int list_ref, int ctx_ref, int code, const char *reason);

#endif
