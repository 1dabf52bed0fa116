/*
 * test_fwd.c -- the forwarding-header builder (core/gateway/fwd.c:
 * mg_fwd_conn_tokens, mg_fwd_headers, mg_fwd_tail) on requests built by
 * hand, with a stand-in session sink that gives the peer address and TLS;
 * and the one-copy helpers of core/base it uses: mg_line_put/mg_line_add
 * and the Transfer-Encoding list reader mg_te_add.
 */
#include "ct.h"
#include "ct_req.h"
#include "gateway/gateway.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>

static char hbuf[2048];
static mg_hdr_t hdrs[16];
static mg_req_t req;
static const char *peer = "192.0.2.7";
static int tls;
static int sess_token; /* what req.sess points at while the client is there */

static const char *fake_peer_ip(const mg_req_t *r) {
    (void)r;
    return peer;
}
static int fake_tls(const mg_req_t *r) {
    (void)r;
    return tls;
}
static const mg_http_sess_ops_t fake_sess = {.peer_ip = fake_peer_ip, .tls = fake_tls};

/* A request for "/" with NULL-terminated name, value pairs as its head,
 * its client still there. */
static void head(const char *const *kv) {
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, "/", kv);
    req.path_len = 1;
    req.sess = &sess_token;
    req.sops = &fake_sess;
    strcpy(req.request_id, "rid-1");
    for (int i = 0; i < req.nhdrs; i++)
        if (MG_NAME_IS(hbuf + hdrs[i].noff, hdrs[i].nlen, "host"))
            req.host_idx = i;
}

/* mg_fwd_headers then mg_fwd_tail, as the proxy calls them; the head as
 * a NUL-terminated string in out. */
static const char *forward(unsigned drop, char *out, size_t cap) {
    size_t size = mg_fwd_size(&req), n;
    char *h = malloc(size);
    mg_fwd_t f;
    n = mg_fwd_headers(&req, h, drop, &f);
    n += mg_fwd_tail(&req, &f, h + n);
    CHECK_INT(n <= size, 1); /* mg_fwd_size bounds what both write */
    if (n >= cap)
        n = cap - 1;
    memcpy(out, h, n);
    out[n] = '\0';
    free(h);
    return out;
}

static void conn_tokens(void) {
    mg_fwd_tokens_t t = {.count = 0};
    mg_fwd_conn_tokens(&t, " keep-alive, X-Foo ,,\tx-bar", 27);
    CHECK_INT(t.count, 3);
    CHECK_INT(mg_fwd_tokens_has(&t, "x-foo", 5), 1);
    CHECK_INT(mg_fwd_tokens_has(&t, "X-BAR", 5), 1);
    CHECK_INT(mg_fwd_tokens_has(&t, "keep-alive", 10), 1);
    CHECK_INT(mg_fwd_tokens_has(&t, "x-fo", 4), 0);
    CHECK_INT(mg_fwd_tokens_has(&t, "close", 5), 0);
    /* the length bounds the value */
    t.count = 0;
    mg_fwd_conn_tokens(&t, "a, bcd", 4);
    CHECK_INT(t.count, 2);
    CHECK_INT(mg_fwd_tokens_has(&t, "b", 1), 1);
    CHECK_INT(mg_fwd_tokens_has(&t, "bcd", 3), 0);
    /* past MG_FWD_TOKENS_MAX names are not seen */
    t.count = 0;
    mg_fwd_conn_tokens(&t, "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r", 35);
    CHECK_INT(t.count, MG_FWD_TOKENS_MAX);
    CHECK_INT(mg_fwd_tokens_has(&t, "p", 1), 1);
    CHECK_INT(mg_fwd_tokens_has(&t, "q", 1), 0);
}

static void headers_plain(void) {
    static const char *const kv[] = {"Host", "example.com", "Accept", "*/*", NULL};
    char out[1024];
    head(kv);
    CHECK_STR(forward(0, out, sizeof(out)),
              "Host: example.com\r\nAccept: */*\r\nX-Forwarded-Host: example.com\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
}

static void headers_dropped(void) {
    static const char *const kv[] = {"Host",
                                     "h",
                                     "Connection",
                                     "keep-alive, X-Secret",
                                     "Keep-Alive",
                                     "timeout=5",
                                     "X-Secret",
                                     "s",
                                     "TE",
                                     "trailers",
                                     "X-Forwarded-Proto",
                                     "https",
                                     "X-Forwarded-Host",
                                     "evil",
                                     "X-Request-Id",
                                     "theirs",
                                     "Expect",
                                     "100-continue",
                                     "Sec-WebSocket-Key",
                                     "k",
                                     "X-Keep",
                                     "1",
                                     NULL};
    char out[1024];
    head(kv);
    CHECK_STR(forward(MG_FWD_DROP_EXPECT | MG_FWD_DROP_WS_KEYS, out, sizeof(out)),
              "Host: h\r\nX-Keep: 1\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
    /* without the drop flags, Expect and the WebSocket keys go on */
    CHECK_STR(forward(0, out, sizeof(out)),
              "Host: h\r\nExpect: 100-continue\r\nSec-WebSocket-Key: k\r\nX-Keep: 1\r\n"
              "X-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
}

static void xff_chain_and_tls(void) {
    static const char *const kv[] = {
        "Host", "h", "X-Forwarded-For", "10.0.0.1", "X-Forwarded-For", "10.0.0.2, 10.0.0.3", NULL};
    char out[1024];
    head(kv);
    tls = 1;
    /* the last X-Forwarded-For line goes on, then the peer */
    CHECK_STR(forward(0, out, sizeof(out)), "Host: h\r\nX-Forwarded-Host: h\r\n"
                                            "X-Forwarded-For: 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n"
                                            "X-Forwarded-Proto: https\r\nX-Request-Id: rid-1\r\n");
    tls = 0;
}

static void set_header_lines(void) {
    static const char *const kv[] = {"Host", "h", "Accept", "a", "X-Gone", "g", NULL};
    char out[1024];
    head(kv);
    /* req:set_header("Accept", "b") and req:set_header("X-Gone", nil) */
    CHECK_INT(mg_http_lines_put(&req.xhdrs, "Accept", 6, "b", 1), MG_OK);
    CHECK_INT(mg_http_lines_add(&req.xhdrs, "X-Gone:\r\n", 9), MG_OK);
    CHECK_STR(forward(0, out, sizeof(out)),
              "Host: h\r\nAccept: b\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
    free(req.xhdrs.p);
}

/* more set names than mg_fwd_headers reads at once (MG_FWD_TOKENS_MAX):
 * the client's header of the last one is still left out */
static void many_set_headers(void) {
    static const char *const kv[] = {"Host", "h", "X-S16", "c", "Accept", "a", NULL};
    char out[2048], want[2048], name[8];
    size_t o;
    head(kv);
    o = (size_t)snprintf(want, sizeof(want), "Host: h\r\nAccept: a\r\n");
    for (int i = 0; i <= MG_FWD_TOKENS_MAX; i++) {
        int nl = snprintf(name, sizeof(name), "X-S%d", i);
        CHECK_INT(mg_http_lines_put(&req.xhdrs, name, (size_t)nl, "v", 1), MG_OK);
        o += (size_t)snprintf(want + o, sizeof(want) - o, "%s: v\r\n", name);
    }
    snprintf(want + o, sizeof(want) - o,
             "X-Forwarded-Host: h\r\nX-Forwarded-For: 192.0.2.7\r\n"
             "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
    CHECK_STR(forward(0, out, sizeof(out)), want);
    free(req.xhdrs.p);
}

static void client_gone(void) {
    static const char *const kv[] = {"Host", "h", NULL};
    char out[1024];
    head(kv);
    req.sess = NULL; /* the peer is "" once the client is gone */
    tls = 1;
    CHECK_STR(forward(0, out, sizeof(out)),
              "Host: h\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: \r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
    tls = 0;
}

static void no_host(void) {
    char out[1024];
    head(NULL); /* HTTP/1.0 without Host, no route: the upstream still gets one */
    CHECK_STR(forward(0, out, sizeof(out)),
              "Host: localhost\r\n"
              "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
}

static void line_put_add(void) {
    char out[64];
    struct evbuffer *b = evbuffer_new();
    size_t n = mg_line_put(out, "Name", 4, "value", 5);
    CHECK_INT(n, 13);
    out[n] = '\0';
    CHECK_STR(out, "Name: value\r\n");
    n = mg_line_put(out, "X-Empty", 7, "", 0);
    CHECK_INT(n, 11);
    out[n] = '\0';
    CHECK_STR(out, "X-Empty: \r\n");
    /* lengths bound both parts */
    n = mg_line_put(out, "Namexx", 4, "valuexx", 5);
    out[n] = '\0';
    CHECK_STR(out, "Name: value\r\n");
    CHECK_INT(mg_line_add(b, "A", 1, "1", 1), MG_OK);
    CHECK_INT(mg_line_add(b, "Content-Length", 14, "42", 2), MG_OK);
    n = evbuffer_get_length(b);
    CHECK_INT(n, 26);
    evbuffer_remove(b, out, n);
    out[n] = '\0';
    CHECK_STR(out, "A: 1\r\nContent-Length: 42\r\n");
    evbuffer_free(b);
}

static void te_lists(void) {
    mg_te_t t = {0, 0, 0};
    mg_te_add(&t, "chunked", 7);
    CHECK_INT(t.codings, 1);
    CHECK_INT(t.chunked, 1);
    CHECK_INT(t.last_chunked, 1);
    CHECK_INT(mg_te_plain_chunked(&t), 1);

    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, " gzip ,\tChunked \t", 17);
    CHECK_INT(t.codings, 2);
    CHECK_INT(t.chunked, 1);
    CHECK_INT(t.last_chunked, 1);
    CHECK_INT(mg_te_plain_chunked(&t), 0);

    /* several lines are one list */
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, "gzip", 4);
    mg_te_add(&t, "chunked", 7);
    CHECK_INT(t.codings, 2);
    CHECK_INT(t.last_chunked, 1);
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, "chunked", 7);
    mg_te_add(&t, "gzip", 4);
    CHECK_INT(t.codings, 2);
    CHECK_INT(t.chunked, 1);
    CHECK_INT(t.last_chunked, 0);

    /* empty list elements do not count; an empty line adds nothing */
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, ", ,chunked,, ", 13);
    mg_te_add(&t, "", 0);
    CHECK_INT(t.codings, 1);
    CHECK_INT(mg_te_plain_chunked(&t), 1);

    /* chunked twice, and look-alikes */
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, "chunked, chunked", 16);
    CHECK_INT(t.chunked, 2);
    CHECK_INT(mg_te_plain_chunked(&t), 0);
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, "xchunked, chunkedx", 18);
    CHECK_INT(t.codings, 2);
    CHECK_INT(t.chunked, 0);
    CHECK_INT(t.last_chunked, 0);
    /* the length bounds the value */
    t = (mg_te_t){0, 0, 0};
    mg_te_add(&t, "gzip, chunked", 4);
    CHECK_INT(t.codings, 1);
    CHECK_INT(t.chunked, 0);
}

int main(void) {
    CT_RUN(conn_tokens);
    CT_RUN(headers_plain);
    CT_RUN(headers_dropped);
    CT_RUN(xff_chain_and_tls);
    CT_RUN(set_header_lines);
    CT_RUN(many_set_headers);
    CT_RUN(client_gone);
    CT_RUN(no_host);
    CT_RUN(line_put_add);
    CT_RUN(te_lists);
    return ct_end();
}
