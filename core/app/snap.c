/*
 * snap.c -- a generation's files, read once. While a generation loads, the
 * Lua functions that read files (loadfile, dofile, io.open for reading,
 * io.lines, package.searchpath and require's Lua searcher) go through a
 * snapshot: a table path -> bytes (or the error the open gave) in the
 * state's registry. A load from the disk (a worker's early load at a
 * reload, or the master's at start and when it judges a reload) starts from
 * an empty snapshot, which fills from the disk as the loader reads; after
 * the load it also records every `.lua` file under the generation's
 * lua_path directories and plugin directories (recursively), so that a
 * module a handler requires only at run time is part of the generation
 * too. The snapshot (at most MG_SNAP_MAX bytes: a load that needs more is
 * refused, "file: reason") then goes, in a sealed memfd, to the master and
 * from it to every worker (core/app/main.c), and a process that did not
 * read those very bytes loads from it, so master and workers compile the
 * same bytes even if the files change meanwhile. A path the snapshot's
 * load never looked at is read from the disk, except a `.lua` path under a
 * snapshotted directory: it did not exist. Once the load is done,
 * loadfile, dofile, io.open and io.lines read the disk again (a handler's
 * io.open at run time sees the file as it is then); require's Lua searcher
 * keeps resolving from the snapshot for the life of the generation, which
 * keeps only those modules (each worker one copy per generation, freed with
 * the generation's state), and reads the disk only for a path outside the
 * snapshotted directories.
 */
#include "app/app.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MG_SNAP_FILES "moongate.snap"       /* registry: path -> string | {msg, errno} */
#define MG_SNAP_ON "moongate.snap.on"       /* registry: true while a generation loads */
#define MG_SNAP_DIRS "moongate.snap.dirs"   /* registry: the snapshotted directories */
#define MG_SNAP_BYTES "moongate.snap.bytes" /* registry: bytes of the files recorded */
#define MG_SNAP_MAX (64 * 1024 * 1024)      /* bytes of all files of one generation */
#define MG_SNAP_MAX_ENTRIES 100000          /* files and directories a scan walks */
#define MG_SNAP_MAX_DEPTH 32                /* directory levels a scan walks */
#define MG_SNAP_BIG "the generation's files exceed 64 MiB (the bound of a reload snapshot)"
#define MG_SNAP_MAGIC "MGSNAP2"
#define MG_SNAP_DIR_REC (-1) /* a record's err: the path is a snapshotted directory */

/* An entry of the serialized snapshot: the header, then path and data. */
typedef struct {
    uint32_t pathlen;
    int32_t err; /* 0: data is the file; MG_SNAP_DIR_REC: a directory; else errno, data is
                    the message */
    uint64_t len;
} mg_load_snap_rec_t;

static int mg_load_snap_write_all(int fd, const void *p, size_t n);

static int mg_load_snap_on(lua_State *L) {
    int on;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
    on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return on;
}

static size_t mg_load_snap_bytes(lua_State *L) {
    size_t n;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_BYTES);
    n = (size_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return n;
}

static void mg_load_snap_set_bytes(lua_State *L, size_t n) {
    lua_pushnumber(L, (lua_Number)n);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_BYTES);
}

/* Reads path whole into a new Lua string on the stack, or returns errno
 * (EFBIG: more than room bytes). Never blocks on a FIFO. */
static int mg_load_snap_read_disk(lua_State *L, const char *path, size_t room) {
    struct stat st;
    luaL_Buffer b;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), e;
    if (fd < 0)
        return errno;
    e = fstat(fd, &st) != 0                                  ? errno
        : S_ISDIR(st.st_mode)                                ? EISDIR
        : S_ISREG(st.st_mode) && (uint64_t)st.st_size > room ? EFBIG
                                                             : 0;
    if (e) {
        close(fd);
        return e;
    }
    luaL_buffinit(L, &b);
    for (;;) {
        char *p = luaL_prepbuffer(&b);
        ssize_t n = read(fd, p, LUAL_BUFFERSIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (size_t)n > room) {
            e = n < 0 ? errno : EFBIG;
            close(fd);
            luaL_pushresult(&b);
            lua_pop(L, 1);
            return e;
        }
        if (n == 0)
            break;
        room -= (size_t)n;
        luaL_addsize(&b, (size_t)n);
    }
    close(fd);
    luaL_pushresult(&b);
    return 0;
}

/* The prefix a path under dir starts with: "dir/", or "" for "." (the
 * loader's join() writes the files of "." without "./"). */
static size_t mg_load_snap_prefix(const char *dir, char *out, size_t outlen) {
    size_t n = strlen(dir);
    if (n == 0 || strcmp(dir, ".") == 0) {
        out[0] = '\0';
        return 0;
    }
    if (n + 2 > outlen)
        return (size_t)-1;
    memcpy(out, dir, n);
    if (out[n - 1] != '/')
        out[n++] = '/';
    out[n] = '\0';
    return n;
}

/* 1 if path is a `.lua` file under a snapshotted directory: the snapshot
 * has every such file, so one it lacks did not exist. A path with a ".."
 * part is under none. */
static int mg_load_snap_under(lua_State *L, const char *path) {
    size_t n = strlen(path), i, nd;
    int under = 0;
    char pre[4096];
    if (n < 4 || strcmp(path + n - 4, ".lua") != 0)
        return 0;
    if (strncmp(path, "../", 3) == 0 || strstr(path, "/../") != NULL)
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
    nd = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    for (i = 1; i <= nd && !under; i++) {
        size_t pl;
        lua_rawgeti(L, -1, (int)i);
        pl = mg_load_snap_prefix(lua_tostring(L, -1), pre, sizeof(pre));
        lua_pop(L, 1);
        if (pl == (size_t)-1)
            continue;
        under = pl == 0 ? path[0] != '/' : strncmp(path, pre, pl) == 0;
    }
    lua_pop(L, 1);
    return under;
}

static void mg_load_snap_push_err(lua_State *L, int e) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, e == EFBIG ? MG_SNAP_BIG : strerror(e));
    lua_setfield(L, -2, "msg");
    lua_pushinteger(L, e);
    lua_setfield(L, -2, "errno");
}

/* Pushes the snapshot's entry for path and returns 1 if it is a file (a
 * string on the stack), 0 if it could not be opened (a table {msg, errno}).
 * A path not in the snapshot does not exist if it is a `.lua` file under a
 * snapshotted directory, else it is read from the disk, and recorded if
 * record is set (while a generation loads). */
static int mg_load_snap_get(lua_State *L, const char *path, int record) {
    int e;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES); /* files */
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    }
    lua_getfield(L, -1, path);
    if (lua_isnil(L, -1)) {
        size_t total = mg_load_snap_bytes(L);
        lua_pop(L, 1);
        if (mg_load_snap_under(L, path)) {
            mg_load_snap_push_err(L, ENOENT);
        } else {
            e = mg_load_snap_read_disk(L, path, total < MG_SNAP_MAX ? MG_SNAP_MAX - total : 0);
            if (e)
                mg_load_snap_push_err(L, e);
            if (record) {
                if (!e)
                    mg_load_snap_set_bytes(L, total + lua_objlen(L, -1));
                lua_pushvalue(L, -1);
                lua_setfield(L, -3, path);
            }
        }
    }
    lua_remove(L, -2); /* files */
    return lua_type(L, -1) == LUA_TSTRING;
}

static int mg_load_snap_fetch(lua_State *L, const char *path) {
    return mg_load_snap_get(L, path, 1);
}

/* After a failed fetch: the message of the entry on the stack top. */
static const char *mg_load_snap_msg(lua_State *L) {
    const char *m;
    lua_getfield(L, -1, "msg");
    m = lua_tostring(L, -1);
    lua_pop(L, 1);
    return m ? m : "cannot open";
}

/* Loads path from the snapshot as a chunk. Pushes the function (0) or an
 * error message (non-zero), as luaL_loadfile does. */
static int mg_load_snap_loadfile(lua_State *L, const char *path, const char *mode) {
    int rc;
    if (!mg_load_snap_get(L, path, mg_load_snap_on(L))) {
        lua_pushfstring(L, "cannot open %s: %s", path, mg_load_snap_msg(L));
        lua_remove(L, -2);
        return LUA_ERRFILE;
    }
    lua_pushfstring(L, "@%s", path);
    {
        size_t len;
        const char *data = lua_tolstring(L, -2, &len);
        rc = luaL_loadbufferx(L, data, len, lua_tostring(L, -1), mode);
    }
    lua_remove(L, -2); /* chunk name */
    lua_remove(L, -2); /* data */
    return rc;
}

/* loadfile([filename [, mode [, env]]]); upvalue 1: the original. */
static int mg_load_snap_loadfile_cb(lua_State *L) {
    const char *path = luaL_optstring(L, 1, NULL);
    const char *mode = luaL_optstring(L, 2, NULL);
    int env = !lua_isnone(L, 3);
    if (path == NULL || !mg_load_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    if (mg_load_snap_loadfile(L, path, mode) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (env) {
        lua_pushvalue(L, 3);
        lua_setfenv(L, -2);
    }
    return 1;
}

/* dofile([filename]); upvalue 1: the original. */
static int mg_load_snap_dofile_cb(lua_State *L) {
    const char *path = luaL_optstring(L, 1, NULL);
    int top;
    if (path == NULL || !mg_load_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    if (mg_load_snap_loadfile(L, path, NULL) != 0)
        return lua_error(L);
    top = lua_gettop(L) - 1;
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - top;
}

/* A file handle (pushed) reading the bytes at index data, or 0: a memfd
 * opened again through /proc (no writable filesystem needed), else a
 * temporary file. Every method of a file handle works on it. */
static int mg_load_snap_handle(lua_State *L, int data) {
    char p[64];
    size_t len;
    const char *d = lua_tolstring(L, data, &len);
    int fd = memfd_create("moongate-file", MFD_CLOEXEC);
    if (fd >= 0) {
        int ok = mg_load_snap_write_all(fd, d, len) == MG_OK;
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_pushstring(L, p);
        lua_pushliteral(L, "rb");
        lua_call(L, 2, 1);
        close(fd); /* the handle has its own reference */
        if (ok && !lua_isnil(L, -1))
            return 1;
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1); /* tmpfile() */
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_getfield(L, -1, "write");
    lua_pushvalue(L, -2);
    lua_pushvalue(L, data);
    lua_call(L, 2, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 2);
        return 0;
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "seek");
    lua_pushvalue(L, -2);
    lua_pushliteral(L, "set");
    lua_call(L, 2, 0);
    return 1;
}

/* io.open(filename [, mode]); upvalue 1: the original, 2: io.tmpfile. */
static int mg_load_snap_open_cb(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    if (!mg_load_snap_on(L) || strpbrk(mode, "wa+") != NULL) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    if (!mg_load_snap_fetch(L, path)) {
        const char *m = mg_load_snap_msg(L); /* held by the entry at 2 */
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, m);
        lua_getfield(L, 2, "errno");
        return 3;
    }
    if (!mg_load_snap_handle(L, 2)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: cannot open a copy of the generation's snapshot", path);
        return 2;
    }
    return 1;
}

/* io.lines([filename]); upvalue 1: the original, 2: our io.open. */
static int mg_load_snap_lines_cb(lua_State *L) {
    if (lua_isnoneornil(L, 1) || !mg_load_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushvalue(L, 1);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2))
        return luaL_error(L, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, -1, "lines");
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    return 1;
}

/* package.searchpath over the snapshot: pushes the file name (if keep,
 * above its bytes), or nil and the "no file" list. */
static int mg_load_snap_search(lua_State *L, const char *name, const char *path, const char *sep,
                               const char *rep, int keep) {
    luaL_Buffer msg;
    const char *p = path;
    if (*sep)
        name = luaL_gsub(L, name, sep, rep);
    else
        lua_pushstring(L, name);
    luaL_buffinit(L, &msg);
    while (*p) {
        const char *e;
        while (*p == ';')
            p++;
        if (*p == '\0')
            break;
        e = strchr(p, ';');
        if (e == NULL)
            e = p + strlen(p);
        lua_pushlstring(L, p, (size_t)(e - p));
        luaL_gsub(L, lua_tostring(L, -1), "?", name); /* tpl file */
        lua_remove(L, -2);
        if (mg_load_snap_get(L, lua_tostring(L, -1), mg_load_snap_on(L))) {
            if (keep)
                lua_insert(L, -2);
            else
                lua_pop(L, 1);
            return 1; /* the file name */
        }
        lua_pop(L, 1);
        lua_pushfstring(L, "\n\tno file '%s'", lua_tostring(L, -1));
        lua_remove(L, -2);
        luaL_addvalue(&msg);
        p = e;
    }
    luaL_pushresult(&msg);
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* package.searchpath(name, path [, sep [, rep]]); upvalue 1: the original. */
static int mg_load_snap_searchpath_cb(lua_State *L) {
    const char *name = luaL_checkstring(L, 1), *path = luaL_checkstring(L, 2);
    const char *sep = luaL_optstring(L, 3, "."), *rep = luaL_optstring(L, 4, "/");
    int top = lua_gettop(L);
    if (!mg_load_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, top, LUA_MULTRET);
        return lua_gettop(L);
    }
    return mg_load_snap_search(L, name, path, sep, rep, 0) == 1 ? 1 : 2;
}

/* require's Lua searcher (package.loaders[2]), also after the load: a
 * module first required at run time is the generation's too. */
static int mg_load_snap_searcher_cb(lua_State *L) {
    const char *name = luaL_checkstring(L, 1), *file;
    lua_settop(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    if (!lua_isstring(L, -1))
        return luaL_error(L, "'package.path' must be a string");
    if (mg_load_snap_search(L, name, lua_tostring(L, -1), ".", "/", 1) != 1)
        return 1; /* the "no file" list */
    file = lua_tostring(L, -1);
    {
        size_t len;
        const char *data = lua_tolstring(L, -2, &len);
        lua_pushfstring(L, "@%s", file);
        if (luaL_loadbufferx(L, data, len, lua_tostring(L, -1), NULL) != 0)
            return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file,
                              lua_tostring(L, -1));
    }
    return 1;
}

/* Replaces t[k] by cb with the old value as upvalue 1 and, if extra is not
 * 0, the value at index extra as upvalue 2. */
static void mg_load_snap_wrap(lua_State *L, int t, const char *k, lua_CFunction cb, int extra) {
    lua_getfield(L, t, k);
    if (extra)
        lua_pushvalue(L, extra);
    lua_pushcclosure(L, cb, extra ? 2 : 1);
    lua_setfield(L, t, k);
}

void mg_load_snap_install(lua_State *L) {
    int top = lua_gettop(L), io, pkg;
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    mg_load_snap_wrap(L, top + 1, "loadfile", mg_load_snap_loadfile_cb, 0);
    mg_load_snap_wrap(L, top + 1, "dofile", mg_load_snap_dofile_cb, 0);
    lua_getglobal(L, "io");
    io = lua_gettop(L);
    lua_getfield(L, io, "tmpfile");
    mg_load_snap_wrap(L, io, "open", mg_load_snap_open_cb, lua_gettop(L));
    lua_getfield(L, io, "open");
    mg_load_snap_wrap(L, io, "lines", mg_load_snap_lines_cb, lua_gettop(L));
    lua_getglobal(L, "package");
    pkg = lua_gettop(L);
    mg_load_snap_wrap(L, pkg, "searchpath", mg_load_snap_searchpath_cb, 0);
    lua_getfield(L, pkg, "loaders");
    if (lua_istable(L, -1)) {
        lua_pushcfunction(L, mg_load_snap_searcher_cb);
        lua_rawseti(L, -2, 2);
    }
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
    lua_settop(L, top);
}

void mg_load_snap_stop(lua_State *L) {
    lua_pushboolean(L, 0);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
}

/* Keeps only what require's searcher resolves from after the load: the
 * `.lua` files under the snapshotted directories. */
void mg_load_snap_drop(lua_State *L) {
    size_t bytes = 0;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            int keep = lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING &&
                       mg_load_snap_under(L, lua_tostring(L, -2));
            if (keep) {
                bytes += lua_objlen(L, -1);
                lua_pop(L, 1);
            } else {
                lua_pop(L, 1);
                lua_pushvalue(L, -1);
                lua_pushnil(L);
                lua_rawset(L, -4); /* clearing a field while traversing is allowed */
            }
        }
    }
    lua_pop(L, 1);
    mg_load_snap_set_bytes(L, bytes);
}

/* The scan of the snapshotted directories (mg_load_snap_scan). */
typedef struct {
    int entries, depth;
    dev_t dev[MG_SNAP_MAX_DEPTH + 1];
    ino_t ino[MG_SNAP_MAX_DEPTH + 1];
    char *err;
    size_t errlen;
} mg_load_snap_walk_t;

/* The loader's join(): a file of "." is written without "./". */
static int mg_load_snap_join(char *out, size_t outlen, const char *dir, const char *name) {
    size_t n = strlen(dir);
    int w;
    if (n == 0 || strcmp(dir, ".") == 0)
        w = snprintf(out, outlen, "%s", name);
    else
        w = snprintf(out, outlen, "%s%s%s", dir, dir[n - 1] == '/' ? "" : "/", name);
    return w > 0 && (size_t)w < outlen;
}

/* Records every .lua file under dir (whose stat is st): MG_OK, or MG_ERR
 * with w->err set when a bound is exceeded. A directory that cannot be
 * read, and a link back to a directory being walked, are skipped. */
static int mg_load_snap_walk(lua_State *L, mg_load_snap_walk_t *w, const char *dir,
                             const struct stat *st) {
    DIR *d = opendir(strcmp(dir, "") == 0 ? "." : dir);
    struct dirent *de;
    int rc = MG_OK;
    if (d == NULL)
        return MG_OK;
    w->dev[w->depth] = st->st_dev;
    w->ino[w->depth] = st->st_ino;
    while (rc == MG_OK && (de = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat cst;
        size_t nl = strlen(de->d_name);
        int i, seen = 0;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (!mg_load_snap_join(path, sizeof(path), dir, de->d_name) || stat(path, &cst) != 0)
            continue;
        if (S_ISDIR(cst.st_mode)) {
            for (i = 0; i <= w->depth; i++)
                seen |= w->dev[i] == cst.st_dev && w->ino[i] == cst.st_ino;
            if (seen)
                continue;
        } else if (!S_ISREG(cst.st_mode) || nl < 4 || strcmp(de->d_name + nl - 4, ".lua") != 0) {
            continue;
        }
        if (++w->entries > MG_SNAP_MAX_ENTRIES) {
            snprintf(w->err, w->errlen,
                     "%s: more than %d files and directories in the lua_path and plugin "
                     "directories (the bound of a reload snapshot)",
                     path, MG_SNAP_MAX_ENTRIES);
            rc = MG_ERR;
        } else if (S_ISDIR(cst.st_mode)) {
            if (w->depth + 1 > MG_SNAP_MAX_DEPTH) {
                snprintf(w->err, w->errlen,
                         "%s: directories nested deeper than %d levels in a lua_path or plugin "
                         "directory (the bound of a reload snapshot)",
                         path, MG_SNAP_MAX_DEPTH);
                rc = MG_ERR;
            } else {
                w->depth++;
                rc = mg_load_snap_walk(L, w, path, &cst);
                w->depth--;
            }
        } else {
            if (!mg_load_snap_fetch(L, path)) {
                lua_getfield(L, -1, "errno");
                if (lua_tointeger(L, -1) == EFBIG) {
                    snprintf(w->err, w->errlen, "%s: %s", path, MG_SNAP_BIG);
                    rc = MG_ERR;
                }
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    closedir(d);
    return rc;
}

int mg_load_snap_scan(lua_State *L, int dirs, char *err, size_t errlen) {
    mg_load_snap_walk_t w;
    int i, n = lua_istable(L, dirs) ? (int)lua_objlen(L, dirs) : 0;
    memset(&w, 0, sizeof(w));
    w.err = err;
    w.errlen = errlen;
    for (i = 1; i <= n; i++) {
        struct stat st;
        const char *dir;
        lua_rawgeti(L, dirs, i);
        dir = lua_tostring(L, -1);
        if (dir && stat(*dir ? dir : ".", &st) == 0 && S_ISDIR(st.st_mode) &&
            mg_load_snap_walk(L, &w, dir, &st) != MG_OK) {
            lua_pop(L, 1);
            return MG_ERR;
        }
        lua_pop(L, 1);
    }
    /* only now: while walking, a file not yet recorded must be read */
    lua_createtable(L, n, 0);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, dirs, i);
        if (lua_type(L, -1) == LUA_TSTRING)
            lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
        else
            lua_pop(L, 1);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
    return MG_OK;
}

static int mg_load_snap_write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return MG_ERR;
        c += w;
        n -= (size_t)w;
    }
    return MG_OK;
}

int mg_load_snap_write(lua_State *L, char *err, size_t errlen) {
    int fd = memfd_create("moongate-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING), ok = 1;
    if (fd < 0) {
        snprintf(err, errlen, "memfd_create: %s", strerror(errno));
        return -1;
    }
    ok = mg_load_snap_write_all(fd, MG_SNAP_MAGIC, sizeof(MG_SNAP_MAGIC)) == MG_OK;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (ok && lua_next(L, -2)) {
            mg_load_snap_rec_t rec = {0, 0, 0};
            size_t plen, dlen = 0;
            const char *path = lua_tolstring(L, -2, &plen), *data;
            if (lua_type(L, -1) == LUA_TSTRING) {
                data = lua_tolstring(L, -1, &dlen);
            } else {
                lua_getfield(L, -1, "errno");
                rec.err = (int32_t)lua_tointeger(L, -1);
                lua_pop(L, 1);
                data = mg_load_snap_msg(L);
                dlen = strlen(data);
                if (rec.err == 0)
                    rec.err = EIO;
            }
            rec.pathlen = (uint32_t)plen;
            rec.len = dlen;
            ok = mg_load_snap_write_all(fd, &rec, sizeof(rec)) == MG_OK &&
                 mg_load_snap_write_all(fd, path, plen) == MG_OK &&
                 mg_load_snap_write_all(fd, data, dlen) == MG_OK;
            lua_pop(L, 1);
        }
        if (!ok)
            lua_pop(L, 1); /* the key lua_next left */
    }
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
    if (lua_istable(L, -1)) {
        int i, n = (int)lua_objlen(L, -1);
        for (i = 1; ok && i <= n; i++) {
            mg_load_snap_rec_t rec = {0, MG_SNAP_DIR_REC, 0};
            size_t plen;
            const char *dir;
            lua_rawgeti(L, -1, i);
            dir = lua_tolstring(L, -1, &plen);
            rec.pathlen = (uint32_t)plen;
            ok = dir == NULL || (mg_load_snap_write_all(fd, &rec, sizeof(rec)) == MG_OK &&
                                 mg_load_snap_write_all(fd, dir, plen) == MG_OK);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    /* the workers read it: no one may change it under them */
    if (ok && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0)
        ok = 0;
    if (!ok) {
        snprintf(err, errlen, "writing the snapshot: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int mg_load_snap_export(lua_State *L, char *err, size_t errlen) {
    int fd = mg_load_snap_write(L, err, errlen);
    if (fd >= 0)
        mg_load_snap_drop(L); /* the master keeps what a worker forked later requires */
    return fd;
}

int mg_load_snap_import(lua_State *L, int fd, char *err, size_t errlen) {
    struct stat st;
    const char *base, *p, *end;
    size_t bytes = 0;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(MG_SNAP_MAGIC) ||
        st.st_size > (off_t)MG_SNAP_MAX * 2) {
        snprintf(err, errlen, "snapshot: bad size");
        return MG_ERR;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "snapshot: mmap: %s", strerror(errno));
        return MG_ERR;
    }
    p = base;
    end = base + st.st_size;
    if (memcmp(p, MG_SNAP_MAGIC, sizeof(MG_SNAP_MAGIC)) != 0)
        goto bad;
    p += sizeof(MG_SNAP_MAGIC);
    lua_newtable(L); /* dirs */
    lua_newtable(L); /* files */
    while (p < end) {
        mg_load_snap_rec_t rec;
        if ((size_t)(end - p) < sizeof(rec))
            goto bad_pop;
        memcpy(&rec, p, sizeof(rec));
        p += sizeof(rec);
        if (rec.pathlen > (size_t)(end - p) || rec.len > (size_t)(end - p) - rec.pathlen)
            goto bad_pop;
        lua_pushlstring(L, p, rec.pathlen);
        if (rec.err == MG_SNAP_DIR_REC) {
            lua_rawseti(L, -3, (int)lua_objlen(L, -3) + 1);
            p += rec.pathlen + rec.len;
            continue;
        }
        if (rec.err == 0) {
            bytes += (size_t)rec.len;
            lua_pushlstring(L, p + rec.pathlen, (size_t)rec.len);
        } else {
            lua_createtable(L, 0, 2);
            lua_pushlstring(L, p + rec.pathlen, (size_t)rec.len);
            lua_setfield(L, -2, "msg");
            lua_pushinteger(L, rec.err);
            lua_setfield(L, -2, "errno");
        }
        lua_rawset(L, -3);
        p += rec.pathlen + rec.len;
    }
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
    mg_load_snap_set_bytes(L, bytes);
    munmap((void *)base, (size_t)st.st_size);
    return MG_OK;
bad_pop:
    lua_pop(L, 2);
bad:
    munmap((void *)base, (size_t)st.st_size);
    snprintf(err, errlen, "snapshot: corrupt");
    return MG_ERR;
}

/* Whether the files this state's load read (all it recorded) are exactly
 * those of the generation's snapshot at fd: the same bytes, or the same
 * error, for every path it looked at. If so the snapshot takes their place
 * (what require resolves from later, the snapshotted directories) and
 * MG_OK; else MG_ERR, the state as it was. A worker's early load then
 * serves as if it had loaded the snapshot (core/app/worker.c). */
int mg_load_snap_adopt(lua_State *L, int fd, char *err, size_t errlen) {
    int top = lua_gettop(L), mine, theirs, same = 1;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_BYTES);
    mine = top + 1;
    if (!lua_istable(L, mine) || mg_load_snap_import(L, fd, err, errlen) != MG_OK) {
        lua_settop(L, top);
        return MG_ERR;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    theirs = lua_gettop(L);
    lua_pushnil(L);
    while (same && lua_next(L, mine)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, theirs); /* key, mine, theirs */
        if (lua_type(L, -2) == LUA_TSTRING || lua_type(L, -1) == LUA_TSTRING) {
            same = lua_rawequal(L, -2, -1); /* strings are interned */
        } else if (lua_istable(L, -2) && lua_istable(L, -1)) {
            lua_getfield(L, -2, "errno");
            lua_getfield(L, -2, "errno");
            same = lua_rawequal(L, -2, -1);
            lua_pop(L, 2);
        } else {
            same = 0;
        }
        lua_pop(L, 2);
    }
    if (!same) {
        lua_pop(L, 1); /* the key lua_next left */
        snprintf(err, errlen, "the files changed between this load's reads and the snapshot's");
        /* put the state's own back */
        lua_pushvalue(L, mine);
        lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
        lua_pushvalue(L, mine + 1);
        lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_DIRS);
        lua_pushvalue(L, mine + 2);
        lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_BYTES);
        lua_settop(L, top);
        return MG_ERR;
    }
    lua_settop(L, top);
    mg_load_snap_drop(L);
    return MG_OK;
}
