/*
 * fmt.c -- the bounded appender the access-log lines are built with
 * (base.h, mg_fmt_t): decimal integers, fixed-point milliseconds, JSON
 * strings and ISO 8601 times, straight into the line's buffer, without
 * printf. A line of ~25 fields used to be a dozen snprintf calls (three
 * of them formatting doubles) into pieces copied again into the line.
 */
#include "base/base.h"

#include <stdio.h>
#include <time.h>

/* two digits at a time: "00" .. "99" */
static const char mg_fmt_d2[201] = "0001020304050607080910111213141516171819"
                                   "2021222324252627282930313233343536373839"
                                   "4041424344454647484950515253545556575859"
                                   "6061626364656667686970717273747576777879"
                                   "8081828384858687888990919293949596979899";

void mg_fmt_u64(mg_fmt_t *b, uint64_t v) {
    char tmp[20];
    size_t n = sizeof(tmp);
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        tmp[--n] = mg_fmt_d2[d + 1];
        tmp[--n] = mg_fmt_d2[d];
    }
    if (v >= 10) {
        tmp[--n] = mg_fmt_d2[v * 2 + 1];
        tmp[--n] = mg_fmt_d2[v * 2];
    } else {
        tmp[--n] = (char)('0' + v);
    }
    mg_fmt_mem(b, tmp + n, sizeof(tmp) - n);
}

void mg_fmt_i64(mg_fmt_t *b, int64_t v) {
    if (v < 0) {
        mg_fmt_ch(b, '-');
        mg_fmt_u64(b, (uint64_t)0 - (uint64_t)v);
        return;
    }
    mg_fmt_u64(b, (uint64_t)v);
}

void mg_fmt_milli(mg_fmt_t *b, int64_t v) {
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    unsigned f = (unsigned)(u % 1000);
    char frac[4] = {'.', (char)('0' + f / 100), (char)('0' + f / 10 % 10), (char)('0' + f % 10)};
    if (v < 0)
        mg_fmt_ch(b, '-');
    mg_fmt_u64(b, u / 1000);
    mg_fmt_mem(b, frac, 4);
}

int64_t mg_fmt_round(double x) {
    if (!(x == x))
        return 0; /* NaN */
    if (x >= 9.2e18)
        return INT64_MAX;
    if (x <= -9.2e18)
        return INT64_MIN;
    return (int64_t)(x < 0 ? x - 0.5 : x + 0.5);
}

/* the bytes a JSON string cannot hold as they are (mg_json_escape's
 * choice: ASCII out, so every control and non-ASCII byte is \u00XX) */
static const unsigned char mg_fmt_esc[256] = {
    ['\0' ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x7f ... 0xff] = 1,
};

void mg_fmt_json(mg_fmt_t *b, const char *s, size_t n, size_t escap) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0, lim;
    if (escap < 8)
        return;
    lim = escap - 7; /* a byte is taken while o + 7 < escap */
    while (i < n && o < lim) {
        size_t room = lim - o, end = n - i < room ? n : i + room, j = i;
        unsigned char ch;
        while (j < end && !mg_fmt_esc[(unsigned char)s[j]])
            j++;
        if (j > i) { /* the run that needs nothing: one copy */
            mg_fmt_mem(b, s + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        ch = (unsigned char)s[i++];
        if (ch == '\0')
            return;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            mg_fmt_mem(b, e, 2);
            o += 2;
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            mg_fmt_mem(b, e, 6);
            o += 6;
        }
    }
}

void mg_fmt_iso_ms(mg_fmt_t *b, int64_t ms) {
    static int64_t last = -1;
    static char sec[32];
    static size_t sec_len;
    int64_t s;
    unsigned f;
    char tail[5];
    if (ms < 0)
        ms = 0;
    s = ms / 1000;
    f = (unsigned)(ms % 1000);
    if (s != last) {
        time_t t = (time_t)s;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL)
            memset(&tm, 0, sizeof(tm));
        sec_len = strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
        last = s;
    }
    mg_fmt_mem(b, sec, sec_len);
    tail[0] = '.';
    tail[1] = (char)('0' + f / 100);
    tail[2] = (char)('0' + f / 10 % 10);
    tail[3] = (char)('0' + f % 10);
    tail[4] = 'Z';
    mg_fmt_mem(b, tail, 5);
}
