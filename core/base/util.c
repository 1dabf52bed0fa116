/*
 * util.c -- small helpers every layer uses: decimal digits without printf,
 * JSON strings for moongate's own messages, the one "Name: value" header
 * line builder and the Transfer-Encoding list reader.
 */
#include "base/base.h"

#include <event2/buffer.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

size_t mg_utoa(char *buf, uint64_t v) {
    char tmp[24];
    size_t n = 0, i;
    do {
        tmp[n++] = '0' + v % 10;
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

/* JSON string escaping for our own messages (ASCII in, ASCII out): the
 * access log's escaper (fmt.c) into a NUL-ended buffer. */
size_t mg_json_escape(char *out, size_t cap, const char *s) {
    mg_fmt_t b = {out, 0, cap ? cap - 1 : 0};
    if (cap == 0)
        return 0;
    mg_fmt_json(&b, s, SIZE_MAX, cap); /* the NUL ends it */
    out[b.len] = '\0';
    return b.len;
}

/* The JSON error body every refusal sends, `{"error":msg,"request_id":id}`
 * and a newline, msg escaped. Returns its length (< cap, NUL-terminated;
 * an over-long msg is cut, never the closing brace). */
int mg_json_error_body(char *out, size_t cap, const char *msg, const char *request_id) {
    char esc[400];
    int n;
    mg_json_escape(esc, sizeof(esc), msg);
    n = snprintf(out, cap, "{\"error\":\"%s\",\"request_id\":\"%s\"}\n", esc, request_id);
    return n < 0 ? 0 : (size_t)n < cap ? n : (int)cap - 1;
}

size_t mg_line_put(char *out, const char *name, size_t nlen, const char *value, size_t vlen) {
    memcpy(out, name, nlen);
    out[nlen] = ':';
    out[nlen + 1] = ' ';
    memcpy(out + nlen + 2, value, vlen);
    out[nlen + 2 + vlen] = '\r';
    out[nlen + 3 + vlen] = '\n';
    return nlen + vlen + 4;
}

int mg_line_add(struct evbuffer *b, const char *name, size_t nlen, const char *value, size_t vlen) {
    struct evbuffer_iovec v;
    size_t n = nlen + vlen + 4;
    if (evbuffer_reserve_space(b, (ev_ssize_t)n, &v, 1) < 1)
        return MG_ERR;
    v.iov_len = mg_line_put(v.iov_base, name, nlen, value, vlen);
    return evbuffer_commit_space(b, &v, 1) == 0 ? MG_OK : MG_ERR;
}

int mg_list_next(const char *v, size_t n, size_t *i, const char **el, size_t *len) {
    size_t j = *i;
    while (j < n) {
        size_t s, e;
        while (j < n && (v[j] == ' ' || v[j] == '\t' || v[j] == ','))
            j++;
        s = j;
        while (j < n && v[j] != ',')
            j++;
        e = j;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s) {
            *i = j;
            *el = v + s;
            *len = e - s;
            return 1;
        }
    }
    *i = j;
    return 0;
}

void mg_te_add(mg_te_t *t, const char *v, size_t n) {
    const char *el;
    size_t i = 0, len;
    while (mg_list_next(v, n, &i, &el, &len)) {
        t->codings++;
        t->last_chunked = MG_NAME_IS(el, len, "chunked");
        t->chunked += t->last_chunked;
    }
}
