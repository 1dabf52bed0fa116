/*
 * test_acme.c -- the workers' side of ACME that needs no network: the
 * http-01 responder (core/gateway/acme_http01.c) on requests built by hand,
 * with a stand-in session that records the response, against a real
 * "moongate.acme" shared dict; and the on_demand allow-list match
 * (mg_acme_allowed, core/app/acme.c).
 */
#include "app/app.h"
#include "ct.h"
#include "ct_req.h"

#include <lauxlib.h>
#include <lualib.h>

static char hbuf[1024];
static mg_hdr_t hdrs[4];
static mg_req_t req;
static int tls, status = -1;
static char body[512];
static size_t body_len;
static int sess_token;

static int fake_tls(const mg_req_t *r) {
    (void)r;
    return tls;
}
static const char *fake_peer_ip(const mg_req_t *r) {
    (void)r;
    return "127.0.0.1";
}
static void fake_head(mg_req_t *r, int st, const char *extra, size_t el, int64_t clen) {
    (void)r, (void)extra, (void)el, (void)clen;
    status = st;
}
static void fake_body(mg_req_t *r, const char *d, size_t n) {
    (void)r;
    if (body_len + n <= sizeof(body)) {
        memcpy(body + body_len, d, n);
        body_len += n;
    }
}
static const mg_http_sess_ops_t fake_sess = {
    .tls = fake_tls, .peer_ip = fake_peer_ip, .head = fake_head, .body = fake_body};

static int ask(const char *url, int method) {
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, url, NULL);
    req.path_len = (uint32_t)strcspn(url, "?");
    req.method = method;
    req.sess = &sess_token;
    req.sops = &fake_sess;
    status = -1;
    body_len = 0;
    return mg_gw_acme_challenge(&req);
}

/* d:set(k, v) on the "moongate.acme" dict, through its Lua API */
static void dict_set(const char *k, const char *v) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    mg_shdict_open_api(L);
    lua_pushliteral(L, MG_ACME_DICT);
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "set");
    lua_pushvalue(L, -2);
    lua_pushstring(L, k);
    lua_pushstring(L, v);
    lua_call(L, 3, 0);
    lua_close(L);
}

static void challenge_answered(void) {
    CHECK_INT(ask("/.well-known/acme-challenge/tok_en-1", HTTP_GET), 1);
    CHECK_INT(status, 200);
    CHECK_INT(body_len, strlen("tok_en-1.thumb"));
    CHECK(memcmp(body, "tok_en-1.thumb", body_len) == 0);
    CHECK_INT(req.resp_done, 1);
    CHECK_INT(ask("/.well-known/acme-challenge/tok_en-1?x=1", HTTP_HEAD), 1);
    CHECK_INT(status, 200);
}

static void others_go_on(void) {
    CHECK_INT(ask("/hello", HTTP_GET), 0);
    CHECK_INT(ask("/.well-known/acme-challenge/", HTTP_GET), 0);           /* no token */
    CHECK_INT(ask("/.well-known/acme-challenge/unknown", HTTP_GET), 0);    /* not ours */
    CHECK_INT(ask("/.well-known/acme-challenge/tok_en-1/x", HTTP_GET), 0); /* not a token */
    CHECK_INT(ask("/.well-known/acme-challenge/tok%2e", HTTP_GET), 0);
    CHECK_INT(ask("/.well-known/acme-challenge/tok_en-1", HTTP_POST), 0); /* GET only */
    CHECK_INT(status, -1);
}

static void not_on_tls(void) {
    tls = 1;
    CHECK_INT(ask("/.well-known/acme-challenge/tok_en-1", HTTP_GET), 0);
    tls = 0;
}

static void allow_list(void) {
    char *allow[] = {"*.apps.test", "exact.test"};
    mg_acme_conf_t c;
    memset(&c, 0, sizeof(c));
    c.allow = allow;
    c.nallow = 2;
    CHECK_INT(mg_acme_allowed(&c, "a.apps.test"), 1);
    CHECK_INT(mg_acme_allowed(&c, "a-1.apps.test"), 1);
    CHECK_INT(mg_acme_allowed(&c, "exact.test"), 1);
    CHECK_INT(mg_acme_allowed(&c, "apps.test"), 0);     /* the wildcard needs a label */
    CHECK_INT(mg_acme_allowed(&c, ".apps.test"), 0);    /* an empty one is none */
    CHECK_INT(mg_acme_allowed(&c, "a.b.apps.test"), 0); /* one label, as TLS wildcards */
    CHECK_INT(mg_acme_allowed(&c, "../x.apps.test"), 0);
    CHECK_INT(mg_acme_allowed(&c, "a.exact.test"), 0);
    CHECK_INT(mg_acme_allowed(&c, "xapps.test"), 0);
    CHECK_INT(mg_acme_allowed(NULL, "a.apps.test"), 0);
}

int main(void) {
    if (mg_shdict_create(MG_ACME_DICT, 65536) != MG_OK) {
        printf("FAIL - cannot map the dict\nct: 0 passed, 1 failed\n");
        return 1;
    }
    dict_set("tok_en-1", "tok_en-1.thumb");
    CT_RUN(challenge_answered);
    CT_RUN(others_go_on);
    CT_RUN(not_on_tls);
    CT_RUN(allow_list);
    return ct_end();
}
