/*
 * tunnel.c -- the tunnel mode of a WebSocket route: once the upstream has
 * accepted the upgrade (upgrade.c), the bytes of the two connections are
 * spliced both ways as they are (no frames parsed), with backpressure, the
 * half-close passed on, an idle timeout, and the end on reload (drain) or
 * stop. Its access-log line has no close code or message counts.
 */
#include "gateway/upgrade.h"

#include <errno.h>
#include <stdlib.h>

typedef struct mg_tunnel_s {
    struct mg_tunnel_s *prev, *next;
    mg_io_t io[2];           /* 0 client, 1 upstream */
    struct evbuffer *out[2]; /* pending bytes towards io[i] */
    struct event rev[2], wev[2], tev;
    int rd_off[2], wr_on[2], eof[2];
    int rd_ww[2];      /* TLS: io[i]'s read must send first, the socket is full */
    int shut[2];       /* we shut io[i]'s writing (once) */
    int first;         /* the side whose end came first, -1 none yet */
    uint64_t bytes[2]; /* read from side i */
    double last;
    int idle_ms;
    int drain; /* on_reload = "drain" */
    mg_gen_t *gen;
    mg_http_wslog_t *alog;
    int met; /* the route's metrics label */
} mg_tunnel_t;

static mg_tunnel_t *mg_tunnels;

/* Ends the tunnel; `by` says who ended it for the access log (NULL: the
 * side whose end came first). */
static void mg_tunnel_free(mg_tunnel_t *t, const char *by) {
    mg_ws_end_t e = {0, by};
    if (by == NULL)
        e.by = t->first == 0 ? "client" : t->first == 1 ? "upstream" : "none";
    MG_MET(mg_met->n[t->met].ws_close[mg_met_ws_code(1006)][mg_met_ws_side(e.by)]++);
    MG_MET(mg_met->n[t->met].ws_bytes[MG_MET_IN] += t->bytes[0]);
    MG_MET(mg_met->n[t->met].ws_bytes[MG_MET_OUT] += t->bytes[1]);
    mg_met_ws_open(t->met, MG_MET_WS_TUNNEL, t->gen->id, -1);
    mg_http_wslog_end(t->alog, MG_WS_TUNNEL, 0, e.by, NULL, t->bytes[0], t->bytes[1]);
    if (t->prev)
        t->prev->next = t->next;
    else
        mg_tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    for (int i = 0; i < 2; i++) {
        event_del(&t->rev[i]);
        event_del(&t->wev[i]);
        mg_io_close(&t->io[i]);
        evbuffer_free(t->out[i]);
    }
    event_del(&t->tev);
    mg_gen_release(t->gen);
    free(t);
    mg_worker.active--;
    mg_ws_sockets--;
}

static int mg_tunnel_flush(mg_tunnel_t *t, int i);

/* Bytes from side `from` go to the other side. */
static int mg_tunnel_pass(mg_tunnel_t *t, int from, const char *data, size_t len) {
    int to = !from;
    if (evbuffer_get_length(t->out[to]) == 0) {
        ssize_t w = mg_io_write(&t->io[to], data, len);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return MG_ERR;
        if (w < 0)
            w = 0;
        data += w;
        len -= w;
    }
    if (len) {
        evbuffer_add(t->out[to], data, len);
        if (mg_tunnel_flush(t, to) != MG_OK)
            return MG_ERR;
        if (evbuffer_get_length(t->out[to]) > MG_HIGH_WATER && !t->rd_off[from]) {
            event_del(&t->rev[from]); /* the other side is slower: pause */
            t->rd_off[from] = 1;
        }
    }
    return MG_OK;
}

static void mg_tunnel_shut(mg_tunnel_t *t, int i) {
    if (!t->shut[i]) {
        mg_io_shutdown(&t->io[i]);
        t->shut[i] = 1;
    }
}

/* One read; 1 = read again (the buffer was full). The read events are
 * level-triggered: an EOF or a reset that came with a short read's bytes
 * (FIN, reset, or the EPOLLHUP of a socket we shut) wakes the next
 * epoll_wait again, with no extra recv here. A side that stops reading
 * (paused, or at its end) has its read event removed. */
static int mg_tunnel_read_once(mg_tunnel_t *t, int from) {
    ssize_t n;
    n = mg_io_read(&t->io[from], mg_worker.scratch, sizeof(mg_worker.scratch));
    if (n < 0 && errno == EAGAIN && t->io[from].want == MG_IO_WANT_WRITE) {
        /* TLS (a key update to answer) with the socket full: reading again
         * on the readable socket would spin; read once it is writable */
        t->rd_ww[from] = 1;
        event_del(&t->rev[from]);
        if (!t->wr_on[from]) {
            event_add(&t->wev[from], NULL);
            t->wr_on[from] = 1;
        }
        return 0;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        /* one side finished: pass the half-close on, end when both did */
        t->eof[from] = 1;
        if (t->first < 0)
            t->first = from;
        event_del(&t->rev[from]);
        t->rd_off[from] = 1;
        if (n < 0 || (t->eof[0] && t->eof[1])) {
            mg_tunnel_free(t, NULL);
            return 0;
        }
        if (evbuffer_get_length(t->out[!from]) == 0)
            mg_tunnel_shut(t, !from);
        return 0;
    }
    t->last = mg_now_coarse();
    t->bytes[from] += n;
    if (mg_tunnel_pass(t, from, mg_worker.scratch, n) != MG_OK) {
        mg_tunnel_free(t, from == 0 ? "upstream" : "client"); /* the other side failed */
        return 0;
    }
    /* a full read, or bytes the transport still holds: read again */
    return ((size_t)n == sizeof(mg_worker.scratch) || mg_io_pending(&t->io[from])) &&
           !t->rd_off[from];
}

static void mg_tunnel_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    int from = fd == t->io[0].fd ? 0 : 1;
    (void)what;
    while (mg_tunnel_read_once(t, from))
        ;
}

/* MG_ERR: io[i] failed (a reset): the caller ends the tunnel. Not left to
 * the read side: that side may be paused, and the write event, level-
 * triggered like every EPOLLERR, would fire again at once. */
static int mg_tunnel_flush(mg_tunnel_t *t, int i) {
    size_t left = evbuffer_get_length(t->out[i]);
    if (left) {
        int n = mg_io_write_evbuffer(&t->io[i], t->out[i]);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return MG_ERR;
        left = evbuffer_get_length(t->out[i]);
    }
    if ((left || t->rd_ww[i]) && !t->wr_on[i]) {
        event_add(&t->wev[i], NULL);
        t->wr_on[i] = 1;
    } else if (!left && !t->rd_ww[i] && t->wr_on[i]) {
        event_del(&t->wev[i]);
        t->wr_on[i] = 0;
    }
    if (left < MG_LOW_WATER && t->rd_off[!i] && !t->eof[!i] && !t->rd_ww[!i]) {
        event_add(&t->rev[!i], NULL);
        t->rd_off[!i] = 0;
    }
    if (!left && t->eof[!i])
        mg_tunnel_shut(t, i);
    return MG_OK;
}

static void mg_tunnel_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    int i = fd == t->io[0].fd ? 0 : 1;
    (void)what;
    t->last = mg_now_coarse();
    if (t->rd_ww[i]) {
        /* writable again: the read that had to send first goes on */
        t->rd_ww[i] = 0;
        if (!t->rd_off[i] && !t->eof[i]) {
            event_add(&t->rev[i], NULL);
            event_active(&t->rev[i], EV_READ, 1);
        }
    }
    if (mg_tunnel_flush(t, i) != MG_OK)
        mg_tunnel_free(t, i == 0 ? "client" : "upstream");
}

static void mg_tunnel_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_tunnel_t *t = arg;
    double idle = mg_now() - t->last;
    (void)fd, (void)what;
    if (idle * 1000 >= t->idle_ms - 1) {
        mg_debug("tunnel idle for %.1fs, closing", idle);
        mg_tunnel_free(t, "moongate");
        return;
    }
    event_add(&t->tev, mg_timeout_tv(t->idle_ms));
}

/* Splices the client's connection (p->cio) and the upstream's (uio),
 * taking both, and p's access-log line; the upstream's 101 has reached the
 * client already. */
void mg_tunnel_start(mg_upgrade_t *p, mg_io_t *uio, const char *extra, size_t extralen) {
    mg_tunnel_t *t = calloc(1, sizeof(*t));
    int i;

    if (t == NULL) {
        mg_io_close(uio);
        return; /* the caller closes the client's connection with p */
    }
    mg_io_move(&t->io[0], &p->cio);
    mg_io_move(&t->io[1], uio);
    t->gen = p->gen;
    mg_gen_retain(t->gen);
    t->idle_ms = p->route->ws->idle;
    t->drain = p->route->ws->drain_on_reload;
    t->first = -1;
    t->alog = p->alog;
    p->alog = NULL;
    t->last = mg_now();
    for (i = 0; i < 2; i++) {
        t->out[i] = evbuffer_new();
        event_assign(&t->rev[i], mg_worker.base, t->io[i].fd, EV_READ | EV_PERSIST,
                     mg_tunnel_read_cb, t);
        event_assign(&t->wev[i], mg_worker.base, t->io[i].fd, EV_WRITE | EV_PERSIST,
                     mg_tunnel_write_cb, t);
        event_add(&t->rev[i], NULL);
    }
    evtimer_assign(&t->tev, mg_worker.base, mg_tunnel_timer_cb, t);
    if (t->idle_ms > 0)
        event_add(&t->tev, mg_timeout_tv(t->idle_ms));
    mg_worker.active++;
    mg_ws_sockets++;
    t->met = mg_route_met(p->route);
    mg_met_ws_open(t->met, MG_MET_WS_TUNNEL, t->gen->id, 1);
    t->next = mg_tunnels;
    if (mg_tunnels)
        mg_tunnels->prev = t;
    mg_tunnels = t;
    /* bytes that came early, in either direction */
    if (p->pre_len && mg_tunnel_pass(t, 0, p->pre, p->pre_len) != MG_OK)
        mg_tunnel_free(t, "upstream");
    else if (extralen && mg_tunnel_pass(t, 1, extra, extralen) != MG_OK)
        mg_tunnel_free(t, "client");
}

/* Stopping: a tunnel has no close handshake to offer, so it just ends. */
void mg_tunnel_close_all(void) {
    while (mg_tunnels)
        mg_tunnel_free(mg_tunnels, "moongate");
}

/* A reload that supersedes a draining route's generation: as the other
 * modes' sockets get their 1012 at once, its tunnels end at once. A tunnel
 * does not parse frames, so it cannot say 1012: both sides get their
 * connection closed (after what the tunnel holds for them, best effort). */
void mg_tunnel_drain(mg_gen_t *newgen) {
    mg_tunnel_t *t = mg_tunnels;
    while (t) {
        mg_tunnel_t *next = t->next;
        if (t->gen != newgen && t->drain) {
            for (int i = 0; i < 2; i++)
                if (evbuffer_get_length(t->out[i]))
                    mg_io_write_evbuffer(&t->io[i], t->out[i]);
            MG_MET(mg_met->n[t->met].ws_drained++);
            mg_tunnel_free(t, "moongate");
        }
        t = next;
    }
}
