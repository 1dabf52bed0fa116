/*
 * acme_https.c -- the ACME process's HTTPS client: one request per
 * connection (Connection: close), blocking, since this process has no
 * event loop to keep free; every step is bounded: connect, each read and
 * write by MG_ACME_IO_TIMEOUT, the whole exchange by MG_ACME_DEADLINE, the
 * response by MG_ACME_RESP_MAX bytes. The server is verified against the
 * configured CA file (or the system store) and by its name or IP address.
 *
 *   https_init(ca_file|nil) -> true, or nil, reason
 *   https(method, url, body|nil, content_type|nil, accept|nil)
 *       -> status, headers (lower-case names; repeated ones joined by ", "),
 *          body; or nil, reason
 */
#include "app/acme_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MG_ACME_IO_TIMEOUT 10          /* s, connect and each read or write */
#define MG_ACME_DEADLINE 30.0          /* s, one whole exchange */
#define MG_ACME_RESP_MAX (1024 * 1024) /* bytes of response, head and body */

static SSL_CTX *mg_acme_https_ctx;

static int mg_acme_https_init(lua_State *L) {
    const char *ca = luaL_optstring(L, 1, NULL);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        goto fail;
    if (ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1
           : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        char buf[256];
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        ERR_clear_error();
        SSL_CTX_free(ctx);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", ca ? ca : "the system CA store", buf);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_free(mg_acme_https_ctx);
    mg_acme_https_ctx = ctx;
    lua_pushboolean(L, 1);
    return 1;
fail:
    SSL_CTX_free(ctx);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot create the TLS client context");
    return 2;
}

typedef struct {
    char host[256];
    char port[8];
    const char *path;
} mg_acme_url_t;

static int mg_acme_url_parse(const char *url, mg_acme_url_t *u) {
    const char *p, *h, *e;
    size_t hl;
    if (strncmp(url, "https://", 8) != 0)
        return MG_ERR;
    h = url + 8;
    p = strchr(h, '/');
    e = p ? p : h + strlen(h);
    u->path = p ? p : "/";
    snprintf(u->port, sizeof(u->port), "443");
    if (*h == '[') { /* an IPv6 literal */
        const char *rb = memchr(h, ']', (size_t)(e - h));
        if (rb == NULL)
            return MG_ERR;
        hl = (size_t)(rb - h - 1);
        if (hl == 0 || hl >= sizeof(u->host))
            return MG_ERR;
        memcpy(u->host, h + 1, hl);
        u->host[hl] = '\0';
        h = rb + 1;
        if (h < e && *h != ':')
            return MG_ERR;
    } else {
        const char *c = memchr(h, ':', (size_t)(e - h));
        hl = (size_t)((c ? c : e) - h);
        if (hl == 0 || hl >= sizeof(u->host))
            return MG_ERR;
        memcpy(u->host, h, hl);
        u->host[hl] = '\0';
        h = c ? c : e;
    }
    if (h < e) { /* ":port" */
        size_t pl = (size_t)(e - h - 1);
        if (pl == 0 || pl >= sizeof(u->port) || strspn(h + 1, "0123456789") < pl)
            return MG_ERR;
        memcpy(u->port, h + 1, pl);
        u->port[pl] = '\0';
    }
    return MG_OK;
}

static double mg_acme_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A connected blocking socket with read/write timeouts, or -1 (err set). */
static int mg_acme_connect(const mg_acme_url_t *u, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL, *ai;
    struct timeval tv = {MG_ACME_IO_TIMEOUT, 0};
    int fd = -1, rc, e = 0;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        struct pollfd pf;
        socklen_t el = sizeof(e);
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        if (e == EINPROGRESS) {
            pf.fd = fd;
            pf.events = POLLOUT;
            rc = poll(&pf, 1, MG_ACME_IO_TIMEOUT * 1000);
            if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
                break;
            if (rc == 0)
                e = ETIMEDOUT;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "connect %s:%s: %s", u->host, u->port, strerror(e));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

static void mg_acme_ssl_err(SSL *ssl, int rc, const char *what, char *err, size_t errlen) {
    char buf[256];
    int e = SSL_get_error(ssl, rc);
    unsigned long q = ERR_get_error();
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK)
        snprintf(buf, sizeof(buf), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (q)
        ERR_error_string_n(q, buf, sizeof(buf));
    else if (e == SSL_ERROR_SYSCALL && errno)
        snprintf(buf, sizeof(buf), "%s", errno == EAGAIN ? "timed out" : strerror(errno));
    else
        snprintf(buf, sizeof(buf), "connection closed");
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s", what, buf);
}

/* Decodes a chunked body in place: the new length, or -1. */
static long mg_acme_unchunk(char *b, size_t n) {
    size_t r = 0, w = 0;
    for (;;) {
        char *end;
        unsigned long sz;
        char *eol = memmem(b + r, n - r, "\r\n", 2);
        if (eol == NULL)
            return -1;
        sz = strtoul(b + r, &end, 16);
        if (end == b + r)
            return -1;
        r = (size_t)(eol - b) + 2;
        if (sz == 0)
            return (long)w;
        if (sz > n - r || n - r - sz < 2)
            return -1;
        memmove(b + w, b + r, sz);
        w += sz;
        r += sz + 2;
    }
}

/* Pushes the headers table (at most 100 lines) and returns the body's
 * offset; or -1. */
static long mg_acme_parse_head(lua_State *L, char *b, size_t n, int *status, int *chunked,
                               long *clen) {
    char *he = memmem(b, n, "\r\n\r\n", 4), *p, *eol;
    int lines = 0;
    if (he == NULL || n < 12 || memcmp(b, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(b + 9);
    *chunked = 0;
    *clen = -1;
    if (*status < 100 || *status > 599)
        return -1;
    lua_newtable(L);
    p = (char *)memchr(b, '\n', (size_t)(he + 2 - b)) + 1; /* past the status line */
    while (p < he + 2 && ++lines <= 100) {
        char *c, *v, *ve;
        eol = memmem(p, (size_t)(he + 2 - p), "\r\n", 2);
        c = memchr(p, ':', (size_t)(eol - p));
        if (c == NULL)
            return -1;
        for (char *q = p; q < c; q++)
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q + 32);
        for (v = c + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
            ;
        for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
            ;
        if (MG_NAME_IS(p, (size_t)(c - p), "transfer-encoding") &&
            memmem(v, (size_t)(ve - v), "chunked", 7))
            *chunked = 1;
        if (MG_NAME_IS(p, (size_t)(c - p), "content-length"))
            *clen = strtol(v, NULL, 10);
        lua_pushlstring(L, p, (size_t)(c - p));
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) { /* repeated (Link): joined */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v, (size_t)(ve - v));
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v, (size_t)(ve - v));
        }
        lua_rawset(L, -3);
        p = eol + 2;
    }
    return (long)(he + 4 - b);
}

static int mg_acme_https(lua_State *L) {
    const char *method = luaL_checkstring(L, 1), *url = luaL_checkstring(L, 2);
    size_t bl = 0;
    const char *body = luaL_optlstring(L, 3, NULL, &bl);
    const char *ctype = luaL_optstring(L, 4, NULL), *accept = luaL_optstring(L, 5, "*/*");
    mg_acme_url_t u;
    char err[512], head[1024], *resp = NULL;
    size_t rl = 0;
    int fd = -1, rc, hl, status, chunked, ok = 0;
    long boff, clen;
    double deadline = mg_acme_clock() + MG_ACME_DEADLINE;
    SSL *ssl = NULL;
    struct in6_addr a6;

    if (mg_acme_https_ctx == NULL)
        return luaL_error(L, "acme https: https_init first");
    if (mg_acme_url_parse(url, &u) != MG_OK) {
        snprintf(err, sizeof(err), "%s: not an https:// URL", url);
        goto out;
    }
    fd = mg_acme_connect(&u, err, sizeof(err));
    if (fd < 0)
        goto out;
    ssl = SSL_new(mg_acme_https_ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd)) {
        snprintf(err, sizeof(err), "%s: SSL_new failed", u.host);
        goto out;
    }
    if (inet_pton(AF_INET, u.host, &a6) == 1 || inet_pton(AF_INET6, u.host, &a6) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u.host);
    } else {
        SSL_set_tlsext_host_name(ssl, u.host);
        SSL_set1_host(ssl, u.host);
    }
    rc = SSL_connect(ssl);
    if (rc != 1) {
        char what[300];
        snprintf(what, sizeof(what), "TLS with %s:%s", u.host, u.port);
        mg_acme_ssl_err(ssl, rc, what, err, sizeof(err));
        goto out;
    }
    hl = snprintf(head, sizeof(head),
                  "%s %s HTTP/1.1\r\nHost: %s%s%s\r\nUser-Agent: moongate-acme/" MG_VERSION
                  "\r\nAccept: %s\r\nConnection: close\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                  method, u.path, u.host, strcmp(u.port, "443") ? ":" : "",
                  strcmp(u.port, "443") ? u.port : "", accept, bl, ctype ? "Content-Type: " : "",
                  ctype ? ctype : "", ctype ? "\r\n" : "");
    if (hl <= 0 || (size_t)hl >= sizeof(head)) {
        snprintf(err, sizeof(err), "%s: URL too long", url);
        goto out;
    }
    if ((rc = SSL_write(ssl, head, hl)) != hl ||
        (bl > 0 && (rc = SSL_write(ssl, body, (int)bl)) != (int)bl)) {
        mg_acme_ssl_err(ssl, rc, "sending the request", err, sizeof(err));
        goto out;
    }
    resp = malloc(MG_ACME_RESP_MAX);
    if (resp == NULL) {
        snprintf(err, sizeof(err), "out of memory");
        goto out;
    }
    for (;;) { /* to the end of the stream: Connection: close */
        if (rl == MG_ACME_RESP_MAX) {
            snprintf(err, sizeof(err), "%s: response over %d bytes", url, MG_ACME_RESP_MAX);
            goto out;
        }
        if (mg_acme_clock() > deadline) {
            snprintf(err, sizeof(err), "%s: no complete response within %.0f s", url,
                     MG_ACME_DEADLINE);
            goto out;
        }
        rc = SSL_read(ssl, resp + rl, (int)(MG_ACME_RESP_MAX - rl));
        if (rc > 0) {
            rl += (size_t)rc;
            continue;
        }
        if (SSL_get_error(ssl, rc) == SSL_ERROR_ZERO_RETURN ||
            (SSL_get_error(ssl, rc) == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 &&
             errno != EAGAIN && rl > 0))
            break; /* close_notify, or a plain FIN after the response */
        mg_acme_ssl_err(ssl, rc, "reading the response", err, sizeof(err));
        goto out;
    }
    ERR_clear_error();
    boff = mg_acme_parse_head(L, resp, rl, &status, &chunked, &clen);
    if (boff < 0) {
        snprintf(err, sizeof(err), "%s: malformed response head", url);
        goto out;
    }
    if (strcmp(method, "HEAD") == 0 || status == 204 || status == 304) {
        rl = (size_t)boff; /* no body, whatever Content-Length says */
    } else if (chunked) {
        long n = mg_acme_unchunk(resp + boff, rl - (size_t)boff);
        if (n < 0) {
            snprintf(err, sizeof(err), "%s: malformed chunked body", url);
            goto out;
        }
        rl = (size_t)boff + (size_t)n;
    } else if (clen >= 0) {
        if ((size_t)clen > rl - (size_t)boff) {
            snprintf(err, sizeof(err), "%s: body shorter than its Content-Length", url);
            goto out;
        }
        rl = (size_t)boff + (size_t)clen;
    }
    lua_pushinteger(L, status);
    lua_insert(L, -2);
    lua_pushlstring(L, resp + boff, rl - (size_t)boff);
    ok = 1;
out:
    if (ssl) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    if (fd >= 0)
        close(fd);
    free(resp);
    ERR_clear_error();
    if (ok)
        return 3;
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

void mg_acme_https_open(lua_State *L) {
    lua_pushcfunction(L, mg_acme_https_init);
    lua_setfield(L, -2, "https_init");
    lua_pushcfunction(L, mg_acme_https);
    lua_setfield(L, -2, "https");
}
