/*
 * main.c -- the command line and the master process. The master loads the
 * first generation (so workers start from a checked one), binds one
 * SO_REUSEPORT socket per worker slot and listen address, forks the
 * workers and then only handles signals: HUP re-checks the scripts and, if
 * they load, tells every worker to reload; TERM/INT stop the workers
 * gracefully; a worker that dies is restarted on the same sockets, so
 * connections queued for it are not lost.
 */
#include "mg.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <luajit.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <wslay/wslay.h>

const char *mg_conf_path = "conf/moongate.lua";

typedef struct {
    pid_t pid;
    int *fds; /* this slot's listening sockets, one per listen address */
    double started;
    int restarts;
} mg_slot_t;

static mg_slot_t *mg_slots;
static int mg_nslots, mg_nlisten;
static int mg_master_stopping;
static struct event_base *mg_master_base;

static void mg_usage(void) {
    fprintf(stderr, "usage: moongate [-c conf/moongate.lua] [-t] [-v] [-p pidfile]\n"
                    "  -c FILE  configuration file (default conf/moongate.lua)\n"
                    "  -t       check the configuration, scripts and routes, then exit\n"
                    "  -v       print versions and exit\n"
                    "  -p FILE  write the master's pid to FILE\n");
}

static void mg_versions(void) {
    printf("moongate %s\n", MG_VERSION);
    printf("LuaJIT %s\n", LUAJIT_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("wslay %s\n", WSLAY_VERSION);
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
}

/* SO_REUSEPORT would let a second moongate share the port silently: a
 * plain bind first tells whether someone already listens there. */
static int mg_listen_free(mg_addr_t *a) {
    struct addrinfo hints, *res = NULL;
    char port[16];
    int fd, one = 1, ok = 1;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", a->port);
    if (getaddrinfo(a->host, port, &hints, &res) != 0 || res == NULL)
        return 1; /* mg_listen_one reports it */
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

static int mg_listen_one(mg_addr_t *a) {
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
static void mg_open_files_limit(mg_gen_t *g) {
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

static void mg_spawn(int slot) {
    pid_t pid = fork();
    if (pid < 0) {
        mg_error("fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        /* child: keep only this slot's sockets */
        for (int i = 0; i < mg_nslots; i++)
            if (i != slot)
                for (int k = 0; k < mg_nlisten; k++)
                    close(mg_slots[i].fds[k]);
        event_reinit(mg_master_base);
        event_base_free(mg_master_base);
        mg_worker_run(slot, mg_slots[slot].fds, mg_nlisten);
        _exit(0);
    }
    mg_slots[slot].pid = pid;
    mg_slots[slot].started = mg_now();
}

static void mg_respawn_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    if (!mg_master_stopping)
        mg_spawn((int)(intptr_t)arg);
}

static void mg_master_signal_cb(evutil_socket_t sig, short what, void *arg) {
    int i;
    (void)what, (void)arg;
    if (sig == SIGCHLD) {
        int status, alive = 0;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (i = 0; i < mg_nslots; i++) {
                if (mg_slots[i].pid != pid)
                    continue;
                mg_slots[i].pid = 0;
                if (mg_master_stopping)
                    break;
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
                    event_base_once(mg_master_base, -1, EV_TIMEOUT, mg_respawn_cb,
                                    (void *)(intptr_t)i, &tv);
                }
            }
        }
        for (i = 0; i < mg_nslots; i++)
            alive += mg_slots[i].pid != 0;
        if (mg_master_stopping && alive == 0)
            event_base_loopexit(mg_master_base, NULL);
        return;
    }
    if (sig == SIGHUP) {
        char err[1024];
        mg_gen_t *g, *old = mg_gen_current;
        if (mg_master_stopping)
            return;
        mg_info("reload: SIGHUP received, loading %s", mg_conf_path);
        g = mg_gen_load(mg_conf_path, err, sizeof(err));
        if (g == NULL) {
            mg_error("reload refused, generation %u keeps serving: %s", old->id, err);
            return;
        }
        mg_gen_log_diff(old, g);
        mg_gen_activate(g);
        for (i = 0; i < mg_nslots; i++)
            if (mg_slots[i].pid)
                kill(mg_slots[i].pid, SIGHUP);
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
    struct event *sigs[5];
    int signos[5] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT};

    while ((opt = getopt(argc, argv, "c:tvp:h")) != -1) {
        switch (opt) {
        case 'c': mg_conf_path = optarg; break;
        case 't': test = 1; break;
        case 'v': mg_versions(); return 0;
        case 'p': pidfile = optarg; break;
        default: mg_usage(); return opt == 'h' ? 0 : 2;
        }
    }
    if (optind < argc) {
        mg_usage();
        return 2;
    }
    if (access(mg_conf_path, R_OK) != 0) {
        fprintf(stderr, "moongate: %s: %s\n", mg_conf_path, strerror(errno));
        return 1;
    }
    gen = mg_gen_load(mg_conf_path, err, sizeof(err));
    if (gen == NULL) {
        fprintf(stderr, "moongate: %s\n", err);
        return 1;
    }
    if (test) {
        printf("moongate: %s ok: %d routes, %d upstreams, %d listeners\n", mg_conf_path,
               gen->nroutes, gen->nupstreams, gen->nlisten);
        return 0;
    }
    mg_gen_activate(gen);
    signal(SIGPIPE, SIG_IGN);
    mg_open_files_limit(gen);
    for (i = 0; i < gen->nshd; i++)
        if (mg_shdict_create(gen->shd_names[i], gen->shd_sizes[i]) != MG_OK) {
            mg_error("shared dict %s: cannot map %zu bytes", gen->shd_names[i], gen->shd_sizes[i]);
            return 1;
        }

    mg_nslots = gen->workers > 0 ? gen->workers : 1;
    mg_nlisten = gen->nlisten;
    mg_slots = calloc(mg_nslots, sizeof(mg_slot_t));
    for (k = 0; k < mg_nlisten; k++)
        if (!mg_listen_free(&gen->listen[k]))
            return 1;
    for (i = 0; i < mg_nslots; i++) {
        mg_slots[i].fds = calloc(mg_nlisten ? mg_nlisten : 1, sizeof(int));
        for (k = 0; k < mg_nlisten; k++) {
            mg_slots[i].fds[k] = mg_listen_one(&gen->listen[k]);
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
    for (i = 0; i < 5; i++) {
        sigs[i] = evsignal_new(mg_master_base, signos[i], mg_master_signal_cb, NULL);
        event_add(sigs[i], NULL);
    }
    for (k = 0; k < mg_nlisten; k++)
        mg_info("listening on %s:%d", gen->listen[k].host, gen->listen[k].port);
    mg_info("moongate %s master %d: %d workers, %d routes", MG_VERSION, (int)getpid(), mg_nslots,
            gen->nroutes);
    for (i = 0; i < mg_nslots; i++)
        mg_spawn(i);
    event_base_dispatch(mg_master_base);
    for (i = 0; i < 5; i++)
        event_free(sigs[i]);
    event_base_free(mg_master_base);
    if (pidfile)
        unlink(pidfile);
    mg_info("stopped");
    return 0;
}
