/*
 * http_resp.c -- HTTP/1.1 response framing behind mg_http_h1_ops (the
 * status line and Date, Content-Length or chunked framing, Connection,
 * HSTS on TLS connections),
 * our own JSON errors (through whichever sink the request has), field
 * checks for script-set headers, and the request's header lines as an
 * upstream gets them (mg_req_xhdrs_put).
 */
#include "http/http_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* "Date: ...\r\n", formatted once a second. */
const char *mg_http_date(size_t *len) {
    static char buf[64];
    static size_t blen;
    static time_t last;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        blen = strftime(buf, sizeof(buf), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = now;
    }
    *len = blen;
    return buf;
}

/* tchar (RFC 9110 5.6.2): ALPHA, DIGIT and "!#$%&'*+-.^_`|~" */
static const unsigned char mg_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int mg_http_field_ok(const char *name, size_t nlen, const char *value, size_t vlen) {
    const unsigned char *n = (const unsigned char *)name;
    size_t i = 0;
    if (nlen == 0)
        return 0;
    /* four bytes a test: a name is rarely wrong, so no early exit inside */
    for (; i + 4 <= nlen; i += 4)
        if (!(mg_tchar[n[i]] & mg_tchar[n[i + 1]] & mg_tchar[n[i + 2]] & mg_tchar[n[i + 3]]))
            return 0;
    for (; i < nlen; i++)
        if (!mg_tchar[n[i]])
            return 0;
    return mg_value_ok(value, vlen);
}

/* HSTS (RFC 6797 7.1, 8.1): the route table's tls.hsts line, on TLS
 * connections only and unless the response sets its own (an upstream's
 * or a script's wins). A plain connection pays one bit test. */
static void mg_http_h1_hsts(mg_req_t *r, mg_conn_t *c, const char *extra, size_t extralen) {
    int server = r->route ? r->route->server : mg_gen_server_of(r->gen, c->lidx);
    const mg_edge_t *e = mg_gen_edge(r->gen, server);
    if (e && e->hsts && !mg_http_lines_have(extra, extralen, "strict-transport-security", 25))
        evbuffer_add(c->out, e->hsts, e->hsts_len);
}

void mg_http_h1_head(mg_req_t *r, int status, const char *extra, size_t extralen, int64_t clen) {
    mg_conn_t *c = MG_CONN(r);
    char line[160];
    const char *text, *date;
    size_t n, dlen;
    int nobody = status < 200 || status == 204 || status == 304;

    r->status = status;
    r->resp_started = 1;
    if (c == NULL)
        return;
    if (!nobody) {
        if (clen < 0) {
            if (r->http_minor >= 1)
                r->resp_chunked = 1;
            else
                r->resp_close = 1;
        }
    }
    /* a half-closed client: close after this answer, unless it pipelined more */
    if (X(c)->upgrade || (X(c)->eof && c->in_len == 0) || mg_worker.stopping)
        r->resp_close = 1;
    /* built by hand: this runs once per response */
    text = mg_http_status_text(status);
    memcpy(line, "HTTP/1.1 ", 9);
    n = 9 + mg_utoa(line + 9, (unsigned)status);
    line[n++] = ' ';
    memcpy(line + n, text, strlen(text));
    n += strlen(text);
    line[n++] = '\r';
    line[n++] = '\n';
    date = mg_http_date(&dlen);
    memcpy(line + n, date, dlen);
    n += dlen;
    evbuffer_add(c->out, line, n);
    if (extralen)
        evbuffer_add(c->out, extra, extralen);
    if (c->io.tls)
        mg_http_h1_hsts(r, c, extra, extralen);
    if (!nobody) {
        n = 0;
        if (clen >= 0) {
            char num[24];
            n = mg_line_put(line, "Content-Length", 14, num, mg_utoa(num, (uint64_t)clen));
        } else if (r->resp_chunked) {
            memcpy(line, "Transfer-Encoding: chunked\r\n", 28);
            n = 28;
        }
        if (n)
            evbuffer_add(c->out, line, n);
    }
    if (!r->keep_alive || r->resp_close)
        evbuffer_add(c->out, "Connection: close\r\n\r\n", 21);
    else if (r->http_minor == 0)
        evbuffer_add(c->out, "Connection: keep-alive\r\n\r\n", 26);
    else
        evbuffer_add(c->out, "\r\n", 2);
}

void mg_http_h1_body(mg_req_t *r, const char *data, size_t len) {
    mg_conn_t *c = MG_CONN(r);
    if (c == NULL || len == 0 || r->method == HTTP_HEAD)
        return;
    r->bytes_out += len;
    if (r->resp_chunked) {
        char hex[24];
        int n = snprintf(hex, sizeof(hex), "%zx\r\n", len);
        evbuffer_add(c->out, hex, n);
        evbuffer_add(c->out, data, len);
        evbuffer_add(c->out, "\r\n", 2);
    } else {
        evbuffer_add(c->out, data, len);
    }
}

void mg_http_h1_end(mg_req_t *r) {
    if (MG_CONN(r) && r->resp_chunked && r->method != HTTP_HEAD)
        evbuffer_add(MG_CONN(r)->out, "0\r\n\r\n", 5);
}

void mg_resp_json_error_with(mg_req_t *r, int status, const char *msg, const char *extra) {
    char body[600], hdrs[300];
    int n, hl;
    n = mg_json_error_body(body, sizeof(body), msg, r->request_id);
    hl = snprintf(hdrs, sizeof(hdrs), "Content-Type: application/json\r\n%s", extra);
    if (status >= 400 && r->state != MG_REQ_DONE)
        r->resp_close = 1; /* the unread body would be taken for a request */
    mg_resp_head(r, status, hdrs, hl, n);
    mg_resp_body(r, body, n);
    r->resp_done = 1;
}

void mg_resp_json_error(mg_req_t *r, int status, const char *msg) {
    mg_resp_json_error_with(r, status, msg, "");
}

/* Writes the headers set by req:set_header() (not the removals) to out,
 * at most r->xhdrs.len bytes; returns the length. */
size_t mg_req_xhdrs_put(const mg_req_t *r, char *out) {
    const char *p = r->xhdrs.p, *end = p + r->xhdrs.len;
    size_t o = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p);
        if (eol == NULL)
            break;
        if (eol - p >= 2 && eol[-2] != ':') { /* "Name:\r\n" is a removal */
            memcpy(out + o, p, eol + 1 - p);
            o += eol + 1 - p;
        }
        p = eol + 1;
    }
    return o;
}

int mg_req_xhdr_has(mg_req_t *r, const char *name, size_t len) {
    return mg_http_lines_have(r->xhdrs.p, r->xhdrs.len, name, len);
}
