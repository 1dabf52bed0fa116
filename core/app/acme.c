/*
 * acme.c -- automatic certificates (ACME, RFC 8555): the acme section as
 * the C side keeps it, and the ACME process. The master forks this one
 * process (main.c; restarted if it dies, like a worker); it may block, as it
 * serves no connection, so the protocol is plain sequential Lua
 * (lib/moongate/acme.lua, with lua-cjson) over blocking C helpers: HTTPS
 * (acme_https.c), keys, ES256 and CSRs (acme_crypto.c), and the files,
 * clock and channel here. Tokens reach the workers' http-01 responder
 * through the shared dict "moongate.acme" (made by the master before it
 * forks); a new certificate is written to the storage folder and then
 * announced to the master (MG_CTL_CERT on sock), which tells every worker
 * (acme_tls.c loads it for new handshakes).
 */
#include "app/acme_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MG_ACME_FILE_MAX (1024 * 1024) /* bytes: keys and chains are a few KiB */

static int mg_acme_sock = -1;

/* ---- the section, per generation ---- */

mg_acme_conf_t *mg_acme_conf_read(lua_State *L, int idx) {
    mg_acme_conf_t *c;
    if (!lua_istable(L, idx))
        return NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    lua_getfield(L, idx, "storage");
    c->storage = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "acme");
    lua_getfield(L, idx, "src");
    c->src = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "return {}");
    lua_pop(L, 2);
    c->names = mg_load_str_list(L, idx, "names", &c->nnames);
    lua_getfield(L, idx, "on_demand");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "max");
        c->od_max = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        c->allow = mg_load_str_list(L, lua_gettop(L), "allow", &c->nallow);
    }
    lua_pop(L, 1);
    return c;
}

int mg_acme_allowed(const mg_acme_conf_t *c, const char *name) {
    size_t nl = strlen(name);
    for (int i = 0; c && i < c->nallow; i++) {
        const char *a = c->allow[i];
        size_t al = strlen(a), l;
        if (a[0] != '*') {
            if (strcmp(a, name) == 0)
                return 1;
            continue;
        }
        /* "*.rest": one label, then ".rest" */
        if (nl < al || strcmp(name + nl - (al - 1), a + 1) != 0)
            continue;
        l = nl - (al - 1);
        if (l == 0)
            continue;
        for (size_t k = 0; k < l; k++) {
            char ch = name[k];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
                goto next;
        }
        return 1;
    next:;
    }
    return 0;
}

void mg_acme_conf_free(mg_acme_conf_t *c) {
    if (c == NULL)
        return;
    for (int i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    for (int i = 0; i < c->nallow; i++)
        free(c->allow[i]);
    free(c->allow);
    free(c->storage);
    free(c->src);
    free(c);
}

/* ---- the process's helpers: files, clock, channel, log ---- */

/* read_file(path) -> data, or nil, reason */
static int mg_acme_read_file(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf;
    ssize_t n;
    if (fd < 0 || fstat(fd, &st) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > MG_ACME_FILE_MAX) {
        close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: not a regular file of at most %d bytes", path, MG_ACME_FILE_MAX);
        return 2;
    }
    buf = malloc((size_t)st.st_size + 1);
    n = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (n < 0) {
        free(buf);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        return 2;
    }
    lua_pushlstring(L, buf, (size_t)n);
    free(buf);
    return 1;
}

/* write_file(path, data) -> true, or nil, reason: mode 0600, all or
 * nothing (a temporary file renamed over path), on the disk when it says so */
static int mg_acme_write_file(lua_State *L) {
    size_t n;
    const char *path = luaL_checkstring(L, 1), *data = luaL_checklstring(L, 2, &n);
    char tmp[4096];
    int fd;
    size_t off = 0;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return luaL_error(L, "acme write_file: path too long");
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            goto fail;
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto fail;
    lua_pushboolean(L, 1);
    return 1;
fail:
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return 2;
}

/* mkdir(path) -> true, or nil, reason: a folder of mode 0700 (an existing
 * one is made 0700: it holds private keys) */
static int mg_acme_mkdir(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        goto fail;
    if (stat(path, &st) != 0)
        goto fail;
    if (!S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: not a folder", path);
        return 2;
    }
    if ((st.st_mode & 0777) != 0700 && chmod(path, 0700) != 0)
        goto fail;
    lua_pushboolean(L, 1);
    return 1;
fail:
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
}

/* now() -> wall-clock seconds (certificates are dated by it) */
static int mg_acme_now(lua_State *L) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
    return 1;
}

/* sleep(s) -> {names asked for by the workers (on_demand)} or nil: waits
 * at most s seconds, less when a name comes; exits when the master is gone */
static int mg_acme_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    struct pollfd pf = {mg_acme_sock, POLLIN, 0};
    int ms = s <= 0 ? 0 : s > 86400 ? 86400000 : (int)(s * 1000), n = 0;
    if (poll(&pf, 1, ms) <= 0)
        return 0;
    lua_newtable(L);
    for (int k = 0; k < 256; k++) { /* a bounded batch; the rest wait for the next call */
        mg_ctl_msg_t m;
        int fd, rc = mg_app_ctl_recv(mg_acme_sock, &m, &fd);
        if (fd >= 0)
            close(fd);
        if (rc == MG_AGAIN)
            break;
        if (rc == MG_ERR) {
            mg_info("acme: the master is gone: exiting");
            _exit(0);
        }
        if (m.op == MG_CTL_WANT && m.text[0]) {
            lua_pushstring(L, m.text);
            lua_rawseti(L, -2, ++n);
        }
    }
    return 1;
}

/* list_dir(path) -> {file names} (at most 10 000), or nil, reason */
static int mg_acme_list_dir(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (d == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        return 2;
    }
    lua_newtable(L);
    while ((e = readdir(d)) != NULL && n < 10000) {
        if (e->d_name[0] == '.')
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    return 1;
}

/* notify(name): a certificate for name is in the storage folder */
static int mg_acme_notify(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    if (mg_app_ctl_send(mg_acme_sock, MG_CTL_CERT, 0, name, -1) != MG_OK) {
        mg_info("acme: the master is gone: exiting");
        _exit(0);
    }
    return 0;
}

/* log(level, msg), level "debug" | "info" | "warn" | "error" */
static int mg_acme_log(lua_State *L) {
    int lvl = mg_log_level_parse(luaL_checkstring(L, 1)); /* unknown: info */
    mg_log(lvl, "acme: %s", luaL_checkstring(L, 2));
    return 0;
}

/* random(n) -> n random bytes (n <= 256) */
static int mg_acme_random(lua_State *L) {
    int n = (int)luaL_checkinteger(L, 1);
    unsigned char buf[256];
    if (n < 1 || n > 256 || getrandom(buf, (size_t)n, 0) != n)
        return luaL_error(L, "acme random: 1 to 256 bytes");
    lua_pushlstring(L, (const char *)buf, (size_t)n);
    return 1;
}

static int mg_acme_traceback(lua_State *L) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

void mg_acme_run(int sock) {
    mg_acme_conf_t *c = mg_gen_current ? mg_gen_current->acme : NULL;
    static const luaL_Reg f[] = {
        {"read_file", mg_acme_read_file}, {"write_file", mg_acme_write_file},
        {"mkdir", mg_acme_mkdir},         {"now", mg_acme_now},
        {"sleep", mg_acme_sleep},         {"list_dir", mg_acme_list_dir},
        {"notify", mg_acme_notify},       {"log", mg_acme_log},
        {"random", mg_acme_random},       {NULL, NULL},
    };
    lua_State *L;

    prctl(PR_SET_NAME, "moongate-acme");
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the master's end closing says it too */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    mg_acme_sock = sock;
    if (c == NULL)
        _exit(0);
    L = mg_load_lua_state();
    if (L == NULL) {
        mg_error("acme: cannot create a Lua state");
        _exit(1);
    }

    lua_pushcfunction(L, mg_acme_traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.acme");
    if (lua_pcall(L, 1, 1, 1) != 0)
        goto fail;
    lua_getfield(L, -1, "run");
    if (luaL_loadbuffer(L, c->src, strlen(c->src), "=acme conf") != 0 || lua_pcall(L, 0, 1, 1) != 0)
        goto fail;
    lua_newtable(L); /* the C helpers */
    luaL_register(L, NULL, f);
    mg_acme_crypto_open(L);
    mg_acme_https_open(L);
    mg_crypto_open_api(L); /* core.crypto: sha256, b64url_encode */
    lua_setfield(L, -2, "crypto");
    mg_shdict_open_api(L); /* the dict opener */
    lua_pushliteral(L, MG_ACME_DICT);
    lua_call(L, 1, 1);
    lua_setfield(L, -2, "dict");
    mg_info("acme: process %d started (storage %s, %d names)", (int)getpid(), c->storage,
            c->nnames);
    if (lua_pcall(L, 2, 0, 1) != 0)
        goto fail;
    _exit(0);
fail:
    mg_error("acme: %s", lua_tostring(L, -1));
    _exit(1);
}
