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
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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

/* ---- loading a generation off the event loop ----
 * A worker loads a reload's generation in a helper thread, so its loop
 * goes on serving while the new Lua state is built (at 10 000 routes,
 * hundreds of ms). The state is the thread's alone until the thread
 * ends; then the loop thread owns it (a LuaJIT state is not bound to a
 * thread, only to one thread at a time). What a load touches besides its
 * own state is safe from another thread: the peer list (upstream.c,
 * locked), logging (one write per line), and the Lua API refuses what
 * needs the loop (moongate.timer) off the loop thread, as in the master.
 *
 * Two kinds of load, one at a time:
 * - early (EARLY, sent by the master as a reload starts): from the disk,
 *   recording what it reads and the modules under the generation's
 *   directories, as the master's own load does. If it loads, the thread
 *   also writes its snapshot (mg_load_snap_export) and the worker sends it
 *   to the master (EARLY_READY): the first worker's becomes the
 *   generation's snapshot, which the master sends to every worker with
 *   PREPARE. If it fails, the master hears why (EARLY_FAIL), loads from
 *   the disk itself and judges. When PREPARE comes and the early load read
 *   exactly the snapshot's files (mg_load_adopt; always so for the worker
 *   that made it), it is that generation, without a second load;
 * - from the snapshot (PREPARE): when there was no early load, it failed,
 *   or it read other bytes (a file changed between two processes' reads).
 * A PREPARE that comes while a load runs waits for it (and the early load
 * then sends nothing); an EARLY that comes while a load runs starts after
 * it; an ABORT drops the load of that generation (id 0: the early one). */
typedef struct {
    int busy; /* a thread runs (loop thread's view) */
    pthread_t th;
    int early;           /* the running load is an early one */
    unsigned id;         /* the generation it loads (a snapshot load), or the EARLY's number */
    int fd;              /* its snapshot memfd (owned), or -1 */
    int snap_out;        /* an early load's own snapshot (owned), or -1 */
    unsigned early_next; /* an EARLY that came while a load ran (its number), or 0 */
    int aborted;         /* ABORT came meanwhile */
    mg_gen_t *gen;       /* the thread's result, or NULL with err */
    char err[1024];
    mg_gen_t *early_gen; /* an early load's result, waiting for its PREPARE */
    unsigned next_id;    /* a PREPARE that came meanwhile (next_fd >= 0) */
    int next_fd;
    int efd; /* eventfd: the thread says it ended */
    struct event *ev;
    int sock; /* the control channel */
} mg_wload_t;
static mg_wload_t mg_wl = {.fd = -1, .snap_out = -1, .next_fd = -1, .efd = -1, .sock = -1};
static void mg_worker_load_done_cb(evutil_socket_t efd, short what, void *arg);

static void *mg_worker_load_main(void *arg) {
    uint64_t one = 1;
    (void)arg;
    mg_lua_off_loop = 1;
    if (mg_wl.early) {
        mg_wl.gen = mg_load_gen_early(mg_app_conf_path, mg_wl.err, sizeof(mg_wl.err));
        /* the snapshot the master may make the generation's (a few ms for
         * 10 000 routes: here, not on the loop); the state keeps every file
         * it read, which PREPARE's snapshot is compared with */
        if (mg_wl.gen)
            mg_wl.snap_out = mg_load_snap_write(mg_wl.gen->L, mg_wl.err, sizeof(mg_wl.err));
    } else
        mg_wl.gen = mg_load_gen(mg_app_conf_path, mg_wl.fd, mg_wl.id, mg_wl.err, sizeof(mg_wl.err));
    while (write(mg_wl.efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    return NULL;
}

/* Starts a load: early (fd -1, id the EARLY's number), or of generation
 * id from snapshot fd (taken). MG_ERR: no thread (fd closed). */
static int mg_worker_load_start(int early, unsigned id, int fd) {
    sigset_t all, old;
    int rc;
    if (mg_wl.efd < 0)
        mg_wl.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mg_wl.efd >= 0 && mg_wl.ev == NULL &&
        ((mg_wl.ev = event_new(mg_worker.base, mg_wl.efd, EV_READ | EV_PERSIST,
                               mg_worker_load_done_cb, NULL)) == NULL ||
         event_add(mg_wl.ev, NULL) != 0)) {
        if (mg_wl.ev)
            event_free(mg_wl.ev);
        mg_wl.ev = NULL;
    }
    if (mg_wl.ev == NULL) {
        if (fd >= 0)
            close(fd);
        return MG_ERR;
    }
    mg_wl.early = early;
    mg_wl.id = id;
    mg_wl.fd = fd;
    mg_wl.aborted = 0;
    mg_wl.snap_out = -1;
    mg_wl.gen = NULL;
    mg_wl.err[0] = '\0';
    /* the loop thread takes the signals (libevent's) */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&mg_wl.th, NULL, mg_worker_load_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        if (fd >= 0)
            close(fd);
        mg_wl.fd = -1;
        return MG_ERR;
    }
    mg_wl.busy = 1;
    return MG_OK;
}

static void mg_worker_early_drop(void) {
    if (mg_wl.early_gen)
        mg_gen_free(mg_wl.early_gen);
    mg_wl.early_gen = NULL;
}

/* g is generation id, loaded and checked here: pending, and READY */
static void mg_worker_ready(mg_gen_t *g) {
    /* pending first: its reference is not a request's (gen.c's count) */
    mg_gen_t *prev = mg_gen_pending;
    mg_gen_pending = g;
    mg_gen_retain(g);
    if (prev)
        mg_gen_release(prev);
    mg_app_ctl_send(mg_wl.sock, MG_CTL_READY, g->id, NULL, -1);
}

/* PREPARE: the early load's generation if it read the snapshot's files,
 * else a load of the snapshot; after the load that runs, if one does */
static void mg_worker_prepare(int sock, unsigned id, int fd) {
    char err[256];
    mg_wl.sock = sock;
    mg_wl.early_next = 0; /* the master is past the early loads */
    if (mg_wl.busy) {
        if (mg_wl.next_fd >= 0)
            close(mg_wl.next_fd);
        mg_wl.next_id = id;
        mg_wl.next_fd = fd;
        return;
    }
    if (mg_wl.early_gen) {
        mg_gen_t *g = mg_wl.early_gen;
        mg_wl.early_gen = NULL;
        if (mg_load_adopt(g, fd, id, err, sizeof(err)) == MG_OK) {
            close(fd);
            mg_debug("worker %d: generation %u: the early load read the same files", mg_worker.id,
                     id);
            mg_worker_ready(g);
            return;
        }
        mg_debug("worker %d: generation %u: early load not used (%s): loading the snapshot",
                 mg_worker.id, id, err);
        mg_gen_free(g);
    }
    if (mg_worker_load_start(0, id, fd) != MG_OK) {
        mg_error("worker %d: cannot start loading generation %u: %s", mg_worker.id, id,
                 strerror(errno));
        mg_app_ctl_send(sock, MG_CTL_REFUSE, id, "cannot start a loading thread", -1);
    }
}

/* EARLY number seq: a reload starts; this worker loads from the disk */
static void mg_worker_early(int sock, unsigned seq) {
    mg_wl.sock = sock;
    if (mg_wl.busy) { /* one load at a time: this one after it */
        mg_wl.early_next = seq;
        return;
    }
    mg_worker_early_drop();
    if (mg_worker_load_start(1, seq, -1) != MG_OK) /* the master loads it then */
        mg_app_ctl_send(sock, MG_CTL_EARLY_FAIL, seq, "cannot start a loading thread", -1);
}

/* The thread ended: an early load's generation waits for its PREPARE; a
 * snapshot's becomes the pending one (READY), or the master hears why
 * not (REFUSE); then the PREPARE that waited. */
static void mg_worker_load_done_cb(evutil_socket_t efd, short what, void *arg) {
    uint64_t n;
    mg_gen_t *g;
    (void)what, (void)arg;
    if (read(efd, &n, sizeof(n)) != (ssize_t)sizeof(n) || !mg_wl.busy)
        return;
    pthread_join(mg_wl.th, NULL);
    mg_wl.busy = 0;
    if (mg_wl.fd >= 0)
        close(mg_wl.fd);
    mg_wl.fd = -1;
    g = mg_wl.gen;
    mg_wl.gen = NULL;
    if (mg_wl.early) {
        int snap = mg_wl.snap_out;
        mg_wl.snap_out = -1;
        if (g == NULL) /* the master's own load will say why */
            mg_debug("worker %d: early load failed: %s", mg_worker.id, mg_wl.err);
        if (mg_wl.aborted) {
            mg_gen_free(g);
        } else {
            mg_wl.early_gen = g;
            /* no PREPARE yet: the master waits for a snapshot, or a refusal */
            if (mg_wl.next_fd < 0 && g && snap >= 0)
                mg_app_ctl_send(mg_wl.sock, MG_CTL_EARLY_READY, mg_wl.id, NULL, snap);
            else if (mg_wl.next_fd < 0)
                mg_app_ctl_send(mg_wl.sock, MG_CTL_EARLY_FAIL, mg_wl.id, mg_wl.err, -1);
        }
        if (snap >= 0)
            close(snap);
    } else if (mg_wl.aborted || mg_wl.next_fd >= 0) {
        mg_gen_free(g); /* dropped, or already superseded */
    } else if (g == NULL) {
        mg_error("worker %d: cannot load generation %u: %s", mg_worker.id, mg_wl.id, mg_wl.err);
        mg_app_ctl_send(mg_wl.sock, MG_CTL_REFUSE, mg_wl.id, mg_wl.err, -1);
    } else {
        mg_worker_ready(g);
    }
    if (mg_wl.next_fd >= 0) {
        int fd = mg_wl.next_fd;
        mg_wl.next_fd = -1;
        mg_worker_prepare(mg_wl.sock, mg_wl.next_id, fd);
    } else if (mg_wl.early_next) {
        unsigned seq = mg_wl.early_next;
        mg_wl.early_next = 0;
        mg_worker_early(mg_wl.sock, seq);
    }
}

/* ABORT of generation id (0: the early load) */
static void mg_worker_load_abort(unsigned id) {
    if (mg_wl.busy && (mg_wl.early || mg_wl.id == id))
        mg_wl.aborted = 1;
    mg_wl.early_next = 0;
    mg_worker_early_drop();
    if (mg_wl.next_fd >= 0 && mg_wl.next_id == id) {
        close(mg_wl.next_fd);
        mg_wl.next_fd = -1;
    }
}

/* The worker's end: a load still running is waited for (bounded by the
 * master's reload timeout, which kills a worker stuck loading). */
static void mg_worker_load_end(void) {
    if (mg_wl.busy) {
        pthread_join(mg_wl.th, NULL);
        mg_wl.busy = 0;
        mg_gen_free(mg_wl.gen);
        mg_wl.gen = NULL;
        if (mg_wl.snap_out >= 0)
            close(mg_wl.snap_out);
        mg_wl.snap_out = -1;
    }
    mg_worker_early_drop();
}

/* The Lua collections a reload leaves (load.c's mg_load_gc_step): a
 * slice of MG_GC_SLICE_MS, then the loop's events, again after
 * MG_GC_PAUSE_MS, until none is left. */
#define MG_GC_SLICE_MS 1.0
#define MG_GC_PAUSE_MS 1
static struct event *mg_worker_gc_ev;

static void mg_worker_gc_cb(evutil_socket_t fd, short what, void *arg) {
    struct timeval tv = {0, MG_GC_PAUSE_MS * 1000};
    (void)fd, (void)what, (void)arg;
    if (mg_load_gc_step(MG_GC_SLICE_MS))
        evtimer_add(mg_worker_gc_ev, &tv);
}

static void mg_worker_gc_kick(void) {
    struct timeval tv = {0, 0};
    if (mg_worker_gc_ev == NULL &&
        (mg_worker_gc_ev = evtimer_new(mg_worker.base, mg_worker_gc_cb, NULL)) == NULL) {
        while (mg_load_gc_step(1000.0)) /* no timer: all now */
            ;
        return;
    }
    if (!evtimer_pending(mg_worker_gc_ev, NULL))
        evtimer_add(mg_worker_gc_ev, &tv);
}

/* The master's messages (mg_ctl_msg_t). A worker serves only the
 * generation's snapshot (its early load when it read the same bytes), says
 * whether that loaded, and switches only when the master says every worker
 * is ready. */
static void mg_worker_signal_cb(evutil_socket_t sig, short what, void *arg);

static void mg_worker_ctl_cb(evutil_socket_t sock, short what, void *arg) {
    struct event *ev = arg;
    (void)what;
    for (;;) {
        mg_ctl_msg_t m;
        char err[1024];
        int fd, rc = mg_app_ctl_recv(sock, &m, &fd);
        mg_gen_t *g, *old;
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
            mg_worker_prepare(sock, m.id, fd);
            fd = -1; /* the load's now */
            break;
        case MG_CTL_EARLY: mg_worker_early(sock, m.id); break;
        case MG_CTL_COMMIT:
            g = mg_gen_pending;
            if (g == NULL || g->id != m.id) {
                snprintf(err, sizeof(err), "generation %u was not prepared", m.id);
                mg_app_ctl_send(sock, MG_CTL_REFUSE, m.id, err, -1);
                break;
            }
            mg_gen_pending = NULL;
            /* the old generation (its Lua state: a table of 10 000 routes
             * takes a while to free) goes after the master heard we serve */
            old = mg_gen_current;
            if (old)
                mg_gen_retain(old);
            mg_gen_activate(g);
            mg_gen_release(g);
            mg_up_health_start(g); /* the new generation's health checks */
            mg_debug("worker %d: generation %u active", mg_worker.id, g->id);
            /* after a reload: draining routes' tunnels end, their sockets get 1012 */
            mg_tunnel_drain(g);
            mg_ws_drain_route_sockets(g);
            mg_http_h2_drain(); /* HTTP/2 turned off on a listener: GOAWAY */
            mg_app_ctl_send(sock, MG_CTL_SERVING, m.id, NULL, -1);
            if (old)
                mg_gen_release(old);
            mg_load_settle(g);
            break;
        case MG_CTL_RELOADED: /* the answer to a POST /reload of ours */
            mg_admin_reload_answer(m.id, atoi(m.text) == 200 ? 200 : 422,
                                   strchr(m.text, ' ') ? strchr(m.text, ' ') + 1 : "{}");
            break;
        case MG_CTL_CERT: /* the ACME process stored a certificate: new handshakes get it */
            mg_acme_worker_update(m.text);
            break;
        case MG_CTL_ABORT:
            mg_worker_load_abort(m.id);
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
    mg_load_gc_defer = mg_worker_gc_kick;
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
    mg_worker_load_end();
    mg_access_log_flush();
    mg_info("worker %d exiting", id);
    exit(0);
}
