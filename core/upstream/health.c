/*
 * health.c -- active health checks: per upstream with a health_check, each
 * server gets `GET path` every interval on a connection of its own
 * (non-blocking, plain or TLS with the upstream's context, closed after
 * the status line), under one timer that is the check's timeout while it
 * runs and the interval between checks. A status other than `expect`, a
 * refused or reset connection, a close before the status line or the
 * timeout is a failure; `fall` of them in a row mark the server down (no
 * traffic: upstream.c's mg_up_peer_pick skips it), `rise` passes in a row
 * bring it back.
 *
 * Every worker checks for itself: peers, their pools and their passive
 * health are per worker already, so a worker's view needs no shared memory
 * or message, and a restarted worker starts checking at once. The cost is
 * workers x servers requests per interval, a few bytes each. Servers start
 * healthy (traffic flows at start and after a reload that adds them) and
 * are checked at once; a reload keeps the state of servers it keeps.
 */
#include "upstream/upstream.h"
#include "upstream/upstream_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MG_HC_IDLE, MG_HC_CONNECT, MG_HC_WRITE, MG_HC_READ };

typedef struct mg_hc_s {
    mg_peer_t *peer;
    mg_peer_hc_t *st; /* its health state (in the peer) */
    char upname[64];
    int interval, timeout, expect, rise, fall; /* ms, ms, status, counts */
    void *sslctx;                              /* TLS: the upstream's SSL_CTX (NULL: plain) */
    char sni[256];
    char req[512];
    size_t reqlen, sent;
    char buf[64]; /* the status line's start */
    size_t blen;
    int phase; /* MG_HC_* */
    mg_io_t io;
    struct event ioev, tev;
    int io_on;
} mg_hc_t;

static mg_hc_t *mg_hcs;
static int mg_nhcs;

static void mg_hc_io_cb(evutil_socket_t fd, short what, void *arg);

/* A few timers of their own durations: the heap, not a common-timeout
 * queue (those are few and kept for the many timers of one length). */
static void mg_hc_arm(mg_hc_t *h, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(&h->tev, &tv);
}

static void mg_hc_close(mg_hc_t *h) {
    if (h->io_on) {
        event_del(&h->ioev);
        h->io_on = 0;
    }
    mg_io_close(&h->io);
    h->io = (mg_io_t){.fd = -1};
    h->phase = MG_HC_IDLE;
}

static void mg_hc_wait(mg_hc_t *h, short what) {
    if (h->io_on)
        event_del(&h->ioev);
    event_assign(&h->ioev, mg_worker.base, h->io.fd, what, mg_hc_io_cb, h);
    event_add(&h->ioev, NULL);
    h->io_on = 1;
}

/* The check ended: status (0 = no answer) and why it failed, or NULL. */
static void mg_hc_result(mg_hc_t *h, int status, const char *why) {
    mg_peer_hc_t *st = h->st;
    mg_hc_close(h);
    st->last = mg_now();
    st->last_status = status;
    if (why == NULL) {
        st->ok_total++;
        st->fails = 0;
        if (st->down && ++st->oks >= h->rise) {
            mg_info("upstream %s: server %s passed %d health checks: up again", h->upname, st->name,
                    st->oks);
            mg_up_peer_mark(h->upname, h->peer, 0);
        }
    } else {
        st->failed_total++;
        st->oks = 0;
        if (++st->fails >= h->fall && !st->down) {
            mg_warn("upstream %s: server %s failed %d health checks (%s): marked down", h->upname,
                    st->name, st->fails, why);
            mg_up_peer_mark(h->upname, h->peer, 1);
        } else if (!st->down) {
            mg_debug("upstream %s: server %s: health check failed (%s)", h->upname, st->name, why);
        }
    }
    mg_hc_arm(h, h->interval);
}

/* Enough of the status line read: "HTTP/1.x NNN". */
static void mg_hc_status(mg_hc_t *h) {
    char why[64];
    int st;
    if (h->blen < 12 || memcmp(h->buf, "HTTP/1.", 7) != 0 || h->buf[8] != ' ' || h->buf[9] < '1' ||
        h->buf[9] > '5' || h->buf[10] < '0' || h->buf[10] > '9' || h->buf[11] < '0' ||
        h->buf[11] > '9') {
        mg_hc_result(h, 0, "not an HTTP response");
        return;
    }
    st = (h->buf[9] - '0') * 100 + (h->buf[10] - '0') * 10 + (h->buf[11] - '0');
    if (st != h->expect) {
        snprintf(why, sizeof(why), "status %d, expected %d", st, h->expect);
        mg_hc_result(h, st, why);
        return;
    }
    mg_hc_result(h, st, NULL);
}

static void mg_hc_step(mg_hc_t *h) {
    ssize_t n;
    for (;;) {
        if (h->phase == MG_HC_WRITE) {
            n = mg_io_write(&h->io, h->req + h->sent, h->reqlen - h->sent);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    mg_hc_wait(h, h->io.want == MG_IO_WANT_READ ? EV_READ : EV_WRITE);
                    return;
                }
                mg_hc_result(h, 0, h->io.tls ? "TLS or write failed" : strerror(errno));
                return;
            }
            h->sent += (size_t)n;
            if (h->sent >= h->reqlen)
                h->phase = MG_HC_READ;
            continue;
        }
        /* MG_HC_READ */
        n = mg_io_read(&h->io, h->buf + h->blen, sizeof(h->buf) - h->blen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                mg_hc_wait(h, h->io.want == MG_IO_WANT_WRITE ? EV_WRITE : EV_READ);
                return;
            }
            mg_hc_result(h, 0, h->io.tls ? "TLS or read failed" : strerror(errno));
            return;
        }
        if (n == 0) {
            if (h->blen >= 12)
                mg_hc_status(h);
            else
                mg_hc_result(h, 0, "closed before the status line");
            return;
        }
        h->blen += (size_t)n;
        if (h->blen >= 12) {
            mg_hc_status(h);
            return;
        }
    }
}

static void mg_hc_io_cb(evutil_socket_t fd, short what, void *arg) {
    mg_hc_t *h = arg;
    (void)what;
    h->io_on = 0; /* one-shot */
    if (h->phase == MG_HC_CONNECT) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err) {
            mg_hc_result(h, 0, strerror(err));
            return;
        }
        h->phase = MG_HC_WRITE;
    }
    mg_hc_step(h);
}

static void mg_hc_begin(mg_hc_t *h) {
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int fd, one = 1;
    if (!mg_up_peer_addr(h->peer, &ss, &sl)) {
        mg_hc_result(h, 0, "cannot resolve");
        return;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mg_hc_result(h, 0, strerror(errno));
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (h->sslctx) {
        if (mg_io_tls_client(&h->io, fd, h->sslctx, h->sni, NULL) != MG_OK) {
            close(fd); /* still ours */
            h->io = (mg_io_t){.fd = -1};
            mg_hc_result(h, 0, "TLS setup failed");
            return;
        }
    } else {
        mg_io_tcp(&h->io, fd);
    }
    h->sent = h->blen = 0;
    mg_hc_arm(h, h->timeout);
    if (connect(fd, (struct sockaddr *)&ss, sl) == 0) {
        h->phase = MG_HC_WRITE;
        mg_hc_step(h);
        return;
    }
    if (errno != EINPROGRESS) {
        mg_hc_result(h, 0, strerror(errno));
        return;
    }
    h->phase = MG_HC_CONNECT;
    mg_hc_wait(h, EV_WRITE);
}

static void mg_hc_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_hc_t *h = arg;
    (void)fd, (void)what;
    if (h->phase != MG_HC_IDLE) {
        mg_hc_result(h, 0, "timed out");
        return;
    }
    if (mg_worker.stopping)
        return; /* no new checks while draining */
    mg_hc_begin(h);
}

void mg_up_health_start(mg_gen_t *gen) {
    int i, k, n = 0;
    mg_peer_t *p;
    for (i = 0; i < mg_nhcs; i++) {
        mg_hc_close(&mg_hcs[i]);
        event_del(&mg_hcs[i].tev);
    }
    free(mg_hcs);
    mg_hcs = NULL;
    mg_nhcs = 0;
    for (p = mg_up_peer_next(NULL); p; p = mg_up_peer_next(p))
        mg_up_peer_hc(p)->on = 0;
    if (gen == NULL)
        goto unchecked;
    for (i = 0; i < gen->nupstreams; i++)
        if (gen->upstreams[i].hc_interval > 0)
            n += gen->upstreams[i].npeers;
    if (n == 0)
        goto unchecked;
    mg_hcs = calloc((size_t)n, sizeof(mg_hc_t));
    if (mg_hcs == NULL) {
        mg_error("health checks: out of memory: none run");
        goto unchecked;
    }
    for (i = 0; i < gen->nupstreams; i++) {
        mg_upstream_t *up = &gen->upstreams[i];
        if (up->hc_interval <= 0)
            continue;
        for (k = 0; k < up->npeers; k++) {
            mg_hc_t *h = &mg_hcs[mg_nhcs++];
            int rn;
            h->peer = up->peers[k];
            h->st = mg_up_peer_hc(h->peer);
            h->st->on = 1;
            snprintf(h->upname, sizeof(h->upname), "%s", up->name);
            h->interval = up->hc_interval;
            h->timeout = up->hc_timeout > 0 ? up->hc_timeout : up->hc_interval;
            h->expect = up->hc_expect;
            h->rise = up->hc_rise > 0 ? up->hc_rise : 1;
            h->fall = up->hc_fall > 0 ? up->hc_fall : 1;
            h->sslctx = mg_up_peer_is_tls(h->peer) ? up->tls : NULL;
            snprintf(h->sni, sizeof(h->sni), "%s",
                     up->tls_name ? up->tls_name : mg_up_peer_host(h->peer));
            rn = snprintf(h->req, sizeof(h->req),
                          "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moongate-health/" MG_VERSION
                          "\r\nConnection: close\r\n\r\n",
                          up->hc_path, h->st->name);
            h->reqlen = rn > 0 && (size_t)rn < sizeof(h->req) ? (size_t)rn : 0;
            h->io = (mg_io_t){.fd = -1};
            evtimer_assign(&h->tev, mg_worker.base, mg_hc_timer_cb, h);
            /* the first check at once, spread over a few ms per server */
            mg_hc_arm(h, 1 + (int)(mg_rng_next() % 50));
        }
    }
unchecked:
    /* servers no check watches any more are not held down by one */
    for (p = mg_up_peer_next(NULL); p; p = mg_up_peer_next(p)) {
        mg_peer_hc_t *st = mg_up_peer_hc(p);
        if (!st->on) {
            if (st->down)
                mg_up_peer_mark(NULL, p, 0);
            st->oks = st->fails = 0;
        }
    }
}
