/*
 * router.c -- the compiled route table. Rules are split into segments once
 * at load (mg_route_compile), then each generation's table is built into a
 * trie on segments (mg_route_build): one trie per server (route table) for
 * the routes without a host, and one per (server, host). A node has its
 * literal children (one hash table of edges for the whole table), one
 * {param} child, and two lists of routes: the exact rules that end there
 * and the prefix rules that end there.
 *
 * The loader sorts the routes into match order (an explicit priority wins,
 * then the longer rule, then file order), so a route's position in
 * gen->routes is its rank and the linear scan's answer is the matching
 * route of lowest position. The trie walk keeps exactly that answer: it
 * visits every node whose segments match the path (each at most once),
 * takes from each node's lists the first route whose methods fit (the lists
 * are in rank order), and keeps the lowest; a node whose subtree holds no
 * route ranked better than the best so far is skipped. No allocation per
 * request; the walk's work is bounded by the trie's size, not the path's.
 *
 * mg_route_match_linear is the scan the trie replaced: the reference the
 * property test (spec/c/test_router_prop.c) compares against, and what a
 * table that was not built (as spec/c/test_router.c makes them) is
 * matched with.
 */
#include "conf/conf.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int mg_route_compile(mg_route_t *r, char *err, size_t errlen) {
    const char *p, *end;
    int n = 0, k;

    if (r->rule[0] != '/') {
        snprintf(err, errlen, "rule must start with '/'");
        return MG_ERR;
    }
    end = r->rule + strlen(r->rule);
    /* "/" alone has no segments; "/a/b" has two; "/a/" has "a" and "". */
    for (p = r->rule + 1; p <= end && !(p == end && n == 0);) {
        const char *s = memchr(p, '/', end - p);
        n++;
        if (s == NULL)
            break;
        p = s + 1;
    }
    if (n > MG_ROUTE_MAX_SEGS) {
        snprintf(err, errlen, "too many segments (max %d)", MG_ROUTE_MAX_SEGS);
        return MG_ERR;
    }
    /* exactly as many as it has: a table of 10 000 routes stays small */
    r->segs = calloc(n ? n : 1, sizeof(mg_seg_t));
    if (r->segs == NULL) {
        snprintf(err, errlen, "out of memory");
        return MG_ERR;
    }
    for (p = r->rule + 1, k = 0; k < n; k++) {
        const char *s = memchr(p, '/', end - p);
        size_t len = s ? (size_t)(s - p) : (size_t)(end - p);
        mg_seg_t *g = &r->segs[k];
        if (len >= 2 && p[0] == '{' && p[len - 1] == '}') {
            char *name = strndup(p + 1, len - 2);
            if (name == NULL) {
                r->nsegs = k; /* what mg_gen_free frees */
                snprintf(err, errlen, "out of memory");
                return MG_ERR;
            }
            g->param = name;
            g->lit = NULL;
            r->has_params = 1;
        } else {
            g->lit = p;
            g->len = len;
        }
        if (s != NULL)
            p = s + 1;
    }
    /* A prefix "/api/" means the same as "/api". */
    if (r->prefix && n > 0 && r->segs[n - 1].lit && r->segs[n - 1].len == 0)
        n--;
    r->nsegs = n;
    return MG_OK;
}

/* The request's host as routes compare it: without the port (IPv6
 * literals keep their brackets); returns its length. */
static size_t mg_route_host_len(const char *host, size_t hostlen) {
    const char *colon = memrchr(host, ':', hostlen);
    if (colon && memchr(colon, ']', hostlen - (colon - host)) == NULL)
        hostlen = colon - host;
    return hostlen;
}

static int mg_route_host_ok(mg_route_t *r, const char *host, size_t hostlen) {
    size_t i, hl = strlen(r->host);

    if (host == NULL)
        return 0;
    hostlen = mg_route_host_len(host, hostlen);
    if (hostlen != hl)
        return 0;
    for (i = 0; i < hl; i++) {
        char c = host[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != r->host[i])
            return 0;
    }
    return 1;
}

/* Splits the request path once: "/a/b" -> a, b; "/" -> none. Returns the
 * count; past MG_ROUTE_MAX_SEGS (no rule is that long) it stops at one more
 * and says so in *toolong: only prefix rules can match such a path. */
static int mg_route_split(const char *path, size_t pathlen, const char **segp, size_t *segl,
                          int *toolong) {
    const char *p = path + 1, *end = path + pathlen;
    int nseg = 0;
    *toolong = 0;
    if (pathlen > 1 || (pathlen == 1 && path[0] != '/')) {
        for (;;) {
            const char *s = memchr(p, '/', end - p);
            if (nseg == MG_ROUTE_MAX_SEGS + 1) {
                *toolong = 1;
                break;
            }
            segp[nseg] = p;
            segl[nseg] = s ? (size_t)(s - p) : (size_t)(end - p);
            nseg++;
            if (s == NULL)
                break;
            p = s + 1;
        }
    }
    return nseg;
}

static void mg_route_params(mg_route_t *r, const char *const *segp, const size_t *segl,
                            mg_kv_t *params, int *nparams) {
    int np = 0;
    if (params == NULL || nparams == NULL)
        return;
    for (int k = 0; k < r->nsegs && np < *nparams; k++) {
        if (r->segs[k].lit)
            continue;
        params[np].name = r->segs[k].param;
        params[np].nlen = strlen(r->segs[k].param);
        params[np].value = segp[k];
        params[np].vlen = segl[k];
        np++;
    }
    *nparams = np;
}

mg_route_t *mg_route_match_linear(mg_gen_t *gen, int server, int method, const char *host,
                                  size_t hostlen, const char *path, size_t pathlen, mg_kv_t *params,
                                  int *nparams) {
    const char *segp[MG_ROUTE_MAX_SEGS + 1];
    size_t segl[MG_ROUTE_MAX_SEGS + 1];
    int nseg, i, k, toolong;

    nseg = mg_route_split(path, pathlen, segp, segl, &toolong);
    for (i = 0; i < gen->nroutes; i++) {
        mg_route_t *r = &gen->routes[i];
        if (r->server != server)
            continue;
        if (r->methods && !(r->methods & (1ULL << method)))
            continue;
        if (r->prefix ? nseg < r->nsegs : (nseg != r->nsegs || toolong))
            continue;
        for (k = 0; k < r->nsegs; k++) {
            mg_seg_t *g = &r->segs[k];
            if (g->lit ? (g->len != segl[k] || memcmp(g->lit, segp[k], segl[k]) != 0)
                       : segl[k] == 0)
                break;
        }
        if (k < r->nsegs)
            continue;
        if (r->host && !mg_route_host_ok(r, host, hostlen))
            continue;
        mg_route_params(r, segp, segl, params, nparams);
        return r;
    }
    return NULL;
}

/* The params of route r, which matched path: r's segments checked
 * against path alone (the route is known, so no table walk). 0 when they
 * do not match (the path is not r's). */
int mg_route_params_of(mg_route_t *r, const char *path, size_t pathlen, mg_kv_t *params,
                       int *nparams) {
    const char *segp[MG_ROUTE_MAX_SEGS + 1];
    size_t segl[MG_ROUTE_MAX_SEGS + 1];
    int nseg, k, toolong;

    nseg = mg_route_split(path, pathlen, segp, segl, &toolong);
    if (r->prefix ? nseg < r->nsegs : (nseg != r->nsegs || toolong))
        return *nparams = 0;
    for (k = 0; k < r->nsegs; k++) {
        mg_seg_t *g = &r->segs[k];
        if (g->lit ? (g->len != segl[k] || memcmp(g->lit, segp[k], segl[k]) != 0) : segl[k] == 0)
            return *nparams = 0;
    }
    mg_route_params(r, segp, segl, params, nparams);
    return *nparams;
}

/* ---- the trie ---- */

typedef struct {
    int32_t param;         /* the {param} child, or -1 */
    int32_t nlit;          /* literal children (edges from this node) */
    int32_t exact, nexact; /* its exact routes: list[exact .. exact + nexact) */
    int32_t prefix, nprefix;
    int32_t min; /* the best (lowest) rank in its lists and below; INT32_MAX: none */
} mg_rnode_t;

/* a literal child: open addressing over (parent, segment) */
typedef struct {
    uint32_t hash;         /* of the segment alone */
    int32_t parent, child; /* child -1: an empty slot */
    uint32_t len;
    const char *lit; /* into its route's rule */
} mg_redge_t;

/* a route of a node's list: its rank (position in gen->routes), methods */
typedef struct {
    uint64_t methods; /* 0: any */
    int32_t route;
} mg_rent_t;

/* the root of the routes of one (server, host) */
typedef struct {
    uint32_t hash;
    int32_t server, root; /* root -1: an empty slot */
    const char *host;     /* a route's host, lower-case */
    size_t hostlen;
} mg_rhost_t;

struct mg_rtab_s {
    mg_rnode_t *nodes;
    int32_t nnodes;
    mg_redge_t *edges;
    uint32_t emask; /* capacity - 1 (a power of two) */
    mg_rent_t *list;
    int32_t nlist;
    int32_t *root; /* per server: the root of its routes without a host, or -1 */
    int32_t nserver;
    mg_rhost_t *hosts;
    uint32_t hmask;
    int32_t nhosts;
    size_t bytes;
};

static uint32_t mg_rhash_bytes(const char *s, size_t n, int lower) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (lower && c >= 'A' && c <= 'Z')
            c += 32;
        h = (h ^ c) * 16777619u;
    }
    return h;
}

static uint32_t mg_rmix(uint32_t h, int32_t k) {
    uint32_t x = h ^ ((uint32_t)k * 0x9e3779b1u);
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static int32_t mg_redge_find(const mg_rtab_t *t, int32_t parent, const char *s, size_t len,
                             uint32_t h) {
    for (uint32_t i = mg_rmix(h, parent) & t->emask;; i = (i + 1) & t->emask) {
        const mg_redge_t *e = &t->edges[i];
        if (e->child < 0)
            return -1;
        if (e->hash == h && e->parent == parent && e->len == len && memcmp(e->lit, s, len) == 0)
            return e->child;
    }
}

static void mg_redge_put(mg_redge_t *edges, uint32_t mask, const mg_redge_t *e) {
    uint32_t i = mg_rmix(e->hash, e->parent) & mask;
    while (edges[i].child >= 0)
        i = (i + 1) & mask;
    edges[i] = *e;
}

static int32_t mg_rhost_find(const mg_rtab_t *t, int server, const char *host, size_t len,
                             uint32_t h) {
    if (t->hosts == NULL)
        return -1;
    for (uint32_t i = mg_rmix(h, server) & t->hmask;; i = (i + 1) & t->hmask) {
        const mg_rhost_t *e = &t->hosts[i];
        size_t k;
        if (e->root < 0)
            return -1;
        if (e->hash != h || e->server != server || e->hostlen != len)
            continue;
        for (k = 0; k < len; k++) {
            char c = host[k];
            if (c >= 'A' && c <= 'Z')
                c += 32;
            if (c != e->host[k])
                break;
        }
        if (k == len)
            return e->root;
    }
}

static uint32_t mg_rpow2(size_t n) {
    uint32_t c = 16;
    while (c < n * 2)
        c <<= 1;
    return c;
}

void mg_route_table_free(mg_gen_t *gen) {
    mg_rtab_t *t = gen->rtab;
    if (t == NULL)
        return;
    free(t->nodes);
    free(t->edges);
    free(t->list);
    free(t->root);
    free(t->hosts);
    free(t);
    gen->rtab = NULL;
}

size_t mg_route_table_bytes(const mg_gen_t *gen) { return gen->rtab ? gen->rtab->bytes : 0; }

int mg_route_build(mg_gen_t *gen, char *err, size_t errlen) {
    mg_rtab_t *t;
    size_t maxnodes = 0, nlitsegs = 0, nedges = 0;
    int32_t *end = NULL, *parent = NULL, *cnt = NULL;
    mg_redge_t *tmp = NULL;
    uint32_t tmask;
    int i, k, nhosts = 0, ok = 0;

    mg_route_table_free(gen);
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        goto oom;
    for (i = 0; i < gen->nroutes; i++) {
        mg_route_t *r = &gen->routes[i];
        if (r->server < 0) {
            snprintf(err, errlen, "route #%d (%s): no route table", r->index, r->rule);
            free(t);
            return MG_ERR;
        }
        if (r->server >= t->nserver)
            t->nserver = r->server + 1;
        nhosts += r->host != NULL;
        maxnodes += 1 + (size_t)r->nsegs; /* its root at most, and a node per segment */
        for (k = 0; k < r->nsegs; k++)
            nlitsegs += r->segs[k].lit != NULL;
    }
    if (maxnodes > (size_t)INT32_MAX / 4) { /* ids are int32_t, hash sizes uint32_t */
        snprintf(err, errlen, "route table too large (%d routes)", gen->nroutes);
        free(t);
        return MG_ERR;
    }
    t->root = malloc(sizeof(int32_t) * (t->nserver ? t->nserver : 1));
    t->nodes = malloc(sizeof(mg_rnode_t) * (maxnodes ? maxnodes : 1));
    parent = malloc(sizeof(int32_t) * (maxnodes ? maxnodes : 1));
    end = malloc(sizeof(int32_t) * (gen->nroutes ? gen->nroutes : 1));
    tmask = mg_rpow2(nlitsegs) - 1;
    tmp = malloc(sizeof(mg_redge_t) * ((size_t)tmask + 1));
    if (t->root == NULL || t->nodes == NULL || parent == NULL || end == NULL || tmp == NULL)
        goto oom;
    for (i = 0; i < t->nserver; i++)
        t->root[i] = -1;
    for (uint32_t e = 0; e <= tmask; e++)
        tmp[e].child = -1;
    if (nhosts) {
        t->hmask = mg_rpow2((size_t)nhosts) - 1;
        t->hosts = malloc(sizeof(mg_rhost_t) * ((size_t)t->hmask + 1));
        if (t->hosts == NULL)
            goto oom;
        for (uint32_t e = 0; e <= t->hmask; e++)
            t->hosts[e].root = -1;
    }

    /* every route's path through the trie, creating nodes as it goes (a
     * child is always made after its parent: node ids grow downwards) */
    t->edges = tmp;
    t->emask = tmask;
    for (i = 0; i < gen->nroutes; i++) {
        mg_route_t *r = &gen->routes[i];
        int32_t *slot, n;
        if (r->host == NULL) {
            slot = &t->root[r->server];
        } else {
            size_t hl = strlen(r->host);
            uint32_t h = mg_rhash_bytes(r->host, hl, 0), e;
            /* exact bytes: a host with upper case (the loader lowers them)
             * is its own entry that no request finds, as in the scan */
            for (e = mg_rmix(h, r->server) & t->hmask; t->hosts[e].root >= 0;
                 e = (e + 1) & t->hmask) {
                mg_rhost_t *x = &t->hosts[e];
                if (x->hash == h && x->server == r->server && x->hostlen == hl &&
                    memcmp(x->host, r->host, hl) == 0)
                    break;
            }
            if (t->hosts[e].root < 0) {
                t->hosts[e].hash = h;
                t->hosts[e].server = r->server;
                t->hosts[e].host = r->host;
                t->hosts[e].hostlen = hl;
                t->nhosts++;
            }
            slot = &t->hosts[e].root;
        }
        if (*slot < 0) {
            *slot = t->nnodes;
            parent[t->nnodes] = -1;
            memset(&t->nodes[t->nnodes], 0, sizeof(mg_rnode_t));
            t->nodes[t->nnodes++].param = -1;
        }
        n = *slot;
        for (k = 0; k < r->nsegs; k++) {
            mg_seg_t *g = &r->segs[k];
            int32_t c;
            if (g->lit) {
                uint32_t h = mg_rhash_bytes(g->lit, g->len, 0);
                c = mg_redge_find(t, n, g->lit, g->len, h);
                if (c < 0) {
                    mg_redge_t e = {h, n, t->nnodes, (uint32_t)g->len, g->lit};
                    mg_redge_put(tmp, tmask, &e);
                    nedges++;
                    t->nodes[n].nlit++;
                }
            } else {
                c = t->nodes[n].param;
                if (c < 0)
                    t->nodes[n].param = t->nnodes;
            }
            if (c < 0) {
                c = t->nnodes++;
                parent[c] = n;
                memset(&t->nodes[c], 0, sizeof(mg_rnode_t));
                t->nodes[c].param = -1;
            }
            n = c;
        }
        end[i] = n;
        if (r->prefix)
            t->nodes[n].nprefix++;
        else
            t->nodes[n].nexact++;
    }

    /* the lists, in rank order: offsets from the counts, then filled by
     * walking the routes in order */
    cnt = calloc((size_t)t->nnodes * 2 + 1, sizeof(int32_t));
    t->list = malloc(sizeof(mg_rent_t) * (gen->nroutes ? gen->nroutes : 1));
    if (cnt == NULL || t->list == NULL)
        goto oom;
    {
        int32_t off = 0;
        for (int32_t n = 0; n < t->nnodes; n++) {
            t->nodes[n].exact = off;
            off += t->nodes[n].nexact;
            t->nodes[n].prefix = off;
            off += t->nodes[n].nprefix;
        }
    }
    for (i = 0; i < gen->nroutes; i++) {
        mg_rnode_t *n = &t->nodes[end[i]];
        int pre = gen->routes[i].prefix != 0;
        int32_t at = (pre ? n->prefix : n->exact) + cnt[end[i] * 2 + pre]++;
        t->list[at].route = i;
        t->list[at].methods = gen->routes[i].methods;
    }
    /* A route the ones before it in the same list cover for every method
     * it has can never be picked: left out, so that a list is at most 64
     * long (each one kept adds a method). Then packed, and the best rank
     * of each subtree (children after parents: one backwards pass). */
    {
        int32_t out = 0;
        for (int32_t n = 0; n < t->nnodes; n++) {
            mg_rnode_t *x = &t->nodes[n];
            for (int pre = 0; pre < 2; pre++) {
                int32_t from = pre ? x->prefix : x->exact, len = pre ? x->nprefix : x->nexact;
                int32_t start = out;
                uint64_t seen = 0;
                for (int32_t j = from; j < from + len; j++) {
                    uint64_t m = t->list[j].methods ? t->list[j].methods : ~0ULL;
                    if ((m & ~seen) == 0)
                        continue;
                    seen |= m;
                    t->list[out++] = t->list[j];
                }
                if (pre) {
                    x->prefix = start;
                    x->nprefix = out - start;
                } else {
                    x->exact = start;
                    x->nexact = out - start;
                }
            }
            x->min = INT32_MAX;
            if (x->nexact)
                x->min = t->list[x->exact].route;
            if (x->nprefix && t->list[x->prefix].route < x->min)
                x->min = t->list[x->prefix].route;
        }
        t->nlist = out;
    }
    for (int32_t n = t->nnodes - 1; n > 0; n--)
        if (parent[n] >= 0 && t->nodes[n].min < t->nodes[parent[n]].min)
            t->nodes[parent[n]].min = t->nodes[n].min;

    /* final sizes: the edges rehashed at twice their number at least */
    {
        uint32_t emask = mg_rpow2(nedges) - 1;
        mg_redge_t *edges = malloc(sizeof(mg_redge_t) * ((size_t)emask + 1));
        void *p;
        if (edges == NULL)
            goto oom;
        for (uint32_t e = 0; e <= emask; e++)
            edges[e].child = -1;
        for (uint32_t e = 0; e <= tmask; e++)
            if (tmp[e].child >= 0)
                mg_redge_put(edges, emask, &tmp[e]);
        free(tmp);
        tmp = NULL;
        t->edges = edges;
        t->emask = emask;
        if ((p = realloc(t->nodes, sizeof(mg_rnode_t) * (t->nnodes ? t->nnodes : 1))) != NULL)
            t->nodes = p;
        if ((p = realloc(t->list, sizeof(mg_rent_t) * (t->nlist ? t->nlist : 1))) != NULL)
            t->list = p;
    }
    t->bytes = sizeof(*t) + sizeof(mg_rnode_t) * (size_t)t->nnodes +
               sizeof(mg_redge_t) * ((size_t)t->emask + 1) + sizeof(mg_rent_t) * (size_t)t->nlist +
               sizeof(int32_t) * (size_t)t->nserver +
               (t->hosts ? sizeof(mg_rhost_t) * ((size_t)t->hmask + 1) : 0);
    gen->rtab = t;
    t = NULL;
    ok = 1;
oom:
    if (!ok)
        snprintf(err, errlen, "out of memory");
    if (t) {
        if (t->edges == tmp)
            t->edges = NULL;
        free(t->nodes);
        free(t->edges);
        free(t->list);
        free(t->root);
        free(t->hosts);
        free(t);
    }
    free(tmp);
    free(parent);
    free(end);
    free(cnt);
    return ok ? MG_OK : MG_ERR;
}

/* One walk over the trie of one root. */
typedef struct {
    const mg_rtab_t *t;
    const char *const *segp;
    const size_t *segl;
    uint32_t *segh; /* segment hashes, made when first needed */
    uint64_t hashed;
    int nseg, toolong;
    uint64_t mbit;
    int32_t best;
} mg_rwalk_t;

static void mg_rlist_pick(mg_rwalk_t *w, int32_t from, int32_t len) {
    for (const mg_rent_t *e = &w->t->list[from], *z = e + len; e < z && e->route < w->best; e++)
        if (e->methods == 0 || (e->methods & w->mbit)) {
            w->best = e->route;
            return;
        }
}

static void mg_rwalk(mg_rwalk_t *w, int32_t node, int d) {
    const mg_rnode_t *n = &w->t->nodes[node];
    if (n->min >= w->best)
        return;
    if (n->nprefix)
        mg_rlist_pick(w, n->prefix, n->nprefix);
    if (d == w->nseg) {
        if (n->nexact && !w->toolong)
            mg_rlist_pick(w, n->exact, n->nexact);
        return;
    }
    if (n->nlit) {
        int32_t c;
        if (!(w->hashed & (1ULL << d))) {
            w->segh[d] = mg_rhash_bytes(w->segp[d], w->segl[d], 0);
            w->hashed |= 1ULL << d;
        }
        c = mg_redge_find(w->t, node, w->segp[d], w->segl[d], w->segh[d]);
        if (c >= 0)
            mg_rwalk(w, c, d + 1);
    }
    if (n->param >= 0 && w->segl[d] > 0)
        mg_rwalk(w, n->param, d + 1);
}

mg_route_t *mg_route_match(mg_gen_t *gen, int server, int method, const char *host, size_t hostlen,
                           const char *path, size_t pathlen, mg_kv_t *params, int *nparams) {
    const char *segp[MG_ROUTE_MAX_SEGS + 1];
    size_t segl[MG_ROUTE_MAX_SEGS + 1];
    uint32_t segh[MG_ROUTE_MAX_SEGS + 1];
    mg_rwalk_t w;
    mg_route_t *r;

    if (gen->rtab == NULL)
        return mg_route_match_linear(gen, server, method, host, hostlen, path, pathlen, params,
                                     nparams);
    if (server < 0 || server >= gen->rtab->nserver)
        return NULL;
    w.t = gen->rtab;
    w.segp = segp;
    w.segl = segl;
    w.segh = segh;
    w.hashed = 0;
    w.nseg = mg_route_split(path, pathlen, segp, segl, &w.toolong);
    w.mbit = method >= 0 && method < 64 ? 1ULL << method : 0;
    w.best = INT32_MAX;
    if (host && w.t->hosts) {
        size_t hl = mg_route_host_len(host, hostlen);
        int32_t root = mg_rhost_find(w.t, server, host, hl, mg_rhash_bytes(host, hl, 1));
        if (root >= 0)
            mg_rwalk(&w, root, 0);
    }
    if (w.t->root[server] >= 0)
        mg_rwalk(&w, w.t->root[server], 0);
    if (w.best == INT32_MAX)
        return NULL;
    r = &gen->routes[w.best];
    mg_route_params(r, segp, segl, params, nparams);
    return r;
}

int mg_gen_server_of(mg_gen_t *gen, int lidx) {
    mg_addr_t *a = &mg_worker.laddr[lidx];
    for (int i = 0; i < gen->nlisten; i++)
        if (gen->listen[i].port == a->port && strcmp(gen->listen[i].host, a->host) == 0)
            return gen->listen[i].server;
    return -1; /* this listener's server is gone since a reload: no routes */
}

/* How many leading bytes of `path` (path_len bytes, no query) a
 * strip_prefix route drops: as many segments as its rule has. */
size_t mg_route_strip_len(const mg_route_t *rt, const char *path, size_t path_len) {
    size_t k = 0;
    int segs = 0;
    while (segs < rt->nsegs && k < path_len) {
        k++;
        while (k < path_len && path[k] != '/')
            k++;
        segs++;
    }
    return k;
}
