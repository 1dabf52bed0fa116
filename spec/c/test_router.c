/*
 * test_router.c -- mg_route_match (core/conf/router.c) on tables compiled with
 * the real mg_route_compile: literals, {params}, prefixes on whole
 * segments, first match wins (the loader sorts by priority), methods,
 * hosts, servers; and mg_route_strip_len.
 */
#include "ct.h"
#include "conf/conf.h"

#include <llhttp.h>

#include <stdlib.h>

#define MAXR 8

static mg_route_t routes[MAXR];
static mg_gen_t gen;

/* A table of n routes: rule, prefix; methods, host and server set after. */
static void table(int n, const char *const *rules, const int *prefix) {
    char err[128];
    memset(routes, 0, sizeof(routes));
    memset(&gen, 0, sizeof(gen));
    for (int i = 0; i < n; i++) {
        routes[i].rule = (char *)rules[i];
        routes[i].name = (char *)rules[i];
        routes[i].prefix = prefix ? prefix[i] : 0;
        routes[i].index = i;
        if (mg_route_compile(&routes[i], err, sizeof(err)) != MG_OK)
            printf("    compile %s: %s\n", rules[i], err);
    }
    gen.routes = routes;
    gen.nroutes = n;
}

static void table_free(void) {
    for (int i = 0; i < gen.nroutes; i++) {
        for (int k = 0; k < routes[i].nsegs; k++)
            if (routes[i].segs && !routes[i].segs[k].lit)
                free((void *)routes[i].segs[k].param);
        free(routes[i].segs);
    }
    gen.nroutes = 0;
}

/* index of the route `path` matches (GET, no host, server 0), or -1 */
static int m_full(int server, int method, const char *host, const char *path) {
    mg_route_t *r = mg_route_match(&gen, server, method, host, host ? strlen(host) : 0, path,
                                   strlen(path), NULL, NULL);
    return r ? r->index : -1;
}

static int m(const char *path) { return m_full(0, HTTP_GET, NULL, path); }

static void literals(void) {
    static const char *const rules[] = {"/a/b", "/", "/c/"};
    table(3, rules, NULL);
    CHECK_INT(m("/a/b"), 0);
    CHECK_INT(m("/"), 1);
    CHECK_INT(m("/a"), -1);
    CHECK_INT(m("/a/b/c"), -1);
    CHECK_INT(m("/a/bc"), -1);
    CHECK_INT(m("/a/b/"), -1); /* a trailing slash is an empty segment */
    CHECK_INT(m("/A/b"), -1);  /* paths are case-sensitive */
    CHECK_INT(m("/c/"), 2);
    CHECK_INT(m("/c"), -1);
    CHECK_INT(m("//a/b"), -1);
    table_free();
}

static void params(void) {
    static const char *const rules[] = {"/users/{id}", "/o/{org}/r/{repo}"};
    mg_kv_t kv[4];
    int n = 4;
    mg_route_t *r;
    table(2, rules, NULL);
    CHECK(routes[0].has_params);
    r = mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/users/42", 9, kv, &n);
    CHECK(r == &routes[0]);
    CHECK_INT(n, 1);
    CHECK(n == 1 && kv[0].nlen == 2 && memcmp(kv[0].name, "id", 2) == 0);
    CHECK(n == 1 && kv[0].vlen == 2 && memcmp(kv[0].value, "42", 2) == 0);
    n = 4;
    r = mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/o/acme/r/gw", 12, kv, &n);
    CHECK(r == &routes[1]);
    CHECK_INT(n, 2);
    CHECK(n == 2 && kv[0].vlen == 4 && memcmp(kv[0].value, "acme", 4) == 0);
    CHECK(n == 2 && kv[1].nlen == 4 && memcmp(kv[1].name, "repo", 4) == 0);
    CHECK(n == 2 && kv[1].vlen == 2 && memcmp(kv[1].value, "gw", 2) == 0);
    /* the caller's bound on params is kept */
    n = 1;
    r = mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/o/acme/r/gw", 12, kv, &n);
    CHECK(r == &routes[1]);
    CHECK_INT(n, 1);
    /* a param needs a non-empty segment, and matches one segment only */
    CHECK_INT(m("/users/"), -1);
    CHECK_INT(m("/users"), -1);
    CHECK_INT(m("/users/42/x"), -1);
    CHECK_INT(m("/o/acme/r/"), -1);
    CHECK_INT(m("/users/a%2Fb"), 0); /* an encoded slash stays in the segment */
    table_free();
}

static void prefixes(void) {
    static const char *const rules[] = {"/api", "/static/", "/"};
    static const int pre[] = {1, 1, 1};
    table(3, rules, pre);
    CHECK_INT(routes[1].nsegs, 1); /* "/static/" means "/static" */
    CHECK_INT(m("/api"), 0);
    CHECK_INT(m("/api/"), 0);
    CHECK_INT(m("/api/v1/x"), 0);
    CHECK_INT(m("/apix"), 2); /* whole segments only */
    CHECK_INT(m("/ap"), 2);
    CHECK_INT(m("/static"), 1);
    CHECK_INT(m("/static/css/a.css"), 1);
    CHECK_INT(m("/staticx/a"), 2);
    CHECK_INT(m("/"), 2);
    CHECK_INT(m("/anything/else"), 2);
    table_free();
}

static void priorities(void) {
    /* the table is in priority order: the first match wins, not the most
     * specific */
    static const char *const rules[] = {"/a/{x}", "/a/b", "/a", "/a"};
    static const int pre[] = {0, 0, 1, 0};
    table(4, rules, pre);
    CHECK_INT(m("/a/b"), 0);
    CHECK_INT(m("/a/zz"), 0);
    CHECK_INT(m("/a"), 2);
    CHECK_INT(m("/a/b/c"), 2);
    table_free();
    {
        static const char *const rules2[] = {"/a/b", "/a/{x}"};
        table(2, rules2, NULL);
        CHECK_INT(m("/a/b"), 0);
        CHECK_INT(m("/a/c"), 1);
        table_free();
    }
}

static void methods(void) {
    static const char *const rules[] = {"/r", "/r", "/any"};
    table(3, rules, NULL);
    routes[0].methods = (1ULL << HTTP_GET) | (1ULL << HTTP_HEAD);
    routes[1].methods = 1ULL << HTTP_POST;
    CHECK_INT(m_full(0, HTTP_GET, NULL, "/r"), 0);
    CHECK_INT(m_full(0, HTTP_HEAD, NULL, "/r"), 0);
    CHECK_INT(m_full(0, HTTP_POST, NULL, "/r"), 1);
    CHECK_INT(m_full(0, HTTP_DELETE, NULL, "/r"), -1);
    CHECK_INT(m_full(0, HTTP_DELETE, NULL, "/any"), 2); /* 0 = any method */
    CHECK_INT(m_full(0, HTTP_PATCH, NULL, "/any"), 2);
    table_free();
}

static void hosts(void) {
    static const char *const rules[] = {"/", "/", "/", "/"};
    static const int pre[] = {1, 1, 1, 1};
    table(4, rules, pre);
    routes[0].host = "example.com";
    routes[1].host = "[::1]";
    routes[2].host = "10.0.0.1";
    CHECK_INT(m_full(0, HTTP_GET, "example.com", "/x"), 0);
    CHECK_INT(m_full(0, HTTP_GET, "Example.COM", "/x"), 0);
    CHECK_INT(m_full(0, HTTP_GET, "example.com:8080", "/x"), 0);
    CHECK_INT(m_full(0, HTTP_GET, "example.com.evil", "/x"), 3);
    CHECK_INT(m_full(0, HTTP_GET, "www.example.com", "/x"), 3);
    CHECK_INT(m_full(0, HTTP_GET, "example.co", "/x"), 3);
    CHECK_INT(m_full(0, HTTP_GET, NULL, "/x"), 3); /* no Host: host routes are skipped */
    CHECK_INT(m_full(0, HTTP_GET, "[::1]", "/x"), 1);
    CHECK_INT(m_full(0, HTTP_GET, "[::1]:9000", "/x"), 1);
    CHECK_INT(m_full(0, HTTP_GET, "[::2]", "/x"), 3);
    CHECK_INT(m_full(0, HTTP_GET, "10.0.0.1:80", "/x"), 2);
    /* a host of the same length as the header's name but different */
    CHECK_INT(m_full(0, HTTP_GET, "examp1e.com", "/x"), 3);
    table_free();
}

static void servers(void) {
    static const char *const rules[] = {"/s", "/s"};
    table(2, rules, NULL);
    routes[0].server = 1;
    routes[1].server = 0;
    CHECK_INT(m_full(1, HTTP_GET, NULL, "/s"), 0);
    CHECK_INT(m_full(0, HTTP_GET, NULL, "/s"), 1);
    CHECK_INT(m_full(2, HTTP_GET, NULL, "/s"), -1);
    CHECK_INT(m_full(-1, HTTP_GET, NULL, "/s"), -1); /* a listener gone since a reload */
    table_free();
}

static void long_paths(void) {
    static const char *const rules[] = {"/a", "/"};
    static const int pre[] = {1, 0};
    char path[4 * (MG_ROUTE_MAX_SEGS + 8) + 1];
    size_t n = 0;
    char err[64];
    mg_route_t big;
    char rule[4 * (MG_ROUTE_MAX_SEGS + 2)];
    for (int i = 0; i < MG_ROUTE_MAX_SEGS + 8; i++)
        n += (size_t)sprintf(path + n, "/a");
    table(2, rules, pre);
    CHECK_INT(m(path), 0); /* a prefix still matches a path past the segment limit */
    CHECK_INT(m("/b"), -1);
    table_free();
    /* a rule past the limit is refused at load */
    n = 0;
    for (int i = 0; i < MG_ROUTE_MAX_SEGS + 1; i++)
        n += (size_t)sprintf(rule + n, "/x");
    memset(&big, 0, sizeof(big));
    big.rule = rule;
    CHECK_INT(mg_route_compile(&big, err, sizeof(err)), MG_ERR);
    free(big.segs);
    memset(&big, 0, sizeof(big));
    big.rule = "nope";
    CHECK_INT(mg_route_compile(&big, err, sizeof(err)), MG_ERR);
    CHECK(big.segs == NULL);
}

static void strip_len(void) {
    static const char *const rules[] = {"/api", "/api/v1/", "/"};
    static const int pre[] = {1, 1, 1};
    table(3, rules, pre);
    CHECK_INT(mg_route_strip_len(&routes[0], "/api/users", 10), 4);
    CHECK_INT(mg_route_strip_len(&routes[0], "/api", 4), 4);
    CHECK_INT(mg_route_strip_len(&routes[1], "/api/v1/x/y", 11), 7);
    CHECK_INT(mg_route_strip_len(&routes[2], "/x", 2), 0);
    table_free();
}

int main(void) {
    CT_RUN(literals);
    CT_RUN(params);
    CT_RUN(prefixes);
    CT_RUN(priorities);
    CT_RUN(methods);
    CT_RUN(hosts);
    CT_RUN(servers);
    CT_RUN(long_paths);
    CT_RUN(strip_len);
    return ct_end();
}
