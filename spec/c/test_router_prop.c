/*
 * test_router_prop.c -- the trie (mg_route_build + mg_route_match, in
 * core/conf/router.c) against the linear scan it replaced
 * (mg_route_match_linear): thousands of random tables (literals, {params},
 * prefixes, empty segments, priorities, hosts, methods, servers) and
 * random paths (some of random bytes), hosts and methods; both must pick
 * the same route and the same params. Seeded and deterministic
 * (MG_PROP_SEED overrides the seed, MG_PROP_TABLES the count); a failure
 * prints the table and the request.
 * Then the cases the priority rule is about (a literal, a param and a
 * prefix route at the same depth, explicit priorities), spec/c/test_router.c's
 * tables through the trie, and a 10 000-route table: the last route
 * found, its memory bounded.
 */
#include "ct.h"
#include "conf/conf.h"

#include <llhttp.h>

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static uint64_t rng_state;

static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static int below(int n) { return (int)(rnd() % (uint64_t)n); }

static const char *const SEGS[] = {"a", "b", "c", "ab", "", "x1", "{p}", "{q}", "{id}"};
#define NSEGS_LIT 6 /* the first ones are literals */
#define NSEGS_ALL ((int)(sizeof(SEGS) / sizeof(SEGS[0])))
static const char *const PATH_SEGS[] = {"a", "b", "c", "ab", "", "x1", "zz", "A", "a%2Fb", "{p}"};
#define NPATH_SEGS ((int)(sizeof(PATH_SEGS) / sizeof(PATH_SEGS[0])))
/* route hosts are lower case (the loader lowers them); "B.com" stays as a
 * host no request can match, as in the scan */
static const char *const HOSTS[] = {"a.com", "b.com", "[::1]", "10.0.0.1", "", "B.com"};
static const char *const REQ_HOSTS[] = {
    "a.com", "A.COM:8080", "b.com:1", "[::1]", "[::1]:80", "c.com", "",       "10.0.0.1",
    "B.com", "a.com:",     "a.co",    "[::2]", "b.com.",   ":80",   "a.com:x"};
#define NREQ_HOSTS ((int)(sizeof(REQ_HOSTS) / sizeof(REQ_HOSTS[0])))
static const int METHODS[] = {HTTP_GET, HTTP_POST, HTTP_PUT, HTTP_DELETE, HTTP_HEAD, HTTP_PATCH};
#define NMETHODS ((int)(sizeof(METHODS) / sizeof(METHODS[0])))

#define MAXR 64

typedef struct {
    mg_route_t r[MAXR];
    double prio[MAXR];
    int n;
    mg_gen_t gen;
} tab_t;

static tab_t T;

static void tab_free(tab_t *t) {
    mg_route_table_free(&t->gen);
    for (int i = 0; i < t->n; i++) {
        for (int k = 0; t->r[i].segs && k < t->r[i].nsegs; k++)
            free((char *)t->r[i].segs[k].param);
        free(t->r[i].segs);
        free(t->r[i].rule);
    }
    t->n = 0;
}

/* the loader's order: priority descending, then file order */
static int by_prio(const void *a, const void *b) {
    const mg_route_t *x = a, *y = b;
    double px = T.prio[x->index], py = T.prio[y->index];
    if (px != py)
        return px > py ? -1 : 1;
    return x->index - y->index;
}

static void random_table(tab_t *t) {
    char rule[256], err[128];
    int n = 1 + below(below(4) == 0 ? MAXR : 12);
    memset(&t->gen, 0, sizeof(t->gen));
    for (int i = 0; i < n; i++) {
        mg_route_t *r = &t->r[i];
        int ns = below(6), len = 0;
        memset(r, 0, sizeof(*r));
        for (int k = 0; k < ns; k++) {
            /* mostly literals, so that tables share paths */
            const char *s = SEGS[below(3) ? below(NSEGS_LIT) : below(NSEGS_ALL)];
            len += snprintf(rule + len, sizeof(rule) - len, "/%s", s);
        }
        if (ns == 0 || below(8) == 0)
            len += snprintf(rule + len, sizeof(rule) - len, "/");
        r->rule = strdup(rule);
        r->prefix = below(3) == 0;
        r->index = i;
        if (below(2))
            r->methods = 0;
        else if (below(10) == 0)
            r->methods = 1ULL << 63; /* only methods llhttp does not know */
        else
            for (int m = 0; m < NMETHODS; m++)
                if (below(3) == 0)
                    r->methods |= 1ULL << METHODS[m];
        r->host =
            below(3) == 0 ? (char *)HOSTS[below((int)(sizeof(HOSTS) / sizeof(HOSTS[0])))] : NULL;
        r->server = below(4) == 0 ? 1 + below(2) : 0;
        /* explicit priorities (some equal: ties go to file order), or the
         * loader's default, the rule's length */
        t->prio[i] = below(2) ? (double)below(5) * 10 : (double)strlen(rule);
        if (mg_route_compile(r, err, sizeof(err)) != MG_OK) {
            printf("    compile %s: %s\n", rule, err);
            ct_case_bad = 1;
        }
    }
    t->n = n;
    qsort(t->r, n, sizeof(mg_route_t), by_prio);
    t->gen.routes = t->r;
    t->gen.nroutes = n;
}

static int random_path(char *path, size_t cap) {
    int len = 0, ns, kind = below(20);
    if (kind == 0)
        return snprintf(path, cap, "%s", below(2) ? "*" : ""); /* no leading '/' */
    if (kind == 2) { /* any bytes but NUL, slashes often */
        int n = below((int)cap - 1);
        for (int i = 0; i < n; i++)
            path[i] = below(3) == 0 ? '/' : (char)(1 + below(255));
        path[n] = '\0';
        return n;
    }
    ns = kind == 1 ? MG_ROUTE_MAX_SEGS - 2 + below(5) : below(7); /* near the segment limit */
    for (int k = 0; k < ns; k++)
        len += snprintf(path + len, cap - len, "/%s",
                        below(4) ? SEGS[below(NSEGS_LIT)] : PATH_SEGS[below(NPATH_SEGS)]);
    if (ns == 0 || below(6) == 0)
        len += snprintf(path + len, cap - len, "/");
    return len;
}

static void dump(const tab_t *t, int server, int method, const char *host, const char *path) {
    printf("    request: server %d, method %d, host %s, path '%s'\n", server, method,
           host ? host : "(none)", path);
    for (int i = 0; i < t->n; i++)
        printf("    [%d] %s %s methods %llx host %s server %d\n", i,
               t->r[i].prefix ? "prefix" : "exact ", t->r[i].rule,
               (unsigned long long)t->r[i].methods, t->r[i].host ? t->r[i].host : "-",
               t->r[i].server);
}

/* both matchers on one request: 1 if they agree */
static int agree(tab_t *t, int server, int method, const char *host, const char *path) {
    mg_kv_t kv1[8], kv2[8];
    int n1 = 8, n2 = 8;
    size_t hl = host ? strlen(host) : 0, pl = strlen(path);
    mg_route_t *a = mg_route_match(&t->gen, server, method, host, hl, path, pl, kv1, &n1);
    mg_route_t *b = mg_route_match_linear(&t->gen, server, method, host, hl, path, pl, kv2, &n2);
    if (a != b) {
        printf("    trie %d, scan %d\n", a ? (int)(a - t->r) : -1, b ? (int)(b - t->r) : -1);
        return 0;
    }
    if (a == NULL)
        return 1;
    if (n1 != n2) {
        printf("    params: trie %d, scan %d\n", n1, n2);
        return 0;
    }
    for (int i = 0; i < n1; i++)
        if (kv1[i].nlen != kv2[i].nlen || memcmp(kv1[i].name, kv2[i].name, kv1[i].nlen) != 0 ||
            kv1[i].vlen != kv2[i].vlen || kv1[i].value != kv2[i].value) {
            printf("    param %d differs\n", i);
            return 0;
        }
    /* the params of the known route (what req.params reads) are the same */
    mg_kv_t kv3[8];
    int n3 = 8;
    if (mg_route_params_of(a, path, pl, kv3, &n3) != n1 || n3 != n1) {
        printf("    params of the route: %d, match %d\n", n3, n1);
        return 0;
    }
    for (int i = 0; i < n1; i++)
        if (kv3[i].name != kv1[i].name || kv3[i].value != kv1[i].value ||
            kv3[i].vlen != kv1[i].vlen) {
            printf("    param %d of the route differs\n", i);
            return 0;
        }
    return 1;
}

static long long compared, matched;

static void random_tables(void) {
    const char *s = getenv("MG_PROP_SEED"), *nt = getenv("MG_PROP_TABLES");
    uint64_t seed = s ? strtoull(s, NULL, 0) : 0x6d6f6f6e67617465ULL;
    int tables = nt ? atoi(nt) : 5000, bad = 0;
    char path[512], err[128];
    clock_t t0 = clock();

    rng_state = seed ? seed : 1;
    for (int i = 0; i < tables && bad < 3; i++) {
        random_table(&T);
        if (mg_route_build(&T.gen, err, sizeof(err)) != MG_OK) {
            printf("    build: %s\n", err);
            ct_case_bad = 1;
            tab_free(&T);
            break;
        }
        for (int q = 0; q < 200; q++) {
            int server = below(6) == 0 ? below(4) - 1 : 0; /* -1: a listener gone */
            int method = below(8) == 0 ? HTTP_OPTIONS : METHODS[below(NMETHODS)];
            const char *host = below(5) == 0 ? NULL : REQ_HOSTS[below(NREQ_HOSTS)];
            random_path(path, sizeof(path));
            compared++;
            matched += mg_route_match_linear(&T.gen, server, method, host, host ? strlen(host) : 0,
                                             path, strlen(path), NULL, NULL) != NULL;
            if (!agree(&T, server, method, host, path)) {
                printf("    table %d (seed 0x%llx): the trie and the scan disagree\n", i,
                       (unsigned long long)seed);
                dump(&T, server, method, host, path);
                ct_case_bad = 1;
                bad++;
                break;
            }
        }
        tab_free(&T);
    }
    printf("    %d tables, %lld requests compared (%lld matched a route), %.1f s\n", tables,
           compared, matched, (double)(clock() - t0) / CLOCKS_PER_SEC);
    /* not a test that cannot fail: the tables must make both outcomes common */
    CHECK(matched > compared / 5);
    CHECK(matched < compared - compared / 5);
}

/* a fixed table in the given order, built */
static void fixed(int n, const char *const *rules, const int *prefix) {
    char err[128];
    memset(&T.gen, 0, sizeof(T.gen));
    for (int i = 0; i < n; i++) {
        memset(&T.r[i], 0, sizeof(T.r[i]));
        T.r[i].rule = strdup(rules[i]);
        T.r[i].prefix = prefix ? prefix[i] : 0;
        T.r[i].index = i;
        if (mg_route_compile(&T.r[i], err, sizeof(err)) != MG_OK)
            printf("    compile %s: %s\n", rules[i], err);
    }
    T.n = n;
    T.gen.routes = T.r;
    T.gen.nroutes = n;
}

static void build(void) {
    char err[128];
    CHECK(mg_route_build(&T.gen, err, sizeof(err)) == MG_OK);
    CHECK(T.gen.rtab != NULL);
}

static int m(int method, const char *host, const char *path) {
    mg_route_t *r = mg_route_match(&T.gen, 0, method, host, host ? strlen(host) : 0, path,
                                   strlen(path), NULL, NULL);
    CHECK(agree(&T, 0, method, host, path));
    return r ? r->index : -1;
}

static int g(const char *path) { return m(HTTP_GET, NULL, path); }

static void same_depth(void) {
    /* in match order (the loader's sort): a param route with an explicit
     * priority above a literal and a prefix at the same depth */
    static const char *const r1[] = {"/api/{x}", "/api/users", "/api", "/api/users/{id}", "/"};
    static const int p1[] = {0, 0, 1, 0, 1};
    fixed(5, r1, p1);
    build();
    CHECK_INT(g("/api/users"), 0); /* the param wins: it is first */
    CHECK_INT(g("/api/other"), 0);
    CHECK_INT(g("/api"), 2);         /* the prefix */
    CHECK_INT(g("/api/users/7"), 2); /* the prefix outranks the deeper literal route */
    CHECK_INT(g("/api/"), 2);        /* "" is no value for {x} */
    CHECK_INT(g("/other"), 4);
    tab_free(&T);
    /* the prefix first: it takes everything below it */
    static const char *const r2[] = {"/api", "/api/users", "/api/{x}"};
    static const int p2[] = {1, 0, 0};
    fixed(3, r2, p2);
    build();
    CHECK_INT(g("/api/users"), 0);
    CHECK_INT(g("/api/x"), 0);
    tab_free(&T);
    /* the literal, then the param, then a deeper prefix, then the root */
    static const char *const r3[] = {"/a/b/c", "/a/{x}/c", "/a/b", "/"};
    static const int p3[] = {0, 0, 1, 1};
    fixed(4, r3, p3);
    build();
    CHECK_INT(g("/a/b/c"), 0);
    CHECK_INT(g("/a/z/c"), 1);
    CHECK_INT(g("/a/b/d"), 2);
    CHECK_INT(g("/a/b"), 2);
    CHECK_INT(g("/a/z/d"), 3);
    CHECK_INT(g("/a//c"), 3); /* an empty segment is no value for {x} */
    tab_free(&T);
    /* methods and hosts split one rule; the earlier route of a list covers a
     * later one with the same methods */
    static const char *const r4[] = {"/r", "/r", "/r", "/r", "/r"};
    fixed(5, r4, NULL);
    T.r[0].methods = 1ULL << HTTP_POST;
    T.r[0].host = "a.com";
    T.r[1].methods = 1ULL << HTTP_POST;
    T.r[2].methods = (1ULL << HTTP_GET) | (1ULL << HTTP_POST);
    T.r[3].methods = 1ULL << HTTP_GET; /* covered by [2]: never picked */
    build();
    CHECK_INT(m(HTTP_POST, "A.com:80", "/r"), 0);
    CHECK_INT(m(HTTP_POST, "b.com", "/r"), 1);
    CHECK_INT(m(HTTP_GET, "a.com", "/r"), 2);
    CHECK_INT(m(HTTP_DELETE, NULL, "/r"), 4);
    tab_free(&T);
}

/* spec/c/test_router.c's tables, now through the trie */
static void router_cases(void) {
    static const char *const lit[] = {"/a/b", "/", "/c/"};
    fixed(3, lit, NULL);
    build();
    CHECK_INT(g("/a/b"), 0);
    CHECK_INT(g("/"), 1);
    CHECK_INT(g("/a"), -1);
    CHECK_INT(g("/a/b/"), -1);
    CHECK_INT(g("/A/b"), -1);
    CHECK_INT(g("/c/"), 2);
    CHECK_INT(g("/c"), -1);
    CHECK_INT(g("//a/b"), -1);
    tab_free(&T);
    static const char *const par[] = {"/users/{id}", "/o/{org}/r/{repo}"};
    fixed(2, par, NULL);
    build();
    {
        mg_kv_t kv[4];
        int n = 4;
        mg_route_t *r = mg_route_match(&T.gen, 0, HTTP_GET, NULL, 0, "/o/acme/r/gw", 12, kv, &n);
        CHECK(r == &T.r[1]);
        CHECK_INT(n, 2);
        CHECK(n == 2 && kv[0].vlen == 4 && memcmp(kv[0].value, "acme", 4) == 0);
        CHECK(n == 2 && kv[1].nlen == 4 && memcmp(kv[1].name, "repo", 4) == 0);
        n = 1;
        r = mg_route_match(&T.gen, 0, HTTP_GET, NULL, 0, "/o/acme/r/gw", 12, kv, &n);
        CHECK(r == &T.r[1]);
        CHECK_INT(n, 1);
    }
    CHECK_INT(g("/users/"), -1);
    CHECK_INT(g("/users/42/x"), -1);
    CHECK_INT(g("/users/a%2Fb"), 0);
    tab_free(&T);
    static const char *const pre[] = {"/api", "/static/", "/"};
    static const int pp[] = {1, 1, 1};
    fixed(3, pre, pp);
    build();
    CHECK_INT(g("/api/v1/x"), 0);
    CHECK_INT(g("/apix"), 2);
    CHECK_INT(g("/static"), 1);
    CHECK_INT(g("/staticx/a"), 2);
    tab_free(&T);
    static const char *const hosts[] = {"/", "/", "/", "/"};
    static const int hp[] = {1, 1, 1, 1};
    fixed(4, hosts, hp);
    T.r[0].host = "example.com";
    T.r[1].host = "[::1]";
    T.r[2].host = "10.0.0.1";
    build();
    CHECK_INT(m(HTTP_GET, "Example.COM", "/x"), 0);
    CHECK_INT(m(HTTP_GET, "example.com:8080", "/x"), 0);
    CHECK_INT(m(HTTP_GET, "example.com.evil", "/x"), 3);
    CHECK_INT(m(HTTP_GET, NULL, "/x"), 3);
    CHECK_INT(m(HTTP_GET, "[::1]:9000", "/x"), 1);
    CHECK_INT(m(HTTP_GET, "[::2]", "/x"), 3);
    CHECK_INT(m(HTTP_GET, "10.0.0.1:80", "/x"), 2);
    tab_free(&T);
    {
        static const char *const lp[] = {"/a", "/"};
        static const int lpp[] = {1, 0};
        char path[4 * (MG_ROUTE_MAX_SEGS + 8) + 1];
        size_t n = 0;
        for (int i = 0; i < MG_ROUTE_MAX_SEGS + 8; i++)
            n += (size_t)sprintf(path + n, "/a");
        fixed(2, lp, lpp);
        build();
        CHECK_INT(g(path), 0); /* a prefix still matches a path past the segment limit */
        CHECK_INT(g("/b"), -1);
        tab_free(&T);
    }
    {
        static const char *const sv[] = {"/s", "/s"};
        fixed(2, sv, NULL);
        T.r[0].server = 1;
        build();
        CHECK(mg_route_match(&T.gen, 1, HTTP_GET, NULL, 0, "/s", 2, NULL, NULL) == &T.r[0]);
        CHECK(mg_route_match(&T.gen, 0, HTTP_GET, NULL, 0, "/s", 2, NULL, NULL) == &T.r[1]);
        CHECK(mg_route_match(&T.gen, 2, HTTP_GET, NULL, 0, "/s", 2, NULL, NULL) == NULL);
        CHECK(mg_route_match(&T.gen, -1, HTTP_GET, NULL, 0, "/s", 2, NULL, NULL) == NULL);
        tab_free(&T);
    }
}

/* 10 000 routes, "/svc<i>/items/{id}" then the one asked for, last */
static void big_table(void) {
    enum { N = 10000 };
    mg_route_t *rs = calloc(N, sizeof(mg_route_t));
    mg_gen_t gen;
    char rule[64], err[128];
    mg_kv_t kv[2];
    int n = 2;
    mg_route_t *r;
    size_t bytes;
    memset(&gen, 0, sizeof(gen));
    for (int i = 0; i < N; i++) {
        if (i == N - 1)
            snprintf(rule, sizeof(rule), "/last/{id}");
        else
            snprintf(rule, sizeof(rule), "/svc%d/items/{id}", i);
        rs[i].rule = strdup(rule);
        rs[i].index = i;
        rs[i].prefix = i % 3 == 0;
        CHECK(mg_route_compile(&rs[i], err, sizeof(err)) == MG_OK);
    }
    gen.routes = rs;
    gen.nroutes = N;
    CHECK(mg_route_build(&gen, err, sizeof(err)) == MG_OK);
    r = mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/last/42", 8, kv, &n);
    CHECK(r == &rs[N - 1]);
    CHECK(n == 1 && kv[0].vlen == 2 && memcmp(kv[0].value, "42", 2) == 0);
    CHECK(mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/svc9998/items/1", 16, NULL, NULL) ==
          &rs[N - 2]);
    CHECK(mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/svc9999/items/1", 16, NULL, NULL) == NULL);
    CHECK(mg_route_match(&gen, 0, HTTP_GET, NULL, 0, "/svc9/items/1/x", 15, NULL, NULL) == &rs[9]);
    bytes = mg_route_table_bytes(&gen);
    printf("    10000 routes: %zu bytes of trie (%.0f per route)\n", bytes, (double)bytes / N);
    CHECK(bytes > 0 && bytes < (size_t)N * 512); /* linear in the table: a bound, not a figure */
    mg_route_table_free(&gen);
    CHECK(gen.rtab == NULL);
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < rs[i].nsegs; k++)
            free((char *)rs[i].segs[k].param);
        free(rs[i].segs);
        free(rs[i].rule);
    }
    free(rs);
}

int main(void) {
    CT_RUN(random_tables);
    CT_RUN(same_depth);
    CT_RUN(router_cases);
    CT_RUN(big_table);
    return ct_end();
}
