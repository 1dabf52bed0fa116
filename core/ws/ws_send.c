/*
 * ws_send.c -- the writing half of a WebSocket endpoint. Every message we
 * send is framed here (masked when we are the client, RSV1 when deflated)
 * and goes straight to the socket (head and payload in one send) whenever
 * nothing waits before it; otherwise, and inside wslay's callbacks, it
 * waits whole in wbuf, in order, under the write event. wslay's own queue
 * carries only control frames (pong, the close), whose heads are held back
 * to go out with their payload; wbuf goes first, so a close never
 * overtakes a message sent before it. Past the route's send buffer (wbuf
 * and wslay's queue together) the socket is closed with 1008.
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MG_WS_DEFLATE_MIN 128 /* smaller messages go out uncompressed */

/* Writes what is held in ws->wbuf; MG_OK when it is empty. */
static int mg_ws_wflush(mg_ws_t *ws) {
    while (mg_ws_wlen(ws)) {
        int n = mg_io_write_evbuffer(&ws->io, ws->wbuf);
        if (n < 0)
            return (errno == EAGAIN || errno == EINTR) ? MG_AGAIN : MG_ERR;
    }
    return MG_OK;
}

/* wslay hands a frame's head and payload over in separate calls (the head
 * with WSLAY_MSG_MORE): hold the head (at most 14 bytes) and send both with
 * one writev. What the socket does not take waits in wbuf: wslay never
 * sees a frame half sent, so wbuf only ever ends at a frame's end and a
 * message may be added to it at any time. */
ssize_t mg_ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                      void *user) {
    mg_ws_t *ws = user;
    int rc;
    ssize_t n;

    if (ws->hold_len == 0 && mg_ws_wlen(ws)) {
        rc = mg_ws_wflush(ws);
        if (rc != MG_OK)
            goto fail;
    }
    if ((flags & WSLAY_MSG_MORE) && ws->hold_len == 0 && len <= sizeof(ws->hold)) {
        memcpy(ws->hold, data, len);
        ws->hold_len = (int)len;
        return len;
    }
    if (ws->hold_len) {
        struct iovec iov[2] = {{ws->hold, (size_t)ws->hold_len}, {(void *)data, len}};
        size_t h = (size_t)ws->hold_len;
        ws->hold_len = 0;
        n = mg_io_writev(&ws->io, iov, 2);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            rc = MG_ERR;
            goto fail;
        }
        if (n < 0)
            n = 0;
        if ((size_t)n < h) { /* the rest, if any, waits in wbuf */
            mg_ws_tail(ws, ws->hold + n, h - n);
            n = 0;
        } else {
            n -= h;
        }
        if ((size_t)n < len)
            mg_ws_tail(ws, data + n, len - n);
        return len;
    }
    n = mg_io_write(&ws->io, data, len);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        rc = MG_ERR;
        goto fail;
    }
    if (n < 0)
        n = 0;
    if ((size_t)n < len)
        mg_ws_tail(ws, data + n, len - n);
    return len;
fail:
    wslay_event_set_error(ctx, rc == MG_AGAIN ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

int mg_ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user) {
    char id[40];
    (void)ctx, (void)user;
    mg_request_id(id);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(id[i % 32] * 7 + id[(i + 5) % 32]);
    return 0;
}

void mg_ws_flush(mg_ws_t *ws) {
    int rv, q;
    size_t before = mg_ws_queued(ws), wl;
    if (ws->dead)
        return;
    if (ws->hold_len == 0 && mg_ws_wflush(ws) == MG_ERR) {
        mg_ws_finish(ws);
        return;
    }
    if (!ws->gate && mg_ws_want_write(ws) && mg_ws_wlen(ws) == 0) {
        rv = wslay_event_send(ws->ctx);
        if (rv != 0) {
            mg_ws_finish(ws);
            return;
        }
    }
    wl = mg_ws_wlen(ws);
    q = mg_ws_want_write(ws);
    if (!wl && !q &&
        (ws->fin_flush || (mg_ws_close_sent(ws) && mg_ws_close_rcvd(ws)) ||
         (mg_ws_close_sent(ws) && !wslay_event_get_read_enabled(ws->ctx)))) {
        /* done: both closes, or ours after reading stopped (a protocol
         * failure: the peer's answer is not read), or the peer's end */
        mg_ws_finish(ws);
        return;
    }
    if ((wl || (q && !ws->gate) || ws->rd_ww) && !ws->wr_on) {
        event_add(&ws->wev, NULL);
        ws->wr_on = 1;
    } else if (!wl && !(q && !ws->gate) && !ws->rd_ww && ws->wr_on) {
        event_del(&ws->wev);
        ws->wr_on = 0;
    }
    if (before >= MG_LOW_WATER && mg_ws_queued(ws) < MG_LOW_WATER && ws->ops && ws->ops->on_drain)
        ws->ops->on_drain(ws->ud, ws);
}

void mg_ws_hold_close(mg_ws_t *ws, int on) {
    if (ws->dead || ws->gate == !!on)
        return;
    ws->gate = !!on;
    if (!on && !ws->in_cb)
        mg_ws_flush(ws);
}

void mg_ws_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ws_t *ws = arg;
    (void)fd, (void)what;
    if (ws->rd_ww) {
        /* writable again: the read that had to send first goes on */
        ws->rd_ww = 0;
        if (!ws->rd_off && !ws->rd_done) {
            event_add(&ws->rev, NULL);
            event_active(&ws->rev, EV_READ, 1);
        }
    }
    mg_ws_flush(ws);
}

/* ---- sending ---- */

static int mg_ws_deflate(mg_ws_t *ws, const char *data, size_t len, struct evbuffer *out) {
    uint8_t buf[16384];
    int rc;
    if (ws->zout == NULL) {
        ws->zout = calloc(1, sizeof(z_stream));
        if (ws->zout == NULL || deflateInit2(ws->zout, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -ws->pmd,
                                             8, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(ws->zout);
            ws->zout = NULL;
            return -1;
        }
    }
    ws->zout->next_in = (Bytef *)data;
    ws->zout->avail_in = len;
    do {
        ws->zout->next_out = buf;
        ws->zout->avail_out = sizeof(buf);
        rc = deflate(ws->zout, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -1;
        evbuffer_add(out, buf, sizeof(buf) - ws->zout->avail_out);
    } while (ws->zout->avail_out == 0);
    /* server_no_context_takeover: a fresh compressor per message */
    deflateEnd(ws->zout);
    free(ws->zout);
    ws->zout = NULL;
    return 0;
}

/* Frames a message (RSV1 when `rsv1`: deflated) and sends it straight to
 * the socket when nothing waits before it and we are not inside wslay's
 * callbacks: head and payload in one writev, without a copy. Otherwise,
 * and for what the socket does not take, it waits in wbuf. */
static int mg_ws_frame_out(mg_ws_t *ws, int opcode, int rsv1, const char *data, size_t len) {
    uint8_t fb[14 + 2048]; /* head + a small payload, sent in one piece */
    size_t hl = 2, total;
    ssize_t n = 0;
    uint32_t key = 0;
    int now = !ws->in_cb && ws->hold_len == 0 && mg_ws_wlen(ws) == 0;

    fb[0] = 0x80 | (rsv1 ? 0x40 : 0) | (uint8_t)opcode;
    if (len < 126) {
        fb[1] = (uint8_t)len;
    } else if (len < 65536) {
        fb[1] = 126;
        fb[2] = (uint8_t)(len >> 8);
        fb[3] = (uint8_t)len;
        hl = 4;
    } else {
        fb[1] = 127;
        for (int i = 0; i < 8; i++)
            fb[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    if (ws->client) { /* RFC 6455 5.3: a client masks every frame */
        key = (uint32_t)mg_rng_next();
        fb[1] |= 0x80;
        memcpy(fb + hl, &key, 4);
        hl += 4;
    }
    total = hl + len;
    if (len <= sizeof(fb) - 14) { /* small: one piece */
        if (len && ws->client)    /* an empty message may come as NULL */
            mg_ws_mask(fb + hl, (const uint8_t *)data, len, key);
        else if (len)
            memcpy(fb + hl, data, len);
        if (now && (n = mg_io_write(&ws->io, fb, total)) < 0)
            goto sent;
        if ((size_t)n < total)
            mg_ws_tail(ws, fb + n, total - n);
    } else if (ws->client) { /* big, masked: into wbuf (one copy, as wslay made) */
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(ws->wbuf, total, &v, 1) < 1)
            return MG_ERR;
        memcpy(v.iov_base, fb, hl);
        mg_ws_mask((uint8_t *)v.iov_base + hl, (const uint8_t *)data, len, key);
        v.iov_len = total;
        evbuffer_commit_space(ws->wbuf, &v, 1);
        ws->wtail = 1;
        if (now && mg_ws_wflush(ws) == MG_ERR)
            n = -1;
    } else { /* big: head and payload as two pieces */
        if (now) {
            struct iovec iov[2] = {{fb, hl}, {(void *)data, len}};
            if ((n = mg_io_writev(&ws->io, iov, 2)) < 0)
                goto sent;
        }
        if ((size_t)n < hl) {
            mg_ws_tail(ws, fb + n, hl - n);
            n = 0;
        } else {
            n -= hl;
        }
        mg_ws_tail(ws, data + n, len - n);
    }
sent:
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        mg_ws_finish(ws); /* as a failed flush does */
        return MG_ERR;
    }
    if (n < 0 && len <= sizeof(fb) - 14) /* the socket is full: all of it waits */
        mg_ws_tail(ws, fb, total);
    else if (n < 0 && !ws->client) {
        mg_ws_tail(ws, fb, hl);
        mg_ws_tail(ws, data, len);
    }
    if (mg_ws_wlen(ws) && !ws->in_cb)
        mg_ws_flush(ws); /* arms the write event */
    return MG_OK;
}

int mg_ws_send(mg_ws_t *ws, int opcode, const char *data, size_t len) {
    if (ws->dead || (ws->closing && !ws->gate) ||
        (ws->ctx && !wslay_event_get_write_enabled(ws->ctx)))
        return MG_ERR;
    if (mg_ws_queued(ws) + len > ws->conf->send_buffer) {
        mg_warn("websocket: send buffer over %zu bytes (slow reader), closing with 1008",
                ws->conf->send_buffer);
        MG_MET(mg_met->n[ws->met].ws_overflow++);
        mg_ws_close(ws, 1008, "send buffer overflow");
        return MG_ERR;
    }
    if (opcode < 8) {
        ws->st.msgs_out++;
        ws->st.bytes_out += len;
        mg_ws_met_msg(ws, MG_MET_OUT, len);
    }
    if (ws->pmd && len >= MG_WS_DEFLATE_MIN && opcode < 8) {
        struct evbuffer *z = evbuffer_new();
        if (z && mg_ws_deflate(ws, data, len, z) == 0) {
            size_t zl = evbuffer_get_length(z);
            /* RFC 7692 7.2.1: drop the final empty block's 00 00 ff ff */
            int rv = mg_ws_frame_out(ws, opcode, 1, (const char *)evbuffer_pullup(z, -1),
                                     zl >= 4 ? zl - 4 : zl);
            evbuffer_free(z);
            return rv;
        }
        if (z)
            evbuffer_free(z);
    }
    return mg_ws_frame_out(ws, opcode, 0, data, len);
}

/* The close goes through wslay's queue, which sends only after wbuf is
 * out (mg_ws_send_cb): messages sent before it reach the peer first. */
void mg_ws_close(mg_ws_t *ws, int code, const char *reason) {
    if (ws->dead || ws->closing)
        return;
    if (mg_ws_wake(ws) != 0) {
        mg_ws_finish(ws);
        return;
    }
    ws->closing = 1;
    if (!mg_ws_close_rcvd(ws))
        ws->closed_first = 1;
    wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, reason ? strlen(reason) : 0);
    event_del(&ws->tev);
    mg_ws_arm(ws);
    if (!ws->in_cb)
        mg_ws_flush(ws);
}

void mg_ws_pause(mg_ws_t *ws, int on) {
    if (ws->dead)
        return;
    if (on && !ws->rd_off) {
        event_del(&ws->rev);
        ws->rd_off = 1;
    } else if (!on && ws->rd_off) {
        if (!ws->rd_done && !ws->rd_ww)
            event_add(&ws->rev, NULL);
        ws->rd_off = 0;
    }
}

size_t mg_ws_queued(mg_ws_t *ws) { return mg_ws_qlen(ws) + mg_ws_wlen(ws); }
