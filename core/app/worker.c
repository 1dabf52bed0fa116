/*
 * worker.c -- one worker process: its event loop, the accept path on the
 * listening sockets it inherited, the control channel with the master
 * (both ends of its messages; a reload is prepare, commit or abort), and
 * signals (TERM/INT: graceful stop, after which WebSockets get 1001 and
 * tunnels end; HUP is the master's and is ignored here).
 */
#include "app/app.h"
#include "loop/metrics.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <unistd.h>

static struct event *mg_worker_stop_timer;
static double mg_worker_stop_deadline;

/* Out of descriptors (or of kernel memory), accept() fails at once while
 * the listener stays readable: accepting again would spin and log at full
 * speed. As nginx does, stop accepting for MG_ACCEPT_PAUSE_MS (the
 * connections we have go on being served), then try again; report at most
 * once per MG_ACCEPT_REPORT seconds, with the count since the last report. */
#define MG_ACCEPT_PAUSE_MS 100
#define MG_ACCEPT_REPORT 1.0

static struct event *mg_accept_timer;
static uint64_t mg_accept_refused; /* failed accepts since the last report */
static double mg_accept_reported;  /* mg_now() of the last report */

static void mg_worker_accept_enable(int on) {
    for (int i = 0; i < mg_worker.nfd; i++)
        if (mg_worker.lev[i]) {
            if (on)
                event_add(mg_worker.lev[i], NULL);
            else
                event_del(mg_worker.lev[i]);
        }
}

static void mg_worker_accept_resume_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    if (!mg_worker.stopping)
        mg_worker_accept_enable(1);
}

static void mg_worker_accept_pause(int err) {
    struct timeval tv = {0, MG_ACCEPT_PAUSE_MS * 1000};
    double now = mg_now();
    mg_worker_accept_enable(0);
    if (mg_accept_timer == NULL)
        mg_accept_timer = evtimer_new(mg_worker.base, mg_worker_accept_resume_cb, NULL);
    if (mg_accept_timer == NULL || evtimer_add(mg_accept_timer, &tv) != 0) {
        mg_worker_accept_enable(1); /* no timer: better a busy loop than a deaf worker */
        return;
    }
    mg_accept_refused++;
    if (now - mg_accept_reported >= MG_ACCEPT_REPORT) {
        mg_warn("accept: %s: pausing accepts for %d ms (%llu failed accepts since the last "
                "report, %llu connections open)",
                strerror(err), MG_ACCEPT_PAUSE_MS, (unsigned long long)mg_accept_refused,
                (unsigned long long)mg_worker.active);
        mg_accept_refused = 0;
        mg_accept_reported = now;
    }
}

/* Does listener lidx expect a PROXY header first? As the current
 * generation says (a reload may turn it on or off), found by address as
 * mg_gen_server_of finds its server: a few compares per accept. */
static int mg_worker_proxy_protocol(int lidx) {
    const mg_addr_t *a = &mg_worker.laddr[lidx];
    mg_gen_t *g = mg_gen_current;
    for (int i = 0; i < g->nlisten; i++)
        if (g->listen[i].port == a->port && strcmp(g->listen[i].host, a->host) == 0)
            return g->listen[i].proxy_protocol;
    return a->proxy_protocol;
}

static void mg_worker_accept_cb(evutil_socket_t fd, short what, void *arg) {
    int lidx = (int)(intptr_t)arg;
    (void)what;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int c = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                mg_worker_accept_pause(errno);
            return;
        }
        if (mg_worker_proxy_protocol(lidx))
            mg_http_pp_accept(c, (struct sockaddr *)&ss, len, lidx); /* then mg_http_accept */
        else
            mg_http_accept(c, (struct sockaddr *)&ss, len, lidx);
    }
}

int mg_app_ctl_send(int sock, int op, unsigned id, const char *text, int fd) {
    mg_ctl_msg_t m;
    struct iovec iov;
    struct msghdr mh;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    ssize_t n;
    memset(&m, 0, sizeof(m));
    m.op = (char)op;
    m.id = id;
    if (text)
        snprintf(m.text, sizeof(m.text), "%s", text);
    iov.iov_base = &m;
    iov.iov_len = sizeof(m);
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (fd >= 0) {
        struct cmsghdr *c;
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = sizeof(u.buf);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(m) ? MG_OK : MG_ERR;
}

int mg_app_ctl_recv(int sock, mg_ctl_msg_t *m, int *fd) {
    struct iovec iov = {m, sizeof(*m)};
    struct msghdr mh;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct cmsghdr *c;
    ssize_t n;
    *fd = -1;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return MG_AGAIN;
    for (c = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    if (n <= 0)
        return MG_ERR;
    if (n != (ssize_t)sizeof(*m)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        m->op = 0; /* a short record: ignored */
    }
    m->text[sizeof(m->text) - 1] = '\0';
    return MG_OK;
}

/* The master's messages (mg_ctl_msg_t). A worker never reads the files
 * itself: it loads the master's snapshot, says whether that worked, and
 * switches only when the master says every worker is ready. */
static void mg_worker_signal_cb(evutil_socket_t sig, short what, void *arg);

static void mg_worker_ctl_cb(evutil_socket_t sock, short what, void *arg) {
    struct event *ev = arg;
    (void)what;
    for (;;) {
        mg_ctl_msg_t m;
        char err[1024];
        int fd, rc = mg_app_ctl_recv(sock, &m, &fd);
        mg_gen_t *g;
        if (rc == MG_AGAIN)
            return;
        if (rc == MG_ERR) {
            event_del(ev);
            /* only the master's end closes it (it exited or was killed): an
             * orphan gets no reloads and no replacement, and holds the
             * ports a new master needs; it drains as on SIGTERM and exits */
            if (!mg_worker.stopping) {
                mg_warn("worker %d: the master's control channel closed: the master is gone, "
                        "draining and exiting",
                        mg_worker.id);
                mg_worker_signal_cb(SIGTERM, 0, NULL);
            }
            return;
        }
        switch (m.op) {
        case MG_CTL_PREPARE:
            if (fd < 0) {
                mg_app_ctl_send(sock, MG_CTL_REFUSE, m.id, "no snapshot received", -1);
                break;
            }
            g = mg_load_gen(mg_app_conf_path, fd, m.id, err, sizeof(err));
            if (g == NULL) {
                mg_error("worker %d: cannot load generation %u: %s", mg_worker.id, m.id, err);
                mg_app_ctl_send(sock, MG_CTL_REFUSE, m.id, err, -1);
                break;
            }
            {
                /* pending first: its reference is not a request's (gen.c's count) */
                mg_gen_t *prev = mg_gen_pending;
                mg_gen_pending = g;
                mg_gen_retain(g);
                if (prev)
                    mg_gen_release(prev);
            }
            mg_app_ctl_send(sock, MG_CTL_READY, m.id, NULL, -1);
            break;
        case MG_CTL_COMMIT:
            g = mg_gen_pending;
            if (g == NULL || g->id != m.id) {
                snprintf(err, sizeof(err), "generation %u was not prepared", m.id);
                mg_app_ctl_send(sock, MG_CTL_REFUSE, m.id, err, -1);
                break;
            }
            mg_gen_pending = NULL;
            mg_gen_activate(g);
            mg_gen_release(g);
            mg_up_health_start(g); /* the new generation's health checks */
            mg_debug("worker %d: generation %u active", mg_worker.id, g->id);
            /* after a reload: draining routes' tunnels end, their sockets get 1012 */
            mg_tunnel_drain(g);
            mg_ws_drain_route_sockets(g);
            mg_app_ctl_send(sock, MG_CTL_SERVING, m.id, NULL, -1);
            break;
        case MG_CTL_RELOADED: /* the answer to a POST /reload of ours */
            mg_admin_reload_answer(m.id, atoi(m.text) == 200 ? 200 : 422,
                                   strchr(m.text, ' ') ? strchr(m.text, ' ') + 1 : "{}");
            break;
        case MG_CTL_CERT: /* the ACME process stored a certificate: new handshakes get it */
            mg_acme_worker_update(m.text);
            break;
        case MG_CTL_ABORT:
            if (mg_gen_pending && mg_gen_pending->id == m.id) {
                mg_gen_release(mg_gen_pending);
                mg_gen_pending = NULL;
            }
            break;
        default: break;
        }
        if (fd >= 0)
            close(fd);
    }
}

/* Stopping: close the listening sockets, so that the kernel sends new
 * connections elsewhere (or refuses them) instead of queueing them here.
 * The admin listener stays: its /readyz says 503 while the drain lasts. */
void mg_worker_stop_accept(void) {
    for (int i = 0; i < mg_worker.nfd; i++) {
        if (mg_worker.laddr[i].admin)
            continue;
        if (mg_worker.lev[i]) {
            event_free(mg_worker.lev[i]);
            mg_worker.lev[i] = NULL;
        }
        if (mg_worker.fds[i] >= 0) {
            close(mg_worker.fds[i]);
            mg_worker.fds[i] = -1;
        }
    }
}

static void mg_worker_stop_check(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    if ((mg_worker.active == 0 && mg_ws_count() == 0) || mg_now() >= mg_worker_stop_deadline) {
        if (mg_worker.active)
            mg_warn("drain timeout: closing %llu connections",
                    (unsigned long long)mg_worker.active);
        event_base_loopexit(mg_worker.base, NULL);
        return;
    }
    mg_http_close_idle();
}

static void mg_worker_signal_cb(evutil_socket_t sig, short what, void *arg) {
    (void)what, (void)arg;
    if (sig == SIGUSR1) { /* logrotate moved the access log: open it again */
        if (mg_access_log_reopen() > 0)
            mg_info("worker %d: access log reopened", mg_worker.id);
        return;
    }
    if (sig == SIGHUP) {
        /* reloads come from the master (mg_worker_ctl_cb), so that every
         * worker serves the same snapshot */
        mg_info("worker %d: SIGHUP ignored: send it to the master", mg_worker.id);
        return;
    }
    if (mg_worker.stopping)
        return;
    mg_worker.stopping = 1;
    mg_worker_stop_accept();
    mg_http_close_idle();
    mg_ws_close_all(1001, "server shutting down");
    mg_tunnel_close_all();
    mg_worker_stop_deadline = mg_now() + mg_gen_current->timeouts.drain / 1000.0;
    {
        struct timeval tv = {0, 50000};
        mg_worker_stop_timer =
            event_new(mg_worker.base, -1, EV_PERSIST, mg_worker_stop_check, NULL);
        event_add(mg_worker_stop_timer, &tv);
    }
}

static int mg_worker_ctl = -1;

/* GET /reloads: the master's last reloads, newest first (the dashboard) */
static void mg_worker_reloads(mg_req_t *r, const char *q, size_t ql) {
    struct evbuffer *b = evbuffer_new();
    unsigned n = mg_reload_log ? __atomic_load_n(&mg_reload_log->n, __ATOMIC_ACQUIRE) : 0;
    size_t len;
    (void)q, (void)ql;
    if (b == NULL) {
        mg_resp_json_error(r, 503, "out of memory");
        return;
    }
    evbuffer_add_printf(b, "{\"reloads\":%u,\"recent\":[", n);
    for (unsigned i = 0; i < n && i < MG_RELOAD_LOG; i++) {
        const mg_reload_entry_t *e = &mg_reload_log->e[(n - 1 - i) % MG_RELOAD_LOG];
        evbuffer_add_printf(b, "%s{\"at\":%.0f,\"status\":%d,\"answer\":%.*s}", i ? "," : "", e->at,
                            e->status, (int)strnlen(e->body, sizeof(e->body)), e->body);
    }
    evbuffer_add_printf(b, "]}\n");
    len = evbuffer_get_length(b);
    mg_admin_reply(r, 200, "application/json", (const char *)evbuffer_pullup(b, -1), len);
    evbuffer_free(b);
}

/* POST /reload: asks the master (gateway/admin.c waits for its answer) */
static int mg_worker_reload_req(unsigned seq) {
    return mg_worker_ctl < 0 ? MG_ERR
                             : mg_app_ctl_send(mg_worker_ctl, MG_CTL_RELOAD, seq, NULL, -1);
}

void mg_worker_run(int id, int *fds, int nfd, int ctl) {
    struct event *sig[3], *ctl_ev = NULL;
    int sigs[3] = {SIGHUP, SIGTERM, SIGINT}, i;

    mg_worker.id = id;
    mg_metrics_attach(id, (int)getpid()); /* this slot's counters; its gauges from 0 */
    mg_metrics_add_extra(mg_shdict_metrics);
    mg_metrics_add_extra(mg_tls_ctx_metrics);
    mg_worker.base = event_base_new();
    if (mg_worker.base == NULL) {
        mg_error("worker %d: cannot create event base", id);
        exit(1);
    }
    if (getrandom(mg_worker.rng, sizeof(mg_worker.rng), 0) != sizeof(mg_worker.rng) ||
        (mg_worker.rng[0] | mg_worker.rng[1]) == 0) {
        mg_worker.rng[0] = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL;
        mg_worker.rng[1] = (uint64_t)mg_now() | 1;
    }
    signal(SIGPIPE, SIG_IGN);
    mg_gateway_init(); /* the HTTP layer's hooks, before the first accept */
    mg_worker_ctl = ctl;
    mg_admin_reload_hook = mg_worker_reload_req;
    mg_admin_register("GET", "/reloads", 1, mg_worker_reloads);
    mg_acme_worker_init(ctl); /* the stored ACME certificates, before the first handshake */
    mg_worker.fds = fds;
    mg_worker.nfd = nfd;
    /* the startup generation's addresses, in the order of fds */
    mg_worker.laddr = malloc(sizeof(mg_addr_t) * (nfd ? nfd : 1));
    memcpy(mg_worker.laddr, mg_gen_current->listen, sizeof(mg_addr_t) * nfd);
    mg_worker.lev = calloc(nfd, sizeof(struct event *));
    for (i = 0; i < nfd; i++) {
        mg_worker.lev[i] = event_new(mg_worker.base, fds[i], EV_READ | EV_PERSIST,
                                     mg_worker_accept_cb, (void *)(intptr_t)i);
        event_add(mg_worker.lev[i], NULL);
    }
    for (i = 0; i < 3; i++) {
        sig[i] = evsignal_new(mg_worker.base, sigs[i], mg_worker_signal_cb, NULL);
        event_add(sig[i], NULL);
    }
    if (ctl >= 0) {
        ctl_ev = event_new(mg_worker.base, ctl, EV_READ | EV_PERSIST, mg_worker_ctl_cb,
                           event_self_cbarg());
        event_add(ctl_ev, NULL);
    }
    mg_access_log_init(mg_worker.base);
    /* SIGUSR1 (from the master): the access log file is opened again */
    event_add(evsignal_new(mg_worker.base, SIGUSR1, mg_worker_signal_cb, NULL), NULL);
    mg_up_health_start(mg_gen_current); /* this worker's active health checks */
    mg_info("worker %d started (generation %u)", id, mg_gen_current->id);
    event_base_dispatch(mg_worker.base);
    mg_access_log_flush();
    mg_info("worker %d exiting", id);
    exit(0);
}
