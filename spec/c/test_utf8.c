/*
 * test_utf8.c -- the incremental UTF-8 validator of core/ws/ws.c
 * (mg_ws_utf8_run): valid text, overlongs, surrogates, truncated and split
 * characters, code points above U+10FFFF, and the 8/16-byte ASCII runs.
 */
#include "ct.h"
#include "ws/ws_int.h"

#include <stdlib.h>

/* the state after the whole string, from 0 */
static uint32_t run(const char *s, size_t n) { return mg_ws_utf8_run(0, (const uint8_t *)s, n); }
#define RUN(lit) run(lit, sizeof(lit) - 1)

/* the state after feeding s one byte at a time */
static uint32_t run_bytes(const char *s, size_t n) {
    uint32_t st = 0;
    for (size_t i = 0; i < n && st != MG_UTF8_REJECT; i++)
        st = mg_ws_utf8_run(st, (const uint8_t *)s + i, 1);
    return st;
}

static void valid(void) {
    CHECK_INT(RUN(""), 0);
    CHECK_INT(RUN("hello"), 0);
    CHECK_INT(RUN("\xC2\x80"), 0);                                     /* U+0080 */
    CHECK_INT(RUN("\xDF\xBF"), 0);                                     /* U+07FF */
    CHECK_INT(RUN("\xE0\xA0\x80"), 0);                                 /* U+0800 */
    CHECK_INT(RUN("\xED\x9F\xBF"), 0);                                 /* U+D7FF */
    CHECK_INT(RUN("\xEE\x80\x80"), 0);                                 /* U+E000 */
    CHECK_INT(RUN("\xEF\xBF\xBF"), 0);                                 /* U+FFFF */
    CHECK_INT(RUN("\xF0\x90\x80\x80"), 0);                             /* U+10000 */
    CHECK_INT(RUN("\xF4\x8F\xBF\xBF"), 0);                             /* U+10FFFF */
    CHECK_INT(RUN("\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5"), 0); /* kosme */
    CHECK_INT(RUN("a\0b"), 0);                                         /* NUL is valid UTF-8 */
    CHECK_INT(run_bytes("\xF0\x9F\x98\x80 ok \xE2\x82\xAC", 12), 0);
}

static void overlong(void) {
    CHECK_INT(RUN("\xC0\xAF"), MG_UTF8_REJECT); /* '/' in two bytes */
    CHECK_INT(RUN("\xC1\xBF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xE0\x80\xAF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xE0\x9F\xBF"), MG_UTF8_REJECT); /* U+07FF in three */
    CHECK_INT(RUN("\xF0\x80\x80\xAF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xF0\x8F\xBF\xBF"), MG_UTF8_REJECT); /* U+FFFF in four */
    CHECK_INT(RUN("\xF8\x88\x80\x80\x80"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xFC\x84\x80\x80\x80\x80"), MG_UTF8_REJECT);
    /* rejected at the first byte that makes it so, also byte by byte */
    CHECK_INT(mg_ws_utf8_run(0, (const uint8_t *)"\xC0", 1), MG_UTF8_REJECT);
    CHECK_INT(run_bytes("\xE0\x80\xAF", 3), MG_UTF8_REJECT);
}

static void surrogates(void) {
    CHECK_INT(RUN("\xED\xA0\x80"), MG_UTF8_REJECT);             /* U+D800 */
    CHECK_INT(RUN("\xED\xAD\xBF"), MG_UTF8_REJECT);             /* U+DB7F */
    CHECK_INT(RUN("\xED\xB0\x80"), MG_UTF8_REJECT);             /* U+DC00 */
    CHECK_INT(RUN("\xED\xBF\xBF"), MG_UTF8_REJECT);             /* U+DFFF */
    CHECK_INT(RUN("\xED\xA0\x80\xED\xB0\x80"), MG_UTF8_REJECT); /* a pair, CESU-8 */
    CHECK_INT(run_bytes("\xED\xA0\x80", 3), MG_UTF8_REJECT);
}

static void truncated(void) {
    /* a character cut at the end is not an error yet: the state says more
     * is due, and the next fragment may finish it */
    uint32_t st = RUN("ab\xE2\x82");
    CHECK(st != 0 && st != MG_UTF8_REJECT);
    CHECK_INT(mg_ws_utf8_run(st, (const uint8_t *)"\xAC", 1), 0);
    CHECK_INT(mg_ws_utf8_run(st, (const uint8_t *)"x", 1), MG_UTF8_REJECT);
    st = RUN("\xF0\x9F");
    CHECK(st != 0 && st != MG_UTF8_REJECT);
    st = mg_ws_utf8_run(st, (const uint8_t *)"\x98", 1);
    CHECK(st != 0 && st != MG_UTF8_REJECT);
    CHECK_INT(mg_ws_utf8_run(st, (const uint8_t *)"\x80zz", 3), 0);
    st = RUN("\xC3");
    CHECK(st != 0 && st != MG_UTF8_REJECT);
    /* a split character's range is kept across calls: E0 then 80 is overlong */
    st = RUN("\xE0");
    CHECK_INT(mg_ws_utf8_run(st, (const uint8_t *)"\x80\x80", 2), MG_UTF8_REJECT);
    st = RUN("\xED");
    CHECK_INT(mg_ws_utf8_run(st, (const uint8_t *)"\xA0\x80", 2), MG_UTF8_REJECT);
    /* a lone continuation byte, and a lead byte followed by ASCII */
    CHECK_INT(RUN("\x80"), MG_UTF8_REJECT);
    CHECK_INT(RUN("a\xBF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xC3("), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xE2\x82("), MG_UTF8_REJECT);
}

static void above_max(void) {
    CHECK_INT(RUN("\xF4\x90\x80\x80"), MG_UTF8_REJECT); /* U+110000 */
    CHECK_INT(RUN("\xF4\xBF\xBF\xBF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xF5\x80\x80\x80"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xF7\xBF\xBF\xBF"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xFE"), MG_UTF8_REJECT);
    CHECK_INT(RUN("\xFF"), MG_UTF8_REJECT);
    CHECK_INT(run_bytes("\xF4\x90\x80\x80", 4), MG_UTF8_REJECT);
}

static void ascii_runs(void) {
    /* a bad byte at every offset of runs long enough for the 16- and
     * 8-byte paths, and a good multibyte character after them */
    char buf[80];
    for (size_t len = 1; len <= 64; len++) {
        for (size_t bad = 0; bad < len; bad++) {
            memset(buf, 'a', len);
            buf[bad] = (char)0xFF;
            if (run(buf, len) != MG_UTF8_REJECT) {
                CHECK(run(buf, len) == MG_UTF8_REJECT);
                printf("    len %zu, bad byte at %zu\n", len, bad);
                return;
            }
            buf[bad] = 0x7F;
            CHECK_INT(run(buf, len), 0);
        }
        memset(buf, 'a', len);
        memcpy(buf + len, "\xE2\x82\xAC", 3);
        CHECK_INT(run(buf, len + 3), 0);
        buf[len + 2] = 'x'; /* the character's last byte is wrong */
        CHECK_INT(run(buf, len + 3), MG_UTF8_REJECT);
        buf[len + 2] = (char)0xAC;
        CHECK(run(buf, len + 2) != 0); /* cut after a long run: still due */
    }
    /* an ASCII run after a multibyte character in the same call */
    {
        char *big = malloc(4096 + 4);
        CHECK(big != NULL);
        if (big == NULL)
            return;
        memcpy(big, "\xC3\xA9", 2);
        memset(big + 2, 'z', 4096);
        CHECK_INT(run(big, 4098), 0);
        big[4097] = (char)0x80;
        CHECK_INT(run(big, 4098), MG_UTF8_REJECT);
        free(big);
    }
}

static void reject_sticks(void) {
    /* the caller stops at REJECT; from state 0 a fresh message is fine */
    CHECK_INT(RUN("\xFF"
                  "abc"),
              MG_UTF8_REJECT);
    CHECK_INT(RUN("abc\xC0\x80"
                  "def"),
              MG_UTF8_REJECT);
    CHECK_INT(mg_ws_utf8_run(0, (const uint8_t *)"ok", 2), 0);
}

int main(void) {
    CT_RUN(valid);
    CT_RUN(overlong);
    CT_RUN(surrogates);
    CT_RUN(truncated);
    CT_RUN(above_max);
    CT_RUN(ascii_runs);
    CT_RUN(reject_sticks);
    return ct_end();
}
