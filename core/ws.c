/*
 * ws.c -- one WebSocket endpoint (server side to a client, or client side
 * to an upstream in relay mode) driven by wslay's event API with message
 * buffering off: frames arrive chunk by chunk, so text is checked as UTF-8
 * as the bytes arrive (1007 at the first bad byte), sizes are checked
 * before anything is stored (1009), and permessage-deflate (RFC 7692)
 * inflates incrementally. Heartbeats (the seed's JSON ping, optional ping
 * frames) and dead-peer detection run on one timer per socket, armed with
 * libevent common timeouts so 100 000 sockets share one queue per
 * interval instead of a heap entry each.
 *
 * Memory: an idle socket holds its struct, wslay's context and three
 * events; zlib streams exist only while a compressed message is in flight
 * (and across messages only if the client kept context takeover).
 */
#include "ws.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MG_WS_CLOSE_WAIT_MS 5000
#define MG_WS_DEFLATE_MIN 128 /* smaller messages go out uncompressed */

struct mg_ws_s {
    /* what every frame reads, together in the first cache lines (the
     * kernel's share of a small message evicts most of ours) */
    int fd;
    int client;    /* we are the client side (relay to upstream) */
    int closing;   /* close queued by us */
    int fail_code; /* protocol failure to report */
    int pend_code; /* close due once the queue is empty */
    int dead;      /* freed at the next loop turn */
    int in_cb;     /* inside wslay_event_recv/send */
    int hold_len;
    int wtail;               /* wbuf may hold bytes (saves length calls) */
    int msg_op;              /* message being received: 1 text, 2 binary, 0 none */
    int pmd, pmd_client_nct; /* permessage-deflate */
    int wr_on, rd_off;
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
    int rd_short; /* the last read returned less than asked */
    char pend_reason[64];
    uint8_t hold[16]; /* a frame head waiting for its payload */
    int notified;
    char close_reason[124]; /* the peer's, UTF-8 checked */
    mg_ws_t *prev, *next;
};

static mg_ws_t *mg_ws_list;
uint64_t mg_ws_sockets; /* client-facing: handler and relay sockets, tunnels */

static void mg_ws_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_ws_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_ws_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_ws_flush(mg_ws_t *ws);
static void mg_ws_fail(mg_ws_t *ws, int code, const char *reason);
static void mg_ws_finish(mg_ws_t *ws);
static void mg_ws_msg_done(mg_ws_t *ws);

/* ---- UTF-8 (RFC 3629), incremental ----
 * State 0 = between characters; 12 = rejected; otherwise bytes still due
 * (bits 0-1) and the range the next byte must fall in (bits 8-23), which
 * rules out overlongs, surrogates and code points above U+10FFFF at the
 * first byte that makes them. */
#define MG_UTF8_REJECT 12u
#define MG_UTF8_ST(need, lo, hi) ((uint32_t)(need) | ((uint32_t)(lo) << 8) | ((uint32_t)(hi) << 16))

static uint32_t mg_utf8_run(uint32_t st, const uint8_t *s, size_t len) {
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

/* ---- handshake ---- */

static int mg_token_in(const char *v, size_t len, const char *tok) {
    size_t tl = strlen(tok), i = 0;
    while (i < len) {
        size_t s, e;
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < len && v[i] != ',')
            i++;
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return 1;
    }
    return 0;
}

void mg_ws_accept_for(const char *key, size_t len, char *out) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char sha[SHA_DIGEST_LENGTH];
    char buf[128];
    if (len > 64)
        len = 64;
    memcpy(buf, key, len);
    memcpy(buf + len, guid, sizeof(guid) - 1);
    SHA1((unsigned char *)buf, len + sizeof(guid) - 1, sha);
    EVP_EncodeBlock((unsigned char *)out, sha, SHA_DIGEST_LENGTH);
}

void mg_ws_key(char *out) {
    unsigned char raw[16];
    char id[40];
    mg_request_id(id); /* 32 random hex digits: 16 bytes */
    for (int i = 0; i < 16; i++)
        raw[i] =
            (unsigned char)(((id[2 * i] % 16) << 4) | (id[2 * i + 1] % 16)) ^ (unsigned char)id[i];
    EVP_EncodeBlock((unsigned char *)out, raw, 16);
}

/* Picks a permessage-deflate offer we can honour (RFC 7692 5, 7.1). */
static void mg_ws_negotiate_pmd(const char *v, size_t len, mg_ws_hs_t *hs) {
    size_t i = 0;
    while (i < len && !hs->pmd) {
        /* one offer: up to the next ',' */
        size_t s = i, e;
        int ok = 1, cnct = 0, snct = 0, cmwb = 0, smwb = 0;
        char params[160] = "";
        while (i < len && v[i] != ',')
            i++;
        e = i++;
        {
            char offer[512];
            char *tok, *save;
            size_t ol = e - s < sizeof(offer) - 1 ? e - s : sizeof(offer) - 1;
            memcpy(offer, v + s, ol);
            offer[ol] = '\0';
            tok = strtok_r(offer, ";", &save);
            if (tok == NULL)
                continue;
            while (*tok == ' ' || *tok == '\t')
                tok++;
            {
                char *t = tok + strlen(tok);
                while (t > tok && (t[-1] == ' ' || t[-1] == '\t'))
                    *--t = '\0';
            }
            if (strcasecmp(tok, "permessage-deflate") != 0)
                continue;
            while ((tok = strtok_r(NULL, ";", &save)) != NULL) {
                char *eq, *t;
                while (*tok == ' ' || *tok == '\t')
                    tok++;
                t = tok + strlen(tok);
                while (t > tok && (t[-1] == ' ' || t[-1] == '\t'))
                    *--t = '\0';
                eq = strchr(tok, '=');
                if (eq)
                    *eq++ = '\0';
                if (eq && *eq == '"') {
                    eq++;
                    if (*eq && eq[strlen(eq) - 1] == '"')
                        eq[strlen(eq) - 1] = '\0';
                }
                if (strcasecmp(tok, "server_no_context_takeover") == 0 && !eq && !snct)
                    snct = 1;
                else if (strcasecmp(tok, "client_no_context_takeover") == 0 && !eq && !cnct)
                    cnct = 1;
                else if (strcasecmp(tok, "server_max_window_bits") == 0 && eq && !smwb) {
                    int b = atoi(eq);
                    /* zlib's raw deflate cannot use an 8-bit window */
                    if (b < 9 || b > 15 || strspn(eq, "0123456789") != strlen(eq))
                        ok = 0;
                    smwb = b;
                } else if (strcasecmp(tok, "client_max_window_bits") == 0 && !cmwb) {
                    if (eq &&
                        (atoi(eq) < 8 || atoi(eq) > 15 || strspn(eq, "0123456789") != strlen(eq)))
                        ok = 0;
                    cmwb = eq ? atoi(eq) : -1;
                } else {
                    ok = 0; /* unknown or repeated parameter: decline this offer */
                }
            }
        }
        if (!ok)
            continue;
        /* we always reset our compressor per message: it keeps sockets small */
        snprintf(params, sizeof(params), "permessage-deflate; server_no_context_takeover%s%s",
                 cnct ? "; client_no_context_takeover" : "", "");
        if (smwb) {
            size_t l = strlen(params);
            snprintf(params + l, sizeof(params) - l, "; server_max_window_bits=%d", smwb);
        }
        hs->pmd = smwb ? smwb : 15;
        hs->pmd_client_nct = cnct;
        snprintf(hs->pmd_resp, sizeof(hs->pmd_resp), "%s", params);
    }
}

/* Validates an upgrade request (RFC 6455 4.2.1). Returns 0, or the status
 * to refuse with (400, 403, 426) and *why. */
int mg_ws_handshake_check(mg_req_t *r, mg_ws_hs_t *hs, const char **why) {
    mg_ws_conf_t *wc = r->route->ws;
    const char *v, *key;
    size_t vl, kl;
    unsigned char raw[32];

    memset(hs, 0, sizeof(*hs));
    if (r->method != HTTP_GET || r->http_minor < 1) {
        *why = "websocket handshake needs GET and HTTP/1.1";
        return 400;
    }
    v = mg_req_header(r, "upgrade", &vl);
    if (v == NULL || !mg_token_in(v, vl, "websocket")) {
        *why = "websocket handshake needs Upgrade: websocket";
        return 400;
    }
    v = mg_req_header(r, "connection", &vl);
    if (v == NULL || !mg_token_in(v, vl, "upgrade")) {
        *why = "websocket handshake needs Connection: Upgrade";
        return 400;
    }
    v = mg_req_header(r, "sec-websocket-version", &vl);
    if (v == NULL || vl != 2 || memcmp(v, "13", 2) != 0) {
        *why = "unsupported websocket version";
        return 426;
    }
    key = mg_req_header(r, "sec-websocket-key", &kl);
    if (mg_req_header_n(r, "sec-websocket-key", 1, &vl) != NULL) {
        *why = "repeated Sec-WebSocket-Key";
        return 400;
    }
    if (key == NULL || kl != 24 || EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18 ||
        key[22] != '=' || key[23] != '=') {
        *why = "bad Sec-WebSocket-Key";
        return 400;
    }
    if (r->clen > 0 || r->chunked) {
        *why = "websocket handshake with a body";
        return 400;
    }
    if (wc->norigins) {
        int ok = 0;
        v = mg_req_header(r, "origin", &vl);
        for (int i = 0; v && i < wc->norigins; i++)
            if (strlen(wc->origins[i]) == vl && strncasecmp(wc->origins[i], v, vl) == 0)
                ok = 1;
        if (!ok) {
            *why = "origin not allowed";
            return 403;
        }
    }
    mg_ws_accept_for(key, kl, hs->accept);
    /* repeated header lines form one list (RFC 6455 11.3.4); the
     * client's order of preference wins among the route's protocols */
    for (int line = 0; wc->nprotocols && !hs->protocol[0] &&
                       (v = mg_req_header_n(r, "sec-websocket-protocol", line, &vl)) != NULL;
         line++) {
        size_t i = 0;
        while (i < vl && !hs->protocol[0]) {
            size_t s, e;
            while (i < vl && (v[i] == ' ' || v[i] == ','))
                i++;
            s = i;
            while (i < vl && v[i] != ',' && v[i] != ' ')
                i++;
            e = i;
            for (int k = 0; k < wc->nprotocols; k++)
                if (strlen(wc->protocols[k]) == e - s &&
                    strncmp(wc->protocols[k], v + s, e - s) == 0 && e - s < sizeof(hs->protocol))
                    memcpy(hs->protocol, v + s, e - s);
        }
    }
    if (wc->deflate && wc->mode != MG_WS_TUNNEL)
        for (int line = 0;
             !hs->pmd && (v = mg_req_header_n(r, "sec-websocket-extensions", line, &vl)) != NULL;
             line++)
            mg_ws_negotiate_pmd(v, vl, hs);
    return 0;
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
    if (ws->rd_short || ws->rd_off) {
        /* the last read drained the socket: no EAGAIN read needed, the
         * (level-triggered) event fires again when more arrives */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    n = recv(ws->fd, buf, len, 0);
    if (n > 0) {
        ws->last_rx = mg_now_coarse();
        ws->rd_short = (size_t)n < len;
        ws->rx_given += n;
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

/* Bytes waiting in wbuf; the flag spares the common empty case a call. */
static size_t mg_ws_wlen(mg_ws_t *ws) {
    size_t n;
    if (!ws->wtail)
        return 0;
    n = evbuffer_get_length(ws->wbuf);
    if (n == 0)
        ws->wtail = 0;
    return n;
}

static void mg_ws_tail(mg_ws_t *ws, const void *p, size_t n) {
    evbuffer_add(ws->wbuf, p, n);
    ws->wtail = 1;
}

/* Writes what is held in ws->wbuf; MG_OK when it is empty. */
static int mg_ws_wflush(mg_ws_t *ws) {
    while (mg_ws_wlen(ws)) {
        int n = evbuffer_write(ws->wbuf, ws->fd);
        if (n < 0)
            return (errno == EAGAIN || errno == EINTR) ? MG_AGAIN : MG_ERR;
    }
    return MG_OK;
}

/* wslay hands a frame's head and payload over in separate calls (the head
 * with WSLAY_MSG_MORE): hold the head (at most 14 bytes) and send both with
 * one sendmsg. At most one frame's tail is held back (in wbuf), so wslay's
 * queue still measures the backlog. */
static ssize_t mg_ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *user) {
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
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        size_t h = (size_t)ws->hold_len;
        ws->hold_len = 0;
        n = sendmsg(ws->fd, &mh, MSG_NOSIGNAL); /* the socket path: cheaper than writev */
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
    n = send(ws->fd, data, len, MSG_NOSIGNAL);
    if (n >= 0)
        return n;
    rc = (errno == EAGAIN || errno == EINTR) ? MG_AGAIN : MG_ERR;
fail:
    wslay_event_set_error(ctx, rc == MG_AGAIN ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static int mg_ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user) {
    char id[40];
    (void)ctx, (void)user;
    mg_request_id(id);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(id[i % 32] * 7 + id[(i + 5) % 32]);
    return 0;
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
        ws->utf8 = mg_utf8_run(ws->utf8, p, n);
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
            else if (mg_utf8_run(0, a->msg + 2, a->msg_length - 2) != 0)
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

static int mg_ws_wake(mg_ws_t *ws) {
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
    if (ws->ctx == NULL || ws->in_cb || ws->closing || ws->pend_code || ws->fail_code ||
        ws->msg_op || ws->hold_len || ws->pre_len || ws->rx_given != ws->rx_used ||
        mg_ws_wlen(ws) || wslay_event_want_write(ws->ctx) ||
        !wslay_event_get_read_enabled(ws->ctx) || !wslay_event_get_write_enabled(ws->ctx) ||
        wslay_event_get_close_sent(ws->ctx) || wslay_event_get_close_received(ws->ctx))
        return;
    wslay_event_context_free(ws->ctx);
    ws->ctx = NULL;
    mg_debug("websocket: idle, wslay context parked");
}

static int mg_ws_want_write(mg_ws_t *ws) { return ws->ctx && wslay_event_want_write(ws->ctx); }
static size_t mg_ws_qlen(mg_ws_t *ws) {
    return ws->ctx ? wslay_event_get_queued_msg_length(ws->ctx) : 0;
}
static int mg_ws_close_sent(mg_ws_t *ws) { return ws->ctx && wslay_event_get_close_sent(ws->ctx); }
static int mg_ws_close_rcvd(mg_ws_t *ws) {
    return ws->ctx && wslay_event_get_close_received(ws->ctx);
}

/* ---- lifecycle ---- */

static void mg_ws_arm(mg_ws_t *ws) {
    int ms = ws->conf->hb_interval;
    if (ws->conf->hb_timeout && (ms == 0 || ws->conf->hb_timeout < ms))
        ms = ws->conf->hb_timeout;
    if (ws->closing)
        ms = mg_worker.stopping ? 1000 : MG_WS_CLOSE_WAIT_MS;
    if (ms > 0)
        event_add(&ws->tev, mg_timeout_tv(ms));
}

mg_ws_t *mg_ws_new(int fd, int client, mg_gen_t *gen, mg_route_t *route, const mg_ws_hs_t *hs,
                   const char *pre, size_t pre_len, const mg_ws_ops_t *ops, void *ud) {
    mg_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return NULL;
    ws->fd = fd;
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
    /* edge-triggered: wslay reads until a short read (rd_short) or EAGAIN */
    event_assign(&ws->rev, mg_worker.base, fd, EV_READ | EV_PERSIST | EV_ET, mg_ws_read_cb, ws);
    event_assign(&ws->wev, mg_worker.base, fd, EV_WRITE | EV_PERSIST, mg_ws_write_cb, ws);
    evtimer_assign(&ws->tev, mg_worker.base, mg_ws_timer_cb, ws);
    event_add(&ws->rev, NULL);
    mg_ws_arm(ws);
    ws->next = mg_ws_list;
    if (mg_ws_list)
        mg_ws_list->prev = ws;
    mg_ws_list = ws;
    if (!client)
        mg_ws_sockets++;
    if (ws->pre_len)
        event_active(&ws->rev, EV_READ, 1);
    return ws;
}

static void mg_ws_free(mg_ws_t *ws) {
    event_del(&ws->rev);
    event_del(&ws->wev);
    event_del(&ws->tev);
    if (ws->fd >= 0)
        close(ws->fd);
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
static void mg_ws_finish(mg_ws_t *ws) {
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
    if (ws->whole) {
        const uint8_t *p = ws->whole;
        ws->whole = NULL;
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, ws->msg_op, (const char *)p, ws->whole_len);
    } else {
        n = evbuffer_get_length(ws->msg);
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, ws->msg_op, (const char *)evbuffer_pullup(ws->msg, -1),
                                n);
        evbuffer_drain(ws->msg, evbuffer_get_length(ws->msg));
    }
    ws->msg_op = 0;
    ws->msg_z = 0;
}

static void mg_ws_after_io(mg_ws_t *ws, int rv) {
    if (ws->dead)
        return;
    if (rv != 0 && !ws->client && !mg_ws_close_sent(ws)) {
        /* wslay gave up on a frame it could not parse (an oversized or
         * fragmented control frame): still tell the peer why, 1002 */
        static const unsigned char close1002[] = {0x88, 0x02, 0x03, 0xea};
        if (send(ws->fd, close1002, sizeof(close1002), MSG_NOSIGNAL) < 0) {
            /* the peer is gone anyway */
        }
    }
    if (rv != 0) {
        mg_ws_finish(ws);
        return;
    }
    mg_ws_flush(ws); /* finishes the socket once both closes are done */
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

/* dst[0..n) = src[0..n) XOR the 4-byte mask `key` (its bytes in memory
 * order), 8 bytes at a time; dst may be src (unmasking in place). Returns
 * the OR of the bytes written: no 0x80 bit in it means all ASCII. */
static uint64_t mg_ws_mask(uint8_t *dst, const uint8_t *src, size_t n, uint32_t key) {
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
    ssize_t n = recv(ws->fd, buf, sizeof(buf), 0);
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
        if (op == WSLAY_TEXT_FRAME && !ascii && mg_utf8_run(0, pl, plen) != 0) {
            if (!ws->client)
                mg_ws_mask(pl, pl, plen, k);
            break; /* wslay fails it with 1007 */
        }
        off += hl + plen;
        ws->rx_given += hl + plen;
        ws->rx_used += hl + plen;
        if (ws->ops && ws->ops->on_message)
            ws->ops->on_message(ws->ud, ws, op, (const char *)pl, plen);
        if (ws->dead)
            return -1;
        if (ws->closing || ws->fail_code || ws->pend_code)
            break;
    }
    if (off < (size_t)n) {
        if (mg_ws_stash(ws, buf + off, (size_t)n - off) != 0) {
            mg_ws_finish(ws);
            return -1;
        }
        return 1;
    }
    return (size_t)n == sizeof(buf) ? 1 : 0; /* a full read: there may be more */
}

static void mg_ws_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ws_t *ws = arg;
    int rv;
    (void)fd, (void)what;
    if (ws->pre_len == 0 && ws->rx_given == ws->rx_used && !ws->msg_op && !ws->closing &&
        !ws->fail_code && !ws->pend_code && !ws->dead) {
        rv = mg_ws_read_fast(ws);
        if (rv < 0)
            return;
        if (rv == 0) {
            /* a whole-frame read hands wslay nothing: only an owner that
             * began closing this socket leaves work for the flush */
            if (ws->closing || ws->fail_code || ws->pend_code)
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

static void mg_ws_flush(mg_ws_t *ws) {
    int rv;
    size_t before = mg_ws_qlen(ws);
    int pending;
    if (ws->dead)
        return;
    if (ws->hold_len == 0 && mg_ws_wflush(ws) == MG_ERR) {
        mg_ws_finish(ws);
        return;
    }
    if (mg_ws_want_write(ws) && mg_ws_wlen(ws) == 0) {
        rv = wslay_event_send(ws->ctx);
        if (rv != 0) {
            mg_ws_finish(ws);
            return;
        }
    }
    pending = mg_ws_want_write(ws) || mg_ws_wlen(ws);
    if (!pending && ws->pend_code) {
        int code = ws->pend_code;
        ws->pend_code = 0;
        mg_ws_close(ws, code, ws->pend_reason); /* flushes again */
        return;
    }
    if (mg_ws_close_sent(ws) && mg_ws_close_rcvd(ws) && !pending) {
        mg_ws_finish(ws);
        return;
    }
    if (pending && !ws->wr_on) {
        event_add(&ws->wev, NULL);
        ws->wr_on = 1;
    } else if (!pending && ws->wr_on) {
        event_del(&ws->wev);
        ws->wr_on = 0;
    }
    if (before >= MG_LOW_WATER && mg_ws_qlen(ws) < MG_LOW_WATER && ws->ops && ws->ops->on_drain)
        ws->ops->on_drain(ws->ud, ws);
}

static void mg_ws_write_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    mg_ws_flush(arg);
}

static void mg_ws_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ws_t *ws = arg;
    mg_ws_conf_t *wc = ws->conf;
    double now = mg_now();
    (void)fd, (void)what;

    if (ws->closing) {
        /* the peer never finished the close handshake */
        mg_ws_finish(ws);
        return;
    }
    if (wc->hb_timeout && now - ws->last_rx >= wc->hb_timeout * 0.95 / 1000.0) {
        mg_debug("websocket: peer silent for %.1fs, closing", now - ws->last_rx);
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
        }
        if (wc->hb_frames && !ws->dead && mg_ws_wake(ws) == 0) {
            struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
            wslay_event_queue_msg(ws->ctx, &m);
            mg_ws_flush(ws);
        }
    }
    if (!ws->dead && now - ws->last_rx >= 1.0)
        mg_ws_park(ws);
    if (!ws->dead)
        mg_ws_arm(ws);
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

/* A message straight to the socket when nothing waits before it (wslay's
 * queue empty, no frame half sent): its frame head and payload in one
 * sendmsg, without the copy into wslay's queue. A tail the socket would
 * not take waits in wbuf. MG_AGAIN when this does not apply. */
static int mg_ws_send_direct(mg_ws_t *ws, int opcode, const char *data, size_t len) {
    uint8_t fb[14 + 2048]; /* head + a small payload, sent in one piece */
    size_t hl = 2, total;
    ssize_t n;

    if (ws->in_cb || ws->hold_len || ws->pend_code || mg_ws_wlen(ws) || mg_ws_want_write(ws) ||
        (ws->client && len > sizeof(fb) - 14))
        return MG_AGAIN;
    fb[0] = 0x80 | (uint8_t)opcode;
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
        uint32_t key = (uint32_t)mg_rng_next();
        fb[1] |= 0x80;
        memcpy(fb + hl, &key, 4);
        hl += 4;
        if (len) /* an empty message may come as NULL */
            mg_ws_mask(fb + hl, (const uint8_t *)data, len, key);
    } else if (len && len <= sizeof(fb) - 14) {
        memcpy(fb + hl, data, len);
    }
    total = hl + len;
    if (ws->client || len <= sizeof(fb) - 14) {
        n = send(ws->fd, fb, total, MSG_NOSIGNAL);
    } else { /* a big payload: head and payload as two pieces */
        struct iovec iov[2] = {{fb, hl}, {(void *)data, len}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        n = sendmsg(ws->fd, &mh, MSG_NOSIGNAL);
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        mg_ws_finish(ws); /* as a failed flush does */
        return MG_ERR;
    }
    if (n < 0)
        n = 0;
    if ((size_t)n < total) { /* the tail waits in wbuf */
        if (ws->client || len <= sizeof(fb) - 14) {
            mg_ws_tail(ws, fb + n, total - n);
        } else {
            if ((size_t)n < hl) {
                mg_ws_tail(ws, fb + n, hl - n);
                n = 0;
            } else {
                n -= hl;
            }
            mg_ws_tail(ws, data + n, len - n);
        }
        mg_ws_flush(ws); /* arms the write event */
    }
    return MG_OK;
}

int mg_ws_send(mg_ws_t *ws, int opcode, const char *data, size_t len) {
    struct wslay_event_msg m;
    int rv;
    if (ws->dead || ws->closing || (ws->ctx && !wslay_event_get_write_enabled(ws->ctx)))
        return MG_ERR;
    if (mg_ws_qlen(ws) + len > ws->conf->send_buffer) {
        mg_warn("websocket: send buffer over %zu bytes (slow reader), closing with 1008",
                ws->conf->send_buffer);
        mg_ws_close(ws, 1008, "send buffer overflow");
        return MG_ERR;
    }
    if (ws->pmd && len >= MG_WS_DEFLATE_MIN && opcode < 8 && mg_ws_wake(ws) == 0) {
        struct evbuffer *z = evbuffer_new();
        if (z && mg_ws_deflate(ws, data, len, z) == 0) {
            size_t zl = evbuffer_get_length(z);
            /* RFC 7692 7.2.1: drop the final empty block's 00 00 ff ff */
            m.opcode = opcode;
            m.msg = evbuffer_pullup(z, -1);
            m.msg_length = zl >= 4 ? zl - 4 : zl;
            rv = wslay_event_queue_msg_ex(ws->ctx, &m, WSLAY_RSV1_BIT);
            evbuffer_free(z);
            if (rv != 0)
                return MG_ERR;
            mg_ws_flush(ws);
            return MG_OK;
        }
        if (z)
            evbuffer_free(z);
    }
    rv = mg_ws_send_direct(ws, opcode, data, len);
    if (rv != MG_AGAIN)
        return rv;
    if (mg_ws_wake(ws) != 0)
        return MG_ERR;
    m.opcode = opcode;
    m.msg = (const uint8_t *)data;
    m.msg_length = len;
    if (wslay_event_queue_msg(ws->ctx, &m) != 0)
        return MG_ERR;
    if (!ws->in_cb)
        mg_ws_flush(ws);
    return MG_OK;
}

/* Close once the messages already queued are out: wslay sends control
 * frames ahead of queued data, so a plain close could overtake them. */
void mg_ws_close_after_data(mg_ws_t *ws, int code, const char *reason) {
    if (ws->dead || ws->closing)
        return;
    if (!mg_ws_want_write(ws) && mg_ws_wlen(ws) == 0) {
        mg_ws_close(ws, code, reason);
        return;
    }
    ws->pend_code = code;
    snprintf(ws->pend_reason, sizeof(ws->pend_reason), "%s", reason ? reason : "");
    mg_ws_pause(ws, 1); /* nothing more is read meanwhile */
}

void mg_ws_close(mg_ws_t *ws, int code, const char *reason) {
    if (ws->dead || ws->closing)
        return;
    if (mg_ws_wake(ws) != 0) {
        mg_ws_finish(ws);
        return;
    }
    ws->closing = 1;
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
        event_add(&ws->rev, NULL);
        ws->rd_off = 0;
    }
}

size_t mg_ws_queued(mg_ws_t *ws) { return mg_ws_qlen(ws) + mg_ws_wlen(ws); }

/* After a reload: sockets of routes that ask for it are told to reconnect. */
void mg_ws_drain_route_sockets(mg_gen_t *newgen) {
    mg_ws_t *ws = mg_ws_list;
    while (ws) {
        mg_ws_t *next = ws->next;
        if (ws->gen != newgen && ws->conf->drain_on_reload && !ws->client)
            mg_ws_close(ws, 1012, "service restart, reconnect");
        ws = next;
    }
}
