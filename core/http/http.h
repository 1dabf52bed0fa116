/*
 * http.h -- the HTTP layer: a request, protocol-neutral for the layers
 * above (method, target, headers, body, response through its session's
 * sink), the callback structs that connect it upward (mg_target_t, the
 * target holding a request; mg_http_hooks_t, registered by the gateway),
 * the HTTP/1.1 session that produces requests (http.c: the connection,
 * reading and timeouts; http_parse.c: parsing and head checks;
 * http_resp.c: response framing), and the field helpers every HTTP user
 * shares (fields.c). The session itself (mg_conn_t) is in http_int.h.
 */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include "conf/conf.h"
#include "net/io.h"

#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* ---- the request (protocol-neutral) ---- */
/* Header lines "Name: value\r\n" in one flat buffer (per request, kept
 * with the recycled request). */
typedef struct {
    char *p;
    size_t len, cap;
} mg_lines_t;

typedef struct mg_req_s mg_req_t;
typedef struct mg_ux_s mg_ux_t;
#define MG_PEER_IP_MAX 48 /* an address as text, with its NUL (INET6_ADDRSTRLEN + 2) */
typedef struct mg_co_s mg_co_t;
typedef struct mg_lproxy_s mg_lproxy_t; /* moongate.proxy's plan (lua/lua.h) */

typedef struct {
    uint32_t noff, nlen, voff, vlen; /* offsets into req->hbuf */
} mg_hdr_t;

enum { MG_REQ_HEAD, MG_REQ_BODY, MG_REQ_DONE };
enum { MG_ACCESS_NONE, MG_ACCESS_RUNNING, MG_ACCESS_OK, MG_ACCESS_DENIED };

/* What a TLS connection agreed, as the layers above see it (borrowed:
 * valid while the request runs). */
typedef struct {
    const char *version;        /* "TLSv1.3" */
    const char *cipher;         /* "TLS_AES_128_GCM_SHA256" */
    const char *sni;            /* the server name the client asked for, or NULL */
    const char *client_subject; /* a verified client certificate's subject (RFC 2253), or NULL */
} mg_req_tls_t;

/* What the session that produced a request does for it: the response
 * sink and the client side of the body. The HTTP/1.1 session (http.c,
 * http_resp.c) gives its requests one; an HTTP/2 session would give its
 * own. Targets and the layers above call the mg_resp_* and mg_req_*
 * functions below, never these, and never write into a connection. */
typedef struct {
    /* the response head, extra = "Name: value\r\n" lines; clen -1: unknown */
    void (*head)(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen);
    void (*body)(mg_req_t *r, const char *data, size_t len);
    void (*end)(mg_req_t *r);  /* the body is complete (framing's end) */
    void (*cont)(mg_req_t *r); /* 100 Continue */
    size_t (*pending)(mg_req_t *r);
    void (*flush)(mg_req_t *r);
    void (*read_pause)(mg_req_t *r, int on);
    void (*body_start)(mg_req_t *r); /* a target takes the body: time its gaps */
    void (*target_done)(mg_req_t *r);
    void (*abort)(mg_req_t *r);
    void (*resume)(mg_req_t *r); /* the access step ended: read on */
    const char *(*peer_ip)(const mg_req_t *r);
    int (*tls)(const mg_req_t *r);
    const mg_req_tls_t *(*tls_info)(const mg_req_t *r); /* NULL: not TLS */
} mg_http_sess_ops_t;

/* A target: what the request was handed to (the C proxy, a Lua handler).
 * The session calls it through these, set in r->target while the target
 * holds the request (the target clears it when it lets go). */
typedef struct {
    void (*body)(mg_req_t *r, const char *data, size_t len); /* request body bytes */
    void (*body_end)(mg_req_t *r);
    void (*drained)(mg_req_t *r); /* the client took the queued response */
    /* The client went away, or the session gave up on the request (an
     * error answered instead): stop. A target with keeps_req goes on and
     * frees the request itself (mg_req_target_done); it hears gone only
     * once the request is detached from the client. */
    void (*gone)(mg_req_t *r);
    int keeps_req;
} mg_target_t;

struct mg_req_s {
    mg_req_t *next_free;
    void *sess;                     /* the session's own handle; NULL once the client is gone */
    const mg_http_sess_ops_t *sops; /* the session's response sink */
    const mg_target_t *target;      /* who holds the request now, or NULL */
    /* dispatch: called when the access step ends (allowed or answered) */
    void (*access_done)(mg_req_t *r);
    mg_gen_t *gen;
    mg_route_t *route;
    int lidx; /* the listening socket it came in on (which servers) */
    int state;
    int method;
    int http_minor;
    int keep_alive;
    int expect_continue;
    int chunked;      /* request body is chunked */
    int64_t clen;     /* Content-Length, -1 if none */
    uint64_t body_rx; /* body bytes received so far */
    int status;       /* response status sent */
    int resp_started; /* response head queued */
    int resp_done;
    int resp_chunked;   /* we chunk-encode the response body */
    int resp_close;     /* close after response (no framing / errors) */
    int ws_upgrade;     /* a valid WebSocket handshake: hand off after parsing */
    int ws_valid;       /* a valid handshake on a WebSocket route (req.websocket) */
    int access_state;   /* MG_ACCESS_*: the route's access hook */
    int access_req_ref; /* LUA_NOREF, or where lua/ keeps the req table scripts see (until the
                           request ends) */
    mg_lines_t xhdrs;   /* "Name: value\r\n" lines set by req:set_header() */
    mg_lines_t rxhdrs;  /* response header lines set by req:set_response_header() */
    uint64_t bytes_out;
    double t_start;
    /* the proxied exchange, for the access log (set by gateway/proxy.c):
     * the server ("host:port", the peer's stable name, or NULL), its
     * status (0: none) and how long the exchange took (ms, mg_ux_ms) */
    const char *up_addr;
    int up_status;
    double up_ms;
    /* target side */
    mg_ux_t *ux; /* proxy exchange */
    mg_co_t *co; /* Lua handler */
    /* moongate.proxy: a script handed the request to the C proxy (its
     * upstream, target, timeout...; lua/lua_proxy.c), or NULL */
    mg_lproxy_t *lproxy;
    /* head storage: url + header names/values, bounded by limits.header_size */
    uint32_t url_len;
    int nhdrs;
    int hstate;   /* 0 none, 1 in field, 2 in value */
    int host_idx; /* index of Host header or -1 */
    int xrid_idx; /* X-Request-Id index or -1 */
    /* for the access log, worked out by the head checks (http_parse.c)
     * while the head is in cache: the first Host's and User-Agent's value
     * in hbuf (offset, length; has_: present) and the header lines' bytes
     * (names, values, ": ", CRLF); log_ready 0: not worked out (a head
     * refused before the end), the log looks them up itself */
    uint32_t log_host_off, log_host_len, log_ua_off, log_ua_len, log_hbytes;
    uint8_t log_ready, log_has_host, log_has_ua;
    uint32_t path_len; /* url = path [? query] */
    char request_id[40];
    /* client_ip.c, worked out on first use */
    unsigned client_done : 1;  /* peer_trusted and client_moved are set */
    unsigned peer_trusted : 1; /* the peer is one of its server's trusted_proxies */
    unsigned client_moved : 1; /* the client is client_ip (from X-Forwarded-For), not the peer */
    unsigned http2 : 1;        /* a stream of an HTTP/2 session (http/h2.c) */
    unsigned h2_ws : 1;        /* RFC 8441 extended CONNECT, read as a GET upgrade (h2_ws.c) */
    char client_ip[MG_PEER_IP_MAX];
    size_t hcap, hlen;
    char *hbuf;
    mg_hdr_t *hdrs;
    int hdrs_cap;
};

/* What the HTTP layer calls above itself, registered once at start by
 * the gateway (mg_gateway_init): nothing in http/ names a target or a
 * layer above. */
enum { MG_HTTP_GO_ON = 0, MG_HTTP_PAUSE = 1 };
typedef struct {
    /* A checked request head: route it, run its access step, hand it to a
     * target. MG_HTTP_PAUSE: the access step runs on (the body waits until
     * r->access_done). */
    int (*head)(mg_req_t *r);
    /* Request body bytes: 0, or -1 to close the connection (a limit hit
     * after the response began). */
    int (*body)(mg_req_t *r, const char *data, size_t len);
    /* The upgrade is parsed: the callee takes the transport (mg_io_move);
     * pre: the client's bytes read past the request. */
    void (*upgrade)(mg_req_t *r, mg_io_t *io, const char *pre, size_t pre_len);
    void (*done)(mg_req_t *r);  /* the response is complete: log phase */
    void (*freed)(mg_req_t *r); /* the request goes (r->access_req_ref set) */
} mg_http_hooks_t;
void mg_http_set_hooks(const mg_http_hooks_t *h);

/* ---- the request and response API (targets and the layers above) ---- */
static inline int mg_req_gone(const mg_req_t *r) { return r->sess == NULL; }
/* client_ip.c: the client's address as text, what logs, req.remote_addr
 * and the plugins use: the peer, or, when the peer is one of its server's
 * trusted_proxies, the rightmost X-Forwarded-For address that is not itself
 * trusted (nginx's realip with real_ip_recursive: the walk stops at the
 * first entry that is not an address, keeping the last good one). Worked
 * out once per request, on first use; "" if the client left before. */
const char *mg_req_client_ip(const mg_req_t *r);
/* Is the peer one of its server's trusted_proxies (its X-Forwarded-Proto
 * and -Host go on, fwd.c)? */
int mg_req_peer_trusted(const mg_req_t *r);
/* The peer's address as text; "" once it is gone. At most
 * MG_PEER_IP_MAX bytes with its NUL, and any but "" in a buffer of
 * MG_PEER_IP_MAX bytes (the access log's line reads 16 at once). */
static inline const char *mg_req_peer_ip(const mg_req_t *r) {
    return r->sess ? r->sops->peer_ip(r) : "";
}
static inline int mg_req_tls(const mg_req_t *r) { return r->sess && r->sops->tls(r); }
/* The TLS connection's version, cipher, SNI name and verified client
 * subject; NULL on a plain connection or once the client is gone. */
static inline const mg_req_tls_t *mg_req_tls_info(const mg_req_t *r) {
    return r->sess && r->sops->tls_info ? r->sops->tls_info(r) : NULL;
}
/* response bytes queued to the client, not yet sent */
static inline size_t mg_req_pending(mg_req_t *r) { return r->sops->pending(r); }
static inline void mg_req_flush(mg_req_t *r) { r->sops->flush(r); }
/* stop (on) or resume reading the request body */
static inline void mg_req_read_pause(mg_req_t *r, int on) { r->sops->read_pause(r, on); }
static inline void mg_req_body_start(mg_req_t *r) { r->sops->body_start(r); }
static inline void mg_req_continue(mg_req_t *r) { r->sops->cont(r); }
/* The access step ended: the session reads on (or frees a gone request). */
static inline void mg_req_resume(mg_req_t *r) { r->sops->resume(r); }
/* target finished with the response */
static inline void mg_req_target_done(mg_req_t *r) { r->sops->target_done(r); }
/* target failed mid-response: close */
static inline void mg_req_abort(mg_req_t *r) { r->sops->abort(r); }
/* Response helpers. Headers in `extra` are full "Name: value\r\n" lines. */
static inline void mg_resp_head(mg_req_t *r, int status, const char *extra, size_t extralen,
                                int64_t clen) {
    r->sops->head(r, status, extra, extralen, clen);
}
static inline void mg_resp_body(mg_req_t *r, const char *data, size_t len) {
    r->sops->body(r, data, len);
}
static inline void mg_resp_end(mg_req_t *r) { r->sops->end(r); }
/* A JSON error response; _with: extra header lines ("Name: value\r\n"). */
void mg_resp_json_error(mg_req_t *r, int status, const char *msg);
void mg_resp_json_error_with(mg_req_t *r, int status, const char *msg, const char *extra);

/* ---- the HTTP/1.1 session (http.c) ---- */
void mg_http_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx);
void mg_http_close_idle(void); /* stopping: close connections between requests */
/* After a reload: HTTP/2 connections on a listener that no longer speaks it
 * (http2, tls.http2 or h2c turned off) get GOAWAY; open streams finish. */
void mg_http_h2_drain(void);

/* ---- proxy_proto.c: the PROXY protocol stage (listeners with proxy_protocol) ---- */
/* Takes the accepted socket fd (non-blocking, peer sa), reads its PROXY v1
 * or v2 header under the header timeout without touching what follows, then
 * calls mg_http_accept with the client's address from the header (the
 * socket's peer for LOCAL and UNKNOWN). Without a valid header the
 * connection is closed and counted. */
void mg_http_pp_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx);
void mg_http_pp_close_all(void); /* stopping: headers not read yet are not waited for */
/* One header in b[0..n) (pure, for spec/c/): its length, 0 when a prefix of
 * a valid one (read on), -1 when not one (*why says why). The client's
 * address goes to ss (*sslen 0: LOCAL or UNKNOWN, use the peer's). */
int mg_http_pp_parse(const unsigned char *b, size_t n, struct sockaddr_storage *ss,
                     socklen_t *sslen, const char **why);

/* ---- request fields and header lines (http.c, http_resp.c, fields.c) ---- */
/* Is `name` overridden by req:set_header()? */
int mg_req_xhdr_has(mg_req_t *r, const char *name, size_t len);
int mg_http_lines_have(const char *p, size_t n, const char *name, size_t len);
int mg_http_evlines_have(struct evbuffer *lines, const char *name, size_t len);
int mg_http_lines_add(mg_lines_t *l, const char *s, size_t n);
/* Appends "Name: value\r\n" (mg_line_put). MG_OK or MG_ERR. */
int mg_http_lines_put(mg_lines_t *l, const char *name, size_t nlen, const char *value, size_t vlen);
void mg_http_lines_remove(mg_lines_t *l, const char *name, size_t len);
void mg_http_lines_merge(struct evbuffer *dst, const mg_lines_t *src);
/* Writes the req:set_header() lines (not the removals) to out, at most
 * r->xhdrs.len bytes; returns the length. */
size_t mg_req_xhdrs_put(const mg_req_t *r, char *out);
const char *mg_req_header(mg_req_t *r, const char *name, size_t *len);
/* The nth (0-based) header line with this name, or NULL. */
const char *mg_req_header_n(mg_req_t *r, const char *name, int nth, size_t *len);
const char *mg_http_status_text(int status);
int mg_http_hop_by_hop(const char *name, size_t len);
/* A header a script sets: the name a token, the value free of control
 * characters but HTAB (RFC 9110 5.1, 5.5). 1 if fine. */
int mg_http_field_ok(const char *name, size_t nlen, const char *value, size_t vlen);
/* http.c: the access-log lines (HTTP and WebSocket sessions), built with
 * base's appender (mg_fmt_t) straight into the log's buffer; every field
 * bounded, so a line's worst case, every field at its cap, is known:
 * MG_HTTP_LOG_WORST (the target 399, Host and User-Agent 1219 each, the
 * route 399, the SNI 299, the upstream 119, the TLS names 2 x 100, the
 * listener 79, the address 47, the request id 39, the method 16, the time
 * 36, a dozen numbers of at most 21, ~450 bytes of names and an HTTP/2
 * stream's "protocol" 24: ~4 700).
 * mg_http_log_line: a finished request's whole line, "}\n" included, tls
 * NULL on plain connections, now the clock at its end (mg_now); one bounds
 * check for the line (a builder without room for the worst case gets the
 * line cut, as checked appends would cut it, and still ended). The parts
 * below append unchecked (mg_fmt_put_*): b must have room for the worst.
 * mg_http_log_start: {"type","time","request_id","remote","method","path"
 * (t_ms: the start in ms since the epoch, mg_fmt_round(t_start * 1000)).
 * mg_http_log_path: the target, cut to 300 bytes, query credentials as
 * "-", escaped. mg_http_log_fields: ,"timestamp" (ISO 8601 of t_ms),
 * "host", "listener" and "user_agent" (null when absent); returns the
 * head's header-line bytes (names, values, ": " and CRLF).
 * mg_http_log_tls: "tls":{"version","cipher","sni"} (the names cut at
 * MG_HTTP_LOG_TLS_NAME; OpenSSL's are ~50 at most). mg_http_log_route:
 * the route's name, else its rule, escaped ("" for none). mg_http_log_end
 * (checked): "}\n", which always fits. */
#define MG_HTTP_LOG_WORST 6144
#define MG_HTTP_LOG_TLS_NAME 100
void mg_http_log_line(mg_fmt_t *b, mg_req_t *r, const mg_req_tls_t *tls, double now);
void mg_http_log_start(mg_fmt_t *b, mg_req_t *r, int64_t t_ms, const char *method);
void mg_http_log_path(mg_fmt_t *b, const mg_req_t *r);
uint64_t mg_http_log_fields(mg_fmt_t *b, mg_req_t *r, int64_t t_ms);
void mg_http_log_tls(mg_fmt_t *b, const mg_req_tls_t *t);
void mg_http_log_route(mg_fmt_t *b, const mg_route_t *rt);
void mg_http_log_end(mg_fmt_t *b);
/* The request's own, or its route's or server's, access_log = false. */
int mg_http_log_off(const mg_req_t *r);

/* ---- alog.c: a WebSocket session's access-log line ----
 * In the HTTP lines' format plus a "websocket" object. mg_http_wslog_new
 * copies what it needs from r (NULL when the access log is off; free()
 * drops it unwritten); mg_http_wslog_end writes the line and frees it:
 * mode MG_WS_*, the close code and who closed ("client", "upstream",
 * "moongate", "none"), msgs {in, out} whole messages (NULL: a tunnel, which
 * parses no frames: no close code, no counts), in/out bytes from and to
 * the client. */
typedef struct mg_http_wslog_s mg_http_wslog_t;
mg_http_wslog_t *mg_http_wslog_new(mg_req_t *r);
void mg_http_wslog_end(mg_http_wslog_t *a, int mode, int code, const char *by, const uint64_t *msgs,
                       uint64_t in, uint64_t out);
/* The upgrade did not happen (the upstream refused it, or failed): the
 * line of a plain answer, with the status the client got, the upstream's
 * own when it answered (0: it did not), the bytes sent; frees a. */
void mg_http_wslog_refused(mg_http_wslog_t *a, int status, int up_status, uint64_t out);

#endif
