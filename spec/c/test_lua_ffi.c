/*
 * test_lua_ffi.c -- the FFI side of the request API (core/lua/lua_ffi.c)
 * on requests built by hand: request ids (a slot and its generation; an id
 * kept past its request reaches nothing), one header and every header,
 * the query, header sets (codes, not raises), URL escaping both ways.
 */
#include "ct.h"
#include "ct_req.h"
#include "lua/lua_int.h"

#include <stdlib.h>

struct mg_lua_ffi_str_s {
    const char *p;
    size_t n;
};

static char hbuf[1024];
static mg_hdr_t hdrs[16];
static mg_req_t req;

static void setup(void) {
    static const char *const kv[] = {"Host", "a.test",  "X-Multi", "one", "Accept",
                                     "*/*",  "x-multi", "two",     NULL};
    ct_req_head(&req, hbuf, sizeof(hbuf), hdrs, "/p/q?a=1&b=%41", kv);
    req.path_len = 4;
}

static void ids(void) {
    int64_t a, b, c;
    setup();
    a = mg_lua_ffi_id_new(&req);
    CHECK(a >= 0);
    CHECK(mg_lua_ffi_req(a) == &req);
    mg_lua_ffi_id_free(a);
    CHECK(mg_lua_ffi_req(a) == NULL);
    b = mg_lua_ffi_id_new(&req); /* the same slot again, another generation */
    CHECK(b != a);
    CHECK(mg_lua_ffi_req(a) == NULL);
    CHECK(mg_lua_ffi_req(b) == &req);
    mg_lua_ffi_id_free(a); /* a stale id frees nothing */
    CHECK(mg_lua_ffi_req(b) == &req);
    CHECK(mg_lua_ffi_req(-1) == NULL);
    CHECK(mg_lua_ffi_req(((int64_t)1 << 32) | 99999) == NULL);
    /* many at once: the table grows, every id stays its own */
    {
        int64_t many[600];
        for (int i = 0; i < 600; i++)
            many[i] = mg_lua_ffi_id_new(&req);
        for (int i = 0; i < 600; i++)
            CHECK(mg_lua_ffi_req(many[i]) == &req);
        for (int i = 0; i < 600; i++)
            mg_lua_ffi_id_free(many[i]);
        for (int i = 0; i < 600; i++)
            CHECK(mg_lua_ffi_req(many[i]) == NULL);
    }
    c = mg_lua_ffi_id_new(&req);
    CHECK(mg_lua_ffi_req(b) == &req);
    mg_lua_ffi_id_free(b);
    mg_lua_ffi_id_free(c);
    /* a detached id reaches nothing, but its slot (the req table's anchor)
     * stays taken until it is freed */
    {
        int64_t d = mg_lua_ffi_id_new(&req), e, f;
        mg_lua_ffi_id_detach(d);
        CHECK(mg_lua_ffi_req(d) == NULL);
        e = mg_lua_ffi_id_new(&req);
        CHECK(MG_LUA_FFI_SLOT(e) != MG_LUA_FFI_SLOT(d));
        mg_lua_ffi_id_free(d); /* a detached id frees nothing either */
        f = mg_lua_ffi_id_new(&req);
        CHECK(MG_LUA_FFI_SLOT(f) != MG_LUA_FFI_SLOT(d));
        mg_lua_ffi_slot_free(MG_LUA_FFI_SLOT(d));
        c = mg_lua_ffi_id_new(&req); /* the slot again, another generation */
        CHECK(MG_LUA_FFI_SLOT(c) == MG_LUA_FFI_SLOT(d));
        CHECK(c != d);
        CHECK(mg_lua_ffi_req(d) == NULL);
        CHECK(mg_lua_ffi_req(c) == &req);
        mg_lua_ffi_slot_free(MG_LUA_FFI_SLOT(e)); /* a live one: its id goes too */
        CHECK(mg_lua_ffi_req(e) == NULL);
        mg_lua_ffi_id_free(c);
        mg_lua_ffi_id_free(f);
    }
}

static void one_header(void) {
    mg_lua_ffi_str_t out;
    int64_t id;
    setup();
    id = mg_lua_ffi_id_new(&req);
    CHECK_INT(mg_lua_ffi_req_header(id, "accept", 6, &out), 1);
    CHECK_INT(out.n, 3);
    CHECK(memcmp(out.p, "*/*", 3) == 0);
    CHECK(out.p >= hbuf && out.p < hbuf + sizeof(hbuf)); /* one line: no copy */
    CHECK_INT(mg_lua_ffi_req_header(id, "X-MULTI", 7, &out), 1);
    CHECK_INT(out.n, 8);
    CHECK(memcmp(out.p, "one, two", 8) == 0);
    CHECK_INT(mg_lua_ffi_req_header(id, "x-none", 6, &out), 0);
    CHECK_INT(mg_lua_ffi_req_header(id, "accep", 5, &out), 0);
    mg_lua_ffi_id_free(id);
    CHECK_INT(mg_lua_ffi_req_header(id, "accept", 6, &out), -2);
}

static void all_headers(void) {
    mg_kv_t kv[2], big[8];
    int oom = 7;
    int64_t id;
    setup();
    id = mg_lua_ffi_id_new(&req);
    CHECK_INT(mg_lua_ffi_req_headers(id, kv, 2, &oom), -4); /* room for 4, please */
    CHECK_INT(mg_lua_ffi_req_headers(id, big, 8, &oom), 4);
    CHECK_INT(oom, 0);
    CHECK_INT(big[0].nlen, 4);
    CHECK(memcmp(big[0].name, "host", 4) == 0);
    CHECK(memcmp(big[1].name, "x-multi", 7) == 0);
    CHECK(memcmp(big[3].value, "two", 3) == 0);
    mg_lua_ffi_id_free(id);
    CHECK_INT(mg_lua_ffi_req_headers(id, big, 8, &oom), 0);
    CHECK_INT(oom, -2);
}

static void query(void) {
    mg_lua_ffi_str_t out;
    int64_t id;
    setup();
    id = mg_lua_ffi_id_new(&req);
    CHECK_INT(mg_lua_ffi_req_query(id, &out), 0);
    CHECK_INT(out.n, 9);
    CHECK(memcmp(out.p, "a=1&b=%41", 9) == 0);
    req.url_len = 4; /* no query */
    CHECK_INT(mg_lua_ffi_req_query(id, &out), 0);
    CHECK_INT(out.n, 0);
    mg_lua_ffi_id_free(id);
    CHECK_INT(mg_lua_ffi_req_query(id, &out), -2);
    CHECK(mg_lua_ffi_req_id(id) == NULL);
}

static void set_headers(void) {
    int64_t id;
    setup();
    id = mg_lua_ffi_id_new(&req);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X-A", 3, "1", 1), 0);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X-A", 3, "2", 1), 0); /* replaces */
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1, "X-N", 3, 42), 0);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1, "X-F", 3, 1.5), 0);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1, "X-Z", 3, 0), 0);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1, "X-M", 3, -907), 0);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1, "X-E", 3, 1e15), 0);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "Connection", 10, "x", 1), 0); /* ignored */
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X-B", 3, NULL, 0), 0);        /* hides */
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X A", 3, "1", 1), 1);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X-A", 3, "a\nb", 3), 1);
    CHECK_INT(mg_lua_ffi_req_set_header(-1, 0, "X-A", 3, "1", 1), 2); /* filled: went on */
    CHECK_INT(mg_lua_ffi_req_set_header(-1, 0, "X A", 3, "1", 1), 1); /* the header first */
    /* init.lua's flags: 4 asks whether the name may be remembered (5: a
     * token, not hop-by-hop), 2 skips the name's checks, never the value's */
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 4, "X-C", 3, "c", 1), 5);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 1 | 4, "X-D", 3, NULL, 0), 5);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 4, "Connection", 10, "x", 1), 0); /* ignored */
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 4, "X A", 3, "1", 1), 1);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 4, "X-C", 3, "a\rb", 3), 1);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 2, "X-C", 3, "c2", 2), 0); /* replaces */
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0 | 2, "X-C", 3, "a\nb", 3), 1);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1 | 4, "X-K", 3, 7), 5);
    CHECK_INT(mg_lua_ffi_req_set_header_num(id, 1 | 2, "X-K", 3, 8), 0); /* replaces */
    CHECK_INT(mg_lua_ffi_req_set_header(-1, 0 | 2, "X-C", 3, "1", 1), 2);
    CHECK(req.xhdrs.len > 0);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "X-A: 2\r\n", 8) != NULL);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "X-A: 1", 6) == NULL);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "X-B:\r\n", 6) != NULL);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "Connection", 10) == NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-N: 42\r\n", 9) != NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-F: 1.5\r\n", 10) != NULL);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "X-C: c2\r\n", 9) != NULL);
    CHECK(memmem(req.xhdrs.p, req.xhdrs.len, "X-C: c\r\n", 8) == NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-K: 8\r\n", 8) != NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-K: 7", 6) == NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-Z: 0\r\n", 8) != NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-M: -907\r\n", 11) != NULL);
    CHECK(memmem(req.rxhdrs.p, req.rxhdrs.len, "X-E: 1e+15\r\n", 12) != NULL);
    mg_lua_ffi_id_free(id);
    CHECK_INT(mg_lua_ffi_req_set_header(id, 0, "X-A", 3, "1", 1), -2);
    free(req.xhdrs.p);
    free(req.rxhdrs.p);
    memset(&req.xhdrs, 0, sizeof(req.xhdrs));
    memset(&req.rxhdrs, 0, sizeof(req.rxhdrs));
}

static void url_escapes(void) {
    char out[64];
    long n;
    CHECK_INT(mg_lua_ffi_unescape("plain", 5, out), -1);
    n = mg_lua_ffi_unescape("a+b%20c%2Bd%zz%4", 16, out);
    CHECK_INT(n, 12);
    CHECK(memcmp(out, "a b c+d%zz%4", 12) == 0);
    n = mg_lua_ffi_unescape("%%41", 4, out);
    CHECK_INT(n, 2);
    CHECK(memcmp(out, "%A", 2) == 0);
    CHECK_INT(mg_lua_ffi_escape("Az09-._~", 8, out), -1);
    n = mg_lua_ffi_escape("a b/\xff", 5, out);
    CHECK_INT(n, 11);
    CHECK(memcmp(out, "a%20b%2F%FF", 11) == 0);
}

int main(void) {
    CT_RUN(ids);
    CT_RUN(one_header);
    CT_RUN(all_headers);
    CT_RUN(query);
    CT_RUN(set_headers);
    CT_RUN(url_escapes);
    return ct_end();
}
