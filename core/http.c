/*
 * http.c -- client connections: reading, llhttp request parsing into
 * mg_req_t, the strict checks llhttp leaves to us, routing, pipelining
 * (one request at a time, responses in order), response framing, the
 * per-connection timeouts and a lingering close.
 *
 * Lifetimes: a connection is freed only from the event loop (conn_free via
 * the deferred-close path), never inside a callback chain that may still
 * use it. A request belongs to its connection; when the client goes away
 * while a Lua handler still runs, the handler's coroutine owns it until it
 * ends (mg_req_target_done frees it then).
 */
#include "ws.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>

enum { MG_T_NONE, MG_T_HEADER, MG_T_IDLE, MG_T_READ, MG_T_WRITE, MG_T_LINGER };

/* extra connection state kept beside the public struct */
typedef struct {
    mg_conn_t c;
    int in_exec;            /* inside llhttp_execute: defer completion work */
    int dead;               /* free at the next loop turn */
    int lingering;          /* response sent, discarding input until EOF */
    int eof;                /* client half-closed */
    int err_status;         /* status to answer when the parser stops on error */
    int upgrade;            /* parser paused for an upgrade: close after response */
    int handoff;            /* WebSocket: the socket goes to ws_http.c */
    const char *exec_start; /* input being parsed, to spot obs-fold */
    int scan_done;          /* the request head was checked for bare LF */
    int scan_nl;            /* CRLFs in a row */
    char scan_prev;
    const char *val_end; /* end of the last header value piece */
} mg_xconn_t;

#define X(c) ((mg_xconn_t *)(c))

static int mg_http_on_message_begin(llhttp_t *p);
static int mg_http_on_url(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_header_field(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_header_value(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_headers_complete(llhttp_t *p);
void mg_req_copy_header(mg_req_t *r, mg_hdr_t *hd, struct evbuffer *h) {
    char line[512];
    size_t n = hd->nlen + hd->vlen + 4;
    if (n > sizeof(line)) {
        evbuffer_add(h, r->hbuf + hd->noff, hd->nlen);
        evbuffer_add(h, ": ", 2);
        evbuffer_add(h, r->hbuf + hd->voff, hd->vlen);
        evbuffer_add(h, "\r\n", 2);
        return;
    }
    memcpy(line, r->hbuf + hd->noff, hd->nlen); /* one add: evbuffer_add is not cheap */
    memcpy(line + hd->nlen, ": ", 2);
    memcpy(line + hd->nlen + 2, r->hbuf + hd->voff, hd->vlen);
    memcpy(line + n - 2, "\r\n", 2);
    evbuffer_add(h, line, n);
}

/* Appends the headers set by req:set_header() (not the removals). */
void mg_req_xhdrs_append(mg_req_t *r, struct evbuffer *h) {
    const char *p = r->xhdrs.p, *end = p + r->xhdrs.len;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p);
        if (eol == NULL)
            break;
        if (eol - p >= 2 && eol[-2] != ':') /* "Name:\r\n" is a removal */
            evbuffer_add(h, p, eol + 1 - p);
        p = eol + 1;
    }
}

static void mg_http_dispatch(mg_req_t *r);

static int mg_http_on_body(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_message_complete(llhttp_t *p);
static void mg_conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_conn_advance(mg_conn_t *c);
static void mg_conn_exec(mg_conn_t *c, const char *data, size_t len);
static void mg_conn_close_later(mg_conn_t *c);
static void mg_conn_arm(mg_conn_t *c, int mode);
static void mg_req_free(mg_req_t *r);

static llhttp_settings_t mg_http_settings = {
    .on_message_begin = mg_http_on_message_begin,
    .on_url = mg_http_on_url,
    .on_header_field = mg_http_on_header_field,
    .on_header_value = mg_http_on_header_value,
    .on_headers_complete = mg_http_on_headers_complete,
    .on_body = mg_http_on_body,
    .on_message_complete = mg_http_on_message_complete,
};

static mg_conn_t *mg_conns; /* every open connection, for a graceful stop */

/* Requests are reused from a small free list: no malloc per request. */
static mg_req_t *mg_req_free_list;
static int mg_req_free_count;

size_t mg_utoa(char *buf, uint64_t v) {
    char tmp[24];
    size_t n = 0, i;
    do {
        tmp[n++] = '0' + v % 10;
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

double mg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* mg_now to the kernel's tick (a few ms): read from memory, without the
 * clock read that costs as much as the rest of a small WebSocket frame.
 * For stamps that only need to be fresh to the tick (peer silence is
 * judged in seconds). */
double mg_now_coarse(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *mg_status_text(int s) {
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Hop-by-hop headers (RFC 9110 7.6.1) plus the framing ones we redo. */
int mg_http_hop_by_hop(const char *n, size_t l) {
    static const struct {
        const char *s;
        size_t l;
    } hop[] = {{"connection", 10},       {"keep-alive", 10},         {"te", 2},
               {"trailer", 7},           {"transfer-encoding", 17},  {"upgrade", 7},
               {"proxy-connection", 16}, {"proxy-authenticate", 18}, {"proxy-authorization", 19},
               {"content-length", 14}};
    if (l >= 6 && (n[0] | 0x20) == 'p' && strncasecmp(n, "proxy-", 6) == 0)
        return 1; /* Proxy-Connection, Proxy-Authorization, ... */
    switch (l) {  /* most headers are none of these lengths */
    case 2:
    case 7:
    case 10:
    case 14:
    case 17: break;
    default: return 0;
    }
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (hop[i].l == l && strncasecmp(hop[i].s, n, l) == 0)
            return 1;
    return 0;
}

/* ---- request memory ---- */

static mg_req_t *mg_req_new(mg_conn_t *c) {
    mg_gen_t *g = mg_gen_current;
    mg_req_t *r = mg_req_free_list;
    size_t cap = g->limits.header_size + 64;
    int hcap = g->limits.header_count;

    if (r) {
        mg_req_free_list = r->next_free;
        mg_req_free_count--;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
    }
    if (r->hcap < cap) {
        free(r->hbuf);
        r->hbuf = malloc(cap);
        r->hcap = r->hbuf ? cap : 0;
    }
    if (r->hdrs_cap < hcap) {
        free(r->hdrs);
        r->hdrs = malloc(sizeof(mg_hdr_t) * hcap);
        r->hdrs_cap = r->hdrs ? hcap : 0;
    }
    if (r->hbuf == NULL || r->hdrs == NULL) {
        free(r->hbuf);
        free(r->hdrs);
        free(r);
        return NULL;
    }
    {
        char *hb = r->hbuf;
        mg_hdr_t *hd = r->hdrs;
        size_t hc = r->hcap;
        int dc = r->hdrs_cap;
        mg_lines_t xh = r->xhdrs, rxh = r->rxhdrs; /* their memory is reused */
        memset(r, 0, sizeof(*r));
        r->hbuf = hb, r->hdrs = hd, r->hcap = hc, r->hdrs_cap = dc;
        r->xhdrs = xh, r->rxhdrs = rxh;
        r->xhdrs.len = r->rxhdrs.len = 0;
    }
    r->conn = c;
    r->gen = g;
    r->access_req_ref = LUA_NOREF;
    mg_gen_retain(g);
    r->clen = -1;
    r->host_idx = r->xrid_idx = -1;
    r->t_start = mg_now();
    mg_worker.inflight++;
    return r;
}

static void mg_req_free(mg_req_t *r) {
    mg_worker.inflight--;
    if (r->access_req_ref != LUA_NOREF)
        mg_req_unlink(r);
    mg_gen_release(r->gen);
    if (mg_req_free_count < 256) {
        r->next_free = mg_req_free_list;
        mg_req_free_list = r;
        mg_req_free_count++;
    } else {
        free(r->xhdrs.p);
        free(r->rxhdrs.p);
        free(r->hbuf);
        free(r->hdrs);
        free(r);
    }
}

const char *mg_req_header_n(mg_req_t *r, const char *name, int nth, size_t *len) {
    size_t nl = strlen(name);
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        if (h->nlen == nl && strncasecmp(r->hbuf + h->noff, name, nl) == 0 && nth-- == 0) {
            *len = h->vlen;
            return r->hbuf + h->voff;
        }
    }
    return NULL;
}

const char *mg_req_header(mg_req_t *r, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        if (h->nlen == nl && strncasecmp(r->hbuf + h->noff, name, nl) == 0) {
            *len = h->vlen;
            return r->hbuf + h->voff;
        }
    }
    return NULL;
}

/* ---- output ---- */

size_t mg_conn_pending(mg_conn_t *c) { return evbuffer_get_length(c->out); }

void mg_conn_flush(mg_conn_t *c) {
    size_t left;
    if (X(c)->dead)
        return;
    left = evbuffer_get_length(c->out);
    if (left) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            mg_conn_close_later(c);
            return;
        }
        left = evbuffer_get_length(c->out);
    }
    if (left && !c->wr_on) {
        event_add(&c->wev, NULL);
        c->wr_on = 1;
        if (c->req && mg_gen_current->timeouts.write > 0)
            mg_conn_arm(c, MG_T_WRITE);
    } else if (!left && c->wr_on) {
        event_del(&c->wev);
        c->wr_on = 0;
    }
}

/* "Date: ...\r\n", formatted once a second. */
static const char *mg_http_date(size_t *len) {
    static char buf[64];
    static size_t blen;
    static time_t last;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        blen = strftime(buf, sizeof(buf), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = now;
    }
    *len = blen;
    return buf;
}

void mg_resp_head(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen) {
    mg_conn_t *c = r->conn;
    char line[160];
    const char *text, *date;
    size_t n, dlen;
    int nobody = status < 200 || status == 204 || status == 304;

    r->status = status;
    r->resp_started = 1;
    if (c == NULL)
        return;
    if (!nobody) {
        if (clen < 0) {
            if (r->http_minor >= 1)
                r->resp_chunked = 1;
            else
                r->resp_close = 1;
        }
    }
    if (X(c)->upgrade || X(c)->eof || mg_worker.stopping)
        r->resp_close = 1;
    /* built by hand: this runs once per response */
    text = mg_status_text(status);
    memcpy(line, "HTTP/1.1 ", 9);
    n = 9 + mg_utoa(line + 9, (unsigned)status);
    line[n++] = ' ';
    memcpy(line + n, text, strlen(text));
    n += strlen(text);
    line[n++] = '\r';
    line[n++] = '\n';
    date = mg_http_date(&dlen);
    memcpy(line + n, date, dlen);
    n += dlen;
    evbuffer_add(c->out, line, n);
    if (extralen)
        evbuffer_add(c->out, extra, extralen);
    if (!nobody) {
        n = 0;
        if (clen >= 0) {
            memcpy(line, "Content-Length: ", 16);
            n = 16 + mg_utoa(line + 16, (uint64_t)clen);
            line[n++] = '\r';
            line[n++] = '\n';
        } else if (r->resp_chunked) {
            memcpy(line, "Transfer-Encoding: chunked\r\n", 28);
            n = 28;
        }
        if (n)
            evbuffer_add(c->out, line, n);
    }
    if (!r->keep_alive || r->resp_close)
        evbuffer_add(c->out, "Connection: close\r\n\r\n", 21);
    else if (r->http_minor == 0)
        evbuffer_add(c->out, "Connection: keep-alive\r\n\r\n", 26);
    else
        evbuffer_add(c->out, "\r\n", 2);
}

void mg_resp_body(mg_req_t *r, const char *data, size_t len) {
    mg_conn_t *c = r->conn;
    if (c == NULL || len == 0 || r->method == HTTP_HEAD)
        return;
    r->bytes_out += len;
    if (r->resp_chunked) {
        char hex[24];
        int n = snprintf(hex, sizeof(hex), "%zx\r\n", len);
        evbuffer_add(c->out, hex, n);
        evbuffer_add(c->out, data, len);
        evbuffer_add(c->out, "\r\n", 2);
    } else {
        evbuffer_add(c->out, data, len);
    }
}

void mg_resp_end(mg_req_t *r) {
    if (r->conn && r->resp_chunked && r->method != HTTP_HEAD)
        evbuffer_add(r->conn->out, "0\r\n\r\n", 5);
}

/* JSON string escaping for our own messages (ASCII in, ASCII out). */
static size_t mg_json_escape(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = ch;
        }
    }
    out[o] = '\0';
    return o;
}

static void mg_resp_json_error_with(mg_req_t *r, int status, const char *msg, const char *extra) {
    char body[600], esc[400], hdrs[300];
    int n, hl;
    mg_json_escape(esc, sizeof(esc), msg);
    n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"request_id\":\"%s\"}\n", esc,
                 r->request_id);
    hl = snprintf(hdrs, sizeof(hdrs), "Content-Type: application/json\r\n%s", extra);
    if (status >= 400 && r->state != MG_REQ_DONE)
        r->resp_close = 1; /* the unread body would be taken for a request */
    mg_resp_head(r, status, hdrs, hl, n);
    mg_resp_body(r, body, n);
    r->resp_done = 1;
}

void mg_resp_json_error(mg_req_t *r, int status, const char *msg) {
    mg_resp_json_error_with(r, status, msg, "");
}

/* A WebSocket route: check the handshake now, hand the socket over once
 * the request is fully parsed (mg_conn_advance). */
static void mg_http_ws_route(mg_req_t *r) {
    mg_ws_hs_t hs;
    const char *why;
    size_t ul;
    int st;

    if (mg_req_header(r, "upgrade", &ul) == NULL) {
        if (r->route->upstream) {
            mg_proxy_start(r); /* plain HTTP on a WebSocket upstream route */
            return;
        }
        mg_resp_json_error_with(r, 426, "this route speaks WebSocket",
                                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        return;
    }
    st = mg_ws_handshake_check(r, &hs, &why);
    if (st == 426) {
        mg_resp_json_error_with(r, 426, why, "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (st) {
        mg_resp_json_error(r, st, why);
        return;
    }
    if (mg_ws_count() >= (uint64_t)r->gen->max_websockets) {
        mg_warn("request %s: websocket limit (%d per worker) reached", r->request_id,
                r->gen->max_websockets);
        mg_resp_json_error(r, 503, "too many websockets");
        return;
    }
    r->ws_upgrade = 1;
}

/* ---- request id ---- */

uint64_t mg_rng_next(void) {
    uint64_t s1 = mg_worker.rng[0];
    const uint64_t s0 = mg_worker.rng[1];
    mg_worker.rng[0] = s0;
    s1 ^= s1 << 23;
    mg_worker.rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return mg_worker.rng[1] + s0;
}

void mg_request_id(char *out) {
    static const char hex[] = "0123456789abcdef";
    uint64_t a = mg_rng_next(), b = mg_rng_next();
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (i * 4)) & 15];
        out[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

static int mg_request_id_valid(const char *v, size_t len) {
    if (len == 0 || len > 36)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)v[i]) || v[i] == '-' || v[i] == '_' || v[i] == '.'))
            return 0;
    return 1;
}

/* ---- parser callbacks ---- */

static int mg_http_append(mg_req_t *r, const char *at, size_t len) {
    if (r->hlen + len > r->gen->limits.header_size) {
        X(r->conn)->err_status = r->hstate == 0 ? 414 : 431;
        return -1;
    }
    memcpy(r->hbuf + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

static int mg_http_on_message_begin(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = mg_req_new(c);
    if (r == NULL) {
        X(c)->err_status = 503;
        return -1;
    }
    c->req = r;
    r->state = MG_REQ_HEAD;
    mg_conn_arm(c, MG_T_HEADER);
    return 0;
}

static int mg_http_on_url(llhttp_t *p, const char *at, size_t len) {
    mg_req_t *r = ((mg_conn_t *)p->data)->req;
    r->url_len += len;
    return mg_http_append(r, at, len);
}

static int mg_http_on_header_field(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (r->hstate != 1) {
        if (r->nhdrs == r->gen->limits.header_count) {
            X(c)->err_status = 431;
            return -1;
        }
        r->hdrs[r->nhdrs].noff = r->hlen;
        r->hdrs[r->nhdrs].nlen = 0;
        r->hdrs[r->nhdrs].voff = r->hlen;
        r->hdrs[r->nhdrs].vlen = 0;
        r->nhdrs++;
        r->hstate = 1;
    }
    r->hdrs[r->nhdrs - 1].nlen += len;
    return mg_http_append(r, at, len);
}

static int mg_http_on_header_value(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    mg_hdr_t *h = &r->hdrs[r->nhdrs - 1];
    if (r->hstate != 2) {
        h->voff = r->hlen;
        h->vlen = 0;
        r->hstate = 2;
    } else if (at != X(c)->val_end && at != X(c)->exec_start) {
        /* a value continued after a line break: obs-fold (RFC 9112 5.2) */
        X(c)->err_status = 400;
        return -1;
    }
    X(c)->val_end = at + len;
    h->vlen += len;
    return mg_http_append(r, at, len);
}

static int mg_http_name_is(mg_req_t *r, mg_hdr_t *h, const char *name, size_t len) {
    return h->nlen == len && strncasecmp(r->hbuf + h->noff, name, len) == 0;
}

static int mg_http_host_valid(const char *v, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = v[i];
        if (!(isalnum(ch) || strchr("-._~%!$&'()*+,;=:[]", ch)))
            return 0;
    }
    return 1;
}

/* Checks llhttp leaves to us: Host (RFC 9112 3.2), framing, target form,
 * dot segments. Returns 0 or an HTTP status to refuse with. */
static int mg_http_check_head(mg_req_t *r, llhttp_t *p) {
    int hosts = 0, te = 0, i;
    const char *url = r->hbuf;

    for (i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        const char *v = r->hbuf + h->voff;
        size_t k;
        /* bare CR, NUL and other CTLs inside a value (obs-fold shows up as CR/LF) */
        for (k = 0; k < h->vlen; k++) {
            unsigned char ch = v[k];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return 400;
        }
        if (h->nlen == 0)
            return 400;
        if (mg_http_name_is(r, h, "host", 4)) {
            hosts++;
            r->host_idx = i;
            if (!mg_http_host_valid(v, h->vlen))
                return 400;
        } else if (mg_http_name_is(r, h, "transfer-encoding", 17)) {
            te++;
        } else if (mg_http_name_is(r, h, "x-request-id", 12)) {
            r->xrid_idx = i;
        } else if (mg_http_name_is(r, h, "expect", 6)) {
            if (h->vlen == 12 && strncasecmp(v, "100-continue", 12) == 0)
                r->expect_continue = 1;
            else
                return 417;
        }
    }
    if (hosts > 1 || (hosts == 0 && p->http_minor >= 1))
        return 400;
    if (te && p->http_minor == 0)
        return 400; /* RFC 9112 6.1: faulty framing from a 1.0 client */
    if (p->method == HTTP_CONNECT)
        return 405;
    if (p->http_major != 1)
        return 505;

    /* request target: origin-form, or "*" for OPTIONS; absolute-form is
     * accepted and reduced to its path */
    if (r->url_len == 1 && url[0] == '*') {
        if (p->method != HTTP_OPTIONS)
            return 400;
        r->path_len = 1;
        return 0;
    }
    if (url[0] != '/') {
        const char *s;
        if (r->url_len > 7 && strncasecmp(url, "http://", 7) == 0)
            s = memchr(url + 7, '/', r->url_len - 7);
        else if (r->url_len > 8 && strncasecmp(url, "https://", 8) == 0)
            s = memchr(url + 8, '/', r->url_len - 8);
        else
            return 400;
        if (s == NULL)
            return 400;
        memmove(r->hbuf, s, r->url_len - (s - url));
        /* the freed bytes at the end stay unused; header offsets stay valid */
        r->url_len -= s - url;
    }
    {
        const char *q = memchr(url, '?', r->url_len);
        const char *f = memchr(url, '#', r->url_len);
        size_t plen = q ? (size_t)(q - url) : r->url_len;
        if (f)
            return 400;
        r->path_len = plen;
        /* refuse dot segments: routing on "/a/../b" would differ from the upstream's view */
        for (size_t k = 0; k < plen; k++) {
            if (url[k] == '/' && k + 1 < plen && url[k + 1] == '.') {
                size_t e = k + 2;
                if (e < plen && url[e] == '.')
                    e++;
                if (e == plen || url[e] == '/')
                    return 400;
            }
            if (url[k] == '%' && k + 2 < plen && url[k + 1] == '2' &&
                (url[k + 2] == 'e' || url[k + 2] == 'E'))
                return 400;
        }
    }
    return 0;
}

static int mg_http_on_headers_complete(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    const char *host = NULL;
    size_t hostlen = 0;
    int st;

    r->method = p->method;
    r->http_minor = p->http_major == 1 ? p->http_minor : 0;
    r->keep_alive = llhttp_should_keep_alive(p) && !mg_worker.stopping;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->clen = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    r->state = MG_REQ_BODY;
    mg_conn_arm(c, mg_gen_current->timeouts.read > 0 ? MG_T_READ : MG_T_NONE);

    st = mg_http_check_head(r, p);
    if (r->xrid_idx >= 0 &&
        mg_request_id_valid(r->hbuf + r->hdrs[r->xrid_idx].voff, r->hdrs[r->xrid_idx].vlen)) {
        memcpy(r->request_id, r->hbuf + r->hdrs[r->xrid_idx].voff, r->hdrs[r->xrid_idx].vlen);
        r->request_id[r->hdrs[r->xrid_idx].vlen] = '\0';
    } else {
        mg_request_id(r->request_id);
    }
    if (st) {
        X(c)->err_status = st;
        return -1;
    }
    if (r->host_idx >= 0) {
        host = r->hbuf + r->hdrs[r->host_idx].voff;
        hostlen = r->hdrs[r->host_idx].vlen;
    }
    r->route = mg_route_match(r->gen, mg_gen_server_of(r->gen, c->lidx), r->method, host, hostlen,
                              r->hbuf, r->path_len, NULL, NULL);
    if (r->route == NULL) {
        r->resp_close = !(r->clen <= 0 && !r->chunked);
        mg_resp_json_error(r, 404, "no route");
        return 0;
    }
    if (r->route->body_size && r->clen > 0 && (uint64_t)r->clen > r->route->body_size) {
        mg_resp_json_error(r, 413, "request body too large");
        return 0;
    }
    /* access hooks first; Lua handler routes run them in the handler's
     * own coroutine (moongate.run), the others in one of their own */
    if (r->route->access_ref != LUA_NOREF && (r->route->upstream || r->route->ws)) {
        r->access_state = MG_ACCESS_RUNNING;
        mg_lua_access_start(r);
        if (r->access_state == MG_ACCESS_RUNNING)
            return HPE_PAUSED; /* the body waits until the hook decides */
        if (r->access_state == MG_ACCESS_DENIED)
            return 0;
    }
    mg_http_dispatch(r);
    return 0;
}

static void mg_http_dispatch(mg_req_t *r) {
    mg_conn_t *c = r->conn;
    if (r->route->ws) {
        mg_http_ws_route(r);
        return;
    }
    if (r->expect_continue && (r->clen > 0 || r->chunked))
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    if (r->route->upstream)
        mg_proxy_start(r);
    else
        mg_lua_handler_start(r);
}

int mg_req_xhdr_has(mg_req_t *r, const char *name, size_t len) {
    return mg_lines_have(r->xhdrs.p, r->xhdrs.len, name, len);
}

int mg_lines_add(mg_lines_t *l, const char *s, size_t n) {
    if (l->len + n > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        char *p;
        while (cap < l->len + n)
            cap *= 2;
        if ((p = realloc(l->p, cap)) == NULL)
            return MG_ERR;
        l->p = p, l->cap = cap;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
    return MG_OK;
}

/* Removes the lines of header `name` (any case). */
void mg_lines_remove(mg_lines_t *l, const char *name, size_t len) {
    char *p = l->p, *end = l->p + l->len;
    while (p < end) {
        char *eol = memchr(p, '\n', end - p), *colon = memchr(p, ':', end - p);
        if (eol == NULL)
            break;
        if (colon && colon < eol && (size_t)(colon - p) == len && strncasecmp(p, name, len) == 0) {
            size_t n = eol + 1 - p;
            memmove(p, eol + 1, end - eol - 1);
            l->len -= n;
            end -= n;
            continue;
        }
        p = eol + 1;
    }
}

/* Appends the lines of `src` whose names `dst` lacks. */
void mg_lines_merge(struct evbuffer *dst, const mg_lines_t *src) {
    const char *p = src->p, *end = src->p + src->len;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p), *colon = memchr(p, ':', end - p);
        if (eol == NULL || colon == NULL || colon > eol)
            break;
        if (!mg_evlines_have(dst, p, colon - p))
            evbuffer_add(dst, p, eol + 1 - p);
        p = eol + 1;
    }
}

int mg_evlines_have(struct evbuffer *lines, const char *name, size_t len) {
    size_t n = evbuffer_get_length(lines);
    if (n == 0)
        return 0;
    return mg_lines_have((const char *)evbuffer_pullup(lines, -1), n, name, len);
}

/* Whether "Name: value\r\n" lines hold a header `name` (any case). */
int mg_lines_have(const char *p, size_t n, const char *name, size_t len) {
    const char *end = p + n;
    while (p < end) {
        const char *colon = memchr(p, ':', end - p), *eol;
        if (colon == NULL)
            break;
        if ((size_t)(colon - p) == len && strncasecmp(p, name, len) == 0)
            return 1;
        eol = memchr(colon, '\n', end - colon);
        if (eol == NULL)
            break;
        p = eol + 1;
    }
    return 0;
}

static void mg_http_dispatch(mg_req_t *r);

static int mg_http_on_body(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;

    r->body_rx += len;
    if (r->route == NULL || (r->resp_done && !r->ux && !r->co))
        return 0; /* answered already (404/413): discard */
    if (r->route->body_size && r->body_rx > r->route->body_size) {
        if (r->resp_started) {
            X(c)->err_status = -1; /* just close */
            return -1;
        }
        if (r->ux)
            mg_proxy_client_gone(r);
        mg_resp_json_error(r, 413, "request body too large");
        return 0;
    }
    if (r->ux)
        mg_proxy_body(r, at, len);
    else if (r->co)
        mg_lua_body(r, at, len);
    return 0;
}

static int mg_http_on_message_complete(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    r->state = MG_REQ_DONE;
    if (r->ux)
        mg_proxy_body_end(r);
    else if (r->co)
        mg_lua_body_end(r);
    return HPE_PAUSED; /* one request at a time: responses stay in order */
}

/* ---- connection state machine ---- */

static void mg_conn_save_input(mg_conn_t *c, const char *data, size_t len) {
    if (len == 0)
        return;
    if (c->in_len + len > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        char *n;
        while (cap < c->in_len + len)
            cap *= 2;
        n = realloc(c->in, cap);
        if (n == NULL) {
            mg_conn_close_later(c);
            return;
        }
        c->in = n;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    /* pipelined input beyond one read's worth waits in the socket */
    if (c->in_len >= MG_READ_CHUNK)
        mg_conn_read_enable(c, 0);
}

static void mg_conn_fail(mg_conn_t *c, int status) {
    mg_req_t *r = c->req;

    c->closing = 1;
    if (r == NULL) {
        /* error before a request began (e.g. a bad request line): answer
         * with a bare request */
        if (status <= 0 || mg_http_on_message_begin(&c->parser) != 0)
            return;
        r = c->req;
        mg_request_id(r->request_id);
    }
    if (r->ux)
        mg_proxy_client_gone(r);
    if (status > 0 && !r->resp_started) {
        r->keep_alive = 0;
        r->resp_close = 1;
        if (r->http_minor == 0 && r->state == MG_REQ_HEAD)
            r->http_minor = 1;
        mg_resp_json_error(r, status,
                           status == 414   ? "request line too long"
                           : status == 431 ? "request header fields too large"
                           : status == 417 ? "unsupported expectation"
                           : status == 405 ? "method not allowed"
                           : status == 408 ? "request timeout"
                           : status == 503 ? "service unavailable"
                           : status == 505 ? "http version not supported"
                                           : "bad request");
    } else {
        /* mid-response: the only signal left is closing */
        r->resp_done = 1;
        mg_conn_close_later(c);
        return;
    }
    if (r->co) {
        /* the handler still runs: it keeps the request, the connection
         * closes once the error is flushed */
        c->req = NULL;
        r->conn = NULL;
        mg_lua_client_gone(r);
    }
}

/* llhttp (8.1, even strict) takes a bare LF after the request line; RFC
 * 9112 2.2 lets a server refuse it, and a proxy must, since the upstream
 * may frame the message differently. Scans head bytes only, up to the
 * blank line. Returns -1 on a bare LF. */
static int mg_http_scan_head(mg_xconn_t *x, const char *p, size_t n) {
    for (size_t i = 0; i < n && !x->scan_done; i++) {
        char ch = p[i];
        if (ch == '\n') {
            if (x->scan_prev != '\r')
                return -1;
            if (++x->scan_nl == 2)
                x->scan_done = 1;
        } else if (ch != '\r') {
            x->scan_nl = 0;
        }
        x->scan_prev = ch;
    }
    return 0;
}

static void mg_conn_exec(mg_conn_t *c, const char *data, size_t len) {
    llhttp_errno_t err;

    if (!X(c)->scan_done && mg_http_scan_head(X(c), data, len) < 0) {
        mg_conn_fail(c, 400);
        return;
    }

    X(c)->in_exec = 1;
    X(c)->exec_start = data;
    err = llhttp_execute(&c->parser, data, len);
    X(c)->in_exec = 0;
    if (err == HPE_OK)
        return;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->paused = 1;
        if (err == HPE_PAUSED_UPGRADE) {
            /* no WebSocket on this route: answer, then close (the rest is
             * another protocol) */
            X(c)->upgrade = 1;
            if (c->req) {
                c->req->state = MG_REQ_DONE;
                c->req->resp_close = 1;
            }
            return;
        }
        if (pos && pos >= data && pos <= data + len)
            mg_conn_save_input(c, pos, data + len - pos);
        return;
    }
    mg_debug("parse error: %s (%s)", llhttp_errno_name(err), llhttp_get_error_reason(&c->parser));
    mg_conn_fail(c, X(c)->err_status ? X(c)->err_status : 400);
}

void mg_conn_read_enable(mg_conn_t *c, int on) {
    if (on && c->rd_off && !X(c)->dead) {
        event_add(&c->rev, NULL);
        c->rd_off = 0;
    } else if (!on && !c->rd_off) {
        event_del(&c->rev);
        c->rd_off = 1;
    }
}

/* Credentials in a query (WebSocket clients pass tokens there) stay out of
 * the access log: the values of these parameters become "-". In place. */
static void mg_log_redact_query(char *path) {
    static const char *secret[] = {"token", "access_token", "api_key", "apikey",
                                   "key",   "password",     "secret",  "jwt"};
    char *q = strchr(path, '?');
    while (q) {
        char *name = q + 1, *eq = strchr(name, '='), *amp = strchr(name, '&');
        if (eq && (amp == NULL || eq < amp)) {
            size_t nl = eq - name;
            for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
                if (strlen(secret[i]) == nl && strncasecmp(name, secret[i], nl) == 0) {
                    char *end = amp ? amp : eq + strlen(eq);
                    memmove(eq + 2, end, strlen(end) + 1);
                    eq[1] = '-';
                    amp = strchr(eq + 1, '&');
                    break;
                }
        }
        q = amp;
    }
}

static void mg_conn_finish_req(mg_conn_t *c, mg_req_t *r) {
    if (r->resp_close || !r->keep_alive)
        c->closing = 1;
    if (r->gen->access_log) {
        char line[1024], path[400];
        int n;
        size_t pl = r->url_len < 300 ? r->url_len : 300;
        memcpy(path, r->hbuf, pl);
        path[pl] = '\0';
        mg_log_redact_query(path);
        {
            char esc[400];
            mg_json_escape(esc, sizeof(esc), path);
            n = snprintf(
                line, sizeof(line),
                "{\"type\":\"access\",\"time\":%.3f,\"request_id\":\"%s\",\"remote\":\"%s\","
                "\"method\":\"%s\",\"path\":\"%s\",\"status\":%d,\"bytes\":%llu,"
                "\"duration_ms\":%.3f,\"route\":\"%s\",\"generation\":%u}\n",
                r->t_start, r->request_id, c->peer_ip,
                llhttp_method_name((llhttp_method_t)r->method), esc, r->status,
                (unsigned long long)r->bytes_out, (mg_now() - r->t_start) * 1000.0,
                r->route ? (r->route->name ? r->route->name : r->route->rule) : "", r->gen->id);
        }
        if (n > 0)
            mg_access_log_write(line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
    if (r->route && r->route->log_ref != LUA_NOREF)
        mg_lua_log(r, (mg_now() - r->t_start) * 1000.0);
    c->req = NULL;
    c->nreq++;
    X(c)->scan_done = X(c)->scan_nl = 0;
    X(c)->scan_prev = 0;
    mg_req_free(r);
}

static void mg_conn_advance(mg_conn_t *c) {
    for (;;) {
        mg_req_t *r = c->req;
        if (X(c)->dead)
            return;
        if (r) {
            if (r->ws_upgrade && r->state == MG_REQ_DONE) {
                X(c)->handoff = 1;
                mg_conn_close_later(c);
                return;
            }
            if (!r->resp_done || r->ux || r->co)
                break;
            if (r->state != MG_REQ_DONE)
                c->closing = 1;
            mg_conn_finish_req(c, r);
        }
        if (c->closing)
            break;
        if (!c->paused)
            break;
        c->paused = 0;
        llhttp_resume(&c->parser);
        if (c->in_len == 0)
            break;
        {
            char *data = c->in;
            size_t len = c->in_len;
            c->in = NULL;
            c->in_len = c->in_cap = 0;
            mg_conn_exec(c, data, len);
            free(data);
        }
    }
    if (X(c)->dead)
        return;
    if (c->req == NULL) {
        if (c->closing) {
            mg_conn_flush(c);
            if (!X(c)->dead && evbuffer_get_length(c->out) == 0) {
                /* lingering close: stop sending, drain input briefly so a
                 * reset does not destroy the response in flight */
                shutdown(c->fd, SHUT_WR);
                X(c)->lingering = 1;
                mg_conn_read_enable(c, 1);
                mg_conn_arm(c, MG_T_LINGER);
            }
            return;
        }
        if (c->in_len < MG_READ_CHUNK)
            mg_conn_read_enable(c, 1);
        mg_conn_arm(c, MG_T_IDLE);
    }
    mg_conn_flush(c);
}

void mg_http_access_finish(mg_req_t *r) {
    mg_conn_t *c = r->conn;
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    if (r->access_state == MG_ACCESS_DENIED)
        r->resp_done = 1;
    if (X(c)->in_exec)
        return; /* decided at once: on_headers_complete goes on */
    if (r->access_state == MG_ACCESS_OK)
        mg_http_dispatch(r);
    /* the parser stopped after the head: read on (the body, or the end) */
    if (c->paused && !X(c)->dead && r->state != MG_REQ_DONE) {
        char *data = c->in;
        size_t len = c->in_len;
        c->paused = 0;
        llhttp_resume(&c->parser);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        /* even with no bytes: llhttp then runs what needs no input (the
         * end of a bodyless message) */
        mg_conn_exec(c, data ? data : "", len);
        free(data);
        mg_conn_read_enable(c, 1);
    }
    mg_conn_advance(c);
}

void mg_req_target_done(mg_req_t *r) {
    mg_conn_t *c = r->conn;
    r->resp_done = 1;
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    if (X(c)->in_exec)
        return; /* the caller of llhttp_execute advances */
    mg_conn_advance(c);
}

void mg_req_abort(mg_req_t *r) {
    mg_conn_t *c = r->conn;
    r->resp_done = 1;
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    c->closing = 1;
    r->resp_close = 1;
    if (!X(c)->in_exec)
        mg_conn_close_later(c);
}

static void mg_conn_free(mg_conn_t *c) {
    mg_req_t *r = c->req;
    if (r) {
        r->conn = NULL;
        c->req = NULL;
        if (r->ux)
            mg_proxy_client_gone(r);
        if (r->co)
            mg_lua_client_gone(r); /* the coroutine frees r when it ends */
        else
            mg_req_free(r);
    }
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    if (c->fd >= 0)
        close(c->fd);
    evbuffer_free(c->out);
    free(c->in);
    if (c->prev)
        c->prev->next = c->next;
    else
        mg_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
    mg_worker.active--;
}

static void mg_conn_close_later(mg_conn_t *c) {
    if (X(c)->dead)
        return;
    X(c)->dead = 1;
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    event_active(&c->tev, EV_TIMEOUT, 1);
}

static void mg_conn_arm(mg_conn_t *c, int mode) {
    int ms = 0;
    mg_gen_t *g = mg_gen_current;
    c->tmode = mode;
    switch (mode) {
    case MG_T_HEADER: ms = g->timeouts.header; break;
    case MG_T_IDLE: ms = g->timeouts.idle; break;
    case MG_T_READ: ms = g->timeouts.read; break;
    case MG_T_WRITE: ms = g->timeouts.write; break;
    case MG_T_LINGER: ms = 2000; break;
    default: break;
    }
    if (ms > 0)
        event_add(&c->tev, mg_timeout_tv(ms));
    else
        event_del(&c->tev);
}

static void mg_conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_conn_t *c = arg;
    (void)fd, (void)what;
    if (X(c)->handoff) {
        int sfd = c->fd;
        c->fd = -1;
        mg_ws_takeover(c->req, sfd, c->in, c->in_len);
        mg_conn_free(c);
        return;
    }
    if (X(c)->dead || X(c)->lingering) {
        mg_conn_free(c);
        return;
    }
    switch (c->tmode) {
    case MG_T_HEADER:
    case MG_T_READ:
        if (c->req && !c->req->resp_started && c->req->state != MG_REQ_DONE) {
            mg_conn_fail(c, 408);
            mg_conn_advance(c);
            return;
        }
        if (c->req == NULL) {
            mg_conn_free(c);
            return;
        }
        break;
    case MG_T_IDLE:
        if (c->req == NULL) {
            mg_conn_free(c);
            return;
        }
        break;
    case MG_T_WRITE: mg_conn_free(c); return;
    default: break;
    }
}

/* One read. Returns 1 when the socket may hold more (edge-triggered:
 * keep reading until a short read), 0 when done or the connection went. */
static int mg_conn_read_once(mg_conn_t *c, int fd) {
    ssize_t n;

    n = recv(fd, mg_worker.scratch, sizeof(mg_worker.scratch), 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        mg_conn_free(c);
        return 0;
    }
    if (X(c)->lingering) {
        if (n == 0) {
            mg_conn_free(c);
            return 0;
        }
        return 1;
    }
    if (n == 0) {
        /* EOF: with nothing in progress, we are done; otherwise the client
         * half-closed and still waits for its answer */
        X(c)->eof = 1;
        mg_conn_read_enable(c, 0);
        if (c->req == NULL && c->in_len == 0) {
            mg_conn_free(c);
            return 0;
        }
        if (c->req && c->req->state != MG_REQ_DONE) {
            if (llhttp_finish(&c->parser) != HPE_OK || c->req->state != MG_REQ_DONE) {
                if (c->req->state == MG_REQ_HEAD)
                    mg_conn_fail(c, 400);
                else
                    mg_conn_fail(c, c->req->resp_started ? -1 : 400);
            }
        }
        c->closing = c->req == NULL ? 1 : c->closing;
        mg_conn_advance(c);
        return 0;
    }
    if (c->tmode == MG_T_READ)
        mg_conn_arm(c, MG_T_READ);
    if (c->paused || c->closing) {
        if (!c->closing)
            mg_conn_save_input(c, mg_worker.scratch, n);
        return (size_t)n == sizeof(mg_worker.scratch) && !X(c)->dead && !c->rd_off;
    }
    if (c->req == NULL && c->tmode == MG_T_IDLE)
        mg_conn_arm(c, MG_T_HEADER);
    mg_conn_exec(c, mg_worker.scratch, n);
    mg_conn_advance(c);
    return (size_t)n == sizeof(mg_worker.scratch) && !X(c)->dead && !c->rd_off;
}

static void mg_conn_read_cb(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    while (mg_conn_read_once(arg, fd))
        ;
}

static void mg_conn_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_conn_t *c = arg;
    mg_req_t *r = c->req;
    (void)fd, (void)what;
    mg_conn_flush(c);
    if (X(c)->dead)
        return;
    if (evbuffer_get_length(c->out) < MG_LOW_WATER && r) {
        if (c->tmode == MG_T_WRITE)
            mg_conn_arm(c, MG_T_NONE);
        if (r->ux)
            mg_proxy_client_drained(r);
        else if (r->co)
            mg_lua_client_drained(r);
        return;
    }
    if (r == NULL && evbuffer_get_length(c->out) == 0)
        mg_conn_advance(c);
}

void mg_http_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx) {
    mg_xconn_t *x = calloc(1, sizeof(*x));
    mg_conn_t *c = &x->c;
    int one = 1;

    if (x == NULL) {
        close(fd);
        return;
    }
    c->out = evbuffer_new();
    if (c->out == NULL) {
        free(x);
        close(fd);
        return;
    }
    c->fd = fd;
    c->lidx = lidx;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    memcpy(&c->peer, sa, salen < sizeof(c->peer) ? salen : sizeof(c->peer));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, c->peer_ip, sizeof(c->peer_ip));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, c->peer_ip,
                  sizeof(c->peer_ip));
    llhttp_init(&c->parser, HTTP_REQUEST, &mg_http_settings);
    c->parser.data = c;
    event_assign(&c->rev, mg_worker.base, fd, EV_READ | EV_PERSIST | EV_ET, mg_conn_read_cb, c);
    event_assign(&c->wev, mg_worker.base, fd, EV_WRITE | EV_PERSIST, mg_conn_write_cb, c);
    evtimer_assign(&c->tev, mg_worker.base, mg_conn_timer_cb, c);
    event_add(&c->rev, NULL);
    mg_worker.active++;
    c->next = mg_conns;
    if (mg_conns)
        mg_conns->prev = c;
    mg_conns = c;
    mg_conn_arm(c, MG_T_HEADER);
}

void mg_http_close_idle(void) {
    mg_conn_t *c = mg_conns;
    while (c) {
        mg_conn_t *next = c->next;
        if (c->req == NULL && !X(c)->dead && evbuffer_get_length(c->out) == 0)
            mg_conn_close_later(c);
        c = next;
    }
}
