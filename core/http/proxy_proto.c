/*
 * proxy_proto.c -- the PROXY protocol stage (HAProxy's proxy-protocol.txt,
 * versions 1 and 2) of a listener with proxy_protocol = true: an L4
 * balancer (HAProxy, AWS NLB, nginx stream, Traefik TCP) sends the
 * client's address in a header before the client's first byte. The worker
 * hands such a listener's new sockets here instead of to mg_http_accept;
 * this reads the header and then calls mg_http_accept with the client's
 * address from it, so the session, the access log, req.remote_addr and
 * X-Forwarded-For all see the client.
 *
 * Nothing past the header is ever read: the socket is peeked at (MSG_PEEK)
 * and only bytes known to be the header's are consumed, so what follows (a
 * request head, or a TLS ClientHello that the session's transport reads)
 * stays in the socket. Bytes of a header that is not complete yet are
 * consumed into the stage's buffer (they are the header's, and a socket
 * left readable would wake a level-triggered loop at once), bounded: v1 is
 * one line of at most 107 bytes, v2 16 bytes and a length, at most
 * MG_PP_V2_MAX in all. The whole header must arrive within the header
 * timeout (one deadline from accept, not a gap). A connection that sends
 * anything else, closes in the middle or is too slow is closed and
 * counted; the first of each second is logged as a warning, every one at
 * debug. One that closes without a byte (a TCP health check) is not.
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MG_PP_V1_MAX 107 /* "PROXY TCP6 " + 2 * 39 + 2 * 5 + 3 spaces + CRLF */
#define MG_PP_V2_MAX 536 /* 16 + the addresses (216 at most) + 304 bytes of TLVs */
#define MG_PP_REPORT 1.0 /* seconds between two warnings */

static const unsigned char mg_pp_v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                               0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

typedef struct mg_pp_s mg_pp_t;
struct mg_pp_s {
    struct event ev; /* read or the deadline, re-added after each read */
    int fd;
    int lidx;
    double deadline; /* mg_now() by which the header must be complete */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    size_t have; /* header bytes consumed into buf */
    unsigned char buf[MG_PP_V2_MAX];
    mg_pp_t *prev, *next;
};

static mg_pp_t *mg_pp_list; /* every socket in this stage, for a stop */
static uint64_t mg_pp_refused, mg_pp_unreported;
static double mg_pp_reported;

static void mg_pp_read_cb(evutil_socket_t fd, short what, void *arg);

/* ---- the header (pure) ---- */

/* A v1 port: decimal 0-65535, no leading zero. */
static int mg_pp_v1_port(const char *s, size_t n, unsigned *port) {
    unsigned v = 0;
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = v;
    return 0;
}

/* "PROXY TCP4|TCP6 src dst sport dport\r\n" or "PROXY UNKNOWN ...\r\n";
 * line is the header without its CRLF. */
static int mg_pp_v1(const char *line, size_t n, struct sockaddr_storage *ss, socklen_t *sslen,
                    const char **why) {
    const char *tok[6];
    size_t len[6];
    int nt = 0, fam;
    unsigned sport, dport;
    char addr[2][64];
    unsigned char bin[2][16];
    size_t i = 0;

    while (i <= n && nt < 6) { /* single spaces between the fields */
        size_t s = i;
        while (i < n && line[i] != ' ')
            i++;
        tok[nt] = line + s;
        len[nt++] = i - s;
        if (i == n)
            break;
        i++;
        if (nt == 2 && len[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0)
            break; /* the rest is anything */
    }
    if (nt < 2 || len[0] != 5 || memcmp(tok[0], "PROXY", 5) != 0) {
        *why = "v1: not a PROXY line";
        return -1;
    }
    if (len[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0) {
        *sslen = 0;
        return 0;
    }
    if (len[1] == 4 && memcmp(tok[1], "TCP4", 4) == 0)
        fam = AF_INET;
    else if (len[1] == 4 && memcmp(tok[1], "TCP6", 4) == 0)
        fam = AF_INET6;
    else {
        *why = "v1: protocol is not TCP4, TCP6 or UNKNOWN";
        return -1;
    }
    if (nt != 6 || tok[5] + len[5] != line + n) {
        *why = "v1: expected PROXY proto src dst sport dport";
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        if (len[2 + k] == 0 || len[2 + k] >= sizeof(addr[k])) {
            *why = "v1: bad address";
            return -1;
        }
        memcpy(addr[k], tok[2 + k], len[2 + k]);
        addr[k][len[2 + k]] = '\0';
        if (inet_pton(fam, addr[k], bin[k]) != 1) {
            *why = fam == AF_INET ? "v1: bad IPv4 address" : "v1: bad IPv6 address";
            return -1;
        }
    }
    if (mg_pp_v1_port(tok[4], len[4], &sport) != 0 || mg_pp_v1_port(tok[5], len[5], &dport) != 0) {
        *why = "v1: bad port";
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    if (fam == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)sport);
        memcpy(&a->sin_addr, bin[0], 4);
        *sslen = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)sport);
        memcpy(&a->sin6_addr, bin[0], 16);
        *sslen = sizeof(*a);
    }
    return 0;
}

/* The 16-byte head and len bytes of addresses and TLVs at b + 16. */
static int mg_pp_v2(const unsigned char *b, size_t len, struct sockaddr_storage *ss,
                    socklen_t *sslen, const char **why) {
    unsigned cmd = b[12] & 0x0F, af = b[13] >> 4, proto = b[13] & 0x0F;
    size_t alen, off;
    if ((b[12] >> 4) != 2) {
        *why = "v2: bad version";
        return -1;
    }
    if (cmd > 1 || af > 3 || proto > 2) {
        *why = "v2: bad command or family";
        return -1;
    }
    alen = af == 1 ? 12 : af == 2 ? 36 : af == 3 ? 216 : 0;
    if (len < alen) {
        *why = "v2: addresses longer than the header";
        return -1;
    }
    /* the TLVs after the addresses: skipped, but they must fit */
    for (off = 16 + alen; off < 16 + len;) {
        size_t tl;
        if (off + 3 > 16 + len) {
            *why = "v2: truncated TLV";
            return -1;
        }
        tl = (size_t)b[off + 1] << 8 | b[off + 2];
        off += 3 + tl;
        if (off > 16 + len) {
            *why = "v2: truncated TLV";
            return -1;
        }
    }
    *sslen = 0;
    if (cmd == 0 || af == 0 || af == 3)
        return 0; /* LOCAL (a health check), unspecified or UNIX: the peer's */
    memset(ss, 0, sizeof(*ss));
    if (af == 1) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, b + 16, 4);
        memcpy(&a->sin_port, b + 24, 2);
        *sslen = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, b + 16, 16);
        memcpy(&a->sin6_port, b + 48, 2);
        *sslen = sizeof(*a);
    }
    return 0;
}

int mg_http_pp_parse(const unsigned char *b, size_t n, struct sockaddr_storage *ss,
                     socklen_t *sslen, const char **why) {
    *why = "no PROXY header";
    if (n == 0)
        return 0;
    if (b[0] == 'P') {
        const unsigned char *lf = memchr(b, '\n', n < MG_PP_V1_MAX ? n : MG_PP_V1_MAX);
        size_t k = n < 6 ? n : 6;
        if (memcmp(b, "PROXY ", k) != 0)
            return -1;
        if (lf == NULL) {
            if (n >= MG_PP_V1_MAX) {
                *why = "v1: no CRLF within 107 bytes";
                return -1;
            }
            return 0;
        }
        if (lf == b || lf[-1] != '\r') {
            *why = "v1: line not ended by CRLF";
            return -1;
        }
        if (memchr(b, '\r', (size_t)(lf - b) - 1) != NULL) {
            *why = "v1: CR inside the line";
            return -1;
        }
        if (mg_pp_v1((const char *)b, (size_t)(lf - b) - 1, ss, sslen, why) != 0)
            return -1;
        return (int)(lf - b) + 1;
    }
    if (b[0] == mg_pp_v2_sig[0]) {
        size_t k = n < 12 ? n : 12, len;
        if (memcmp(b, mg_pp_v2_sig, k) != 0)
            return -1;
        if (n < 16)
            return 0;
        len = (size_t)b[14] << 8 | b[15];
        if (16 + len > MG_PP_V2_MAX) {
            *why = "v2: header longer than 536 bytes";
            return -1;
        }
        if (n < 16 + len)
            return 0;
        if (mg_pp_v2(b, len, ss, sslen, why) != 0)
            return -1;
        return (int)(16 + len);
    }
    return -1;
}

/* ---- the stage ---- */

static void mg_pp_unlink(mg_pp_t *p) {
    event_del(&p->ev);
    if (p->prev)
        p->prev->next = p->next;
    else
        mg_pp_list = p->next;
    if (p->next)
        p->next->prev = p->prev;
    mg_worker.active--;
}

static void mg_pp_refuse(mg_pp_t *p, const char *why) {
    char ip[MG_PEER_IP_MAX] = "?";
    double now = mg_now_coarse();
    if (p->peer.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&p->peer)->sin_addr, ip, sizeof(ip));
    else if (p->peer.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&p->peer)->sin6_addr, ip, sizeof(ip));
    mg_pp_refused++;
    mg_pp_unreported++;
    mg_debug("proxy protocol: closed a connection from %s: %s", ip, why);
    if (now - mg_pp_reported >= MG_PP_REPORT) {
        mg_warn("proxy protocol: closed a connection from %s: %s (%llu without a valid header "
                "since the last report, %llu in all in worker %d)",
                ip, why, (unsigned long long)mg_pp_unreported, (unsigned long long)mg_pp_refused,
                mg_worker.id);
        mg_pp_unreported = 0;
        mg_pp_reported = now;
    }
    mg_pp_unlink(p);
    close(p->fd);
    free(p);
}

static void mg_pp_arm(mg_pp_t *p) {
    double left = p->deadline - mg_now();
    struct timeval tv;
    if (left < 0)
        left = 0;
    tv.tv_sec = (time_t)left;
    tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec) * 1e6);
    event_add(&p->ev, &tv);
}

static void mg_pp_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_pp_t *p = arg;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    const char *why;
    size_t room = sizeof(p->buf) - p->have, take;
    ssize_t n;
    int total;

    if (what & EV_TIMEOUT) {
        mg_pp_refuse(p, "no complete header within the header timeout");
        return;
    }
    if (p->have == 0 || p->buf[0] == 'P')
        room = MG_PP_V1_MAX - p->have < room ? MG_PP_V1_MAX - p->have : room;
    do
        n = recv(fd, p->buf + p->have, room, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            mg_pp_arm(p);
            return;
        }
        mg_pp_refuse(p, strerror(errno));
        return;
    }
    if (n == 0 && p->have == 0) {
        /* connected and closed without a byte: a TCP health check or a
         * port probe, not a broken header (the HTTP session does not count
         * those either) */
        mg_pp_unlink(p);
        close(p->fd);
        free(p);
        return;
    }
    if (n == 0) {
        mg_pp_refuse(p, "closed before the header ended");
        return;
    }
    total = mg_http_pp_parse(p->buf, p->have + (size_t)n, &ss, &sslen, &why);
    if (total < 0) {
        mg_pp_refuse(p, why);
        return;
    }
    /* consume the header's bytes only: all those peeked while it is not
     * complete, up to its end once it is */
    take = total > 0 ? (size_t)total - p->have : (size_t)n;
    do
        n = recv(fd, p->buf + p->have, take, 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)take) { /* peeked bytes are there: cannot be short */
        mg_pp_refuse(p, n < 0 ? strerror(errno) : "short read of peeked bytes");
        return;
    }
    p->have += take;
    if (total == 0) {
        mg_pp_arm(p);
        return;
    }
    mg_pp_unlink(p); /* mg_http_accept counts it again */
    if (sslen == 0) {
        memcpy(&ss, &p->peer, sizeof(ss));
        sslen = p->peerlen;
    }
    mg_http_accept(p->fd, (struct sockaddr *)&ss, sslen, p->lidx);
    free(p);
}

void mg_http_pp_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx) {
    mg_pp_t *p = malloc(sizeof(*p));
    int ms = mg_gen_current->timeouts.header;
    if (p == NULL) {
        close(fd);
        return;
    }
    p->fd = fd;
    p->lidx = lidx;
    p->have = 0;
    p->peerlen = salen < sizeof(p->peer) ? salen : sizeof(p->peer);
    memset(&p->peer, 0, sizeof(p->peer));
    memcpy(&p->peer, sa, p->peerlen);
    /* no header timeout configured: still bounded, by the default's 30 s */
    p->deadline = mg_now() + (ms > 0 ? ms : 30000) / 1000.0;
    event_assign(&p->ev, mg_worker.base, fd, EV_READ, mg_pp_read_cb, p);
    p->prev = NULL;
    p->next = mg_pp_list;
    if (mg_pp_list)
        mg_pp_list->prev = p;
    mg_pp_list = p;
    mg_worker.active++;
    /* the header usually came with the handshake's last ACK: try at once */
    mg_pp_read_cb(fd, EV_READ, p);
}

void mg_http_pp_close_all(void) {
    while (mg_pp_list) {
        mg_pp_t *p = mg_pp_list;
        mg_pp_unlink(p);
        close(p->fd);
        free(p);
    }
}
