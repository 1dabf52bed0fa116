/*
 * http_int.h -- the inside of the HTTP/1.1 session (mg_conn_t), shared by
 * http.c (the connection), http_parse.c (its parser callbacks and head
 * checks) and http_resp.c (response framing), and by the C unit tests
 * (spec/c/); and what the HTTP/2 session (h2.c) shares with them: request
 * memory, the head checks, the Date line, the log and metrics helpers.
 * Nothing outside http/ includes this.
 */
#ifndef MG_HTTP_INT_H
#define MG_HTTP_INT_H

#include "http/http.h"
#include "loop/timer.h"

typedef struct mg_conn_s mg_conn_t;

/* An HTTP/1.1 client connection: the session behind its requests'
 * r->sess (one request at a time, pipelined ones wait in `in`). */
struct mg_conn_s {
    mg_io_t io;    /* the transport; events are registered on io.fd */
    int closing;   /* close once output is flushed */
    int paused;    /* parser paused between pipelined requests */
    int rd_off;    /* reading disabled (backpressure) */
    int wr_on;     /* write event armed */
    int tmode;     /* which timeout is armed */
    uint64_t nreq; /* requests served on this connection */
    struct event rev, wev;
    struct event tev; /* fired by hand (event_active): the deferred close, the handoff */
    mg_tm_t tm;       /* the timeout of tmode (loop/timer.h), its callback the same */
    struct evbuffer *out;
    char *in; /* saved unparsed input (pipelining) */
    size_t in_len, in_cap;
    llhttp_t parser;
    mg_req_t *req;
    char peer_ip[MG_PEER_IP_MAX]; /* the only copy of the peer's address kept */
    int is_tls;
    int lidx;               /* listening socket it came from */
    mg_conn_t *prev, *next; /* all connections of the worker */
};

/* the connection of a request still attached to it, else NULL */
#define MG_CONN(r) ((mg_conn_t *)(r)->sess)

enum { MG_T_NONE, MG_T_HEADER, MG_T_IDLE, MG_T_READ, MG_T_BODY, MG_T_WRITE, MG_T_LINGER };

/* extra connection state kept beside the public struct */
typedef struct {
    mg_conn_t c;
    int in_exec;            /* inside llhttp_execute: defer completion work */
    int dead;               /* free at the next loop turn */
    int lingering;          /* response sent, discarding input until EOF */
    int eof;                /* client half-closed */
    int err_status;         /* status to answer when the parser stops on error */
    int upgrade;            /* parser paused for an upgrade: close after response */
    int handoff;            /* WebSocket: the transport goes to the upgrade hook */
    const char *exec_start; /* input being parsed, to spot obs-fold */
    int scan_done;          /* the request head was checked for bare LF */
    int scan_nl;            /* CRLFs in a row */
    int scan_rl;            /* 0 before the request line, 1 in it, 2 after */
    int scan_sp;            /* spaces in the request line: exactly 2 */
    char scan_prev;
    const char *val_end;       /* end of the last header value piece */
    int tls_ww;                /* a TLS read waits for the socket to take its writes */
    int h2_probe;              /* the first bytes may say HTTP/2 (ALPN h2, the h2c preface) */
    struct mg_http_tls_s *tls; /* TLS facts for the layers above, made on first ask */
} mg_xconn_t;

#define X(c) ((mg_xconn_t *)(c))

/* http.c */
extern const mg_http_hooks_t *mg_http_hooks;    /* set at start by the gateway */
extern const mg_http_sess_ops_t mg_http_h1_ops; /* what an HTTP/1.1 request's sink does */
mg_req_t *mg_req_new(mg_conn_t *c);             /* from the free list; NULL if out of memory */
/* a request of any session (sess, its ops, the listener); NULL: no memory */
mg_req_t *mg_req_alloc(void *sess, const mg_http_sess_ops_t *ops, int lidx);
void mg_req_free(mg_req_t *r); /* back to the free list (the freed hook runs) */
/* req.tls's facts of a TLS transport, made on the first ask into *cache
 * (the session frees it with free()); NULL if it cannot be made */
struct mg_http_tls_s;
const mg_req_tls_t *mg_http_io_tls_info(mg_io_t *io, struct mg_http_tls_s **cache);
void mg_http_conn_arm(mg_conn_t *c, int mode); /* the connection timer, MG_T_* */
void mg_http_conn_flush(mg_conn_t *c);
void mg_http_conn_read_enable(mg_conn_t *c, int on);

/* the metrics label of a request: its route's; unrouted, "(admin)" on the
 * admin listener (its own traffic is not the users'), else "(none)" (no
 * route matched, or refused before routing: 400, 408, 413, 414, 431, ...) */
static inline int mg_http_met_name(const mg_req_t *r) {
    if (r->route)
        return mg_route_met(r->route);
    if (r->lidx >= 0 && r->lidx < mg_worker.nfd && mg_worker.laddr &&
        mg_worker.laddr[r->lidx].admin)
        return MG_MET_ADMIN;
    return MG_MET_NONE;
}

/* h2.c: the HTTP/2 session takes over a connection whose first bytes
 * (data, n: the preface or more) said HTTP/2; it takes the transport
 * (mg_io_move) and copies what it needs (peer_ip, data). */
void mg_http_h2_start(mg_io_t *io, int lidx, const char *peer_ip, const char *data, size_t n);
void mg_http_h2_close_idle(void); /* stopping: GOAWAY, then close once the streams end */
/* http.c: does listener lidx (TLS or plain) speak HTTP/2 in the current
 * generation (tls.http2, h2c; a reload may turn it on or off)? */
int mg_http_listener_h2(int lidx, int tls);

/* http_parse.c: llhttp's callbacks for a client connection */
extern const llhttp_settings_t mg_http_settings;
int mg_http_on_message_begin(llhttp_t *p); /* a fresh request (also for errors before one) */
/* the head checks llhttp leaves to us (pure: no I/O, exposed for spec/c/) */
int mg_http_host_valid(const char *v, size_t len); /* Host / authority characters: 1 ok */
int mg_http_te_check(const char *v, size_t n);     /* Transfer-Encoding value: 0 or 501 */
/* Host, framing, target form, dot segments of a parsed head; may rewrite an
 * absolute-form target in r->hbuf. Returns 0 or the status to refuse with. */
int mg_http_check_head(mg_req_t *r, llhttp_t *p);
/* What the header lines say about Host and framing (mg_http_check_fields). */
typedef struct {
    int hosts;   /* Host lines */
    int te;      /* Transfer-Encoding lines */
    int te_501;  /* a line lists other codings, then chunked (mg_http_te_check) */
    mg_te_t tes; /* all the Transfer-Encoding lines: one list (RFC 9110 5.3) */
} mg_http_framing_t;
/* Each header line: its value's characters, Host, Transfer-Encoding,
 * X-Request-Id, Expect. Returns 0 or an HTTP status to refuse with. */
int mg_http_check_fields(mg_req_t *r, mg_http_framing_t *f);
/* The path of an origin-form target at r->hbuf: no fragment, no dot
 * segments; sets r->path_len. 0 or 400. */
int mg_http_check_path(mg_req_t *r);
/* r->request_id: the client's X-Request-Id when it is a fine one, else new */
void mg_http_set_request_id(mg_req_t *r);

/* http_resp.c: the HTTP/1.1 response framing behind mg_http_h1_ops */
void mg_http_h1_head(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen);
void mg_http_h1_body(mg_req_t *r, const char *data, size_t len);
void mg_http_h1_end(mg_req_t *r);
/* "Date: ...\r\n" (formatted once a second), and its length */
const char *mg_http_date(size_t *len);

#endif
