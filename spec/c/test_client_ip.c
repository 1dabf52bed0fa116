/*
 * test_client_ip.c -- the client's address behind balancers: the PROXY
 * protocol header parser (core/http/proxy_proto.c: mg_http_pp_parse, v1
 * and v2, prefixes, garbage, bounds), the X-Forwarded-For walk from a
 * trusted peer (core/http/client_ip.c: mg_req_client_ip,
 * mg_req_peer_trusted) and what fwd.c keeps from a trusted peer, on
 * requests built by hand with a stand-in generation and session sink.
 */
#include "ct.h"
#include "ct_req.h"
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <event2/buffer.h>

/* ---- PROXY headers ---- */

static int parse(const void *b, size_t n, char *ip, size_t cap, int *port) {
    struct sockaddr_storage ss;
    socklen_t sl = 99;
    const char *why = NULL;
    int rc = mg_http_pp_parse(b, n, &ss, &sl, &why);
    ip[0] = '\0';
    *port = -1;
    if (rc > 0 && sl > 0 && ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, cap);
        *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else if (rc > 0 && sl > 0 && ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, cap);
        *port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else if (rc > 0) {
        snprintf(ip, cap, "peer");
    }
    CHECK(rc >= 0 || why != NULL);
    return rc;
}

static void pp_v1(void) {
    char ip[64];
    int port;
    const char *h = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
    CHECK_INT(parse(h, strlen(h), ip, sizeof(ip), &port), 45);
    CHECK_STR(ip, "192.0.2.1");
    CHECK_INT(port, 56324);
    h = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    CHECK_INT(parse(h, strlen(h), ip, sizeof(ip), &port), (int)strlen(h));
    CHECK_STR(ip, "2001:db8::1");
    h = "PROXY UNKNOWN\r\n";
    CHECK_INT(parse(h, strlen(h), ip, sizeof(ip), &port), 15);
    CHECK_STR(ip, "peer");
    h = "PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 x y\r\nrest";
    CHECK_INT(parse(h, strlen(h), ip, sizeof(ip), &port), (int)strlen(h) - 4);
    CHECK_STR(ip, "peer");
    /* every prefix of a valid line: read on */
    h = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    for (size_t k = 0; k < strlen(h); k++)
        CHECK_INT(parse(h, k, ip, sizeof(ip), &port), 0);
}

static void pp_v1_bad(void) {
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",     /* bare LF */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",  /* trailing space */
        "PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",  /* two spaces */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",       /* no port */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n", /* one too many */
        "PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n", /* v6 in TCP4 */
        "PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",    /* v4 in TCP6 */
        "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",   /* port range */
        "PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",    /* leading zero */
        "PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",       /* address */
        "PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",         /* protocol */
        "PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",        /* CR inside */
        "proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",         /* case */
        "PROXYTCP4 192.0.2.1 198.51.100.2 1 2\r\n",
        NULL};
    char ip[64], longer[200];
    int port;
    for (int i = 0; bad[i]; i++) {
        int rc = parse(bad[i], strlen(bad[i]), ip, sizeof(ip), &port);
        if (rc != -1)
            printf("    accepted: %s", bad[i]);
        CHECK_INT(rc, -1);
    }
    /* no CRLF within 107 bytes: refused, not waited for */
    memset(longer, 'x', sizeof(longer));
    memcpy(longer, "PROXY UNKNOWN ", 14);
    CHECK_INT(parse(longer, 106, ip, sizeof(ip), &port), 0);
    CHECK_INT(parse(longer, 107, ip, sizeof(ip), &port), -1);
    CHECK_INT(parse(longer, sizeof(longer), ip, sizeof(ip), &port), -1);
    /* exactly 107 with its CRLF: fine */
    longer[105] = '\r';
    longer[106] = '\n';
    CHECK_INT(parse(longer, sizeof(longer), ip, sizeof(ip), &port), 107);
}

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* a v2 header: ver_cmd, fam, then len bytes of body */
static size_t v2(unsigned char *out, int ver_cmd, int fam, const unsigned char *body, size_t len) {
    memcpy(out, sig, 12);
    out[12] = (unsigned char)ver_cmd;
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(len >> 8);
    out[15] = (unsigned char)len;
    memcpy(out + 16, body, len);
    return 16 + len;
}

static void pp_v2(void) {
    unsigned char b[700], body[600];
    char ip[64];
    int port;
    size_t n;
    /* PROXY TCP4 203.0.113.9:40000 -> 192.0.2.1:443, then a TLV (type 0x04 NOOP, 3 bytes) */
    unsigned char v4[12 + 6] = {203,  0,    113,  9,    192,  0,    2,   1,   0x9c,
                                0x40, 0x01, 0xbb, 0x04, 0x00, 0x03, 'a', 'b', 'c'};
    n = v2(b, 0x21, 0x11, v4, sizeof(v4));
    memcpy(b + n, "GET", 3);
    CHECK_INT(parse(b, n + 3, ip, sizeof(ip), &port), (int)n);
    CHECK_STR(ip, "203.0.113.9");
    CHECK_INT(port, 40000);
    for (size_t k = 0; k < n; k++)
        CHECK_INT(parse(b, k, ip, sizeof(ip), &port), 0);
    /* PROXY TCP6 */
    memset(body, 0, 36);
    body[0] = 0x20, body[1] = 0x01, body[2] = 0x0d, body[3] = 0xb8, body[15] = 7;
    body[32] = 0x12, body[33] = 0x34;
    n = v2(b, 0x21, 0x21, body, 36);
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), 52);
    CHECK_STR(ip, "2001:db8::7");
    CHECK_INT(port, 0x1234);
    /* LOCAL (a health check), with addresses: the peer's */
    n = v2(b, 0x20, 0x11, v4, 12);
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), 28);
    CHECK_STR(ip, "peer");
    /* UNSPEC and UNIX: the peer's */
    n = v2(b, 0x21, 0x00, body, 0);
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), 16);
    CHECK_STR(ip, "peer");
    memset(body, 'u', 216);
    n = v2(b, 0x21, 0x31, body, 216);
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), 232);
    CHECK_STR(ip, "peer");
}

static void pp_v2_bad(void) {
    unsigned char b[700], body[600];
    char ip[64];
    int port;
    unsigned char v4[12 + 4] = {203,  0,    113,  9,    192,  0,    2,    1,
                                0x9c, 0x40, 0x01, 0xbb, 0x04, 0x00, 0x05, 'a'};
    size_t n;
    n = v2(b, 0x11, 0x11, v4, 12); /* version 1 */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x22, 0x11, v4, 12); /* command 2 */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x21, 0x41, v4, 12); /* family 4 */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x21, 0x11, v4, 8); /* shorter than its addresses */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x21, 0x11, v4, sizeof(v4)); /* a TLV longer than what is left */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x21, 0x11, v4, 14); /* half a TLV head */
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), -1);
    /* longer than 536 bytes in all: refused from its first 16 */
    memset(body, 0, sizeof(body));
    n = v2(b, 0x21, 0x00, body, 521);
    CHECK_INT(parse(b, 16, ip, sizeof(ip), &port), -1);
    n = v2(b, 0x21, 0x00, body, 520); /* 520 bytes of a NOOP TLV: 3 + 517 */
    b[16] = 0x04, b[17] = (517 >> 8), b[18] = 517 & 0xff;
    CHECK_INT(parse(b, n, ip, sizeof(ip), &port), 536);
    /* a broken signature */
    n = v2(b, 0x21, 0x11, v4, 12);
    b[7] = 'q';
    CHECK_INT(parse(b, 8, ip, sizeof(ip), &port), -1);
    CHECK_INT(parse("\r\n\r\n\r\n", 6, ip, sizeof(ip), &port), -1);
    CHECK_INT(parse("\x16\x03\x01", 3, ip, sizeof(ip), &port), -1); /* TLS without a header */
}

/* ---- the X-Forwarded-For walk ---- */

static char hbuf[2048];
static mg_hdr_t hdrs[16];
static mg_req_t req;
static mg_gen_t gen;
static mg_route_t route;
static mg_edge_t edge[2];
static mg_cidr_t blocks[3];
static const char *peer = "127.0.0.1";
static int sess_token;

static const char *fake_peer_ip(const mg_req_t *r) {
    (void)r;
    return peer;
}
static int fake_tls(const mg_req_t *r) {
    (void)r;
    return 0;
}
static const mg_http_sess_ops_t fake_sess = {.peer_ip = fake_peer_ip, .tls = fake_tls};

static void cidr(mg_cidr_t *c, int fam, const char *a, int bits) {
    memset(c, 0, sizeof(*c));
    inet_pton(fam, a, c->addr);
    c->len = fam == AF_INET ? 4 : 16;
    c->bits = (uint8_t)bits;
}

/* trusted: 127.0.0.1/32, 10.0.0.0/8, 2001:db8::/32 on server 1; none on 0 */
static void head(const char *p, int server, const char *const *kv) {
    cidr(&blocks[0], AF_INET, "127.0.0.1", 32);
    cidr(&blocks[1], AF_INET, "10.0.0.0", 8);
    cidr(&blocks[2], AF_INET6, "2001:db8::", 32);
    memset(edge, 0, sizeof(edge));
    edge[1].trusted = blocks;
    edge[1].ntrusted = 3;
    gen.edge = edge;
    gen.nedge = 2;
    route.server = server;
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, "/", kv);
    req.path_len = 1;
    req.sess = &sess_token;
    req.sops = &fake_sess;
    req.gen = &gen;
    req.route = &route;
    strcpy(req.request_id, "rid-1");
    for (int i = 0; i < req.nhdrs; i++)
        if (MG_NAME_IS(hbuf + hdrs[i].noff, hdrs[i].nlen, "host"))
            req.host_idx = i;
    peer = p;
}

static const char *client(const char *p, int server, const char *xff1, const char *xff2) {
    const char *kv[] = {"Host", "h", xff1 ? "X-Forwarded-For" : NULL, xff1, "X-Forwarded-For",
                        xff2,   NULL};
    if (xff1 && !xff2)
        kv[4] = NULL;
    head(p, server, kv);
    return mg_req_client_ip(&req);
}

static void xff_walk(void) {
    /* no trusted_proxies on the server, or an untrusted peer: the peer */
    CHECK_STR(client("127.0.0.1", 0, "192.0.2.9", NULL), "127.0.0.1");
    CHECK_INT(mg_req_peer_trusted(&req), 0);
    CHECK_STR(client("192.0.2.5", 1, "192.0.2.9", NULL), "192.0.2.5");
    CHECK_INT(mg_req_peer_trusted(&req), 0);
    /* a trusted peer: the rightmost hop not trusted */
    CHECK_STR(client("127.0.0.1", 1, "192.0.2.9", NULL), "192.0.2.9");
    CHECK_INT(mg_req_peer_trusted(&req), 1);
    CHECK_STR(client("127.0.0.1", 1, "6.6.6.6, 192.0.2.9, 10.1.1.1", NULL), "192.0.2.9");
    CHECK_STR(client("127.0.0.1", 1, "6.6.6.6, 192.0.2.9", "10.1.1.1 ,10.2.2.2"), "192.0.2.9");
    CHECK_STR(client("127.0.0.1", 1, "10.9.9.9", "10.1.1.1"), "10.9.9.9"); /* all trusted */
    CHECK_STR(client("127.0.0.1", 1, NULL, NULL), "127.0.0.1");            /* none sent */
    /* empty entries are skipped; forms with ports; IPv6 */
    CHECK_STR(client("127.0.0.1", 1, "192.0.2.9,, ,10.1.1.1,", NULL), "192.0.2.9");
    CHECK_STR(client("127.0.0.1", 1, "192.0.2.9:5555", NULL), "192.0.2.9");
    CHECK_STR(client("127.0.0.1", 1, "[2001:db9::1]:80, 2001:db8::5", NULL), "2001:db9::1");
    CHECK_STR(client("127.0.0.1", 1, "2001:DB9:0::1", NULL), "2001:db9::1");
    CHECK_STR(client("2001:db8::1", 1, "192.0.2.9", NULL), "192.0.2.9");
    CHECK_STR(client("::ffff:127.0.0.1", 1, "192.0.2.9", NULL), "192.0.2.9"); /* v4-mapped peer */
    /* garbage ends the walk: the last good address stands */
    CHECK_STR(client("127.0.0.1", 1, "192.0.2.9, bogus, 10.1.1.1", NULL), "10.1.1.1");
    CHECK_STR(client("127.0.0.1", 1, "unknown", NULL), "127.0.0.1");
    CHECK_STR(client("127.0.0.1", 1, "010.1.1.1", NULL), "127.0.0.1");
    CHECK_STR(client("127.0.0.1", 1, "192.0.2.9:", NULL), "127.0.0.1");
    CHECK_STR(client("127.0.0.1", 1, "[2001:db8::1", NULL), "127.0.0.1");
    CHECK_STR(client("127.0.0.1", 1, "1.2.3.4:80:90", NULL), "127.0.0.1");
    /* worked out once: the answer stays when the client goes */
    client("127.0.0.1", 1, "192.0.2.9", NULL);
    req.sess = NULL;
    CHECK_STR(mg_req_client_ip(&req), "192.0.2.9");
    client("127.0.0.1", 1, "192.0.2.9", NULL);
    /* never asked before it left: "" as mg_req_peer_ip gives */
    head("127.0.0.1", 1, NULL);
    req.sess = NULL;
    CHECK_STR(mg_req_client_ip(&req), "");
}

static void prefix_bits(void) {
    static const char *const kv[] = {"X-Forwarded-For", "192.0.2.9", NULL};
    head("10.255.1.1", 1, kv);
    blocks[1].bits = 9; /* 10.0.0.0/9: 10.128/9 is outside */
    CHECK_INT(mg_req_peer_trusted(&req), 0);
    head("10.127.1.1", 1, kv);
    blocks[1].bits = 9;
    CHECK_INT(mg_req_peer_trusted(&req), 1);
    head("10.0.0.1", 1, kv);
    blocks[1].bits = 0; /* 0.0.0.0/0 equivalent (any IPv4) */
    cidr(&blocks[1], AF_INET, "0.0.0.0", 0);
    peer = "203.0.113.1";
    CHECK_INT(mg_req_peer_trusted(&req), 1);
}

/* Whether a generation has any trusted_proxies is kept for the last one
 * asked (by address and id): one without them, back, and another
 * generation at the same address */
static void gen_switch(void) {
    static const char *const kv[] = {"X-Forwarded-For", "192.0.2.9", NULL};
    static mg_gen_t plain;
    static mg_edge_t none[2];
    plain.id = gen.id + 1;
    plain.edge = none;
    plain.nedge = 2;
    head("127.0.0.1", 1, kv);
    CHECK_STR(mg_req_client_ip(&req), "192.0.2.9");
    head("127.0.0.1", 1, kv);
    req.gen = &plain;
    CHECK_STR(mg_req_client_ip(&req), "127.0.0.1");
    CHECK_INT(mg_req_peer_trusted(&req), 0);
    head("127.0.0.1", 1, kv);
    CHECK_STR(mg_req_client_ip(&req), "192.0.2.9");
    CHECK_INT(mg_req_peer_trusted(&req), 1);
    head("127.0.0.1", 1, kv);
    req.gen = &plain;
    CHECK_STR(mg_req_client_ip(&req), "127.0.0.1");
    plain.id++; /* freed, and a new one where it was */
    plain.edge = edge;
    head("127.0.0.1", 1, kv);
    req.gen = &plain;
    CHECK_STR(mg_req_client_ip(&req), "192.0.2.9");
}

/* ---- fwd.c from a trusted peer ---- */

static const char *forward(char *out, size_t cap) {
    size_t size = mg_fwd_size(&req), n;
    char *h = malloc(size);
    mg_fwd_t f;
    n = mg_fwd_headers(&req, h, 0, &f);
    n += mg_fwd_tail(&req, &f, h + n);
    CHECK_INT(n <= size, 1); /* mg_fwd_size bounds what both write */
    if (n >= cap)
        n = cap - 1;
    memcpy(out, h, n);
    out[n] = '\0';
    free(h);
    return out;
}

static void fwd_trusted(void) {
    static const char *const kv[] = {"Host",
                                     "h",
                                     "X-Forwarded-Proto",
                                     "https",
                                     "X-Forwarded-Host",
                                     "www.example",
                                     "X-Forwarded-For",
                                     "192.0.2.9",
                                     NULL};
    static const char *const bare[] = {"Host", "h", NULL};
    char out[1024];
    head("127.0.0.1", 1, kv);
    CHECK_STR(forward(out, sizeof(out)),
              "Host: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example\r\n"
              "X-Forwarded-For: 192.0.2.9, 127.0.0.1\r\nX-Request-Id: rid-1\r\n");
    /* untrusted: as before, the claims go and ours come */
    head("192.0.2.5", 1, kv);
    CHECK_STR(forward(out, sizeof(out)),
              "Host: h\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 192.0.2.9, 192.0.2.5\r\nX-Forwarded-Proto: http\r\n"
              "X-Request-Id: rid-1\r\n");
    head("127.0.0.1", 0, kv);
    CHECK_STR(forward(out, sizeof(out)),
              "Host: h\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 192.0.2.9, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
              "X-Request-Id: rid-1\r\n");
    /* a trusted peer that sent none: ours */
    head("127.0.0.1", 1, bare);
    CHECK_STR(forward(out, sizeof(out)),
              "Host: h\r\nX-Forwarded-Host: h\r\n"
              "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n");
}

int main(void) {
    CT_RUN(pp_v1);
    CT_RUN(pp_v1_bad);
    CT_RUN(pp_v2);
    CT_RUN(pp_v2_bad);
    CT_RUN(xff_walk);
    CT_RUN(prefix_bits);
    CT_RUN(gen_switch);
    CT_RUN(fwd_trusted);
    return ct_end();
}
