/*
 * http.h -- the HTTP layer: a request, protocol-neutral for the layers
 * above (method, target, headers, body, response), the HTTP/1.1 session
 * that produces it (http.c: the connection, reading and timeouts;
 * http_parse.c: parsing and head checks; http_resp.c: response framing),
 * and the field helpers every HTTP user shares (fields.c).
 */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include "conf/conf.h"

#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* ---- conn / request (http.c) ---- */
typedef struct mg_conn_s mg_conn_t;
/* Header lines "Name: value\r\n" in one flat buffer (per request, kept
 * with the recycled request). */
typedef struct {
    char *p;
    size_t len, cap;
} mg_lines_t;

typedef struct mg_req_s mg_req_t;
typedef struct mg_ux_s mg_ux_t;
typedef struct mg_co_s mg_co_t;

typedef struct {
    uint32_t noff, nlen, voff, vlen; /* offsets into req->hbuf */
} mg_hdr_t;

enum { MG_REQ_HEAD, MG_REQ_BODY, MG_REQ_DONE };
enum { MG_ACCESS_NONE, MG_ACCESS_RUNNING, MG_ACCESS_OK, MG_ACCESS_DENIED };

struct mg_req_s {
    mg_req_t *next_free;
    mg_conn_t *conn; /* NULL once the client is gone */
    mg_gen_t *gen;
    mg_route_t *route;
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
    int access_req_ref; /* the req table scripts see (anchored until the request ends) */
    mg_lines_t xhdrs;   /* "Name: value\r\n" lines set by req:set_header() */
    mg_lines_t rxhdrs;  /* response header lines set by req:set_response_header() */
    uint64_t bytes_out;
    double t_start;
    /* target side */
    mg_ux_t *ux; /* proxy exchange */
    mg_co_t *co; /* Lua handler */
    /* head storage: url + header names/values, bounded by limits.header_size */
    uint32_t url_len;
    int nhdrs;
    int hstate;        /* 0 none, 1 in field, 2 in value */
    int host_idx;      /* index of Host header or -1 */
    int xrid_idx;      /* X-Request-Id index or -1 */
    uint32_t path_len; /* url = path [? query] */
    char request_id[40];
    size_t hcap, hlen;
    char *hbuf;
    mg_hdr_t *hdrs;
    int hdrs_cap;
};

struct mg_conn_s {
    int fd;
    int closing;   /* close once output is flushed */
    int paused;    /* parser paused between pipelined requests */
    int rd_off;    /* reading disabled (backpressure) */
    int wr_on;     /* write event armed */
    int tmode;     /* which timeout is armed */
    uint64_t nreq; /* requests served on this connection */
    struct event rev, wev, tev;
    struct evbuffer *out;
    char *in; /* saved unparsed input (pipelining) */
    size_t in_len, in_cap;
    llhttp_t parser;
    mg_req_t *req;
    struct sockaddr_storage peer;
    char peer_ip[48];
    int is_tls;
    int lidx;               /* listening socket it came from */
    mg_conn_t *prev, *next; /* all connections of the worker */
};

void mg_http_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx);
void mg_http_close_idle(void); /* stopping: close connections between requests */
void mg_conn_flush(mg_conn_t *c);
void mg_conn_read_enable(mg_conn_t *c, int on);
size_t mg_conn_pending(mg_conn_t *c);
/* Response helpers. Headers in `extra` are full "Name: value\r\n" lines. */
void mg_resp_head(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen);
void mg_resp_body(mg_req_t *r, const char *data, size_t len);
void mg_resp_end(mg_req_t *r);
void mg_resp_json_error(mg_req_t *r, int status, const char *msg);
void mg_req_target_done(mg_req_t *r); /* target finished with the response */
/* The access hook ended (allowed or it answered): go on with the request. */
void mg_http_access_finish(mg_req_t *r);
/* Is `name` overridden by req:set_header()? */
int mg_req_xhdr_has(mg_req_t *r, const char *name, size_t len);
int mg_lines_have(const char *p, size_t n, const char *name, size_t len);
int mg_evlines_have(struct evbuffer *lines, const char *name, size_t len);
int mg_lines_add(mg_lines_t *l, const char *s, size_t n);
void mg_lines_remove(mg_lines_t *l, const char *name, size_t len);
void mg_lines_merge(struct evbuffer *dst, const mg_lines_t *src);
void mg_req_xhdrs_append(mg_req_t *r, struct evbuffer *h);
/* Appends the client's header line hd as "Name: value\r\n". */
void mg_req_copy_header(mg_req_t *r, mg_hdr_t *hd, struct evbuffer *h);
void mg_req_abort(mg_req_t *r); /* target failed mid-response: close */
const char *mg_req_header(mg_req_t *r, const char *name, size_t *len);
/* The nth (0-based) header line with this name, or NULL. */
const char *mg_req_header_n(mg_req_t *r, const char *name, int nth, size_t *len);
const char *mg_status_text(int status);
int mg_http_hop_by_hop(const char *name, size_t len);
/* A header a script sets: the name a token, the value free of control
 * characters but HTAB (RFC 9110 5.1, 5.5). 1 if fine. */
int mg_http_field_ok(const char *name, size_t nlen, const char *value, size_t vlen);
/* http.c: the request target as access-log lines (HTTP and WebSocket
 * sessions) show it: cut to 300 bytes, query credentials as "-", escaped. */
void mg_log_path(const mg_req_t *r, char *esc, size_t cap);

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

#endif
