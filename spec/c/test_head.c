/*
 * test_head.c -- the request-head checks of core/http/http_parse.c that llhttp
 * leaves to us: mg_http_host_valid, mg_http_te_check, and
 * mg_http_check_head on heads laid out as the parser callbacks lay them
 * (url, then names and values, in one buffer): Host, header values,
 * framing, Expect, method and version, target forms, dot segments; and
 * mg_value_ok (eight bytes a step) and mg_http_field_ok against byte-wise
 * references on every byte at every offset and on random values; the
 * header-line helpers (mg_http_lines_have, mg_http_lines_remove) against
 * their former loops; and mg_http_hop_by_hop against the table it replaced,
 * on every byte at every offset of each hop-by-hop name, of its prefixes and
 * of its case variants.
 */
#include <ctype.h>

#include "ct.h"
#include "ct_req.h"
#include "http/http_int.h"

static char hbuf[2048];
static mg_hdr_t hdrs[16];
static mg_req_t req;
static llhttp_t parser;

/* A parsed head: method, HTTP/1.minor, llhttp flags, the target, then
 * NULL-terminated name, value pairs. */
static void head(int method, int minor, int flags, const char *url, const char *const *kv) {
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, url, kv);
    req.method = method;
    req.http_minor = minor;
    memset(&parser, 0, sizeof(parser));
    parser.method = (uint8_t)method;
    parser.http_major = 1;
    parser.http_minor = (uint8_t)minor;
    parser.flags = (uint16_t)flags;
}

static const char *const H[] = {"Host", "example.com", NULL};

static int check(int method, const char *url) {
    head(method, 1, 0, url, H);
    return mg_http_check_head(&req, &parser);
}

static int check_hdrs(int minor, int flags, const char *const *kv) {
    head(HTTP_GET, minor, flags, "/", kv);
    return mg_http_check_head(&req, &parser);
}

/* mg_http_host_valid as it was: a byte loop over isalnum and strchr */
static int host_ref(const char *v, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (!(isalnum(ch) || strchr("-._~%!$&'()*+,;=:[]", ch)))
            return 0;
    }
    return 1;
}

static void host_chars(void) {
    char v[8];
    int bad = 0;
    /* every byte at every offset of a 1..8-byte Host, against the old loop */
    for (size_t n = 1; n <= sizeof(v); n++)
        for (size_t at = 0; at < n; at++)
            for (int b = 0; b < 256; b++) {
                memset(v, 'a', n);
                v[at] = (char)b;
                bad += mg_http_host_valid(v, n) != host_ref(v, n);
            }
    CHECK_INT(bad, 0);
    CHECK_INT(mg_http_host_valid("example.com", 11), 1);
    CHECK_INT(mg_http_host_valid("Example.COM:8080", 16), 1);
    CHECK_INT(mg_http_host_valid("[::1]:80", 8), 1);
    CHECK_INT(mg_http_host_valid("a-b_c~d%41", 10), 1);
    CHECK_INT(mg_http_host_valid("", 0), 1);
    CHECK_INT(mg_http_host_valid("a b", 3), 0);
    CHECK_INT(mg_http_host_valid("a/b", 3), 0);
    CHECK_INT(mg_http_host_valid("user@h", 6), 0);
    CHECK_INT(mg_http_host_valid("h\"x", 3), 0);
    CHECK_INT(mg_http_host_valid("h\\x", 3), 0);
    CHECK_INT(mg_http_host_valid("h\x80", 2), 0);
    CHECK_INT(mg_http_host_valid("h\r", 2), 0);
    CHECK_INT(mg_http_host_valid("h?x", 3), 0);
    CHECK_INT(mg_http_host_valid("h#x", 3), 0);
    /* the length is honoured: the byte after it is not read */
    CHECK_INT(mg_http_host_valid("ok bad", 2), 1);
}

static void te_values(void) {
    CHECK_INT(mg_http_te_check("chunked", 7), 0);
    CHECK_INT(mg_http_te_check("CHUNKED", 7), 0);
    CHECK_INT(mg_http_te_check("gzip", 4), 0);
    CHECK_INT(mg_http_te_check("", 0), 0);
    CHECK_INT(mg_http_te_check("chunked, gzip", 13), 0); /* chunked not last: llhttp's 400 */
    CHECK_INT(mg_http_te_check("gzip, chunked", 13), 501);
    CHECK_INT(mg_http_te_check("gzip,chunked", 12), 501);
    CHECK_INT(mg_http_te_check("deflate, gzip ,\tChunked \t", 25), 501);
    CHECK_INT(mg_http_te_check("gzip, chunkedx", 14), 0);
    CHECK_INT(mg_http_te_check("gzip, xchunked", 14), 0);
    CHECK_INT(mg_http_te_check("chunked, chunked", 16), 501);
    CHECK_INT(mg_http_te_check("gzip, chunked+", 13), 501); /* n bounds the value */
}

static void host_header(void) {
    static const char *const none[] = {NULL};
    static const char *const two[] = {"Host", "a", "host", "b", NULL};
    static const char *const bad[] = {"Host", "a b", NULL};
    static const char *const ok[] = {"X-A", "1", "hOsT", "example.com:81", NULL};
    CHECK_INT(check_hdrs(1, 0, none), 400); /* HTTP/1.1 needs Host */
    CHECK_INT(check_hdrs(0, 0, none), 0);   /* 1.0 does not */
    CHECK_INT(check_hdrs(1, 0, two), 400);
    CHECK_INT(check_hdrs(0, 0, two), 400);
    CHECK_INT(check_hdrs(1, 0, bad), 400);
    CHECK_INT(check_hdrs(1, 0, ok), 0);
    CHECK_INT(req.host_idx, 1);
}

static void header_values(void) {
    static const char *const tab[] = {"Host", "h", "X-A", "a\tb", NULL};
    static const char *const cr[] = {"Host", "h", "X-A", "a\rb", NULL};
    static const char *const lf[] = {"Host", "h", "X-A", "a\nb", NULL};
    static const char *const del[] = {"Host", "h", "X-A", "a\x7f", NULL};
    static const char *const esc[] = {"Host", "h", "X-A", "\x1b[0m", NULL};
    static const char *const hi[] = {"Host", "h", "X-A", "caf\xc3\xa9", NULL};
    static const char *const noname[] = {"Host", "h", "", "v", NULL};
    static const char *const xrid[] = {"Host", "h", "X-Request-ID", "abc", NULL};
    CHECK_INT(check_hdrs(1, 0, tab), 0);
    CHECK_INT(check_hdrs(1, 0, cr), 400);
    CHECK_INT(check_hdrs(1, 0, lf), 400);
    CHECK_INT(check_hdrs(1, 0, del), 400);
    CHECK_INT(check_hdrs(1, 0, esc), 400);
    CHECK_INT(check_hdrs(1, 0, hi), 0); /* obs-text is allowed in values */
    CHECK_INT(check_hdrs(1, 0, noname), 400);
    CHECK_INT(check_hdrs(1, 0, xrid), 0);
    CHECK_INT(req.xrid_idx, 1);
}

static void framing(void) {
    static const char *const te[] = {"Host", "h", "Transfer-Encoding", "chunked", NULL};
    static const char *const te501[] = {"Host", "h", "Transfer-Encoding", "gzip, chunked", NULL};
    static const char *const tenot[] = {"Host", "h", "Transfer-Encoding", "chunked, gzip", NULL};
    CHECK_INT(check_hdrs(1, F_CHUNKED, te), 0);
    CHECK_INT(check_hdrs(0, F_CHUNKED, te), 400); /* TE from a 1.0 client */
    CHECK_INT(check_hdrs(1, F_CHUNKED, te501), 501);
    CHECK_INT(check_hdrs(1, 0, tenot), 400);
}

static void expect(void) {
    static const char *const c100[] = {"Host", "h", "Expect", "100-Continue", NULL};
    static const char *const other[] = {"Host", "h", "Expect", "200-ok", NULL};
    static const char *const longer[] = {"Host", "h", "Expect", "100-continue, x", NULL};
    CHECK_INT(check_hdrs(1, 0, c100), 0);
    CHECK_INT(req.expect_continue, 1);
    CHECK_INT(check_hdrs(1, 0, other), 417);
    CHECK_INT(check_hdrs(1, 0, longer), 417);
}

static void method_version(void) {
    CHECK_INT(check(HTTP_CONNECT, "example.com:443"), 405);
    head(HTTP_GET, 0, 0, "/", H);
    parser.http_major = 2;
    CHECK_INT(mg_http_check_head(&req, &parser), 505);
    CHECK_INT(check(HTTP_DELETE, "/x"), 0);
}

static void target_forms(void) {
    CHECK_INT(check(HTTP_OPTIONS, "*"), 0);
    CHECK_INT(req.path_len, 1);
    CHECK_INT(check(HTTP_GET, "*"), 400);
    CHECK_INT(check(HTTP_OPTIONS, "**"), 400);
    CHECK_INT(check(HTTP_GET, "x/y"), 400);
    CHECK_INT(check(HTTP_GET, "/a/b?q=1&r=/x"), 0);
    CHECK_INT(req.path_len, 4);
    CHECK_INT(check(HTTP_GET, "/a#frag"), 400);
    CHECK_INT(check(HTTP_GET, "/a?x#frag"), 400);
    /* absolute-form: reduced to its path; the authority replaces Host */
    CHECK_INT(check(HTTP_GET, "http://Other.example:8080/p/q?x=1"), 0);
    CHECK_INT(req.url_len, 8);
    CHECK(memcmp(hbuf, "/p/q?x=1", 8) == 0);
    CHECK_INT(req.path_len, 4);
    CHECK_INT(req.host_idx, 0);
    CHECK(req.hdrs[0].vlen == 18 && memcmp(hbuf + req.hdrs[0].voff, "Other.example:8080", 18) == 0);
    CHECK_INT(check(HTTP_GET, "HTTPS://h/"), 0);
    CHECK_INT(req.url_len, 1);
    CHECK_INT(check(HTTP_GET, "http://h"), 400); /* no path */
    CHECK_INT(check(HTTP_GET, "http:///x"), 400);
    CHECK_INT(check(HTTP_GET, "http://u:p@h/x"), 400);
    CHECK_INT(check(HTTP_GET, "ftp://h/x"), 400);
    CHECK_INT(check(HTTP_GET, "http://h/a/../b"), 400); /* checked after the reduction */
    {
        char url[400] = "http://";
        memset(url + 7, 'a', 300);
        memcpy(url + 307, "/x", 3);
        CHECK_INT(check(HTTP_GET, url), 400); /* an authority longer than a host can be */
    }
}

static void dot_segments(void) {
    CHECK_INT(check(HTTP_GET, "/a/../b"), 400);
    CHECK_INT(check(HTTP_GET, "/a/./b"), 400);
    CHECK_INT(check(HTTP_GET, "/a/.."), 400);
    CHECK_INT(check(HTTP_GET, "/a/."), 400);
    CHECK_INT(check(HTTP_GET, "/."), 400);
    CHECK_INT(check(HTTP_GET, "/.."), 400);
    CHECK_INT(check(HTTP_GET, "/../?x"), 400);
    CHECK_INT(check(HTTP_GET, "/%2e%2e/x"), 400);
    CHECK_INT(check(HTTP_GET, "/a/%2E"), 400);
    CHECK_INT(check(HTTP_GET, "/.well-known/x"), 0);
    CHECK_INT(check(HTTP_GET, "/a/..b/c"), 0);
    CHECK_INT(check(HTTP_GET, "/a/..."), 0);
    CHECK_INT(check(HTTP_GET, "/a.b/c."), 0);
    CHECK_INT(check(HTTP_GET, "/%2f"), 0);
    CHECK_INT(check(HTTP_GET, "/a?p=/../x"), 0); /* the query is not a path */
}

static int value_ref(const char *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return 0;
    }
    return 1;
}

static int name_ref(const char *s, size_t n) {
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch > 0x20 && ch < 0x7f && strchr("!#$%&'*+-.^_`|~", ch))))
            return 0;
    }
    return 1;
}

static void value_words(void) {
    char v[72];
    int bad = 0;
    /* one byte of every value at every offset of a 1..72-byte value (the
     * words, and with SSE2 from 16 bytes on the vectors, the last one
     * overlapping) */
    for (size_t n = 1; n <= sizeof(v); n++)
        for (size_t at = 0; at < n; at++)
            for (int b = 0; b < 256; b++) {
                memset(v, 'a', n);
                v[at] = (char)b;
                bad += mg_value_ok(v, n) != value_ref(v, n);
                bad += mg_http_field_ok(v, n, "x", 1) != name_ref(v, n);
                bad += mg_http_field_ok("X-A", 3, v, n) != value_ref(v, n);
            }
    /* random values, high bytes (0x80..0xff) mixed in */
    uint32_t seed = 12345;
    for (int round = 0; round < 200000; round++) {
        size_t n = 1 + round % sizeof(v);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = (seed >> 16) & 0xff;
            v[i] = (char)((seed >> 8) % 16 == 0 ? r : (r % 2 ? 0x80 + r % 0x80 : 0x20 + r % 0x5f));
        }
        bad += mg_value_ok(v, n) != value_ref(v, n);
        bad += mg_http_field_ok(v, n, "x", 1) != name_ref(v, n);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(mg_value_ok("", 0), 1);
    CHECK_INT(mg_http_field_ok("", 0, "v", 1), 0);
}

/* The line helpers of core/http/fields.c as they were (a search for the
 * colon, then for the LF): the references for header_lines. */
static int lines_have_ref(const char *p, size_t n, const char *name, size_t len) {
    const char *end = p + n;
    while (p < end) {
        const char *colon = memchr(p, ':', end - p), *eol;
        if (colon == NULL)
            break;
        if (mg_name_eq(p, colon - p, name, len))
            return 1;
        eol = memchr(colon, '\n', end - colon);
        if (eol == NULL)
            break;
        p = eol + 1;
    }
    return 0;
}

static void lines_remove_ref(mg_lines_t *l, const char *name, size_t len) {
    char *p = l->p, *end = l->p + l->len;
    while (p < end) {
        char *eol = memchr(p, '\n', end - p), *colon = memchr(p, ':', end - p);
        if (eol == NULL)
            break;
        if (colon && colon < eol && mg_name_eq(p, colon - p, name, len)) {
            size_t n = eol + 1 - p;
            memmove(p, eol + 1, end - eol - 1);
            l->len -= n;
            end -= n;
            continue;
        }
        p = eol + 1;
    }
}

/* mg_http_lines_have and mg_http_lines_remove against the references on
 * random buffers of "Name: value\r\n" and "Name:\r\n" lines (names that
 * are prefixes of one another, in any case; values holding ':'), asked
 * for names of the same set, names with a ':' in them and the empty name;
 * and with the last line's LF cut off. */
static void header_lines(void) {
    static const char *names[] = {
        "X-A",       "x-a", "X-Ab", "X-A-B", "RateLimit-Limit", "ratelimit-limit",
        "RateLimit", "A",   "ab",   "X-A:x"};
    static const char *vals[] = {"1", "", "a:b", "x-a: 2", "  v ", "ratelimit-limit:"};
    const size_t nn = sizeof(names) / sizeof(names[0]), nv = sizeof(vals) / sizeof(vals[0]);
    char buf[1024], buf2[1024];
    uint32_t seed = 777;
    int bad = 0;
    for (int round = 0; round < 100000; round++) {
        size_t n = 0;
        seed = seed * 1103515245u + 12345u;
        int lines = (seed >> 16) % 6;
        for (int i = 0; i < lines; i++) {
            seed = seed * 1103515245u + 12345u;
            const char *nm = names[(seed >> 8) % (nn - 1)]; /* a line's name has no ':' */
            const char *v = vals[(seed >> 16) % nv];
            if ((seed >> 24) % 5 == 0)
                n += (size_t)sprintf(buf + n, "%s:\r\n", nm);
            else
                n += (size_t)sprintf(buf + n, "%s: %s\r\n", nm, v);
        }
        seed = seed * 1103515245u + 12345u;
        size_t cut = n > 0 && (seed >> 8) % 4 == 0 ? (seed >> 12) % 3 : 0; /* a last line cut */
        n -= cut;
        const char *q = (seed >> 20) % 9 == 0 ? "" : names[(seed >> 16) % nn];
        size_t ql = strlen(q);
        bad += mg_http_lines_have(buf, n, q, ql) != lines_have_ref(buf, n, q, ql);
        memcpy(buf2, buf, n);
        mg_lines_t a = {.p = buf, .len = n, .cap = sizeof(buf)};
        mg_lines_t b = {.p = buf2, .len = n, .cap = sizeof(buf2)};
        mg_http_lines_remove(&a, q, ql);
        lines_remove_ref(&b, q, ql);
        bad += a.len != b.len || memcmp(a.p, b.p, a.len) != 0;
    }
    CHECK_INT(bad, 0);
    /* the lengths from the literals (hand counts read past them: ASan) */
#define LINES_HAVE(lit, name) mg_http_lines_have(lit, sizeof(lit) - 1, name, strlen(name))
    CHECK_INT(LINES_HAVE("A: 1\r\nB: 2\r\n", "b"), 1);
    CHECK_INT(LINES_HAVE("A: 1\r\nB: 2", "b"), 1);
    CHECK_INT(LINES_HAVE("A: b:\r\n", "b"), 0);
#undef LINES_HAVE
}

/* mg_http_hop_by_hop as it was: a table of names and the proxy- prefix */
static int hop_ref(const char *n, size_t l) {
    static const char *const hop[] = {
        "connection",       "keep-alive",         "te",
        "trailer",          "transfer-encoding",  "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "content-length"};
    if (l >= 6 && strncasecmp(n, "proxy-", 6) == 0)
        return 1;
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strlen(hop[i]) == l && strncasecmp(hop[i], n, l) == 0)
            return 1;
    return 0;
}

static void hop_names(void) {
    static const char *const names[] = {"connection",
                                        "keep-alive",
                                        "te",
                                        "trailer",
                                        "transfer-encoding",
                                        "upgrade",
                                        "proxy-connection",
                                        "proxy-authenticate",
                                        "proxy-authorization",
                                        "content-length",
                                        "proxy-x",
                                        "proxy-",
                                        "content-type",
                                        "date",
                                        "server",
                                        "host",
                                        "t",
                                        "x-upgrade",
                                        "tE"};
    char v[32];
    int bad = 0, hits = 0;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        size_t n = strlen(names[k]);
        /* every prefix, with every byte at every offset */
        for (size_t len = 0; len <= n; len++)
            for (size_t at = 0; at < len; at++)
                for (int b = 0; b < 256; b++) {
                    memcpy(v, names[k], len);
                    v[at] = (char)b;
                    bad += mg_http_hop_by_hop(v, len) != hop_ref(v, len);
                }
        /* the case of each letter flipped, by the bits of i */
        for (unsigned i = 0; i < 4096; i++) {
            memcpy(v, names[k], n);
            for (size_t j = 0; j < n && j < 12; j++)
                if ((i >> j) & 1 && v[j] >= 'a' && v[j] <= 'z')
                    v[j] = (char)(v[j] - 32);
            hits += mg_http_hop_by_hop(v, n);
            bad += mg_http_hop_by_hop(v, n) != hop_ref(v, n);
        }
    }
    CHECK_INT(bad, 0);
    CHECK(hits > 0);
    CHECK_INT(mg_http_hop_by_hop("Transfer-Encoding", 17), 1);
    CHECK_INT(mg_http_hop_by_hop("Proxy-Whatever", 14), 1);
    CHECK_INT(mg_http_hop_by_hop("Content-Type", 12), 0);
    CHECK_INT(mg_http_hop_by_hop("", 0), 0);
}

/* the loop mg_http_check_path ran on every path before it skipped paths
 * without '.' and '%' (the reference for path_checks) */
static int ref_check_path(const char *url, size_t len, size_t *plen_out) {
    const char *q = memchr(url, '?', len);
    size_t plen = q ? (size_t)(q - url) : len;
    if (memchr(url, '#', len))
        return 400;
    *plen_out = plen;
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

/* mg_http_check_path against the former loop on 300 000 random targets
 * of 1-14 bytes from "/.%2eEa?#" (dot segments, %2e, queries, fragments
 * at every offset): the same verdict and path length */
static void path_checks(void) {
    static const char alpha[] = "/.%2eEa?#";
    uint32_t seed = 4242;
    int bad = 0;
    for (int n = 0; n < 300000; n++) {
        char url[16], hbuf[64];
        mg_hdr_t hdrs[1];
        mg_req_t r;
        size_t len, want_plen = 0;
        int want, got;
        seed = seed * 1103515245u + 12345u;
        len = 1 + (seed >> 16) % 14;
        url[0] = '/';
        for (size_t i = 1; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            url[i] = alpha[(seed >> 16) % 9];
        }
        url[len] = '\0';
        ct_req_head(&r, hbuf, sizeof hbuf, hdrs, url, NULL);
        want = ref_check_path(url, len, &want_plen);
        got = mg_http_check_path(&r);
        if (got != want || (want == 0 && r.path_len != want_plen))
            bad++;
    }
    CHECK_INT(bad, 0);
}

/* mg_name_is4 against mg_name_eq: every byte at each of the four
 * positions of "host" and "date", and other lengths */
static void name_is4(void) {
    static const char *const lits[] = {"host", "date"};
    int bad = 0;
    for (int k = 0; k < 2; k++)
        for (int at = 0; at < 4; at++)
            for (int b = 0; b < 256; b++) {
                char n[4];
                memcpy(n, lits[k], 4);
                n[at] = (char)b;
                bad += mg_name_is4(n, 4, lits[k]) != mg_name_eq(n, 4, lits[k], 4);
            }
    CHECK_INT(bad, 0);
    CHECK_INT(mg_name_is4("HoSt", 4, "host"), 1);
    CHECK_INT(mg_name_is4("hostx", 5, "host"), 0);
    CHECK_INT(mg_name_is4("hos", 3, "host"), 0);
}

int main(void) {
    CT_RUN(host_chars);
    CT_RUN(name_is4);
    CT_RUN(te_values);
    CT_RUN(host_header);
    CT_RUN(header_values);
    CT_RUN(framing);
    CT_RUN(expect);
    CT_RUN(method_version);
    CT_RUN(target_forms);
    CT_RUN(dot_segments);
    CT_RUN(value_words);
    CT_RUN(header_lines);
    CT_RUN(hop_names);
    CT_RUN(path_checks);
    return ct_end();
}
