/*
 * base.h -- the bottom layer: status codes, buffer marks, the logs, and
 * the one copy of each small helper (JSON escaping and error bodies,
 * header lines, header-name comparison, the Transfer-Encoding list). It
 * knows nothing of events, requests or Lua.
 * Layers, top to bottom (includes and calls go downward only; http,
 * upstream and ws are siblings that never include each other):
 *   app -> gateway -> lua -> http | upstream | ws -> conf -> net -> loop -> base
 * `make layers` (tools/layers.py) checks it.
 */
#ifndef MG_BASE_H
#define MG_BASE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MG_VERSION "0.1.0"

#define MG_OK 0
#define MG_ERR -1
#define MG_AGAIN -2

/* Output above this many bytes pauses the producer (backpressure). */
#define MG_HIGH_WATER (256 * 1024)
#define MG_LOW_WATER (64 * 1024)
#define MG_READ_CHUNK (64 * 1024)

/* ---- log.c ---- */
enum { MG_LOG_DEBUG, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };
extern int mg_log_level;
void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define mg_debug(...) (mg_log_level <= MG_LOG_DEBUG ? mg_log(MG_LOG_DEBUG, __VA_ARGS__) : (void)0)
#define mg_info(...) mg_log(MG_LOG_INFO, __VA_ARGS__)
#define mg_warn(...) mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_error(...) mg_log(MG_LOG_ERROR, __VA_ARGS__)
int mg_log_level_parse(const char *s);
/* Access log: one JSON line per request, buffered per worker (flushed at
 * 256 KiB, on a 200 ms timer and at exit) so it costs no syscall per request. */
struct event_base;
void mg_access_log_init(struct event_base *base);
void mg_access_log_write(const char *line, size_t len);
void mg_access_log_flush(void);
/* Its destination: NULL or "stderr", "stdout", or a file (appended to,
 * made if missing); a file that cannot be opened is logged and the
 * destination stays. At a generation's activation (conf/gen.c). */
void mg_access_log_open(const char *dest);
/* SIGUSR1: the file is opened again by its name (logrotate): 1, 0 when the
 * destination is not a file, -1 when it cannot be opened (kept as it is). */
int mg_access_log_reopen(void);
/* t (seconds since the epoch) as ISO 8601 UTC with milliseconds into out
 * (MG_ISO_TIME_MAX bytes); returns its length. */
#define MG_ISO_TIME_MAX 32
size_t mg_iso_time(char *out, double t);

/* ---- fmt.c: a bounded appender (the access-log lines) ---- */
/* Appends into p[0, cap): every append is cut at cap, so nothing is ever
 * written past it (a field cut that way is a bug in the caller's caps:
 * they are chosen so that a whole line always fits). No NUL is kept. */
typedef struct {
    char *p;
    size_t len, cap;
} mg_fmt_t;

static inline void mg_fmt_mem(mg_fmt_t *b, const void *s, size_t n) {
    if (n > b->cap - b->len)
        n = b->cap - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
#define mg_fmt_lit(b, lit) mg_fmt_mem((b), (lit), sizeof(lit) - 1)
static inline void mg_fmt_str(mg_fmt_t *b, const char *s) { mg_fmt_mem(b, s, strlen(s)); }
static inline void mg_fmt_ch(mg_fmt_t *b, char ch) {
    if (b->len < b->cap)
        b->p[b->len++] = ch;
}
void mg_fmt_u64(mg_fmt_t *b, uint64_t v);
void mg_fmt_i64(mg_fmt_t *b, int64_t v);
/* v thousandths as a decimal with 3 places, as printf's %.3f of v / 1000.0
 * ("-1.005", "0.042", "1796172570.801"): integers only, no double. */
void mg_fmt_milli(mg_fmt_t *b, int64_t v);
/* x rounded to the nearest integer (halves away from zero), saturated
 * (inline: three of them per access-log line) */
static inline int64_t mg_fmt_round(double x) {
    if (x >= 0 && x < 9.2e18) /* the usual case first: a time, a duration (a NaN fails it) */
        return (int64_t)(x + 0.5);
    if (x < 0 && x > -9.2e18)
        return (int64_t)(x - 0.5);
    if (x >= 9.2e18)
        return INT64_MAX;
    if (x <= -9.2e18)
        return INT64_MIN;
    return 0; /* NaN */
}
/* s[0, n) JSON-escaped as mg_json_escape escapes it into a buffer of
 * escap bytes: it stops at a NUL, and when fewer than 8 of those bytes
 * are left (so at most escap - 1 bytes are appended). Runs of bytes that
 * need no escape are found 8 bytes at a time and copied whole. n may be
 * SIZE_MAX for a NUL-terminated s (nothing past its NUL is read). */
void mg_fmt_json(mg_fmt_t *b, const char *s, size_t n, size_t escap);
/* ms (milliseconds since the epoch, >= 0) as ISO 8601 UTC,
 * "2026-12-01T22:48:00.123Z" (24 bytes); the part up to the seconds is
 * worked out once per second (per process) and copied after that. */
void mg_fmt_iso_ms(mg_fmt_t *b, int64_t ms);

/* The same appends unchecked, for a line builder that made sure once that
 * the line's worst case fits (mg_fmt_room; every field has a cap): each
 * writes at most the bytes its comment says, the checks above are gone.
 * The output is the checked appends' byte for byte. */
#define MG_FMT_U64_MAX 20   /* mg_fmt_put_u64 */
#define MG_FMT_I64_MAX 20   /* mg_fmt_put_i64 */
#define MG_FMT_MILLI_MAX 21 /* mg_fmt_put_milli: "-9223372036854775.808" */
#define MG_FMT_ISO_MAX 36   /* mg_fmt_put_iso_ms: 24 up to the year 9999 */
static inline int mg_fmt_room(const mg_fmt_t *b, size_t n) { return b->cap - b->len >= n; }
static inline void mg_fmt_put_mem(mg_fmt_t *b, const void *s, size_t n) {
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
#define mg_fmt_put_lit(b, lit) mg_fmt_put_mem((b), (lit), sizeof(lit) - 1)
/* The unchecked appends on a cursor, o, where the next byte goes (each
 * returns the new end): a line builder keeps o in a register, where a
 * put through b must reload b->p and b->len after every store (a byte
 * written through b->p could be b->len). mg_fmt_at / mg_fmt_to hand the
 * cursor over to and back from the appends on b. */
static inline char *mg_fmt_at(const mg_fmt_t *b) { return b->p + b->len; }
static inline void mg_fmt_to(mg_fmt_t *b, const char *o) { b->len = (size_t)(o - b->p); }
#define MG_FMT_O_LIT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) + sizeof(lit) - 1)
/* a short piece whose length is not a constant (an id, an address, a
 * name): up to 32 bytes inline, as two overlapping word copies, instead
 * of a call to memcpy; longer ones call it */
static inline char *mg_fmt_o_short(char *o, const char *s, size_t n) {
    if (n >= 16 && n <= 32) {
        memcpy(o, s, 16);
        memcpy(o + n - 16, s + n - 16, 16);
    } else if (n >= 8 && n < 16) {
        memcpy(o, s, 8);
        memcpy(o + n - 8, s + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(o, s, 4);
        memcpy(o + n - 4, s + n - 4, 4);
    } else if (n > 0 && n < 4) {
        o[0] = s[0];
        o[n / 2] = s[n / 2];
        o[n - 1] = s[n - 1];
    } else if (n > 32) {
        memcpy(o, s, n);
    }
    return o + n;
}
/* the log's usual numbers (a status, a generation, a few KiB) under 10000
 * inline, from two-digit pairs; the rest out of line */
extern const char mg_fmt_d2[201];  /* "00" .. "99" */
extern const char mg_fmt_d3[4001]; /* ".000" .. ".999" */
char *mg_fmt_o_u64_long(char *o, uint64_t v);
static inline char *mg_fmt_o_u64(char *o, uint64_t v) {
    if (v < 10) {
        o[0] = (char)('0' + v);
        return o + 1;
    }
    if (v < 100) {
        memcpy(o, mg_fmt_d2 + v * 2, 2);
        return o + 2;
    }
    if (v < 1000) { /* 4 bytes stored, 3 kept */
        memcpy(o, mg_fmt_d3 + v * 4 + 1, 4);
        return o + 3;
    }
    if (v < 10000) {
        memcpy(o, mg_fmt_d2 + v / 100 * 2, 2);
        memcpy(o + 2, mg_fmt_d2 + v % 100 * 2, 2);
        return o + 4;
    }
    return mg_fmt_o_u64_long(o, v);
}
static inline char *mg_fmt_o_i64(char *o, int64_t v) {
    if (v < 0) {
        *o++ = '-';
        return mg_fmt_o_u64(o, (uint64_t)0 - (uint64_t)v);
    }
    return mg_fmt_o_u64(o, (uint64_t)v);
}
/* v thousandths with 3 places (mg_fmt_milli's output) */
static inline char *mg_fmt_o_milli(char *o, int64_t v) {
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, q = u / 1000;
    unsigned f = (unsigned)(u - q * 1000); /* by the quotient's multiply, not a divide */
    if (v < 0)
        *o++ = '-';
    o = mg_fmt_o_u64(o, q);
    memcpy(o, mg_fmt_d3 + f * 4, 4);
    return o + 4;
}
static inline void mg_fmt_put_short(mg_fmt_t *b, const char *s, size_t n) {
    mg_fmt_to(b, mg_fmt_o_short(mg_fmt_at(b), s, n));
}
static inline void mg_fmt_put_ch(mg_fmt_t *b, char ch) { b->p[b->len++] = ch; }
static inline void mg_fmt_put_u64(mg_fmt_t *b, uint64_t v) {
    mg_fmt_to(b, mg_fmt_o_u64(mg_fmt_at(b), v));
}
static inline void mg_fmt_put_i64(mg_fmt_t *b, int64_t v) {
    mg_fmt_to(b, mg_fmt_o_i64(mg_fmt_at(b), v));
}
static inline void mg_fmt_put_milli(mg_fmt_t *b, int64_t v) {
    mg_fmt_to(b, mg_fmt_o_milli(mg_fmt_at(b), v));
}
/* The second of the last time written (per process), both ways: its
 * digits since the epoch (a line's "time") and its ISO 8601 text up to
 * the seconds ("timestamp"). A line's two times share one second, so the
 * second's check is one compare and each time two constant-size copies;
 * mg_fmt_sec_set works both out for another second (0 <= s). */
typedef struct {
    int64_t s; /* -1: none yet */
    size_t dec_len, iso_len;
    char dec[MG_FMT_U64_MAX];
    char iso[32];
} mg_fmt_sec_t;
extern mg_fmt_sec_t mg_fmt_sec;
void mg_fmt_sec_set(int64_t s);
/* mg_fmt_o_milli of ms since the epoch (MG_FMT_MILLI_MAX): the whole of
 * dec is copied, a constant size, and past dec_len written over or left
 * past the end, inside the room the caller has */
static inline char *mg_fmt_o_time_ms(char *o, int64_t ms) {
    int64_t s = ms / 1000;
    if (ms < 0)
        return mg_fmt_o_milli(o, ms);
    if (s != mg_fmt_sec.s)
        mg_fmt_sec_set(s);
    memcpy(o, mg_fmt_sec.dec, sizeof(mg_fmt_sec.dec));
    o += mg_fmt_sec.dec_len;
    memcpy(o, mg_fmt_d3 + (ms - s * 1000) * 4, 4);
    return o + 4;
}
/* "2026-12-01T22:48:00.123Z" of ms since the epoch, below 0 as 0
 * (MG_FMT_ISO_MAX; iso copied whole as dec above) */
static inline char *mg_fmt_o_iso_ms(char *o, int64_t ms) {
    int64_t s;
    if (ms < 0)
        ms = 0;
    s = ms / 1000;
    if (s != mg_fmt_sec.s)
        mg_fmt_sec_set(s);
    memcpy(o, mg_fmt_sec.iso, sizeof(mg_fmt_sec.iso));
    o += mg_fmt_sec.iso_len;
    memcpy(o, mg_fmt_d3 + (ms - s * 1000) * 4, 4);
    o[4] = 'Z';
    return o + 5;
}
/* mg_fmt_put_milli of ms since the epoch, the seconds' digits kept from
 * the last call in the same second */
void mg_fmt_put_time_ms(mg_fmt_t *b, int64_t ms);
void mg_fmt_put_json(mg_fmt_t *b, const char *s, size_t n, size_t escap); /* escap - 1 */
/* s[0, n) appended as it is when none of its bytes needs a JSON escape
 * (1; n bytes), else 0 and nothing appended (b's bytes past b->len may be
 * written): mg_fmt_put_json's output whenever n <= escap - 7. */
int mg_fmt_put_plain(mg_fmt_t *b, const char *s, size_t n);
/* mg_fmt_put_plain, and where s's first '?' is (q; n for none) when it
 * was appended, told by the check's vectors (no second pass); for 8 to 16
 * bytes with a '?' (map = 1) also where its '=' and '&' are (bit i: s[i]) */
typedef struct {
    size_t q;
    uint32_t eq, amp;
    int map;
} mg_fmt_qmap_t;
int mg_fmt_put_plain_q(mg_fmt_t *b, const char *s, size_t n, mg_fmt_qmap_t *q);
#ifdef __SSE2__
/* 16 bytes: a bit per byte that needs a JSON escape (mg_fmt_esc's bytes:
 * signed, below 0x20, which takes the controls and every byte >= 0x80,
 * or 0x7f, '"' or '\\') */
static inline unsigned mg_fmt_esc_bits16(__m128i v) {
    __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                             _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)));
    m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
    return (unsigned)_mm_movemask_epi8(m);
}
/* a bit per byte of v that is c */
static inline unsigned mg_fmt_ch_bits16(__m128i v, char c) {
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c)));
}
#endif
void mg_fmt_put_iso_ms(mg_fmt_t *b, int64_t ms);

/* Building an access-log line in place: b over max free bytes at the end
 * of the worker's buffer (which is written out first when it has fewer);
 * mg_access_log_commit keeps the b->len bytes built. Nothing else may
 * write to the access log in between. max <= MG_ACCESS_LINE_MAX. */
#define MG_ACCESS_LINE_MAX 8192
/* Inline (once per line, a call each and the buffer's reloads were ~40
 * instructions); the buffer and its fill are log.c's, nobody else's. */
#ifndef MG_ACCESS_BUF_SIZE /* -D to measure another size */
#define MG_ACCESS_BUF_SIZE (256 * 1024)
#endif
extern char mg_access_buf[MG_ACCESS_BUF_SIZE];
extern size_t mg_access_len;
static inline void mg_access_log_begin(mg_fmt_t *b, size_t max) {
    if (max > MG_ACCESS_LINE_MAX)
        max = MG_ACCESS_LINE_MAX;
    if (sizeof(mg_access_buf) - mg_access_len < max)
        mg_access_log_flush(); /* empties it (what a failed write held is dropped) */
    b->p = mg_access_buf + mg_access_len;
    b->len = 0;
    b->cap = max;
}
static inline void mg_access_log_commit(const mg_fmt_t *b) {
    if (b->p == mg_access_buf + mg_access_len && b->len <= sizeof(mg_access_buf) - mg_access_len)
        mg_access_len += b->len;
}

/* A name/value slice (headers, route params), borrowed. */
typedef struct {
    const char *name, *value;
    size_t nlen, vlen;
} mg_kv_t;

/* ---- util.c ---- */
/* Decimal digits of v into buf (no NUL); returns the length. */
size_t mg_utoa(char *buf, uint64_t v);
/* Header and token names compare without case (RFC 9110 5.1); MG_NAME_IS
 * takes a literal. The one copy: proxy, WebSocket and forwarding use it. */
static inline int mg_name_eq(const char *n, size_t l, const char *lit, size_t ll) {
    /* the first byte without case (| 0x20 folds ASCII letters; equal bytes
     * stay equal) sorts out most names of the same length before the call */
    return l == ll && (l == 0 || ((n[0] | 0x20) == (lit[0] | 0x20) && strncasecmp(n, lit, l) == 0));
}
#define MG_NAME_IS(n, l, lit) mg_name_eq((n), (l), (lit), sizeof(lit) - 1)
/* mg_name_eq for a literal of four lowercase ASCII letters ("host",
 * "date"), without the strncasecmp call: x | 0x20 is such a letter only
 * when x is it or its capital, so one word compare is exact. */
static inline int mg_name_is4(const char *n, size_t l, const char *lit4) {
    uint32_t a, b;
    if (l != 4)
        return 0;
    memcpy(&a, n, 4);
    memcpy(&b, lit4, 4);
    return (a | 0x20202020u) == b;
}
/* 1 when v[0..n) holds no control character but HTAB (no byte below 0x20
 * other than 0x09, no DEL): what a field value may hold (RFC 9110 5.5).
 * Eight bytes a step: a word with no byte below 0x20 and none equal to 0x7f
 * passes whole; one that may have is checked byte by byte (a tab, or the
 * real thing). Header values of a few hundred bytes (a JWT) are common:
 * with SSE2, sixteen bytes a step from 16 bytes on (mg_value_bad_bits16). */
static inline int mg_value_word_ok(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t del = w ^ (0x7f * ones);
    /* the classic "has a byte below k" and "has a zero byte" tests:
     * exact when no byte is 0x80 or above, else possibly a false hit */
    return !((((w - 0x20 * ones) & ~w) | ((del - ones) & ~del)) & highs);
}
static inline int mg_value_bytes_ok(const char *v, size_t n) {
    for (size_t k = 0; k < n; k++) {
        unsigned char ch = (unsigned char)v[k];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return 0;
    }
    return 1;
}
#ifdef __SSE2__
/* 16 bytes: a bit per byte a field value may not hold (below 0x20 but
 * HTAB, unsigned, or DEL) */
static inline unsigned mg_value_bad_bits16(__m128i v) {
    __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
    ctl = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\t')), ctl);
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f))));
}
#endif
static inline int mg_value_ok(const char *v, size_t n) {
    uint64_t w;
    size_t i = 0;
#ifdef __SSE2__
    if (n >= 16) { /* sixteen bytes a step, the last vector overlapping as below */
        for (;;) {
            if (mg_value_bad_bits16(_mm_loadu_si128((const __m128i *)(const void *)(v + i))))
                return 0;
            if (i + 16 == n)
                return 1;
            i = i + 32 <= n ? i + 16 : n - 16;
        }
    }
#endif
    if (n < 8) { /* one word too: the value, then bytes that pass ('a') */
        w = 0x6161616161616161ull;
        if (n)
            memcpy(&w, v, n);
        return mg_value_word_ok(w) || mg_value_bytes_ok(v, n);
    }
    for (;;) { /* the last word overlaps the one before when n is not a multiple of 8 */
        memcpy(&w, v + i, 8);
        if (!mg_value_word_ok(w) && !mg_value_bytes_ok(v + i, 8))
            return 0;
        if (i + 8 == n)
            return 1;
        i = i + 16 <= n ? i + 8 : n - 8;
    }
}
/* Escapes s for a JSON string (ASCII out) into out (cap bytes, NUL ended);
 * stops when fewer than 8 bytes of out are left. */
size_t mg_json_escape(char *out, size_t cap, const char *s);
/* The one JSON error body: {"error":"msg","request_id":"id"} and a newline. */
int mg_json_error_body(char *out, size_t cap, const char *msg, const char *request_id);

/* A header line "Name: value\r\n" written to out, which has room for
 * nlen + vlen + 4 bytes; returns its length. The one line builder. */
size_t mg_line_put(char *out, const char *name, size_t nlen, const char *value, size_t vlen);
/* The same line appended to an evbuffer in one add: MG_OK or MG_ERR. */
struct evbuffer;
int mg_line_add(struct evbuffer *b, const char *name, size_t nlen, const char *value, size_t vlen);

/* The next element of a comma-separated list (RFC 9110 5.6.1) in v[*i, n),
 * white space around it trimmed, empty elements skipped: 1 with *el and
 * *len set and *i past it, or 0 at the end. Start with *i = 0. */
int mg_list_next(const char *v, size_t n, size_t *i, const char **el, size_t *len);

/* Transfer-Encoding (RFC 9112 6.1), over all its field lines: feed each
 * line's value to mg_te_add, then read the counts. "chunked" is the one
 * coding moongate implements; a message may use it only once and last. */
typedef struct {
    int codings;      /* codings listed, over all lines (empty list items skipped) */
    int chunked;      /* how many of them are "chunked" */
    int last_chunked; /* the last one listed is "chunked" */
} mg_te_t;
void mg_te_add(mg_te_t *t, const char *value, size_t len);
/* Only "chunked", once: the framing moongate can forward as it is. */
static inline int mg_te_plain_chunked(const mg_te_t *t) {
    return t->codings == 1 && t->chunked == 1;
}

#endif
