/*
 * h2.c -- the HTTP/2 session (RFC 9113, over nghttp2): a sibling of the
 * HTTP/1.1 session that turns each stream into the same protocol-neutral
 * request (mg_req_t) and gives it its own sink (mg_h2_ops): the response
 * head becomes HEADERS, the body DATA under the peer's flow control, the
 * end END_STREAM; pausing the request body stops the stream's
 * WINDOW_UPDATEs. Routing, access and targets are the gateway's, reached
 * through mg_http_hooks and r->target exactly as for HTTP/1.1.
 *
 * A connection gets here from the HTTP/1.1 session once its first bytes
 * say HTTP/2 (ALPN "h2" on TLS, the client preface on an h2c listener):
 * mg_http_h2_start takes the transport. nghttp2 parses and frames
 * (mem_recv / mem_send, no callbacks of its own into the socket); frames
 * out wait in s->out, bounded (MG_H2_OUT_MAX: nghttp2 is asked for more
 * only below it), a stream's response body in st->out until its window
 * lets it go (the proxy pauses its upstream above MG_HIGH_WATER).
 *
 * Limits: SETTINGS_MAX_CONCURRENT_STREAMS (limits.h2_streams), the
 * header list (limits.header_size, header_count: 431 on the stream), the
 * HPACK table (4096 both ways), RST_STREAM floods (CVE-2023-44487: more
 * than MG_H2_RST_MAX in MG_H2_RST_WINDOW seconds get GOAWAY
 * ENHANCE_YOUR_CALM), and nghttp2's own bounds on CONTINUATION frames,
 * PING/SETTINGS acks and SETTINGS entries (they end the session). A stream
 * whose response cannot move (a zero window) for timeouts.write (or, when
 * that is 0, timeouts.idle) is reset; so is a request body that stops for
 * timeouts.body.
 *
 * Lifetimes: the session is freed only from the event loop (a dead flag
 * and its timer), never inside nghttp2's callbacks. A stream (st) lives
 * until nghttp2 closes it; its request then is logged and freed, or, when
 * the response did not end, detached (r->sess = NULL, the target hears
 * gone; a Lua handler keeps the request and frees it at its end).
 */
#include "http/http_int.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int err;                   /* a status to refuse the head with (431, 400), 0 */
    double progress;           /* the last time its body moved out (or it began) */
    double rx_last;            /* the last time body bytes came */
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
    unsigned any : 1; /* a stream began (before: the header timeout, after: idle) */
    int busy;         /* inside nghttp2 or a stream walk: sends wait (want_send) */
    int nstreams;
    mg_h2_stream_t *streams;
    double rst_t0; /* the RST_STREAM window's start, and the count in it */
    unsigned rst_n;
    double wr_progress; /* the last time the socket took bytes */
    struct mg_http_tls_s *tls;
    char peer_ip[MG_PEER_IP_MAX];
    mg_h2_t *prev, *next;
};

static void mg_h2_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_send_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_send(mg_h2_t *s);
static void mg_h2_kick(mg_h2_t *s);
static void mg_h2_close_later(mg_h2_t *s);
static void mg_h2_arm(mg_h2_t *s);
static void mg_h2_feed(mg_h2_stream_t *st);
static void mg_h2_settle(mg_h2_stream_t *st);
static void mg_h2_stream_end(mg_h2_stream_t *st, int ok);
static void mg_h2_resp_end_st(mg_h2_stream_t *st);
extern const mg_http_sess_ops_t mg_h2_ops;

static mg_h2_t *mg_h2_sessions; /* every open session, for a graceful stop */
static nghttp2_session_callbacks *mg_h2_cbs;
static nghttp2_option *mg_h2_opt;
static mg_h2_stream_t *mg_h2_free_streams; /* kept with their buffers: no malloc per stream */
static int mg_h2_nfree;

#define MG_H2_ST(r) ((mg_h2_stream_t *)(r)->sess)

/* ---- streams ---- */

static mg_h2_stream_t *mg_h2_stream_new(mg_h2_t *s, int32_t id) {
    mg_h2_stream_t *st = mg_h2_free_streams;
    if (st) {
        struct evbuffer *in = st->in, *out = st->out;
        mg_h2_free_streams = st->next_free;
        mg_h2_nfree--;
        memset(st, 0, sizeof(*st));
        st->in = in, st->out = out;
    } else {
        st = calloc(1, sizeof(*st));
        if (st == NULL)
            return NULL;
        st->in = evbuffer_new();
        st->out = evbuffer_new();
        if (st->in == NULL || st->out == NULL) {
            if (st->in)
                evbuffer_free(st->in);
            if (st->out)
                evbuffer_free(st->out);
            free(st);
            return NULL;
        }
    }
    st->r = mg_req_alloc(st, &mg_h2_ops, s->lidx);
    if (st->r == NULL) {
        st->next_free = mg_h2_free_streams;
        mg_h2_free_streams = st;
        mg_h2_nfree++;
        return NULL;
    }
    st->s = s;
    s->any = 1;
    st->id = id;
    st->progress = st->rx_last = mg_now_coarse();
    st->r->http2 = 1;
    st->r->http_minor = 1;
    st->r->keep_alive = 1;
    st->r->state = MG_REQ_HEAD;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    if (s->nstreams++ == 0)
        mg_h2_arm(s);
    return st;
}

static void mg_h2_stream_recycle(mg_h2_stream_t *st) {
    mg_h2_t *s = st->s;
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    if (--s->nstreams == 0)
        mg_h2_arm(s);
    evbuffer_drain(st->in, evbuffer_get_length(st->in));
    evbuffer_drain(st->out, evbuffer_get_length(st->out));
    if (mg_h2_nfree < 256) {
        st->next_free = mg_h2_free_streams;
        mg_h2_free_streams = st;
        mg_h2_nfree++;
    } else {
        evbuffer_free(st->in);
        evbuffer_free(st->out);
        free(st);
    }
}

/* ---- the access log line and metrics of a finished stream ---- */

/* As the HTTP/1.1 line (http.c, mg_http_conn_finish_req), plus
 * "protocol":"HTTP/2.0". */
static void mg_h2_log(mg_h2_t *s, mg_req_t *r) {
    char line[4096], more[2700], up[160] = "", esc[400], tls[400] = "";
    int n;
    mg_http_log_path(r, esc, sizeof(esc));
    if (s->is_tls) {
        char sni[300];
        const char *v = mg_io_tls_version(&s->io), *ci = mg_io_tls_cipher(&s->io);
        if (s->io.sni)
            mg_json_escape(sni, sizeof(sni), s->io.sni);
        snprintf(tls, sizeof(tls), ",\"tls\":{\"version\":\"%s\",\"cipher\":\"%s\",\"sni\":%s%s%s}",
                 v ? v : "", ci ? ci : "", s->io.sni ? "\"" : "", s->io.sni ? sni : "null",
                 s->io.sni ? "\"" : "");
    }
    mg_http_log_fields(r, more, sizeof(more));
    if (r->up_addr)
        snprintf(up, sizeof(up),
                 ",\"upstream_addr\":\"%s\",\"upstream_status\":%d,\"upstream_ms\":%.3f",
                 r->up_addr, r->up_status, r->up_ms);
    n = snprintf(line, sizeof(line),
                 "{\"type\":\"access\",\"time\":%.3f,\"request_id\":\"%s\",\"remote\":\"%s\","
                 "\"method\":\"%s\",\"path\":\"%s\",\"protocol\":\"HTTP/2.0\",\"status\":%d,"
                 "\"bytes\":%llu,\"duration_ms\":%.3f,\"route\":\"%s\",\"generation\":%u%s%s%s,"
                 "\"bytes_in\":%llu,\"bytes_out\":%llu}\n",
                 r->t_start, r->request_id, mg_req_client_ip(r),
                 llhttp_method_name((llhttp_method_t)r->method), esc, r->status,
                 (unsigned long long)r->bytes_out, (mg_now() - r->t_start) * 1000.0,
                 r->route ? (r->route->name ? r->route->name : r->route->rule) : "", r->gen->id,
                 tls, more, up, (unsigned long long)mg_http_log_bytes_in(r),
                 (unsigned long long)r->bytes_out);
    if (n > 0)
        mg_access_log_write(line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* A response that went whole (END_STREAM sent, no target left): the log
 * phase, and the request is freed; the stream may linger (mg_h2_tick). */
static void mg_h2_finish(mg_h2_stream_t *st) {
    mg_req_t *r = st->r;
    st->r = NULL;
    if (!mg_http_log_off(r))
        mg_h2_log(st->s, r);
    mg_met_http(mg_http_met_name(r), mg_met_method_class(r->method), r->status,
                mg_now() - r->t_start, r->body_rx, r->bytes_out);
    mg_http_hooks->done(r);
    r->sess = NULL;
    mg_req_free(r);
}

/* The stream closed: a complete response is logged and its request
 * freed; otherwise the request is detached (the target hears gone). */
static void mg_h2_stream_end(mg_h2_stream_t *st, int ok) {
    mg_req_t *r = st->r;
    if (r) {
        if (ok && r->resp_done && r->target == NULL) {
            mg_h2_finish(st);
        } else {
            const mg_target_t *t = r->target;
            st->r = NULL;
            r->sess = NULL;
            if (t)
                t->gone(r);
            if (t == NULL || !t->keeps_req)
                mg_req_free(r); /* else the target frees r when it ends */
        }
    }
    mg_h2_stream_recycle(st);
}

/* ---- the request head ---- */

static int mg_h2_method(const uint8_t *v, size_t n) {
#define MG_H2_M(num, name, string)                                                                 \
    if (n == sizeof(#string) - 1 && memcmp(v, #string, n) == 0)                                    \
        return num;
    HTTP_METHOD_MAP(MG_H2_M)
#undef MG_H2_M
    return -1;
}

static int mg_h2_append(mg_h2_stream_t *st, const uint8_t *v, size_t n) {
    mg_req_t *r = st->r;
    if (r->hlen + n > r->gen->limits.header_size) {
        st->err = 431;
        return -1;
    }
    memcpy(r->hbuf + r->hlen, v, n);
    r->hlen += n;
    return 0;
}

/* One header field of a request head (nghttp2 checked its characters,
 * the pseudo-headers' order and repeats, and refused connection-specific
 * fields). The target goes first in hbuf (as the HTTP/1.1 session puts
 * it): pseudo-headers come before the others. */
static int mg_h2_header(mg_h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *v,
                        size_t vlen) {
    mg_req_t *r = st->r;
    if (st->err)
        return 0;
    if (nlen > 0 && name[0] == ':') {
        if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
            r->method = mg_h2_method(v, vlen);
            if (r->method < 0)
                st->err = 501;
        } else if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
            if (r->hlen != 0) { /* the target must come first */
                st->err = 400;
                return 0;
            }
            if (mg_h2_append(st, v, vlen) == 0)
                r->url_len = (uint32_t)vlen;
        } else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) {
            if (vlen == 0 || vlen > sizeof(st->auth) || !mg_http_host_valid((const char *)v, vlen))
                st->err = 400;
            else
                memcpy(st->auth, v, vlen), st->auth_len = vlen;
        } else if (!(nlen == 7 && memcmp(name, ":scheme", 7) == 0)) {
            st->err = 400; /* :protocol (RFC 8441): not yet */
        }
        return 0;
    }
    /* cookie crumbs (RFC 9113 8.2.3) are one field again for HTTP/1.1 */
    if (nlen == 6 && memcmp(name, "cookie", 6) == 0 && r->nhdrs > 0) {
        mg_hdr_t *h = &r->hdrs[r->nhdrs - 1];
        if (h->nlen == 6 && memcmp(r->hbuf + h->noff, "cookie", 6) == 0 &&
            h->voff + h->vlen == r->hlen) {
            if (mg_h2_append(st, (const uint8_t *)"; ", 2) == 0 && mg_h2_append(st, v, vlen) == 0)
                h->vlen += (uint32_t)(vlen + 2);
            return 0;
        }
    }
    if (r->nhdrs == r->gen->limits.header_count) {
        st->err = 431;
        return 0;
    }
    {
        mg_hdr_t *h = &r->hdrs[r->nhdrs];
        h->noff = (uint32_t)r->hlen;
        h->nlen = (uint32_t)nlen;
        if (mg_h2_append(st, name, nlen) != 0)
            return 0;
        h->voff = (uint32_t)r->hlen;
        h->vlen = (uint32_t)vlen;
        if (mg_h2_append(st, v, vlen) != 0)
            return 0;
        r->nhdrs++;
    }
    return 0;
}

/* The head is whole: check what HTTP/1.1's parser checks (Host, the
 * target), frame the body for the layers above, and hand it to the
 * gateway. A body without content-length reads as chunked to them (the
 * proxy sends it chunked to an HTTP/1.1 upstream). */
static void mg_h2_head(mg_h2_stream_t *st, int end_stream) {
    mg_req_t *r = st->r;
    mg_http_framing_t f = {0, 0, 0, {0, 0, 0}};
    int st_code = st->err;
    size_t n;
    const char *cl;

    r->state = MG_REQ_BODY;
    st->in_end = end_stream != 0;
    if (!st_code)
        st_code = mg_http_check_fields(r, &f);
    if (!st_code && (f.hosts > 1 || f.te))
        st_code = 400;
    if (!st_code && st->auth_len) {
        if (f.hosts == 1) {
            mg_hdr_t *h = &r->hdrs[r->host_idx];
            if (h->vlen != st->auth_len || memcmp(r->hbuf + h->voff, st->auth, st->auth_len) != 0)
                st_code = 400; /* RFC 9113 8.3.1: they must name the same */
        } else if (r->nhdrs == r->gen->limits.header_count) {
            st_code = 431;
        } else {
            mg_hdr_t *h = &r->hdrs[r->nhdrs];
            h->noff = (uint32_t)r->hlen;
            h->nlen = 4;
            if (mg_h2_append(st, (const uint8_t *)"host", 4) == 0) {
                h->voff = (uint32_t)r->hlen;
                h->vlen = (uint32_t)st->auth_len;
                if (mg_h2_append(st, (const uint8_t *)st->auth, st->auth_len) == 0)
                    r->host_idx = r->nhdrs++;
            }
            st_code = st->err;
        }
    }
    if (!st_code && r->host_idx < 0)
        st_code = 400; /* neither :authority nor Host */
    if (!st_code && r->method == HTTP_CONNECT)
        st_code = 405;
    if (!st_code) {
        if (r->url_len == 1 && r->hbuf[0] == '*')
            st_code = r->method == HTTP_OPTIONS ? (r->path_len = 1, 0) : 400;
        else if (r->url_len == 0 || r->hbuf[0] != '/')
            st_code = 400;
        else
            st_code = mg_http_check_path(r);
    }
    if (r->method < 0)
        r->method = HTTP_GET; /* refused already; the log needs a name */
    cl = mg_req_header(r, "content-length", &n);
    if (cl) { /* nghttp2 checked it is digits and that DATA matches it */
        r->clen = 0;
        for (size_t i = 0; i < n && i < 19; i++)
            r->clen = r->clen * 10 + (cl[i] - '0');
    } else if (!st->in_end) {
        r->chunked = 1;
    }
    mg_http_set_request_id(r);
    if (st_code) {
        mg_resp_json_error(r, st_code,
                           st_code == 431   ? "request header fields too large"
                           : st_code == 405 ? "method not allowed"
                           : st_code == 417 ? "unsupported expectation"
                           : st_code == 501 ? "method not implemented"
                                            : "bad request");
        mg_h2_settle(st);
        return;
    }
    if (mg_http_hooks->head(r) == MG_HTTP_PAUSE)
        st->hold = 1; /* the access step runs on: resume lets the body go */
    if (st->r == r && r->ws_upgrade) {
        /* a WebSocket handshake cannot come over HTTP/2 (RFC 8441: not yet) */
        r->ws_upgrade = 0;
        mg_resp_json_error(r, 501, "websocket over http/2 is not supported");
    }
    mg_h2_feed(st);
}

/* ---- the body, both ways ---- */

/* Request body bytes go up unless the access step runs or the target
 * paused them; what went is acknowledged (WINDOW_UPDATE), what waits is
 * not, so the client's window bounds it. */
static void mg_h2_feed(mg_h2_stream_t *st) {
    mg_h2_t *s = st->s;
    mg_req_t *r = st->r;
    if (r == NULL || st->feeding)
        return;
    st->feeding = 1;
    while (st->r && !st->hold && !st->rd_paused && evbuffer_get_length(st->in) > 0) {
        struct evbuffer_iovec v;
        int rc;
        if (evbuffer_peek(st->in, -1, NULL, &v, 1) < 1)
            break;
        r->body_rx += v.iov_len;
        rc = mg_http_hooks->body(r, v.iov_base, v.iov_len);
        nghttp2_session_consume_stream(s->ng, st->id, v.iov_len);
        evbuffer_drain(st->in, v.iov_len);
        s->want_send = 1;
        if (rc < 0) { /* a limit hit after the response began: the stream goes */
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            break;
        }
    }
    if (st->r && !st->hold && !st->rd_paused && st->in_end && !st->body_done &&
        evbuffer_get_length(st->in) == 0) {
        st->body_done = 1;
        r->state = MG_REQ_DONE;
        if (r->target)
            r->target->body_end(r);
    }
    st->feeding = 0;
    mg_h2_settle(st);
    mg_h2_kick(s);
}

/* The response is whole when it is done and no target holds it: then
 * END_STREAM may go (after the body still queued). */
static void mg_h2_settle(mg_h2_stream_t *st) {
    mg_req_t *r = st->r;
    if (r == NULL || st->end || !r->resp_done || r->target)
        return;
    if (!st->head_sent) {
        mg_resp_json_error(r, 502, "no response");
        if (st->end)
            return;
    }
    mg_h2_resp_end_st(st);
}

static ssize_t mg_h2_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                               uint32_t *flags, nghttp2_data_source *src, void *ud) {
    mg_h2_stream_t *st = src->ptr;
    size_t n = evbuffer_get_length(st->out);
    (void)ng, (void)id, (void)ud;
    if (n == 0) {
        if (st->end) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > length)
        n = length;
    evbuffer_remove(st->out, buf, n);
    st->progress = mg_now_coarse();
    if (st->end && evbuffer_get_length(st->out) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->above && evbuffer_get_length(st->out) < MG_LOW_WATER) {
        st->above = 0;
        st->drained = 1; /* told after the send (mg_h2_send) */
    }
    return (ssize_t)n;
}

/* ---- the sink of an HTTP/2 request (mg_http_sess_ops_t) ---- */

static int mg_h2_skip_field(const char *n, size_t l) {
    static const char *const skip[] = {"connection", "keep-alive",        "proxy-connection",
                                       "upgrade",    "transfer-encoding", "content-length"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (mg_name_eq(n, l, skip[i], strlen(skip[i])))
            return 1;
    return 0;
}

/* "Name: value\r\n" lines into nv (names lower-cased into buf). */
static size_t mg_h2_lines_nv(const char *p, size_t len, nghttp2_nv *nv, size_t k, char *buf,
                             size_t *bo, size_t bcap) {
    const char *end = p + len;
    while (p < end && k < MG_H2_NV_MAX) {
        const char *eol = memchr(p, '\n', (size_t)(end - p)), *colon, *v, *ve;
        if (eol == NULL)
            break;
        colon = memchr(p, ':', (size_t)(eol - p));
        ve = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
        if (colon && colon > p && !mg_h2_skip_field(p, (size_t)(colon - p)) &&
            *bo + (size_t)(colon - p) <= bcap) {
            size_t nl = (size_t)(colon - p);
            for (size_t i = 0; i < nl; i++)
                buf[*bo + i] = (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] + 32) : p[i];
            for (v = colon + 1; v < ve && (*v == ' ' || *v == '\t'); v++)
                ;
            nv[k].name = (uint8_t *)buf + *bo;
            nv[k].namelen = nl;
            nv[k].value = (uint8_t *)v;
            nv[k].valuelen = (size_t)(ve - v);
            nv[k].flags = NGHTTP2_NV_FLAG_NONE;
            *bo += nl;
            k++;
        }
        p = eol + 1;
    }
    return k;
}

static void mg_h2_resp_head(mg_req_t *r, int status, const char *extra, size_t extralen,
                            int64_t clen) {
    static nghttp2_nv nv[MG_H2_NV_MAX + 4];
    static char names[16384];
    mg_h2_stream_t *st = MG_H2_ST(r);
    nghttp2_data_provider prd;
    char stat[8], num[24];
    size_t k = 0, bo = 0, dlen;
    const char *date;
    const mg_edge_t *e;

    r->status = status;
    r->resp_started = 1;
    if (st == NULL || st->head_sent)
        return;
    st->head_sent = 1;
    st->nobody = status < 200 || status == 204 || status == 304 || r->method == HTTP_HEAD;
    snprintf(stat, sizeof(stat), "%d", status >= 200 && status < 1000 ? status : 500);
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)stat, 7, strlen(stat), 0};
    k = mg_h2_lines_nv(extra, extralen, nv, k, names, &bo, sizeof(names));
    if (clen >= 0 && status >= 200 && status != 204 && status != 304 && k < MG_H2_NV_MAX) {
        size_t nl = mg_utoa(num, (uint64_t)clen);
        nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)num, 14, nl, 0};
    }
    if (!mg_http_lines_have(extra, extralen, "date", 4)) {
        date = mg_http_date(&dlen);
        k = mg_h2_lines_nv(date, dlen, nv, k, names, &bo, sizeof(names));
    }
    /* HSTS on TLS, unless the response has its own (http_resp.c) */
    e = mg_gen_edge(r->gen, r->route ? r->route->server : mg_gen_server_of(r->gen, r->lidx));
    if (st->s->is_tls && e && e->hsts &&
        !mg_http_lines_have(extra, extralen, "strict-transport-security", 25))
        k = mg_h2_lines_nv(e->hsts, e->hsts_len, nv, k, names, &bo, sizeof(names));
    prd.source.ptr = st;
    prd.read_callback = mg_h2_data_read;
    if (st->nobody)
        st->end = 1;
    if (nghttp2_submit_response(st->s->ng, st->id, nv, k, st->nobody ? NULL : &prd) != 0)
        nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    mg_h2_kick(st->s);
}

static void mg_h2_resp_body(mg_req_t *r, const char *data, size_t len) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st == NULL || len == 0 || !st->head_sent || st->nobody || st->end)
        return;
    r->bytes_out += len;
    if (evbuffer_get_length(st->out) == 0)
        st->progress = mg_now_coarse(); /* the stall clock starts with the wait */
    evbuffer_add(st->out, data, len);
    if (evbuffer_get_length(st->out) > MG_HIGH_WATER)
        st->above = 1; /* the target pauses (pending); drained when it is low again */
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
    mg_h2_kick(st->s);
}

static void mg_h2_resp_end_st(mg_h2_stream_t *st) {
    if (st->end)
        return;
    st->end = 1;
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
    mg_h2_kick(st->s);
}

static void mg_h2_resp_end(mg_req_t *r) {
    if (MG_H2_ST(r))
        mg_h2_resp_end_st(MG_H2_ST(r));
}

static void mg_h2_cont(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, 0};
    if (st && !st->head_sent) {
        nghttp2_submit_headers(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
        mg_h2_kick(st->s);
    }
}

static size_t mg_h2_pending(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st == NULL)
        return 0;
    if (evbuffer_get_length(st->out) > MG_HIGH_WATER)
        st->above = 1;
    return evbuffer_get_length(st->out);
}

static void mg_h2_flush(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st)
        mg_h2_send(st->s);
}

static void mg_h2_read_pause(mg_req_t *r, int on) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st == NULL || st->rd_paused == (on != 0))
        return;
    st->rd_paused = on != 0;
    if (!on) {
        st->rx_last = mg_now_coarse(); /* our pause is not the client's gap */
        mg_h2_feed(st);                /* what waited goes, and its WINDOW_UPDATE */
    }
}

static void mg_h2_body_start(mg_req_t *r) { (void)r; }

static void mg_h2_target_done(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    r->resp_done = 1;
    if (st == NULL) {
        mg_req_free(r);
        return;
    }
    mg_h2_settle(st);
}

static void mg_h2_abort(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    r->resp_done = 1;
    if (st == NULL) {
        mg_req_free(r);
        return;
    }
    st->end = 1;
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    mg_h2_kick(st->s);
}

static void mg_h2_resume(mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st == NULL) {
        mg_req_free(r);
        return;
    }
    st->hold = 0;
    st->rx_last = mg_now_coarse(); /* the access step's time is not the client's */
    mg_h2_feed(st);
}

static const char *mg_h2_peer_ip(const mg_req_t *r) { return MG_H2_ST(r)->s->peer_ip; }

static int mg_h2_tls(const mg_req_t *r) { return MG_H2_ST(r)->s->is_tls; }

static const mg_req_tls_t *mg_h2_tls_info(const mg_req_t *r) {
    mg_h2_stream_t *st = MG_H2_ST(r);
    if (st == NULL || !st->s->is_tls)
        return NULL;
    return mg_http_io_tls_info(&st->s->io, &st->s->tls);
}

const mg_http_sess_ops_t mg_h2_ops = {
    .head = mg_h2_resp_head,
    .body = mg_h2_resp_body,
    .end = mg_h2_resp_end,
    .cont = mg_h2_cont,
    .pending = mg_h2_pending,
    .flush = mg_h2_flush,
    .read_pause = mg_h2_read_pause,
    .body_start = mg_h2_body_start,
    .target_done = mg_h2_target_done,
    .abort = mg_h2_abort,
    .resume = mg_h2_resume,
    .peer_ip = mg_h2_peer_ip,
    .tls = mg_h2_tls,
    .tls_info = mg_h2_tls_info,
};

/* ---- nghttp2's callbacks ---- */

static int mg_h2_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *fr, void *ud) {
    mg_h2_t *s = ud;
    mg_h2_stream_t *st;
    if (fr->hd.type != NGHTTP2_HEADERS || fr->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    st = mg_h2_stream_new(s, fr->hd.stream_id);
    if (st == NULL) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, fr->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    nghttp2_session_set_stream_user_data(ng, fr->hd.stream_id, st);
    return 0;
}

static int mg_h2_on_header(nghttp2_session *ng, const nghttp2_frame *fr, const uint8_t *name,
                           size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags,
                           void *ud) {
    mg_h2_stream_t *st;
    (void)flags, (void)ud;
    if (fr->hd.type != NGHTTP2_HEADERS || fr->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers: not passed on */
    st = nghttp2_session_get_stream_user_data(ng, fr->hd.stream_id);
    if (st && st->r)
        mg_h2_header(st, name, nlen, value, vlen);
    return 0;
}

static void mg_h2_count_rst(mg_h2_t *s) {
    double now = mg_now_coarse();
    if (now - s->rst_t0 > MG_H2_RST_WINDOW) {
        s->rst_t0 = now;
        s->rst_n = 0;
    }
    if (++s->rst_n == MG_H2_RST_MAX + 1) {
        mg_warn("http2: %s: more than %d stream resets in %.0f s: GOAWAY", s->peer_ip,
                MG_H2_RST_MAX, MG_H2_RST_WINDOW);
        nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static int mg_h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *fr, void *ud) {
    mg_h2_t *s = ud;
    mg_h2_stream_t *st;
    int end = (fr->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (fr->hd.type) {
    case NGHTTP2_HEADERS:
        st = nghttp2_session_get_stream_user_data(ng, fr->hd.stream_id);
        if (st == NULL || st->r == NULL)
            return 0;
        if (fr->headers.cat == NGHTTP2_HCAT_REQUEST) {
            mg_h2_head(st, end);
        } else if (end) { /* trailers end the body */
            st->in_end = 1;
            mg_h2_feed(st);
        }
        break;
    case NGHTTP2_DATA:
        st = nghttp2_session_get_stream_user_data(ng, fr->hd.stream_id);
        if (st && st->r && end) {
            st->in_end = 1;
            mg_h2_feed(st);
        }
        break;
    case NGHTTP2_RST_STREAM: mg_h2_count_rst(s); break;
    default: break;
    }
    return 0;
}

static int mg_h2_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    mg_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    (void)flags, (void)ud;
    /* the connection's window opens at once; the stream's when the
     * request took the bytes (mg_h2_feed) */
    nghttp2_session_consume_connection(ng, len);
    if (st == NULL || st->r == NULL) {
        nghttp2_session_consume_stream(ng, id, len);
        return 0;
    }
    st->rx_last = mg_now_coarse();
    evbuffer_add(st->in, data, len);
    mg_h2_feed(st);
    return 0;
}

static int mg_h2_on_frame_send(nghttp2_session *ng, const nghttp2_frame *fr, void *ud) {
    mg_h2_stream_t *st;
    (void)ud;
    if ((fr->hd.type == NGHTTP2_DATA || fr->hd.type == NGHTTP2_HEADERS) &&
        (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        st = nghttp2_session_get_stream_user_data(ng, fr->hd.stream_id);
        if (st) {
            /* the answer is whole and the client may still send: what
             * comes is discarded for MG_H2_LINGER s, then RST_STREAM
             * NO_ERROR (RFC 9113 8.1) stops it (mg_h2_tick). Not at once:
             * curl 7.88 takes a reset during its upload for a failure and
             * drops the answer (HTTP/1.1's lingering close, http.c) */
            st->end_sent = 1;
            st->progress = mg_now_coarse();
            if (st->r && st->r->resp_done && st->r->target == NULL)
                mg_h2_finish(st);
        }
    }
    return 0;
}

static int mg_h2_on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
    mg_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    (void)code, (void)ud;
    if (st) {
        nghttp2_session_set_stream_user_data(ng, id, NULL);
        mg_h2_stream_end(st, st->end_sent);
    }
    return 0;
}

static int mg_h2_init(void) {
    nghttp2_session_callbacks *cb;
    if (mg_h2_cbs)
        return MG_OK;
    if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&mg_h2_opt) != 0)
        return MG_ERR;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, mg_h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, mg_h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, mg_h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, mg_h2_on_data);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, mg_h2_on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, mg_h2_on_stream_close);
    /* WINDOW_UPDATEs are ours (backpressure), the encoder's table bounded */
    nghttp2_option_set_no_auto_window_update(mg_h2_opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(mg_h2_opt, MG_H2_HPACK);
    mg_h2_cbs = cb;
    return MG_OK;
}

/* ---- the connection ---- */

static void mg_h2_free(mg_h2_t *s) {
    while (s->streams)
        mg_h2_stream_end(s->streams, 0);
    event_del(&s->rev);
    event_del(&s->wev);
    event_del(&s->tev);
    event_del(&s->sev);
    nghttp2_session_del(s->ng);
    mg_io_close(&s->io);
    evbuffer_free(s->out);
    free(s->tls);
    if (s->prev)
        s->prev->next = s->next;
    else
        mg_h2_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    mg_met_conn(s->lidx, s->is_tls, -1);
    free(s);
    mg_worker.active--;
}

static void mg_h2_close_later(mg_h2_t *s) {
    if (s->dead)
        return;
    s->dead = 1;
    event_del(&s->rev);
    event_del(&s->wev);
    event_del(&s->sev);
    event_active(&s->tev, EV_TIMEOUT, 1);
}

/* no streams: timeouts.header until the first, then timeouts.idle; with
 * streams: the stall checks */
static void mg_h2_arm(mg_h2_t *s) {
    const mg_timeouts_t *t = &mg_gen_current->timeouts;
    int ms = s->nstreams ? MG_H2_TICK_MS : s->any ? t->idle : t->header;
    if (s->dead)
        return;
    if (ms > 0)
        event_add(&s->tev, mg_timeout_tv(ms));
    else
        event_del(&s->tev);
}

static void mg_h2_kick(mg_h2_t *s) {
    if (s->dead)
        return;
    if (s->busy) {
        s->want_send = 1;
        return;
    }
    if (!s->sched) {
        s->sched = 1;
        event_active(&s->sev, EV_TIMEOUT, 1);
    }
}

static void mg_h2_send_cb(evutil_socket_t fd, short what, void *arg) {
    mg_h2_t *s = arg;
    (void)fd, (void)what;
    s->sched = 0;
    mg_h2_send(s);
}

/* Frames out: as many as nghttp2 has while s->out is below its bound,
 * then to the socket; the targets of streams whose queue went low hear
 * drained (and may queue more: a few rounds, then the next loop turn). */
static void mg_h2_send(mg_h2_t *s) {
    int full = 0; /* nghttp2 may have more than s->out took */
    if (s->dead)
        return;
    if (s->busy) {
        s->want_send = 1;
        return;
    }
    for (int round = 0; round < 4; round++) {
        int drained = 0;
        s->want_send = 0;
        s->busy++;
        full = 0;
        while (!(full = evbuffer_get_length(s->out) >= MG_H2_OUT_MAX)) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(s->ng, &p);
            if (n < 0) {
                mg_debug("http2: %s: %s", s->peer_ip, nghttp2_strerror((int)n));
                s->busy--;
                mg_h2_close_later(s);
                return;
            }
            if (n == 0)
                break;
            evbuffer_add(s->out, p, (size_t)n);
        }
        for (mg_h2_stream_t *st = s->streams; st; st = st->next) {
            if (st->drained) {
                st->drained = 0;
                drained = 1;
                if (st->r && st->r->target)
                    st->r->target->drained(st->r);
            }
        }
        s->busy--;
        if (!drained && !s->want_send)
            break;
    }
    if (s->want_send)
        mg_h2_kick(s);
    if (evbuffer_get_length(s->out) == 0)
        s->wr_progress = mg_now_coarse(); /* nothing waits for the socket */
    else {
        int n = mg_io_write_evbuffer(&s->io, s->out);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            mg_h2_close_later(s);
            return;
        }
        if (n > 0 || evbuffer_get_length(s->out) == 0) {
            s->wr_progress = mg_now_coarse();
            if (full && evbuffer_get_length(s->out) < MG_H2_OUT_MAX)
                mg_h2_kick(s); /* room again: the rest next turn */
        }
    }
    if (evbuffer_get_length(s->out) && !s->wr_on) {
        event_add(&s->wev, NULL);
        s->wr_on = 1;
    } else if (!evbuffer_get_length(s->out) && s->wr_on && !s->tls_ww) {
        event_del(&s->wev);
        s->wr_on = 0;
    }
    /* GOAWAY sent or received and no stream left: done */
    if (!evbuffer_get_length(s->out) && !nghttp2_session_want_read(s->ng) &&
        !nghttp2_session_want_write(s->ng))
        mg_h2_close_later(s);
}

static void mg_h2_recv(mg_h2_t *s, const char *data, size_t n) {
    ssize_t rv;
    s->busy++;
    rv = nghttp2_session_mem_recv(s->ng, (const uint8_t *)data, n);
    s->busy--;
    if (rv < 0) {
        /* a connection error: nghttp2 queued GOAWAY for protocol errors;
         * floods and bad magic end it here */
        mg_debug("http2: %s: %s", s->peer_ip, nghttp2_strerror((int)rv));
        if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            mg_h2_close_later(s);
            return;
        }
        nghttp2_session_terminate_session(s->ng, NGHTTP2_PROTOCOL_ERROR);
    }
    mg_h2_send(s);
}

static void mg_h2_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_h2_t *s = arg;
    (void)fd, (void)what;
    for (int i = 0; i < 16 && !s->dead; i++) {
        ssize_t n = mg_io_read(&s->io, mg_worker.scratch, sizeof(mg_worker.scratch));
        if (n < 0) {
            if (errno == EAGAIN && s->io.want == MG_IO_WANT_WRITE) {
                /* TLS: the read must write first and the socket is full */
                s->tls_ww = 1;
                event_del(&s->rev);
                if (!s->wr_on) {
                    event_add(&s->wev, NULL);
                    s->wr_on = 1;
                }
                return;
            }
            if (errno != EAGAIN && errno != EINTR)
                mg_h2_close_later(s);
            return;
        }
        if (n == 0) { /* the client is gone: its open streams with it */
            mg_h2_close_later(s);
            return;
        }
        /* no re-arm here: the header and idle timeouts are deadlines that
         * PINGs and SETTINGS do not move (only a stream's end does) */
        mg_h2_recv(s, mg_worker.scratch, (size_t)n);
        if ((size_t)n < sizeof(mg_worker.scratch) && mg_io_pending(&s->io) == 0)
            return;
    }
    if (!s->dead && mg_io_pending(&s->io) > 0)
        event_active(&s->rev, EV_READ, 1); /* more held by TLS: next turn, not now */
}

static void mg_h2_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_h2_t *s = arg;
    (void)what;
    if (s->tls_ww) {
        s->tls_ww = 0;
        event_add(&s->rev, NULL);
        mg_h2_read_cb(fd, EV_READ, s);
        if (s->dead)
            return;
    }
    mg_h2_send(s);
}

/* Streams stuck: a response that does not move for timeouts.write (0: the
 * idle timeout) because the client keeps its window shut, a request body
 * that stops for timeouts.body; the socket itself not taking bytes. */
static void mg_h2_tick(mg_h2_t *s) {
    mg_gen_t *g = mg_gen_current;
    double now = mg_now_coarse();
    double stall = (g->timeouts.write > 0 ? g->timeouts.write : g->timeouts.idle) / 1000.0;
    double body = g->timeouts.body / 1000.0;
    if (g->timeouts.read > 0 && (body == 0 || g->timeouts.read / 1000.0 < body))
        body = g->timeouts.read / 1000.0;
    if (evbuffer_get_length(s->out) && g->timeouts.write > 0 &&
        now - s->wr_progress > g->timeouts.write / 1000.0) {
        mg_h2_close_later(s);
        return;
    }
    s->busy++;
    for (mg_h2_stream_t *st = s->streams; st; st = st->next) {
        mg_req_t *r = st->r;
        if (st->end_sent) {
            if (!st->in_end && now - st->progress > MG_H2_LINGER && !st->rst_sent) {
                st->rst_sent = 1;
                nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
            }
            continue;
        }
        if (r == NULL)
            continue;
        if (r->state == MG_REQ_HEAD && g->timeouts.header > 0 &&
            now - st->rx_last > g->timeouts.header / 1000.0) {
            /* a header block that never ends (no END_HEADERS): it holds
             * the whole connection's HPACK state, so the connection goes */
            s->busy--;
            mg_h2_close_later(s);
            return;
        }
        if (stall > 0 && st->head_sent && !st->end_sent && evbuffer_get_length(st->out) &&
            now - st->progress > stall) {
            mg_debug("http2: %s: stream %d: the window stayed shut: reset", s->peer_ip, st->id);
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        } else if (body > 0 && !st->in_end && !st->hold && !st->rd_paused && !r->resp_done &&
                   r->target && r->state == MG_REQ_BODY && now - st->rx_last > body) {
            if (!r->resp_started) {
                /* as HTTP/1.1 answers a stalled body (http.c): 408, the
                 * proxy stops, a handler goes on detached */
                if (!r->target->keeps_req)
                    r->target->gone(r);
                mg_resp_json_error(r, 408, "request timeout");
                if (r->target) {
                    st->r = NULL;
                    r->sess = NULL;
                    r->target->gone(r);
                    mg_h2_resp_end_st(st);
                } else {
                    mg_h2_settle(st);
                }
            } else {
                nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            }
        }
    }
    s->busy--;
    mg_h2_send(s);
}

static void mg_h2_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_h2_t *s = arg;
    (void)fd, (void)what;
    if (s->dead) {
        mg_h2_free(s);
        return;
    }
    if (s->nstreams == 0) { /* idle: GOAWAY, then close */
        nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
        mg_h2_send(s);
        mg_h2_close_later(s);
        return;
    }
    mg_h2_tick(s);
    mg_h2_arm(s);
}

void mg_http_h2_start(mg_io_t *io, int lidx, const char *peer_ip, const char *data, size_t n) {
    mg_gen_t *g = mg_gen_current;
    mg_h2_t *s = mg_h2_init() == MG_OK ? calloc(1, sizeof(*s)) : NULL;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)g->limits.h2_streams},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, MG_H2_HPACK},
        /* a field counts its name, value and 32 (RFC 9113 6.5.2) */
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         (uint32_t)(g->limits.header_size + 32u * (uint32_t)g->limits.header_count)},
    };
    if (s == NULL || (s->out = evbuffer_new()) == NULL ||
        nghttp2_session_server_new2(&s->ng, mg_h2_cbs, s, mg_h2_opt) != 0) {
        if (s && s->out)
            evbuffer_free(s->out);
        free(s);
        mg_io_close(io);
        return;
    }
    mg_io_move(&s->io, io);
    s->is_tls = s->io.tls;
    s->lidx = lidx;
    s->wr_progress = mg_now_coarse();
    snprintf(s->peer_ip, sizeof(s->peer_ip), "%s", peer_ip);
    event_assign(&s->rev, mg_worker.base, s->io.fd, EV_READ | EV_PERSIST, mg_h2_read_cb, s);
    event_assign(&s->wev, mg_worker.base, s->io.fd, EV_WRITE | EV_PERSIST, mg_h2_write_cb, s);
    evtimer_assign(&s->tev, mg_worker.base, mg_h2_timer_cb, s);
    evtimer_assign(&s->sev, mg_worker.base, mg_h2_send_cb, s);
    event_add(&s->rev, NULL);
    mg_worker.active++;
    mg_met_conn(s->lidx, s->is_tls, 1);
    s->next = mg_h2_sessions;
    if (mg_h2_sessions)
        mg_h2_sessions->prev = s;
    mg_h2_sessions = s;
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    mg_h2_arm(s);
    if (mg_worker.stopping) { /* arrived as the worker stops: no stream is taken */
        nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
        s->goaway = 1;
    }
    mg_h2_recv(s, data, n);
    if (!s->dead && mg_io_pending(&s->io) > 0)
        event_active(&s->rev, EV_READ, 1);
}

/* GOAWAY NO_ERROR naming the last stream taken: the ones open finish, the
 * client sends new ones on a new connection; the session closes when they
 * are done (mg_h2_send). */
static void mg_h2_goaway(mg_h2_t *s) {
    if (s->dead || s->goaway)
        return;
    s->goaway = 1;
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    mg_h2_send(s);
}

/* Stopping: every session, the drain timeout bounding the rest. */
void mg_http_h2_close_idle(void) {
    for (mg_h2_t *s = mg_h2_sessions, *next; s; s = next) {
        next = s->next;
        mg_h2_goaway(s);
    }
}

void mg_http_h2_drain(void) {
    for (mg_h2_t *s = mg_h2_sessions, *next; s; s = next) {
        next = s->next;
        if (!mg_http_listener_h2(s->lidx, s->is_tls))
            mg_h2_goaway(s);
    }
}
