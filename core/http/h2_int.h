/*
 * h2_int.h -- the inside of the HTTP/2 session, shared by h2.c (the
 * connection: nghttp2's callbacks, reading, writing, timers, GOAWAY) and
 * h2_req.c (a stream as a request: its head, its body both ways, its sink
 * mg_h2_ops, its access-log line). Nothing outside http/ includes this.
 */
#ifndef MG_H2_INT_H
#define MG_H2_INT_H

#include "http/http_int.h"

#include <nghttp2/nghttp2.h>

#define MG_H2_OUT_MAX (64 * 1024) /* frames made, not yet written: ask nghttp2 for more below */
#define MG_H2_RST_MAX 200         /* RST_STREAMs from the client per window ... */
#define MG_H2_RST_WINDOW 10.0     /* ... seconds, before GOAWAY ENHANCE_YOUR_CALM */
#define MG_H2_HPACK 4096          /* HPACK dynamic table, both directions (bytes) */
#define MG_H2_NV_MAX 256          /* response header fields sent (more are dropped) */
#define MG_H2_TICK_MS 1000        /* the stall checks while streams are open */
#define MG_H2_AUTH_MAX 262        /* :authority: a DNS name (255), ':' and a port */
#define MG_H2_LINGER 2.0          /* s a client may go on sending after the answer ended */

typedef struct mg_h2_s mg_h2_t;
typedef struct mg_h2_stream_s mg_h2_stream_t;
typedef struct mg_h2_ws_s mg_h2_ws_t;

/* One stream: the request (NULL once it is logged or detached), and the
 * bytes between it and nghttp2 both ways. */
struct mg_h2_stream_s {
    mg_h2_t *s;
    int32_t id;
    mg_req_t *r;
    struct evbuffer *in;  /* request body received, not yet given to the request */
    struct evbuffer *out; /* response body waiting for the stream's window */
    unsigned head_sent : 1, nobody : 1, end : 1, end_sent : 1, deferred : 1;
    unsigned in_end : 1;    /* the client's END_STREAM came */
    unsigned body_done : 1; /* body_end told */
    unsigned hold : 1;      /* the access step runs: the body waits */
    unsigned rd_paused : 1; /* the target paused the body: no WINDOW_UPDATE */
    unsigned feeding : 1, drained : 1, above : 1, rst_sent : 1;
    unsigned proto : 2;        /* :protocol (RFC 8441): 0 none, 1 websocket, 2 another */
    unsigned ws_pending : 1;   /* the upgrade was let through: mg_h2_ws_start next turn */
    int err;                   /* a status to refuse the head with (431, 400), 0 */
    double progress;           /* the last time its body moved out (or it began) */
    double rx_last;            /* the last time body bytes came */
    mg_h2_ws_t *ws;            /* an extended CONNECT handed to the WebSocket side (h2_ws.c) */
    char auth[MG_H2_AUTH_MAX]; /* :authority */
    size_t auth_len;
    mg_h2_stream_t *prev, *next, *next_free;
};

struct mg_h2_s {
    mg_io_t io;
    nghttp2_session *ng;
    struct event rev, wev, tev, sev;
    struct evbuffer *out; /* frames made by nghttp2, not yet written */
    int lidx, is_tls;
    unsigned dead : 1, wr_on : 1, tls_ww : 1, goaway : 1, sched : 1, want_send : 1;
    unsigned any : 1;      /* a stream began (before: the header timeout, after: idle) */
    unsigned out_full : 1; /* a DATA frame filled out: nghttp2 paused (mg_h2_send_data) */
    int busy;              /* inside nghttp2 or a stream walk: sends wait (want_send) */
    int nstreams;
    mg_h2_stream_t *streams;
    double rst_t0; /* the RST_STREAM window's start, and the count in it */
    unsigned rst_n;
    double wr_progress; /* the last time the socket took bytes */
    struct mg_http_tls_s *tls;
    char peer_ip[MG_PEER_IP_MAX];
    mg_h2_t *prev, *next;
};

#define MG_H2_ST(r) ((mg_h2_stream_t *)(r)->sess)

/* h2_req.c */
extern const mg_http_sess_ops_t mg_h2_ops;
/* a stream and its request (from the free lists); NULL: no memory */
mg_h2_stream_t *mg_h2_stream_new(mg_h2_t *s, int32_t id);
/* closed by nghttp2: ok (END_STREAM went) logs a whole response, else the
 * request is detached; the stream is recycled */
void mg_h2_stream_end(mg_h2_stream_t *st, int ok);
void mg_h2_finish(mg_h2_stream_t *st); /* the log phase; the request is freed */
int mg_h2_header(mg_h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *v,
                 size_t vlen);
void mg_h2_head(mg_h2_stream_t *st, int end_stream); /* the head is whole: to the gateway */
void mg_h2_feed(mg_h2_stream_t *st);   /* request body up, as far as the request takes it */
void mg_h2_settle(mg_h2_stream_t *st); /* END_STREAM once the response is whole */
void mg_h2_resp_end_st(mg_h2_stream_t *st);
/* nghttp2's send_data callback (DATA without a copy: st->out into s->out) */
int mg_h2_send_data(nghttp2_session *ng, nghttp2_frame *fr, const uint8_t *framehd, size_t length,
                    nghttp2_data_source *src, void *ud);
/* "Name: value\r\n" lines into nv from k on, names lower-cased into buf
 * (connection-specific fields dropped); the new count */
size_t mg_h2_lines_nv(const char *p, size_t len, nghttp2_nv *nv, size_t k, char *buf, size_t *bo,
                      size_t bcap);
/* the data provider of a response: st->out, under the stream's window */
ssize_t mg_h2_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *ud);

/* h2_ws.c: RFC 8441, a stream carrying a WebSocket */
/* the extended CONNECT's head as the GET upgrade the gateway knows: 0, or
 * a status to refuse it with */
int mg_h2_ws_head(mg_h2_stream_t *st);
/* the gateway took the upgrade (r->ws_upgrade): the stream becomes a pipe
 * to the WebSocket side; st->r is freed */
void mg_h2_ws_start(mg_h2_stream_t *st);
void mg_h2_ws_data(mg_h2_stream_t *st, const uint8_t *data, size_t len); /* DATA came */
void mg_h2_ws_in_end(mg_h2_stream_t *st);                                /* END_STREAM came */
void mg_h2_ws_drained(mg_h2_stream_t *st); /* st->out went low: read on */
void mg_h2_ws_free(mg_h2_stream_t *st);    /* the stream closed */

/* h2.c */
void mg_h2_kick(mg_h2_t *s); /* frames to send: at the next loop turn (or after nghttp2) */
void mg_h2_send(mg_h2_t *s); /* frames out now (unless inside nghttp2) */
void mg_h2_arm(mg_h2_t *s);  /* the session's timer for its state */

#endif
