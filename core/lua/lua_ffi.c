/*
 * lua_ffi.c -- the hot part of the request and response API as plain C
 * functions, which lib/moongate/init.lua declares with ffi.cdef and calls
 * through ffi.C (the binary links with -Wl,-E, so they are visible), as
 * lua-resty-core does for OpenResty: a call through the FFI compiles into
 * the caller's trace, a classic lua_CFunction stops it (a stitch).
 *
 * None of them raises: they return a code and init.lua raises the same
 * errors as the classic functions did. Strings go out as (pointer,
 * length) slices into the request head, or into one scratch buffer of
 * this worker that is valid until the next call (init.lua copies it at
 * once with ffi.string).
 *
 * A request reaches Lua as a number, its id, in its req table (under
 * core.req_key): a slot of this worker's table of requests and the
 * slot's generation. Every function here looks the slot up and checks the
 * generation first, so an id kept past its request (a req table in a
 * timer, a copied number) never reaches a freed or reused request: it
 * gets MG_FFI_OVER and init.lua raises "the request is over". The table's
 * entry itself turns false when the request ends (mg_lua_req_unlink).
 * The slot's number also anchors the req table (lua_api.c: the
 * generation's "moongate.reqs" table, at slot + 1) until the request
 * ends, even once its ids are closed (mg_lua_ffi_id_detach).
 */
#include "lua/lua_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What init.lua's cdef says; kept in step with it. */
struct mg_lua_ffi_str_s {
    const char *p;
    size_t n;
};

/* The worker's scratch buffer: joined repeated headers, lower-cased names. */
static char *mg_ffi_buf;
static size_t mg_ffi_cap;

static char *mg_ffi_scratch(size_t n) {
    if (n > mg_ffi_cap) {
        size_t cap = n < 1024 ? 1024 : n;
        char *p = realloc(mg_ffi_buf, cap);
        if (p == NULL)
            return NULL;
        mg_ffi_buf = p;
        mg_ffi_cap = cap;
    }
    return mg_ffi_buf;
}

/* ---- request ids ---- */

#define MG_FFI_SLOT_BITS 32
#define MG_FFI_GEN_MASK ((1u << 21) - 1) /* an id stays below 2^53, exact in a double */

typedef struct {
    mg_req_t *r; /* NULL: free */
    uint32_t gen;
    uint32_t next_free;
} mg_ffi_slot_t;

static mg_ffi_slot_t *mg_ffi_slots;
static uint32_t mg_ffi_nslots, mg_ffi_free = UINT32_MAX;

int64_t mg_lua_ffi_id_new(mg_req_t *r) {
    uint32_t i = mg_ffi_free;
    if (i == UINT32_MAX) {
        uint32_t n = mg_ffi_nslots ? mg_ffi_nslots * 2 : 256;
        mg_ffi_slot_t *s;
        if (n > (1u << 24) || (s = realloc(mg_ffi_slots, n * sizeof(*s))) == NULL)
            return -1;
        for (uint32_t j = mg_ffi_nslots; j < n; j++) {
            s[j].r = NULL;
            s[j].gen = 1;
            s[j].next_free = j + 1 < n ? j + 1 : UINT32_MAX;
        }
        mg_ffi_slots = s;
        mg_ffi_free = i = mg_ffi_nslots;
        mg_ffi_nslots = n;
    }
    mg_ffi_free = mg_ffi_slots[i].next_free;
    mg_ffi_slots[i].r = r;
    return ((int64_t)mg_ffi_slots[i].gen << MG_FFI_SLOT_BITS) | i;
}

/* The slot's ids reach nothing from now on (r may go); the slot itself
 * stays taken, anchoring the req table, until mg_lua_ffi_slot_free. */
static void mg_lua_ffi_slot_close(uint32_t i) {
    mg_ffi_slots[i].r = NULL;
    mg_ffi_slots[i].gen = (mg_ffi_slots[i].gen + 1) & MG_FFI_GEN_MASK;
    if (mg_ffi_slots[i].gen == 0)
        mg_ffi_slots[i].gen = 1;
}

void mg_lua_ffi_id_detach(int64_t id) {
    uint32_t i = (uint32_t)(id & 0xffffffffu);
    if (id < 0 || i >= mg_ffi_nslots || mg_ffi_slots[i].r == NULL ||
        mg_ffi_slots[i].gen != (uint32_t)(id >> MG_FFI_SLOT_BITS))
        return;
    mg_lua_ffi_slot_close(i);
}

void mg_lua_ffi_id_free(int64_t id) {
    uint32_t i = (uint32_t)(id & 0xffffffffu);
    if (id < 0 || i >= mg_ffi_nslots || mg_ffi_slots[i].r == NULL ||
        mg_ffi_slots[i].gen != (uint32_t)(id >> MG_FFI_SLOT_BITS))
        return;
    mg_lua_ffi_slot_free(i);
}

void mg_lua_ffi_slot_free(uint32_t i) {
    if (i >= mg_ffi_nslots)
        return;
    if (mg_ffi_slots[i].r != NULL)
        mg_lua_ffi_slot_close(i);
    mg_ffi_slots[i].next_free = mg_ffi_free;
    mg_ffi_free = i;
}

int64_t mg_lua_ffi_slot_id(uint32_t i) {
    if (i >= mg_ffi_nslots || mg_ffi_slots[i].r == NULL)
        return -1;
    return ((int64_t)mg_ffi_slots[i].gen << MG_FFI_SLOT_BITS) | i;
}

/* The live request of id, or NULL. */
mg_req_t *mg_lua_ffi_req(int64_t id) {
    uint32_t i = (uint32_t)(id & 0xffffffffu);
    if (id < 0 || i >= mg_ffi_nslots || mg_ffi_slots[i].gen != (uint32_t)(id >> MG_FFI_SLOT_BITS))
        return NULL;
    return mg_ffi_slots[i].r;
}

/* ---- the request ---- */

#define MG_FFI_OVER (-2) /* the id's request is gone */

/* The client's header `name` (any case): 1 and *out (repeated lines joined
 * with ", "), 0 when absent, -1 out of memory, MG_FFI_OVER. */
int mg_lua_ffi_req_header(int64_t id, const char *name, size_t nl, mg_lua_ffi_str_t *out) {
    mg_req_t *r = mg_lua_ffi_req(id);
    int first = -1, count = 0;
    size_t total = 0, at = 0;
    char *b;

    if (r == NULL)
        return MG_FFI_OVER;
    for (int i = 0; i < r->nhdrs; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        if (!mg_name_eq(r->hbuf + h->noff, h->nlen, name, nl))
            continue;
        if (first < 0)
            first = i;
        total += h->vlen + (count ? 2 : 0);
        count++;
    }
    if (count == 0)
        return 0;
    if (count == 1) { /* the usual case: no copy */
        out->p = r->hbuf + r->hdrs[first].voff;
        out->n = r->hdrs[first].vlen;
        return 1;
    }
    if ((b = mg_ffi_scratch(total)) == NULL)
        return -1;
    for (int i = first; i < r->nhdrs; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        if (!mg_name_eq(r->hbuf + h->noff, h->nlen, name, nl))
            continue;
        if (at) {
            memcpy(b + at, ", ", 2);
            at += 2;
        }
        memcpy(b + at, r->hbuf + h->voff, h->vlen);
        at += h->vlen;
    }
    out->p = b;
    out->n = at;
    return 1;
}

/* Every header line into out[0..n) with its name lower-cased (in the
 * scratch buffer): n; or -n when cap is smaller than n (call again with
 * room for n); or 0 with *oom set: 1 out of memory, MG_FFI_OVER. */
int mg_lua_ffi_req_headers(int64_t id, mg_kv_t *out, int cap, int *oom) {
    mg_req_t *r = mg_lua_ffi_req(id);
    size_t names = 0, at = 0;
    char *b;

    *oom = 0;
    if (r == NULL) {
        *oom = MG_FFI_OVER;
        return 0;
    }
    if (r->nhdrs > cap)
        return -r->nhdrs;
    for (int i = 0; i < r->nhdrs; i++)
        names += r->hdrs[i].nlen;
    if ((b = mg_ffi_scratch(names ? names : 1)) == NULL) {
        *oom = 1;
        return 0;
    }
    for (int i = 0; i < r->nhdrs; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        const char *s = r->hbuf + h->noff;
        for (uint32_t j = 0; j < h->nlen; j++)
            b[at + j] = (s[j] >= 'A' && s[j] <= 'Z') ? s[j] + 32 : s[j];
        out[i].name = b + at;
        out[i].nlen = h->nlen;
        out[i].value = r->hbuf + h->voff;
        out[i].vlen = h->vlen;
        at += h->nlen;
    }
    return r->nhdrs;
}

/* The route's path parameters into out[0..n) (at most cap): n, or
 * MG_FFI_OVER. */
int mg_lua_ffi_req_params(int64_t id, mg_kv_t *out, int cap) {
    mg_req_t *r = mg_lua_ffi_req(id);
    int np = cap < MG_ROUTE_MAX_SEGS ? cap : MG_ROUTE_MAX_SEGS;

    if (r == NULL)
        return MG_FFI_OVER;
    if (!r->route->has_params)
        return 0;
    /* the route is known: its segments against the path, no second walk */
    return mg_route_params_of(r->route, r->hbuf, r->path_len, out, &np);
}

/* The query string (after '?'; empty when none) into *out: 0, or
 * MG_FFI_OVER. */
int mg_lua_ffi_req_query(int64_t id, mg_lua_ffi_str_t *out) {
    mg_req_t *r = mg_lua_ffi_req(id);
    if (r == NULL)
        return MG_FFI_OVER;
    if (r->url_len > r->path_len) {
        out->p = r->hbuf + r->path_len + 1;
        out->n = r->url_len - r->path_len - 1;
    } else {
        out->p = r->hbuf;
        out->n = 0;
    }
    return 0;
}

/* The request id and the client's address (NULL: MG_FFI_OVER). */
const char *mg_lua_ffi_req_id(int64_t id) {
    mg_req_t *r = mg_lua_ffi_req(id);
    return r ? r->request_id : NULL;
}

const char *mg_lua_ffi_req_remote_addr(int64_t id) {
    mg_req_t *r = mg_lua_ffi_req(id);
    return r ? mg_req_client_ip(r) : NULL;
}

/* req:set_header() (resp 0: the upstream's copy of the request; v NULL
 * hides the client's header) and req:set_response_header() (resp 1; v
 * NULL undoes an earlier set). id -1: the req table was filled, the
 * request went on (checked after the header). 0 done (or ignored: a
 * hop-by-hop name), 1 bad header, 2 the request went on, 3 out of memory,
 * MG_FFI_OVER.
 * Two flags may be or-ed into resp (init.lua keeps the names that passed,
 * so a plugin's constant names are checked once, not on every request):
 * MG_FFI_NAME_ASK: answer MG_FFI_NAME_GOOD for 0 when the name is a
 * token and not hop-by-hop; MG_FFI_NAME_KNOWN: the name was given that
 * answer before, its checks are skipped (the value's are not). */
#define MG_FFI_NAME_KNOWN 2
#define MG_FFI_NAME_ASK 4
#define MG_FFI_NAME_GOOD 5
int mg_lua_ffi_req_set_header(int64_t id, int resp, const char *n, size_t nl, const char *v,
                              size_t vl) {
    mg_req_t *r = id == -1 ? NULL : mg_lua_ffi_req(id);
    int known = resp & MG_FFI_NAME_KNOWN, ask = resp & MG_FFI_NAME_ASK;
    mg_lines_t *l;

    resp &= 1;
    if (known ? !mg_value_ok(v, v ? vl : 0) : !mg_http_field_ok(n, nl, v, v ? vl : 0))
        return 1;
    if (id == -1)
        return 2;
    if (r == NULL)
        return MG_FFI_OVER;
    if (!known && mg_http_hop_by_hop(n, nl))
        return 0; /* framing stays moongate's */
    l = resp ? &r->rxhdrs : &r->xhdrs;
    if (l->len)
        mg_http_lines_remove(l, n, nl);
    if (v == NULL && resp)
        return ask ? MG_FFI_NAME_GOOD : 0;
    /* "Name:" alone (upstream side): a removal of the client's header */
    if (v ? mg_http_lines_put(l, n, nl, v, vl) != MG_OK
          : (mg_http_lines_add(l, n, nl) != MG_OK || mg_http_lines_add(l, ":\r\n", 3) != MG_OK))
        return 3;
    return ask ? MG_FFI_NAME_GOOD : 0;
}

/* The same with a number, written as the classic API did: an integer
 * without a fraction, else %.14g; no Lua string made for it. */
int mg_lua_ffi_req_set_header_num(int64_t id, int resp, const char *n, size_t nl, double d) {
    char num[32];
    size_t vl;
    if (d == (double)(long long)d && d > -1e15 && d < 1e15) {
        long long v = (long long)d; /* what "%lld" writes, without snprintf */
        vl = 0;
        if (v < 0)
            num[vl++] = '-';
        vl += mg_utoa(num + vl, (uint64_t)(v < 0 ? -v : v));
    } else
        vl = (size_t)snprintf(num, sizeof(num), "%.14g", d);
    return mg_lua_ffi_req_set_header(id, resp, n, nl, num, vl);
}

/* ---- helpers ---- */

static int mg_ffi_hex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* URL-decodes s into out (room for n bytes): '+' is a space, %XX a byte
 * (a '%' not followed by two hex digits stays). Returns the length, or -1
 * when s has neither '+' nor '%' (nothing to decode: out is not written). */
long mg_lua_ffi_unescape(const char *s, size_t n, char *out) {
    size_t o = 0;
    if (memchr(s, '%', n) == NULL && memchr(s, '+', n) == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '+') {
            out[o++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && (hi = mg_ffi_hex(s[i + 1])) >= 0 &&
                   (lo = mg_ffi_hex(s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return (long)o;
}

/* Percent-encodes every byte of s but ALPHA, DIGIT and "-._~" into out
 * (room for 3n bytes). Returns the length, or -1 when nothing needs it. */
long mg_lua_ffi_escape(const char *s, size_t n, char *out) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0, i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_' || c == '~'))
            break;
    }
    if (i == n)
        return -1;
    memcpy(out, s, i);
    o = i;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    return (long)o;
}

double mg_lua_ffi_now(void) { return mg_now(); }

/* ---- the response: res_send ---- */

static struct evbuffer *mg_ffi_head; /* the head being built (one at a time) */
static int mg_ffi_flags;             /* 1: a Content-Type was given, 2: an X-Request-Id */

/* Starts a response head for the running handler: 0, or 1 when not in
 * a handler or timer, 2 in a timer (no request), 3 out of memory, 4 the
 * response has started already (res_send then does nothing). */
int mg_lua_ffi_res_begin(void) {
    mg_co_t *co = mg_lua_co_cur;
    if (co == NULL)
        return 1;
    if (co->req == NULL)
        return 2;
    if (co->req->resp_started)
        return 4;
    if (mg_ffi_head == NULL && (mg_ffi_head = evbuffer_new()) == NULL)
        return 3;
    evbuffer_drain(mg_ffi_head, evbuffer_get_length(mg_ffi_head));
    mg_ffi_flags = 0;
    return 0;
}

/* One header of the table res_send got: 0, or 1 when the name is not a
 * token or the value has a control character. Hop-by-hop names are
 * skipped (framing is moongate's). */
int mg_lua_ffi_res_header(const char *n, size_t nl, const char *v, size_t vl) {
    if (!mg_http_field_ok(n, nl, v, vl))
        return 1;
    if (mg_http_hop_by_hop(n, nl))
        return 0;
    if (MG_NAME_IS(n, nl, "content-type"))
        mg_ffi_flags |= 1;
    if (MG_NAME_IS(n, nl, "x-request-id"))
        mg_ffi_flags |= 2; /* set by the script: ours is not added */
    mg_line_add(mg_ffi_head, n, nl, v, vl);
    return 0;
}

/* Sends the response begun by mg_lua_ffi_res_begin: status (checked by
 * the caller), body, and the default Content-Type ct (NULL: none) when
 * the headers had none and the body is not empty. */
void mg_lua_ffi_res_send(int status, const char *body, size_t blen, const char *ct, size_t ctl) {
    mg_req_t *r = mg_lua_co_cur->req;
    struct evbuffer *h = mg_ffi_head;

    mg_http_lines_merge(h, &r->rxhdrs); /* req:set_response_header() in an access hook */
    if (mg_http_evlines_have(h, "content-type", 12))
        mg_ffi_flags |= 1;
    if (!(mg_ffi_flags & 1) && ct && blen)
        mg_line_add(h, "Content-Type", 12, ct, ctl);
    if (!(mg_ffi_flags & 2))
        mg_line_add(h, "X-Request-Id", 12, r->request_id, strlen(r->request_id));
    mg_resp_head(r, status, (const char *)evbuffer_pullup(h, -1), evbuffer_get_length(h),
                 (status < 200 || status == 204 || status == 304) ? -1 : (int64_t)blen);
    evbuffer_drain(h, evbuffer_get_length(h));
    mg_resp_body(r, body, blen);
    r->resp_done = 1;
}
