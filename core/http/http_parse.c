/*
 * http_parse.c -- llhttp's callbacks for a client connection: the request
 * line and headers into mg_req_t and the strict checks llhttp leaves to us
 * (RFC 9112: Host, framing headers that could smuggle a request, obs-fold,
 * Transfer-Encoding, the request target). A checked head goes to the
 * gateway's head hook (route, access, target), body bytes to its body
 * hook, the body's end to r->target.
 */
#include "http/http_int.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <lauxlib.h>

static int mg_http_on_url(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_header_field(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_header_value(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_headers_complete(llhttp_t *p);
static int mg_http_on_body(llhttp_t *p, const char *at, size_t len);
static int mg_http_on_message_complete(llhttp_t *p);

const llhttp_settings_t mg_http_settings = {
    .on_message_begin = mg_http_on_message_begin,
    .on_url = mg_http_on_url,
    .on_header_field = mg_http_on_header_field,
    .on_header_value = mg_http_on_header_value,
    .on_headers_complete = mg_http_on_headers_complete,
    .on_body = mg_http_on_body,
    .on_message_complete = mg_http_on_message_complete,
};

static int mg_http_request_id_valid(const char *v, size_t len) {
    if (len == 0 || len > 36)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)v[i]) || v[i] == '-' || v[i] == '_' || v[i] == '.'))
            return 0;
    return 1;
}

static int mg_http_append(mg_req_t *r, const char *at, size_t len) {
    if (r->hlen + len > r->gen->limits.header_size) {
        X(MG_CONN(r))->err_status = r->hstate == 0 ? 414 : 431;
        return -1;
    }
    memcpy(r->hbuf + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

int mg_http_on_message_begin(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = mg_req_new(c);
    if (r == NULL) {
        X(c)->err_status = 503;
        return -1;
    }
    c->req = r;
    r->state = MG_REQ_HEAD;
    mg_http_conn_arm(c, MG_T_HEADER);
    return 0;
}

static int mg_http_on_url(llhttp_t *p, const char *at, size_t len) {
    mg_req_t *r = ((mg_conn_t *)p->data)->req;
    r->url_len += len;
    return mg_http_append(r, at, len);
}

static int mg_http_on_header_field(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (r->hstate != 1) {
        if (r->nhdrs == r->gen->limits.header_count) {
            X(c)->err_status = 431;
            return -1;
        }
        r->hdrs[r->nhdrs].noff = r->hlen;
        r->hdrs[r->nhdrs].nlen = 0;
        r->hdrs[r->nhdrs].voff = r->hlen;
        r->hdrs[r->nhdrs].vlen = 0;
        r->nhdrs++;
        r->hstate = 1;
    }
    r->hdrs[r->nhdrs - 1].nlen += len;
    return mg_http_append(r, at, len);
}

static int mg_http_on_header_value(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    mg_hdr_t *h = &r->hdrs[r->nhdrs - 1];
    if (r->hstate != 2) {
        h->voff = r->hlen;
        h->vlen = 0;
        r->hstate = 2;
    } else if (at != X(c)->val_end && at != X(c)->exec_start) {
        /* a value continued after a line break: obs-fold (RFC 9112 5.2) */
        X(c)->err_status = 400;
        return -1;
    }
    X(c)->val_end = at + len;
    h->vlen += len;
    return mg_http_append(r, at, len);
}

/* The bytes a Host may hold: ASCII letters and digits and
 * -._~%!$&'()*+,;=:[] (and NUL, as the isalnum/strchr loop this replaced
 * took it; a header value with one fails mg_value_ok first), a bit each:
 * bytes 0..63 in the first word, 64..127 in the second. test_head checks
 * it against that loop. */
static const uint64_t mg_host_ok_bits[2] = {0x2fff7ff200000001ull, 0x47fffffeaffffffeull};

int mg_http_host_valid(const char *v, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch >= 128 || !((mg_host_ok_bits[ch >> 6] >> (ch & 63)) & 1))
            return 0;
    }
    return 1;
}

/* A Transfer-Encoding value: "chunked" alone is the one we implement.
 * Other codings before a final chunked get 501 (RFC 9112 6.1): the body is
 * framed, but forwarding it would hand the upstream bytes still coded.
 * Anything else (chunked not last, or absent) leaves the length unknown,
 * which llhttp refuses with 400 (6.3). Returns 0 or 501. */
int mg_http_te_check(const char *v, size_t n) {
    mg_te_t t = {0, 0, 0};
    mg_te_add(&t, v, n);
    return t.codings > 1 && t.last_chunked ? 501 : 0;
}

#define MG_HOST_MAX 262 /* a DNS name (255), ':' and a port */

/* Each header line (http_int.h); also what the access log needs of the
 * head (log_ready: Host, User-Agent, the head's size). */
int mg_http_check_fields(mg_req_t *r, mg_http_framing_t *f) {
    uint32_t hbytes = 0;
    int host1 = -1, ua1 = -1;
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        const char *v = r->hbuf + h->voff, *n = r->hbuf + h->noff;
        hbytes += h->nlen + h->vlen + 4;
        /* bare CR, NUL and other CTLs inside a value (obs-fold shows up as CR/LF) */
        if (!mg_value_ok(v, h->vlen))
            return 400;
        if (h->nlen == 0)
            return 400;
        if (mg_name_is4(n, h->nlen, "host")) {
            f->hosts++;
            r->host_idx = i;
            if (host1 < 0)
                host1 = i;
            if (!mg_http_host_valid(v, h->vlen))
                return 400;
        } else if (MG_NAME_IS(n, h->nlen, "transfer-encoding")) {
            int before = f->tes.codings;
            f->te++;
            mg_te_add(&f->tes, v, h->vlen);
            if (f->tes.codings - before > 1 && f->tes.last_chunked)
                f->te_501 = 1;
        } else if (MG_NAME_IS(n, h->nlen, "x-request-id")) {
            r->xrid_idx = i;
        } else if (MG_NAME_IS(n, h->nlen, "expect")) {
            if (MG_NAME_IS(v, h->vlen, "100-continue"))
                r->expect_continue = 1;
            else
                return 417;
        } else if (ua1 < 0 && MG_NAME_IS(n, h->nlen, "user-agent")) {
            ua1 = i;
        }
    }
    if ((r->log_has_host = host1 >= 0)) {
        r->log_host_off = r->hdrs[host1].voff;
        r->log_host_len = r->hdrs[host1].vlen;
    }
    if ((r->log_has_ua = ua1 >= 0)) {
        r->log_ua_off = r->hdrs[ua1].voff;
        r->log_ua_len = r->hdrs[ua1].vlen;
    }
    r->log_hbytes = hbytes;
    r->log_ready = 1;
    return 0;
}

/* An absolute-form target ("http://host/path") reduced to its path in
 * r->hbuf. Returns 0 or 400. */
static int mg_http_absolute_form(mg_req_t *r) {
    const char *url = r->hbuf, *s, *auth;
    char ab[MG_HOST_MAX];
    size_t skip, alen;
    if (r->url_len > 7 && strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else if (r->url_len > 8 && strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return 400;
    auth = url + skip;
    s = memchr(auth, '/', r->url_len - skip);
    if (s == NULL)
        return 400;
    alen = s - auth;
    /* userinfo ('@') is refused with the rest (RFC 9110 4.2.4) */
    if (alen == 0 || alen > sizeof(ab) || !mg_http_host_valid(auth, alen))
        return 400;
    memcpy(ab, auth, alen);
    memmove(r->hbuf, s, r->url_len - (s - url));
    r->url_len -= s - url;
    /* RFC 9112 3.2.2: the target's authority replaces Host, for routing
     * and on to the upstream. It goes in the bytes the move freed (at
     * least its own length); other header offsets stay valid. */
    if (r->host_idx >= 0) {
        r->log_hbytes = r->log_hbytes - r->hdrs[r->host_idx].vlen + (uint32_t)alen;
        r->log_host_off = (uint32_t)r->url_len; /* the one Host: hosts > 1 was refused */
        r->log_host_len = (uint32_t)alen;
        memcpy(r->hbuf + r->url_len, ab, alen);
        r->hdrs[r->host_idx].voff = (uint32_t)r->url_len;
        r->hdrs[r->host_idx].vlen = (uint32_t)alen;
    }
    return 0;
}

/* The path of an origin-form target: no fragment, no dot segments (plain
 * or %2e); sets r->path_len. Returns 0 or 400. */
int mg_http_check_path(mg_req_t *r) {
    const char *url = r->hbuf;
    const char *q = memchr(url, '?', r->url_len);
    const char *f = memchr(url, '#', r->url_len);
    size_t plen = q ? (size_t)(q - url) : r->url_len;
    if (f)
        return 400;
    r->path_len = plen;
    /* a path without '.' and '%' has neither (the loop below tests only
     * at those bytes): two vector scans instead of a test per byte */
    if (memchr(url, '.', plen) == NULL && memchr(url, '%', plen) == NULL)
        return 0;
    /* refuse dot segments: routing on "/a/../b" would differ from the upstream's view */
    for (size_t k = 0; k < plen; k++) {
        if (url[k] == '/' && k + 1 < plen && url[k + 1] == '.') {
            size_t e = k + 2;
            if (e < plen && url[e] == '.')
                e++;
            if (e == plen || url[e] == '/')
                return 400;
        }
        if (url[k] == '%' && k + 2 < plen && url[k + 1] == '2' &&
            (url[k + 2] == 'e' || url[k + 2] == 'E'))
            return 400;
    }
    return 0;
}

/* Checks llhttp leaves to us: Host (RFC 9112 3.2), framing, target form,
 * dot segments. Returns 0 or an HTTP status to refuse with. */
int mg_http_check_head(mg_req_t *r, llhttp_t *p) {
    mg_http_framing_t f = {0, 0, 0, {0, 0, 0}};
    int st = mg_http_check_fields(r, &f);

    if (st)
        return st;
    if (f.hosts > 1 || (f.hosts == 0 && p->http_minor >= 1))
        return 400;
    if (f.te && p->http_minor == 0)
        return 400; /* RFC 9112 6.1: faulty framing from a 1.0 client */
    /* chunked not last: llhttp refuses it too, but only after this
     * callback, when the request has been routed and may be on its way */
    if (f.te && !(p->flags & F_CHUNKED) && !f.te_501)
        return 400; /* RFC 9112 6.3 */
    /* "gzip" and "chunked" on two lines are "gzip, chunked" */
    if (f.te_501 || (f.te > 1 && (p->flags & F_CHUNKED) && f.tes.codings > 1))
        return 501; /* RFC 9112 6.1: a coding we do not implement */
    if (p->method == HTTP_CONNECT)
        return 405;
    if (p->http_major != 1)
        return 505;

    /* request target: origin-form, or "*" for OPTIONS; absolute-form is
     * accepted and reduced to its path */
    if (r->url_len == 1 && r->hbuf[0] == '*') {
        if (p->method != HTTP_OPTIONS)
            return 400;
        r->path_len = 1;
        return 0;
    }
    if (r->hbuf[0] != '/' && mg_http_absolute_form(r) != 0)
        return 400;
    return mg_http_check_path(r);
}

void mg_http_set_request_id(mg_req_t *r) {
    if (r->xrid_idx >= 0 &&
        mg_http_request_id_valid(r->hbuf + r->hdrs[r->xrid_idx].voff, r->hdrs[r->xrid_idx].vlen)) {
        memcpy(r->request_id, r->hbuf + r->hdrs[r->xrid_idx].voff, r->hdrs[r->xrid_idx].vlen);
        r->request_id[r->hdrs[r->xrid_idx].vlen] = '\0';
    } else {
        mg_request_id(r->request_id);
    }
}

static int mg_http_on_headers_complete(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    int st;

    r->method = p->method;
    r->http_minor = p->http_major == 1 ? p->http_minor : 0;
    r->keep_alive = llhttp_should_keep_alive(p) && !mg_worker.stopping;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->clen = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    r->state = MG_REQ_BODY;
    mg_http_conn_arm(c, mg_gen_current->timeouts.read > 0 ? MG_T_READ : MG_T_NONE);

    st = mg_http_check_head(r, p);
    mg_http_set_request_id(r);
    if (st) {
        X(c)->err_status = st;
        return -1;
    }
    /* route, access, target: the gateway's */
    return mg_http_hooks->head(r) == MG_HTTP_PAUSE ? HPE_PAUSED : 0;
}

static int mg_http_on_body(llhttp_t *p, const char *at, size_t len) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;

    r->body_rx += len;
    if (mg_http_hooks->body(r, at, len) < 0) {
        X(c)->err_status = -1; /* just close */
        return -1;
    }
    return 0;
}

static int mg_http_on_message_complete(llhttp_t *p) {
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    r->state = MG_REQ_DONE;
    if (c->tmode == MG_T_BODY)
        mg_http_conn_arm(c, MG_T_NONE);
    if (r->target)
        r->target->body_end(r);
    return HPE_PAUSED; /* one request at a time: responses stay in order */
}
