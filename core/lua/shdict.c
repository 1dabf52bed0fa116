/*
 * shdict.c -- shared dictionaries: key/value tables in one shared memory
 * mapping made by the master before it forks, so every worker (and a
 * worker restarted later) sees the same counters; this is what makes a
 * rate limit hold across workers.
 *
 * Layout: per dictionary a header (a spinlock, counts) and fixed 256-byte
 * slots in an open-addressing table (FNV-1a, linear probing). Keys and
 * values share a slot (at most MG_SHD_DATA bytes together): big values do
 * not belong here. Expired entries are reused in place; when live entries
 * would pass 3/4 of the slots, set/add fail with "no memory" (a clear error
 * rather than silent eviction). Every operation is O(1) expected, under the
 * dictionary's lock, and never blocks on I/O.
 *
 * Sizes come from the conf at startup; a reload cannot resize or add one.
 */
#include "lua/lua.h"

#include <lauxlib.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MG_SHD_SLOT 256
#define MG_SHD_DATA (MG_SHD_SLOT - 24)
#define MG_SHD_MT "moongate.shdict"

enum { MG_SHD_EMPTY, MG_SHD_STR, MG_SHD_NUM, MG_SHD_BUCKET, MG_SHD_DEAD };

typedef struct {
    double expires; /* mg_now() seconds; 0 = never */
    uint32_t hash;
    uint8_t type;
    uint8_t klen;
    uint16_t vlen;
    uint32_t pad;
    char data[MG_SHD_DATA]; /* key, then value */
} mg_shd_slot_t;

typedef struct {
    char name[32];
    volatile int lock;
    uint32_t nslots;
    uint32_t live; /* slots holding a key (possibly expired) */
    uint32_t pad;
} mg_shd_hdr_t;

/* memo: this worker's own (the struct is copied at fork, the slots are
 * shared): where take() last found a key, by the key's address (index + 1,
 * 0 none); see mg_shd_place_memo */
#define MG_SHD_MEMO 64

typedef struct {
    mg_shd_hdr_t *h;
    mg_shd_slot_t *slots;
    uint32_t memo[MG_SHD_MEMO];
} mg_shd_t;

static mg_shd_t mg_shds[64];
static int mg_nshd;

static void mg_shd_lock(mg_shd_hdr_t *h) {
    while (__atomic_exchange_n(&h->lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static void mg_shd_unlock(mg_shd_hdr_t *h) { __atomic_store_n(&h->lock, 0, __ATOMIC_RELEASE); }

int mg_shdict_create(const char *name, size_t size) {
    size_t n = size / MG_SHD_SLOT;
    void *mem;
    mg_shd_t *d;
    if (mg_nshd == 64 || n < 16)
        return MG_ERR;
    mem = mmap(NULL, sizeof(mg_shd_hdr_t) + n * MG_SHD_SLOT, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return MG_ERR;
    d = &mg_shds[mg_nshd++];
    d->h = mem;
    d->slots = (mg_shd_slot_t *)((char *)mem + sizeof(mg_shd_hdr_t));
    snprintf(d->h->name, sizeof(d->h->name), "%s", name);
    d->h->nslots = (uint32_t)n;
    return MG_OK;
}

static mg_shd_t *mg_shd_find(const char *name) {
    for (int i = 0; i < mg_nshd; i++)
        if (strcmp(mg_shds[i].h->name, name) == 0)
            return &mg_shds[i];
    return NULL;
}

/* Eight bytes a step (rate-limit's keys are 30-100 bytes, hashed on every
 * take): each word mixed in by a multiply, the tail's bytes as one more
 * word, the length in the seed. Only this binary's workers share a table
 * (the master maps it afresh at start), so the function is free to change.
 * Never 0. */
static uint32_t mg_shd_hash(const char *k, size_t n) {
    const uint64_t m = 0x9e3779b97f4a7c15ull;
    uint64_t h = 0xcbf29ce484222325ull ^ (n * m), w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, k + i, 8);
        h = (h ^ w) * m;
        h ^= h >> 29;
    }
    if (i < n) {
        w = 0;
        for (size_t j = 0; i + j < n; j++)
            w |= (uint64_t)(uint8_t)k[i + j] << (8 * j);
        h = (h ^ w) * m;
    }
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    return (uint32_t)h ? (uint32_t)h : 1;
}

static int mg_shd_expired(mg_shd_slot_t *s, double now) {
    return s->expires > 0 && s->expires <= now;
}

/* The slot holding key (live or expired), or NULL; *free_slot gets the
 * first reusable slot seen (empty, dead or expired). Under the lock. */
static mg_shd_slot_t *mg_shd_lookup(mg_shd_t *d, const char *k, size_t kl, uint32_t hash,
                                    double now, mg_shd_slot_t **free_slot) {
    uint32_t n = d->h->nslots, i = hash % n;
    *free_slot = NULL;
    for (uint32_t probes = 0; probes < n; probes++, i = (i + 1) % n) {
        mg_shd_slot_t *s = &d->slots[i];
        if (s->type == MG_SHD_EMPTY) {
            if (*free_slot == NULL)
                *free_slot = s;
            return NULL;
        }
        if (s->type == MG_SHD_DEAD) {
            if (*free_slot == NULL)
                *free_slot = s;
            continue;
        }
        if (s->hash == hash && s->klen == kl && memcmp(s->data, k, kl) == 0)
            return s;
        if (mg_shd_expired(s, now) && *free_slot == NULL)
            *free_slot = s;
    }
    return NULL;
}

static void mg_shd_kill(mg_shd_t *d, mg_shd_slot_t *s) {
    s->type = MG_SHD_DEAD;
    d->h->live--;
}

/* A slot to write key into: the key's own, or a free one within the load
 * limit. NULL when full. */
static mg_shd_slot_t *mg_shd_place(mg_shd_t *d, const char *k, size_t kl, uint32_t hash, double now,
                                   int *existed) {
    mg_shd_slot_t *fs, *s = mg_shd_lookup(d, k, kl, hash, now, &fs);
    *existed = s != NULL && !mg_shd_expired(s, now);
    if (s)
        return s;
    if (fs == NULL)
        return NULL;
    if (fs->type == MG_SHD_EMPTY || fs->type == MG_SHD_DEAD) {
        if ((d->h->live + 1) * 4 > d->h->nslots * 3)
            return NULL;
        d->h->live++;
    }
    fs->hash = hash;
    fs->klen = (uint8_t)kl;
    memcpy(fs->data, k, kl);
    return fs;
}

/* mg_shd_place for a caller that passes the same key string again and
 * again (rate-limit's bucket keys are kept Lua strings, at the same
 * address while they live): the slot the memo gives for k's address, when
 * it holds k (a key is in one slot that is neither empty nor dead: the
 * one lookup finds), skips the hash and the probe. Any other address or
 * content (a reused address, a slot another worker killed or gave to
 * another key) goes the usual way and is remembered. Under the lock. */
static mg_shd_slot_t *mg_shd_place_memo(mg_shd_t *d, const char *k, size_t kl, double now,
                                        int *existed) {
    uint32_t *m = &d->memo[((uintptr_t)k >> 4) % MG_SHD_MEMO];
    mg_shd_slot_t *s;
    if (*m != 0) {
        s = &d->slots[*m - 1];
        if (s->klen == kl && s->type != MG_SHD_EMPTY && s->type != MG_SHD_DEAD &&
            memcmp(s->data, k, kl) == 0) {
            *existed = !mg_shd_expired(s, now);
            return s;
        }
    }
    s = mg_shd_place(d, k, kl, mg_shd_hash(k, kl), now, existed);
    if (s != NULL)
        *m = (uint32_t)(s - d->slots) + 1;
    return s;
}

/* ---- Lua API: d:get(k), d:set(k, v, ttl), d:add(k, v, ttl), d:incr(k, n,
 * init, ttl), d:delete(k), d:take(k, rate, burst, cost) ---- */

static mg_shd_t *mg_shd_check(lua_State *L, const char **k, size_t *kl) {
    mg_shd_t *d = *(mg_shd_t **)luaL_checkudata(L, 1, MG_SHD_MT);
    *k = luaL_checklstring(L, 2, kl);
    if (*kl == 0 || *kl > 200)
        luaL_error(L, "shared dict: key length must be 1 to 200 bytes");
    return d;
}

static void mg_shd_push(lua_State *L, mg_shd_slot_t *s) {
    if (s->type == MG_SHD_NUM) {
        double v;
        memcpy(&v, s->data + s->klen, sizeof(v));
        lua_pushnumber(L, v);
    } else {
        lua_pushlstring(L, s->data + s->klen, s->vlen);
    }
}

static int mg_shd_get(lua_State *L) {
    const char *k;
    size_t kl;
    mg_shd_t *d = mg_shd_check(L, &k, &kl);
    mg_shd_slot_t *fs, *s;
    double now = mg_now();
    mg_shd_lock(d->h);
    s = mg_shd_lookup(d, k, kl, mg_shd_hash(k, kl), now, &fs);
    if (s && !mg_shd_expired(s, now) && s->type != MG_SHD_BUCKET)
        mg_shd_push(L, s);
    else
        lua_pushnil(L);
    mg_shd_unlock(d->h);
    return 1;
}

static int mg_shd_store(lua_State *L, int only_new) {
    const char *k, *v = NULL;
    size_t kl, vl = 0;
    mg_shd_t *d = mg_shd_check(L, &k, &kl);
    double num = 0, ttl = luaL_optnumber(L, 4, 0), now = mg_now();
    int type, existed;
    mg_shd_slot_t *s;

    if (lua_type(L, 3) == LUA_TNUMBER) {
        type = MG_SHD_NUM;
        num = lua_tonumber(L, 3);
        vl = sizeof(double);
    } else if (lua_type(L, 3) == LUA_TSTRING) {
        type = MG_SHD_STR;
        v = lua_tolstring(L, 3, &vl);
    } else {
        return luaL_error(L, "shared dict: values are strings or numbers");
    }
    if (kl + vl > MG_SHD_DATA) {
        lua_pushnil(L);
        lua_pushliteral(L, "too large");
        return 2;
    }
    mg_shd_lock(d->h);
    s = mg_shd_place(d, k, kl, mg_shd_hash(k, kl), now, &existed);
    if (s == NULL || (only_new && existed)) {
        mg_shd_unlock(d->h);
        lua_pushnil(L);
        if (s == NULL)
            lua_pushliteral(L, "no memory");
        else
            lua_pushliteral(L, "exists");
        return 2;
    }
    s->type = (uint8_t)type;
    s->vlen = (uint16_t)vl;
    s->expires = ttl > 0 ? now + ttl : 0;
    if (type == MG_SHD_NUM)
        memcpy(s->data + kl, &num, sizeof(num));
    else
        memcpy(s->data + kl, v, vl);
    mg_shd_unlock(d->h);
    lua_pushboolean(L, 1);
    return 1;
}

static int mg_shd_set(lua_State *L) { return mg_shd_store(L, 0); }

static int mg_shd_add(lua_State *L) { return mg_shd_store(L, 1); }

static int mg_shd_incr(lua_State *L) {
    const char *k;
    size_t kl;
    mg_shd_t *d = mg_shd_check(L, &k, &kl);
    double by = luaL_optnumber(L, 3, 1), init = luaL_optnumber(L, 4, 0);
    double ttl = luaL_optnumber(L, 5, 0), now = mg_now(), v;
    int existed;
    mg_shd_slot_t *s;

    mg_shd_lock(d->h);
    s = mg_shd_place(d, k, kl, mg_shd_hash(k, kl), now, &existed);
    if (s == NULL || (existed && s->type != MG_SHD_NUM)) {
        mg_shd_unlock(d->h);
        lua_pushnil(L);
        if (s == NULL)
            lua_pushliteral(L, "no memory");
        else
            lua_pushliteral(L, "not a number");
        return 2;
    }
    if (existed) {
        memcpy(&v, s->data + kl, sizeof(v));
    } else {
        v = init;
        s->type = MG_SHD_NUM;
        s->vlen = sizeof(double);
        s->expires = ttl > 0 ? now + ttl : 0;
    }
    v += by;
    memcpy(s->data + kl, &v, sizeof(v));
    mg_shd_unlock(d->h);
    lua_pushnumber(L, v);
    return 1;
}

static int mg_shd_delete(lua_State *L) {
    const char *k;
    size_t kl;
    mg_shd_t *d = mg_shd_check(L, &k, &kl);
    mg_shd_slot_t *fs, *s;
    mg_shd_lock(d->h);
    s = mg_shd_lookup(d, k, kl, mg_shd_hash(k, kl), mg_now(), &fs);
    if (s)
        mg_shd_kill(d, s);
    mg_shd_unlock(d->h);
    lua_pushboolean(L, 1);
    return 1;
}

/* The bucket of k in d: 1 allowed, 0 not (out: the tokens left, floored,
 * and the seconds until cost tokens are there), -1 no memory. */
static int mg_shd_take_bucket(mg_shd_t *d, const char *k, size_t kl, double rate, double burst,
                              double cost, double *out) {
    double now = mg_now(), b[2];
    int existed, allowed;
    mg_shd_slot_t *s;

    mg_shd_lock(d->h);
    s = mg_shd_place_memo(d, k, kl, now, &existed);
    if (s == NULL) {
        mg_shd_unlock(d->h);
        return -1;
    }
    if (existed && s->type == MG_SHD_BUCKET) {
        memcpy(b, s->data + kl, sizeof(b));
        b[0] = fmin(burst, b[0] + (now - b[1]) * rate);
    } else {
        b[0] = burst;
        s->type = MG_SHD_BUCKET;
        s->vlen = sizeof(b);
    }
    b[1] = now;
    allowed = b[0] >= cost;
    if (allowed)
        b[0] -= cost;
    /* an idle bucket is full again after burst/rate seconds: forget it then */
    s->expires = now + burst / rate + 1;
    memcpy(s->data + kl, b, sizeof(b));
    mg_shd_unlock(d->h);
    out[0] = floor(b[0]);
    out[1] = allowed ? 0 : (cost - b[0]) / rate;
    return allowed;
}

/* take(k, rate, burst, cost): a token bucket refilled at `rate` tokens per
 * second up to `burst`. Returns allowed, remaining, retry_after (s).
 * init.lua replaces it with its FFI twin below; this one serves plain
 * C callers of the metatable. */
static int mg_shd_take(lua_State *L) {
    const char *k;
    size_t kl;
    mg_shd_t *d = mg_shd_check(L, &k, &kl);
    double rate = luaL_checknumber(L, 3), burst = luaL_checknumber(L, 4);
    double cost = luaL_optnumber(L, 5, 1), out[2];
    int allowed;

    if (rate <= 0 || burst <= 0)
        return luaL_error(L, "shared dict take: rate and burst must be positive");
    allowed = mg_shd_take_bucket(d, k, kl, rate, burst, cost, out);
    if (allowed < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "no memory");
        return 2;
    }
    lua_pushboolean(L, allowed);
    lua_pushnumber(L, out[0]);
    lua_pushnumber(L, out[1]);
    return 3;
}

/* d:take() through the FFI (init.lua): ud is the dictionary's userdata
 * (its payload), k checked by the caller (1 to 200 bytes). 1 allowed, 0
 * not, -1 no memory, -2 rate or burst not positive. */
int mg_lua_ffi_shdict_take(void *ud, const char *k, size_t kl, double rate, double burst,
                           double cost, double *out) {
    if (!(rate > 0) || !(burst > 0))
        return -2;
    return mg_shd_take_bucket(*(mg_shd_t **)ud, k, kl, rate, burst, cost, out);
}

/* core.shdict(name) -> the dictionary, or nil when the conf has none. */
static int mg_shd_open(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    mg_shd_t *d = mg_shd_find(name), **ud;
    if (d == NULL) {
        lua_pushnil(L);
        return 1;
    }
    ud = lua_newuserdata(L, sizeof(*ud));
    *ud = d;
    luaL_getmetatable(L, MG_SHD_MT);
    lua_setmetatable(L, -2);
    return 1;
}

void mg_shdict_open_api(lua_State *L) {
    static const luaL_Reg m[] = {
        {"get", mg_shd_get},   {"set", mg_shd_set},       {"add", mg_shd_add},
        {"incr", mg_shd_incr}, {"delete", mg_shd_delete}, {"take", mg_shd_take},
        {NULL, NULL},
    };
    luaL_newmetatable(L, MG_SHD_MT);
    luaL_register(L, NULL, m);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, mg_shd_open); /* leaves the opener on the stack */
}

/* For C readers (the ACME http-01 responder): a string value, copied. */
ssize_t mg_shdict_get_str(const char *name, const char *k, size_t kl, char *out, size_t cap) {
    mg_shd_t *d = mg_shd_find(name);
    mg_shd_slot_t *fs, *s;
    double now = mg_now();
    ssize_t n = -1;
    if (d == NULL || kl == 0 || kl > 200)
        return -1;
    mg_shd_lock(d->h);
    s = mg_shd_lookup(d, k, kl, mg_shd_hash(k, kl), now, &fs);
    if (s && !mg_shd_expired(s, now) && s->type == MG_SHD_STR && s->vlen <= cap) {
        memcpy(out, s->data + s->klen, s->vlen);
        n = s->vlen;
    }
    mg_shd_unlock(d->h);
    return n;
}

/* Bytes of each shared dict: used (slots holding a key, expired ones
 * included until reused) and free; read at scrape time. */
void mg_shdict_metrics(struct evbuffer *out) {
    evbuffer_add_printf(out, "# HELP moongate_shdict_used_bytes Bytes of a shared dict holding "
                             "keys.\n# TYPE moongate_shdict_used_bytes gauge\n");
    for (int i = 0; i < mg_nshd; i++)
        evbuffer_add_printf(out, "moongate_shdict_used_bytes{dict=\"%s\"} %llu\n",
                            mg_shds[i].h->name,
                            (unsigned long long)mg_shds[i].h->live * MG_SHD_SLOT);
    evbuffer_add_printf(out, "# HELP moongate_shdict_free_bytes Bytes of a shared dict still "
                             "free.\n# TYPE moongate_shdict_free_bytes gauge\n");
    for (int i = 0; i < mg_nshd; i++)
        evbuffer_add_printf(
            out, "moongate_shdict_free_bytes{dict=\"%s\"} %llu\n", mg_shds[i].h->name,
            (unsigned long long)(mg_shds[i].h->nslots - mg_shds[i].h->live) * MG_SHD_SLOT);
}
