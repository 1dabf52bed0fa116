/*
 * gateway.h -- the top of the request path: dispatch (route, access,
 * target), the C proxy target (proxy.c), forwarding headers (fwd.c) and
 * the WebSocket upgrade (upgrade.c) with its tunnel and relay modes
 * (tunnel.c, relay.c).
 */
#ifndef MG_GATEWAY_H
#define MG_GATEWAY_H

#include "lua/lua.h"
#include "upstream/upstream.h"

/* ---- fwd.c: forwarding headers (proxy and WebSocket upstream handshake) ---- */
/* The header names a Connection header lists, for removal (RFC 9110 7.6.1);
 * names past the first MG_FWD_TOKENS_MAX are not seen. */
#define MG_FWD_TOKENS_MAX 16
typedef struct {
    const char *n[MG_FWD_TOKENS_MAX];
    size_t l[MG_FWD_TOKENS_MAX];
    int count;
} mg_fwd_tokens_t;
/* Adds the names of one Connection header value to t. */
void mg_fwd_conn_tokens(mg_fwd_tokens_t *t, const char *v, size_t len);
int mg_fwd_tokens_has(const mg_fwd_tokens_t *t, const char *name, size_t len);
/* The X-Forwarded-Proto value: the scheme the client spoke to moongate
 * ("http", or "https" on a TLS connection), whatever the client claims. */
const char *mg_fwd_proto(const mg_req_t *r, size_t *len);
/* What mg_fwd_headers also leaves out of the client's headers: */
#define MG_FWD_DROP_EXPECT 1u  /* Expect (the proxy answers 100-continue itself) */
#define MG_FWD_DROP_WS_KEYS 2u /* Sec-WebSocket-* (the relay sends its own) */
typedef struct {
    const char *xff; /* the client's X-Forwarded-For (the last one), or NULL */
    size_t xff_len;
    int keep_proto, keep_host; /* a trusted peer's X-Forwarded-Proto/-Host went on */
} mg_fwd_t;
/* An upper bound of what mg_fwd_headers and mg_fwd_tail write together
 * for r: a buffer of this size takes both (O(headers)). */
size_t mg_fwd_size(const mg_req_t *r);
/* Writes the client's end-to-end headers, then the req:set_header()
 * lines, to out; notes in f what mg_fwd_tail needs; returns the length. */
size_t mg_fwd_headers(mg_req_t *r, char *out, unsigned drop, mg_fwd_t *f);
/* Writes X-Forwarded-Host (or Host), X-Forwarded-For, X-Forwarded-Proto
 * and X-Request-Id to tail; returns their length. The fixed text, the
 * peer and the id take at most MG_FWD_TAIL_MAX bytes; Host with no Host
 * header, at most MG_FWD_HOST_MAX - 1 bytes of value. */
#define MG_FWD_TAIL_MAX 160
#define MG_FWD_HOST_MAX 96
size_t mg_fwd_tail(mg_req_t *r, const mg_fwd_t *f, char *tail);

/* ---- dispatch.c: the HTTP layer's hooks (route, access, target) ---- */
void mg_gateway_init(void); /* registers them; once per worker, before accepting */
/* The response-head phase (header_filter plugins) of a proxied response:
 * head holds len bytes of header lines, room for cap; the new length. */
size_t mg_gw_head_filter(mg_req_t *r, int *status, char *head, size_t len, size_t cap);

/* ---- proxy.c: the C proxy target ---- */
/* To the route's upstream, or where moongate.proxy's plan (r->lproxy) says. */
void mg_proxy_start(mg_req_t *r);
/* registers the hand-off from a Lua handler (moongate.proxy: mg_lua_hooks_t) */
void mg_proxy_init(void);

/* ---- upgrade.c: the WebSocket upgrade ---- */
/* Checks an upgrade request (RFC 6455 4.2.1) against its route and fills
 * hs. Returns 0, or the status to refuse with (400, 403, 426) and *why. */
int mg_ws_handshake_check(mg_req_t *r, mg_ws_hs_t *hs, const char **why);
/* The hand-off from the HTTP session, after a successful check: takes the
 * client's connection from io (mg_io_move), whatever happens; the session
 * forgets it. pre: bytes the client sent past its head. */
void mg_ws_takeover(mg_req_t *r, mg_io_t *io, const char *pre, size_t pre_len);

/* ---- tunnel.c ---- */
/* Stopping: every tunnel ends (a tunnel has no close handshake to offer). */
void mg_tunnel_close_all(void);
/* Ends the tunnels of routes with on_reload = "drain" not in newgen. */
void mg_tunnel_drain(mg_gen_t *newgen);

/* ---- admin.c: the admin listener (docs/operations.md) ---- */
/* An endpoint: fn answers r (mg_admin_reply, or mg_resp_* and
 * r->resp_done); query is what follows '?' (qlen 0: none). HEAD is served
 * by the GET one. Registered once per worker at start; a second
 * registration of a method and path replaces the first. needs_token: only
 * with Authorization: Bearer <admin.token>. */
typedef void (*mg_admin_fn)(mg_req_t *r, const char *query, size_t qlen);
void mg_admin_register(const char *method, const char *path, int needs_token, mg_admin_fn fn);
void mg_admin_init(void); /* the built-in endpoints (mg_gateway_init) */
/* dispatch: a request on an admin listener, answered (MG_HTTP_GO_ON) */
int mg_admin_serve(mg_req_t *r);
/* /readyz's answer: on the admin listener and at health_path */
void mg_admin_ready(mg_req_t *r);
void mg_admin_reply(mg_req_t *r, int status, const char *ctype, const char *body, size_t len);
/* POST /reload goes to the master: the hook (set by app/worker.c) sends
 * it the request tagged seq (MG_OK or MG_ERR); the master's answer comes
 * back through mg_admin_reload_answer (status 200 or 422, a JSON body). */
extern int (*mg_admin_reload_hook)(unsigned seq);
void mg_admin_reload_answer(unsigned seq, int status, const char *json);

/* ---- acme_http01.c: the ACME http-01 challenge responder ---- */
#define MG_ACME_DICT "moongate.acme" /* token -> key authorization (app/acme.c) */
/* Dispatch calls it first: 1 = a challenge request on a plain listener,
 * answered; 0 = not one, go on. */
int mg_gw_acme_challenge(mg_req_t *r);

#endif
