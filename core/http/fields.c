/*
 * fields.c -- HTTP field helpers shared by every HTTP user (sessions,
 * targets, Lua): status texts, the hop-by-hop header list, and flat
 * "Name: value\r\n" header line buffers (what req:set_header() and
 * req:set_response_header() fill).
 */
#include "http/http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *mg_http_status_text(int s) {
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Hop-by-hop headers (RFC 9110 7.6.1) plus the framing ones we redo. */
int mg_http_hop_by_hop(const char *n, size_t l) {
    /* by the first byte without case (| 0x20: bytes equal without case
     * stay equal, so a name that matches takes its letter's branch), then
     * the length and the name (mg_name_eq): at most one strncasecmp */
    if (l < 2)
        return 0;
    switch ((unsigned char)n[0] | 0x20) {
    case 'p': /* Proxy-Connection, Proxy-Authorization, ... */
        return l >= 6 && strncasecmp(n, "proxy-", 6) == 0;
    case 't':
        return MG_NAME_IS(n, l, "te") || MG_NAME_IS(n, l, "trailer") ||
               MG_NAME_IS(n, l, "transfer-encoding");
    case 'c': return MG_NAME_IS(n, l, "connection") || MG_NAME_IS(n, l, "content-length");
    case 'k': return MG_NAME_IS(n, l, "keep-alive");
    case 'u': return MG_NAME_IS(n, l, "upgrade");
    default: return 0;
    }
}

static int mg_http_lines_reserve(mg_lines_t *l, size_t n) {
    if (l->len + n > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        char *p;
        while (cap < l->len + n)
            cap *= 2;
        if ((p = realloc(l->p, cap)) == NULL)
            return MG_ERR;
        l->p = p, l->cap = cap;
    }
    return MG_OK;
}

int mg_http_lines_add(mg_lines_t *l, const char *s, size_t n) {
    if (mg_http_lines_reserve(l, n) != MG_OK)
        return MG_ERR;
    memcpy(l->p + l->len, s, n);
    l->len += n;
    return MG_OK;
}

int mg_http_lines_put(mg_lines_t *l, const char *name, size_t nlen, const char *value,
                      size_t vlen) {
    if (mg_http_lines_reserve(l, nlen + vlen + 4) != MG_OK)
        return MG_ERR;
    l->len += mg_line_put(l->p + l->len, name, nlen, value, vlen);
    return MG_OK;
}

/* Whether the line at p (up to end) is one of header `name`: its name, up
 * to the line's first ':', is `name` (any case). One test of the byte after
 * len, not a search for the colon: a name that matches is len bytes long
 * unless `name` itself holds a ':' (never a header name; checked when it
 * matches, so such a name still only meets its own first part). */
static int mg_http_line_is(const char *p, const char *end, const char *name, size_t len) {
    return (size_t)(end - p) > len && p[len] == ':' && mg_name_eq(p, len, name, len) &&
           memchr(name, ':', len) == NULL;
}

/* Removes the lines of header `name` (any case). Lines are "Name: value\r\n"
 * or "Name:\r\n" (a removal), so a line's name ends at its first ':'. */
void mg_http_lines_remove(mg_lines_t *l, const char *name, size_t len) {
    char *p = l->p, *end = l->p + l->len;
    while (p < end) {
        char *eol = memchr(p, '\n', end - p);
        if (eol == NULL)
            break;
        if (mg_http_line_is(p, eol, name, len)) {
            size_t n = eol + 1 - p;
            memmove(p, eol + 1, end - eol - 1);
            l->len -= n;
            end -= n;
            continue;
        }
        p = eol + 1;
    }
}

/* Appends the lines of `src` whose names `dst` lacks. */
void mg_http_lines_merge(struct evbuffer *dst, const mg_lines_t *src) {
    const char *p = src->p, *end = src->p + src->len;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p), *colon = memchr(p, ':', end - p);
        if (eol == NULL || colon == NULL || colon > eol)
            break;
        if (!mg_http_evlines_have(dst, p, colon - p))
            evbuffer_add(dst, p, eol + 1 - p);
        p = eol + 1;
    }
}

int mg_http_evlines_have(struct evbuffer *lines, const char *name, size_t len) {
    size_t n = evbuffer_get_length(lines);
    if (n == 0)
        return 0;
    return mg_http_lines_have((const char *)evbuffer_pullup(lines, -1), n, name, len);
}

/* Whether "Name: value\r\n" lines hold a header `name` (any case). */
int mg_http_lines_have(const char *p, size_t n, const char *name, size_t len) {
    const char *end = p + n;
    while (p < end) {
        const char *eol = memchr(p, '\n', end - p);
        if (eol == NULL)
            eol = end; /* a last line without its LF still counts */
        if (mg_http_line_is(p, eol, name, len))
            return 1;
        p = eol + 1;
    }
    return 0;
}
