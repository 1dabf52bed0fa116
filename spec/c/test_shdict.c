/*
 * test_shdict.c -- the shared dict's take(): the token bucket, and the
 * per-worker memo of where a key's slot is (by the key's address) giving
 * the same answers as the hash and probe: the same key at other addresses,
 * other keys at the same address, slots deleted and given to other keys,
 * more keys than the memo has entries.
 */
#include "ct.h"
#include "lua/lua.h"

#include <event2/buffer.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>

int mg_lua_ffi_shdict_take(void *ud, const char *k, size_t kl, double rate, double burst,
                           double cost, double *out);

static lua_State *L;
static void *small, *big; /* the dicts' userdata payloads */

#define SLOW 1e-9 /* tokens per second: no refill while a case runs */

static void *open_dict(const char *name) {
    void *ud;
    lua_pushvalue(L, 1); /* core.shdict */
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    ud = lua_touserdata(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, name); /* kept alive */
    return ud;
}

/* d:<op>(k [, v]) through the dict's Lua API; leaves the first result */
static void dict_op(const char *name, const char *op, const char *k, const char *v) {
    lua_getfield(L, LUA_REGISTRYINDEX, name);
    lua_getfield(L, -1, op);
    lua_insert(L, -2);
    lua_pushstring(L, k);
    if (v)
        lua_pushstring(L, v);
    lua_call(L, v ? 3 : 2, 1);
}

static int take(void *d, const char *k, double burst, double *left) {
    double out[2];
    int rc = mg_lua_ffi_shdict_take(d, k, strlen(k), SLOW, burst, 1, out);
    if (left)
        *left = out[0];
    return rc;
}

static void bucket(void) {
    double left;
    CHECK_INT(take(big, "bucket-a", 3, &left), 1);
    CHECK_INT((long long)left, 2);
    CHECK_INT(take(big, "bucket-a", 3, &left), 1);
    CHECK_INT(take(big, "bucket-a", 3, &left), 1);
    CHECK_INT((long long)left, 0);
    CHECK_INT(take(big, "bucket-a", 3, &left), 0);
    CHECK_INT(take(big, "bucket-b", 3, &left), 1); /* another key, its own bucket */
    CHECK_INT((long long)left, 2);
    CHECK_INT(mg_lua_ffi_shdict_take(big, "x", 1, 0, 3, 1, &left), -2);
}

/* one key written at several addresses: one bucket */
static void same_key_other_address(void) {
    char a[32], b[64];
    snprintf(a, sizeof(a), "same-key");
    snprintf(b + 17, sizeof(b) - 17, "same-key");
    CHECK_INT(take(big, a, 3, NULL), 1);
    CHECK_INT(take(big, b + 17, 3, NULL), 1);
    CHECK_INT(take(big, a, 3, NULL), 1);
    CHECK_INT(take(big, b + 17, 3, NULL), 0);
    CHECK_INT(take(big, a, 3, NULL), 0);
}

/* other keys at one address: their own buckets */
static void other_key_same_address(void) {
    char buf[32];
    snprintf(buf, sizeof(buf), "addr-k1");
    CHECK_INT(take(big, buf, 2, NULL), 1);
    CHECK_INT(take(big, buf, 2, NULL), 1);
    CHECK_INT(take(big, buf, 2, NULL), 0);
    snprintf(buf, sizeof(buf), "addr-k2");
    CHECK_INT(take(big, buf, 2, NULL), 1);
    snprintf(buf, sizeof(buf), "addr-k1x"); /* longer, same prefix */
    CHECK_INT(take(big, buf, 2, NULL), 1);
    snprintf(buf, sizeof(buf), "addr-k"); /* shorter */
    CHECK_INT(take(big, buf, 2, NULL), 1);
    snprintf(buf, sizeof(buf), "addr-k1");
    CHECK_INT(take(big, buf, 2, NULL), 0); /* still empty */
    snprintf(buf, sizeof(buf), "addr-k2");
    CHECK_INT(take(big, buf, 2, NULL), 1);
    CHECK_INT(take(big, buf, 2, NULL), 0);
}

/* the used bytes mg_shdict_metrics reports for dict t_small */
static long long small_used(void) {
    struct evbuffer *b = evbuffer_new();
    size_t n;
    char *text, *at;
    long long used = -1;
    mg_shdict_metrics(b);
    n = evbuffer_get_length(b);
    text = calloc(1, n + 1);
    evbuffer_remove(b, text, n);
    at = strstr(text, "moongate_shdict_used_bytes{dict=\"t_small\"} ");
    if (at)
        used = atoll(at + strlen("moongate_shdict_used_bytes{dict=\"t_small\"} "));
    free(text);
    evbuffer_free(b);
    return used;
}

/* the memo's slot deleted, then given to other keys (as another worker
 * would): the key gets a fresh bucket, the others keep their values */
static void slot_deleted_and_reused(void) {
    char k[32], v[16], got[16]; /* room for any two ints: -Wformat-truncation at -O1 */
    int i, reused_ok = 1;
    for (int round = 0; round < 20; round++) {
        CHECK_INT(take(small, "victim", 2, NULL), 1);
        CHECK_INT(take(small, "victim", 2, NULL), 1);
        CHECK_INT(take(small, "victim", 2, NULL), 0);
        dict_op("t_small", "delete", "victim", NULL);
        lua_pop(L, 1);
        /* 16 slots, up to 12 live: these take the dead slot or others */
        for (i = 0; i < 10; i++) {
            snprintf(k, sizeof(k), "o%d-%d", round, i);
            snprintf(v, sizeof(v), "v%d", i);
            dict_op("t_small", "set", k, v);
            lua_pop(L, 1);
        }
        CHECK_INT(take(small, "victim", 2, NULL), 1); /* a new bucket */
        for (i = 0; i < 10; i++) {
            ssize_t n;
            snprintf(k, sizeof(k), "o%d-%d", round, i);
            snprintf(v, sizeof(v), "v%d", i);
            n = mg_shdict_get_str("t_small", k, strlen(k), got, sizeof(got));
            if (n != (ssize_t)strlen(v) || memcmp(got, v, (size_t)n) != 0)
                reused_ok = 0;
            dict_op("t_small", "delete", k, NULL);
            lua_pop(L, 1);
        }
        dict_op("t_small", "delete", "victim", NULL);
        lua_pop(L, 1);
        if (small_used() != 0) /* every slot's count given back */
            reused_ok = 0;
    }
    CHECK(reused_ok);
}

/* 300 keys (more than the memo's entries, so addresses share them), taken
 * in a shuffled order from two copies each: every key's bucket counts its
 * own takes, as a plain model says */
static void many_keys(void) {
    enum { NK = 300, BURST = 4, ROUNDS = 6 };
    static char copies[2][NK][24];
    int taken[NK] = {0}, bad = 0;
    unsigned rng = 12345;
    for (int i = 0; i < NK; i++) {
        snprintf(copies[0][i], sizeof(copies[0][i]), "many|%d", i);
        memcpy(copies[1][i], copies[0][i], sizeof(copies[0][i]));
    }
    for (int n = 0; n < NK * ROUNDS; n++) {
        int i, c, want, got;
        rng = rng * 1103515245u + 12345u;
        i = (int)((rng >> 8) % NK);
        c = (int)((rng >> 4) & 1);
        want = taken[i] < BURST;
        got = take(big, copies[c][i], BURST, NULL);
        if (got != want)
            bad++;
        if (want)
            taken[i]++;
    }
    CHECK_INT(bad, 0);
}

/* the classic Lua take (mg_shd_take) shares the buckets */
static void lua_take(void) {
    CHECK_INT(take(big, "lua-k", 2, NULL), 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "t_big");
    lua_getfield(L, -1, "take");
    lua_insert(L, -2);
    lua_pushliteral(L, "lua-k");
    lua_pushnumber(L, SLOW);
    lua_pushnumber(L, 2);
    lua_call(L, 4, 3);
    CHECK_INT(lua_toboolean(L, -3), 1);
    CHECK_INT((long long)lua_tonumber(L, -2), 0);
    lua_pop(L, 3);
    CHECK_INT(take(big, "lua-k", 2, NULL), 0);
}

int main(void) {
    if (mg_shdict_create("t_small", 16 * 256) != MG_OK ||
        mg_shdict_create("t_big", 1024 * 256) != MG_OK) {
        printf("FAIL - cannot map the dicts\nct: 0 passed, 1 failed\n");
        return 1;
    }
    L = luaL_newstate();
    luaL_openlibs(L);
    mg_shdict_open_api(L); /* core.shdict at index 1 */
    small = open_dict("t_small");
    big = open_dict("t_big");
    CT_RUN(bucket);
    CT_RUN(same_key_other_address);
    CT_RUN(other_key_same_address);
    CT_RUN(slot_deleted_and_reused);
    CT_RUN(many_keys);
    CT_RUN(lua_take);
    lua_close(L);
    return ct_end();
}
