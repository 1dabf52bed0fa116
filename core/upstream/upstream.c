/*
 * upstream.c -- upstream peers and exchanges. A peer is one server
 * (host:port) known to this worker: its keep-alive pool and its passive
 * health live here and outlive generations. An exchange (mg_ux_t) sends one
 * request to an upstream and parses the response with llhttp, handing head
 * and body to a sink (the C proxy, the Lua HTTP client, or the WebSocket
 * upgrade, which takes the connection on a 101). Connections read and
 * write through the transport (net/io.h).
 *
 * Retries: a connect failure moves to the next server (nothing was sent);
 * a pooled connection that turns out closed before any response byte is
 * retried once on a fresh connection when the request is idempotent and
 * carried no body.
 *
 * Timers, one per exchange, by phase: connect_timeout while connecting;
 * body_timeout while request bytes wait for the upstream to take them
 * (progress re-arms it); response_timeout from the moment the request has
 * been sent in full until the complete response head (a deadline: bytes of
 * the head do not re-arm it); body_timeout again between response body
 * reads (not while the sink has reading paused).
 *
 * Reads are level-triggered: an EOF or reset that arrived with the last
 * bytes is reported again after a short read, so no read path needs an
 * extra recv to find EAGAIN (edge-triggered reads missed exactly that once
 * reading had been paused and resumed; libevent drops EPOLLET anyway when
 * the write event goes). EV_CLOSED (EPOLLRDHUP) tells at once that a FIN
 * came with a response that completed in one read: that connection is not
 * pooled; a FIN that comes later wakes the pooled connection's read event.
 *
 * TLS (https:// and wss:// servers, up->tls set): once the TCP connect
 * completes, the handshake runs non-blocking, still under connect_timeout
 * (the connection counts as connecting until it is done); a failure, a
 * certificate that does not verify included, is a connect failure (next
 * server, then 502) with a log line naming the upstream, the server and
 * OpenSSL's reason. A peer (host, port, TLS or not) pools TLS connections
 * like plain ones, and each is reused only with the context it was made
 * with (a reload with new certificates makes new connections; the old ones
 * idle out). The first
 * completed exchange on a connection keeps its session in the upstream,
 * per server, so that the next new connection resumes it.
 */
#include "upstream/upstream.h"
#include "upstream/upstream_int.h"
#include "loop/timer.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#define MG_POOL_IDLE_MS 55000
#define MG_UX_MAX_HDRS 100

typedef struct mg_uconn_s mg_uconn_t;

struct mg_peer_s {
    char host[64];
    int port;
    int tls; /* part of the key: https:// and http:// pools apart */
    struct sockaddr_storage addr;
    socklen_t alen;
    int resolved;
    int fails;         /* consecutive failures */
    double down_until; /* skipped until then (seconds, mg_now clock) */
    mg_peer_hc_t hc;   /* active health (health.c) */
    mg_uconn_t *idle;  /* pooled connections, LIFO */
    int nidle;
    int met; /* metrics label "upstream|host:port" + 1 (the first upstream to use it) */
    mg_peer_t *next;
};

struct mg_uconn_s {
    mg_io_t io; /* the connection (net/io.h) */
    mg_peer_t *peer;
    mg_ux_t *ux; /* NULL while pooled */
    struct event rev, wev;
    mg_tm_t tm; /* the exchange's timeout (connect, tphase); pooled: the idle expiry */
    mg_uconn_t *next;
    int connecting;
    int wr_on;
    int rd_off;
    int peer_closed; /* EV_CLOSED seen: the upstream sent its FIN */
    int hs;          /* connecting: the TCP connect is done, the TLS handshake runs */
    int sess_kept;   /* its TLS session was kept for resumption */
    void *sslctx;    /* TLS: the context it was made with (reused only with it) */
    int met;         /* the upstream's metrics label (pool gauges) */
};

/* which timer is armed (mg_ux_timer) */
enum { MG_T_NONE, MG_T_SEND, MG_T_HEAD, MG_T_BODY };

struct mg_ux_s {
    mg_upstream_t *up;
    mg_uconn_t *uc;
    struct evbuffer *out; /* request bytes not yet written */
    llhttp_t parser;
    const mg_ux_sink_t *sink;
    void *ud;
    int idempotent, head_only;
    int head_ms;         /* response_timeout, or the caller's */
    int body_ms;         /* body_timeout, or the caller's */
    int tphase;          /* MG_T_*: the timer armed */
    int sink_abort;      /* the sink's on_body refused the body */
    int drain_wait;      /* more than MG_HIGH_WATER was pending: on_drain is owed */
    const char *bad_msg; /* why the response was refused, for the 502 */
    int tries;           /* servers tried */
    int pidx;            /* index of the server in up->peers */
    int reused;          /* the connection came from the pool */
    int body_sent;       /* body bytes were queued */
    int req_done;
    int got_resp;  /* response bytes received */
    int head_done; /* head delivered to the sink */
    int msg_done;
    int paused;
    int in_exec;
    int cancelled;
    int status;
    int in_start;     /* inside mg_ux_start: failures are reported later */
    int upgraded;     /* 101 to an upgrade request */
    int fail_pending; /* a deferred failure is scheduled */
    int fail_status;
    const char *fail_msg;
    double t0, t1; /* mg_ux_start, and its end (mg_ux_met): the histogram, mg_ux_ms */
    int nh, hstate;
    mg_ux_t *next_free;
    /* kept across reuse (not zeroed): response head storage */
    char *hbuf;
    size_t hlen, hcap;
    /* a copy of the request head (and of any body sent with it), for a
     * retry on a fresh connection: rqlen bytes, reset by mg_ux_start */
    char *rq;
    size_t rqlen, rqcap;
    mg_kv_t hv[MG_UX_MAX_HDRS];
    uint32_t hoff[MG_UX_MAX_HDRS][4];
};

/* Exchanges are recycled: no calloc of the head arrays per request. */
static mg_ux_t *mg_ux_free_list;
static int mg_ux_free_count;
/* the retry copy a recycled exchange keeps (larger ones are freed) */
#define MG_UX_RQ_KEEP (16 * 1024)

/* Request buffers (mg_ux_buf_new) are recycled too: an exchange's `out`
 * goes back here, empty, when it ends: no evbuffer_new/evbuffer_free per
 * request. */
#define MG_UX_BUFS 64
static struct evbuffer *mg_ux_bufs[MG_UX_BUFS];
static int mg_ux_nbufs;

struct evbuffer *mg_ux_buf_new(void) {
    return mg_ux_nbufs ? mg_ux_bufs[--mg_ux_nbufs] : evbuffer_new();
}

static void mg_ux_buf_free(struct evbuffer *b) {
    if (mg_ux_nbufs < MG_UX_BUFS) {
        evbuffer_drain(b, evbuffer_get_length(b));
        mg_ux_bufs[mg_ux_nbufs++] = b;
        return;
    }
    evbuffer_free(b);
}

static mg_peer_t *mg_peers;

static void mg_ux_connect(mg_ux_t *ux);
static void mg_ux_fail(mg_ux_t *ux, int status, const char *msg, int peer_fault);
static void mg_uconn_close(mg_uconn_t *uc);
static void mg_ux_flush(mg_ux_t *ux);
static void mg_ux_timer(mg_ux_t *ux, int progress);
static void mg_ux_free(mg_ux_t *ux);
static void mg_uconn_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_uconn_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_uconn_timer_cb(mg_tm_t *t, void *arg);
static int mg_ux_on_message_begin(llhttp_t *p);
static int mg_ux_on_header_field(llhttp_t *p, const char *at, size_t len);
static int mg_ux_on_header_value(llhttp_t *p, const char *at, size_t len);
static int mg_ux_on_headers_complete(llhttp_t *p);
static int mg_ux_on_body(llhttp_t *p, const char *at, size_t len);
static int mg_ux_on_message_complete(llhttp_t *p);

static llhttp_settings_t mg_ux_settings = {
    .on_message_begin = mg_ux_on_message_begin,
    .on_header_field = mg_ux_on_header_field,
    .on_header_value = mg_ux_on_header_value,
    .on_headers_complete = mg_ux_on_headers_complete,
    .on_body = mg_ux_on_body,
    .on_message_complete = mg_ux_on_message_complete,
};

/* ---- peers ---- */

/* The list only grows, at its head. A worker's generations load in a
 * helper thread (app/worker.c) while the loop may add a peer of its own
 * (moongate.http to a new host): adding is locked, and the head is
 * published after the peer is whole, so mg_up_peer_next (the loop) reads
 * it without the lock. */
static pthread_mutex_t mg_peers_lock = PTHREAD_MUTEX_INITIALIZER;

static mg_peer_t *mg_up_peer_find(const char *host, int port, int tls) {
    for (mg_peer_t *p = __atomic_load_n(&mg_peers, __ATOMIC_ACQUIRE); p; p = p->next)
        if (p->port == port && p->tls == tls && strcmp(p->host, host) == 0)
            return p;
    return NULL;
}

mg_peer_t *mg_up_peer_get(const char *host, int port, int tls) {
    mg_peer_t *p, *q;
    struct addrinfo hints, *res = NULL;
    char ports[16];

    tls = tls != 0;
    pthread_mutex_lock(&mg_peers_lock);
    p = mg_up_peer_find(host, port, tls);
    pthread_mutex_unlock(&mg_peers_lock);
    if (p)
        return p;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    snprintf(p->host, sizeof(p->host), "%s", host);
    p->port = port;
    p->tls = tls;
    snprintf(p->hc.name, sizeof(p->hc.name), "%s:%d", host, port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    snprintf(ports, sizeof(ports), "%d", port);
    /* resolved once, at load time (never on the event loop's hot path);
     * not under the lock */
    if (getaddrinfo(host, ports, &hints, &res) == 0 && res) {
        memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
        p->alen = res->ai_addrlen;
        p->resolved = 1;
        freeaddrinfo(res);
    } else {
        mg_warn("upstream server %s:%d: cannot resolve", host, port);
    }
    pthread_mutex_lock(&mg_peers_lock);
    q = mg_up_peer_find(host, port, tls); /* added meanwhile by the other thread */
    if (q == NULL) {
        p->next = mg_peers;
        __atomic_store_n(&mg_peers, p, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&mg_peers_lock);
    if (q) {
        free(p);
        return q;
    }
    return p;
}

void mg_up_peer_str(mg_peer_t *p, char *buf, size_t len) {
    snprintf(buf, len, "%s:%d", p->host, p->port);
}

void mg_up_peer_stat(const mg_peer_t *p, mg_up_peer_stat_t *s) {
    s->healthy = p->down_until <= mg_now();
    s->fails = p->fails;
    s->idle = p->nidle;
    s->tls = p->tls;
}

/* the server's health as the metrics show it (1 up, 2 down) */
/* the server's metrics name, interned on its first use */
static void mg_up_peer_met_name(const char *upname, mg_peer_t *p) {
    char name[160]; /* 64 + 64 + a port: fits MG_MET_NAME_LEN */
    if (upname == NULL)
        return; /* never shown yet, and no name to show it under */
    snprintf(name, sizeof(name), "%s|%s:%d", upname, p->host, p->port);
    p->met = 1 + mg_met_name(name, MG_MET_K_SERVER);
}

/* inline: every pick of a server comes here */
static inline void mg_up_peer_met(const char *upname, mg_peer_t *p, int state) {
    if (p->met == 0) {
        mg_up_peer_met_name(upname, p);
        if (p->met == 0)
            return;
    }
    (void)state;
    MG_MET(mg_met->health[p->met - 1] = (uint8_t)state);
}

static mg_peer_t *mg_up_peer_pick(mg_upstream_t *up, int *idx) {
    double now = mg_now();
    int i;
    for (i = 0; i < up->npeers; i++) {
        *idx = (int)(up->rr++ % (unsigned)up->npeers);
        if (up->peers[*idx]->down_until <= now) {
            mg_up_peer_met(up->name, up->peers[*idx], 1);
            return up->peers[*idx];
        }
    }
    /* every server is marked down: try the next one anyway rather than
     * refusing everything until the marks expire */
    if (up->npeers == 0)
        return NULL;
    *idx = (int)(up->rr++ % (unsigned)up->npeers);
    return up->peers[*idx];
}

static void mg_up_peer_failed(mg_upstream_t *up, mg_peer_t *p) {
    if (mg_up_hc_failed(up, p))
        return; /* checked: an ejection lasts until it rises */
    if (++p->fails >= up->max_fails && up->max_fails > 0) {
        if (p->down_until <= mg_now()) {
            mg_warn("upstream %s: server %s:%d failed %d times, skipped for %.1fs", up->name,
                    p->host, p->port, p->fails, up->fail_timeout / 1000.0);
            mg_up_peer_met(up->name, p, 2);
            MG_MET(mg_met->n[p->met - 1].up_eject++);
        }
        p->down_until = mg_now() + up->fail_timeout / 1000.0;
    }
}

/* ---- connections ---- */

static void mg_uconn_close(mg_uconn_t *uc) {
    MG_MET(mg_met->n[uc->met].up_pool--);
    event_del(&uc->rev);
    event_del(&uc->wev);
    mg_tm_stop(&uc->tm);
    mg_io_close(&uc->io);
    free(uc);
}

/* A pooled connection became readable (closed, or junk) or idled out. */
static void mg_uconn_pool_drop(mg_uconn_t *uc) {
    mg_uconn_t **pp;
    for (pp = &uc->peer->idle; *pp; pp = &(*pp)->next)
        if (*pp == uc) {
            *pp = uc->next;
            uc->peer->nidle--;
            MG_MET(mg_met->n[uc->met].up_idle--);
            break;
        }
    mg_uconn_close(uc);
}

/* The most recently pooled connection made with TLS context ctx (NULL:
 * plain), taken from the pool; NULL if none. Plain peers and TLS peers of
 * one context take the first; upstreams with other TLS settings for the
 * same server (or another generation's) leave each other's alone. */
static mg_uconn_t *mg_uconn_pool_take(mg_peer_t *p, void *ctx) {
    mg_uconn_t **pp, *uc;
    for (pp = &p->idle; *pp; pp = &(*pp)->next)
        if ((*pp)->sslctx == ctx) {
            uc = *pp;
            *pp = uc->next;
            p->nidle--;
            MG_MET(mg_met->n[uc->met].up_idle--);
            return uc;
        }
    return NULL;
}

/* The read event stays registered while a connection sits in the pool (no
 * epoll_ctl per request); only the callbacks notice uc->ux == NULL. */
static void mg_uconn_release(mg_ux_t *ux) {
    mg_uconn_t *uc = ux->uc;
    mg_peer_t *p = uc->peer;
    ux->uc = NULL;
    uc->ux = NULL;
    if (p->nidle >= ux->up->keepalive || mg_worker.stopping || uc->rd_off) {
        mg_uconn_close(uc);
        return;
    }
    if (uc->wr_on) {
        event_del(&uc->wev);
        uc->wr_on = 0;
    }
    mg_tm_arm(&uc->tm, MG_POOL_IDLE_MS);
    uc->next = p->idle;
    p->idle = uc;
    p->nidle++;
    MG_MET(mg_met->n[uc->met].up_idle++);
}

static void mg_uconn_bind(mg_ux_t *ux, mg_uconn_t *uc) {
    ux->uc = uc;
    uc->ux = ux;
    uc->rd_off = 0;
    event_assign(&uc->rev, mg_worker.base, uc->io.fd, EV_READ | EV_CLOSED | EV_PERSIST,
                 mg_uconn_read_cb, uc);
    event_assign(&uc->wev, mg_worker.base, uc->io.fd, EV_WRITE | EV_PERSIST, mg_uconn_write_cb, uc);
    mg_tm_init(&uc->tm, mg_uconn_timer_cb, uc);
}

static void mg_ux_arm(mg_ux_t *ux, int ms) {
    if (ux->uc)
        mg_tm_arm(&ux->uc->tm, ms); /* ms 0: disarmed */
}

/* The TLS transport of a new connection to the exchange's server: SNI and
 * the verified name are the configured name, else the server's host; the
 * session kept from an earlier connection is offered. */
static int mg_uconn_tls(mg_ux_t *ux, mg_uconn_t *uc, int fd) {
    mg_upstream_t *up = ux->up;
    mg_peer_t *p = up->peers[ux->pidx];
    void *sess = up->tls_sess ? up->tls_sess[ux->pidx] : NULL;
    if (up->tls_noverify && !up->tls_warned) {
        up->tls_warned = 1;
        mg_warn("upstream %s: TLS certificate verification is off (tls.verify = false): "
                "its servers are not authenticated",
                up->name);
    }
    uc->sslctx = up->tls;
    return mg_io_tls_client(&uc->io, fd, up->tls, up->tls_name ? up->tls_name : p->host, sess);
}

/* Keeps the connection's TLS session (once per connection) for the next
 * new connection to the same server. */
static void mg_uconn_keep_session(mg_ux_t *ux, mg_uconn_t *uc) {
    mg_upstream_t *up = ux->up;
    void *s;
    if (uc->sess_kept || up->tls_sess == NULL || ux->pidx < 0 || ux->pidx >= up->npeers ||
        up->peers[ux->pidx] != uc->peer)
        return;
    uc->sess_kept = 1;
    s = mg_io_tls_session(&uc->io);
    if (s == NULL)
        return;
    if (up->tls_sess[ux->pidx])
        mg_io_tls_session_free(up->tls_sess[ux->pidx]);
    up->tls_sess[ux->pidx] = s;
}

static void mg_ux_connect(mg_ux_t *ux) {
    mg_peer_t *p;
    mg_uconn_t *uc;
    int fd, one = 1, tls_rc = MG_OK;

    llhttp_init(&ux->parser, HTTP_RESPONSE, &mg_ux_settings);
    ux->parser.data = ux;
    ux->tphase = MG_T_NONE; /* a new connection: its timer is armed afresh */
    for (;;) {
        p = mg_up_peer_pick(ux->up, &ux->pidx);
        if (p && p->hc.down) /* every server is down: never one its checks hold down */
            p = mg_up_hc_pick(ux->up, &ux->pidx);
        ux->tries++;
        if (p == NULL) {
            ux->pidx = -1; /* none tried */
            if (ux->up->npeers > 0)
                mg_ux_fail(ux, 503, "no healthy upstream server", 0);
            else
                mg_ux_fail(ux, 502, "upstream has no servers", 0);
            return;
        }
        /* reuse a pooled connection first */
        if (p->idle && !ux->reused && !ux->sink->on_upgrade &&
            (uc = mg_uconn_pool_take(p, ux->up->tls)) != NULL) {
            ux->uc = uc;
            uc->ux = ux;
            ux->reused = 1;
            mg_tm_stop(&uc->tm); /* the pool's idle timer */
            mg_ux_flush(ux);
            return;
        }
        ux->reused = 0;
        fd = p->resolved ? socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
                         : -1;
        if (fd >= 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            if (connect(fd, (struct sockaddr *)&p->addr, p->alen) == 0 || errno == EINPROGRESS) {
                uc = calloc(1, sizeof(*uc));
                if (uc == NULL) {
                    close(fd);
                    mg_ux_fail(ux, 502, "out of memory", 0);
                    return;
                }
                uc->met = mg_upstream_met(ux->up);
                MG_MET(mg_met->n[uc->met].up_pool++);
                if (ux->up->tls)
                    tls_rc = mg_uconn_tls(ux, uc, fd);
                else
                    mg_io_tcp(&uc->io, fd);
                if (tls_rc != MG_OK) {
                    MG_MET(mg_met->n[uc->met].up_pool--);
                    free(uc);
                    close(fd);
                    mg_ux_fail(ux, 502, "upstream TLS setup failed", 0);
                    return;
                }
                uc->peer = p;
                uc->connecting = 1;
                mg_uconn_bind(ux, uc);
                event_add(&uc->wev, NULL);
                uc->wr_on = 1;
                mg_ux_arm(ux, ux->up->connect_timeout);
                return;
            }
            close(fd);
        }
        mg_debug("upstream %s: connect to %s:%d failed: %s", ux->up->name, p->host, p->port,
                 strerror(errno));
        mg_up_peer_failed(ux->up, p);
        if (ux->tries >= ux->up->npeers) {
            mg_ux_fail(ux, 502, "upstream unreachable", 0);
            return;
        }
    }
}

/* A connection failed before the request was answered. */
static void mg_ux_retry_or_fail(mg_ux_t *ux, int status, const char *msg, int connect_phase) {
    mg_uconn_t *uc = ux->uc;
    mg_peer_t *p = uc ? uc->peer : NULL;
    int was_reused = ux->reused;

    if (uc) {
        ux->uc = NULL;
        mg_uconn_close(uc);
    }
    if (connect_phase) {
        if (p)
            mg_up_peer_failed(ux->up, p);
        if (ux->tries < ux->up->npeers) {
            ux->reused = 0;
            mg_ux_connect(ux);
            return;
        }
        mg_ux_fail(ux, status, msg, 0);
        return;
    }
    /* a stale pooled connection: resend on a fresh one when safe */
    if (was_reused && !ux->got_resp && ux->idempotent && !ux->body_sent && ux->req_done) {
        evbuffer_drain(ux->out, evbuffer_get_length(ux->out));
        evbuffer_add(ux->out, ux->rq, ux->rqlen);
        ux->tries--;
        mg_ux_connect(ux);
        return;
    }
    if (p && !ux->got_resp)
        mg_up_peer_failed(ux->up, p);
    mg_ux_fail(ux, status, msg, 0);
}

static void mg_ux_deferred_fail_cb(evutil_socket_t fd, short what, void *arg) {
    mg_ux_t *ux = arg;
    (void)fd, (void)what;
    ux->fail_pending = 0;
    if (!ux->cancelled)
        ux->sink->on_error(ux->ud, ux->fail_status, ux->fail_msg);
    mg_ux_free(ux);
}

/* one exchange ended: counted by its upstream (kind: MG_MET_E_*, or -1) */
static void mg_ux_met(mg_ux_t *ux, int kind) {
    int i = mg_upstream_met(ux->up);
    (void)i, (void)kind;
    MG_MET(mg_met->n[i].up_req++);
    if (kind >= 0)
        MG_MET(mg_met->n[i].up_err[kind]++);
    ux->t1 = mg_now();
    MG_MET(mg_met_hist(&mg_met->n[i].up_time, ux->t1 - ux->t0));
}

static void mg_ux_fail(mg_ux_t *ux, int status, const char *msg, int peer_fault) {
    (void)peer_fault;
    mg_ux_met(ux, status == 504 ? MG_MET_E_TIMEOUT
                  : !ux->got_resp && msg &&
                          (strstr(msg, "unreachable") || strstr(msg, "connect") ||
                           strstr(msg, "no servers") || strstr(msg, "TLS"))
                      ? MG_MET_E_CONNECT
                      : MG_MET_E_BAD);
    if (ux->in_start) {
        /* the caller of mg_ux_start has no handle yet: report on the next
         * loop turn */
        static const struct timeval zero = {0, 0};
        if (ux->uc) {
            mg_uconn_close(ux->uc);
            ux->uc = NULL;
        }
        ux->fail_pending = 1;
        ux->fail_status = status;
        ux->fail_msg = msg;
        event_base_once(mg_worker.base, -1, EV_TIMEOUT, mg_ux_deferred_fail_cb, ux, &zero);
        return;
    }
    if (ux->uc) {
        mg_uconn_close(ux->uc);
        ux->uc = NULL;
    }
    if (!ux->cancelled)
        ux->sink->on_error(ux->ud, ux->head_done ? 0 : status, msg);
    mg_ux_free(ux);
}

static void mg_ux_free(mg_ux_t *ux) {
    if (ux->uc)
        mg_uconn_close(ux->uc);
    mg_ux_buf_free(ux->out);
    if (mg_ux_free_count < 256) {
        if (ux->rqcap > MG_UX_RQ_KEEP) {
            free(ux->rq);
            ux->rq = NULL;
            ux->rqcap = 0;
        }
        ux->next_free = mg_ux_free_list;
        mg_ux_free_list = ux;
        mg_ux_free_count++;
        return;
    }
    free(ux->rq);
    free(ux->hbuf);
    free(ux);
}

mg_ux_t *mg_ux_start(mg_upstream_t *up, struct evbuffer *head, int idempotent, int head_only,
                     const mg_ux_sink_t *sink, void *ud, int timeout_ms) {
    mg_ux_t *ux = mg_ux_free_list;
    if (ux) {
        mg_ux_free_list = ux->next_free;
        mg_ux_free_count--;
        memset(ux, 0, offsetof(mg_ux_t, hbuf));
    } else {
        ux = calloc(1, sizeof(*ux));
        if (ux == NULL) {
            evbuffer_free(head);
            return NULL;
        }
    }
    ux->up = up;
    ux->out = head;
    ux->sink = sink;
    ux->ud = ud;
    ux->idempotent = idempotent;
    ux->head_only = head_only;
    ux->head_ms = timeout_ms > 0 ? timeout_ms : up->response_timeout;
    ux->body_ms = timeout_ms > 0 ? timeout_ms : up->body_timeout;
    ux->t0 = mg_now();
    ux->t1 = 0;
    ux->hlen = 0;
    ux->rqlen = 0;
    if (idempotent) {
        size_t n = evbuffer_get_length(head);
        if (n > ux->rqcap) {
            char *b = realloc(ux->rq, n);
            if (b) {
                ux->rq = b;
                ux->rqcap = n;
            }
        }
        if (n <= ux->rqcap) {
            evbuffer_copyout(head, ux->rq, n);
            ux->rqlen = n;
        } else {
            ux->idempotent = 0; /* no copy (out of memory): no retry */
        }
    }
    ux->in_start = 1;
    mg_ux_connect(ux);
    ux->in_start = 0;
    return ux;
}

static void mg_ux_flush(mg_ux_t *ux) {
    mg_uconn_t *uc = ux->uc;
    size_t left;
    if (uc == NULL || uc->connecting)
        return;
    left = evbuffer_get_length(ux->out);
    if (left) {
        int n = mg_io_write_evbuffer(&uc->io, ux->out);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            mg_ux_retry_or_fail(ux, 502, "upstream write failed", 0);
            return;
        }
        left = evbuffer_get_length(ux->out);
        mg_ux_timer(ux, n > 0);
    } else {
        mg_ux_timer(ux, 0);
    }
    if (left && !uc->wr_on) {
        event_add(&uc->wev, NULL);
        uc->wr_on = 1;
    } else if (!left && uc->wr_on) {
        event_del(&uc->wev);
        uc->wr_on = 0;
    }
    if (left > MG_HIGH_WATER) {
        ux->drain_wait = 1; /* the sink stops sending past this mark */
    } else if (left < MG_LOW_WATER && ux->drain_wait) {
        /* drained by a write from mg_ux_send rather than from the write
         * event (which is now disarmed): this is the only chance to tell
         * the sink to send again (else the upload stalls) */
        ux->drain_wait = 0;
        if (ux->sink->on_drain && !ux->req_done)
            ux->sink->on_drain(ux->ud);
    }
}

void mg_ux_send(mg_ux_t *ux, const char *data, size_t len) {
    ux->body_sent = 1;
    evbuffer_add(ux->out, data, len);
    mg_ux_flush(ux);
}

void mg_ux_end(mg_ux_t *ux) {
    ux->req_done = 1;
    mg_ux_flush(ux);
}

size_t mg_ux_pending(mg_ux_t *ux) { return evbuffer_get_length(ux->out); }

void mg_ux_pause(mg_ux_t *ux, int on) {
    mg_uconn_t *uc = ux->uc;
    ux->paused = on;
    if (uc == NULL || uc->connecting)
        return;
    if (on && !uc->rd_off) {
        event_del(&uc->rev);
        uc->rd_off = 1;
        mg_ux_timer(ux, 0); /* a slow sink is not the upstream's fault */
    } else if (!on && uc->rd_off) {
        event_add(&uc->rev, NULL);
        uc->rd_off = 0;
        mg_ux_timer(ux, 1);
    }
}

/* Arms the timer of the exchange's phase; progress (bytes moved) re-arms
 * an idle timer, never the response head's deadline. */
static void mg_ux_timer(mg_ux_t *ux, int progress) {
    mg_uconn_t *uc = ux->uc;
    int ph, ms;
    if (uc == NULL || uc->connecting)
        return;
    if (ux->head_done)
        ph = ux->paused ? MG_T_NONE : MG_T_BODY;
    else if (evbuffer_get_length(ux->out))
        ph = MG_T_SEND;
    else if (ux->req_done)
        ph = MG_T_HEAD;
    else
        ph = MG_T_NONE; /* waiting for the client's body: its own timeouts apply */
    if (ph == ux->tphase && !(progress && ph != MG_T_HEAD))
        return;
    ux->tphase = ph;
    ms = ph == MG_T_NONE ? 0 : ph == MG_T_HEAD ? ux->head_ms : ux->body_ms;
    mg_ux_arm(ux, ms);
}

void mg_ux_cancel(mg_ux_t *ux) {
    ux->cancelled = 1;
    if (ux->in_exec || ux->fail_pending)
        return; /* freed once llhttp_execute returns */
    mg_ux_free(ux);
}

/* ---- events ---- */

/* Drives the TLS handshake of a connecting connection: 1 done, 0 waiting
 * for the socket (the event it needs is armed), -1 failed (handled). */
static int mg_uconn_handshake(mg_uconn_t *uc) {
    mg_ux_t *ux = uc->ux;
    int rc = mg_io_handshake(&uc->io);
    if (rc == MG_AGAIN) {
        if (uc->io.want == MG_IO_WANT_WRITE) {
            if (!uc->wr_on)
                event_add(&uc->wev, NULL);
            uc->wr_on = 1;
        } else {
            if (uc->wr_on)
                event_del(&uc->wev);
            uc->wr_on = 0;
            event_add(&uc->rev, NULL);
        }
        return 0;
    }
    if (rc != MG_OK) {
        mg_warn("upstream %s: TLS handshake with %s:%d failed: %s", ux->up->name, uc->peer->host,
                uc->peer->port, mg_io_tls_error(&uc->io));
        mg_ux_retry_or_fail(ux, 502, "upstream TLS handshake failed", 1);
        return -1;
    }
    uc->hs = 0;
    return 1;
}

/* The connection is up (TCP connected, TLS shaken hands): the request goes. */
static void mg_uconn_ready(mg_uconn_t *uc) {
    mg_ux_t *ux = uc->ux;
    uc->connecting = 0;
    event_add(&uc->rev, NULL);
    mg_tm_stop(&uc->tm); /* the connect timer; mg_ux_flush arms the next */
    mg_ux_flush(ux);
    if (ux->cancelled || ux->uc != uc)
        return;
    if (evbuffer_get_length(ux->out) < MG_LOW_WATER && ux->sink->on_drain && !ux->req_done)
        ux->sink->on_drain(ux->ud);
}

static void mg_uconn_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_uconn_t *uc = arg;
    mg_ux_t *ux = uc->ux;
    (void)what;
    if (uc->connecting) {
        if (!uc->hs) {
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                mg_debug("upstream %s: connect to %s:%d: %s", ux->up->name, uc->peer->host,
                         uc->peer->port, strerror(err));
                mg_ux_retry_or_fail(ux, 502, "upstream unreachable", 1);
                return;
            }
            uc->hs = uc->io.tls;
        }
        if (uc->hs && mg_uconn_handshake(uc) <= 0)
            return;
        mg_uconn_ready(uc);
        return;
    }
    mg_ux_flush(ux);
    if (ux->cancelled || ux->uc != uc)
        return;
    if (evbuffer_get_length(ux->out) < MG_LOW_WATER && ux->sink->on_drain && !ux->req_done)
        ux->sink->on_drain(ux->ud);
}

static void mg_uconn_timer_cb(mg_tm_t *t, void *arg) {
    mg_uconn_t *uc = arg;
    mg_ux_t *ux = uc->ux;
    (void)t;
    if (ux == NULL) {
        mg_uconn_pool_drop(uc);
        return;
    }
    if (uc->connecting) {
        mg_debug("upstream %s: %s %s:%d timed out", ux->up->name,
                 uc->hs ? "TLS handshake with" : "connect to", uc->peer->host, uc->peer->port);
        mg_ux_retry_or_fail(
            ux, 504, uc->hs ? "upstream TLS handshake timed out" : "upstream connect timed out", 1);
        return;
    }
    mg_up_peer_failed(ux->up, uc->peer);
    if (ux->tphase == MG_T_BODY)
        mg_ux_fail(ux, 504, "upstream body timed out", 1); /* mid-response: the sink aborts */
    else if (ux->tphase == MG_T_SEND)
        mg_ux_fail(ux, 504, "upstream timed out reading the request", 1);
    else
        mg_ux_fail(ux, 504, "upstream timed out", 1);
}

static void mg_ux_complete(mg_ux_t *ux, int reusable) {
    mg_ux_met(ux, -1);
    if (ux->uc) {
        if (ux->uc->io.tls)
            mg_uconn_keep_session(ux, ux->uc);
        if (reusable && ux->req_done && evbuffer_get_length(ux->out) == 0)
            mg_uconn_release(ux);
        else {
            mg_uconn_close(ux->uc);
            ux->uc = NULL;
        }
    }
    if (!ux->cancelled)
        ux->sink->on_done(ux->ud);
    mg_ux_free(ux);
}

/* One read; 1 = read again (the buffer was full), 0 = stop (level-triggered:
 * whatever is left, EOF included, is reported again). */
static int mg_uconn_read_once(mg_uconn_t *uc) {
    mg_ux_t *ux = uc->ux;
    ssize_t n;
    llhttp_errno_t err;

    if (ux == NULL) {
        /* pooled: a TLS record that carries no data (a TLS 1.3 session
         * ticket that came late) leaves it in the pool */
        if (uc->io.tls && !uc->peer_closed && mg_io_read(&uc->io, mg_worker.scratch, 1) < 0 &&
            errno == EAGAIN)
            return 0;
        mg_uconn_pool_drop(uc);
        return 0;
    }
    if (uc->connecting) {
        /* the TLS handshake waits for the upstream's bytes */
        if (mg_uconn_handshake(uc) > 0)
            mg_uconn_ready(uc);
        return 0;
    }
    n = mg_io_read(&uc->io, mg_worker.scratch, sizeof(mg_worker.scratch));
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        if (errno == EAGAIN)
            return 0;
        mg_ux_retry_or_fail(ux, 502, "upstream connection reset", 0);
        return 0;
    }
    if (n == 0) {
        if (ux->got_resp && llhttp_message_needs_eof(&ux->parser)) {
            /* a close-delimited body: EOF completes it (on_message_complete
             * pauses the parser, so HPE_PAUSED is success here) */
            ux->in_exec = 1;
            err = llhttp_finish(&ux->parser);
            ux->in_exec = 0;
            if ((err == HPE_OK || err == HPE_PAUSED) && ux->msg_done && !ux->cancelled) {
                mg_ux_complete(ux, 0);
                return 0;
            }
        }
        if (ux->cancelled) {
            mg_ux_free(ux);
            return 0;
        }
        mg_ux_retry_or_fail(ux, 502, "upstream closed the connection", 0);
        return 0;
    }
    ux->got_resp = 1;
    ux->in_exec = 1;
    err = llhttp_execute(&ux->parser, mg_worker.scratch, n);
    ux->in_exec = 0;
    if (ux->cancelled) {
        mg_ux_free(ux);
        return 0;
    }
    if (ux->upgraded) {
        /* the connection now belongs to the sink */
        const char *pos = llhttp_get_error_pos(&ux->parser);
        size_t extra = pos && pos >= mg_worker.scratch && pos < mg_worker.scratch + n
                           ? (size_t)(mg_worker.scratch + n - pos)
                           : 0;
        event_del(&uc->rev);
        event_del(&uc->wev);
        mg_tm_stop(&uc->tm);
        ux->uc = NULL;
        ux->sink->on_upgrade(ux->ud, &uc->io, ux->hv, ux->nh, extra ? pos : NULL, extra);
        mg_io_close(&uc->io); /* nothing if the sink took it */
        MG_MET(mg_met->n[uc->met].up_pool--);
        free(uc);
        mg_ux_met(ux, -1);
        mg_ux_free(ux);
        return 0;
    }
    if (ux->msg_done) {
        /* bytes past the response, or the upstream's FIN in the same edge,
         * mean the connection is not reusable */
        const char *pos = llhttp_get_error_pos(&ux->parser);
        int extra = err == HPE_PAUSED && pos && pos < mg_worker.scratch + n;
        mg_ux_complete(ux, !extra && !uc->peer_closed && llhttp_should_keep_alive(&ux->parser));
        return 0;
    }
    if (ux->sink_abort) {
        mg_ux_fail(ux, 502, "response refused", 0); /* the sink knows why */
        return 0;
    }
    if (err != HPE_OK) {
        const char *why = ux->bad_msg ? ux->bad_msg : "bad response from upstream";
        mg_warn("upstream %s: bad response from %s:%d: %s", ux->up->name, uc->peer->host,
                uc->peer->port, ux->bad_msg ? ux->bad_msg : llhttp_get_error_reason(&ux->parser));
        mg_up_peer_failed(ux->up, uc->peer);
        mg_ux_fail(ux, 502, why, 1);
        return 0;
    }
    mg_ux_timer(ux, 1);
    if (ux->sink->on_flush)
        ux->sink->on_flush(ux->ud);
    /* a full read, or bytes the transport still holds: read again */
    return ((size_t)n == sizeof(mg_worker.scratch) || mg_io_pending(&uc->io)) && ux->uc == uc &&
           !uc->rd_off;
}

static void mg_uconn_read_cb(evutil_socket_t fd, short what, void *arg) {
    mg_uconn_t *uc = arg;
    if (what & EV_CLOSED)
        uc->peer_closed = 1;
    (void)fd;
    while (mg_uconn_read_once(uc))
        ;
}

/* ---- response parsing ---- */

static int mg_ux_append(mg_ux_t *ux, const char *at, size_t len) {
    if (ux->hlen + len > 65536)
        return -1;
    if (ux->hlen + len > ux->hcap) {
        size_t cap = ux->hcap ? ux->hcap * 2 : 1024;
        char *nb;
        while (cap < ux->hlen + len)
            cap *= 2;
        nb = realloc(ux->hbuf, cap);
        if (nb == NULL)
            return -1;
        ux->hbuf = nb;
        ux->hcap = cap;
    }
    memcpy(ux->hbuf + ux->hlen, at, len);
    ux->hlen += len;
    return 0;
}

static int mg_ux_on_message_begin(llhttp_t *p) {
    mg_ux_t *ux = p->data;
    ux->nh = 0;
    ux->hlen = 0;
    ux->hstate = 0;
    return 0;
}

static int mg_ux_on_header_field(llhttp_t *p, const char *at, size_t len) {
    mg_ux_t *ux = p->data;
    if (ux->hstate != 1) {
        if (ux->nh == MG_UX_MAX_HDRS)
            return -1;
        ux->hoff[ux->nh][0] = ux->hlen;
        ux->hoff[ux->nh][1] = 0;
        ux->hoff[ux->nh][2] = ux->hlen;
        ux->hoff[ux->nh][3] = 0;
        ux->nh++;
        ux->hstate = 1;
    }
    ux->hoff[ux->nh - 1][1] += len;
    return mg_ux_append(ux, at, len);
}

static int mg_ux_on_header_value(llhttp_t *p, const char *at, size_t len) {
    mg_ux_t *ux = p->data;
    if (ux->hstate != 2) {
        ux->hoff[ux->nh - 1][2] = ux->hlen;
        ux->hstate = 2;
    }
    ux->hoff[ux->nh - 1][3] += len;
    return mg_ux_append(ux, at, len);
}

/* RFC 9112 6.1: chunked is the one transfer coding we implement. A body in
 * any other (or chunked twice) would reach the client still coded, under
 * headers that no longer say so: like nginx, a bad gateway. Several
 * Transfer-Encoding lines are one list (mg_te_add). */
static int mg_ux_te_ok(const mg_ux_t *ux) {
    mg_te_t te = {0, 0, 0};
    int i, lines = 0;
    for (i = 0; i < ux->nh; i++)
        if (MG_NAME_IS(ux->hv[i].name, ux->hv[i].nlen, "transfer-encoding")) {
            mg_te_add(&te, ux->hv[i].value, ux->hv[i].vlen);
            lines++;
        }
    return lines == 0 || mg_te_plain_chunked(&te);
}

static int mg_ux_on_headers_complete(llhttp_t *p) {
    mg_ux_t *ux = p->data;
    int i;
    if (p->status_code == 100 || p->status_code == 103)
        return 0; /* interim response: swallowed, the final one follows */
    if (p->status_code < 200 && (p->status_code != 101 || ux->sink->on_upgrade == NULL)) {
        /* a 101 nobody asked for, or an interim response we do not know:
         * the client would be left with a bare 1xx */
        ux->bad_msg =
            p->status_code == 101 ? "unexpected 101 from upstream" : "unexpected 1xx from upstream";
        return -1;
    }
    for (i = 0; i < ux->nh; i++) {
        ux->hv[i].name = ux->hbuf + ux->hoff[i][0];
        ux->hv[i].nlen = ux->hoff[i][1];
        ux->hv[i].value = ux->hbuf + ux->hoff[i][2];
        ux->hv[i].vlen = ux->hoff[i][3];
    }
    if (p->status_code != 101 && !mg_ux_te_ok(ux))
        return -1; /* before head_done: the client gets a 502 */
    ux->status = p->status_code;
    ux->head_done = 1;
    ux->uc->peer->fails = 0;
    if (p->status_code == 101 && ux->sink->on_upgrade) {
        ux->upgraded = 1;
        return 2; /* llhttp stops with HPE_PAUSED_UPGRADE */
    }
    ux->sink->on_head(ux->ud, p->status_code, p->http_minor, ux->hv, ux->nh,
                      (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1,
                      (p->flags & F_CHUNKED) != 0);
    if (ux->cancelled)
        return HPE_PAUSED;
    return ux->head_only ? 1 : 0;
}

static int mg_ux_on_body(llhttp_t *p, const char *at, size_t len) {
    mg_ux_t *ux = p->data;
    int rc;
    if (ux->cancelled)
        return 0;
    rc = ux->sink->on_body(ux->ud, at, len);
    if (rc < 0) {
        ux->sink_abort = 1;
        return -1;
    }
    if (rc)
        mg_ux_pause(ux, 1);
    return 0;
}

static int mg_ux_on_message_complete(llhttp_t *p) {
    mg_ux_t *ux = p->data;
    if (p->status_code == 100 || p->status_code == 103)
        return 0;
    ux->msg_done = 1;
    return HPE_PAUSED;
}

/* ---- peers as health.c, the access log and the admin API see them ---- */

const char *mg_up_peer_name(const mg_peer_t *p) { return p->hc.name; }

double mg_ux_ms(const mg_ux_t *ux) { return ((ux->t1 > 0 ? ux->t1 : mg_now()) - ux->t0) * 1000.0; }

const char *mg_ux_peer_name(const mg_ux_t *ux) {
    if (ux->uc && ux->uc->peer)
        return ux->uc->peer->hc.name;
    if (ux->pidx >= 0 && ux->pidx < ux->up->npeers && ux->tries > 0)
        return ux->up->peers[ux->pidx]->hc.name;
    return NULL;
}

void mg_up_peer_health(const mg_peer_t *p, mg_up_health_t *h) {
    h->checked = p->hc.on;
    h->active_down = p->hc.down;
    h->passive_down = !p->hc.down && p->down_until > mg_now();
    h->healthy = !h->active_down && !h->passive_down;
    h->fails = p->fails;
    h->last_status = p->hc.last_status;
    h->last_check = p->hc.last;
    h->checks_ok = p->hc.ok_total;
    h->checks_failed = p->hc.failed_total;
    h->ejections = p->hc.ejections;
}

mg_peer_hc_t *mg_up_peer_hc(mg_peer_t *p) { return &p->hc; }
mg_peer_t *mg_up_peer_next(mg_peer_t *p) {
    return p ? p->next : __atomic_load_n(&mg_peers, __ATOMIC_ACQUIRE);
}
const char *mg_up_peer_host(const mg_peer_t *p) { return p->host; }
int mg_up_peer_is_tls(const mg_peer_t *p) { return p->tls; }

int mg_up_peer_addr(const mg_peer_t *p, struct sockaddr_storage *ss, socklen_t *len) {
    if (!p->resolved)
        return 0;
    memcpy(ss, &p->addr, sizeof(*ss));
    *len = p->alen;
    return 1;
}

void mg_up_peer_mark(const char *upname, mg_peer_t *p, int down) {
    p->hc.down = down;
    p->hc.oks = 0;
    mg_up_peer_met(upname, p, down ? 2 : 1);
    if (down) {
        if (p->met)
            MG_MET(mg_met->n[p->met - 1].up_eject++);
        p->hc.ejections++;
        p->down_until = HUGE_VAL;
    } else {
        p->fails = 0;
        p->down_until = 0;
    }
}

int mg_up_hc_failed(mg_upstream_t *up, mg_peer_t *p) {
    if (up->hc_interval <= 0 || !p->hc.on)
        return 0;
    if (++p->fails >= up->max_fails && up->max_fails > 0 && !p->hc.down) {
        mg_warn("upstream %s: server %s failed %d times: marked down until it passes %d health "
                "checks",
                up->name, p->hc.name, p->fails, up->hc_rise);
        mg_up_peer_mark(up->name, p, 1);
    }
    return 1;
}

mg_peer_t *mg_up_hc_pick(mg_upstream_t *up, int *idx) {
    for (int i = 0; i < up->npeers; i++) {
        *idx = (int)(up->rr++ % (unsigned)up->npeers);
        if (!up->peers[*idx]->hc.down)
            return up->peers[*idx];
    }
    return NULL;
}
