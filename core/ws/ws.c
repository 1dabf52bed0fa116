/*
 * ws.c -- one WebSocket endpoint (server side to a client, or client side
 * to an upstream in relay mode): its life, its reading and its heartbeats.
 * Whole unfragmented data frames are parsed here straight from one recv;
 * everything else goes through wslay's event API with message buffering
 * off: frames arrive chunk by chunk, so text is checked as UTF-8 as the
 * bytes arrive (1007 at the first bad byte), sizes are checked before
 * anything is stored (1009), and permessage-deflate (RFC 7692) inflates
 * incrementally. Heartbeats (the seed's JSON ping, optional ping frames)
 * and dead-peer detection run on one timer per socket, armed with libevent
 * common timeouts so 100 000 sockets share one queue per interval instead
 * of a heap entry each. Writing is ws_send.c; the handshake is
 * ws_handshake.c.
 *
 * Memory: an idle socket holds its struct and three events; wslay's
 * context exists while frames need it (parked after a second idle); zlib
 * streams exist only while a compressed message is in flight (and across
 * messages only if the client kept context takeover).
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MG_WS_CLOSE_WAIT_MS 5000

static mg_ws_t *mg_ws_list;
uint64_t mg_ws_sockets; /* client-facing: handler and relay sockets, tunnels */

static void mg_ws_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_ws_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_ws_fail(mg_ws_t *ws, int code, const char *reason);
static void mg_ws_msg_done(mg_ws_t *ws);

/* ---- UTF-8 (RFC 3629), incremental ----
 * State 0 = between characters; 12 = rejected; otherwise bytes still due
 * (bits 0-1) and the range the next byte must fall in (bits 8-23), which
 * rules out overlongs, surrogates and code points above U+10FFFF at the
 * first byte that makes them. MG_UTF8_REJECT is in ws_int.h. */
#define MG_UTF8_ST(need, lo, hi) ((uint32_t)(need) | ((uint32_t)(lo) << 8) | ((uint32_t)(hi) << 16))

uint32_t mg_ws_utf8_run(uint32_t st, const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t b;
        if (st == 0) { /* ASCII runs, 16 then 8 bytes at a time */
            uint64_t w, w2;
            while (i + 16 <= len && (memcpy(&w, s + i, 8), memcpy(&w2, s + i + 8, 8),
                                     ((w | w2) & 0x8080808080808080ULL) == 0))
                i += 16;
            while (i + 8 <= len && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ULL) == 0))
                i += 8;
            if (i == len)
                break;
        }
        b = s[i++];
        if (st == 0) {
            if (b < 0x80)
                continue;
            if (b >= 0xC2 && b <= 0xDF)
                st = MG_UTF8_ST(1, 0x80, 0xBF);
            else if (b == 0xE0)
                st = MG_UTF8_ST(2, 0xA0, 0xBF);
            else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
                st = MG_UTF8_ST(2, 0x80, 0xBF);
            else if (b == 0xED)
                st = MG_UTF8_ST(2, 0x80, 0x9F);
            else if (b == 0xF0)
                st = MG_UTF8_ST(3, 0x90, 0xBF);
            else if (b >= 0xF1 && b <= 0xF3)
                st = MG_UTF8_ST(3, 0x80, 0xBF);
            else if (b == 0xF4)
                st = MG_UTF8_ST(3, 0x80, 0x8F);
            else
                return MG_UTF8_REJECT;
        } else {
            unsigned need = st & 3;
            if (b < ((st >> 8) & 0xff) || b > ((st >> 16) & 0xff))
                return MG_UTF8_REJECT;
            st = need > 1 ? MG_UTF8_ST(need - 1, 0x80, 0xBF) : 0;
        }
    }
    return st;
}

/* ---- wslay callbacks ---- */

static ssize_t mg_ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *user) {
    mg_ws_t *ws = user;
    ssize_t n;
    (void)flags;
    if (ws->pre_off < ws->pre_len) {
        n = ws->pre_len - ws->pre_off < len ? ws->pre_len - ws->pre_off : len;
        memcpy(buf, ws->pre + ws->pre_off, n);
        ws->pre_off += n;
        if (ws->pre_off == ws->pre_len) {
            free(ws->pre);
            ws->pre = NULL;
            ws->pre_len = ws->pre_off = 0;
        }
        ws->rx_given += n;
        return n;
    }
    if (ws->rd_off || ws->rd_done || (ws->rd_short && !ws->rd_hup && mg_io_pending(&ws->io) == 0)) {
        /* the last read drained the socket: no EAGAIN read needed, the
         * (level-triggered) event fires again when more arrives, or an
         * EOF or reset that came with those bytes; the peer's FIN known
         * now (EV_CLOSED) is read at once, and bytes the transport holds
         * (io pending) too: the socket will not report them */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    n = mg_io_read(&ws->io, buf, len);
    if (n > 0) {
        ws->last_rx = mg_now_coarse();
        ws->rd_short = (size_t)n < len;
        ws->rx_given += n;
        return n;
    }
    if (n < 0 && errno == EAGAIN && ws->io.want == MG_IO_WANT_WRITE) {
        /* TLS (a key update to answer, say) with the socket full: reading
         * again on the readable socket would spin; wait until it drains */
        ws->rd_ww = 1;
        event_del(&ws->rev);
        if (!ws->wr_on) {
            event_add(&ws->wev, NULL);
            ws->wr_on = 1;
        }
    }
    if (n == 0) /* the end: mg_ws_after_io flushes what is queued, then finishes */
        ws->rd_eof = 1;
    if (n == 0 || errno == EAGAIN || errno == EINTR) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    ws->rd_err = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static void mg_ws_on_frame_start(wslay_event_context_ptr ctx,
                                 const struct wslay_event_on_frame_recv_start_arg *a, void *user) {
    mg_ws_t *ws = user;
    (void)ctx;
    ws->frame_op = a->opcode;
    ws->frame_rsv = a->rsv;
    ws->frame_fin = a->fin;
    ws->frame_len = a->payload_length;
    ws->whole = NULL;
    /* the shortest head for this length (wslay refuses longer ones) */
    ws->frame_hl = 2 +
                   (a->payload_length >= 65536 ? 8
                    : a->payload_length >= 126 ? 2
                                               : 0) +
                   (ws->client ? 0 : 4);
    if (ws->fail_code)
        return;
    if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) {
        if (ws->msg_op) {
            mg_ws_fail(ws, 1002, "new message inside a fragmented one");
            return;
        }
        ws->msg_op = a->opcode;
        ws->msg_z = (a->rsv & WSLAY_RSV1_BIT) != 0;
        ws->utf8 = 0;
        ws->msg_len = 0;
        if (ws->msg_z && !ws->pmd) {
            mg_ws_fail(ws, 1002, "RSV1 without permessage-deflate");
            return;
        }
    } else if (a->opcode == WSLAY_CONTINUATION_FRAME) {
        if (!ws->msg_op) {
            mg_ws_fail(ws, 1002, "continuation without a message");
            return;
        }
        if (a->rsv & WSLAY_RSV1_BIT) {
            mg_ws_fail(ws, 1002, "RSV1 on a continuation frame");
            return;
        }
    } else if (a->rsv) {
        mg_ws_fail(ws, 1002, "RSV bits on a control frame");
        return;
    } else if (a->opcode == WSLAY_CONNECTION_CLOSE && a->payload_length == 1) {
        /* before wslay answers it with an empty close */
        mg_ws_fail(ws, 1002, "close frame with a 1-byte payload");
        return;
    }
    if ((a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME ||
         a->opcode == WSLAY_CONTINUATION_FRAME) &&
        ws->msg_len + a->payload_length > ws->conf->max_message && !ws->msg_z)
        mg_ws_fail(ws, 1009, "message too big");
}

static int mg_ws_z_init(mg_ws_t *ws) {
    if (ws->zin)
        return 0;
    ws->zin = calloc(1, sizeof(z_stream));
    if (ws->zin == NULL || inflateInit2(ws->zin, -15) != Z_OK) {
        free(ws->zin);
        ws->zin = NULL;
        return -1;
    }
    return 0;
}

static void mg_ws_z_free_in(mg_ws_t *ws) {
    if (ws->zin) {
        inflateEnd(ws->zin);
        free(ws->zin);
        ws->zin = NULL;
    }
}

/* Message bytes, already decompressed: size check, UTF-8 as they come;
 * 0 when they may be kept. */
static int mg_ws_msg_check(mg_ws_t *ws, const uint8_t *p, size_t n) {
    if (ws->fail_code)
        return -1;
    ws->msg_len += n;
    if (ws->msg_len > ws->conf->max_message) {
        mg_ws_fail(ws, 1009, "message too big");
        return -1;
    }
    if (ws->msg_op == WSLAY_TEXT_FRAME) {
        ws->utf8 = mg_ws_utf8_run(ws->utf8, p, n);
        if (ws->utf8 == MG_UTF8_REJECT) {
            mg_ws_fail(ws, 1007, "invalid UTF-8 in a text message");
            return -1;
        }
    }
    return 0;
}

static void mg_ws_msg_bytes(mg_ws_t *ws, const uint8_t *p, size_t n) {
    if (mg_ws_msg_check(ws, p, n) == 0)
        evbuffer_add(ws->msg, p, n);
}

static void mg_ws_inflate(mg_ws_t *ws, const uint8_t *p, size_t n) {
    uint8_t out[16384];
    if (mg_ws_z_init(ws) != 0) {
        mg_ws_fail(ws, 1011, "out of memory");
        return;
    }
    ws->zin->next_in = (Bytef *)p;
    ws->zin->avail_in = n;
    do {
        int rc;
        ws->zin->next_out = out;
        ws->zin->avail_out = sizeof(out);
        rc = inflate(ws->zin, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
            mg_ws_fail(ws, 1007, "bad compressed data");
            return;
        }
        mg_ws_msg_bytes(ws, out, sizeof(out) - ws->zin->avail_out);
        if (ws->fail_code || rc == Z_BUF_ERROR)
            return;
    } while (ws->zin->avail_out == 0 || ws->zin->avail_in > 0);
}

static void mg_ws_on_frame_chunk(wslay_event_context_ptr ctx,
                                 const struct wslay_event_on_frame_recv_chunk_arg *a, void *user) {
    mg_ws_t *ws = user;
    (void)ctx;
    if (ws->fail_code || ws->frame_op >= 8)
        return;
    if (ws->msg_z) {
        mg_ws_inflate(ws, a->data, a->data_length);
    } else if (ws->frame_fin && ws->frame_op != WSLAY_CONTINUATION_FRAME &&
               a->data_length == ws->frame_len && ws->msg_len == 0) {
        /* the whole message in one piece (the usual small one): handed on
         * from wslay's buffer at the frame's end, which follows at once */
        if (mg_ws_msg_check(ws, a->data, a->data_length) == 0) {
            ws->whole = a->data;
            ws->whole_len = a->data_length;
        }
    } else {
        mg_ws_msg_bytes(ws, a->data, a->data_length);
    }
}

static void mg_ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a,
                         void *user) {
    mg_ws_t *ws = user;
    (void)ctx;
    if (a->opcode == WSLAY_CONNECTION_CLOSE) {
        /* RFC 6455 5.5.1 / 7.4: validate the peer's close */
        if (a->msg_length == 1)
            mg_ws_fail(ws, 1002, "close frame with a 1-byte payload");
        else if (a->msg_length >= 2) {
            int c = a->status_code;
            /* valid: 1000-1003, 1007-1014 (registered), 3000-4999 */
            if (!((c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999)))
                mg_ws_fail(ws, 1002, "invalid close code");
            else if (mg_ws_utf8_run(0, a->msg + 2, a->msg_length - 2) != 0)
                mg_ws_fail(ws, 1007, "close reason is not UTF-8");
            else {
                size_t rl = a->msg_length - 2 < sizeof(ws->close_reason) - 1
                                ? a->msg_length - 2
                                : sizeof(ws->close_reason) - 1;
                memcpy(ws->close_reason, a->msg + 2, rl);
                ws->close_reason[rl] = '\0';
            }
        }
    }
}

static void mg_ws_on_frame_end(wslay_event_context_ptr ctx, void *user) {
    mg_ws_t *ws = user;
    (void)ctx;
    ws->rx_used += ws->frame_hl + ws->frame_len;
    if (ws->fail_code || ws->frame_op >= 8 || !ws->frame_fin)
        return;
    mg_ws_msg_done(ws);
}

static const struct wslay_event_callbacks mg_ws_callbacks = {
    mg_ws_recv_cb,        mg_ws_send_cb,      mg_ws_genmask_cb, mg_ws_on_frame_start,
    mg_ws_on_frame_chunk, mg_ws_on_frame_end, mg_ws_on_msg,
};

/* ---- parking ----
 * wslay's context holds two 4 KiB buffers. An idle socket does not need
 * it: it is made on the first bytes or the first frame wslay must send,
 * and freed again (parked) once the socket is idle with nothing half read
 * or half sent; a parked socket keeps what the protocol needs in mg_ws_t. */

int mg_ws_wake(mg_ws_t *ws) {
    if (ws->ctx)
        return 0;
    if ((ws->client ? wslay_event_context_client_init(&ws->ctx, &mg_ws_callbacks, ws)
                    : wslay_event_context_server_init(&ws->ctx, &mg_ws_callbacks, ws)) != 0) {
        ws->ctx = NULL;
        return -1;
    }
    wslay_event_config_set_no_buffering(ws->ctx, 1);
    wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->conf->max_message + 16);
    if (ws->pmd)
        wslay_event_config_set_allowed_rsv_bits(ws->ctx, WSLAY_RSV1_BIT);
    return 0;
}

static void mg_ws_park(mg_ws_t *ws) {
    if (ws->ctx == NULL || ws->in_cb || ws->closing || ws->fail_code || ws->gate || ws->msg_op ||
        ws->hold_len || ws->pre_len || ws->rx_given != ws->rx_used || mg_ws_wlen(ws) ||
        wslay_event_want_write(ws->ctx) || !wslay_event_get_read_enabled(ws->ctx) ||
        !wslay_event_get_write_enabled(ws->ctx) || wslay_event_get_close_sent(ws->ctx) ||
        wslay_event_get_close_received(ws->ctx))
        return;
    wslay_event_context_free(ws->ctx);
    ws->ctx = NULL;
    mg_debug("websocket: idle, wslay context parked");
}

/* ---- lifecycle ---- */

void mg_ws_arm(mg_ws_t *ws) {
    int ms = ws->conf->hb_interval;
    if (ws->conf->hb_timeout && (ms == 0 || ws->conf->hb_timeout < ms))
        ms = ws->conf->hb_timeout;
    if (ws->closing)
        ms = mg_worker.stopping ? 1000 : MG_WS_CLOSE_WAIT_MS;
    if (ms > 0)
        event_add(&ws->tev, mg_timeout_tv(ms));
}

/* MG_MET_WS_*: the route's mode */
static __attribute__((unused)) int mg_ws_met_mode(const mg_ws_t *ws) {
    return ws->conf && ws->conf->mode == MG_WS_RELAY ? MG_MET_WS_RELAY : MG_MET_WS_HANDLER;
}

mg_ws_t *mg_ws_new(mg_io_t *io, int client, mg_gen_t *gen, mg_route_t *route, const mg_ws_hs_t *hs,
                   const char *pre, size_t pre_len, const mg_ws_ops_t *ops, void *ud) {
    mg_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        mg_io_close(io);
        return NULL;
    }
    mg_io_move(&ws->io, io);
    ws->client = client;
    ws->gen = gen;
    mg_gen_retain(gen);
    ws->route = route;
    ws->conf = route->ws;
    ws->ops = ops;
    ws->ud = ud;
    ws->msg = evbuffer_new();
    ws->wbuf = evbuffer_new();
    if (hs) {
        ws->pmd = hs->pmd;
        ws->pmd_client_nct = hs->pmd_client_nct;
    }
    if (ws->msg == NULL || ws->wbuf == NULL) {
        if (ws->msg)
            evbuffer_free(ws->msg);
        if (ws->wbuf)
            evbuffer_free(ws->wbuf);
        mg_gen_release(gen);
        mg_io_close(&ws->io);
        free(ws);
        return NULL;
    }
    /* no wslay context yet: it is made when the first bytes come or the
     * first frame wslay must send (mg_ws_wake) */
    if (pre_len) {
        ws->pre = malloc(pre_len);
        if (ws->pre) {
            memcpy(ws->pre, pre, pre_len);
            ws->pre_len = pre_len;
        }
    }
    ws->last_rx = ws->last_hb = mg_now();
    /* level-triggered: wslay reads until a short read (rd_short) or
     * EAGAIN, and on to the end when the peer's FIN is in (EV_CLOSED,
     * EPOLLRDHUP): no read per message is spent looking for an EOF. An
     * EOF or a reset that came with the last bytes (a reset shows as
     * EPOLLERR|EPOLLHUP, which libevent reports without EV_CLOSED) is
     * reported again by the next epoll_wait. So whatever stops reading
     * for good removes the event (mg_ws_rd_stop), and a pause does
     * (mg_ws_pause): a level-triggered socket left with unread bytes or
     * its end would wake the loop at once, over and over. */
    event_assign(&ws->rev, mg_worker.base, ws->io.fd, EV_READ | EV_CLOSED | EV_PERSIST,
                 mg_ws_read_cb, ws);
    event_assign(&ws->wev, mg_worker.base, ws->io.fd, EV_WRITE | EV_PERSIST, mg_ws_write_cb, ws);
    evtimer_assign(&ws->tev, mg_worker.base, mg_ws_timer_cb, ws);
    event_add(&ws->rev, NULL);
    mg_ws_arm(ws);
    ws->next = mg_ws_list;
    if (mg_ws_list)
        mg_ws_list->prev = ws;
    mg_ws_list = ws;
    ws->met = mg_route_met(route);
    if (!client) {
        mg_ws_sockets++;
        mg_met_ws_open(ws->met, mg_ws_met_mode(ws), gen->id, 1);
    }
    if (ws->pre_len)
        event_active(&ws->rev, EV_READ, 1);
    return ws;
}

static void mg_ws_free(mg_ws_t *ws) {
    if (!ws->client) {
        mg_ws_end_t e;
        mg_ws_end_info(ws, &e, "client");
        MG_MET(mg_met->n[ws->met].ws_close[mg_met_ws_code(e.code)][mg_met_ws_side(e.by)]++);
        mg_met_ws_open(ws->met, mg_ws_met_mode(ws), ws->gen->id, -1);
    }
    event_del(&ws->rev);
    event_del(&ws->wev);
    event_del(&ws->tev);
    mg_io_close(&ws->io);
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    evbuffer_free(ws->msg);
    evbuffer_free(ws->wbuf);
    mg_ws_z_free_in(ws);
    if (ws->zout) {
        deflateEnd(ws->zout);
        free(ws->zout);
    }
    free(ws->pre);
    if (ws->prev)
        ws->prev->next = ws->next;
    else
        mg_ws_list = ws->next;
    if (ws->next)
        ws->next->prev = ws->prev;
    if (!ws->client)
        mg_ws_sockets--;
    mg_gen_release(ws->gen);
    free(ws);
}

uint64_t mg_ws_count(void) { return mg_ws_sockets; }

void mg_ws_close_all(int code, const char *reason) {
    mg_ws_t *ws = mg_ws_list;
    while (ws) {
        mg_ws_t *next = ws->next;
        if (!ws->client)
            mg_ws_close(ws, code, reason);
        ws = next;
    }
}

static void mg_ws_dead_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    mg_ws_free(arg);
}

/* Tell the owner (once) and free at the next loop turn. */
void mg_ws_finish(mg_ws_t *ws) {
    static const struct timeval zero = {0, 0};
    int code;
    if (ws->dead)
        return;
    ws->dead = 1;
    event_del(&ws->rev);
    event_del(&ws->wev);
    event_del(&ws->tev);
    code = mg_ws_close_rcvd(ws) ? wslay_event_get_status_code_received(ws->ctx) : 1006;
    if (ws->ops && !ws->notified) {
        ws->notified = 1;
        ws->ops->on_close(ws->ud, ws, code, ws->close_reason);
    }
    evtimer_assign(&ws->tev, mg_worker.base, mg_ws_dead_cb, ws);
    event_add(&ws->tev, &zero);
}

void mg_ws_abort(mg_ws_t *ws) {
    ws->notified = 1;
    mg_ws_finish(ws);
}

void mg_ws_set_owner(mg_ws_t *ws, const mg_ws_ops_t *ops, void *ud) {
    ws->ops = ops;
    ws->ud = ud;
}

static void mg_ws_fail(mg_ws_t *ws, int code, const char *reason) {
    if (ws->fail_code)
        return;
    ws->fail_code = code;
    if (!mg_ws_close_rcvd(ws))
        ws->closed_first = 1;
    mg_debug("websocket: closing with %d: %s", code, reason);
    /* stop reading; tell the peer why */
    if (mg_ws_wake(ws) != 0)
        return;
    wslay_event_shutdown_read(ws->ctx);
    wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, strlen(reason));
    ws->closing = 1;
}

/* Deliver a finished message to the owner. */
static void mg_ws_msg_done(mg_ws_t *ws) {
    size_t n;
    if (ws->msg_z) {
        static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
        mg_ws_inflate(ws, tail, 4);
        if (ws->pmd_client_nct)
            mg_ws_z_free_in(ws);
    }
    if (ws->fail_code)
        return;
    if (ws->msg_op == WSLAY_TEXT_FRAME && ws->utf8 != 0) {
        mg_ws_fail(ws, 1007, "truncated UTF-8 in a text message");
        return;
    }
    ws->st.msgs_in++;
    if (ws->whole) {
        const uint8_t *p = ws->whole;
        ws->whole = NULL;
        ws->st.bytes_in += ws->whole_len;
        mg_ws_met_msg(ws, MG_MET_IN, ws->whole_len);
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, ws->msg_op, (const char *)p, ws->whole_len);
    } else {
        n = evbuffer_get_length(ws->msg);
        ws->st.bytes_in += n;
        mg_ws_met_msg(ws, MG_MET_IN, n);
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, ws->msg_op, (const char *)evbuffer_pullup(ws->msg, -1),
                                n);
        evbuffer_drain(ws->msg, evbuffer_get_length(ws->msg));
    }
    ws->msg_op = 0;
    ws->msg_z = 0;
}

/* Reading is over for good (the end, a protocol failure, the peer's
 * close): the read event goes, or its level would wake the loop again and
 * again while the rest is flushed. A pause (mg_ws_pause) no longer brings
 * it back. */
static void mg_ws_rd_stop(mg_ws_t *ws) {
    if (!ws->rd_done) {
        ws->rd_done = 1;
        event_del(&ws->rev);
    }
}

static void mg_ws_after_io(mg_ws_t *ws, int rv) {
    if (ws->dead)
        return;
    if (rv != 0) {
        if (!ws->rd_err && !ws->client && !mg_ws_close_sent(ws) && ws->hold_len == 0) {
            /* wslay gave up on a frame it could not parse (an oversized or
             * fragmented control frame): still tell the peer why, 1002,
             * after what is already on its way to it */
            static const unsigned char close1002[] = {0x88, 0x02, 0x03, 0xea};
            if (ws->ctx)
                wslay_event_shutdown_write(ws->ctx); /* not its own close too */
            mg_ws_tail(ws, close1002, sizeof(close1002));
            mg_ws_rd_stop(ws);
            ws->closed_first = 1;
            ws->closing = ws->fin_flush = 1;
            mg_ws_arm(ws);
            mg_ws_flush(ws); /* finishes once it is out */
            return;
        }
        mg_ws_finish(ws);
        return;
    }
    if (!ws->failing && ws->ctx && !wslay_event_get_read_enabled(ws->ctx) &&
        !mg_ws_close_rcvd(ws) && !ws->rd_eof) {
        /* the peer broke the protocol (wslay's checks or ours): reading
         * stopped and the close is queued; its owner may hold it back */
        ws->failing = 1;
        if (!mg_ws_close_sent(ws))
            ws->closed_first = 1;
        if (!ws->closing) {
            ws->closing = 1;
            mg_ws_arm(ws);
        }
        if (ws->ops && ws->ops->on_fail)
            ws->ops->on_fail(ws->ud, ws);
        if (ws->dead)
            return;
    }
    if (ws->rd_eof && !ws->fin_flush) {
        /* the peer's FIN: what is queued still goes (it may only have
         * half closed), then the socket ends (1006 unless the close
         * handshake was done) */
        ws->fin_flush = 1;
        if (ws->ctx)
            wslay_event_shutdown_read(ws->ctx);
        if (!ws->closing) {
            ws->closing = 1;
            mg_ws_arm(ws);
        }
    }
    if (ws->rd_eof || (ws->ctx && !wslay_event_want_read(ws->ctx)))
        mg_ws_rd_stop(ws); /* the end, a failure or the peer's close */
    mg_ws_flush(ws);       /* finishes the socket once both closes are done */
    if (ws->dead)
        return;
    if (ws->ctx && !wslay_event_want_read(ws->ctx) && !wslay_event_want_write(ws->ctx) &&
        mg_ws_wlen(ws) == 0) {
        mg_ws_finish(ws);
        return;
    }
    if (mg_ws_close_rcvd(ws) && !ws->closing) {
        ws->closing = 1;
        mg_ws_arm(ws);
    }
}

/* Keeps buf[0..n) for wslay, which reads it first (as bytes that came
 * with the handshake). -1 when out of memory. */
static int mg_ws_stash(mg_ws_t *ws, const uint8_t *buf, size_t n) {
    char *p = malloc(n);
    if (p == NULL)
        return -1;
    memcpy(p, buf, n);
    ws->pre = p;
    ws->pre_len = n;
    ws->pre_off = 0;
    return 0;
}

/* The usual frames without wslay: when nothing is half read, whole
 * unfragmented text and binary frames (RSV 0, masked as our role wants,
 * the shortest length form, within max_message, valid UTF-8) go straight
 * to the owner from one recv. Anything else (control frames, fragments,
 * compressed or bad frames, a frame cut by the read) and what follows it
 * is left to wslay, which reads it first. 0: all handled; 1: wslay goes
 * on; -1: the socket ended. */
static int mg_ws_read_fast(mg_ws_t *ws) {
    static uint8_t buf[16384];
    ssize_t n = mg_io_read(&ws->io, buf, sizeof(buf));
    size_t off = 0;

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        return 1; /* wslay's own read sees the end or the error */
    ws->last_rx = mg_now_coarse();
    while (off < (size_t)n) {
        uint8_t *f = buf + off, *key, *pl;
        uint32_t k = 0;
        size_t have = (size_t)n - off, hl = 2;
        uint64_t plen;
        int op = f[0] & 0x0f, ascii = 0;
        if (have < 2 || (f[0] != 0x81 && f[0] != 0x82) || ((f[1] & 0x80) != 0) != !ws->client)
            break;
        plen = f[1] & 0x7f;
        if (plen == 126) {
            if (have < 4 || (plen = ((uint64_t)f[2] << 8) | f[3]) < 126)
                break;
            hl = 4;
        } else if (plen == 127) {
            if (have < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | f[2 + i];
            if (plen < 65536 || plen >> 63)
                break;
            hl = 10;
        }
        key = f + hl;
        if (!ws->client)
            hl += 4;
        if (plen > ws->conf->max_message || have < hl + plen)
            break;
        pl = f + hl;
        if (!ws->client) { /* unmask in place (again, to give it back) */
            memcpy(&k, key, 4);
            ascii = (mg_ws_mask(pl, pl, plen, k) & 0x8080808080808080ULL) == 0;
        }
        if (op == WSLAY_TEXT_FRAME && !ascii && mg_ws_utf8_run(0, pl, plen) != 0) {
            if (!ws->client)
                mg_ws_mask(pl, pl, plen, k);
            break; /* wslay fails it with 1007 */
        }
        off += hl + plen;
        ws->rx_given += hl + plen;
        ws->rx_used += hl + plen;
        ws->st.msgs_in++;
        ws->st.bytes_in += plen;
        mg_ws_met_msg(ws, MG_MET_IN, plen);
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, op, (const char *)pl, plen);
        if (ws->dead)
            return -1;
        if (ws->closing || ws->fail_code)
            break;
    }
    if (off < (size_t)n) {
        if (mg_ws_stash(ws, buf + off, (size_t)n - off) != 0) {
            mg_ws_finish(ws);
            return -1;
        }
        return 1;
    }
    /* a full read: there may be more; the FIN in this edge, or bytes the
     * transport still holds: read them */
    return (size_t)n == sizeof(buf) || ws->rd_hup || mg_io_pending(&ws->io) ? 1 : 0;
}

static void mg_ws_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ws_t *ws = arg;
    int rv;
    (void)fd;
    if (what & EV_CLOSED)
        ws->rd_hup = 1;
    if (ws->pre_len == 0 && ws->rx_given == ws->rx_used && !ws->msg_op && !ws->closing &&
        !ws->fail_code && !ws->dead) {
        rv = mg_ws_read_fast(ws);
        if (rv < 0)
            return;
        if (rv == 0) {
            /* a whole-frame read hands wslay nothing: only an owner that
             * began closing this socket leaves work for the flush */
            if (ws->closing || ws->fail_code)
                mg_ws_after_io(ws, 0);
            return;
        }
    }
    if (mg_ws_wake(ws) != 0) {
        mg_ws_finish(ws);
        return;
    }
    ws->in_cb = 1;
    ws->rd_short = 0;
    rv = wslay_event_recv(ws->ctx);
    ws->in_cb = 0;
    mg_ws_after_io(ws, rv);
}

static void mg_ws_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ws_t *ws = arg;
    mg_ws_conf_t *wc = ws->conf;
    double now = mg_now();
    (void)fd, (void)what;

    if (ws->closing) {
        /* the peer never finished the close handshake (or a held close
         * waited too long: it goes now, best effort) */
        if (ws->gate) {
            ws->gate = 0;
            mg_ws_flush(ws);
        }
        mg_ws_finish(ws);
        return;
    }
    if (wc->hb_timeout && now - ws->last_rx >= wc->hb_timeout * 0.95 / 1000.0) {
        mg_debug("websocket: peer silent for %.1fs, closing", now - ws->last_rx);
        MG_MET(mg_met->n[ws->met].ws_dead += !ws->client);
        /* a dead peer will not answer the close: send it and go */
        mg_ws_close(ws, 1001, "peer timed out");
        mg_ws_finish(ws);
        return;
    }
    if (wc->hb_interval && now - ws->last_hb >= wc->hb_interval * 0.9 / 1000.0) {
        ws->last_hb = now;
        if (ws->client) {
            /* the upstream side: ping frames only, so a live upstream's
             * pongs keep it from looking silent */
            if (wc->hb_timeout && mg_ws_wake(ws) == 0) {
                struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
                wslay_event_queue_msg(ws->ctx, &m);
                mg_ws_flush(ws);
            }
        } else if (wc->hb_message) {
            char msg[64];
            int n = snprintf(msg, sizeof(msg), "{\"type\":\"ping\",\"ts\":%lld}", (long long)now);
            mg_ws_send(ws, WSLAY_TEXT_FRAME, msg, n);
            MG_MET(mg_met->n[ws->met].ws_pings++);
        }
        if (wc->hb_frames && !ws->dead && mg_ws_wake(ws) == 0) {
            struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
            MG_MET(mg_met->n[ws->met].ws_pings += !ws->client);
            wslay_event_queue_msg(ws->ctx, &m);
            mg_ws_flush(ws);
        }
    }
    if (!ws->dead && now - ws->last_rx >= 1.0)
        mg_ws_park(ws);
    if (!ws->dead)
        mg_ws_arm(ws);
}

const mg_ws_stats_t *mg_ws_stats(mg_ws_t *ws) { return &ws->st; }

double mg_ws_last_rx(mg_ws_t *ws) { return ws->last_rx; }

void mg_ws_end_info(mg_ws_t *ws, mg_ws_end_t *out, const char *peer) {
    if (mg_ws_close_rcvd(ws) && !ws->closed_first) {
        out->code = wslay_event_get_status_code_received(ws->ctx);
        out->by = peer;
    } else if (ws->closed_first && mg_ws_close_sent(ws)) {
        out->code = wslay_event_get_status_code_sent(ws->ctx);
        out->by = "moongate";
    } else if (ws->fin_flush && ws->closed_first) { /* our raw 1002 */
        out->code = 1002;
        out->by = "moongate";
    } else {
        out->code = 1006;
        out->by = "none";
    }
}

/* After a reload: client sockets of routes that ask for it (on_reload =
 * "drain") and are not in newgen are told to reconnect (1012). Tunnels,
 * which carry no frames, are the gateway's (mg_tunnel_drain). */
void mg_ws_drain_route_sockets(mg_gen_t *newgen) {
    mg_ws_t *ws = mg_ws_list;
    while (ws) {
        mg_ws_t *next = ws->next;
        if (ws->gen != newgen && ws->conf->drain_on_reload && !ws->client) {
            MG_MET(mg_met->n[ws->met].ws_drained++);
            mg_ws_close(ws, 1012, "service restart, reconnect");
        }
        ws = next;
    }
}
