/*
 * util.c -- small formatting helpers every layer uses: decimal digits
 * without printf and JSON strings for moongate's own messages.
 */
#include "base/base.h"

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

/* JSON string escaping for our own messages (ASCII in, ASCII out). */
size_t mg_json_escape(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = ch;
        }
    }
    out[o] = '\0';
    return o;
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
