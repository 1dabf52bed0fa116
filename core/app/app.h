/*
 * app.h -- the top: the master (main.c: listeners, workers, reloads),
 * one worker's life (worker.c: accept, signals, the control channel),
 * loading a generation (load.c) and the snapshot of the files it reads
 * (snap.c).
 */
#ifndef MG_APP_H
#define MG_APP_H

#include "gateway/gateway.h"

#include <openssl/ssl.h>

/* ---- load.c ---- */
/* Loads a generation. snap_fd -1: read the files from the disk and keep
 * what was read (mg_load_snap_export); else a snapshot memfd from the master to
 * load exactly those bytes (borrowed). id 0: the next number. */
mg_gen_t *mg_load_gen(const char *conf_file, int snap_fd, unsigned id, char *err, size_t errlen);
/* The master's own load of generation id from the snapshot a worker made
 * (snap_fd, borrowed): as mg_load_gen from the disk, its notes logged and
 * its route lines made for the diff, but the bytes the workers serve. */
mg_gen_t *mg_load_gen_master(const char *conf_file, int snap_fd, unsigned id, char *err,
                             size_t errlen);
/* A worker's early load (at the start of a reload): from the disk,
 * recording what it reads as the master's load does (the modules under the
 * generation's directories too), no id yet: its snapshot
 * (mg_load_snap_export) may become the generation's. mg_load_adopt then
 * makes it generation id if it read exactly the files of the generation's
 * snapshot at snap_fd (MG_OK), else MG_ERR (gen unchanged: free it, load
 * the snapshot). */
mg_gen_t *mg_load_gen_early(const char *conf_file, char *err, size_t errlen);
int mg_load_adopt(mg_gen_t *gen, int snap_fd, unsigned id, char *err, size_t errlen);
/* The master: the id of a generation a worker's snapshot makes (the next
 * number, taken: no other load gets it). */
unsigned mg_load_id_reserve(void);
/* The master's generations: their route lines for reload diffs (loader.describe,
 * 10 000 routes: 8 ms), made on the first call, not by the load: a reload
 * asks once every worker serves, off its critical path. */
void mg_load_desc(mg_gen_t *gen);
/* Once a generation serves: a full collection of its Lua state. A load
 * leaves about half its heap as garbage (10 000 routes: 17 of 36 MB), which
 * a table of proxy routes never allocates enough afterwards to collect. */
void mg_load_settle(mg_gen_t *gen);
/* A worker sets mg_load_gc_defer: settling a generation and closing a
 * freed one's Lua state are then queued (and mg_load_gc_defer called, to
 * schedule the work), and done in slices by mg_load_gc_step (at most
 * about budget_ms each; it returns 1 while work is left). */
extern void (*mg_load_gc_defer)(void);
int mg_load_gc_step(double budget_ms);
const char *mg_load_lib_dir(void);
/* A fresh Lua state with the standard libraries and moongate's lib/ first
 * on package.path (a generation's, the ACME process's); NULL: no memory. */
lua_State *mg_load_lua_state(void);
/* The strings of the list t[k] at idx (copies), *n of them; NULL if none. */
char **mg_load_str_list(lua_State *L, int idx, const char *k, int *n);

/* ---- uptls.c: the TLS contexts of https:// and wss:// upstreams ---- */
/* From the loaded conf at `conf` (its upstreams, in g->upstreams' order);
 * MG_ERR with "file: reason" in err. */
int mg_load_uptls(mg_gen_t *g, lua_State *L, int conf, char *err, size_t errlen);
void mg_load_uptls_free(mg_gen_t *g); /* the generation's destructor */

/* ---- load_edge.c: redirect_https and tls.hsts of every route table (the
 * loader's generation table at genidx: conf, servers) into g->edge ---- */
int mg_load_edge(mg_gen_t *g, lua_State *L, int genidx); /* MG_OK, MG_ERR (memory) */

/* ---- tls_ocsp.c: OCSP stapling from a configured response file ----
 * Staples the DER OCSP response `der` (len bytes, copied; read from `file`,
 * named in messages) to cert (an X509 of ctx, an SSL_CTX; NULL: the one
 * loaded last, SSL_CTX_get0_certificate) for every handshake whose client
 * asks for it (status_request). Refused ("file: reason" in err): not an
 * OCSP response, not successful, not for this certificate (its serial, and
 * its issuer where the chain holds it), revoked or unknown, or past its
 * nextUpdate. Each certificate of a context has its own (ECDSA and RSA side
 * by side). MG_OK or MG_ERR. */
struct ssl_ctx_st; /* SSL_CTX */
struct x509_st;    /* X509 */
int mg_tls_ocsp_staple(struct ssl_ctx_st *ctx, struct x509_st *cert, const char *file,
                       const void *der, size_t len, char *err, size_t errlen);

/* ---- snap.c: the files a generation loads, read once ---- */
void mg_load_snap_install(lua_State *L); /* file readers go through an empty snapshot */
int mg_load_snap_import(lua_State *L, int fd, char *err, size_t errlen); /* snapshot from memfd */
int mg_load_snap_scan(lua_State *L, int dirs, char *err, size_t errlen); /* + .lua under dirs */
void mg_load_snap_stop(lua_State *L); /* loading done: file readers but require read the disk */
void mg_load_snap_drop(lua_State *L); /* frees all but the modules require resolves from */
int mg_load_snap_export(lua_State *L, char *err,
                        size_t errlen); /* sealed memfd, or -1; then drop */
/* the same memfd, the state's snapshot kept whole (a worker's early load:
 * mg_load_snap_adopt compares all of it later) */
int mg_load_snap_write(lua_State *L, char *err, size_t errlen);
int mg_load_snap_adopt(lua_State *L, int fd, char *err, size_t errlen); /* same files? */

/* ---- main.c ---- */
/* What a reload to g cannot change (listen, workers: a restart can): "; "
 * separated sentences in out, and their number (0: none). */
int mg_app_restart_notes(const mg_gen_t *g, char *out, size_t outlen);

/* ---- worker.c ---- */
void mg_worker_run(int id, int *fds, int nfd, int ctl);

/* The control channel between the master and one worker: a SOCK_SEQPACKET
 * socketpair, one message per record. A reload starts with EARLY (every
 * worker loads from the disk); the first worker's EARLY_READY brings the
 * generation's snapshot (any EARLY_FAIL first: the master loads it
 * itself). Then two phases: PREPARE (with the generation's snapshot memfd)
 * -> READY or REFUSE, then COMMIT -> SERVING, or ABORT. */
enum {
    MG_CTL_PREPARE = 'P',
    MG_CTL_READY = 'K',
    MG_CTL_REFUSE = 'E',
    MG_CTL_COMMIT = 'C',
    MG_CTL_SERVING = 'S',
    MG_CTL_ABORT = 'A',
    /* master -> workers as a reload starts (id: the reload's number):
     * load from the disk now (worker.c); ABORT with id 0 drops it */
    MG_CTL_EARLY = 'Y',
    /* worker -> master, id: the EARLY's number: the early load succeeded,
     * its snapshot (the fd) may be the generation's */
    MG_CTL_EARLY_READY = 'R',
    /* worker -> master: the early load failed (text: why); the master
     * then loads from the disk and judges */
    MG_CTL_EARLY_FAIL = 'F',
    /* POST /reload (gateway/admin.c): worker -> master, id = the worker's
     * tag; the master reloads as on SIGHUP and answers RELOADED with the
     * same tag, text "<status> <JSON body>" (200 or 422) */
    MG_CTL_RELOAD = 'L',
    MG_CTL_RELOADED = 'D',
};
typedef struct {
    char op;        /* MG_CTL_* */
    unsigned id;    /* the generation */
    char text[480]; /* REFUSE: why */
} mg_ctl_msg_t;
int mg_app_ctl_send(int sock, int op, unsigned id, const char *text, int fd); /* fd -1: none */
int mg_app_ctl_recv(int sock, mg_ctl_msg_t *m, int *fd); /* MG_OK, MG_AGAIN, MG_ERR (closed) */
void mg_request_id(char *out);                           /* 32 hex chars + NUL */
void mg_worker_stop_accept(void);

/* ---- tls_ctx.c: a generation's TLS contexts, the shared ticket keys ---- */
/* Builds the contexts of the loader's tls table at t (a conf's or a
 * server's: server 0 = the main conf) into g->tls_ctx[server]. The
 * certificates' PEM bytes are in the table (read through the snapshot);
 * a broken one fails with "conf:line: tls.certificates[N]: file: reason".
 * MG_OK or MG_ERR. */
int mg_tls_ctx_load(mg_gen_t *g, lua_State *L, int t, int server, char *err, size_t errlen);
void mg_tls_ctx_free(mg_gen_t *g); /* the generation's references (its dtor) */
/* the metrics' certificate family (a loop/metrics.h extra): expiry per name */
void mg_tls_ctx_metrics(struct evbuffer *out);
/* a server SSL_CTX's certificate's notAfter (Unix time), 0 if none */
double mg_tls_not_after(void *ctx);
/* the expiry series of the ACME certificates served (server="acme"), in
 * mg_tls_ctx_metrics's family (acme_tls.c) */
void mg_acme_metrics(struct evbuffer *out);
/* Loads a certificate (PEM, the chain after it) and its key into ctx,
 * checked: parsed, the key matches, valid now. cert_name/key_name are for
 * messages ("file: reason"). MG_OK or MG_ERR. */
int mg_tls_ctx_add_pem(SSL_CTX *ctx, const char *cert_pem, size_t cert_len, const char *key_pem,
                       size_t key_len, const char *cert_name, const char *key_name, char *err,
                       size_t errlen);
/* moongate's ALPN choice: http/1.1, or h2 first when h2 (tls.http2);
 * MG_TLS_ALPN_LISTENER (a context switched to by mg_tls_sni_hook): h2 when
 * the listener the handshake came on offers it */
#define MG_TLS_ALPN_LISTENER 2
void mg_tls_ctx_set_alpn(SSL_CTX *ctx, int h2);
/* in an ALPN or certificate callback of such a context: the listener
 * offers h2 */
int mg_tls_listener_h2(SSL *ssl);
/* Asked first by the servername callback of every TLS listener, with the
 * client's SNI name (lower-case, no trailing dot): a context to serve that
 * name (the SSL takes its own reference), or NULL for the conf's own
 * certificates. NULL (unset) by default; ACME certificates come this way. */
extern SSL_CTX *(*mg_tls_sni_hook)(const char *name);
/* The session-ticket keys: one shared mapping made by the master before
 * it forks (MG_OK or MG_ERR); the master rotates them. */
int mg_tls_tkeys_init(void);
void mg_tls_tkeys_rotate(void);

/* ---- main.c ---- */
extern const char *mg_app_conf_path;
/* The last MG_RELOAD_LOG reloads' results (SIGHUP or POST /reload), in
 * shared memory the master maps before forking: it writes entry n %
 * MG_RELOAD_LOG, then bumps n; workers read them (GET /reloads). */
#define MG_RELOAD_LOG 8
typedef struct {
    double at;      /* wall-clock seconds */
    int status;     /* 200 switched, 422 refused */
    char body[464]; /* the POST /reload answer (JSON) */
} mg_reload_entry_t;
typedef struct {
    unsigned n; /* reloads so far */
    mg_reload_entry_t e[MG_RELOAD_LOG];
} mg_reload_log_t;
extern mg_reload_log_t *mg_reload_log; /* NULL: not mapped */

/* ---- acme*.c: automatic certificates (ACME, RFC 8555) ---- */
/* conf.acme as loaded (lib/moongate/acme_conf.lua): one per generation
 * (g->acme), freed with it. */
typedef struct {
    char *storage; /* folder: account.key, <name>.pem (chain + key), 0600 */
    char **names;  /* the names to cover, one certificate each */
    int nnames;
    char **allow; /* on_demand.allow: names and "*.rest" patterns for SNI names */
    int nallow;
    int od_max; /* on_demand.max: names it may add (0: no on_demand) */
    char *src;  /* the normalized section as a Lua chunk, for the ACME process */
} mg_acme_conf_t;
/* Reads conf.acme at idx (nil: NULL). */
mg_acme_conf_t *mg_acme_conf_read(lua_State *L, int idx);
void mg_acme_conf_free(mg_acme_conf_t *c);
/* The ACME process (acme.c), forked by the master: runs lib/moongate/acme.lua
 * for mg_gen_current's acme section, tells the master of each certificate
 * obtained on sock (MG_CTL_CERT, the name in text). Never returns. */
void mg_acme_run(int sock) __attribute__((noreturn));
enum {
    MG_CTL_CERT = 'N', /* ACME process -> master -> workers: a new certificate (text: name) */
    MG_CTL_WANT = 'W', /* worker -> master -> ACME process: an on_demand name seen in SNI */
};
/* Whether name (lower-case) is one on_demand.allow covers: exactly, or
 * "*.rest" for one label of letters, digits and '-' before ".rest". */
int mg_acme_allowed(const mg_acme_conf_t *c, const char *name);
/* Worker (acme_tls.c): serves the stored certificates for new handshakes
 * (through mg_tls_sni_hook), and the one for `name` anew after MG_CTL_CERT. */
void mg_acme_worker_init(int ctl); /* ctl: the worker's end of its control channel */
void mg_acme_worker_update(const char *name);

#endif
