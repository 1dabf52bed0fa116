/*
 * h2.c -- the HTTP/2 session (RFC 9113, over nghttp2): a sibling of the
 * HTTP/1.1 session that turns each stream into the same protocol-neutral
 * request (mg_req_t) with its own sink (h2_req.c: the response head
 * becomes HEADERS, the body DATA under the peer's flow control, the end
 * END_STREAM; pausing the request body stops the stream's WINDOW_UPDATEs).
 * This file is the connection: nghttp2's callbacks, reading and writing
 * through the transport, the timers, the limits nghttp2 does not keep,
 * GOAWAY. Routing, access and targets are the gateway's, reached through
 * mg_http_hooks and r->target exactly as for HTTP/1.1. WebSockets over
 * HTTP/2 (RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL when http2_websocket
 * is on, extended CONNECT) are h2_ws.c's: such a stream's DATA, END_STREAM
 * and drained go there instead of to a request.
 *
 * A connection gets here from the HTTP/1.1 session once its first bytes
 * say HTTP/2 (ALPN "h2" on TLS, the client preface on an h2c listener):
 * mg_http_h2_start takes the transport. nghttp2 parses and frames
 * (mem_recv / mem_send, no callbacks of its own into the socket); frames
 * out wait in s->out, bounded (MG_H2_OUT_MAX: nghttp2 is asked for more
 * only below it), a stream's response body in st->out until its window
 * lets it go (the proxy pauses its upstream above MG_HIGH_WATER). DATA is
 * not copied through nghttp2: its frame header is, and the payload moves
 * from st->out into s->out (NGHTTP2_DATA_FLAG_NO_COPY, mg_h2_send_data).
 * A send writes all the frames made since the last in one write (one TLS
 * record run); the targets' answers are gathered for the loop turn's end
 * (mg_h2_kick), so one write carries many streams' frames.
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
#include "http/h2_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void mg_h2_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_send_cb(evutil_socket_t fd, short what, void *arg);
static void mg_h2_close_later(mg_h2_t *s);

static mg_h2_t *mg_h2_sessions; /* every open session, for a graceful stop */
static nghttp2_session_callbacks *mg_h2_cbs;
static nghttp2_option *mg_h2_opt;

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
        if (st == NULL || (st->r == NULL && st->ws == NULL))
            return 0;
        if (st->ws) {
            if (end)
                mg_h2_ws_in_end(st);
        } else if (fr->headers.cat == NGHTTP2_HCAT_REQUEST) {
            mg_h2_head(st, end);
        } else if (end) { /* trailers end the body */
            st->in_end = 1;
            mg_h2_feed(st);
        }
        break;
    case NGHTTP2_DATA:
        st = nghttp2_session_get_stream_user_data(ng, fr->hd.stream_id);
        if (st && st->ws && end) {
            mg_h2_ws_in_end(st);
        } else if (st && st->r && end) {
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
    if (st && st->ws) {
        mg_h2_ws_data(st, data, len); /* the stream's window: as the WebSocket side takes them */
        return 0;
    }
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
    nghttp2_session_callbacks_set_send_data_callback(cb, mg_h2_send_data);
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
void mg_h2_arm(mg_h2_t *s) {
    const mg_timeouts_t *t = &mg_gen_current->timeouts;
    int ms = s->nstreams ? MG_H2_TICK_MS : s->any ? t->idle : t->header;
    if (s->dead)
        return;
    if (ms > 0)
        event_add(&s->tev, mg_timeout_tv(ms));
    else
        event_del(&s->tev);
}

void mg_h2_kick(mg_h2_t *s) {
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
    for (mg_h2_stream_t *st = s->streams; st; st = st->next) {
        if (st->ws_pending) { /* RFC 8441: an upgrade its access step let through */
            st->ws_pending = 0;
            st->hold = 0;
            if (st->r && st->r->ws_upgrade)
                mg_h2_ws_start(st);
        }
    }
    mg_h2_send(s);
}

/* Frames out: as many as nghttp2 has while s->out is below its bound,
 * then to the socket; the targets of streams whose queue went low hear
 * drained (and may queue more: a few rounds, then the next loop turn). */
void mg_h2_send(mg_h2_t *s) {
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
        s->out_full = 0;
        while (!(full = evbuffer_get_length(s->out) >= MG_H2_OUT_MAX || s->out_full)) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(s->ng, &p);
            if (n < 0) {
                mg_debug("http2: %s: %s", s->peer_ip, nghttp2_strerror((int)n));
                s->busy--;
                mg_h2_close_later(s);
                return;
            }
            if (n == 0) {
                full = s->out_full; /* a DATA frame filled out (mg_h2_send_data) */
                break;
            }
            evbuffer_add(s->out, p, (size_t)n);
        }
        for (mg_h2_stream_t *st = s->streams; st; st = st->next) {
            if (st->drained) {
                st->drained = 0;
                drained = 1;
                if (st->r && st->r->target)
                    st->r->target->drained(st->r);
                else if (st->ws)
                    mg_h2_ws_drained(st);
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
        if (st->ws && stall > 0 && st->head_sent && evbuffer_get_length(st->out) &&
            now - st->progress > stall) { /* a WebSocket the client stopped reading */
            mg_debug("http2: %s: stream %d: the window stayed shut: reset", s->peer_ip, st->id);
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
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
        /* RFC 8441: WebSockets by extended CONNECT (h2_ws.c); last, so
         * that leaving it out is a shorter list */
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
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
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv,
                            sizeof(iv) / sizeof(iv[0]) - (g->h2_websocket ? 0 : 1));
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
