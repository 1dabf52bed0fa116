/*
 * client_ip.c -- the client's address behind balancers: the request's peer,
 * unless that peer is one of its server's trusted_proxies (conf.h,
 * mg_edge_t), in which case the X-Forwarded-For lines are walked from the
 * right, as nginx's realip module does with real_ip_recursive on: each hop
 * was appended by the one after it, so the client is the rightmost address
 * that is not itself a trusted proxy. An entry that is not an address ends
 * the walk and the last good one stands (nginx's choice too): a client can
 * always write what it likes at the left of the chain, so only what trusted
 * hops wrote is believed. Computed once per request, on first use, into the
 * request; a generation with no trusted_proxies anywhere costs one compare.
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <string.h>

static const uint8_t mg_v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int mg_http_cidr_match(const mg_cidr_t *v, int n, const uint8_t *addr, int len) {
    if (len == 16 && memcmp(addr, mg_v4_mapped, 12) == 0) {
        addr += 12; /* ::ffff:a.b.c.d matches IPv4 blocks */
        len = 4;
    }
    for (int i = 0; i < n; i++) {
        const mg_cidr_t *c = &v[i];
        int full = c->bits / 8, rest = c->bits % 8;
        if (c->len != len || memcmp(addr, c->addr, full) != 0)
            continue;
        if (rest == 0 || ((addr[full] ^ c->addr[full]) & (0xff00 >> rest) & 0xff) == 0)
            return 1;
    }
    return 0;
}

static int mg_http_all_digits(const char *s, size_t n) {
    if (n == 0 || n > 5)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* One address as written in X-Forwarded-For (or a peer's text): IPv4,
 * IPv6, "[IPv6]", and the last two with ":port" (as nginx takes them). Its
 * bytes into out (16), its length (4 or 16), or 0 when not one. s is not
 * NUL-terminated. */
static int mg_http_ip_parse(const char *s, size_t n, uint8_t *out) {
    char tmp[MG_PEER_IP_MAX];
    const char *colon;
    int fam = AF_INET6;
    if (n > 0 && s[0] == '[') {
        const char *end = memchr(s, ']', n);
        size_t k;
        if (end == NULL)
            return 0;
        k = (size_t)(end - s) + 1; /* past ']': nothing, or ":port" */
        if (k < n && (s[k] != ':' || !mg_http_all_digits(s + k + 1, n - k - 1)))
            return 0;
        s++;
        n = (size_t)(end - s);
    } else if ((colon = memchr(s, ':', n)) != NULL &&
               memchr(colon + 1, ':', n - (size_t)(colon - s) - 1) == NULL) {
        /* one colon: "a.b.c.d:port" */
        if (!mg_http_all_digits(colon + 1, n - (size_t)(colon - s) - 1))
            return 0;
        n = (size_t)(colon - s);
        fam = AF_INET;
    } else if (colon == NULL) {
        fam = AF_INET;
    }
    if (n == 0 || n >= sizeof(tmp))
        return 0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (inet_pton(fam, tmp, out) != 1)
        return 0;
    return fam == AF_INET ? 4 : 16;
}

/* Whether any server of a generation has trusted_proxies, kept for the
 * last generation asked (by its address and id: a freed generation's
 * address may come back with another id). Most have none: then a
 * request costs this compare, not its server's lookup. */
static struct {
    const mg_gen_t *gen;
    unsigned id;
    int any;
} mg_http_trusts;

__attribute__((noinline)) static int mg_http_gen_trusts_new(const mg_gen_t *g) {
    int any = 0;
    for (int i = 0; i < g->nedge && !any; i++)
        any = g->edge[i].ntrusted > 0;
    mg_http_trusts.gen = g;
    mg_http_trusts.id = g->id;
    mg_http_trusts.any = any;
    return any;
}

static inline int mg_http_gen_trusts(const mg_gen_t *g) {
    if (g == mg_http_trusts.gen && g->id == mg_http_trusts.id)
        return mg_http_trusts.any;
    return mg_http_gen_trusts_new(g);
}

/* The trusted_proxies of r's server, or NULL when it has none. */
static const mg_edge_t *mg_http_edge_of(const mg_req_t *r) {
    int srv;
    if (r->gen == NULL || !mg_http_gen_trusts(r->gen))
        return NULL;
    srv = r->route ? r->route->server : mg_gen_server_of(r->gen, r->lidx);
    if (srv < 0 || srv >= r->gen->nedge || r->gen->edge[srv].ntrusted == 0)
        return NULL;
    return &r->gen->edge[srv];
}

/* Walks the X-Forwarded-For lines (the last line first, each from its
 * right end) from a trusted peer; addr/alen hold the peer, then each hop
 * taken. Returns 1 when a hop replaced the peer. */
static int mg_http_xff_walk(mg_req_t *r, const mg_edge_t *e, uint8_t *addr, int *alen) {
    int moved = 0;
    for (int i = r->nhdrs - 1; i >= 0; i--) {
        const mg_hdr_t *h = &r->hdrs[i];
        const char *v = r->hbuf + h->voff;
        size_t end = h->vlen;
        if (!MG_NAME_IS(r->hbuf + h->noff, h->nlen, "x-forwarded-for"))
            continue;
        while (end > 0) {
            size_t start, stop;
            uint8_t hop[16];
            int hl;
            while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t' || v[end - 1] == ','))
                end--; /* empty entries are skipped, as nginx does */
            if (end == 0)
                break;
            stop = end;
            while (end > 0 && v[end - 1] != ',')
                end--;
            start = end;
            while (start < stop && (v[start] == ' ' || v[start] == '\t'))
                start++;
            hl = mg_http_ip_parse(v + start, stop - start, hop);
            if (hl == 0)
                return moved; /* not an address: the last good one stands */
            memcpy(addr, hop, hl);
            *alen = hl;
            moved = 1;
            if (!mg_http_cidr_match(e->trusted, e->ntrusted, hop, hl))
                return moved; /* the first hop no trusted proxy vouches for */
        }
    }
    return moved;
}

__attribute__((noinline)) static void mg_http_client_walk(mg_req_t *r) {
    const mg_edge_t *e = mg_http_edge_of(r);
    const char *peer;
    uint8_t addr[16];
    int alen;

    if (e == NULL)
        return; /* no copy, the peer is the client */
    peer = mg_req_peer_ip(r);
    alen = mg_http_ip_parse(peer, strlen(peer), addr);
    if (alen == 0 || !mg_http_cidr_match(e->trusted, e->ntrusted, addr, alen))
        return;
    r->peer_trusted = 1;
    if (mg_http_xff_walk(r, e, addr, &alen) &&
        inet_ntop(alen == 4 ? AF_INET : AF_INET6, addr, r->client_ip, sizeof(r->client_ip)))
        r->client_moved = 1;
}

/* The common case (no trusted_proxies in the generation) inline, the
 * walk out of line */
static inline void mg_http_client_work_out(mg_req_t *r) {
    r->client_done = 1;
    if (r->gen != NULL && mg_http_gen_trusts(r->gen))
        mg_http_client_walk(r);
}

/* Both cache into the request: logically const (the answer never changes
 * while the request lives). */
const char *mg_req_client_ip(const mg_req_t *r) {
    if (!r->client_done) {
        if (mg_req_gone(r))
            return "";
        mg_http_client_work_out((mg_req_t *)r);
    }
    return r->client_moved ? r->client_ip : mg_req_peer_ip(r);
}

int mg_req_peer_trusted(const mg_req_t *r) {
    if (!r->client_done) {
        if (mg_req_gone(r))
            return 0;
        mg_http_client_work_out((mg_req_t *)r);
    }
    return r->peer_trusted;
}
