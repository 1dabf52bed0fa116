/*
 * lua_socket.c -- moongate.socket.tcp(): OpenResty's cosocket
 * (ngx.socket.tcp) for plugin authors. connect, send, receive ("*l", "*a",
 * a size), receiveany, receiveuntil, settimeout(s) (milliseconds, as
 * OpenResty), setkeepalive (a pool per worker keyed by "host:port" or
 * opts.pool), getreusedtimes, close, sslhandshake (net/tls.c's client
 * contexts). Every call that waits yields the calling coroutine (a handler,
 * an access hook, a timer, a WebSocket handler) and resumes it from an
 * event callback, so nothing here blocks the worker's loop; every wait has
 * a timeout and every read a bound. Errors are nil, err as OpenResty's
 * ("timeout", "closed", "connection refused", ...); receive gives the bytes
 * it had as a third value.
 *
 * A connection (mg_sconn_t, malloc'd) is apart from the Lua object that
 * uses it (mg_sock_t, a userdata): its fd event is registered once,
 * edge-triggered for reads and writes, and stays registered while the
 * connection sits in the pool, so a request that takes a pooled
 * connection, sends and reads pays no epoll_ctl. A coroutine lists the
 * sockets it connected; when it ends they are closed (a handler that
 * forgets close leaks nothing), and the Lua GC closes an unreachable one.
 */
#include "lua/lua_int.h"
#include "loop/timer.h"

#include <errno.h>
#include <event2/dns.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define MG_SOCK_MT "moongate.socket.tcp"
#define MG_SOCK_SESS_MT "moongate.socket.ssl_session"

/* bounds: what receive(n) and "*a" may hold; what "*l" and receiveuntil
 * may buffer before the line end or the pattern */
#define MG_SOCK_READ_MAX (16 * 1024 * 1024)
#define MG_SOCK_LINE_MAX (1024 * 1024)
#define MG_SOCK_PATTERN_MAX 4096
#define MG_SOCK_CHUNK 16384
/* OpenResty's defaults: lua_socket_*_timeout 60 s, lua_socket_pool_size
 * 30, lua_socket_keepalive_timeout 60 s */
#define MG_SOCK_TIMEOUT 60000
#define MG_SOCK_POOL_SIZE 30
#define MG_SOCK_IDLE 60000
/* per worker: pools (keys), idle connections in all of them */
#define MG_SOCK_POOLS_MAX 256
#define MG_SOCK_IDLE_MAX 4096
#define MG_SOCK_KEY 128

enum { OP_NONE, OP_RESOLVE, OP_CONNECT, OP_HANDSHAKE, OP_SEND, OP_RECV };
enum { R_SIZE, R_LINE, R_ALL, R_ANY, R_UNTIL };

typedef struct mg_sconn_s mg_sconn_t;
typedef struct mg_spool_s mg_spool_t;
typedef struct mg_sock_dns_s mg_sock_dns_t;

struct mg_sock_s {
    mg_sconn_t *c;          /* the connection, NULL when closed */
    mg_co_t *co;            /* the coroutine that connected it */
    mg_sock_t *prev, *next; /* that coroutine's sockets */
    int op;                 /* OP_*: what the coroutine waits for */
    int rmode;              /* OP_RECV: R_* */
    size_t rsize;           /* R_SIZE, R_ANY, R_UNTIL: the size asked (0: none) */
    struct mg_sock_until_s *until;
    size_t sent;      /* OP_SEND: the bytes to report */
    int want_session; /* OP_HANDSHAKE: return the session (else true) */
    int verify;
    int to_connect, to_send, to_read; /* ms, 0: the default */
    int pool_size;                    /* connect's opts.pool_size, 0: default */
    int ref, uref;                    /* registry anchors while the coroutine waits */
};

typedef struct mg_sock_until_s {
    size_t plen;
    int inclusive;
    int done; /* size mode, inclusive: the pattern went out, nil is next */
    char pat[];
} mg_sock_until_t;

struct mg_sconn_s {
    mg_io_t io;
    struct event ev; /* fd: READ | WRITE | CLOSED, edge-triggered, persistent */
    mg_tm_t tm;      /* the wait's timeout; the idle expiry in the pool */
    unsigned ev_on : 1;
    unsigned eof : 1;     /* the peer ended its stream */
    unsigned dubious : 1; /* a timeout or an error: never pooled */
    unsigned tls_done : 1;
    unsigned rd_ready : 1;    /* TCP: bytes may wait in the socket (a read edge came
                               * after the last short read) */
    unsigned peer_closed : 1; /* EV_CLOSED seen: the peer's FIN or RST came */
    mg_sock_t *s;             /* the socket using it; NULL in the pool */
    mg_sock_dns_t *dns;       /* OP_RESOLVE */
    struct evbuffer *rb;      /* received, not returned yet */
    struct evbuffer *wb;      /* to send */
    size_t scan;              /* rb's first bytes known to hold no match */
    struct sockaddr_storage addr;
    socklen_t alen;
    unsigned reused;
    mg_spool_t *pool;
    mg_sconn_t *pprev, *pnext;
    char key[MG_SOCK_KEY];
};

struct mg_spool_s {
    mg_spool_t *next;        /* hash chain */
    mg_sconn_t *head, *tail; /* most recently pooled first */
    int n, size;
    char key[MG_SOCK_KEY];
};

struct mg_sock_dns_s {
    mg_sock_t *s; /* NULL: cancelled */
    struct evdns_getaddrinfo_request *req;
    int sync; /* answered inside evdns_getaddrinfo */
    int done, result, port;
    char host[256];
};

typedef struct {
    void *sess; /* SSL_SESSION, a reference */
} mg_sock_sess_t;

static mg_spool_t *mg_spools[64];
static int mg_npools, mg_nidle;
static struct evdns_base *mg_sock_dnsbase;
static void *mg_sock_noverify;

static void mg_sock_run(mg_sock_t *s, int timeout);

/* ---- helpers ---- */

static void mg_sock_push_errno(lua_State *L, int e) {
    char buf[128];
    const char *m = strerror(e);
    size_t i;
    /* lower-case, as OpenResty (for LuaSocket): "connection refused" */
    for (i = 0; m[i] && i < sizeof(buf) - 1; i++)
        buf[i] = (m[i] >= 'A' && m[i] <= 'Z') ? m[i] + 32 : m[i];
    lua_pushlstring(L, buf, i);
}

static int mg_sock_nil_err(lua_State *L, const char *err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static void mg_sock_take(lua_State *L, struct evbuffer *b, size_t n) {
    if (n == 0) {
        lua_pushliteral(L, "");
        return;
    }
    lua_pushlstring(L, (const char *)evbuffer_pullup(b, (ssize_t)n), n);
    evbuffer_drain(b, n);
}

static size_t mg_sock_rlen(mg_sconn_t *c) { return c->rb ? evbuffer_get_length(c->rb) : 0; }

static void mg_sconn_free(mg_sconn_t *c) {
    if (c->dns) {
        mg_sock_dns_t *d = c->dns;
        c->dns = NULL;
        d->s = NULL; /* its callback frees it */
        evdns_getaddrinfo_cancel(d->req);
    }
    if (c->ev_on)
        event_del(&c->ev);
    mg_tm_stop(&c->tm);
    mg_io_close(&c->io);
    if (c->rb)
        evbuffer_free(c->rb);
    if (c->wb)
        evbuffer_free(c->wb);
    free(c);
}

static void mg_sconn_io_cb(evutil_socket_t fd, short what, void *arg);
static void mg_sconn_timer_cb(mg_tm_t *t, void *arg);

static mg_sconn_t *mg_sconn_new(void) {
    mg_sconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->io.fd = -1;
    mg_tm_init(&c->tm, mg_sconn_timer_cb, c);
    return c;
}

/* the coroutine waits: anchored, so that the GC leaves the socket alone */
static void mg_sock_anchor(mg_sock_t *s, lua_State *L) {
    if (s->ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        s->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

static void mg_sock_unanchor(mg_sock_t *s, lua_State *L) {
    if (s->ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
        s->ref = LUA_NOREF;
    }
    if (s->uref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->uref);
        s->uref = LUA_NOREF;
    }
}

static void mg_sock_unlink(mg_sock_t *s) {
    if (s->co == NULL)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        s->co->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->co = NULL;
}

static void mg_sock_close_conn(mg_sock_t *s) {
    if (s->c) {
        s->c->s = NULL;
        mg_sconn_free(s->c);
        s->c = NULL;
    }
}

/* ---- the pool ---- */

static unsigned mg_spool_hash(const char *k) {
    unsigned h = 2166136261u;
    while (*k)
        h = (h ^ (unsigned char)*k++) * 16777619u;
    return h & 63;
}

static mg_spool_t *mg_spool_find(const char *key) {
    mg_spool_t *p = mg_spools[mg_spool_hash(key)];
    while (p && strcmp(p->key, key) != 0)
        p = p->next;
    return p;
}

static void mg_spool_unlink(mg_sconn_t *c) {
    mg_spool_t *p = c->pool;
    if (p == NULL)
        return;
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        p->head = c->pnext;
    if (c->pnext)
        c->pnext->pprev = c->pprev;
    else
        p->tail = c->pprev;
    c->pprev = c->pnext = NULL;
    c->pool = NULL;
    p->n--;
    mg_nidle--;
}

/* An empty pool goes: their number stays bounded. */
static void mg_spool_gc(mg_spool_t *p) {
    mg_spool_t **pp;
    if (p == NULL || p->n > 0)
        return;
    pp = &mg_spools[mg_spool_hash(p->key)];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    free(p);
    mg_npools--;
}

/* An idle connection leaves its pool and closes. */
static void mg_spool_drop(mg_sconn_t *c) {
    mg_spool_t *p = c->pool;
    mg_spool_unlink(c);
    mg_spool_gc(p);
    mg_sconn_free(c);
}

/* A pooled connection to key, or NULL. */
static mg_sconn_t *mg_spool_get(const char *key) {
    mg_spool_t *p = mg_spool_find(key);
    mg_sconn_t *c;
    if (p == NULL)
        return NULL;
    c = p->head;
    mg_spool_unlink(c);
    mg_spool_gc(p);
    mg_tm_stop(&c->tm);
    return c;
}

/* Keeps c (idle, nobody's) in the pool of its key; closes it when that
 * cannot be. */
static void mg_spool_put(mg_sconn_t *c, int idle_ms, int size) {
    mg_spool_t *p = mg_spool_find(c->key);
    if (p == NULL) {
        unsigned h = mg_spool_hash(c->key);
        if (mg_npools >= MG_SOCK_POOLS_MAX || mg_nidle >= MG_SOCK_IDLE_MAX ||
            (p = calloc(1, sizeof(*p))) == NULL) {
            mg_sconn_free(c);
            return;
        }
        memcpy(p->key, c->key, sizeof(p->key));
        p->size = size;
        p->next = mg_spools[h];
        mg_spools[h] = p;
        mg_npools++;
    } else if (p->n >= p->size) {
        /* full: the least recently used one makes room (as OpenResty) */
        mg_sconn_t *old = p->tail;
        mg_spool_unlink(old);
        mg_sconn_free(old);
    } else if (mg_nidle >= MG_SOCK_IDLE_MAX) {
        mg_sconn_free(c);
        return;
    }
    c->pool = p;
    c->pprev = NULL;
    c->pnext = p->head;
    if (p->head)
        p->head->pprev = c;
    else
        p->tail = c;
    p->head = c;
    p->n++;
    mg_nidle++;
    if (idle_ms > 0)
        mg_tm_arm(&c->tm, idle_ms);
}

/* An idle connection's socket spoke: data nobody asked for, the end of
 * the stream or an error close it; TLS records that carry no data (a
 * session ticket) do not. */
static void mg_spool_check(mg_sconn_t *c) {
    char b[1];
    ssize_t n = mg_io_read(&c->io, b, 1);
    if (n < 0 && errno == EAGAIN)
        return;
    mg_spool_drop(c);
}

/* ---- events ---- */

static void mg_sconn_io_cb(evutil_socket_t fd, short what, void *arg) {
    mg_sconn_t *c = arg;
    (void)fd;
    if (what & EV_READ)
        c->rd_ready = 1;
    if (what & EV_CLOSED)
        c->peer_closed = 1;
    if (c->s == NULL) {
        if (c->pool)
            mg_spool_check(c);
        return;
    }
    if (c->s->op != OP_NONE && c->s->op != OP_RESOLVE)
        mg_sock_run(c->s, 0);
}

static void mg_sconn_timer_cb(mg_tm_t *t, void *arg) {
    mg_sconn_t *c = arg;
    (void)t;
    if (c->s == NULL) { /* idle too long */
        mg_spool_drop(c);
        return;
    }
    if (c->s->op != OP_NONE)
        mg_sock_run(c->s, 1);
}

static void mg_sock_wait(mg_sock_t *s, int ms) {
    mg_tm_arm(&s->c->tm, ms > 0 ? ms : MG_SOCK_TIMEOUT);
}

/* ---- connect ---- */

/* The TCP (or unix) connect on c->addr: 1 pushed (connected), 2 (nil,
 * err; the connection closed) or -1 (waits). */
static int mg_sock_connect_start(mg_sock_t *s, lua_State *L) {
    mg_sconn_t *c = s->c;
    int fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, e;
    if (fd < 0) {
        e = errno;
        mg_sock_close_conn(s);
        lua_pushnil(L);
        mg_sock_push_errno(L, e);
        return 2;
    }
    if (c->addr.ss_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    mg_io_tcp(&c->io, fd);
    event_assign(&c->ev, mg_worker.base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                 mg_sconn_io_cb, c);
    if (event_add(&c->ev, NULL) != 0) {
        mg_sock_close_conn(s);
        return mg_sock_nil_err(L, "no memory");
    }
    c->ev_on = 1;
    if (connect(fd, (struct sockaddr *)&c->addr, c->alen) == 0) {
        lua_pushinteger(L, 1);
        return 1;
    }
    if (errno == EINPROGRESS || errno == EAGAIN) {
        s->op = OP_CONNECT;
        mg_sock_wait(s, s->to_connect);
        return -1;
    }
    e = errno;
    mg_sock_close_conn(s);
    lua_pushnil(L);
    mg_sock_push_errno(L, e);
    return 2;
}

static int mg_sock_connect_step(mg_sock_t *s, lua_State *L) {
    int err = 0;
    socklen_t el = sizeof(err);
    if (getsockopt(s->c->io.fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err == 0) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getpeername(s->c->io.fd, (struct sockaddr *)&ss, &sl) != 0) {
            mg_sock_wait(s, s->to_connect); /* not yet: a stray wakeup */
            return -1;
        }
        lua_pushinteger(L, 1);
        return 1;
    }
    mg_sock_close_conn(s);
    lua_pushnil(L);
    mg_sock_push_errno(L, err);
    return 2;
}

static int mg_sock_pick_addr(mg_sconn_t *c, struct evutil_addrinfo *res, int port) {
    struct evutil_addrinfo *a, *pick = NULL;
    for (a = res; a && !pick; a = a->ai_next) /* IPv4 first */
        if (a->ai_family == AF_INET)
            pick = a;
    for (a = res; a && !pick; a = a->ai_next)
        if (a->ai_family == AF_INET6)
            pick = a;
    if (pick == NULL || pick->ai_addrlen > sizeof(c->addr))
        return MG_ERR;
    memcpy(&c->addr, pick->ai_addr, pick->ai_addrlen);
    c->alen = (socklen_t)pick->ai_addrlen;
    if (pick->ai_family == AF_INET)
        ((struct sockaddr_in *)&c->addr)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)&c->addr)->sin6_port = htons((uint16_t)port);
    return MG_OK;
}

/* The resolver's answer (at once from /etc/hosts, or later). */
static void mg_sock_dns_cb(int result, struct evutil_addrinfo *res, void *arg) {
    mg_sock_dns_t *d = arg;
    mg_sock_t *s = d->s;
    mg_sconn_t *c;
    if (s == NULL || result == EVUTIL_EAI_CANCEL) {
        if (res)
            evutil_freeaddrinfo(res);
        free(d);
        return;
    }
    c = s->c;
    c->dns = NULL;
    d->result = result;
    if (result == 0 && mg_sock_pick_addr(c, res, d->port) != MG_OK)
        d->result = EVUTIL_EAI_NONAME;
    if (res)
        evutil_freeaddrinfo(res);
    d->done = 1;
    if (d->sync)
        return; /* mg_sock_resolve reads and frees it */
    if (d->result != 0) {
        lua_State *L = s->co->L;
        c->alen = 0;
        lua_pushnil(L);
        lua_pushfstring(L, "%s could not be resolved (%s)", d->host,
                        evutil_gai_strerror(d->result));
        free(d);
        mg_tm_stop(&c->tm);
        s->op = OP_NONE;
        mg_sock_close_conn(s);
        mg_sock_unanchor(s, L);
        mg_lua_co_resume(s->co, 2);
        return;
    }
    free(d);
    mg_tm_stop(&c->tm);
    s->op = OP_CONNECT;
    {
        lua_State *L = s->co->L;
        mg_co_t *co = s->co;
        int n = mg_sock_connect_start(s, L);
        if (n < 0)
            return;
        s->op = OP_NONE;
        mg_sock_unanchor(s, L);
        mg_lua_co_resume(co, n);
    }
}

/* A name: evdns (the worker's resolver: /etc/resolv.conf and /etc/hosts,
 * read once, at the first name). As connect_start. */
static int mg_sock_resolve(mg_sock_t *s, lua_State *L, const char *host, int port) {
    struct evutil_addrinfo hints;
    mg_sock_dns_t *d;
    struct evdns_getaddrinfo_request *req;
    if (mg_sock_dnsbase == NULL)
        mg_sock_dnsbase = evdns_base_new(mg_worker.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (mg_sock_dnsbase == NULL) {
        mg_sock_close_conn(s);
        return mg_sock_nil_err(L, "no resolver (cannot read /etc/resolv.conf)");
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        mg_sock_close_conn(s);
        return mg_sock_nil_err(L, "no memory");
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    d->s = s;
    d->sync = 1;
    d->port = port;
    snprintf(d->host, sizeof(d->host), "%s", host);
    req = evdns_getaddrinfo(mg_sock_dnsbase, host, NULL, &hints, mg_sock_dns_cb, d);
    if (d->done) { /* answered at once (/etc/hosts) or failed */
        int r = d->result;
        free(d);
        if (r != 0) {
            mg_sock_close_conn(s);
            lua_pushnil(L);
            lua_pushfstring(L, "%s could not be resolved (%s)", host, evutil_gai_strerror(r));
            return 2;
        }
        return mg_sock_connect_start(s, L);
    }
    if (req == NULL) { /* no answer and no request: should not happen */
        free(d);
        mg_sock_close_conn(s);
        return mg_sock_nil_err(L, "resolver failed");
    }
    d->sync = 0;
    d->req = req;
    s->c->dns = d;
    s->op = OP_RESOLVE;
    mg_sock_wait(s, s->to_connect);
    return -1;
}

/* ---- TLS ---- */

static void mg_sock_push_session(lua_State *L, void *sess) {
    mg_sock_sess_t *u = lua_newuserdata(L, sizeof(*u));
    u->sess = sess;
    luaL_getmetatable(L, MG_SOCK_SESS_MT);
    lua_setmetatable(L, -2);
}

static int mg_sock_handshake_step(mg_sock_t *s, lua_State *L) {
    mg_sconn_t *c = s->c;
    int rc = mg_io_handshake(&c->io);
    if (rc == MG_AGAIN) {
        mg_sock_wait(s, s->to_connect);
        return -1;
    }
    if (rc == MG_OK) {
        void *sess = s->want_session ? mg_io_tls_session(&c->io) : NULL;
        c->tls_done = 1;
        if (sess)
            mg_sock_push_session(L, sess);
        else
            lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    {
        long v = SSL_get_verify_result(c->io.ctx);
        if (s->verify && v != X509_V_OK) /* OpenResty's "N: reason" */
            lua_pushfstring(L, "%d: %s", (int)v, X509_verify_cert_error_string(v));
        else
            lua_pushliteral(L, "handshake failed");
    }
    mg_sock_close_conn(s);
    return 2;
}

/* ---- send ---- */

static int mg_sock_send_step(mg_sock_t *s, lua_State *L) {
    mg_sconn_t *c = s->c;
    while (c->wb && evbuffer_get_length(c->wb)) {
        int n = mg_io_write_evbuffer(&c->io, c->wb);
        if (n < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                mg_sock_wait(s, s->to_send);
                return -1;
            }
            lua_pushnil(L);
            mg_sock_push_errno(L, e); /* "broken pipe", "connection reset by peer" */
            mg_sock_close_conn(s);
            return 2;
        }
    }
    lua_pushinteger(L, (lua_Integer)s->sent);
    return 1;
}

/* ---- receive ---- */

/* One read into rb: > 0 bytes, 0 the end, -1 errno (EAGAIN: nothing now). */
static ssize_t mg_sock_fill(mg_sconn_t *c) {
    struct evbuffer_iovec v;
    size_t want;
    ssize_t n;
    if (c->rb == NULL && (c->rb = evbuffer_new()) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (evbuffer_reserve_space(c->rb, MG_SOCK_CHUNK, &v, 1) < 1) {
        errno = ENOMEM;
        return -1;
    }
    want = v.iov_len < MG_SOCK_CHUNK ? v.iov_len : MG_SOCK_CHUNK;
    n = mg_io_read(&c->io, v.iov_base, want);
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(c->rb, &v, 1);
    }
    /* a short read emptied the socket: the next bytes come with an edge */
    if (!c->io.tls && ((n > 0 && (size_t)n < want) || (n < 0 && errno == EAGAIN)))
        c->rd_ready = 0;
    return n;
}

/* Pushes a "*l" line of n bytes (the LF not counted) without its CRs. */
static void mg_sock_push_line(lua_State *L, struct evbuffer *b, size_t n) {
    const char *p = n ? (const char *)evbuffer_pullup(b, (ssize_t)n) : "";
    size_t k = n;
    if (k && p[k - 1] == '\r')
        k--;
    if (memchr(p, '\r', k) == NULL) {
        lua_pushlstring(L, p, k);
    } else {
        luaL_Buffer lb;
        luaL_buffinit(L, &lb);
        for (size_t i = 0; i < k; i++)
            if (p[i] != '\r')
                luaL_addchar(&lb, p[i]);
        luaL_pushresult(&lb);
    }
    evbuffer_drain(b, n + 1);
}

/* The first match of pat in b at or after *scan, or -1; *scan moves on
 * past the bytes that cannot start one. */
static ssize_t mg_sock_search(struct evbuffer *b, size_t *scan, const char *pat, size_t plen) {
    struct evbuffer_ptr start, at;
    size_t len = evbuffer_get_length(b);
    if (len < plen)
        return -1;
    if (*scan > len - plen)
        *scan = len - plen;
    if (evbuffer_ptr_set(b, &start, *scan, EVBUFFER_PTR_SET) != 0)
        return -1;
    at = evbuffer_search(b, pat, plen, &start);
    if (at.pos >= 0)
        return at.pos;
    *scan = len - plen + 1;
    return -1;
}

/* What rb gives the receive in progress now: the results pushed (1), or 0
 * (more is needed). */
static int mg_sock_recv_try(mg_sock_t *s, lua_State *L) {
    mg_sconn_t *c = s->c;
    size_t len = mg_sock_rlen(c);
    ssize_t p;
    switch (s->rmode) {
    case R_SIZE:
        if (len < s->rsize)
            return 0;
        mg_sock_take(L, c->rb, s->rsize);
        return 1;
    case R_ANY:
        if (len == 0)
            return 0;
        mg_sock_take(L, c->rb, len < s->rsize ? len : s->rsize);
        return 1;
    case R_ALL:
        if (!c->eof)
            return 0;
        mg_sock_take(L, c->rb, len);
        return 1;
    case R_LINE:
        if (len == 0 || (p = mg_sock_search(c->rb, &c->scan, "\n", 1)) < 0)
            return 0;
        c->scan = 0;
        mg_sock_push_line(L, c->rb, (size_t)p);
        return 1;
    default: { /* R_UNTIL */
        mg_sock_until_t *u = s->until;
        if (u->done) {
            u->done = 0;
            lua_pushnil(L);
            return 1;
        }
        p = len ? mg_sock_search(c->rb, &c->scan, u->pat, u->plen) : -1;
        if (p >= 0) {
            if (s->rsize == 0) { /* the data before the pattern */
                c->scan = 0;
                if (u->inclusive) {
                    mg_sock_take(L, c->rb, (size_t)p + u->plen);
                } else {
                    mg_sock_take(L, c->rb, (size_t)p);
                    evbuffer_drain(c->rb, u->plen);
                }
                return 1;
            }
            if (p > 0) { /* size mode: a chunk before the pattern */
                size_t k = (size_t)p < s->rsize ? (size_t)p : s->rsize;
                mg_sock_take(L, c->rb, k);
                c->scan = 0;
                return 1;
            }
            c->scan = 0;
            if (u->inclusive) {
                mg_sock_take(L, c->rb, u->plen);
                u->done = 1;
            } else {
                evbuffer_drain(c->rb, u->plen);
                lua_pushnil(L); /* the pattern: this part ends */
            }
            return 1;
        }
        if (s->rsize && len >= u->plen && len - (u->plen - 1) >= s->rsize) {
            mg_sock_take(L, c->rb, s->rsize);
            c->scan = 0;
            return 1;
        }
        return 0;
    }
    }
}

/* nil, err, and what was received as the partial result */
static int mg_sock_recv_fail(mg_sock_t *s, lua_State *L, const char *err, int e) {
    mg_sconn_t *c = s->c;
    lua_pushnil(L);
    if (err)
        lua_pushstring(L, err);
    else
        mg_sock_push_errno(L, e);
    if (c && c->rb) {
        c->scan = 0;
        mg_sock_take(L, c->rb, evbuffer_get_length(c->rb));
    } else {
        lua_pushliteral(L, "");
    }
    return 3;
}

static int mg_sock_recv_step(mg_sock_t *s, lua_State *L) {
    mg_sconn_t *c = s->c;
    for (;;) {
        size_t len;
        ssize_t n;
        if (mg_sock_recv_try(s, L))
            return 1;
        if (c->eof)
            return mg_sock_recv_fail(s, L, "closed", 0);
        len = mg_sock_rlen(c);
        if ((s->rmode == R_LINE || s->rmode == R_UNTIL) && len > MG_SOCK_LINE_MAX) {
            c->dubious = 1;
            return mg_sock_recv_fail(s, L, "line too long", 0);
        }
        if (len > MG_SOCK_READ_MAX) {
            c->dubious = 1;
            return mg_sock_recv_fail(s, L, "too large", 0);
        }
        if (!c->io.tls && !c->rd_ready && !c->peer_closed) {
            /* nothing came since a read emptied the socket: no recv() to
             * learn it, the next bytes come with a read edge */
            mg_sock_wait(s, s->to_read);
            return -1;
        }
        n = mg_sock_fill(c);
        if (n > 0)
            continue;
        if (n == 0) {
            c->eof = 1;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            mg_sock_wait(s, s->to_read);
            return -1;
        }
        {
            int e = errno, r;
            r = mg_sock_recv_fail(s, L, NULL, e);
            mg_sock_close_conn(s);
            return r;
        }
    }
}

/* ---- running a wait ---- */

/* Pushes the results of the wait in progress once it ended, or -1. */
static int mg_sock_step(mg_sock_t *s, lua_State *L) {
    switch (s->op) {
    case OP_CONNECT: return mg_sock_connect_step(s, L);
    case OP_HANDSHAKE: return mg_sock_handshake_step(s, L);
    case OP_SEND: return mg_sock_send_step(s, L);
    default: return mg_sock_recv_step(s, L);
    }
}

static int mg_sock_timed_out(mg_sock_t *s, lua_State *L) {
    int op = s->op;
    if (op == OP_RECV) {
        s->c->dubious = 1; /* the socket stays open: receive may be called again */
        return mg_sock_recv_fail(s, L, "timeout", 0);
    }
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    if (op == OP_SEND)
        s->c->dubious = 1;
    else
        mg_sock_close_conn(s); /* connect, resolve, handshake */
    return 2;
}

/* An event for the waiting coroutine: the step (or the timeout), then the
 * coroutine resumes with what it pushed. */
static void mg_sock_run(mg_sock_t *s, int timeout) {
    mg_co_t *co = s->co;
    lua_State *L = co->L;
    int n = timeout ? mg_sock_timed_out(s, L) : mg_sock_step(s, L);
    if (n < 0)
        return;
    if (s->c)
        mg_tm_stop(&s->c->tm);
    s->op = OP_NONE;
    mg_sock_unanchor(s, L);
    mg_lua_co_resume(co, n);
}

/* Called by a method with its first results pending: returns them, or
 * yields until the wait ends. */
static int mg_sock_finish(mg_sock_t *s, lua_State *L, int n) {
    if (n >= 0) {
        if (s->c)
            mg_tm_stop(&s->c->tm);
        s->op = OP_NONE;
        return n;
    }
    mg_sock_anchor(s, L);
    s->co->wait = MG_W_SOCK;
    return lua_yield(L, 0);
}

/* ---- the Lua methods ---- */

/* The socket at index 1. The methods, __tostring and tcp() carry the
 * metatable as their upvalue: a pointer compare, no registry lookup. */
static mg_sock_t *mg_sock_check(lua_State *L) {
    mg_sock_t *s = lua_touserdata(L, 1);
    if (s == NULL || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typerror(L, 1, MG_SOCK_MT);
    lua_pop(L, 1);
    return s;
}

/* The socket's coroutine for a method that waits: NULL (nil, err pushed)
 * when it belongs to another one or waits already. */
static mg_co_t *mg_sock_owner(lua_State *L, mg_sock_t *s, const char *what) {
    mg_co_t *co = mg_lua_co_check(L, what);
    if (s->co && s->co != co) {
        mg_sock_nil_err(L, "bad request"); /* OpenResty: another request's socket */
        return NULL;
    }
    if (s->op != OP_NONE) {
        mg_sock_nil_err(L, "socket busy");
        return NULL;
    }
    if (s->co == NULL) {
        s->co = co;
        s->prev = NULL;
        s->next = co->socks;
        if (co->socks)
            co->socks->prev = s;
        co->socks = s;
    }
    return co;
}

static int mg_sock_new(lua_State *L) {
    mg_sock_t *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    s->ref = s->uref = LUA_NOREF;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setmetatable(L, -2);
    return 1;
}

static int mg_sock_opt_int(lua_State *L, int t, const char *k, int dflt) {
    int v = dflt;
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "bad \"%s\" option value", k);
        v = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* sock:connect(host, port, opts?) / sock:connect("unix:/path", opts?):
 * opts.pool (the pool's name, default "host:port"), opts.pool_size */
static int mg_sock_connect(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    size_t hl;
    const char *host = luaL_checklstring(L, 2, &hl);
    int is_unix = strncmp(host, "unix:", 5) == 0;
    int port = 0, oidx = is_unix ? 3 : 4;
    mg_co_t *co;
    mg_sconn_t *c;
    char key[MG_SOCK_KEY], h[256];
    unsigned char ip[16];

    if (!is_unix) {
        port = (int)luaL_checkinteger(L, 3);
        if (port <= 0 || port > 65535) {
            lua_pushnil(L);
            lua_pushfstring(L, "bad port number: %d", port);
            return 2;
        }
    }
    if ((co = mg_sock_owner(L, s, "sock:connect")) == NULL)
        return 2;
    mg_sock_close_conn(s); /* a connection it had goes first */
    s->pool_size = 0;
    if (hl == 0 || hl >= sizeof(h) || memchr(host, '\0', hl))
        return mg_sock_nil_err(L, "bad host");
    if (is_unix)
        snprintf(key, sizeof(key), "%s", host);
    else
        snprintf(key, sizeof(key), "%s:%d", host, port);
    if (lua_istable(L, oidx)) {
        lua_getfield(L, oidx, "pool");
        if (lua_isstring(L, -1))
            snprintf(key, sizeof(key), "%s", lua_tostring(L, -1));
        else if (!lua_isnil(L, -1))
            return luaL_error(L, "bad \"pool\" option type: %s", luaL_typename(L, -1));
        lua_pop(L, 1);
        s->pool_size = mg_sock_opt_int(L, oidx, "pool_size", 0);
        if (s->pool_size < 0)
            return luaL_error(L, "bad \"pool_size\" option value: %d", s->pool_size);
    }
    if ((c = mg_spool_get(key)) != NULL) {
        c->reused++;
        c->s = s;
        s->c = c;
        lua_pushinteger(L, 1);
        return 1;
    }
    if ((c = mg_sconn_new()) == NULL)
        return mg_sock_nil_err(L, "no memory");
    memcpy(c->key, key, sizeof(key));
    c->s = s;
    s->c = c;
    memcpy(h, host, hl);
    h[hl] = '\0';
    if (is_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&c->addr;
        if (hl - 5 >= sizeof(un->sun_path) || hl == 5) {
            mg_sock_close_conn(s);
            return mg_sock_nil_err(L, "bad unix socket path");
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, h + 5, hl - 5 + 1);
        c->alen = (socklen_t)sizeof(*un);
        return mg_sock_finish(s, L, mg_sock_connect_start(s, L));
    }
    if (h[0] == '[' && h[hl - 1] == ']') { /* "[::1]" */
        memmove(h, h + 1, hl - 2);
        h[hl - 2] = '\0';
    }
    if (inet_pton(AF_INET, h, ip) == 1) {
        struct sockaddr_in *a = (struct sockaddr_in *)&c->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        memcpy(&a->sin_addr, ip, 4);
        c->alen = sizeof(*a);
        return mg_sock_finish(s, L, mg_sock_connect_start(s, L));
    }
    if (inet_pton(AF_INET6, h, ip) == 1) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&c->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        memcpy(&a->sin6_addr, ip, 16);
        c->alen = sizeof(*a);
        return mg_sock_finish(s, L, mg_sock_connect_start(s, L));
    }
    return mg_sock_finish(s, L, mg_sock_resolve(s, L, h, port));
}

/* sock:sslhandshake(reused_session?, server_name?, ssl_verify?): the
 * session (a userdata to pass to a later handshake), or true when
 * reused_session is false or the server gave none that can be resumed */
static int mg_sock_sslhandshake(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    const char *sni = luaL_optstring(L, 3, NULL);
    int verify = lua_toboolean(L, 4), fd;
    void *ctx, *sess = NULL;
    mg_sconn_t *c;

    if (mg_sock_owner(L, s, "sock:sslhandshake") == NULL)
        return 2;
    if ((c = s->c) == NULL)
        return mg_sock_nil_err(L, "closed");
    s->want_session = !(lua_isboolean(L, 2) && !lua_toboolean(L, 2));
    s->verify = verify;
    if (lua_isuserdata(L, 2)) {
        mg_sock_sess_t *u = luaL_checkudata(L, 2, MG_SOCK_SESS_MT);
        sess = u->sess;
    }
    if (c->io.tls) { /* a pooled TLS connection: done before */
        if (!c->tls_done)
            return mg_sock_nil_err(L, "handshake failed");
        lua_pushboolean(L, 1);
        return 1;
    }
    if (verify) {
        ctx = mg_io_tls_client_default();
    } else {
        if (mg_sock_noverify == NULL)
            mg_sock_noverify = mg_io_tls_client_ctx_new(0);
        ctx = mg_sock_noverify;
    }
    if (ctx == NULL)
        return mg_sock_nil_err(L, "no TLS client context");
    fd = c->io.fd;
    if (mg_io_tls_client(&c->io, fd, ctx, sni, sess) != MG_OK) {
        mg_io_tcp(&c->io, fd);
        return mg_sock_nil_err(L, "handshake failed");
    }
    s->op = OP_HANDSHAKE;
    return mg_sock_finish(s, L, mg_sock_handshake_step(s, L));
}

/* Appends a send argument (a string, a number, or a table of them,
 * nested) to b; its length, or -1 (a bad element) */
static int mg_sock_add(lua_State *L, int idx, struct evbuffer *b, int depth) {
    size_t l;
    const char *p;
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        p = lua_tolstring(L, idx, &l);
        return evbuffer_add(b, p, l) == 0 ? 0 : -1;
    }
    if (t != LUA_TTABLE || depth > 16)
        return -1;
    for (int i = 1;; i++) {
        lua_rawgeti(L, idx, i);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        if (mg_sock_add(L, lua_gettop(L), b, depth + 1) != 0)
            return -1;
        lua_pop(L, 1);
    }
}

/* sock:send(data): the bytes sent */
static int mg_sock_send(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    int t = lua_type(L, 2);
    mg_sconn_t *c;
    size_t before;

    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TTABLE)
        return luaL_argerror(L, 2, "string, number or table expected");
    if (mg_sock_owner(L, s, "sock:send") == NULL)
        return 2;
    if ((c = s->c) == NULL)
        return mg_sock_nil_err(L, "closed");
    if (t != LUA_TTABLE && (c->wb == NULL || evbuffer_get_length(c->wb) == 0)) {
        /* the usual case: straight from the Lua string */
        size_t l;
        const char *p = lua_tolstring(L, 2, &l);
        ssize_t n = l ? mg_io_write(&c->io, p, l) : 0;
        if (n == (ssize_t)l) {
            lua_pushinteger(L, (lua_Integer)l);
            return 1;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            mg_sock_close_conn(s);
            lua_pushnil(L);
            mg_sock_push_errno(L, e);
            return 2;
        }
        if (n < 0)
            n = 0;
        if (c->wb == NULL && (c->wb = evbuffer_new()) == NULL)
            return mg_sock_nil_err(L, "no memory");
        evbuffer_add(c->wb, p + n, l - (size_t)n);
        s->sent = l;
    } else {
        if (c->wb == NULL && (c->wb = evbuffer_new()) == NULL)
            return mg_sock_nil_err(L, "no memory");
        before = evbuffer_get_length(c->wb);
        if (mg_sock_add(L, 2, c->wb, 0) != 0) {
            evbuffer_free(c->wb);
            c->wb = NULL;
            c->dubious = before != 0;
            return luaL_argerror(L, 2, "a table of strings and numbers expected");
        }
        s->sent = evbuffer_get_length(c->wb) - before;
    }
    s->op = OP_SEND;
    return mg_sock_finish(s, L, mg_sock_send_step(s, L));
}

static int mg_sock_recv_start(lua_State *L, mg_sock_t *s, int mode, size_t size,
                              mg_sock_until_t *u) {
    mg_sconn_t *c = s->c;
    if (c == NULL || (c->eof && mg_sock_rlen(c) == 0 && !(u && u->done)))
        return mg_sock_nil_err(L, "closed");
    s->op = OP_RECV;
    s->rmode = mode;
    s->rsize = size;
    s->until = u;
    return mg_sock_finish(s, L, mg_sock_recv_step(s, L));
}

/* sock:receive(size | "*l" | "*a") -> data | nil, err, partial */
static int mg_sock_receive(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    int mode = R_LINE;
    size_t size = 0;

    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        if (n < 0 || n > MG_SOCK_READ_MAX)
            return luaL_error(L, "sock:receive: size must be 0 .. %d", MG_SOCK_READ_MAX);
        mode = R_SIZE;
        size = (size_t)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *p = luaL_checkstring(L, 2);
        if (p[0] == '*' && p[1] == 'l' && p[2] == '\0')
            mode = R_LINE;
        else if (p[0] == '*' && p[1] == 'a' && p[2] == '\0')
            mode = R_ALL;
        else
            return luaL_argerror(L, 2, "bad pattern argument");
    }
    if (mg_sock_owner(L, s, "sock:receive") == NULL)
        return 2;
    if (mode == R_SIZE && size == 0 && s->c) {
        lua_pushliteral(L, "");
        return 1;
    }
    return mg_sock_recv_start(L, s, mode, size, NULL);
}

/* sock:receiveany(max): what has come, at most max bytes, once there is
 * at least one */
static int mg_sock_receiveany(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    lua_Number n = luaL_checknumber(L, 2);
    if (n <= 0 || n > MG_SOCK_READ_MAX)
        return luaL_error(L, "sock:receiveany: max must be 1 .. %d", MG_SOCK_READ_MAX);
    if (mg_sock_owner(L, s, "sock:receiveany") == NULL)
        return 2;
    return mg_sock_recv_start(L, s, R_ANY, (size_t)n, NULL);
}

/* the iterator of receiveuntil: upvalues socket, state */
static int mg_sock_until_iter(lua_State *L) {
    mg_sock_t *s = luaL_checkudata(L, lua_upvalueindex(1), MG_SOCK_MT);
    mg_sock_until_t *u = lua_touserdata(L, lua_upvalueindex(2));
    size_t size = 0;
    if (!lua_isnoneornil(L, 1)) {
        lua_Number n = luaL_checknumber(L, 1);
        if (n <= 0 || n > MG_SOCK_READ_MAX)
            return luaL_error(L, "receiveuntil iterator: size must be 1 .. %d", MG_SOCK_READ_MAX);
        size = (size_t)n;
    }
    lua_settop(L, 0);
    lua_pushvalue(L, lua_upvalueindex(1)); /* index 1: the socket, for the anchor */
    if (mg_sock_owner(L, s, "receiveuntil iterator") == NULL)
        return 2;
    if (s->uref == LUA_NOREF) {
        lua_pushvalue(L, lua_upvalueindex(2));
        s->uref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    {
        int n = mg_sock_recv_start(L, s, R_UNTIL, size, u);
        if (s->op == OP_NONE && s->uref != LUA_NOREF) {
            luaL_unref(L, LUA_REGISTRYINDEX, s->uref);
            s->uref = LUA_NOREF;
        }
        return n;
    }
}

/* sock:receiveuntil(pattern, opts?) -> iterator(size?) ; opts.inclusive */
static int mg_sock_receiveuntil(lua_State *L) {
    size_t pl;
    const char *pat;
    mg_sock_until_t *u;
    int incl = 0;
    mg_sock_check(L);
    pat = luaL_checklstring(L, 2, &pl);
    if (pl == 0 || pl > MG_SOCK_PATTERN_MAX)
        return luaL_argerror(L, 2, "pattern must be 1 .. 4096 bytes");
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "inclusive");
        if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
            return luaL_error(L, "bad \"inclusive\" option value type: %s", luaL_typename(L, -1));
        incl = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_pushvalue(L, 1);
    u = lua_newuserdata(L, sizeof(*u) + pl);
    u->plen = pl;
    u->inclusive = incl;
    u->done = 0;
    memcpy(u->pat, pat, pl);
    lua_pushcclosure(L, mg_sock_until_iter, 2);
    return 1;
}

static int mg_sock_timeout_arg(lua_State *L, int idx) {
    lua_Number n = luaL_optnumber(L, idx, 0);
    if (n < 0 || n > 2147483647.0)
        return luaL_error(L, "bad timeout value");
    return (int)n;
}

/* sock:settimeout(ms): connect, send and read; 0 or nil: the default (60 s) */
static int mg_sock_settimeout(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    s->to_connect = s->to_send = s->to_read = mg_sock_timeout_arg(L, 2);
    return 0;
}

static int mg_sock_settimeouts(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    s->to_connect = mg_sock_timeout_arg(L, 2);
    s->to_send = mg_sock_timeout_arg(L, 3);
    s->to_read = mg_sock_timeout_arg(L, 4);
    return 0;
}

/* sock:setkeepalive(idle_ms?, pool_size?): into the worker's pool; the
 * socket is closed either way */
static int mg_sock_setkeepalive(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    mg_sconn_t *c = s->c;
    lua_Number idle = luaL_optnumber(L, 2, MG_SOCK_IDLE);
    int size = (int)luaL_optinteger(L, 3, s->pool_size ? s->pool_size : MG_SOCK_POOL_SIZE);
    const char *why = NULL;

    if (idle < 0 || idle > 2147483647.0)
        return luaL_error(L, "bad timeout value");
    if (size <= 0)
        return luaL_error(L, "bad \"pool_size\" option value: %d", size);
    if (s->op != OP_NONE)
        return mg_sock_nil_err(L, "socket busy");
    if (c == NULL)
        return mg_sock_nil_err(L, "closed");
    if (mg_sock_rlen(c) || mg_io_pending(&c->io))
        why = "unread data in buffer";
    else if (c->eof || c->peer_closed || c->dubious || (c->io.tls && !c->tls_done))
        why = "closed";
    else if (c->wb && evbuffer_get_length(c->wb))
        why = "closed";
    else if (!c->io.tls && c->rd_ready) { /* a syscall only when bytes may wait */
        char b;
        ssize_t n = recv(c->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0)
            why = "connection in dubious state";
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            why = "closed";
        else
            c->rd_ready = 0;
    }
    if (why) {
        mg_sock_close_conn(s);
        return mg_sock_nil_err(L, why);
    }
    c->s = NULL;
    s->c = NULL;
    c->scan = 0;
    if (mg_worker.stopping)
        mg_sconn_free(c);
    else
        mg_spool_put(c, (int)idle, size);
    lua_pushinteger(L, 1);
    return 1;
}

static int mg_sock_getreusedtimes(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    if (s->c == NULL)
        return mg_sock_nil_err(L, "closed");
    lua_pushinteger(L, s->c->reused);
    return 1;
}

static int mg_sock_close(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    if (s->op != OP_NONE)
        return mg_sock_nil_err(L, "socket busy");
    if (s->c == NULL)
        return mg_sock_nil_err(L, "closed");
    mg_sock_close_conn(s);
    lua_pushinteger(L, 1);
    return 1;
}

static int mg_sock_gc(lua_State *L) {
    mg_sock_t *s = lua_touserdata(L, 1);
    mg_sock_unlink(s);
    mg_sock_close_conn(s);
    return 0;
}

static int mg_sock_tostring(lua_State *L) {
    mg_sock_t *s = mg_sock_check(L);
    lua_pushfstring(L, "tcp socket (%s)", s->c ? s->c->key : "closed");
    return 1;
}

static int mg_sock_sess_gc(lua_State *L) {
    mg_sock_sess_t *u = lua_touserdata(L, 1);
    if (u->sess)
        mg_io_tls_session_free(u->sess);
    u->sess = NULL;
    return 0;
}

void mg_lua_socket_co_end(mg_co_t *co) {
    while (co->socks) {
        mg_sock_t *s = co->socks;
        mg_sock_unanchor(s, co->L);
        s->op = OP_NONE;
        mg_sock_unlink(s);
        mg_sock_close_conn(s);
    }
}

static const luaL_Reg mg_sock_methods[] = {
    {"connect", mg_sock_connect},
    {"sslhandshake", mg_sock_sslhandshake},
    {"send", mg_sock_send},
    {"receive", mg_sock_receive},
    {"receiveany", mg_sock_receiveany},
    {"receiveuntil", mg_sock_receiveuntil},
    {"settimeout", mg_sock_settimeout},
    {"settimeouts", mg_sock_settimeouts},
    {"setkeepalive", mg_sock_setkeepalive},
    {"getreusedtimes", mg_sock_getreusedtimes},
    {"close", mg_sock_close},
    {NULL, NULL},
};

void mg_lua_inject_socket_api(lua_State *L) {
    int mt;
    luaL_newmetatable(L, MG_SOCK_MT);
    mt = lua_gettop(L);
    lua_newtable(L);
    for (const luaL_Reg *r = mg_sock_methods; r->name; r++) {
        lua_pushvalue(L, mt);
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_setfield(L, mt, "__index");
    lua_pushcfunction(L, mg_sock_gc);
    lua_setfield(L, mt, "__gc");
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, mg_sock_tostring, 1);
    lua_setfield(L, mt, "__tostring");
    luaL_newmetatable(L, MG_SOCK_SESS_MT);
    lua_pushcfunction(L, mg_sock_sess_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, mg_sock_new, 1);
    lua_setfield(L, -2, "tcp");
    lua_remove(L, mt);
    lua_setfield(L, -2, "socket"); /* core.socket */
}
