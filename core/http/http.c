/*
 * http.c -- the HTTP/1.1 session: a client connection (reading and writing
 * through its transport, driving llhttp, pipelining one request at a time
 * with responses in order, the per-connection timeouts, a lingering close,
 * the hand-over of an upgrade), request memory and header lookup, the
 * access-log line, and the sink every request of the session gets
 * (mg_http_h1_ops). The parser's callbacks and head checks are
 * http_parse.c, response framing http_resp.c. Routing, access and targets
 * are the gateway's: this file calls up only through mg_http_hooks and
 * r->target.
 *
 * Lifetimes: a connection is freed only from the event loop (conn_free via
 * the deferred-close path), never inside a callback chain that may still
 * use it. A request belongs to its connection; when the client goes away
 * while a Lua handler still runs, the handler's coroutine owns it until it
 * ends (mg_req_target_done frees it then).
 */
#include "http/http_int.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <lauxlib.h>

static void mg_http_conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void mg_http_conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void mg_http_conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void mg_http_conn_tm_cb(mg_tm_t *t, void *arg);
static void mg_http_conn_advance(mg_conn_t *c);
static void mg_http_conn_exec(mg_conn_t *c, const char *data, size_t len);
static void mg_http_conn_close_later(mg_conn_t *c);
static void mg_http_conn_at_eof(mg_conn_t *c);
static const mg_req_tls_t *mg_http_h1_tls_info(const mg_req_t *r);
static int mg_http_conn_h2_probe(mg_conn_t *c, const char *data, size_t n);

static mg_conn_t *mg_http_conns; /* every open connection, for a graceful stop */

const mg_http_hooks_t *mg_http_hooks;

void mg_http_set_hooks(const mg_http_hooks_t *h) { mg_http_hooks = h; }

/* Requests are reused from a small free list: no malloc per request. */
static mg_req_t *mg_req_free_list;
static int mg_req_free_count;

/* ---- request memory ---- */

mg_req_t *mg_req_new(mg_conn_t *c) { return mg_req_alloc(c, &mg_http_h1_ops, c->lidx); }

mg_req_t *mg_req_alloc(void *sess, const mg_http_sess_ops_t *ops, int lidx) {
    mg_gen_t *g = mg_gen_current;
    mg_req_t *r = mg_req_free_list;
    size_t cap = g->limits.header_size + 64;
    int hcap = g->limits.header_count;

    if (r) {
        mg_req_free_list = r->next_free;
        mg_req_free_count--;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
    }
    if (r->hcap < cap) {
        free(r->hbuf);
        r->hbuf = malloc(cap);
        r->hcap = r->hbuf ? cap : 0;
    }
    if (r->hdrs_cap < hcap) {
        free(r->hdrs);
        r->hdrs = malloc(sizeof(mg_hdr_t) * hcap);
        r->hdrs_cap = r->hdrs ? hcap : 0;
    }
    if (r->hbuf == NULL || r->hdrs == NULL) {
        free(r->hbuf);
        free(r->hdrs);
        free(r);
        return NULL;
    }
    {
        char *hb = r->hbuf;
        mg_hdr_t *hd = r->hdrs;
        size_t hc = r->hcap;
        int dc = r->hdrs_cap;
        mg_lines_t xh = r->xhdrs, rxh = r->rxhdrs; /* their memory is reused */
        memset(r, 0, sizeof(*r));
        r->hbuf = hb, r->hdrs = hd, r->hcap = hc, r->hdrs_cap = dc;
        r->xhdrs = xh, r->rxhdrs = rxh;
        r->xhdrs.len = r->rxhdrs.len = 0;
    }
    r->sess = sess;
    r->sops = ops;
    r->lidx = lidx;
    r->gen = g;
    r->access_req_ref = LUA_NOREF;
    mg_gen_retain(g);
    r->clen = -1;
    r->host_idx = r->xrid_idx = -1;
    r->t_start = mg_now();
    mg_worker.inflight++;
    return r;
}

void mg_req_free(mg_req_t *r) {
    mg_worker.inflight--;
    if (r->access_req_ref != LUA_NOREF)
        mg_http_hooks->freed(r);
    mg_gen_release(r->gen);
    if (mg_req_free_count < 256) {
        r->next_free = mg_req_free_list;
        mg_req_free_list = r;
        mg_req_free_count++;
    } else {
        free(r->xhdrs.p);
        free(r->rxhdrs.p);
        free(r->hbuf);
        free(r->hdrs);
        free(r);
    }
}

const char *mg_req_header_n(mg_req_t *r, const char *name, int nth, size_t *len) {
    size_t nl = strlen(name);
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        if (mg_name_eq(r->hbuf + h->noff, h->nlen, name, nl) && nth-- == 0) {
            *len = h->vlen;
            return r->hbuf + h->voff;
        }
    }
    return NULL;
}

const char *mg_req_header(mg_req_t *r, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        if (mg_name_eq(r->hbuf + h->noff, h->nlen, name, nl)) {
            *len = h->vlen;
            return r->hbuf + h->voff;
        }
    }
    return NULL;
}

/* ---- output ---- */

void mg_http_conn_flush(mg_conn_t *c) {
    size_t left;
    if (X(c)->dead)
        return;
    left = evbuffer_get_length(c->out);
    if (left) {
        int n = mg_io_write_evbuffer(&c->io, c->out);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            mg_http_conn_close_later(c);
            return;
        }
        left = evbuffer_get_length(c->out);
    }
    if (left && !c->wr_on) {
        event_add(&c->wev, NULL);
        c->wr_on = 1;
        if (c->req && mg_gen_current->timeouts.write > 0)
            mg_http_conn_arm(c, MG_T_WRITE);
    } else if (!left && c->wr_on) {
        event_del(&c->wev);
        c->wr_on = 0;
    }
}

/* ---- connection state machine ---- */

static void mg_http_conn_save_input(mg_conn_t *c, const char *data, size_t len) {
    if (len == 0)
        return;
    if (c->in_len + len > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        char *n;
        while (cap < c->in_len + len)
            cap *= 2;
        n = realloc(c->in, cap);
        if (n == NULL) {
            mg_http_conn_close_later(c);
            return;
        }
        c->in = n;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    /* pipelined input beyond one read's worth waits in the socket */
    if (c->in_len >= MG_READ_CHUNK)
        mg_http_conn_read_enable(c, 0);
}

static void mg_http_conn_fail(mg_conn_t *c, int status) {
    mg_req_t *r = c->req;

    c->closing = 1;
    if (r == NULL) {
        /* error before a request began (e.g. a bad request line): answer
         * with a bare request */
        if (status <= 0 || mg_http_on_message_begin(&c->parser) != 0)
            return;
        r = c->req;
    }
    if (r->request_id[0] == '\0')
        mg_request_id(r->request_id); /* refused before its head was whole */
    if (r->target && !r->target->keeps_req)
        r->target->gone(r); /* the proxy stops: the answer is ours */
    if (status > 0 && !r->resp_started) {
        r->keep_alive = 0;
        r->resp_close = 1;
        if (r->http_minor == 0 && r->state == MG_REQ_HEAD)
            r->http_minor = 1;
        mg_resp_json_error(r, status,
                           status == 414   ? "request line too long"
                           : status == 431 ? "request header fields too large"
                           : status == 417 ? "unsupported expectation"
                           : status == 405 ? "method not allowed"
                           : status == 408 ? "request timeout"
                           : status == 503 ? "service unavailable"
                           : status == 505 ? "http version not supported"
                                           : "bad request");
    } else {
        /* mid-response: the only signal left is closing */
        r->resp_done = 1;
        mg_http_conn_close_later(c);
        return;
    }
    if (r->target && r->target->keeps_req) {
        /* the handler still runs: it keeps the request, the connection
         * closes once the error is flushed */
        c->req = NULL;
        r->sess = NULL;
        r->target->gone(r);
    }
}

/* llhttp (8.1, even strict) takes a bare LF after the request line, runs
 * of spaces between its parts, bare CRs before the request line and a
 * request line with no version (HTTP/0.9, which it then reports as a
 * version to refuse with 505); RFC 9112 2.2 and 3 let a server refuse all
 * of them with 400, and a proxy must, since the upstream may split the
 * message differently. Scans head bytes only: the empty lines a client may
 * send first (2.2), the request line, then the header lines up to the
 * blank line. Returns -1 on a bare LF, a bare CR, two spaces in a row or
 * other than three parts in the request line. */
static int mg_http_scan_head(mg_xconn_t *x, const char *p, size_t n) {
    /* the state in locals (a char store through p could alias x's fields,
     * which made the compiler reload them for every byte), and a run of
     * bytes that change nothing (all but CR, LF and, in the request line,
     * a space) skipped in a tight loop: a few instructions a byte */
    const unsigned char *s = (const unsigned char *)p, *e = s + n;
    int prev = (unsigned char)x->scan_prev, rl = x->scan_rl, nl = x->scan_nl, sp = x->scan_sp;
    int rc = 0;

    if (x->scan_done)
        return 0;
    while (s < e) {
        int ch = *s++;
        if (prev == '\r' && ch != '\n') {
            rc = -1;
            break;
        }
        if (ch == '\n') {
            if (prev != '\r') {
                rc = -1;
                break;
            }
            if (rl == 1) { /* the request line ends */
                if (sp != 2) {
                    rc = -1;
                    break;
                }
                rl = 2;
                nl = 1;
            } else if (rl == 2 && ++nl == 2) {
                x->scan_done = 1;
                prev = ch;
                break;
            }
        } else if (ch != '\r') {
            if (rl == 0)
                rl = 1;
            else if (rl == 1 && ch == ' ' && (prev == ' ' || ++sp > 2)) {
                rc = -1;
                break;
            }
            nl = 0;
            if (rl == 2) { /* a header line: to its CR (or a bare LF), by memchr */
                const unsigned char *cr = memchr(s, '\r', (size_t)(e - s));
                const unsigned char *stop = cr ? cr : e;
                const unsigned char *lf = memchr(s, '\n', (size_t)(stop - s));
                s = lf ? lf : stop;
            } else {
                while (s < e && *s != '\r' && *s != '\n' && *s != ' ')
                    s++;
            }
            ch = s[-1];
        }
        prev = ch;
    }
    x->scan_prev = (char)prev;
    x->scan_rl = rl;
    x->scan_nl = nl;
    x->scan_sp = sp;
    return rc;
}

static void mg_http_conn_exec(mg_conn_t *c, const char *data, size_t len) {
    llhttp_errno_t err;

    if (!X(c)->scan_done && mg_http_scan_head(X(c), data, len) < 0) {
        mg_http_conn_fail(c, 400);
        return;
    }

    X(c)->in_exec = 1;
    X(c)->exec_start = data;
    err = llhttp_execute(&c->parser, data, len);
    X(c)->in_exec = 0;
    if (err == HPE_OK)
        return;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->paused = 1;
        if (err == HPE_PAUSED_UPGRADE) {
            /* no WebSocket on this route: answer, then close (the rest is
             * another protocol) */
            X(c)->upgrade = 1;
            if (c->req) {
                c->req->state = MG_REQ_DONE;
                c->req->resp_close = 1;
            }
            return;
        }
        if (pos && pos >= data && pos <= data + len)
            mg_http_conn_save_input(c, pos, data + len - pos);
        return;
    }
    mg_debug("parse error: %s (%s)", llhttp_errno_name(err), llhttp_get_error_reason(&c->parser));
    mg_http_conn_fail(c, X(c)->err_status ? X(c)->err_status : 400);
}

/* Bytes left in the socket when reading stopped bring no new edge, but
 * event_add is an EPOLL_CTL_ADD or _MOD right away (no changelist: see
 * event_base_new), and epoll reports a socket already readable then. */
void mg_http_conn_read_enable(mg_conn_t *c, int on) {
    if (on && c->rd_off && !X(c)->dead) {
        event_add(&c->rev, NULL);
        c->rd_off = 0;
        if (mg_io_pending(&c->io) > 0) /* held by the transport: no socket event */
            event_active(&c->rev, EV_READ, 1);
        if (c->tmode == MG_T_BODY)
            mg_http_conn_arm(c, MG_T_BODY); /* the body clock runs again */
    } else if (!on && !c->rd_off) {
        event_del(&c->rev);
        c->rd_off = 1;
        if (c->tmode == MG_T_BODY)
            mg_tm_stop(&c->tm); /* our pause, not the client's */
    }
}

/* A query parameter's name decoded as moongate.decode_query decodes it
 * ('+' is a space, %XX a byte), into out (cap bytes, NUL-terminated).
 * Returns the decoded length, or cap when it does not fit: no secret name
 * is that long, so such a name is never one. */
static size_t mg_http_query_name_decode(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
                   isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            ch = (char)strtol(hex, NULL, 16);
            i += 2;
        }
        if (o + 1 >= cap)
            return cap;
        out[o++] = ch;
    }
    out[o] = 0;
    return o;
}

/* Credentials in a query (WebSocket clients pass tokens there) stay out of
 * the access log: the values of these parameters become "-". Names are
 * compared decoded (?%74oken= is the auth hook's token too), any case.
 * In place, over path[0, len), which holds no NUL, from its first '?' at
 * q, in one pass (a name shorter than the shortest secret, 3, is not
 * decoded); path[len] must be writable (a NUL is kept there). Returns
 * the length. */
/* Is the parameter name[0, n) (n >= 3, still encoded) one of them?
 * Out of line: most names are not looked at (shorter than 3). */
__attribute__((noinline)) static int mg_http_log_secret(const char *name, size_t n) {
    static const struct {
        const char *s;
        size_t n;
    } secret[] = {{"token", 5}, {"access_token", 12}, {"api_key", 7}, {"apikey", 6},
                  {"key", 3},   {"password", 8},      {"secret", 6},  {"jwt", 3}};
    char dec[32];
    size_t nl = mg_http_query_name_decode(name, n, dec, sizeof(dec));
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
        if (nl == secret[i].n && mg_name_eq(dec, nl, secret[i].s, secret[i].n))
            return 1;
    return 0;
}

static size_t mg_http_log_redact_query(char *path, size_t len, char *q) {
    char *end = path + len;
    path[len] = '\0';
    while (q) {
        char *name = q + 1, *eq = NULL, *amp, *p = name;
        /* the parameter: its '=' (the first, before any '&') and its '&':
         * the name up to either, then the value up to the '&' */
        while (p < end && *p != '&' && *p != '=')
            p++;
        if (p < end && *p == '=') {
            eq = p++;
            while (p < end && *p != '&')
                p++;
        }
        amp = p < end ? p : NULL;
        if (eq && eq - name >= 3 && mg_http_log_secret(name, (size_t)(eq - name))) {
            char *vend = amp ? amp : end;
            size_t tail = (size_t)(end - vend);
            memmove(eq + 2, vend, tail + 1);
            eq[1] = '-';
            len = (size_t)(eq + 2 - path) + tail;
            end = path + len;
            amp = memchr(eq + 1, '&', tail + 1);
        }
        q = amp;
    }
    return len;
}

/* A query that mg_http_log_redact_query would leave as it is, told from
 * where its '=' and '&' are (bit i: target byte i; q: the '?', n <= 16):
 * 1 when no parameter has a name of 3 bytes or more before an '=' (a
 * secret's shortest), 0 when one may be a secret (the redaction looks). */
static inline int mg_http_log_query_clean(uint32_t eq, uint32_t amp, size_t q, size_t n) {
    size_t st = q + 1; /* where a parameter starts */
    while (st < n) {
        uint32_t e = eq >> st, a = amp >> st;
        size_t na = a ? (size_t)__builtin_ctz(a) : n - st;
        if (e && (size_t)__builtin_ctz(e) < na && __builtin_ctz(e) >= 3)
            return 0;
        if (a == 0)
            return 1;
        st += na + 1;
    }
    return 1;
}

/* The target as access-log lines show it: at most 300 bytes, query
 * credentials redacted, JSON-escaped (at most 399 bytes of it, as ever).
 * Only a target that needs an escape and has a query is copied. */
void mg_http_log_path(mg_fmt_t *b, const mg_req_t *r) {
    char path[400], *pq; /* redaction can grow it: "key=&" -> "key=-&" */
    size_t pl = r->url_len < 300 ? r->url_len : 300, at = b->len;
    /* the usual target, nothing to escape: stored as it is, and a query
     * redacted where it was stored, without a copy (redaction adds only
     * '-', which needs no escape; it grows a target of 300 to at most 360,
     * under the 392 the escaping keeps, and the line's room has the 400
     * of the path and its NUL) */
    const char *q;
    mg_fmt_qmap_t qm;
    if (mg_fmt_put_plain_q(b, r->hbuf, pl, &qm)) { /* qm.q: its first '?', or pl */
        if (qm.q < pl && !(qm.map && mg_http_log_query_clean(qm.eq, qm.amp, qm.q, pl)))
            b->len = at + mg_http_log_redact_query(b->p + at, pl, b->p + at + qm.q);
        return;
    }
    q = memchr(r->hbuf, '?', pl);
    if (q == NULL) {
        mg_fmt_put_json(b, r->hbuf, pl, 400);
        return;
    }
    /* a copy, up to a NUL (the escaping stops there) */
    pl = strnlen(r->hbuf, pl);
    memcpy(path, r->hbuf, pl);
    pq = memchr(path, '?', pl);
    mg_fmt_put_json(b, path, pq ? mg_http_log_redact_query(path, pl, pq) : pl, 400);
}

void mg_http_log_tls(mg_fmt_t *b, const mg_req_tls_t *t) {
    const char *v = t->version ? t->version : "", *c = t->cipher ? t->cipher : "";
    mg_fmt_put_lit(b, "\"tls\":{\"version\":\"");
    mg_fmt_put_mem(b, v, strnlen(v, MG_HTTP_LOG_TLS_NAME));
    mg_fmt_put_lit(b, "\",\"cipher\":\"");
    mg_fmt_put_mem(b, c, strnlen(c, MG_HTTP_LOG_TLS_NAME));
    if (t->sni) {
        mg_fmt_put_lit(b, "\",\"sni\":\"");
        mg_fmt_put_json(b, t->sni, SIZE_MAX, 300);
        mg_fmt_put_lit(b, "\"}");
    } else {
        mg_fmt_put_lit(b, "\",\"sni\":null}");
    }
}

void mg_http_log_route(mg_fmt_t *b, const mg_route_t *rt) {
    const char *s = rt ? (rt->name ? rt->name : rt->rule) : NULL;
    if (s)
        mg_fmt_put_json(b, s, SIZE_MAX, 400);
}

/* A header value for the log: cut to 200 bytes, escaped, quoted; null. */
static void mg_http_log_header(mg_fmt_t *b, const char *v, size_t len) {
    if (v == NULL) {
        mg_fmt_put_lit(b, "null");
        return;
    }
    mg_fmt_put_ch(b, '"');
    mg_fmt_put_json(b, v, len < 200 ? len : 200, 1218);
    mg_fmt_put_ch(b, '"');
}

/* "host:port" of each listener, made once per worker (mg_worker.laddr is
 * set at its start and kept); cut to 79 bytes as ever. */
static struct {
    char s[80];
    size_t n;
} * mg_http_lnames;
static const mg_addr_t *mg_http_lnames_of;

static void mg_http_log_listener(mg_fmt_t *b, int lidx) {
    char one[80];
    int n;
    if (lidx < 0 || lidx >= mg_worker.nfd || mg_worker.laddr == NULL)
        return;
    if (mg_http_lnames_of != mg_worker.laddr) {
        free(mg_http_lnames);
        mg_http_lnames = calloc(mg_worker.nfd, sizeof(*mg_http_lnames));
        mg_http_lnames_of = mg_http_lnames ? mg_worker.laddr : NULL;
        for (int i = 0; mg_http_lnames && i < mg_worker.nfd; i++) {
            n = snprintf(mg_http_lnames[i].s, sizeof(mg_http_lnames[i].s), "%s:%d",
                         mg_worker.laddr[i].host, mg_worker.laddr[i].port);
            mg_http_lnames[i].n = n < 0 ? 0 : (size_t)n < sizeof(one) ? (size_t)n : sizeof(one) - 1;
        }
    }
    if (mg_http_lnames) {
        mg_fmt_put_short(b, mg_http_lnames[lidx].s, mg_http_lnames[lidx].n);
        return;
    }
    n = snprintf(one, sizeof(one), "%s:%d", mg_worker.laddr[lidx].host, mg_worker.laddr[lidx].port);
    mg_fmt_put_mem(b, one, n < 0 ? 0 : (size_t)n < sizeof(one) ? (size_t)n : sizeof(one) - 1);
}

/* memcmp(a, b, n) == 0, from 8 to 32 bytes inline as two overlapping
 * word compares (the usual Host and User-Agent), others by memcmp */
__attribute__((always_inline)) static inline int mg_http_same(const char *a, const char *b,
                                                              size_t n) {
    uint64_t x[4], y[4];
    if (n >= 16 && n <= 32) {
        memcpy(x, a, 16);
        memcpy(x + 2, a + n - 16, 16);
        memcpy(y, b, 16);
        memcpy(y + 2, b + n - 16, 16);
        return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
    }
    if (n >= 8 && n < 16) {
        memcpy(x, a, 8);
        memcpy(x + 1, a + n - 8, 8);
        memcpy(y, b, 8);
        memcpy(y + 1, b + n - 8, 8);
        return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
    }
    return memcmp(a, b, n) == 0;
}

/* ","host":..,"listener":"..","user_agent":.. after an open string (the
 * HTTP line's kept piece and a WebSocket session's head build them) */
static void mg_http_log_client(mg_fmt_t *b, const char *host, size_t hl, const char *ua, size_t ul,
                               int lidx) {
    mg_fmt_put_lit(b, "\",\"host\":");
    mg_http_log_header(b, host, hl);
    mg_fmt_put_lit(b, ",\"listener\":\"");
    mg_http_log_listener(b, lidx);
    mg_fmt_put_lit(b, "\",\"user_agent\":");
    mg_http_log_header(b, ua, ul);
}

/* A head the checks did not work out (refused before them): Host and
 * User-Agent (the first of each, as mg_req_header finds them) and the
 * head's size worked out now, in one pass, into the fields the checks
 * fill (log_ready) */
__attribute__((noinline)) static void mg_http_log_note(mg_req_t *r) {
    uint64_t head = 0;
    r->log_has_host = r->log_has_ua = 0;
    for (int i = 0; i < r->nhdrs; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        const char *n = r->hbuf + h->noff;
        head += h->nlen + h->vlen + 4;
        if (h->nlen == 4 && !r->log_has_host && MG_NAME_IS(n, 4, "host")) {
            r->log_has_host = 1;
            r->log_host_off = h->voff;
            r->log_host_len = h->vlen;
        } else if (h->nlen == 10 && !r->log_has_ua && MG_NAME_IS(n, 10, "user-agent")) {
            r->log_has_ua = 1;
            r->log_ua_off = h->voff;
            r->log_ua_len = h->vlen;
        }
    }
    r->log_hbytes = (uint32_t)head; /* within the head's buffer: < 4 GiB */
    r->log_ready = 1;
}

/* Host and User-Agent (the first of each, as mg_req_header finds them;
 * NULL when absent) and the head's size: worked out by the head checks,
 * or here */
__attribute__((always_inline)) static inline uint64_t
mg_http_log_hdrs(mg_req_t *r, const char **host, size_t *hl, const char **ua, size_t *ul) {
    if (!r->log_ready)
        mg_http_log_note(r);
    if (r->log_has_host) {
        *host = r->hbuf + r->log_host_off;
        *hl = r->log_host_len;
    }
    if (r->log_has_ua) {
        *ua = r->hbuf + r->log_ua_off;
        *ul = r->log_ua_len;
    }
    return r->log_hbytes;
}

uint64_t mg_http_log_fields(mg_fmt_t *b, mg_req_t *r, int64_t t_ms) {
    const char *host = NULL, *ua = NULL;
    size_t hl = 0, ul = 0;
    uint64_t head;
    head = mg_http_log_hdrs(r, &host, &hl, &ua, &ul);
    mg_fmt_to(b, mg_fmt_o_iso_ms(MG_FMT_O_LIT(mg_fmt_at(b), ",\"timestamp\":\""), t_ms));
    mg_http_log_client(b, host, hl, ua, ul, r->lidx);
    return head;
}

/* The method's length, kept by its address: a method is a string
 * constant (llhttp's names, "-", "GET"), the same line after line. The
 * line shows it cut to 16 (llhttp has one of 17: UPDATEREDIRECTREF);
 * bytes_in counts it whole. */
static size_t mg_http_log_method_len(const char *m) {
    static const char *last;
    static size_t n;
    if (m != last) {
        n = strlen(m);
        last = m;
    }
    return n;
}

/* strnlen(id, 39) of a request id: mg_request_id's 32 hex digits and
 * their NUL told by four word tests (no zero byte in any of the words),
 * anything else counted by strnlen */
static inline size_t mg_http_log_id_len(const char *id) {
    const uint64_t ones = 0x0101010101010101ULL, highs = ones * 0x80;
    uint64_t w[4];
    memcpy(w, id, sizeof(w));
    if (id[32] == '\0' && !(((w[0] - ones) & ~w[0]) & highs) &&
        !(((w[1] - ones) & ~w[1]) & highs) && !(((w[2] - ones) & ~w[2]) & highs) &&
        !(((w[3] - ones) & ~w[3]) & highs))
        return 32;
    return strnlen(id, sizeof(((mg_req_t *)0)->request_id) - 1);
}

/* m16: the method's first 16 bytes, padded (the line shows it cut to
 * 16), stored as one constant-size copy; ml: its whole length */
__attribute__((always_inline)) static inline void
mg_http_log_start_in(mg_fmt_t *b, mg_req_t *r, int64_t t_ms, const char *m16, size_t ml) {
    const char *ip = mg_req_client_ip(r);
    size_t il = strnlen(ip, MG_PEER_IP_MAX - 1), rl = mg_http_log_id_len(r->request_id);
    char *o = MG_FMT_O_LIT(mg_fmt_at(b), "{\"type\":\"access\",\"time\":");
    o = mg_fmt_o_time_ms(o, t_ms);
    o = MG_FMT_O_LIT(o, ",\"request_id\":\"");
    o = mg_fmt_o_short(o, r->request_id, rl);
    o = MG_FMT_O_LIT(o, "\",\"remote\":\"");
    o = mg_fmt_o_short(o, ip, il);
    o = MG_FMT_O_LIT(o, "\",\"method\":\"");
    memcpy(o, m16, 16);
    o += ml < 16 ? ml : 16;
    o = MG_FMT_O_LIT(o, "\",\"path\":\"");
    mg_fmt_to(b, o);
    mg_http_log_path(b, r);
    mg_fmt_put_ch(b, '"');
}

void mg_http_log_start(mg_fmt_t *b, mg_req_t *r, int64_t t_ms, const char *method) {
    char m16[16] = {0};
    size_t ml = mg_http_log_method_len(method);
    memcpy(m16, method, ml < 16 ? ml : 16);
    mg_http_log_start_in(b, r, t_ms, m16, ml);
}

void mg_http_log_end(mg_fmt_t *b) {
    if (b->cap < 2)
        return;
    if (b->len > b->cap - 2)
        b->len = b->cap - 2; /* cannot happen with the caps above; the line still ends */
    mg_fmt_lit(b, "}\n");
}

/* ---- the HTTP line ----
 * Its order puts what changes from request to request first and what a
 * client's requests and a route repeat last, in one kept piece:
 *   {"type":"access","time","timestamp","request_id",  one second's piece
 *   "method","path",                                   the method's piece
 *   ["protocol",]"status","bytes","duration_ms",["upstream_status","upstream_ms",]
 *   "bytes_in","bytes_out",
 *   "remote","host","listener","user_agent",["upstream_addr",]"route","generation"  kept
 *   [,"tls":{...}]}
 * (a WebSocket session's line keeps its own order: alog.c). */

/* The line's start for one second, {"type":"access","time":S.mmm,
 * "timestamp":"ISO.mmmZ","request_id":", kept per worker: a line in the
 * same second copies it at a constant size and writes its milliseconds
 * into the two places (at1, at2). ms0 is the second's first millisecond
 * (>= 0); it starts as the piece of second 0, so the check needs no
 * "none yet". */
#define MG_HTTP_LSEC_COPY 112 /* the longest piece (a year past 9999) is 111 */
static struct {
    int64_t ms0;
    uint32_t at1, at2, n;
    char p[MG_HTTP_LSEC_COPY];
} mg_http_lsec = {0, 25, 62, 83,
                  "{\"type\":\"access\",\"time\":0.000,\"timestamp\":\"1970-01-01T00:00:00.000Z\","
                  "\"request_id\":\""};

/* a line before the epoch (not kept: the time is negative, the ISO time 0) */
__attribute__((noinline)) static char *mg_http_lsec_neg(char *o, int64_t t_ms) {
    o = MG_FMT_O_LIT(o, "{\"type\":\"access\",\"time\":");
    o = mg_fmt_o_time_ms(o, t_ms);
    o = MG_FMT_O_LIT(o, ",\"timestamp\":\"");
    o = mg_fmt_o_iso_ms(o, t_ms);
    return MG_FMT_O_LIT(o, "\",\"request_id\":\"");
}

__attribute__((noinline)) static void mg_http_lsec_set(int64_t t_ms) {
    char tmp[160] = {0}, *o = tmp; /* the appends store past their end: room */
    int64_t ms0 = t_ms - t_ms % 1000;
    o = MG_FMT_O_LIT(o, "{\"type\":\"access\",\"time\":");
    o = mg_fmt_o_time_ms(o, ms0);
    mg_http_lsec.at1 = (uint32_t)(o - 4 - tmp);
    o = MG_FMT_O_LIT(o, ",\"timestamp\":\"");
    o = mg_fmt_o_iso_ms(o, ms0);
    mg_http_lsec.at2 = (uint32_t)(o - 5 - tmp);
    o = MG_FMT_O_LIT(o, "\",\"request_id\":\"");
    mg_http_lsec.n = (uint32_t)(o - tmp);
    memcpy(mg_http_lsec.p, tmp, sizeof(mg_http_lsec.p));
    mg_http_lsec.ms0 = ms0;
}

static inline char *mg_http_log_head(char *o, int64_t t_ms) {
    uint64_t f = (uint64_t)t_ms - (uint64_t)mg_http_lsec.ms0; /* a NaN's 0 is second 0's */
    if (f >= 1000) {
        if (t_ms < 0)
            return mg_http_lsec_neg(o, t_ms);
        mg_http_lsec_set(t_ms);
        f = (uint64_t)(t_ms - mg_http_lsec.ms0);
    }
    memcpy(o, mg_http_lsec.p, MG_HTTP_LSEC_COPY);
    memcpy(o + mg_http_lsec.at1, mg_fmt_d3 + f * 4, 4);
    memcpy(o + mg_http_lsec.at2, mg_fmt_d3 + f * 4, 4);
    return o + mg_http_lsec.n;
}

/* the request id: mg_request_id's 32 hex digits told by two vectors (no
 * zero byte in them, one after), anything else by strnlen */
static inline char *mg_http_log_id(char *o, const char *id) {
#ifdef __SSE2__
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)id),
            z = _mm_loadu_si128((const __m128i *)(const void *)(id + 16)), n = _mm_setzero_si128();
    if (id[32] == '\0' &&
        !_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(a, n), _mm_cmpeq_epi8(z, n)))) {
        _mm_storeu_si128((__m128i *)(void *)o, a);
        _mm_storeu_si128((__m128i *)(void *)(o + 16), z);
        return o + 32;
    }
#endif
    return mg_fmt_o_short(o, id, mg_http_log_id_len(id));
}

/* The target past the fast path: mg_http_log_path, on the cursor */
__attribute__((noinline)) static char *mg_http_log_path_o(mg_fmt_t *b, char *o, const mg_req_t *r) {
    mg_fmt_to(b, o);
    mg_http_log_path(b, r);
    return mg_fmt_at(b);
}

/* The target (mg_http_log_path's output), the usual one of 32 bytes or
 * fewer without escapes, from two vectors of the head's buffer (which
 * starts with it and has room for them: mg_req_alloc), stored at once;
 * its query, if any, told clean from the bits of its '=' and '&': a
 * parameter's name is 3 bytes or more (a secret's shortest) when the 3
 * bytes before its first '=' are none of the query's '?', an '&' or an
 * '='. So an '=' with none of those 3 before it may end a secret's name
 * (or be a later '=' of a value: the redaction pass sorts it out), and a
 * query without one is clean. Others: mg_http_log_path. */
static inline char *mg_http_log_target(mg_fmt_t *b, char *o, const mg_req_t *r) {
#ifdef __SSE2__
    size_t pl = r->url_len < 300 ? r->url_len : 300;
    if (pl <= 32 && r->hcap >= 32) {
        const __m128i *s = (const __m128i *)(const void *)r->hbuf;
        __m128i lo = _mm_loadu_si128(s), hi = lo;
        uint32_t in = (uint32_t)((1ull << pl) - 1), q, e, a, d; /* bit i: the target's byte i */
        int two = pl > 16;
        if (two) {
            hi = _mm_loadu_si128(s + 1);
            if ((mg_fmt_esc_bits16(lo) | mg_fmt_esc_bits16(hi) << 16) & in)
                return mg_http_log_path_o(b, o, r);
            q = (mg_fmt_ch_bits16(lo, '?') | mg_fmt_ch_bits16(hi, '?') << 16) & in;
            _mm_storeu_si128((__m128i *)(void *)(o + 16), hi);
        } else {
            if (mg_fmt_esc_bits16(lo) & in)
                return mg_http_log_path_o(b, o, r);
            q = mg_fmt_ch_bits16(lo, '?') & in;
        }
        _mm_storeu_si128((__m128i *)(void *)o, lo);
        if (q == 0)
            return o + pl;
        q = (uint32_t)__builtin_ctz(q);
        in &= ~((2u << q) - 1); /* the query's bytes, past its '?' */
        e = mg_fmt_ch_bits16(lo, '=') | (two ? mg_fmt_ch_bits16(hi, '=') << 16 : 0);
        a = mg_fmt_ch_bits16(lo, '&') | (two ? mg_fmt_ch_bits16(hi, '&') << 16 : 0);
        e &= in;
        d = e | (a & in) | 1u << q;
        if ((e & ~(d << 1) & ~(d << 2) & ~(d << 3)) == 0)
            return o + pl;
        return o + mg_http_log_redact_query(o, pl, o + q);
    }
#endif
    return mg_http_log_path_o(b, o, r);
}

/* "remote" to "generation" of the last line, kept per worker: a client's
 * requests (and most clients') repeat their address, Host and
 * User-Agent, and a route its name, generation and upstream server. Keyed
 * by the bytes the line shows for the address, Host and User-Agent (each
 * cut to 200, or none), the listener and the listeners' table
 * (mg_worker.laddr, the one mg_http_lnames was made for), the route's
 * name by its address and the generation's id (a route's name lives,
 * unchanged, as long as its generation, and an id is never reused) and
 * the upstream server's name by its address (a server's "host:port",
 * upstream.c's mg_peer_t, is written once and its peer never freed). */
static struct {
    const char *route, *up;
    unsigned gen_id;
    int lidx;
    const void *lnames_of;
    size_t il, hl, ul, n; /* hl, ul: SIZE_MAX for none */
    char ip[MG_PEER_IP_MAX], host[200], ua[200];
    /* the names, the address 47, two escaped values of 1219, the listener
     * 79, the upstream 119, the route 399, the generation 10 */
    char piece[4096];
} mg_http_lpiece = {.hl = SIZE_MAX - 1};

__attribute__((noinline)) static char *mg_http_log_piece_new(mg_fmt_t *b, char *o, const char *ip,
                                                             size_t il, const char *host, size_t hl,
                                                             const char *ua, size_t ul,
                                                             const mg_req_t *r, const char *rs) {
    size_t at = (size_t)(o - b->p);
    o = MG_FMT_O_LIT(o, ",\"remote\":\"");
    o = mg_fmt_o_short(o, ip, il);
    mg_fmt_to(b, o);
    mg_http_log_client(b, host, hl, ua, ul, r->lidx);
    if (r->up_addr) {
        mg_fmt_put_lit(b, ",\"upstream_addr\":\"");
        mg_fmt_put_json(b, r->up_addr, SIZE_MAX, 120);
        mg_fmt_put_ch(b, '"');
    }
    mg_fmt_put_lit(b, ",\"route\":\"");
    if (rs)
        mg_fmt_put_json(b, rs, SIZE_MAX, 400);
    o = MG_FMT_O_LIT(mg_fmt_at(b), "\",\"generation\":");
    o = mg_fmt_o_u64(o, r->gen->id);
    mg_http_lpiece.route = rs;
    mg_http_lpiece.up = r->up_addr;
    mg_http_lpiece.gen_id = r->gen->id;
    mg_http_lpiece.lidx = r->lidx;
    mg_http_lpiece.lnames_of = mg_worker.laddr;
    mg_http_lpiece.il = il;
    mg_http_lpiece.hl = host ? hl : SIZE_MAX;
    mg_http_lpiece.ul = ua ? ul : SIZE_MAX;
    memcpy(mg_http_lpiece.ip, ip, il);
    if (host)
        memcpy(mg_http_lpiece.host, host, hl);
    if (ua)
        memcpy(mg_http_lpiece.ua, ua, ul);
    mg_http_lpiece.n = (size_t)(o - b->p) - at;
    memcpy(mg_http_lpiece.piece, b->p + at, mg_http_lpiece.n);
    return o;
}

/* host, ua: the values the line shows (hl, ul cut to 200) or NULL; a hit
 * copies the piece, a miss builds it and keeps it */
__attribute__((always_inline)) static inline char *mg_http_log_piece(mg_fmt_t *b, char *o,
                                                                     const mg_req_t *r,
                                                                     const char *host, size_t hl,
                                                                     const char *ua, size_t ul) {
    const mg_route_t *rt = r->route;
    const char *rs = rt ? (rt->name ? rt->name : rt->rule) : NULL;
    const char *ip = mg_req_client_ip(r);
    size_t il, hk = host ? hl : SIZE_MAX, uk = ua ? ul : SIZE_MAX;
    int ip_same;
#ifdef __SSE2__
    /* the address's length and its compare from one vector: an address
     * other than "" is in a buffer of MG_PEER_IP_MAX bytes (http.h) */
    if (ip[0] == '\0') {
        il = 0;
        ip_same = 1;
    } else {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)ip);
        unsigned z = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()));
        if (z) {
            unsigned d = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                v, _mm_loadu_si128((const __m128i *)(const void *)mg_http_lpiece.ip)));
            il = (size_t)__builtin_ctz(z);
            ip_same = (d & ((1u << il) - 1)) == 0;
        } else {
            il = strnlen(ip, MG_PEER_IP_MAX - 1);
            ip_same = il == mg_http_lpiece.il && mg_http_same(ip, mg_http_lpiece.ip, il);
        }
    }
#else
    il = strnlen(ip, MG_PEER_IP_MAX - 1);
    ip_same = il == mg_http_lpiece.il && mg_http_same(ip, mg_http_lpiece.ip, il);
#endif
    if (ip_same && il == mg_http_lpiece.il && hk == mg_http_lpiece.hl && uk == mg_http_lpiece.ul &&
        rs == mg_http_lpiece.route && r->up_addr == mg_http_lpiece.up &&
        r->gen->id == mg_http_lpiece.gen_id && r->lidx == mg_http_lpiece.lidx &&
        mg_worker.laddr == mg_http_lpiece.lnames_of && mg_http_lnames_of == mg_worker.laddr &&
        mg_worker.laddr != NULL && (host == NULL || mg_http_same(host, mg_http_lpiece.host, hl)) &&
        (ua == NULL || mg_http_same(ua, mg_http_lpiece.ua, ul))) {
        memcpy(o, mg_http_lpiece.piece, mg_http_lpiece.n);
        return o + mg_http_lpiece.n;
    }
    return mg_http_log_piece_new(b, o, ip, il, host, hl, ua, ul, r, rs);
}

/* a status: three digits by one copy from the table, else mg_fmt_o_i64 */
static inline char *mg_http_log_o_status(char *o, int st) {
    if ((unsigned)st - 100u < 900u) {
        memcpy(o, mg_fmt_d3 + st * 4 + 1, 4);
        return o + 3;
    }
    return mg_fmt_o_i64(o, st);
}

/* the line but its "}\n", unchecked (room for MG_HTTP_LOG_WORST) */
static void mg_http_log_put_line(mg_fmt_t *b, mg_req_t *r, const mg_req_tls_t *tls, double now) {
    /* a head refused before it was whole has no method yet ("-", as nginx
     * logs a field it does not have; r->method 0 would read as DELETE) */
    static struct {
        int m;     /* llhttp's method, -1 for none yet ("-"), -2 before the first line */
        size_t ml; /* the method's whole length (bytes_in counts it) */
        size_t n;
        char p[48]; /* ","method":"<its first 16>","path":" */
    } last = {.m = -2};
    const char *host = NULL, *ua = NULL;
    size_t hl = 0, ul = 0;
    uint64_t in;
    int64_t t_ms = mg_fmt_round(r->t_start * 1000.0);
    int m = r->state == MG_REQ_HEAD ? -1 : (int)r->method;
    char *o, *bytes;
    size_t bl;
    if (m != last.m) {
        const char *name = m < 0 ? "-" : llhttp_method_name((llhttp_method_t)m);
        size_t nl = strlen(name);
        char *p = MG_FMT_O_LIT(last.p, "\",\"method\":\"");
        memcpy(p, name, nl < 16 ? nl : 16);
        p = MG_FMT_O_LIT(p + (nl < 16 ? nl : 16), "\",\"path\":\"");
        last.n = (size_t)(p - last.p);
        last.ml = nl;
        last.m = m;
    }
    o = mg_http_log_head(mg_fmt_at(b), t_ms);
    o = mg_http_log_id(o, r->request_id);
    memcpy(o, last.p, sizeof(last.p));
    o = mg_http_log_target(b, o + last.n, r);
    if (r->http2) /* a stream of an HTTP/2 session (h2_req.c); HTTP/1.1 lines have none */
        o = MG_FMT_O_LIT(o, "\",\"protocol\":\"HTTP/2.0\",\"status\":");
    else
        o = MG_FMT_O_LIT(o, "\",\"status\":");
    o = mg_http_log_o_status(o, r->status);
    o = MG_FMT_O_LIT(o, ",\"bytes\":");
    bytes = o;
    o = mg_fmt_o_u64(o, r->bytes_out);
    bl = (size_t)(o - bytes);
    o = MG_FMT_O_LIT(o, ",\"duration_ms\":");
    o = mg_fmt_o_milli(o, mg_fmt_round((now - r->t_start) * 1e6));
    if (r->up_addr) {
        o = MG_FMT_O_LIT(o, ",\"upstream_status\":");
        o = mg_http_log_o_status(o, r->up_status);
        o = MG_FMT_O_LIT(o, ",\"upstream_ms\":");
        o = mg_fmt_o_milli(o, mg_fmt_round(r->up_ms * 1000.0));
    }
    in = mg_http_log_hdrs(r, &host, &hl, &ua, &ul);
    hl = hl < 200 ? hl : 200;
    ul = ul < 200 ? ul : 200;
    /* the request's bytes from the client: the request line, the header
     * lines and the blank line as parsed, and the body */
    in += last.ml + r->url_len + 12 + 2 + r->body_rx;
    o = MG_FMT_O_LIT(o, ",\"bytes_in\":");
    o = mg_fmt_o_u64(o, in);
    o = MG_FMT_O_LIT(o, ",\"bytes_out\":");
    memcpy(o, bytes, MG_FMT_U64_MAX); /* "bytes"'s digits again */
    o = mg_http_log_piece(b, o + bl, r, host, hl, ua, ul);
    mg_fmt_to(b, o);
    if (tls) {
        mg_fmt_put_ch(b, ',');
        mg_http_log_tls(b, tls);
    }
}

/* One bounds check for the whole line: with room for its worst case (the
 * access log's buffer always has it) it is built in place; a builder
 * short of room gets it built aside and cut, as the checked appends cut. */
void mg_http_log_line(mg_fmt_t *b, mg_req_t *r, const mg_req_tls_t *tls, double now) {
    if (mg_fmt_room(b, MG_HTTP_LOG_WORST)) { /* the worst case leaves room for the end */
        mg_http_log_put_line(b, r, tls, now);
        mg_fmt_put_lit(b, "}\n");
    } else {
        char tmp[MG_HTTP_LOG_WORST];
        mg_fmt_t t = {tmp, 0, sizeof(tmp)};
        mg_http_log_put_line(&t, r, tls, now);
        mg_fmt_mem(b, tmp, t.len);
        mg_http_log_end(b);
    }
}

/* inline on the request path (a call was ~6 of its ~13 instructions) */
__attribute__((always_inline)) static inline int mg_http_log_off_in(const mg_req_t *r) {
    const mg_edge_t *e;
    if (!r->gen->access_log)
        return 1;
    if (r->route)
        return r->route->no_access_log;
    e = mg_gen_edge(r->gen, mg_gen_server_of(r->gen, r->lidx));
    return e && e->no_access_log;
}

int mg_http_log_off(const mg_req_t *r) { return mg_http_log_off_in(r); }

static void mg_http_conn_finish_req(mg_conn_t *c, mg_req_t *r) {
    double now = 0;
    int log;
    /* a half-closed client still gets the answers to what it pipelined */
    if (r->resp_close || !r->keep_alive || (X(c)->eof && c->in_len == 0))
        c->closing = 1;
    log = !mg_http_log_off_in(r);
    if (log || MG_MET_ON)
        now = mg_now(); /* one clock read for the line and the metrics */
    if (log) {
        mg_fmt_t b;
        mg_req_tls_t t, *tp = NULL;
        if (c->is_tls) {
            t = (mg_req_tls_t){mg_io_tls_version(&c->io), mg_io_tls_cipher(&c->io), c->io.sni,
                               NULL};
            tp = &t;
        }
        mg_access_log_begin(&b, MG_ACCESS_LINE_MAX);
        mg_http_log_line(&b, r, tp, now);
        mg_access_log_commit(&b);
    }
    /* a head refused before it was whole has no method yet (r->method 0
     * would read as DELETE): "other" */
    mg_met_http(mg_http_met_name(r),
                r->state == MG_REQ_HEAD ? MG_MET_M_OTHER : mg_met_method_class(r->method),
                r->status, now - r->t_start, r->body_rx, r->bytes_out);
    mg_http_hooks->done(r);
    c->req = NULL;
    c->nreq++;
    X(c)->scan_done = X(c)->scan_nl = X(c)->scan_rl = X(c)->scan_sp = 0;
    X(c)->scan_prev = 0;
    mg_req_free(r);
}

/* The client's EOF is read: a request it left unfinished ends here. */
static void mg_http_conn_at_eof(mg_conn_t *c) {
    if (c->req && c->req->state != MG_REQ_DONE) {
        if (llhttp_finish(&c->parser) != HPE_OK || c->req->state != MG_REQ_DONE) {
            if (c->req->state == MG_REQ_HEAD)
                mg_http_conn_fail(c, 400);
            else
                mg_http_conn_fail(c, c->req->resp_started ? -1 : 400);
        }
    }
}

static void mg_http_conn_advance(mg_conn_t *c) {
    for (;;) {
        mg_req_t *r = c->req;
        if (X(c)->dead)
            return;
        if (r) {
            if (r->ws_upgrade && r->state == MG_REQ_DONE) {
                X(c)->handoff = 1;
                mg_http_conn_close_later(c);
                return;
            }
            if (!r->resp_done || r->target)
                break;
            if (r->state != MG_REQ_DONE)
                c->closing = 1;
            mg_http_conn_finish_req(c, r);
        }
        if (c->closing)
            break;
        if (!c->paused)
            break;
        c->paused = 0;
        llhttp_resume(&c->parser);
        if (c->in_len == 0)
            break;
        {
            char *data = c->in;
            size_t len = c->in_len;
            c->in = NULL;
            c->in_len = c->in_cap = 0;
            mg_http_conn_exec(c, data, len);
            free(data);
            /* pipelined input after the EOF: nothing more will come */
            if (X(c)->eof && !X(c)->dead && c->in_len == 0)
                mg_http_conn_at_eof(c);
        }
    }
    if (X(c)->dead)
        return;
    if (c->req == NULL) {
        if (c->closing) {
            mg_http_conn_flush(c);
            if (!X(c)->dead && evbuffer_get_length(c->out) == 0 && X(c)->eof) {
                /* the client's end is read: nothing left to linger for */
                mg_http_conn_close_later(c);
                return;
            }
            if (!X(c)->dead && evbuffer_get_length(c->out) == 0) {
                /* lingering close: stop sending, drain input briefly so a
                 * reset does not destroy the response in flight */
                mg_io_shutdown(&c->io);
                X(c)->lingering = 1;
                mg_http_conn_read_enable(c, 1);
                mg_http_conn_arm(c, MG_T_LINGER);
            }
            return;
        }
        if (c->in_len < MG_READ_CHUNK)
            mg_http_conn_read_enable(c, 1);
        mg_http_conn_arm(c, MG_T_IDLE);
    }
    mg_http_conn_flush(c);
}

/* The access step ended (the gateway dispatched the request if allowed). */
static void mg_http_h1_resume(mg_req_t *r) {
    mg_conn_t *c = MG_CONN(r);
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    if (X(c)->in_exec)
        return; /* decided at once: on_headers_complete goes on */
    /* the parser stopped after the head: read on (the body, or the end) */
    if (c->paused && !X(c)->dead && r->state != MG_REQ_DONE) {
        char *data = c->in;
        size_t len = c->in_len;
        c->paused = 0;
        llhttp_resume(&c->parser);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        /* even with no bytes: llhttp then runs what needs no input (the
         * end of a bodyless message) */
        mg_http_conn_exec(c, data ? data : "", len);
        free(data);
        mg_http_conn_read_enable(c, 1);
    }
    mg_http_conn_advance(c);
}

static void mg_http_h1_target_done(mg_req_t *r) {
    mg_conn_t *c = MG_CONN(r);
    r->resp_done = 1;
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    if (X(c)->in_exec)
        return; /* the caller of llhttp_execute advances */
    mg_http_conn_advance(c);
}

static void mg_http_h1_abort(mg_req_t *r) {
    mg_conn_t *c = MG_CONN(r);
    r->resp_done = 1;
    if (c == NULL) {
        mg_req_free(r);
        return;
    }
    c->closing = 1;
    r->resp_close = 1;
    if (!X(c)->in_exec)
        mg_http_conn_close_later(c);
}

static void mg_http_conn_free(mg_conn_t *c) {
    mg_req_t *r = c->req;
    if (r) {
        const mg_target_t *t = r->target;
        r->sess = NULL;
        c->req = NULL;
        if (t)
            t->gone(r);
        if (t == NULL || !t->keeps_req)
            mg_req_free(r); /* else the target frees r when it ends */
    }
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    mg_tm_stop(&c->tm);
    mg_io_close(&c->io); /* nothing after an upgrade handed it over */
    evbuffer_free(c->out);
    free(c->in);
    free(X(c)->tls);
    if (c->prev)
        c->prev->next = c->next;
    else
        mg_http_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mg_met_conn(c->lidx, c->is_tls, -1);
    free(c);
    mg_worker.active--;
}

static void mg_http_conn_close_later(mg_conn_t *c) {
    if (X(c)->dead)
        return;
    X(c)->dead = 1;
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    mg_tm_stop(&c->tm);
    event_active(&c->tev, EV_TIMEOUT, 1);
}

void mg_http_conn_arm(mg_conn_t *c, int mode) {
    int ms = 0;
    mg_gen_t *g = mg_gen_current;
    c->tmode = mode;
    switch (mode) {
    case MG_T_HEADER: ms = g->timeouts.header; break;
    case MG_T_IDLE: ms = g->timeouts.idle; break;
    case MG_T_READ: ms = g->timeouts.read; break;
    case MG_T_BODY: /* the gap between body bytes: the tighter of body and read */
        ms = g->timeouts.body;
        if (g->timeouts.read > 0 && (ms == 0 || g->timeouts.read < ms))
            ms = g->timeouts.read;
        break;
    case MG_T_WRITE: ms = g->timeouts.write; break;
    case MG_T_LINGER: ms = 2000; break;
    default: break;
    }
    mg_tm_arm(&c->tm, ms); /* ms 0: disarmed */
}

static void mg_http_conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
    mg_conn_t *c = arg;
    (void)fd, (void)what;
    if (X(c)->handoff) {
        /* the WebSocket side takes the transport (mg_io_move): closing
         * ours then does nothing; what req.tls says is kept first */
        if (c->is_tls)
            mg_http_h1_tls_info(c->req);
        mg_http_hooks->upgrade(c->req, &c->io, c->in, c->in_len);
        mg_http_conn_free(c);
        return;
    }
    if (X(c)->dead || X(c)->lingering) {
        mg_http_conn_free(c);
        return;
    }
    switch (c->tmode) {
    case MG_T_BODY:
        if (c->req && c->req->state == MG_REQ_BODY) {
            mg_http_conn_fail(c, c->req->resp_started ? -1 : 408);
            mg_http_conn_advance(c);
            return;
        }
        break;
    case MG_T_HEADER:
    case MG_T_READ:
        if (c->req && !c->req->resp_started && c->req->state != MG_REQ_DONE) {
            mg_http_conn_fail(c, 408);
            mg_http_conn_advance(c);
            return;
        }
        if (c->req == NULL) {
            mg_http_conn_free(c);
            return;
        }
        break;
    case MG_T_IDLE:
        if (c->req == NULL) {
            mg_http_conn_free(c);
            return;
        }
        break;
    case MG_T_WRITE: mg_http_conn_free(c); return;
    default: break;
    }
}

/* the timeout (c->tm) expired: as the event would have fired */
static void mg_http_conn_tm_cb(mg_tm_t *t, void *arg) {
    (void)t;
    mg_http_conn_timer_cb(-1, EV_TIMEOUT, arg);
}

/* One read. Returns 1 when the socket may hold more, 0 when done or the
 * connection went. The read event is level-triggered, as the upstream and
 * WebSocket ones are: a short read ends the callback, and whatever is still
 * pending (more data, the EOF, a reset queued behind the request, which
 * libevent reports as plain EV_READ) is reported again by the next
 * epoll_wait, at no syscall on an ordinary keep-alive request (reading
 * until EAGAIN would cost one recv per request). So a client that resets
 * while its request waits on a slow handler or upstream is gone at once
 * (the target is told), not when the answer's write fails. Reading that
 * stops on purpose (pipelined input saved, EOF, closing) removes the event
 * (mg_http_conn_read_enable), so nothing spins. */
static int mg_http_conn_read_once(mg_conn_t *c) {
    ssize_t n;

    n = mg_io_read(&c->io, mg_worker.scratch, sizeof(mg_worker.scratch));
    if (n < 0) {
        if (errno == EAGAIN && c->io.want == MG_IO_WANT_WRITE) {
            /* TLS: the read must send first (handshake, tickets), and the
             * socket is full: read again once it is writable, not on the
             * readable socket meanwhile (that would spin) */
            X(c)->tls_ww = 1;
            event_del(&c->rev);
            if (!c->wr_on) {
                event_add(&c->wev, NULL);
                c->wr_on = 1;
            }
            return 0;
        }
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        mg_http_conn_free(c);
        return 0;
    }
    if (X(c)->lingering) {
        if (n == 0) {
            mg_http_conn_free(c);
            return 0;
        }
        return 1;
    }
    if (n == 0) {
        /* EOF: with nothing in progress, we are done; otherwise the client
         * half-closed and still waits for its answer */
        X(c)->eof = 1;
        mg_http_conn_read_enable(c, 0);
        if (X(c)->h2_probe && c->in_len) { /* the end inside an h2c preface */
            mg_http_conn_free(c);
            return 0;
        }
        if (c->req == NULL && c->in_len == 0 && evbuffer_get_length(c->out) == 0) {
            mg_http_conn_free(c);
            return 0;
        }
        mg_http_conn_at_eof(c);
        /* a response still in flight is flushed first (RFC 9112 9.6) */
        c->closing = c->req == NULL && c->in_len == 0 ? 1 : c->closing;
        mg_http_conn_advance(c);
        return 0;
    }
    if (X(c)->h2_probe && mg_http_conn_h2_probe(c, mg_worker.scratch, (size_t)n))
        return 0; /* handed to the HTTP/2 session, or waiting for the whole preface */
    if (c->tmode == MG_T_READ || c->tmode == MG_T_BODY)
        mg_http_conn_arm(c, c->tmode);
    if (c->paused || c->closing) {
        if (!c->closing)
            mg_http_conn_save_input(c, mg_worker.scratch, n);
    } else {
        if (c->req == NULL && c->tmode == MG_T_IDLE)
            mg_http_conn_arm(c, MG_T_HEADER);
        mg_http_conn_exec(c, mg_worker.scratch, n);
        mg_http_conn_advance(c);
    }
    if (X(c)->dead || c->rd_off)
        return 0;
    /* bytes the transport holds (TLS records) bring no socket event */
    return (size_t)n == sizeof(mg_worker.scratch) || mg_io_pending(&c->io) > 0;
}

static void mg_http_conn_read_cb(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    while (mg_http_conn_read_once(arg))
        ;
}

static void mg_http_conn_write_cb(evutil_socket_t fd, short what, void *arg) {
    mg_conn_t *c = arg;
    mg_req_t *r = c->req;
    (void)fd, (void)what;
    if (X(c)->tls_ww) { /* a TLS read waited for this (read_once) */
        X(c)->tls_ww = 0;
        if (!c->rd_off)
            event_add(&c->rev, NULL);
        if (evbuffer_get_length(c->out) == 0) {
            event_del(&c->wev);
            c->wr_on = 0;
        }
        mg_http_conn_read_cb(fd, EV_READ, c); /* may free c */
        return;
    }
    mg_http_conn_flush(c);
    if (X(c)->dead)
        return;
    if (evbuffer_get_length(c->out) < MG_LOW_WATER && r) {
        if (c->tmode == MG_T_WRITE)
            mg_http_conn_arm(c, MG_T_NONE);
        if (r->target)
            r->target->drained(r);
        return;
    }
    if (r == NULL && evbuffer_get_length(c->out) == 0)
        mg_http_conn_advance(c);
}

/* The first bytes of a connection that may be HTTP/2 (X(c)->h2_probe):
 * on TLS, ALPN agreed "h2" (tls_ctx.c offers it only with http2 on); on an
 * h2c listener, the client preface (RFC 9113 3.4; no Upgrade: h2c). The
 * connection then goes to the HTTP/2 session with the bytes read (its
 * transport moved, this one freed). A prefix of the preface waits for the
 * rest (at most 24 bytes kept). 1: handed over or waiting; 0: HTTP/1.1,
 * data left for the parser (the probe is off from here on). */
static int mg_http_conn_h2_probe(mg_conn_t *c, const char *data, size_t n) {
    static const char pre[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const size_t plen = sizeof(pre) - 1;
    char buf[sizeof(pre)];
    int h2 = 0;
    if (c->io.tls) {
        h2 = c->io.alpn && strcmp(c->io.alpn, "h2") == 0;
    } else {
        size_t have = c->in_len, k = have + n < plen ? have + n : plen;
        if (have)
            memcpy(buf, c->in, have); /* an earlier prefix (have < plen) */
        memcpy(buf + have, data, k - have);
        if (memcmp(buf, pre, k) == 0) {
            if (k < plen) {
                mg_http_conn_save_input(c, data, n); /* wait for the rest */
                return 1;
            }
            h2 = 1;
        } else if (have) {
            /* not HTTP/2 after all: the saved bytes go first */
            char *all = malloc(have + n);
            if (all == NULL) {
                mg_http_conn_free(c);
                return 1;
            }
            memcpy(all, c->in, have);
            memcpy(all + have, data, n);
            c->in_len = 0;
            X(c)->h2_probe = 0;
            mg_http_conn_arm(c, MG_T_HEADER);
            mg_http_conn_exec(c, all, have + n);
            free(all);
            if (!X(c)->dead)
                mg_http_conn_advance(c);
            return 1;
        }
    }
    X(c)->h2_probe = 0;
    if (!h2)
        return 0;
    event_del(&c->rev); /* the HTTP/2 session registers its own on the fd */
    event_del(&c->wev);
    event_del(&c->tev);
    mg_tm_stop(&c->tm);
    c->rd_off = 1, c->wr_on = 0;
    if (c->in_len) {
        char *all = malloc(c->in_len + n);
        if (all) {
            memcpy(all, c->in, c->in_len);
            memcpy(all + c->in_len, data, n);
            mg_http_h2_start(&c->io, c->lidx, c->peer_ip, all, c->in_len + n);
            free(all);
        }
    } else {
        mg_http_h2_start(&c->io, c->lidx, c->peer_ip, data, n);
    }
    mg_http_conn_free(c); /* its transport is the HTTP/2 session's now (or closed) */
    return 1;
}

/* The TLS context of listener lidx in the current generation (a reload
 * brings new certificates to the next handshake), or NULL: the listener's
 * conf or server has no TLS since a reload. */
static void *mg_http_tls_ctx(int lidx) {
    mg_gen_t *g = mg_gen_current;
    const mg_addr_t *a = &mg_worker.laddr[lidx];
    for (int i = 0; i < g->nlisten; i++) {
        const mg_addr_t *l = &g->listen[i];
        if (l->tls && l->port == a->port && strcmp(l->host, a->host) == 0)
            return l->server < g->ntls_ctx ? g->tls_ctx[l->server] : NULL;
    }
    return NULL;
}

int mg_http_listener_h2(int lidx, int tls) {
    mg_gen_t *g = mg_gen_current;
    const mg_addr_t *a;
    if (mg_worker.laddr == NULL || lidx < 0 || lidx >= mg_worker.nfd)
        return 0;
    a = &mg_worker.laddr[lidx];
    for (int i = 0; i < g->nlisten; i++) {
        const mg_addr_t *l = &g->listen[i];
        if (!l->tls == !tls && !l->admin && l->port == a->port && strcmp(l->host, a->host) == 0)
            return l->h2;
    }
    return 0;
}

void mg_http_accept(int fd, struct sockaddr *sa, socklen_t salen, int lidx) {
    mg_xconn_t *x = calloc(1, sizeof(*x));
    mg_conn_t *c = &x->c;
    mg_io_t io;
    int one = 1, tls = mg_worker.laddr && mg_worker.laddr[lidx].tls;
    void *sslctx = tls ? mg_http_tls_ctx(lidx) : NULL;

    /* the transport owns fd from here on */
    if (sslctx == NULL || mg_io_tls_server(&io, fd, sslctx) != MG_OK)
        mg_io_tcp(&io, fd);
    if (x == NULL || tls != io.tls) {
        if (tls && sslctx == NULL)
            mg_debug("listener %d: no TLS certificates in generation %u: connection closed", lidx,
                     mg_gen_current->id);
        free(x);
        mg_io_close(&io);
        return;
    }
    c->out = evbuffer_new();
    if (c->out == NULL) {
        free(x);
        mg_io_close(&io);
        return;
    }
    (void)salen; /* the address is kept as text only (peer_ip) */
    c->io = io;
    c->is_tls = io.tls;
    c->lidx = lidx;
    /* ALPN may say h2 only where tls.http2 offered it: always look */
    x->h2_probe = io.tls || mg_http_listener_h2(lidx, 0);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, c->peer_ip, sizeof(c->peer_ip));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, c->peer_ip,
                  sizeof(c->peer_ip));
    llhttp_init(&c->parser, HTTP_REQUEST, &mg_http_settings);
    c->parser.data = c;
    event_assign(&c->rev, mg_worker.base, fd, EV_READ | EV_PERSIST, mg_http_conn_read_cb, c);
    event_assign(&c->wev, mg_worker.base, fd, EV_WRITE | EV_PERSIST, mg_http_conn_write_cb, c);
    evtimer_assign(&c->tev, mg_worker.base, mg_http_conn_timer_cb, c);
    mg_tm_init(&c->tm, mg_http_conn_tm_cb, c);
    event_add(&c->rev, NULL);
    mg_worker.active++;
    mg_met_conn(c->lidx, c->is_tls, 1);
    c->next = mg_http_conns;
    if (mg_http_conns)
        mg_http_conns->prev = c;
    mg_http_conns = c;
    mg_http_conn_arm(c, MG_T_HEADER);
}

/* ---- the sink of an HTTP/1.1 request (mg_http_sess_ops_t) ---- */

static size_t mg_http_h1_pending(mg_req_t *r) {
    mg_conn_t *c = MG_CONN(r);
    return c ? evbuffer_get_length(c->out) : 0;
}

static void mg_http_h1_flush(mg_req_t *r) {
    if (MG_CONN(r))
        mg_http_conn_flush(MG_CONN(r));
}

static void mg_http_h1_read_pause(mg_req_t *r, int on) {
    if (MG_CONN(r))
        mg_http_conn_read_enable(MG_CONN(r), !on);
}

/* a body to come: bound the gap between its bytes, whatever `read` is */
static void mg_http_h1_body_start(mg_req_t *r) {
    if (MG_CONN(r) && r->state == MG_REQ_BODY && (r->clen > 0 || r->chunked))
        mg_http_conn_arm(MG_CONN(r), MG_T_BODY);
}

static void mg_http_h1_cont(mg_req_t *r) {
    if (MG_CONN(r))
        evbuffer_add(MG_CONN(r)->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

static const char *mg_http_h1_peer_ip(const mg_req_t *r) { return MG_CONN(r)->peer_ip; }

static int mg_http_h1_tls(const mg_req_t *r) { return MG_CONN(r)->is_tls; }

/* req.tls's facts, made on the first ask and kept with the connection
 * (the transport may move to a WebSocket after it: see the handoff). */
struct mg_http_tls_s {
    mg_req_tls_t pub;
    char sni[256];
    char subject[512];
};

const mg_req_tls_t *mg_http_io_tls_info(mg_io_t *io, struct mg_http_tls_s **cache) {
    struct mg_http_tls_s *t;
    if (*cache)
        return &(*cache)->pub;
    if (io->ctx == NULL || (t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    t->pub.version = mg_io_tls_version(io); /* OpenSSL's static strings */
    t->pub.cipher = mg_io_tls_cipher(io);
    if (io->sni) {
        snprintf(t->sni, sizeof(t->sni), "%s", io->sni);
        t->pub.sni = t->sni;
    }
    if (mg_io_tls_peer_subject(io, t->subject, sizeof(t->subject)))
        t->pub.client_subject = t->subject;
    *cache = t;
    return &t->pub;
}

static const mg_req_tls_t *mg_http_h1_tls_info(const mg_req_t *r) {
    mg_conn_t *c = MG_CONN(r);
    if (c == NULL || !c->is_tls)
        return NULL;
    return mg_http_io_tls_info(&c->io, &X(c)->tls);
}

const mg_http_sess_ops_t mg_http_h1_ops = {
    .head = mg_http_h1_head,
    .body = mg_http_h1_body,
    .end = mg_http_h1_end,
    .cont = mg_http_h1_cont,
    .pending = mg_http_h1_pending,
    .flush = mg_http_h1_flush,
    .read_pause = mg_http_h1_read_pause,
    .body_start = mg_http_h1_body_start,
    .target_done = mg_http_h1_target_done,
    .abort = mg_http_h1_abort,
    .resume = mg_http_h1_resume,
    .peer_ip = mg_http_h1_peer_ip,
    .tls = mg_http_h1_tls,
    .tls_info = mg_http_h1_tls_info,
};

void mg_http_close_idle(void) {
    mg_conn_t *c = mg_http_conns;
    mg_http_pp_close_all();
    mg_http_h2_close_idle();
    while (c) {
        mg_conn_t *next = c->next;
        if (c->req == NULL && !X(c)->dead && evbuffer_get_length(c->out) == 0)
            mg_http_conn_close_later(c);
        c = next;
    }
}
