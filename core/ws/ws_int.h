/*
 * ws_int.h -- the inside of one WebSocket endpoint, shared by ws.c (reading,
 * lifecycle, heartbeats) and ws_send.c (writing): the socket struct and the
 * small helpers both use on every frame, inline because that path is hot.
 * Also the pure helper of ws.c that the C unit tests (spec/c/) call
 * (mg_ws_utf8_run). Only ws/ and spec/c/ include this.
 */
#ifndef MG_WS_INT_H
#define MG_WS_INT_H

#include "ws/ws.h"

#include <string.h>

struct mg_ws_s {
    /* what every frame reads, together in the first cache lines (the
     * kernel's share of a small message evicts most of ours) */
    mg_io_t io;    /* the connection (net/io.h), owned */
    int client;    /* we are the client side (relay to upstream) */
    int closing;   /* close queued by us */
    int fail_code; /* protocol failure to report */
    int dead;      /* freed at the next loop turn */
    int in_cb;     /* inside wslay_event_recv/send */
    int hold_len;
    int wtail;               /* wbuf may hold bytes (saves length calls) */
    int msg_op;              /* message being received: 1 text, 2 binary, 0 none */
    int pmd, pmd_client_nct; /* permessage-deflate */
    int wr_on, rd_off;
    int rd_ww; /* TLS: a read must send first and the socket is full: read when writable */
    wslay_event_context_ptr ctx;
    const mg_ws_ops_t *ops;
    void *ud;
    mg_ws_conf_t *conf;
    size_t pre_len, pre_off;
    uint64_t rx_given; /* bytes handed to wslay */
    uint64_t rx_used;  /* bytes of the frames it finished: equal = nothing half read */
    double last_rx;
    struct evbuffer *wbuf; /* an unsent tail */
    struct event rev, wev, tev;
    mg_gen_t *gen;
    mg_route_t *route;
    char *pre; /* bytes read with the HTTP head, consumed first */
    /* message being received */
    int msg_z;    /* compressed message */
    int frame_op; /* opcode of the frame being received */
    int frame_rsv;
    int frame_fin;
    uint32_t utf8;    /* UTF-8 DFA state across fragments */
    uint64_t msg_len; /* decoded bytes so far */
    struct evbuffer *msg;
    uint64_t frame_len;   /* payload length of the frame being received */
    int frame_hl;         /* its head's length */
    const uint8_t *whole; /* a one-frame message's payload, still in wslay's buffer */
    size_t whole_len;
    z_stream *zin, *zout;
    double last_hb;
    int rd_short;     /* the last read returned less than asked */
    int rd_hup;       /* the peer's FIN is in (EV_CLOSED): read on to the end */
    int rd_eof;       /* recv saw the end: flush what is queued, then finish */
    int rd_err;       /* recv failed (reset): nothing more can be sent */
    int rd_done;      /* reading is over, its event removed for good */
    int failing;      /* reading stopped on a protocol error; its close is queued */
    int gate;         /* hold wslay's frames (the close) back; wbuf still flows */
    int fin_flush;    /* finish once wbuf is out (a close already written there) */
    int closed_first; /* we queued our close before the peer's came */
    mg_ws_stats_t st;
    uint8_t hold[16]; /* a frame head waiting for its payload */
    int notified;
    char close_reason[124]; /* the peer's, UTF-8 checked */
    mg_ws_t *prev, *next;
    int met; /* the route's metrics label (loop/metrics.h) */
};

/* a message, in (from the peer) or out: counted on client-facing sockets */
static inline void mg_ws_met_msg(mg_ws_t *ws, int dir, uint64_t len) {
    (void)dir, (void)len;
    if (!ws->client) {
        MG_MET(mg_met->n[ws->met].ws_msgs[dir]++);
        MG_MET(mg_met->n[ws->met].ws_bytes[dir] += len);
    }
}

/* ws.c */
/* UTF-8 (RFC 3629), incremental: feed bytes from state st (0 at the start
 * of a message); returns the state after them: 0 = between characters,
 * MG_UTF8_REJECT = invalid (stays so), anything else = a character cut. */
#define MG_UTF8_REJECT 12u
uint32_t mg_ws_utf8_run(uint32_t st, const uint8_t *s, size_t len);
int mg_ws_wake(mg_ws_t *ws);    /* makes the wslay context if parked; -1 if out of memory */
void mg_ws_arm(mg_ws_t *ws);    /* (re)arms the heartbeat / close timer */
void mg_ws_finish(mg_ws_t *ws); /* tells the owner once, frees at the next loop turn */

/* ws_send.c */
void mg_ws_flush(mg_ws_t *ws);
void mg_ws_write_cb(evutil_socket_t fd, short what, void *arg);
ssize_t mg_ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                      void *user);
int mg_ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user);

/* Bytes waiting in wbuf; the flag spares the common empty case a call. */
static inline size_t mg_ws_wlen(mg_ws_t *ws) {
    size_t n;
    if (!ws->wtail)
        return 0;
    n = evbuffer_get_length(ws->wbuf);
    if (n == 0)
        ws->wtail = 0;
    return n;
}

static inline void mg_ws_tail(mg_ws_t *ws, const void *p, size_t n) {
    evbuffer_add(ws->wbuf, p, n);
    ws->wtail = 1;
}

/* dst[0..n) = src[0..n) XOR the 4-byte mask `key` (its bytes in memory
 * order), 8 bytes at a time; dst may be src (unmasking in place). Returns
 * the OR of the bytes written: no 0x80 bit in it means all ASCII. */
static inline uint64_t mg_ws_mask(uint8_t *dst, const uint8_t *src, size_t n, uint32_t key) {
    uint64_t k64 = (uint64_t)key | ((uint64_t)key << 32), w, acc = 0;
    const uint8_t *kb = (const uint8_t *)&key;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        w ^= k64;
        acc |= w;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ kb[i & 3];
        acc |= dst[i];
    }
    return acc;
}

static inline int mg_ws_want_write(mg_ws_t *ws) {
    return ws->ctx && wslay_event_want_write(ws->ctx);
}

static inline size_t mg_ws_qlen(mg_ws_t *ws) {
    return ws->ctx ? wslay_event_get_queued_msg_length(ws->ctx) : 0;
}

static inline int mg_ws_close_sent(mg_ws_t *ws) {
    return ws->ctx && wslay_event_get_close_sent(ws->ctx);
}

static inline int mg_ws_close_rcvd(mg_ws_t *ws) {
    return ws->ctx && wslay_event_get_close_received(ws->ctx);
}

#endif
