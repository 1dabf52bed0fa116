/*
 * h2_req.c -- a stream of the HTTP/2 session (h2.c) as a request: the
 * stream and its mg_req_t from free lists (no malloc per stream), the head
 * from the header fields (the target first in hbuf, :authority as Host,
 * cookie crumbs joined; an extended CONNECT read as a GET upgrade by
 * h2_ws.c, any other CONNECT refused) checked as the HTTP/1.1 parser's heads are
 * (http_parse.c), the request body given to the gateway as the request
 * takes it (WINDOW_UPDATE only for what it took), and the sink mg_h2_ops:
 * HEADERS (names lower-cased, connection-specific fields dropped, Date and
 * HSTS as http_resp.c adds them), DATA from st->out as the window allows,
 * END_STREAM once the response is whole and no target holds it; then the
 * access-log line ("protocol":"HTTP/2.0") and the metrics.
 */
#include "http/h2_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mg_h2_stream_t *mg_h2_free_streams; /* kept with their buffers: no malloc per stream */
static int mg_h2_nfree;

/* ---- streams ---- */

mg_h2_stream_t *mg_h2_stream_new(mg_h2_t *s, int32_t id) {
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
    mg_h2_ws_free(st);
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

/* The HTTP/1.1 line (mg_http_log_line: it adds "protocol":"HTTP/2.0"),
 * straight into the log's buffer. */
static void mg_h2_log(mg_h2_t *s, mg_req_t *r, double now) {
    mg_fmt_t b;
    mg_req_tls_t t = {0};
    if (s->is_tls) {
        t.version = mg_io_tls_version(&s->io);
        t.cipher = mg_io_tls_cipher(&s->io);
        t.sni = s->io.sni;
    }
    mg_access_log_begin(&b, MG_ACCESS_LINE_MAX);
    mg_http_log_line(&b, r, s->is_tls ? &t : NULL, now);
    mg_access_log_commit(&b);
}

/* A response that went whole (END_STREAM sent, no target left): the log
 * phase, and the request is freed; the stream may linger (mg_h2_tick). */
void mg_h2_finish(mg_h2_stream_t *st) {
    mg_req_t *r = st->r;
    int log = !mg_http_log_off(r);
    double now = log || MG_MET_ON ? mg_now() : 0; /* one clock read for both */
    st->r = NULL;
    if (log)
        mg_h2_log(st->s, r, now);
    mg_met_http(mg_http_met_name(r), mg_met_method_class(r->method), r->status, now - r->t_start,
                r->body_rx, r->bytes_out);
    mg_http_hooks->done(r);
    r->sess = NULL;
    mg_req_free(r);
}

/* The stream closed: a complete response is logged and its request
 * freed; otherwise the request is detached (the target hears gone). */
void mg_h2_stream_end(mg_h2_stream_t *st, int ok) {
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
int mg_h2_header(mg_h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *v,
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
        } else if (nlen == 9 && memcmp(name, ":protocol", 9) == 0) {
            /* RFC 8441 (nghttp2 lets it in once we sent the setting) */
            st->proto = vlen == 9 && memcmp(v, "websocket", 9) == 0 ? 1 : 2;
        } else if (!(nlen == 7 && memcmp(name, ":scheme", 7) == 0)) {
            st->err = 400;
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
void mg_h2_head(mg_h2_stream_t *st, int end_stream) {
    mg_req_t *r = st->r;
    mg_http_framing_t f = {0, 0, 0, {0, 0, 0}};
    int st_code = st->err;
    size_t n;
    const char *cl;

    r->state = MG_REQ_BODY;
    st->in_end = end_stream != 0;
    if (!st_code && st->proto && r->method != HTTP_CONNECT)
        st_code = 400; /* :protocol belongs to a CONNECT */
    if (!st_code && r->method == HTTP_CONNECT)
        st_code = mg_h2_ws_head(st); /* RFC 8441, read as a GET upgrade; else refused */
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
                if (mg_h2_append(st, (const uint8_t *)st->auth, st->auth_len) == 0) {
                    r->host_idx = r->nhdrs++;
                    /* the access log's Host (mg_http_check_fields found none) */
                    r->log_has_host = 1;
                    r->log_host_off = h->voff;
                    r->log_host_len = h->vlen;
                    r->log_hbytes += 4 + h->vlen + 4;
                }
            }
            st_code = st->err;
        }
    }
    if (!st_code && r->host_idx < 0)
        st_code = 400; /* neither :authority nor Host */
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
    } else if (!st->in_end && !r->h2_ws) { /* a WebSocket's DATA are no body */
        r->chunked = 1;
    }
    mg_http_set_request_id(r);
    if (st_code) {
        mg_resp_json_error(r, st_code,
                           st_code == 431 ? "request header fields too large"
                           : st_code == 501 && r->method == HTTP_CONNECT
                               ? "CONNECT is not supported (only RFC 8441's :protocol websocket)"
                           : st_code == 400 && st->proto == 2 ? "unsupported :protocol"
                           : st_code == 417                   ? "unsupported expectation"
                           : st_code == 501                   ? "method not implemented"
                                                              : "bad request");
        mg_h2_settle(st);
        return;
    }
    if (mg_http_hooks->head(r) == MG_HTTP_PAUSE)
        st->hold = 1; /* the access step runs on: resume lets the body go */
    if (st->r == r && r->ws_upgrade) {
        mg_h2_ws_start(st); /* the gateway took the upgrade (RFC 8441) */
        return;
    }
    mg_h2_feed(st);
}

/* ---- the body, both ways ---- */

/* Request body bytes go up unless the access step runs or the target
 * paused them; what went is acknowledged (WINDOW_UPDATE), what waits is
 * not, so the client's window bounds it. */
void mg_h2_feed(mg_h2_stream_t *st) {
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
void mg_h2_settle(mg_h2_stream_t *st) {
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

/* A DATA frame's length (and its EOF) only: the bytes are not copied into
 * nghttp2's buffer (NGHTTP2_DATA_FLAG_NO_COPY) but moved from st->out
 * straight after the frame header into s->out (mg_h2_send_data). */
ssize_t mg_h2_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *ud) {
    mg_h2_stream_t *st = src->ptr;
    size_t n = evbuffer_get_length(st->out);
    (void)ng, (void)id, (void)buf, (void)ud;
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
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->end && n == evbuffer_get_length(st->out))
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* nghttp2's send_data callback: the frame made by mg_h2_data_read goes
 * out as its header, then length bytes moved (evbuffer chains handed
 * over, not copied, where whole) from the stream's queue. Once s->out
 * reaches MG_H2_OUT_MAX (by at most one frame over), PAUSE makes
 * mem_send return: mg_h2_send writes, and asks for more when there is
 * room (s->out_full). */
int mg_h2_send_data(nghttp2_session *ng, nghttp2_frame *fr, const uint8_t *framehd, size_t length,
                    nghttp2_data_source *src, void *ud) {
    static const uint8_t zero[256];
    mg_h2_t *s = ud;
    mg_h2_stream_t *st = src->ptr;
    size_t pad = fr->data.padlen; /* 0: no padding is chosen (no select_padding callback) */
    (void)ng;
    if (evbuffer_add(s->out, framehd, 9) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (pad > 0) {
        uint8_t pl = (uint8_t)(pad - 1);
        if (evbuffer_add(s->out, &pl, 1) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (evbuffer_remove_buffer(st->out, s->out, length) != (int)length)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (pad > 1 && evbuffer_add(s->out, zero, pad - 1) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->progress = mg_now_coarse();
    if (st->above && evbuffer_get_length(st->out) < MG_LOW_WATER) {
        st->above = 0;
        st->drained = 1; /* told after the send (mg_h2_send) */
    }
    if (evbuffer_get_length(s->out) >= MG_H2_OUT_MAX) {
        s->out_full = 1;
        return NGHTTP2_ERR_PAUSE; /* this frame is out; mem_send returns */
    }
    return 0;
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
size_t mg_h2_lines_nv(const char *p, size_t len, nghttp2_nv *nv, size_t k, char *buf, size_t *bo,
                      size_t bcap) {
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

void mg_h2_resp_end_st(mg_h2_stream_t *st) {
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
    if (r->ws_upgrade) {
        /* the access step let the upgrade through: the WebSocket side
         * takes the stream at the next loop turn (mg_h2_send_cb), not in
         * the access step's stack, which may still hold r; DATA wait */
        st->ws_pending = 1;
        if (!st->s->sched && !st->s->dead) {
            st->s->sched = 1;
            event_active(&st->s->sev, EV_TIMEOUT, 1);
        }
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
