/*
 * main.c -- the command line and the master process. The master loads the
 * first generation (so workers start from a checked one), binds one
 * SO_REUSEPORT socket per worker slot and listen address, forks the
 * workers and then only handles signals: HUP starts a reload, which the
 * workers load (the first to succeed makes the generation's snapshot, the
 * master loads its own copy once every worker serves it; on any refusal
 * or doubt the master loads from the disk and judges: mg_reload below);
 * TERM/INT stop the workers gracefully; a worker that dies is restarted on
 * the same sockets, so connections queued for it are not lost.
 */
#include "app/app.h"
#include "loop/metrics.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <luajit.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

const char *mg_app_conf_path = "conf/moongate.lua";

/* Where a worker is in a reload (mg_reload). */
enum { MG_SLOT_IDLE, MG_SLOT_LOADING, MG_SLOT_READY, MG_SLOT_SWITCHING, MG_SLOT_SERVING };

typedef struct {
    pid_t pid;
    int *fds; /* this slot's listening sockets, one per listen address */
    double started;
    int restarts;
    int ctl; /* our end of the control channel, -1 if none */
    struct event *ctl_ev;
    int state; /* MG_SLOT_* */
} mg_slot_t;

static mg_slot_t *mg_slots;
static int mg_nslots, mg_nlisten;
static int mg_master_stopping;
static struct event_base *mg_master_base;

/* The ACME process (acme.c): one, forked after the workers and restarted
 * if it dies; it may block, as it serves no connection. */
static struct {
    pid_t pid;
    int sock; /* our end of its channel, -1 if none */
    struct event *ev;
    double started;
    int dict; /* the "moongate.acme" dict was made at start */
} mg_acme = {0, -1, NULL, 0, 0};

/* A reload in progress. It starts with every worker loading from the
 * disk (EARLY) while the master loads nothing: the first worker whose load
 * succeeds sends its snapshot (EARLY_READY), which becomes the
 * generation's (worker = 1): PREPARE with it to every worker (each adopts
 * its own early load if it read the same bytes, else loads the snapshot),
 * READY, COMMIT, SERVING; then the master loads its own copy from that
 * snapshot, off every worker's path, for the diff, the answer and the
 * workers it forks later. On any refusal or doubt before COMMIT (a
 * worker's load failed, a worker refused the snapshot, died or was
 * restarted, no snapshot in time) the master loads from the disk itself
 * and judges (worker = 0): mg_gen_pending is loaded and checked here and
 * its snapshot goes to every worker; a refusal of it is the reload's, with
 * file, line and reason, and the old generation keeps serving. */
#define MG_RELOAD_TIMEOUT 10 /* seconds a worker has to answer */
enum { MG_RELOAD_NONE, MG_RELOAD_EARLY, MG_RELOAD_PREPARE, MG_RELOAD_COMMIT };
static struct {
    int phase;    /* MG_RELOAD_* */
    int again;    /* a SIGHUP arrived meanwhile: reload once more after this one */
    int worker;   /* no load of the master's yet: a worker's snapshot (or none) */
    unsigned seq; /* the reload's number (EARLY's id) */
    unsigned id;  /* the generation prepared (PREPARE's id), 0 before */
    int snap_fd;  /* worker: the generation's snapshot, until the master loads it */
    struct event *timer;
} mg_reload = {.snap_fd = -1};

static void mg_master_reload_start(void);
static void mg_master_reload_step(void);
static void mg_master_reload_fallback(const char *why);
static void mg_master_reload_timeout_cb(evutil_socket_t fd, short what, void *arg);

/* POST /reload requests (MG_CTL_RELOAD) waiting for a reload's end: those
 * that came while one ran (next) wait for the one after it, which reads
 * the files they meant. */
#define MG_ADMIN_WAITERS 64
static struct {
    int slot;
    unsigned seq;
    int next;
} mg_admin_waiters[MG_ADMIN_WAITERS];
static int mg_admin_nwaiters;

/* The last reloads' results, in shared memory made before the workers
 * fork (GET /reloads, the dashboard): the master writes, workers read. */
mg_reload_log_t *mg_reload_log;

/* Answers the waiters of the reload that just ended (and logs it); the
 * others move up. body: a JSON object. */
static void mg_master_reload_answer(int status, const char *body) {
    char text[sizeof(((mg_ctl_msg_t *)0)->text)];
    int k = 0;
    snprintf(text, sizeof(text), "%d %s", status, body);
    for (int i = 0; i < mg_admin_nwaiters; i++) {
        if (mg_admin_waiters[i].next) {
            mg_admin_waiters[i].next = 0;
            mg_admin_waiters[k++] = mg_admin_waiters[i];
            continue;
        }
        mg_slot_t *s = &mg_slots[mg_admin_waiters[i].slot];
        if (s->pid && s->ctl >= 0)
            mg_app_ctl_send(s->ctl, MG_CTL_RELOADED, mg_admin_waiters[i].seq, text, -1);
    }
    mg_admin_nwaiters = k;
    if (mg_reload_log) {
        mg_reload_entry_t *e = &mg_reload_log->e[mg_reload_log->n % MG_RELOAD_LOG];
        e->at = (double)time(NULL);
        e->status = status;
        snprintf(e->body, sizeof(e->body), "%s", body);
        __atomic_store_n(&mg_reload_log->n, mg_reload_log->n + 1, __ATOMIC_RELEASE);
    }
}

/* A refusal's answer: {"result":"refused","generation":N,"error":why} */
static void mg_master_reload_refused(const char *why) {
    char esc[400], body[460];
    mg_json_escape(esc, sizeof(esc), why);
    snprintf(body, sizeof(body), "{\"result\":\"refused\",\"generation\":%u,\"error\":\"%s\"}",
             mg_gen_current->id, esc);
    mg_master_reload_answer(422, body);
}

/* Appends ,"s" to a JSON list in out (len used, cap) if it fits; else
 * marks the list cut. */
static size_t mg_master_json_item(char *out, size_t len, size_t cap, const char *s, int *first,
                                  int *cut) {
    char esc[200];
    size_t n = mg_json_escape(esc, sizeof(esc), s);
    if (*cut || len + n + 80 >= cap) { /* room for the closing parts */
        *cut = 1;
        return len;
    }
    len += (size_t)snprintf(out + len, cap - len, "%s\"%s\"", *first ? "" : ",", esc);
    *first = 0;
    return len;
}

static int mg_master_desc_has(const mg_gen_t *g, const char *line) {
    return mg_gen_desc_has(g, line); /* sorted at load: not a scan per line */
}

/* The listening addresses as opened at start: a reload cannot add one
 * (the sockets are the master's, made before the workers fork), so it
 * says which of the new generation's are not served, and which TLS
 * listeners lose their certificates (their connections are closed). */
static mg_addr_t *mg_master_laddr;

static int mg_master_addr_in(const mg_addr_t *a, const mg_addr_t *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i].port == a->port && v[i].tls == a->tls && strcmp(v[i].host, a->host) == 0)
            return 1;
    return 0;
}

/* What a reload cannot change: the listeners and the number of workers
 * are the master's, made at start. Writes one "; "-separated sentence per
 * change into out (empty: none) and returns how many there are; the
 * reload logs them, and POST /reload can answer them. */
int mg_app_restart_notes(const mg_gen_t *g, char *out, size_t outlen) {
    size_t len = 0;
    int n = 0;
    char one[256];
    if (outlen)
        out[0] = '\0';
    for (int i = 0; mg_master_laddr && i <= g->nlisten + mg_nlisten; i++) {
        one[0] = '\0';
        if (i < g->nlisten && !mg_master_addr_in(&g->listen[i], mg_master_laddr, mg_nlisten))
            snprintf(one, sizeof(one),
                     "%s:%d%s is not listened on: adding a listener needs a restart",
                     g->listen[i].host, g->listen[i].port, g->listen[i].tls ? " (TLS)" : "");
        else if (i >= g->nlisten && i < g->nlisten + mg_nlisten &&
                 !mg_master_laddr[i - g->nlisten].tls &&
                 !mg_master_addr_in(&mg_master_laddr[i - g->nlisten], g->listen, g->nlisten))
            snprintf(one, sizeof(one),
                     "%s:%d is still listened on: removing a listener needs a restart",
                     mg_master_laddr[i - g->nlisten].host, mg_master_laddr[i - g->nlisten].port);
        else if (i == g->nlisten + mg_nlisten && g->workers > 0 && g->workers != mg_nslots)
            snprintf(one, sizeof(one), "workers = %d needs a restart (%d workers keep serving)",
                     g->workers, mg_nslots);
        if (one[0] == '\0')
            continue;
        if (len < outlen)
            len += (size_t)snprintf(out + len, outlen - len, "%s%s", n ? "; " : "", one);
        n++;
    }
    return n;
}

/* The body of a successful reload's answer: the generation, the routes
 * added and removed, and what only a restart changes. */
static void mg_master_reload_ok(const mg_gen_t *old, const mg_gen_t *g) {
    char body[460];
    int first = 1, cut = 0;
    size_t n = (size_t)snprintf(body, sizeof(body),
                                "{\"result\":\"ok\",\"generation\":%u,\"added\":[", g->id);
    for (int i = 0; i < g->ndesc; i++)
        if (!mg_master_desc_has(old, g->desc[i]))
            n = mg_master_json_item(body, n, sizeof(body), g->desc[i], &first, &cut);
    n += (size_t)snprintf(body + n, sizeof(body) - n, "],\"removed\":[");
    first = 1;
    for (int i = 0; i < old->ndesc; i++)
        if (!mg_master_desc_has(g, old->desc[i]))
            n = mg_master_json_item(body, n, sizeof(body), old->desc[i], &first, &cut);
    n += (size_t)snprintf(body + n, sizeof(body) - n, "],\"restart_needed\":[");
    first = 1;
    {
        /* what only a restart changes, as the reload's log says it */
        char notes[400], *p = notes, *sep;
        if (mg_app_restart_notes(g, notes, sizeof(notes)) > 0)
            for (;;) {
                sep = strstr(p, "; ");
                if (sep)
                    *sep = '\0';
                n = mg_master_json_item(body, n, sizeof(body), p, &first, &cut);
                if (sep == NULL)
                    break;
                p = sep + 2;
            }
    }
    snprintf(body + n, sizeof(body) - n, "]%s}", cut ? ",\"truncated\":true" : "");
    mg_master_reload_answer(200, body);
}

static void mg_master_listen_diff(const mg_gen_t *g) {
    char notes[1024];
    if (mg_app_restart_notes(g, notes, sizeof(notes)) > 0)
        mg_warn("reload: %s (listeners and workers are made at start)", notes);
    for (int i = 0; mg_master_laddr && i < mg_nlisten; i++)
        if (mg_master_laddr[i].tls &&
            !mg_master_addr_in(&mg_master_laddr[i], g->listen, g->nlisten))
            mg_warn("reload: TLS listener %s:%d has no certificates in generation %u: its new "
                    "connections are closed",
                    mg_master_laddr[i].host, mg_master_laddr[i].port, g->id);
}

/* The session-ticket keys rotate every tls.ticket_rotate seconds of the
 * current generation (tls_ctx.c keeps the two previous keys). */
static struct event *mg_master_tkeys_timer;
/* the master's signal events (SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT,
 * SIGUSR1): a forked child frees them before the base (mg_master_base_drop) */
static struct event *mg_master_sigs[6];

static void mg_master_tkeys_cb(evutil_socket_t fd, short what, void *arg);

static void mg_master_tkeys_arm(void) {
    struct timeval tv = {
        mg_gen_current->tls_ticket_rotate > 0 ? mg_gen_current->tls_ticket_rotate : 3600, 0};
    if (mg_master_tkeys_timer == NULL)
        mg_master_tkeys_timer = evtimer_new(mg_master_base, mg_master_tkeys_cb, NULL);
    if (mg_master_tkeys_timer)
        evtimer_add(mg_master_tkeys_timer, &tv);
}

static void mg_master_tkeys_cb(evutil_socket_t fd, short what, void *arg) {
    int ntls = 0;
    (void)fd, (void)what, (void)arg;
    mg_tls_tkeys_rotate();
    for (int k = 0; k < mg_gen_current->nlisten; k++)
        ntls += mg_gen_current->listen[k].tls;
    if (ntls)
        mg_info("tls: session-ticket keys rotated (next in %d s)",
                mg_gen_current->tls_ticket_rotate);
    mg_master_tkeys_arm();
}

static void mg_app_usage(FILE *f) {
    fprintf(f,
            "usage: moongate [-c FILE] [-t] [-T] [-v] [-p FILE] [-h | --help]\n"
            "  -c FILE  configuration file (default: $MOONGATE_CONF, else conf/moongate.lua,\n"
            "           else the installed one, <prefix>/etc/moongate/conf/moongate.lua)\n"
            "  -t       check the configuration, scripts and routes, then exit\n"
            "  -T       check, then print the effective configuration (where each\n"
            "           value came from) and the routes as JSON, then exit\n"
            "  -v       print versions and exit\n"
            "  -p FILE  write the master's pid to FILE (removed at exit)\n"
            "  -h, --help  print this and exit\n"
            "signals (to the master): HUP reload, TERM/INT graceful stop (drain), QUIT stop\n"
            "environment (each replaces the conf's value; docs/configuration.md):\n"
            "  MOONGATE_CONF                  the configuration file when -c is not given\n"
            "  MOONGATE_LIB                   moongate's Lua tree (default: <exe dir>/lib, else\n"
            "                                 <exe dir>/../share/moongate/lib)\n"
            "  MOONGATE_LISTEN                listen addresses, comma-separated (0.0.0.0:8080)\n"
            "  MOONGATE_WORKERS               number of workers, or auto\n"
            "  MOONGATE_MAX_OPEN_FILES        soft descriptor limit set at start\n"
            "  MOONGATE_DEMO                  0|1: the demo Runtime and the demo's tokens\n"
            "  MOONGATE_UPSTREAM_<NAME>       an upstream's servers (http://runtime:9001,...)\n"
            "  MOONGATE_SERVER_<NAME>_LISTEN  a servers entry's listen addresses\n"
            "  MOONGATE_TLS_LISTEN            HTTPS listen addresses (with the two below)\n"
            "  MOONGATE_TLS_CERT              its certificate (PEM, chain after it)\n"
            "  MOONGATE_TLS_KEY               its private key (PEM)\n"
            "  MOONGATE_ADMIN_LISTEN          the admin listener (127.0.0.1:9901)\n"
            "  MOONGATE_ADMIN_TOKEN           the admin API's bearer token\n"
            "  MOONGATE_JIT_LOG               a file for LuaJIT's trace events (debugging)\n"
            "  MOONGATE_REDIS_URL             the conf's redis.url (redis://user:pass@h:6379/0)\n"
            "any other MOONGATE_* variable is a warning at start\n");
}

/* The conf when -c is not given: $MOONGATE_CONF, conf/moongate.lua when
 * it is there, else the one `make install` put beside the binary
 * (<prefix>/bin/moongate -> <prefix>/etc/moongate/conf/moongate.lua). */
static const char *mg_app_default_conf(void) {
    static char path[PATH_MAX], real[PATH_MAX];
    const char *env = getenv("MOONGATE_CONF");
    char *slash;
    ssize_t n;
    if (env && *env)
        return env;
    if (access(mg_app_conf_path, F_OK) == 0)
        return mg_app_conf_path;
    n = readlink("/proc/self/exe", path, sizeof(path) - 64);
    if (n <= 0)
        return mg_app_conf_path;
    path[n] = '\0';
    slash = strrchr(path, '/');
    if (slash == NULL)
        return mg_app_conf_path;
    strcpy(slash, "/../etc/moongate/conf/moongate.lua");
    if (access(path, F_OK) != 0)
        return mg_app_conf_path;
    return realpath(path, real) ? real : path;
}

static void mg_app_versions(void) {
    printf("moongate %s\n", MG_VERSION);
    printf("LuaJIT %s\n", LUAJIT_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("wslay %s\n", WSLAY_VERSION);
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
}

/* SO_REUSEPORT would let a second moongate share the port silently: a
 * plain bind first tells whether someone already listens there. */
static int mg_master_listen_free(mg_addr_t *a) {
    struct addrinfo hints, *res = NULL;
    char port[16];
    int fd, one = 1, ok = 1;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", a->port);
    if (getaddrinfo(a->host, port, &hints, &res) != 0 || res == NULL)
        return 1; /* mg_master_listen_one reports it */
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 && errno == EADDRINUSE)
            ok = 0;
        close(fd);
    }
    freeaddrinfo(res);
    if (!ok)
        mg_error("listen %s:%d: address already in use", a->host, a->port);
    return ok;
}

static int mg_master_listen_one(mg_addr_t *a) {
    struct addrinfo hints, *res = NULL;
    char port[16];
    int fd, one = 1, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", a->port);
    rc = getaddrinfo(a->host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        mg_error("listen %s:%d: %s", a->host, a->port, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 4096) < 0)
        goto fail;
    freeaddrinfo(res);
    return fd;
fail:
    mg_error("listen %s:%d: %s", a->host, a->port, strerror(errno));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return -1;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit (or to max_open_files),
 * once at start: the workers inherit it. A hard limit of "unlimited" is
 * capped at fs.nr_open, the most setrlimit accepts. */
static void mg_master_open_files_limit(mg_gen_t *g) {
    struct rlimit rl;
    rlim_t want;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        mg_warn("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    want = rl.rlim_max;
    if (want == RLIM_INFINITY) {
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        unsigned long long n = 1048576;
        if (f) {
            if (fscanf(f, "%llu", &n) != 1)
                n = 1048576;
            fclose(f);
        }
        want = (rlim_t)n;
    }
    if (g->max_open_files > 0) {
        if ((rlim_t)g->max_open_files > want)
            mg_warn("max_open_files = %lld is above the hard limit %llu: using the hard limit",
                    g->max_open_files, (unsigned long long)want);
        else
            want = (rlim_t)g->max_open_files;
    }
    if (want != rl.rlim_cur) {
        struct rlimit nl = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nl) != 0)
            mg_warn("setrlimit(RLIMIT_NOFILE, %llu): %s", (unsigned long long)want,
                    strerror(errno));
        else
            rl.rlim_cur = want;
    }
    if (rl.rlim_max == RLIM_INFINITY)
        mg_info("max open files: %llu per process (hard limit unlimited)",
                (unsigned long long)rl.rlim_cur);
    else
        mg_info("max open files: %llu per process (hard limit %llu)",
                (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
}

static void mg_master_ctl_cb(evutil_socket_t sock, short what, void *arg);

static void mg_master_slot_close_ctl(mg_slot_t *s) {
    if (s->ctl_ev)
        event_free(s->ctl_ev);
    if (s->ctl >= 0)
        close(s->ctl);
    s->ctl_ev = NULL;
    s->ctl = -1;
}

/* In a child just forked: the master's base is freed without touching the
 * master's epoll set. event_reinit first gives the base an epoll set of its
 * own (while every descriptor it watches is still open: re-adding a closed
 * one fails with EBADF), then the signal events go, so that libevent's one
 * signal base is free for the child's own base, then the base. */
static void mg_master_base_drop(void) {
    event_reinit(mg_master_base);
    for (int i = 0; i < 6; i++)
        if (mg_master_sigs[i]) {
            event_free(mg_master_sigs[i]);
            mg_master_sigs[i] = NULL;
        }
    event_base_free(mg_master_base);
    mg_master_base = NULL;
}

static void mg_master_spawn(int slot) {
    mg_slot_t *s = &mg_slots[slot];
    int sv[2];
    pid_t pid;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        mg_error("worker %d: socketpair: %s", slot, strerror(errno));
        sv[0] = sv[1] = -1;
    }
    pid = fork();
    if (pid < 0) {
        mg_error("fork: %s", strerror(errno));
        if (sv[0] >= 0) {
            close(sv[0]);
            close(sv[1]);
        }
        return;
    }
    if (pid == 0) {
        /* child: keep only this slot's sockets and its end of the channel;
         * it inherits mg_gen_current and, during a reload, mg_gen_pending */
        mg_master_base_drop();
        for (int i = 0; i < mg_nslots; i++) {
            if (i != slot)
                for (int k = 0; k < mg_nlisten; k++)
                    close(mg_slots[i].fds[k]);
            if (mg_slots[i].ctl >= 0)
                close(mg_slots[i].ctl);
        }
        if (sv[0] >= 0)
            close(sv[0]);
        if (mg_acme.sock >= 0)
            close(mg_acme.sock); /* so that the ACME process sees the master go */
        mg_worker_run(slot, s->fds, mg_nlisten, sv[1]);
        _exit(0);
    }
    s->pid = pid;
    s->started = mg_now();
    mg_master_slot_close_ctl(s);
    if (sv[0] >= 0) {
        close(sv[1]);
        s->ctl = sv[0];
        s->ctl_ev = event_new(mg_master_base, sv[0], EV_READ | EV_PERSIST, mg_master_ctl_cb,
                              (void *)(intptr_t)slot);
        event_add(s->ctl_ev, NULL);
    }
    s->state = MG_SLOT_IDLE;
    if (mg_reload.phase == MG_RELOAD_NONE || s->ctl < 0)
        return;
    if (!mg_reload.worker) {
        /* forked from the master, it holds the reload's generation already */
        if (mg_reload.phase == MG_RELOAD_PREPARE)
            s->state = MG_SLOT_READY;
        else if (mg_reload.phase == MG_RELOAD_COMMIT)
            s->state = mg_app_ctl_send(s->ctl, MG_CTL_COMMIT, mg_reload.id, NULL, -1) == MG_OK
                           ? MG_SLOT_SWITCHING
                           : MG_SLOT_IDLE;
    } else if (mg_reload.phase == MG_RELOAD_COMMIT) {
        /* forked with the old generation while the others switch to the
         * workers' snapshot: it loads it too, and switches (READY -> COMMIT) */
        if (mg_app_ctl_send(s->ctl, MG_CTL_PREPARE, mg_reload.id, NULL, mg_reload.snap_fd) == MG_OK)
            s->state = MG_SLOT_LOADING;
    } else {
        char why[128];
        snprintf(why, sizeof(why), "worker %d (pid %d) restarted while the reload ran", slot,
                 (int)pid);
        mg_master_reload_fallback(why);
    }
}

/* ---- the ACME process ---- */

/* A certificate was stored: every worker loads it for new handshakes. */
static void mg_master_acme_cb(evutil_socket_t sock, short what, void *arg) {
    (void)what, (void)arg;
    for (;;) {
        mg_ctl_msg_t m;
        int fd, n = 0, rc = mg_app_ctl_recv(sock, &m, &fd);
        if (fd >= 0)
            close(fd);
        if (rc == MG_AGAIN)
            return;
        if (rc == MG_ERR) { /* it is gone: SIGCHLD follows */
            event_del(mg_acme.ev);
            return;
        }
        if (m.op != MG_CTL_CERT)
            continue;
        for (int i = 0; i < mg_nslots; i++)
            if (mg_slots[i].pid && mg_slots[i].ctl >= 0)
                n += mg_app_ctl_send(mg_slots[i].ctl, MG_CTL_CERT, 0, m.text, -1) == MG_OK;
        if (strncmp(m.text, "alpn:", 5) == 0)
            mg_debug("acme: tls-alpn-01 challenge for %s began or ended: %d workers told",
                     m.text + 5, n);
        else
            mg_info("acme: new certificate for %s: %d workers load it", m.text, n);
    }
}

static void mg_master_acme_spawn(void) {
    int sv[2];
    pid_t pid;
    if (mg_gen_current->acme == NULL || mg_master_stopping || mg_acme.pid)
        return;
    if (!mg_acme.dict) {
        mg_error("acme: the section came with a reload: restart moongate to start the ACME "
                 "process (its shared memory is made at start)");
        return;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        mg_error("acme: socketpair: %s", strerror(errno));
        return;
    }
    pid = fork();
    if (pid < 0) {
        mg_error("acme: fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (pid == 0) {
        /* child: none of the listeners nor the workers' channels (the
         * base first moves to an epoll set of its own, so that freeing it
         * touches nothing of the master's) */
        mg_master_base_drop();
        for (int i = 0; i < mg_nslots; i++) {
            for (int k = 0; k < mg_nlisten; k++)
                if (mg_slots[i].fds[k] >= 0)
                    close(mg_slots[i].fds[k]);
            if (mg_slots[i].ctl >= 0)
                close(mg_slots[i].ctl);
        }
        close(sv[0]);
        mg_acme_run(sv[1]);
    }
    close(sv[1]);
    if (mg_acme.ev)
        event_free(mg_acme.ev);
    if (mg_acme.sock >= 0)
        close(mg_acme.sock);
    mg_acme.pid = pid;
    mg_acme.sock = sv[0];
    mg_acme.started = mg_now();
    mg_acme.ev = event_new(mg_master_base, sv[0], EV_READ | EV_PERSIST, mg_master_acme_cb, NULL);
    event_add(mg_acme.ev, NULL);
}

static void mg_master_acme_respawn_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    mg_master_acme_spawn();
}

/* SIGCHLD for the ACME process: 1 if pid was it. */
static int mg_master_acme_reaped(pid_t pid, int status) {
    struct timeval tv = {1, 0};
    if (pid != mg_acme.pid || pid == 0)
        return 0;
    mg_acme.pid = 0;
    if (mg_master_stopping)
        return 1;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM)
        tv.tv_sec = 0; /* we stopped it: a reload changed its section */
    else if (WIFSIGNALED(status))
        mg_error("acme: process %d killed by signal %d, restarting", (int)pid, WTERMSIG(status));
    else
        mg_error("acme: process %d exited with %d, restarting", (int)pid, WEXITSTATUS(status));
    if (mg_now() - mg_acme.started < 10.0 && tv.tv_sec)
        tv.tv_sec = 10; /* it dies at once: not in a loop */
    event_base_once(mg_master_base, -1, EV_TIMEOUT, mg_master_acme_respawn_cb, NULL, &tv);
    return 1;
}

/* After a reload: a changed (or new, or removed) acme section restarts the
 * ACME process on the new generation. */
static void mg_master_acme_reload(const char *old_src) {
    mg_acme_conf_t *c = mg_gen_current->acme;
    if (old_src == NULL ? c == NULL : c != NULL && strcmp(old_src, c->src) == 0)
        return;
    if (mg_acme.pid)
        kill(mg_acme.pid, SIGTERM); /* SIGCHLD starts the new one */
    else
        mg_master_acme_spawn();
}

/* ---- reload: one snapshot, every worker or none ---- */

static void mg_master_reload_done(void) {
    mg_reload.phase = MG_RELOAD_NONE;
    mg_reload.worker = 0;
    mg_reload.id = 0;
    if (mg_reload.snap_fd >= 0)
        close(mg_reload.snap_fd);
    mg_reload.snap_fd = -1;
    if (mg_reload.timer)
        evtimer_del(mg_reload.timer);
    for (int i = 0; i < mg_nslots; i++)
        mg_slots[i].state = MG_SLOT_IDLE;
    if (mg_reload.again && !mg_master_stopping) {
        mg_reload.again = 0;
        mg_master_reload_start();
    }
}

/* op (EARLY, or ABORT) with id to every worker; the number it reached */
static int mg_master_tell_all(int op, unsigned id) {
    int n = 0;
    for (int i = 0; i < mg_nslots; i++)
        if (mg_slots[i].pid && mg_slots[i].ctl >= 0)
            n += mg_app_ctl_send(mg_slots[i].ctl, op, id, NULL, -1) == MG_OK;
    return n;
}

static void mg_master_reload_abort(const char *why) {
    mg_gen_t *g = mg_gen_pending;
    mg_master_tell_all(MG_CTL_ABORT, mg_reload.id);
    mg_error("reload refused, generation %u keeps serving: %s", mg_gen_current->id, why);
    mg_metrics_reload(MG_MET_RELOAD_FAILED);
    mg_gen_pending = NULL;
    if (g)
        mg_gen_release(g);
    mg_master_reload_refused(why);
    mg_master_reload_done();
}

static int mg_master_reload_count(int state) {
    int n = 0;
    for (int i = 0; i < mg_nslots; i++)
        n += mg_slots[i].pid != 0 && mg_slots[i].state == state;
    return n;
}

static void mg_master_reload_arm(void) {
    struct timeval tv = {MG_RELOAD_TIMEOUT, 0};
    if (mg_reload.timer == NULL)
        mg_reload.timer = evtimer_new(mg_master_base, mg_master_reload_timeout_cb, NULL);
    if (mg_reload.timer)
        evtimer_add(mg_reload.timer, &tv);
}

/* PREPARE of generation id with snapshot fd (borrowed) to every worker;
 * how many took it */
static int mg_master_prepare_all(unsigned id, int fd) {
    int n = 0;
    mg_reload.id = id;
    mg_reload.phase = MG_RELOAD_PREPARE;
    for (int i = 0; i < mg_nslots; i++) {
        mg_slot_t *s = &mg_slots[i];
        s->state = MG_SLOT_IDLE;
        if (s->pid == 0)
            continue;
        if (s->ctl >= 0 && mg_app_ctl_send(s->ctl, MG_CTL_PREPARE, id, NULL, fd) == MG_OK) {
            s->state = MG_SLOT_LOADING;
            n++;
        }
    }
    mg_master_reload_arm();
    return n;
}

/* The path of a reload the master judges: it loads from the disk (why:
 * what sent the reload here, logged; NULL: no worker to load early). */
static void mg_master_reload_master(const char *why) {
    char err[1024];
    mg_gen_t *g;
    int fd, n;
    mg_reload.worker = 0;
    if (mg_reload.snap_fd >= 0)
        close(mg_reload.snap_fd);
    mg_reload.snap_fd = -1;
    if (why)
        mg_info("reload: %s: the master loads %s itself", why, mg_app_conf_path);
    g = mg_load_gen(mg_app_conf_path, -1, 0, err, sizeof(err));
    fd = g ? mg_load_snap_export(g->L, err, sizeof(err)) : -1;
    if (fd < 0) {
        mg_master_tell_all(MG_CTL_ABORT, 0); /* the workers' early loads */
        mg_error("reload refused, generation %u keeps serving: %s", mg_gen_current->id, err);
        mg_metrics_reload(MG_MET_RELOAD_FAILED);
        mg_gen_free(g);
        mg_master_reload_refused(err);
        mg_master_reload_done();
        return;
    }
    mg_gen_retain(g);
    mg_gen_pending = g;
    n = mg_master_prepare_all(g->id, fd);
    close(fd);
    mg_info("reload: generation %u checked, %d workers loading it", g->id, n);
    mg_master_listen_diff(g);
    mg_master_reload_step();
}

/* A doubt before COMMIT: the generation a worker's snapshot made (if
 * prepared) is dropped everywhere, and the master loads from the disk. */
static void mg_master_reload_fallback(const char *why) {
    if (!mg_reload.worker || mg_reload.phase == MG_RELOAD_NONE ||
        mg_reload.phase == MG_RELOAD_COMMIT)
        return;
    if (mg_reload.phase == MG_RELOAD_PREPARE)
        mg_master_tell_all(MG_CTL_ABORT, mg_reload.id);
    mg_master_reload_master(why);
}

/* The first early load that succeeded, in worker slot: its snapshot (fd,
 * taken) is generation N's, prepared in every worker. */
static void mg_master_reload_snap(int slot, int fd) {
    unsigned id = mg_load_id_reserve();
    int n;
    mg_reload.snap_fd = fd;
    n = mg_master_prepare_all(id, fd);
    mg_info("reload: worker %d (pid %d) loaded it: its snapshot makes generation %u, sent to %d "
            "workers",
            slot, (int)mg_slots[slot].pid, id, n);
    mg_master_reload_step();
}

/* Every worker serves the workers' snapshot: the master's own copy of it
 * (the diff, the answer, the workers forked later). NULL: it failed. */
static mg_gen_t *mg_master_reload_own(void) {
    char err[1024];
    mg_gen_t *g =
        mg_load_gen_master(mg_app_conf_path, mg_reload.snap_fd, mg_reload.id, err, sizeof(err));
    if (g == NULL) {
        /* the workers loaded these bytes: only memory fails here */
        mg_error("reload: the master cannot load generation %u, which its workers serve: %s: "
                 "reloading again",
                 mg_reload.id, err);
        mg_reload.again = 1;
        return NULL;
    }
    mg_gen_retain(g);
    mg_master_listen_diff(g);
    return g;
}

/* Moves the reload on when no worker is left to answer. */
static void mg_master_reload_step(void) {
    mg_gen_t *g;
    int i;
    if (mg_reload.phase == MG_RELOAD_EARLY && mg_master_reload_count(MG_SLOT_LOADING) == 0) {
        mg_master_reload_fallback("no worker is left to load it");
        return;
    }
    if (mg_reload.phase == MG_RELOAD_PREPARE) {
        if (mg_master_reload_count(MG_SLOT_LOADING) > 0)
            return;
        mg_reload.phase = MG_RELOAD_COMMIT;
        for (i = 0; i < mg_nslots; i++)
            if (mg_slots[i].pid && mg_slots[i].state == MG_SLOT_READY)
                mg_slots[i].state =
                    mg_app_ctl_send(mg_slots[i].ctl, MG_CTL_COMMIT, mg_reload.id, NULL, -1) == MG_OK
                        ? MG_SLOT_SWITCHING
                        : MG_SLOT_IDLE; /* dying: its replacement forks from us */
    }
    if (mg_reload.phase == MG_RELOAD_COMMIT) {
        mg_gen_t *old = mg_gen_current;
        if (mg_master_reload_count(MG_SLOT_SWITCHING) > 0 ||
            mg_master_reload_count(MG_SLOT_LOADING) > 0)
            return;
        g = mg_reload.worker ? mg_master_reload_own() : mg_gen_pending;
        if (g == NULL) {
            mg_master_reload_done();
            return;
        }
        char *acme_src = old->acme ? strdup(((mg_acme_conf_t *)old->acme)->src) : NULL;
        mg_load_desc(old); /* made now, once the workers serve g */
        mg_load_desc(g);
        mg_gen_log_diff(old, g);
        mg_master_reload_ok(old, g);
        mg_gen_pending = NULL;
        mg_gen_activate(g);
        mg_gen_release(g);
        mg_load_settle(g); /* a replacement worker forks with it */
        mg_master_acme_reload(acme_src);
        free(acme_src);
        mg_info("reload: generation %u serving on %d workers", g->id,
                mg_master_reload_count(MG_SLOT_SERVING));
        mg_metrics_reload(MG_MET_RELOAD_OK);
        mg_metrics_generation(g->id, time(NULL));
        mg_master_reload_done();
    }
}

static void mg_master_reload_timeout_cb(evutil_socket_t fd, short what, void *arg) {
    char why[256];
    (void)fd, (void)what, (void)arg;
    if (mg_reload.phase == MG_RELOAD_EARLY) {
        snprintf(why, sizeof(why), "no worker loaded it within %d s", MG_RELOAD_TIMEOUT);
        mg_master_reload_fallback(why);
        return;
    }
    for (int i = 0; i < mg_nslots; i++) {
        mg_slot_t *s = &mg_slots[i];
        if (s->pid == 0)
            continue;
        if (mg_reload.phase == MG_RELOAD_PREPARE && s->state == MG_SLOT_LOADING) {
            snprintf(why, sizeof(why), "worker %d (pid %d) did not load it within %d s", i,
                     (int)s->pid, MG_RELOAD_TIMEOUT);
            mg_master_reload_abort(why);
            return;
        }
        if (mg_reload.phase == MG_RELOAD_COMMIT &&
            (s->state == MG_SLOT_SWITCHING || s->state == MG_SLOT_LOADING)) {
            /* others serve it already: this one is stuck, and its
             * replacement forks with the new generation (or loads it) */
            mg_error("reload: worker %d (pid %d) did not switch to generation %u within %d s: "
                     "restarting it",
                     i, (int)s->pid, mg_reload.id, MG_RELOAD_TIMEOUT);
            kill(s->pid, SIGKILL);
            s->state = MG_SLOT_IDLE;
        }
    }
    mg_master_reload_step();
}

static void mg_master_ctl_cb(evutil_socket_t sock, short what, void *arg) {
    int slot = (int)(intptr_t)arg;
    mg_slot_t *s = &mg_slots[slot];
    (void)what;
    for (;;) {
        mg_ctl_msg_t m;
        int fd, rc = mg_app_ctl_recv(sock, &m, &fd);
        if (rc == MG_OK && m.op == MG_CTL_EARLY_READY && fd >= 0 &&
            mg_reload.phase == MG_RELOAD_EARLY && m.id == mg_reload.seq &&
            s->state == MG_SLOT_LOADING) {
            mg_master_reload_snap(slot, fd); /* the first: the generation's */
            return;                          /* (the reload may have moved on) */
        }
        if (fd >= 0)
            close(fd);
        if (rc == MG_AGAIN)
            return;
        if (rc == MG_ERR) { /* the worker is gone: SIGCHLD follows */
            event_del(s->ctl_ev);
            return;
        }
        if (m.op == MG_CTL_RELOAD) { /* POST /reload: as SIGHUP, then answer */
            if (mg_master_stopping || mg_admin_nwaiters == MG_ADMIN_WAITERS) {
                char text[64];
                snprintf(text, sizeof(text), "422 {\"result\":\"refused\",\"error\":\"%s\"}",
                         mg_master_stopping ? "stopping" : "too many reloads waiting");
                mg_app_ctl_send(sock, MG_CTL_RELOADED, m.id, text, -1);
                continue;
            }
            mg_admin_waiters[mg_admin_nwaiters].slot = slot;
            mg_admin_waiters[mg_admin_nwaiters].seq = m.id;
            mg_admin_waiters[mg_admin_nwaiters++].next = mg_reload.phase != MG_RELOAD_NONE;
            mg_master_reload_start();
            continue;
        }
        if (m.op == MG_CTL_WANT) { /* an on_demand name: for the ACME process */
            if (mg_acme.pid && mg_acme.sock >= 0)
                mg_app_ctl_send(mg_acme.sock, MG_CTL_WANT, 0, m.text, -1);
            continue;
        }
        if (m.op == MG_CTL_EARLY_READY) /* a second snapshot, or a late one */
            continue;
        if (m.op == MG_CTL_EARLY_FAIL) {
            if (mg_reload.phase == MG_RELOAD_EARLY && m.id == mg_reload.seq) {
                char why[600];
                snprintf(why, sizeof(why), "worker %d (pid %d) could not load it (%s)", slot,
                         (int)s->pid, m.text);
                mg_master_reload_fallback(why);
                return;
            }
            continue;
        }
        if (mg_reload.phase == MG_RELOAD_NONE || mg_reload.phase == MG_RELOAD_EARLY ||
            m.id != mg_reload.id)
            continue; /* about an earlier reload */
        if (m.op == MG_CTL_READY && s->state == MG_SLOT_LOADING) {
            if (mg_reload.phase == MG_RELOAD_PREPARE)
                s->state = MG_SLOT_READY;
            else /* a worker forked after the others switched (mg_master_spawn) */
                s->state = mg_app_ctl_send(sock, MG_CTL_COMMIT, m.id, NULL, -1) == MG_OK
                               ? MG_SLOT_SWITCHING
                               : MG_SLOT_IDLE;
        } else if (m.op == MG_CTL_SERVING && s->state == MG_SLOT_SWITCHING) {
            s->state = MG_SLOT_SERVING;
        } else if (m.op == MG_CTL_REFUSE && mg_reload.phase == MG_RELOAD_PREPARE) {
            char why[600];
            snprintf(why, sizeof(why), "worker %d (pid %d) could not load it: %s", slot,
                     (int)s->pid, m.text);
            if (mg_reload.worker) /* a worker's snapshot: the master judges */
                mg_master_reload_fallback(why);
            else
                mg_master_reload_abort(why);
            return;
        } else if (m.op == MG_CTL_REFUSE) {
            mg_error("reload: worker %d (pid %d) did not switch to generation %u: %s: "
                     "restarting it",
                     slot, (int)s->pid, m.id, m.text);
            kill(s->pid, SIGKILL);
            s->state = MG_SLOT_IDLE;
        }
        mg_master_reload_step();
    }
}

static void mg_master_reload_start(void) {
    int n;
    if (mg_reload.phase != MG_RELOAD_NONE) {
        if (mg_reload.id)
            mg_info("reload: SIGHUP received while generation %u loads: reloading again after it",
                    mg_reload.id);
        else
            mg_info("reload: SIGHUP received while the workers load: reloading again after it");
        mg_reload.again = 1;
        return;
    }
    mg_info("reload: SIGHUP received, loading %s", mg_app_conf_path);
    /* every worker loads from the disk; the first to succeed makes the
     * generation's snapshot */
    mg_reload.seq++;
    mg_reload.id = 0;
    mg_reload.worker = 1;
    mg_reload.phase = MG_RELOAD_EARLY;
    n = 0;
    for (int i = 0; i < mg_nslots; i++) {
        mg_slot_t *s = &mg_slots[i];
        s->state = MG_SLOT_IDLE;
        if (s->pid && s->ctl >= 0 &&
            mg_app_ctl_send(s->ctl, MG_CTL_EARLY, mg_reload.seq, NULL, -1) == MG_OK) {
            s->state = MG_SLOT_LOADING;
            n++;
        }
    }
    if (n == 0) {
        mg_master_reload_master(NULL);
        return;
    }
    mg_master_reload_arm();
}

/* The shared metrics (loop/metrics.c), before the first fork. */
static int mg_master_metrics_init(mg_gen_t *gen) {
    char names[MG_MET_LISTENERS][80];
    const char *lab[MG_MET_LISTENERS];
    int n = gen->nlisten < MG_MET_LISTENERS ? gen->nlisten : MG_MET_LISTENERS;
    for (int k = 0; k < n; k++) {
        snprintf(names[k], sizeof(names[k]), "%s:%d", gen->listen[k].host, gen->listen[k].port);
        lab[k] = names[k];
    }
    if (mg_metrics_init(mg_nslots, lab, n) != MG_OK) {
        mg_error("metrics: cannot map the shared counters: %s", strerror(errno));
        return MG_ERR;
    }
    mg_metrics_generation(gen->id, time(NULL));
    return MG_OK;
}

static void mg_master_respawn_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    if (!mg_master_stopping)
        mg_master_spawn((int)(intptr_t)arg);
}

static void mg_master_signal_cb(evutil_socket_t sig, short what, void *arg) {
    int i;
    (void)what, (void)arg;
    if (sig == SIGCHLD) {
        int status, alive = 0;
        char died[96] = "";
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            int ours = 0;
            if (mg_master_acme_reaped(pid, status))
                continue;
            for (i = 0; i < mg_nslots; i++)
                ours += mg_slots[i].pid == pid;
            if (!ours) /* as PID 1 (a container), orphans are ours to reap */
                mg_debug("reaped process %d (not a worker)", (int)pid);
            for (i = 0; i < mg_nslots; i++) {
                if (mg_slots[i].pid != pid)
                    continue;
                if (mg_reload.worker &&
                    (mg_reload.phase == MG_RELOAD_EARLY || mg_reload.phase == MG_RELOAD_PREPARE))
                    snprintf(died, sizeof(died), "worker %d (pid %d) died while the reload ran", i,
                             (int)pid);
                mg_slots[i].pid = 0;
                mg_slots[i].state = MG_SLOT_IDLE;
                mg_metrics_slot_reset(i); /* what its gauges counted died with it */
                if (mg_master_stopping)
                    break;
                mg_metrics_worker_restarted();
                if (WIFSIGNALED(status))
                    mg_error("worker %d (pid %d) killed by signal %d, restarting", i, pid,
                             WTERMSIG(status));
                else
                    mg_error("worker %d (pid %d) exited with %d, restarting", i, pid,
                             WEXITSTATUS(status));
                /* back off when a worker dies right after starting */
                {
                    struct timeval tv = {0, 0};
                    if (mg_now() - mg_slots[i].started < 1.0)
                        tv.tv_sec = 1;
                    event_base_once(mg_master_base, -1, EV_TIMEOUT, mg_master_respawn_cb,
                                    (void *)(intptr_t)i, &tv);
                }
            }
        }
        for (i = 0; i < mg_nslots; i++)
            alive += mg_slots[i].pid != 0;
        if (died[0] && !mg_master_stopping)
            mg_master_reload_fallback(died); /* a doubt: the master judges */
        else if (mg_reload.phase != MG_RELOAD_NONE)
            mg_master_reload_step(); /* the dead one was perhaps the last to answer */
        if (mg_master_stopping && alive == 0)
            event_base_loopexit(mg_master_base, NULL);
        return;
    }
    if (sig == SIGHUP) {
        if (!mg_master_stopping)
            mg_master_reload_start();
        return;
    }
    if (sig == SIGUSR1) {
        /* the access log file: every worker opens it again, and so do we
         * (workers restarted later inherit ours) */
        mg_access_log_reopen();
        for (i = 0; i < mg_nslots; i++)
            if (mg_slots[i].pid)
                kill(mg_slots[i].pid, SIGUSR1);
        return;
    }
    /* TERM / INT: graceful stop */
    if (!mg_master_stopping) {
        mg_info("stopping: waiting for in-flight requests (drain %.1fs)",
                mg_gen_current->timeouts.drain / 1000.0);
        /* our copies of the listening sockets go too */
        for (i = 0; i < mg_nslots; i++)
            for (int k = 0; k < mg_nlisten; k++)
                if (mg_slots[i].fds[k] >= 0) {
                    close(mg_slots[i].fds[k]);
                    mg_slots[i].fds[k] = -1;
                }
    }
    mg_master_stopping = 1;
    if (mg_acme.pid)
        kill(mg_acme.pid, SIGTERM);
    {
        int alive = 0;
        for (i = 0; i < mg_nslots; i++)
            if (mg_slots[i].pid) {
                kill(mg_slots[i].pid, SIGTERM);
                alive++;
            }
        if (alive == 0)
            event_base_loopexit(mg_master_base, NULL);
    }
}

int main(int argc, char **argv) {
    int opt, test = 0, i, k;
    const char *pidfile = NULL;
    char err[1024];
    mg_gen_t *gen;
    int signos[6] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1};
    int conf_given = 0;
    sigset_t held;

    mg_loop_log_init();
    for (i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (strcmp(argv[i], "--help") == 0) {
            mg_app_usage(stdout);
            return 0;
        }
    while ((opt = getopt(argc, argv, "c:tTvp:h")) != -1) {
        switch (opt) {
        case 'c':
            mg_app_conf_path = optarg;
            conf_given = 1;
            break;
        case 't': test = 1; break;
        case 'T': test = 2; break;
        case 'v': mg_app_versions(); return 0;
        case 'p': pidfile = optarg; break;
        case 'h': mg_app_usage(stdout); return 0;
        default: mg_app_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        mg_app_usage(stderr);
        return 2;
    }
    if (!conf_given)
        mg_app_conf_path = mg_app_default_conf();
    /* held until the handlers are in (below): as PID 1 a signal without a
     * handler is dropped, and a SIGTERM during the first load would be lost */
    sigemptyset(&held);
    sigaddset(&held, SIGTERM);
    sigaddset(&held, SIGINT);
    sigaddset(&held, SIGHUP);
    sigaddset(&held, SIGUSR1);
    if (!test)
        sigprocmask(SIG_BLOCK, &held, NULL);
    if (access(mg_app_conf_path, R_OK) != 0) {
        fprintf(stderr, "moongate: %s: %s\n", mg_app_conf_path, strerror(errno));
        return 1;
    }
    if (test == 2)
        mg_log_level = MG_LOG_WARN; /* -T: the JSON says where each value came from */
    gen = mg_load_gen(mg_app_conf_path, -1, 0, err, sizeof(err));
    if (gen == NULL) {
        fprintf(stderr, "moongate: %s\n", err);
        return 1;
    }
    if (test == 2) { /* the same documents as GET /config and GET /routes */
        const char *c;
        mg_gen_admin_docs(gen);
        c = gen->admin_config ? gen->admin_config : "{}";
        size_t n = strlen(c);
        while (n && c[n - 1] != '}')
            n--;
        printf("%.*s%s\"routes\":%s}\n", (int)(n ? n - 1 : 0), c, n > 2 ? "," : "{",
               gen->admin_routes ? gen->admin_routes : "[]");
        return 0;
    }
    if (test) {
        int ntls = 0;
        for (k = 0; k < gen->nlisten; k++)
            ntls += gen->listen[k].tls;
        printf("moongate: %s ok: %d routes, %d upstreams, %d listeners (%d TLS)\n",
               mg_app_conf_path, gen->nroutes, gen->nupstreams, gen->nlisten, ntls);
        for (k = 0; k < gen->nlisten; k++)
            if (gen->listen[k].tls)
                printf("moongate: TLS listener %s:%d\n", gen->listen[k].host, gen->listen[k].port);
            else if (gen->listen[k].admin)
                printf("moongate: admin listener %s:%d (%s)\n", gen->listen[k].host,
                       gen->listen[k].port, gen->admin_token ? "token set" : "no token");
        return 0;
    }
    mg_load_snap_drop(gen->L); /* workers fork with the loaded state */
    mg_load_settle(gen);       /* ... without the load's garbage */
    mg_gen_activate(gen);
    signal(SIGPIPE, SIG_IGN);
    mg_master_open_files_limit(gen);
    for (i = 0; i < gen->nshd; i++)
        if (mg_shdict_create(gen->shd_names[i], gen->shd_sizes[i]) != MG_OK) {
            mg_error("shared dict %s: cannot map %zu bytes", gen->shd_names[i], gen->shd_sizes[i]);
            return 1;
        }
    if (gen->acme) { /* tokens from the ACME process to the workers' http-01 responder */
        if (mg_shdict_create(MG_ACME_DICT, 256 * 1024) != MG_OK) {
            mg_error("shared dict %s: cannot map %d bytes", MG_ACME_DICT, 256 * 1024);
            return 1;
        }
        mg_acme.dict = 1;
        for (k = 0; k < gen->nlisten && !gen->listen[k].tls; k++)
            ;
        if (k == gen->nlisten)
            mg_warn("acme: no TLS listener in %s: the certificates are obtained and stored, "
                    "but nothing serves them",
                    mg_app_conf_path);
    }

    mg_nslots = gen->workers > 0 ? gen->workers : 1;
    mg_nlisten = gen->nlisten;
    mg_master_laddr = malloc(sizeof(mg_addr_t) * (mg_nlisten ? mg_nlisten : 1));
    if (mg_master_laddr)
        memcpy(mg_master_laddr, gen->listen, sizeof(mg_addr_t) * mg_nlisten);
    mg_slots = calloc(mg_nslots, sizeof(mg_slot_t));
    for (k = 0; k < mg_nlisten; k++)
        if (!mg_master_listen_free(&gen->listen[k]))
            return 1;
    for (i = 0; i < mg_nslots; i++) {
        mg_slots[i].ctl = -1;
        mg_slots[i].fds = calloc(mg_nlisten ? mg_nlisten : 1, sizeof(int));
        for (k = 0; k < mg_nlisten; k++) {
            mg_slots[i].fds[k] = mg_master_listen_one(&gen->listen[k]);
            if (mg_slots[i].fds[k] < 0)
                return 1;
        }
    }
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (f == NULL) {
            mg_error("pidfile %s: %s", pidfile, strerror(errno));
            return 1;
        }
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    mg_master_base = event_base_new();
    /* SIGUSR1: the access log file is opened again (passed on to the workers) */
    for (i = 0; i < 6; i++) {
        mg_master_sigs[i] = evsignal_new(mg_master_base, signos[i], mg_master_signal_cb, NULL);
        event_add(mg_master_sigs[i], NULL);
    }
    sigprocmask(SIG_UNBLOCK, &held, NULL); /* one that came meanwhile is handled now */
    for (k = 0; k < mg_nlisten; k++)
        mg_info("listening on %s:%d%s", gen->listen[k].host, gen->listen[k].port,
                gen->listen[k].tls     ? " (TLS)"
                : gen->listen[k].admin ? " (admin)"
                                       : "");
    mg_reload_log = mmap(NULL, sizeof(*mg_reload_log), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mg_reload_log == MAP_FAILED)
        mg_reload_log = NULL; /* GET /reloads says none */
    /* the ticket keys every worker shares, before the first fork */
    if (mg_tls_tkeys_init() != MG_OK) {
        mg_error("tls: cannot map the session-ticket keys: %s", strerror(errno));
        return 1;
    }
    mg_master_tkeys_arm();
    if (mg_master_metrics_init(gen) != MG_OK) /* the counters every worker shares */
        return 1;
    mg_info("moongate %s master %d: %d workers, %d routes, conf %s", MG_VERSION, (int)getpid(),
            mg_nslots, gen->nroutes, mg_app_conf_path);
    if (getpid() == 1)
        mg_info("running as PID 1: the master reaps every child, workers and orphans");
    for (i = 0; i < mg_nslots; i++)
        mg_master_spawn(i);
    mg_master_acme_spawn();
    event_base_dispatch(mg_master_base);
    for (i = 0; i < 6; i++)
        event_free(mg_master_sigs[i]);
    if (mg_master_tkeys_timer)
        event_free(mg_master_tkeys_timer);
    event_base_free(mg_master_base);
    free(mg_master_laddr);
    if (pidfile)
        unlink(pidfile);
    mg_info("stopped");
    return 0;
}
