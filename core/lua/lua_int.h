/*
 * lua_int.h -- the inside of the Lua layer: the coroutine record shared by
 * lua_api.c (HTTP handlers and access hooks), lua_resp.c (the request
 * body and response), lua_client.c (timers, the HTTP client) and lua_ws.c
 * (WebSocket handlers), and the helpers they share.
 */
#ifndef MG_LUA_CO_H
#define MG_LUA_CO_H

#include "lua/lua.h"

typedef struct mg_lws_s mg_lws_t;
typedef struct mg_sock_s mg_sock_t;

enum { MG_W_NONE, MG_W_SLEEP, MG_W_HTTP, MG_W_BODY, MG_W_READ, MG_W_DRAIN, MG_W_HREAD, MG_W_SOCK };

/* moongate.http.request: default max_body of a buffered response */
#define MG_HTTP_MAX_BODY (16 * 1024 * 1024)

struct mg_co_s {
    lua_State *L; /* the coroutine */
    int ref;      /* registry anchor of the thread */
    mg_gen_t *gen;
    mg_req_t *req; /* NULL for timers */
    int wait;
    int targs; /* timers: arguments for the first resume */
    struct event tev;
    struct evbuffer *body; /* request body received, not yet read */
    uint64_t body_taken;   /* request body bytes the script read (moongate.proxy refuses then) */
    /* HTTP client call in progress */
    mg_ux_t *ux;
    mg_upstream_t tmp_up; /* for url= calls */
    mg_peer_t *tmp_peer;
    mg_lws_t *lws; /* WebSocket handler: the socket this coroutine owns */
    int access;    /* runs a route's access hooks (not its handler) */
    int reusable;  /* ended cleanly: its thread may serve again */
    mg_co_t *next_free;
    int hstatus;
    struct evbuffer *hbody;
    struct evbuffer *hhead; /* "name\0value\0" pairs */
    size_t hmax;            /* buffered response: body limit (max_body) */
    int htoobig;            /* ... exceeded: the exchange is refused */
    int hstream;            /* stream = true: the body is read with resp:read() */
    int hdone;              /* streamed response: the body ended */
    unsigned hsid;          /* streamed response id (an old resp:read() sees "closed") */
    const char *herr;       /* streamed response: how it failed */
    mg_sock_t *socks;       /* lua_socket.c: the cosockets it connected (closed when it ends) */
};

/* init.lua's entry points (registry functions), found once per generation */
enum {
    MG_ENTRY_RUN,
    MG_ENTRY_ACCESS,
    MG_ENTRY_HF,
    MG_ENTRY_HOOKS,
    MG_ENTRY_REQ_MT,
    MG_ENTRY_REQS,
    MG_ENTRY_PROXY_ERRS
};
void mg_lua_push_entry(lua_State *L, mg_gen_t *gen, int which);

/* lua_proxy.c: moongate.proxy's core.proxy (into moongate.core); the end
 * of a handler's coroutine with r->lproxy set: the C proxy takes r, with
 * the body bytes co received (r may be gone on return); a coroutine that
 * ended with a plan and a response of its own: the plan is dropped. */
void mg_lua_inject_proxy_api(lua_State *L);
void mg_lua_proxy_handoff(mg_req_t *r, mg_co_t *co);
void mg_lua_proxy_ignored(mg_req_t *r);

extern _Thread_local mg_co_t *mg_lua_co_cur;
mg_co_t *mg_lua_co_new(mg_gen_t *gen);
void mg_lua_co_resume(mg_co_t *co, int nargs);
mg_co_t *mg_lua_co_check(lua_State *L, const char *what);
void mg_lua_push_req(lua_State *L, mg_req_t *r);
void mg_lua_push_req_kept(lua_State *L, mg_req_t *r);   /* r->access_req_ref set */
void mg_lua_push_req_filled(lua_State *L, mg_req_t *r); /* for a handler that outlives r */
void mg_lua_co_pool_free(mg_gen_t *gen);
mg_req_t *mg_lua_co_req(lua_State *L, const char *what); /* the running handler's request */
void mg_lua_push_lower(lua_State *L, const char *s, size_t len);
/* Header lines "Name: value\r\n" from the table at idx into out. */
/* Appends the table at idx as header lines; NULL, or the name (a copy, at
 * most 63 bytes) of the first bad header, for the caller to free its buffer
 * and raise. */
const char *mg_lua_header_lines(lua_State *L, int idx, struct evbuffer *out, int *has_ctype);
/* Each adds its functions to the moongate.core table on the stack's top. */
void mg_lua_inject_resp_api(lua_State *L); /* lua_resp.c */
/* lua_resp.c: the Lua handler as a target (r->target while r->co runs) */
extern const mg_target_t mg_lua_target;
void mg_lua_inject_client_api(lua_State *L); /* lua_client.c */
void mg_lua_ws_co_end(mg_co_t *co);          /* lua_ws.c: the owner coroutine ended */
void mg_lua_ws_error(mg_co_t *co);           /* the handler raised: close with 1011 */
int mg_lua_ws_broadcast(lua_State *L);       /* moongate.ws_broadcast(set, data [, kind]) */
void mg_lua_http_end(mg_co_t *co); /* lua_client.c: the coroutine ends: drop its exchange */
/* lua_socket.c: core.socket (moongate.socket.tcp); the coroutine ends: close its sockets */
void mg_lua_inject_socket_api(lua_State *L);
void mg_lua_socket_co_end(mg_co_t *co);

/* lua_ffi.c: the request and response API init.lua calls through the FFI
 * (declared there with ffi.cdef; the slices are {pointer, length}) */
typedef struct mg_lua_ffi_str_s mg_lua_ffi_str_t;
/* a request's id, what its req table holds (-1: none could be made): its
 * low 32 bits are the slot (MG_LUA_FFI_SLOT) */
int64_t mg_lua_ffi_id_new(mg_req_t *r);
#define MG_LUA_FFI_SLOT(id) ((uint32_t)((id)&0xffffffffu))
/* the id (and every copy of it) reaches nothing from now on; its slot
 * stays taken until mg_lua_ffi_slot_free (the request ends) */
void mg_lua_ffi_id_detach(int64_t id);
void mg_lua_ffi_slot_free(uint32_t slot);
void mg_lua_ffi_id_free(int64_t id);       /* both at once; a stale id frees nothing */
int64_t mg_lua_ffi_slot_id(uint32_t slot); /* the slot's live id, or -1 */
mg_req_t *mg_lua_ffi_req(int64_t id);      /* NULL: the request is gone */
int mg_lua_ffi_req_header(int64_t id, const char *name, size_t nl, mg_lua_ffi_str_t *out);
int mg_lua_ffi_req_headers(int64_t id, mg_kv_t *out, int cap, int *oom);
int mg_lua_ffi_req_params(int64_t id, mg_kv_t *out, int cap);
int mg_lua_ffi_req_query(int64_t id, mg_lua_ffi_str_t *out);
const char *mg_lua_ffi_req_id(int64_t id);
const char *mg_lua_ffi_req_remote_addr(int64_t id);
int mg_lua_ffi_req_set_header(int64_t id, int resp, const char *n, size_t nl, const char *v,
                              size_t vl);
int mg_lua_ffi_req_set_header_num(int64_t id, int resp, const char *n, size_t nl, double d);
int mg_lua_ffi_shdict_take(void *ud, const char *k, size_t kl, double rate, double burst,
                           double cost, double *out); /* shdict.c */
long mg_lua_ffi_unescape(const char *s, size_t n, char *out);
long mg_lua_ffi_escape(const char *s, size_t n, char *out);
double mg_lua_ffi_now(void);
int mg_lua_ffi_res_begin(void);
int mg_lua_ffi_res_header(const char *n, size_t nl, const char *v, size_t vl);
void mg_lua_ffi_res_send(int status, const char *body, size_t blen, const char *ct, size_t ctl);
int mg_lua_ffi_proxy(const char *u, size_t ul, const char *path, size_t pl, const char *q,
                     size_t ql, double timeout, const char *ct, size_t cl, int flags,
                     int *slot); /* lua_proxy.c */
int mg_lua_ffi_proxy_header(const char *n, size_t nl, const char *v, size_t vl);

#endif
