/* ws_fanout: the subscriber side of bench/fanout.sh (one thread, epoll).
 *
 * Opens N WebSockets (HTTP/1.1 Upgrade) spread round-robin over the given
 * ports, waits until every one has had a first message, then for -d seconds
 * counts the text messages that arrive. A message names its change by
 * "seq":<n> and "changed_us":"<unix us>"; per seq it keeps how many sockets
 * got it and when the first and the last did (CLOCK_REALTIME: the
 * publisher's stamps come from other processes on this machine).
 * Prints one line of figures; with -o writes "seq changed_us first_us
 * last_us count" for each seq changed inside the window. With -p pid,...
 * the CPU time (utime + stime, /proc/<pid>/stat) of those processes over the
 * window is printed too, and this client's own (client_cpu_pct: of one
 * core; near 100 it would be the bottleneck).
 *
 * Exit: 0 when every socket stayed open and no socket saw a seq twice or
 * out of order; 1 otherwise; 2 on bad arguments.
 * Build: cc -O2 -o ws_fanout ws_fanout.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_FAILED };
enum { RCAP = 65536, MAXSEQ = 1 << 16, MAXPORTS = 16, MAXPIDS = 64 };

typedef struct {
    int fd, state, port_i;
    long got;      /* text messages received */
    long last_seq; /* -1: none yet */
    size_t wleft, woff;
    unsigned char *rb;
    size_t rlen;
} conn_t;

typedef struct {
    uint64_t changed_us, first_us, last_us;
    long count;
} seq_t;

static int ep;
static long n_pending, n_open, n_failed, n_dropped, n_dup, n_first;
static char req[MAXPORTS][1024];
static size_t reqlen[MAXPORTS];
static seq_t *seqs;
static int counting;
static uint64_t msgs;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void set_ev(conn_t *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void drop(conn_t *c) {
    if (c->state == S_OPEN)
        n_dropped++, n_open--;
    else
        n_failed++, n_pending--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = S_FAILED;
}

/* what this process and the given ones used, in clock ticks */
static long cpu_ticks(const long *pids, int n) {
    long sum = 0;
    for (int i = 0; i < n; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%ld/stat", pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        char *p = strrchr(buf, ')'); /* the name may hold spaces */
        if (!p)
            continue;
        unsigned long ut = 0, st = 0;
        /* after ')': state(3) ... utime(14) stime(15) */
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            sum += (long)(ut + st);
    }
    return sum;
}

static void on_message(conn_t *c, const unsigned char *p, size_t len) {
    c->got++;
    if (c->got == 1)
        n_first++;
    const char *s = memmem(p, len, "\"seq\":", 6);
    if (!s)
        return;
    long seq = strtol(s + 6, NULL, 10);
    if (seq <= c->last_seq)
        n_dup++;
    c->last_seq = seq;
    if (!counting || seq < 0)
        return;
    msgs++;
    seq_t *q = &seqs[seq % MAXSEQ];
    uint64_t t = now_us();
    if (!q->count) {
        const char *u = memmem(p, len, "\"changed_us\":\"", 14);
        q->changed_us = u ? strtoull(u + 14, NULL, 10) : 0;
        q->first_us = t;
    }
    q->last_us = t;
    q->count++;
}

/* the server's frames (unmasked); 0 ok, -1 close or bad */
static int parse(conn_t *c) {
    size_t off = 0;
    while (c->rlen - off >= 2) {
        unsigned char *p = c->rb + off;
        size_t av = c->rlen - off, hl = 2;
        uint64_t len = p[1] & 0x7f;
        if (len == 126) {
            if (av < 4)
                break;
            len = ((uint64_t)p[2] << 8) | p[3];
            hl = 4;
        } else if (len == 127) {
            return -1; /* bigger than this bench sends */
        }
        if (av < hl + len)
            break;
        unsigned op = p[0] & 0x0f;
        if (op == 0x8)
            return -1;
        if (op == 0x1)
            on_message(c, p + hl, (size_t)len);
        off += hl + (size_t)len;
    }
    if (off) {
        memmove(c->rb, c->rb + off, c->rlen - off);
        c->rlen -= off;
    }
    return c->rlen == RCAP ? -1 : 0;
}

static void on_event(conn_t *c, uint32_t ev) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            drop(c);
            return;
        }
        c->state = S_HANDSHAKE;
        c->wleft = reqlen[c->port_i];
        c->woff = 0;
    }
    if (c->wleft) {
        ssize_t n = write(c->fd, req[c->port_i] + c->woff, c->wleft);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            drop(c);
            return;
        }
        if (n > 0)
            c->woff += (size_t)n, c->wleft -= (size_t)n;
        set_ev(c, c->wleft ? EPOLLIN | EPOLLOUT : EPOLLIN);
        if (c->wleft)
            return;
    }
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t r = read(c->fd, c->rb + c->rlen, RCAP - c->rlen);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0) {
            drop(c);
            return;
        }
        c->rlen += (size_t)r;
        if (c->state == S_HANDSHAKE) {
            unsigned char *e = memmem(c->rb, c->rlen, "\r\n\r\n", 4);
            if (!e) {
                if (c->rlen == RCAP)
                    drop(c);
                continue;
            }
            if (c->rlen < 12 || memcmp(c->rb + 9, "101", 3) != 0) {
                if (n_failed < 3)
                    fprintf(stderr, "ws_fanout: handshake refused: %.40s\n", c->rb);
                drop(c);
                return;
            }
            size_t hl = (size_t)(e - c->rb) + 4;
            memmove(c->rb, c->rb + hl, c->rlen - hl);
            c->rlen -= hl;
            c->state = S_OPEN;
            n_pending--, n_open++;
        }
        if (parse(c) < 0) {
            drop(c);
            return;
        }
        if ((size_t)r < RCAP / 2)
            return; /* level-triggered: the rest, if any, comes with the next wait */
    }
}

/* this process's CPU (user + system), in seconds */
static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *path = "/", *out = NULL;
    int ports[MAXPORTS], nports = 0, npids = 0, o;
    long pids[MAXPIDS], conns = 1000, maxhs = 200;
    double dur = 10, warm = 2, tmo = 60;
    char *tok;
    while ((o = getopt(argc, argv, "a:P:u:n:d:w:T:o:p:C:")) != -1) {
        switch (o) {
        case 'a': addr = optarg; break;
        case 'P':
            for (tok = strtok(optarg, ","); tok && nports < MAXPORTS; tok = strtok(NULL, ","))
                ports[nports++] = atoi(tok);
            break;
        case 'p':
            for (tok = strtok(optarg, ","); tok && npids < MAXPIDS; tok = strtok(NULL, ","))
                pids[npids++] = atol(tok);
            break;
        case 'u': path = optarg; break;
        case 'n': conns = atol(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'T': tmo = atof(optarg); break;
        case 'o': out = optarg; break;
        case 'C': maxhs = atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s -P port,port.. -u path [-n conns] [-d secs] [-w warm_s] "
                            "[-T connect_timeout_s] [-p pid,..] [-o per_seq_file] [-C max_handshakes]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!nports || conns < 1 || strlen(path) > 800) {
        fprintf(stderr, "ws_fanout: -P port,.. and a path under 800 bytes are needed\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)conns + 32 > rl.rlim_cur) {
        fprintf(stderr, "ws_fanout: %ld sockets need more than RLIMIT_NOFILE %ld\n", conns, (long)rl.rlim_cur);
        return 2;
    }
    for (int i = 0; i < nports; i++)
        reqlen[i] = (size_t)snprintf(req[i], sizeof req[i],
                                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                     "Sec-WebSocket-Version: 13\r\n\r\n",
                                     path, addr, ports[i]);
    seqs = calloc(MAXSEQ, sizeof *seqs);
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    if (!seqs || !cs)
        return 2;
    ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return 2;

    uint64_t t_begin = now_us(), t0 = 0, t1 = 0, t_all = 0;
    long started = 0, ticks0 = 0, ticks1 = 0;
    double self0 = 0, self1 = 0;
    struct epoll_event evs[512];
    for (;;) {
        while (started < conns && n_pending < maxhs) {
            conn_t *c = &cs[started];
            int one = 1;
            c->port_i = (int)(started % nports);
            c->last_seq = -1;
            c->rb = malloc(RCAP);
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            started++;
            n_pending++;
            if (!c->rb || c->fd < 0) {
                c->state = S_FAILED, n_failed++, n_pending--;
                continue;
            }
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            sa.sin_port = htons((uint16_t)ports[c->port_i]);
            struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
            if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
                drop(c);
        }
        uint64_t t = now_us();
        if (!t_all) {
            if (started == conns && n_pending == 0 && n_first >= n_open) {
                t_all = t;
                fprintf(stderr, "ws_fanout: %ld open (%ld failed) in %.2f s\n", n_open, n_failed,
                        (t - t_begin) / 1e6);
                if (n_open == 0)
                    return 1;
            } else if (t - t_begin > (uint64_t)(tmo * 1e6)) {
                fprintf(stderr, "ws_fanout: only %ld open, %ld with a first message after %.0f s\n", n_open,
                        n_first, tmo);
                return 1;
            }
        } else if (!t0 && t - t_all >= (uint64_t)(warm * 1e6)) {
            t0 = t;
            ticks0 = cpu_ticks(pids, npids);
            self0 = self_cpu();
            counting = 1;
        } else if (t0 && t - t0 >= (uint64_t)(dur * 1e6)) {
            t1 = t;
            ticks1 = cpu_ticks(pids, npids);
            self1 = self_cpu();
            break;
        }
        int n = epoll_wait(ep, evs, 512, 50);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state != S_FAILED)
                on_event(c, evs[i].events);
        }
    }

    /* the delay of each seq changed inside the window, long enough before its end to be complete */
    double secs = (t1 - t0) / 1e6, hz = (double)sysconf(_SC_CLK_TCK);
    uint64_t *d = malloc(MAXSEQ * sizeof *d);
    long nd = 0, partial = 0;
    FILE *f = out ? fopen(out, "w") : NULL;
    for (long s = 0; s < MAXSEQ; s++) {
        seq_t *q = &seqs[s];
        if (!q->count || q->changed_us < t0 || q->changed_us + 1000000 > t1)
            continue;
        if (f)
            fprintf(f, "%ld %llu %llu %llu %ld\n", s, (unsigned long long)q->changed_us,
                    (unsigned long long)q->first_us, (unsigned long long)q->last_us, q->count);
        if (q->count < n_open) {
            partial++;
            continue;
        }
        d[nd++] = q->last_us > q->changed_us ? q->last_us - q->changed_us : 0;
    }
    if (f)
        fclose(f);
    qsort(d, (size_t)nd, sizeof *d, cmp_u64);
    double cpu_s = (ticks1 - ticks0) / hz;
    printf("subs=%ld msgs_per_s=%.0f changes=%ld partial=%ld last_p50_ms=%.1f last_p99_ms=%.1f "
           "cpu_s=%.2f cpu_us_per_msg=%.2f client_cpu_pct=%.0f dropped=%ld failed=%ld dup=%ld secs=%.1f\n",
           n_open, msgs / secs, nd, partial, nd ? d[nd / 2] / 1000.0 : 0,
           nd ? d[(nd * 99) / 100 < nd ? (nd * 99) / 100 : nd - 1] / 1000.0 : 0, cpu_s,
           msgs ? cpu_s * 1e6 / msgs : 0, 100 * (self1 - self0) / secs, n_dropped, n_failed, n_dup, secs);
    return n_dropped || n_failed || n_dup || partial ? 1 : 0;
}
