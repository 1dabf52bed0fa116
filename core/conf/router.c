/*
 * router.c -- the compiled route table: rules split into segments once at
 * load, matched in priority order per request. Matching is O(routes x
 * segments) with no allocation; the loader sorts routes by priority.
 */
#include "conf/conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int mg_route_compile(mg_route_t *r, char *err, size_t errlen) {
    const char *p = r->rule, *end;
    int n = 0;

    if (p[0] != '/') {
        snprintf(err, errlen, "rule must start with '/'");
        return MG_ERR;
    }
    r->segs = calloc(MG_ROUTE_MAX_SEGS, sizeof(mg_seg_t));
    if (r->segs == NULL) {
        snprintf(err, errlen, "out of memory");
        return MG_ERR;
    }
    p++;
    end = r->rule + strlen(r->rule);
    /* "/" alone has no segments; "/a/b" has two; "/a/" has "a" and "". */
    while (p <= end && !(p == end && n == 0)) {
        const char *s = memchr(p, '/', end - p);
        size_t len = s ? (size_t)(s - p) : (size_t)(end - p);
        mg_seg_t *g;
        if (n == MG_ROUTE_MAX_SEGS) {
            snprintf(err, errlen, "too many segments (max %d)", MG_ROUTE_MAX_SEGS);
            return MG_ERR;
        }
        g = &r->segs[n++];
        if (len >= 2 && p[0] == '{' && p[len - 1] == '}') {
            char *name = strndup(p + 1, len - 2);
            if (name == NULL) {
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
        if (s == NULL)
            break;
        p = s + 1;
    }
    /* A prefix "/api/" means the same as "/api". */
    if (r->prefix && n > 0 && r->segs[n - 1].lit && r->segs[n - 1].len == 0)
        n--;
    r->nsegs = n;
    return MG_OK;
}

static int mg_route_host_ok(mg_route_t *r, const char *host, size_t hostlen) {
    size_t i, hl = strlen(r->host);
    const char *colon;

    if (host == NULL)
        return 0;
    /* compare without the port; IPv6 literals keep their brackets */
    colon = memrchr(host, ':', hostlen);
    if (colon && memchr(colon, ']', hostlen - (colon - host)) == NULL)
        hostlen = colon - host;
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

mg_route_t *mg_route_match(mg_gen_t *gen, int server, int method, const char *host, size_t hostlen,
                           const char *path, size_t pathlen, mg_kv_t *params, int *nparams) {
    const char *segp[MG_ROUTE_MAX_SEGS + 1];
    size_t segl[MG_ROUTE_MAX_SEGS + 1];
    int nseg = 0, i, k, toolong = 0;
    const char *p = path + 1, *end = path + pathlen;

    /* split the request path once: "/a/b" -> a, b; "/" -> none */
    if (pathlen > 1 || (pathlen == 1 && path[0] != '/')) {
        for (;;) {
            const char *s = memchr(p, '/', end - p);
            if (nseg == MG_ROUTE_MAX_SEGS + 1) {
                toolong = 1;
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
        if (params && nparams) {
            int np = 0;
            for (k = 0; k < r->nsegs && np < *nparams; k++) {
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
        return r;
    }
    return NULL;
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
