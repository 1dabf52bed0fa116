/*
 * h2_ws.c -- WebSockets over HTTP/2 (RFC 8441): an extended CONNECT
 * (:method CONNECT, :protocol websocket, :scheme, :path, :authority) on a
 * session that sent SETTINGS_ENABLE_CONNECT_PROTOCOL (h2.c, when the conf's
 * http2_websocket is on) is read as the HTTP/1.1 upgrade the gateway knows:
 * a GET with `Upgrade: websocket`, `Connection: Upgrade` and a fresh
 * Sec-WebSocket-Key (RFC 8441 has none; HAProxy reads it the same way), so
 * it goes through the same route table, handshake checks, plugins and
 * access hooks, and the tunnel and relay send the usual HTTP/1.1 upgrade
 * to their upstream.
 *
 * Once the gateway takes the upgrade, the stream becomes the transport of
 * the WebSocket side: a socketpair whose far end the gateway's upgrade hook
 * takes as it takes an HTTP/1.1 connection (mg_io_tcp), so handler, relay
 * and tunnel modes, heartbeats, limits, drain, permessage-deflate and the
 * access-log line are the ones HTTP/1.1 has, unchanged, and the HTTP/1.1
 * path is not touched. The stream's end (this file) reads what that side
 * writes: first the HTTP/1.1 answer it gives (101, or a refusal), which
 * becomes the stream's HEADERS (101 -> :status 200, without
 * Sec-WebSocket-Accept; a refusal keeps its status and body), then the
 * WebSocket bytes as DATA; the client's DATA are written to it.
 *
 * Backpressure both ways, with bounds: the client's DATA are acknowledged
 * (WINDOW_UPDATE) only as the socketpair takes them, so the client's
 * stream window bounds what waits here; the socketpair is read only while
 * the stream's queue (st->out) is under MG_HIGH_WATER, so a client that
 * keeps its window shut fills the socketpair, then the WebSocket side's
 * send buffer (its send_buffer limit closes with 1008), and the stream's
 * stall check (h2.c) resets it after timeouts.write (0: timeouts.idle).
 * The ends: the client's END_STREAM shuts the socketpair's writing (the
 * WebSocket side reads its end: 1006 unless closed); the WebSocket side's
 * end is END_STREAM; a reset or a lost connection closes the socketpair.
 */
#include "http/h2_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MG_H2_WS_HEAD_MAX 16384 /* the WebSocket side's HTTP/1.1 answer */

struct mg_h2_ws_s {
    int fd; /* our end of the socketpair */
    struct event rev, wev;
    unsigned rd_on : 1, wr_on : 1, head_done : 1, shut : 1, eof : 1;
    struct evbuffer *head; /* the answer's head, until its blank line */
};

/* ---- the head ---- */

/* 16 random bytes in base64: a Sec-WebSocket-Key for the GET upgrade */
static void mg_h2_ws_key(char out[25]) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t raw[18];
    uint64_t a = mg_rng_next(), b = mg_rng_next();
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    raw[16] = raw[17] = 0;
    for (int i = 0, o = 0; i < 18; i += 3, o += 4) {
        uint32_t v = ((uint32_t)raw[i] << 16) | ((uint32_t)raw[i + 1] << 8) | raw[i + 2];
        out[o] = b64[(v >> 18) & 63];
        out[o + 1] = b64[(v >> 12) & 63];
        out[o + 2] = b64[(v >> 6) & 63];
        out[o + 3] = b64[v & 63];
    }
    out[22] = out[23] = '=';
    out[24] = '\0';
}

int mg_h2_ws_head(mg_h2_stream_t *st) {
    mg_req_t *r = st->r;
    char key[25];
    if (st->proto == 0)
        return 501; /* a plain CONNECT: moongate does not tunnel TCP */
    if (st->proto != 1 || !r->gen->h2_websocket)
        return 400; /* a :protocol other than websocket */
    mg_h2_ws_key(key);
    r->method = HTTP_GET;
    r->h2_ws = 1;
    mg_h2_header(st, (const uint8_t *)"upgrade", 7, (const uint8_t *)"websocket", 9);
    mg_h2_header(st, (const uint8_t *)"connection", 10, (const uint8_t *)"upgrade", 7);
    mg_h2_header(st, (const uint8_t *)"sec-websocket-key", 17, (const uint8_t *)key, 24);
    return st->err;
}

/* ---- the stream's end of the socketpair ---- */

static void mg_h2_ws_reset(mg_h2_stream_t *st) {
    mg_h2_ws_t *w = st->ws;
    if (!w->eof) {
        w->eof = 1;
        event_del(&w->rev);
        event_del(&w->wev);
        w->rd_on = w->wr_on = 0;
    }
    st->end = 1;
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    mg_h2_kick(st->s);
}

/* The client's DATA waiting in st->in go to the WebSocket side as far as
 * it takes them; what went is acknowledged. */
static void mg_h2_ws_pump(mg_h2_stream_t *st) {
    mg_h2_ws_t *w = st->ws;
    mg_h2_t *s = st->s;
    while (evbuffer_get_length(st->in) > 0) {
        struct evbuffer_iovec v;
        ssize_t n;
        if (evbuffer_peek(st->in, -1, NULL, &v, 1) < 1)
            break;
        n = send(w->fd, v.iov_base, v.iov_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            mg_h2_ws_reset(st); /* the WebSocket side is gone */
            return;
        }
        nghttp2_session_consume_stream(s->ng, st->id, (size_t)n);
        evbuffer_drain(st->in, (size_t)n);
        s->want_send = 1;
    }
    if (evbuffer_get_length(st->in) > 0) {
        if (!w->wr_on) {
            event_add(&w->wev, NULL);
            w->wr_on = 1;
        }
    } else {
        if (w->wr_on) {
            event_del(&w->wev);
            w->wr_on = 0;
        }
        if (st->in_end && !w->shut) {
            shutdown(w->fd, SHUT_WR);
            w->shut = 1;
        }
    }
    mg_h2_kick(s);
}

static void mg_h2_ws_write_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    mg_h2_ws_pump(arg);
}

/* The WebSocket side's HTTP/1.1 answer, once its blank line is in: its
 * status (101 is 200 here) and its fields become the HEADERS; 1 when
 * done, 0 when more is needed, -1 when it is not one. */
static int mg_h2_ws_answer(mg_h2_stream_t *st) {
    static nghttp2_nv nv[MG_H2_NV_MAX + 2];
    static char names[16384], lines[MG_H2_WS_HEAD_MAX];
    mg_h2_ws_t *w = st->ws;
    struct evbuffer_ptr end = evbuffer_search(w->head, "\r\n\r\n", 4, NULL);
    nghttp2_data_provider prd;
    size_t hl, k = 0, bo = 0, ll = 0, dlen;
    const char *h, *p, *eol, *date;
    char stat[8];
    int status;

    if (end.pos < 0)
        return evbuffer_get_length(w->head) > MG_H2_WS_HEAD_MAX ? -1 : 0;
    hl = (size_t)end.pos + 4;
    if (hl > MG_H2_WS_HEAD_MAX)
        return -1;
    h = (const char *)evbuffer_pullup(w->head, (ev_ssize_t)hl);
    if (hl < 16 || memcmp(h, "HTTP/1.1 ", 9) != 0 || h[9] < '1' || h[9] > '5' || h[10] < '0' ||
        h[10] > '9' || h[11] < '0' || h[11] > '9')
        return -1;
    status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    if (status < 101 || status > 599 || (status > 101 && status < 200))
        return -1;
    /* the fields, but Sec-WebSocket-Accept (nothing to accept on h2) */
    p = memchr(h, '\n', hl) + 1;
    for (; p < h + hl; p = eol + 1) {
        eol = memchr(p, '\n', (size_t)(h + hl - p));
        if (eol == NULL || eol - p <= 1)
            break;
        if ((size_t)(eol - p) >= 21 && strncasecmp(p, "sec-websocket-accept:", 21) == 0)
            continue;
        memcpy(lines + ll, p, (size_t)(eol - p) + 1);
        ll += (size_t)(eol - p) + 1;
    }
    snprintf(stat, sizeof(stat), "%d", status == 101 ? 200 : status);
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)stat, 7, strlen(stat), 0};
    k = mg_h2_lines_nv(lines, ll, nv, k, names, &bo, sizeof(names));
    if (!mg_http_lines_have(lines, ll, "date", 4)) {
        date = mg_http_date(&dlen);
        k = mg_h2_lines_nv(date, dlen, nv, k, names, &bo, sizeof(names));
    }
    st->head_sent = 1;
    st->nobody = status == 204 || status == 304;
    if (st->nobody)
        st->end = 1;
    prd.source.ptr = st;
    prd.read_callback = mg_h2_data_read;
    if (nghttp2_submit_response(st->s->ng, st->id, nv, k, st->nobody ? NULL : &prd) != 0)
        return -1;
    evbuffer_drain(w->head, hl);
    w->head_done = 1;
    st->progress = mg_now_coarse();
    if (evbuffer_get_length(w->head) && !st->nobody) /* frames that came with it */
        evbuffer_add_buffer(st->out, w->head);
    return 1;
}

static void mg_h2_ws_rd_stop(mg_h2_ws_t *w) {
    if (w->rd_on) {
        event_del(&w->rev);
        w->rd_on = 0;
    }
}

/* What the WebSocket side wrote: its answer, then DATA, while the
 * stream's queue has room. */
static void mg_h2_ws_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_h2_stream_t *st = arg;
    mg_h2_ws_t *w = st->ws;
    mg_h2_t *s = st->s;
    (void)what;
    for (int i = 0; i < 8 && !w->eof; i++) {
        ssize_t n;
        if (evbuffer_get_length(st->out) >= MG_HIGH_WATER) {
            st->above = 1; /* read on when it is low (mg_h2_ws_drained) */
            mg_h2_ws_rd_stop(w);
            break;
        }
        n = recv(fd, mg_worker.scratch, sizeof(mg_worker.scratch), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) { /* the WebSocket side ended: so does the stream */
            if (n < 0 || !w->head_done) {
                if (!w->head_done)
                    mg_debug("http2: %s: stream %d: the websocket side ended without an answer",
                             s->peer_ip, st->id);
                mg_h2_ws_reset(st);
                return;
            }
            w->eof = 1;
            mg_h2_ws_rd_stop(w);
            mg_h2_resp_end_st(st);
            break;
        }
        if (!w->head_done) {
            int rc;
            evbuffer_add(w->head, mg_worker.scratch, (size_t)n);
            rc = mg_h2_ws_answer(st);
            if (rc < 0) {
                mg_warn("http2: %s: stream %d: a bad answer from the websocket side", s->peer_ip,
                        st->id);
                mg_h2_ws_reset(st);
                return;
            }
            if (rc == 0)
                continue;
        } else if (!st->nobody) {
            if (evbuffer_get_length(st->out) == 0)
                st->progress = mg_now_coarse(); /* the stall clock starts with the wait */
            evbuffer_add(st->out, mg_worker.scratch, (size_t)n);
        }
        if (evbuffer_get_length(st->out) && st->deferred) {
            st->deferred = 0;
            nghttp2_session_resume_data(s->ng, st->id);
        }
    }
    mg_h2_kick(s);
}

void mg_h2_ws_start(mg_h2_stream_t *st) {
    mg_req_t *r = st->r;
    const mg_target_t *t;
    mg_h2_ws_t *w = calloc(1, sizeof(*w));
    mg_io_t io;
    int sv[2];

    r->ws_upgrade = 0;
    if (w == NULL || (w->head = evbuffer_new()) == NULL ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        mg_warn("http2: %s: stream %d: no socketpair for the websocket: %s", st->s->peer_ip, st->id,
                strerror(errno));
        if (w && w->head)
            evbuffer_free(w->head);
        free(w);
        mg_resp_json_error(r, 503, "out of resources");
        mg_h2_settle(st);
        return;
    }
    w->fd = sv[1];
    st->ws = w;
    event_assign(&w->rev, mg_worker.base, w->fd, EV_READ | EV_PERSIST, mg_h2_ws_read_cb, st);
    event_assign(&w->wev, mg_worker.base, w->fd, EV_WRITE | EV_PERSIST, mg_h2_ws_write_cb, st);
    event_add(&w->rev, NULL);
    w->rd_on = 1;
    st->progress = mg_now_coarse();
    /* the WebSocket side takes the far end as an HTTP/1.1 session's
     * connection (as http.c hands it over), and r is done with after */
    mg_io_tcp(&io, sv[0]);
    mg_http_hooks->upgrade(r, &io, NULL, 0);
    mg_io_close(&io); /* taken (then this does nothing), or refused */
    t = r->target;
    st->r = NULL;
    r->sess = NULL;
    if (t)
        t->gone(r);
    if (t == NULL || !t->keeps_req)
        mg_req_free(r);
    mg_h2_ws_pump(st); /* DATA that came while the access step ran */
}

void mg_h2_ws_data(mg_h2_stream_t *st, const uint8_t *data, size_t len) {
    if (st->ws->eof || st->end) { /* the WebSocket side ended: discarded */
        nghttp2_session_consume_stream(st->s->ng, st->id, len);
        return;
    }
    st->rx_last = mg_now_coarse();
    evbuffer_add(st->in, data, len);
    mg_h2_ws_pump(st);
}

void mg_h2_ws_in_end(mg_h2_stream_t *st) {
    st->in_end = 1;
    if (!st->ws->eof)
        mg_h2_ws_pump(st);
}

void mg_h2_ws_drained(mg_h2_stream_t *st) {
    mg_h2_ws_t *w = st->ws;
    if (!w->eof && !w->rd_on) {
        event_add(&w->rev, NULL);
        w->rd_on = 1;
        event_active(&w->rev, EV_READ, 1);
    }
}

void mg_h2_ws_free(mg_h2_stream_t *st) {
    mg_h2_ws_t *w = st->ws;
    if (w == NULL)
        return;
    event_del(&w->rev);
    event_del(&w->wev);
    close(w->fd);
    evbuffer_free(w->head);
    free(w);
    st->ws = NULL;
}
