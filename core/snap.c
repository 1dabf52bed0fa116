/*
 * snap.c -- a generation's files, read once. While a generation loads, the
 * Lua functions that read files (loadfile, dofile, io.open for reading,
 * io.lines, package.searchpath and require's Lua searcher) go through a
 * snapshot: a table path -> bytes (or the error the open gave) in the
 * state's registry. The master loads from an empty snapshot, which fills
 * from the disk as the loader reads; the snapshot then goes to every
 * worker in a sealed memfd, and a worker loads from it, so master and
 * workers compile the same bytes even if the files change meanwhile. A path
 * the master never looked at is read from the disk. Once the load is done
 * the wrappers read the disk again (a handler's io.open at run time sees
 * the file as it is then).
 */
#include "mg.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MG_SNAP_FILES "moongate.snap"  /* registry: path -> string | {msg, errno} */
#define MG_SNAP_ON "moongate.snap.on"  /* registry: true while a generation loads */
#define MG_SNAP_MAX (64 * 1024 * 1024) /* bytes of all files of one generation */
#define MG_SNAP_MAGIC "MGSNAP1"

/* An entry of the serialized snapshot: the header, then path and data. */
typedef struct {
    uint32_t pathlen;
    int32_t err; /* 0: data is the file; else errno, data is the message */
    uint64_t len;
} mg_snap_rec_t;

static int mg_snap_write_all(int fd, const void *p, size_t n);

static int mg_snap_on(lua_State *L) {
    int on;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
    on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return on;
}

static size_t mg_snap_total(lua_State *L) {
    size_t total = 0;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -1) == LUA_TSTRING)
                total += lua_objlen(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return total;
}

/* Reads path whole into a new Lua string on the stack, or returns errno. */
static int mg_snap_read_disk(lua_State *L, const char *path, size_t room) {
    struct stat st;
    luaL_Buffer b;
    int fd = open(path, O_RDONLY | O_CLOEXEC), e;
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        e = S_ISDIR(st.st_mode) ? EISDIR : errno;
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

/* Pushes the snapshot's entry for path and returns 1 if it is a file (a
 * string on the stack), 0 if it could not be opened (a table {msg, errno}).
 * A path not in the snapshot is read from the disk and recorded. */
static int mg_snap_fetch(lua_State *L, const char *path) {
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
        size_t total = mg_snap_total(L);
        lua_pop(L, 1);
        e = mg_snap_read_disk(L, path, total < MG_SNAP_MAX ? MG_SNAP_MAX - total : 0);
        if (e) {
            lua_createtable(L, 0, 2);
            lua_pushstring(L, e == EFBIG ? "the generation's files exceed 64 MiB" : strerror(e));
            lua_setfield(L, -2, "msg");
            lua_pushinteger(L, e);
            lua_setfield(L, -2, "errno");
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, path);
    }
    lua_remove(L, -2); /* files */
    return lua_type(L, -1) == LUA_TSTRING;
}

/* After a failed fetch: the message of the entry on the stack top. */
static const char *mg_snap_msg(lua_State *L) {
    const char *m;
    lua_getfield(L, -1, "msg");
    m = lua_tostring(L, -1);
    lua_pop(L, 1);
    return m ? m : "cannot open";
}

/* Loads path from the snapshot as a chunk. Pushes the function (0) or an
 * error message (non-zero), as luaL_loadfile does. */
static int mg_snap_loadfile(lua_State *L, const char *path, const char *mode) {
    int rc;
    if (!mg_snap_fetch(L, path)) {
        lua_pushfstring(L, "cannot open %s: %s", path, mg_snap_msg(L));
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
static int mg_snap_loadfile_cb(lua_State *L) {
    const char *path = luaL_optstring(L, 1, NULL);
    const char *mode = luaL_optstring(L, 2, NULL);
    int env = !lua_isnone(L, 3);
    if (path == NULL || !mg_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    if (mg_snap_loadfile(L, path, mode) != 0) {
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
static int mg_snap_dofile_cb(lua_State *L) {
    const char *path = luaL_optstring(L, 1, NULL);
    int top;
    if (path == NULL || !mg_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    if (mg_snap_loadfile(L, path, NULL) != 0)
        return lua_error(L);
    top = lua_gettop(L) - 1;
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - top;
}

/* A file handle (pushed) reading the bytes at index data, or 0: a memfd
 * opened again through /proc (no writable filesystem needed), else a
 * temporary file. Every method of a file handle works on it. */
static int mg_snap_handle(lua_State *L, int data) {
    char p[64];
    size_t len;
    const char *d = lua_tolstring(L, data, &len);
    int fd = memfd_create("moongate-file", MFD_CLOEXEC);
    if (fd >= 0) {
        int ok = mg_snap_write_all(fd, d, len) == MG_OK;
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
static int mg_snap_open_cb(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    if (!mg_snap_on(L) || strpbrk(mode, "wa+") != NULL) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    if (!mg_snap_fetch(L, path)) {
        const char *m = mg_snap_msg(L); /* held by the entry at 2 */
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, m);
        lua_getfield(L, 2, "errno");
        return 3;
    }
    if (!mg_snap_handle(L, 2)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: cannot open a copy of the generation's snapshot", path);
        return 2;
    }
    return 1;
}

/* io.lines([filename]); upvalue 1: the original, 2: our io.open. */
static int mg_snap_lines_cb(lua_State *L) {
    if (lua_isnoneornil(L, 1) || !mg_snap_on(L)) {
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

/* package.searchpath over the snapshot: pushes the file name, or nil and
 * the "no file" list. */
static int mg_snap_search(lua_State *L, const char *name, const char *path, const char *sep,
                          const char *rep) {
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
        if (mg_snap_fetch(L, lua_tostring(L, -1))) {
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
static int mg_snap_searchpath_cb(lua_State *L) {
    const char *name = luaL_checkstring(L, 1), *path = luaL_checkstring(L, 2);
    const char *sep = luaL_optstring(L, 3, "."), *rep = luaL_optstring(L, 4, "/");
    int top = lua_gettop(L);
    if (!mg_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, top, LUA_MULTRET);
        return lua_gettop(L);
    }
    return mg_snap_search(L, name, path, sep, rep) == 1 ? 1 : 2;
}

/* require's Lua searcher (package.loaders[2]); upvalue 1: the original. */
static int mg_snap_searcher_cb(lua_State *L) {
    const char *name = luaL_checkstring(L, 1), *file;
    if (!mg_snap_on(L)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, 1);
        return 1;
    }
    lua_settop(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    if (!lua_isstring(L, -1))
        return luaL_error(L, "'package.path' must be a string");
    if (mg_snap_search(L, name, lua_tostring(L, -1), ".", "/") != 1)
        return 1; /* the "no file" list */
    file = lua_tostring(L, -1);
    if (mg_snap_loadfile(L, file, NULL) != 0)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file,
                          lua_tostring(L, -1));
    return 1;
}

/* Replaces t[k] by cb with the old value as upvalue 1 and, if extra is not
 * 0, the value at index extra as upvalue 2. */
static void mg_snap_wrap(lua_State *L, int t, const char *k, lua_CFunction cb, int extra) {
    lua_getfield(L, t, k);
    if (extra)
        lua_pushvalue(L, extra);
    lua_pushcclosure(L, cb, extra ? 2 : 1);
    lua_setfield(L, t, k);
}

void mg_snap_install(lua_State *L) {
    int top = lua_gettop(L), io, pkg;
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    mg_snap_wrap(L, top + 1, "loadfile", mg_snap_loadfile_cb, 0);
    mg_snap_wrap(L, top + 1, "dofile", mg_snap_dofile_cb, 0);
    lua_getglobal(L, "io");
    io = lua_gettop(L);
    lua_getfield(L, io, "tmpfile");
    mg_snap_wrap(L, io, "open", mg_snap_open_cb, lua_gettop(L));
    lua_getfield(L, io, "open");
    mg_snap_wrap(L, io, "lines", mg_snap_lines_cb, lua_gettop(L));
    lua_getglobal(L, "package");
    pkg = lua_gettop(L);
    mg_snap_wrap(L, pkg, "searchpath", mg_snap_searchpath_cb, 0);
    lua_getfield(L, pkg, "loaders");
    if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, 2);
        lua_pushcclosure(L, mg_snap_searcher_cb, 1);
        lua_rawseti(L, -2, 2);
    }
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
    lua_settop(L, top);
}

void mg_snap_stop(lua_State *L) {
    lua_pushboolean(L, 0);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_ON);
}

void mg_snap_drop(lua_State *L) {
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
}

static int mg_snap_write_all(int fd, const void *p, size_t n) {
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

int mg_snap_export(lua_State *L, char *err, size_t errlen) {
    int fd = memfd_create("moongate-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING), ok = 1;
    if (fd < 0) {
        snprintf(err, errlen, "memfd_create: %s", strerror(errno));
        return -1;
    }
    ok = mg_snap_write_all(fd, MG_SNAP_MAGIC, sizeof(MG_SNAP_MAGIC)) == MG_OK;
    lua_getfield(L, LUA_REGISTRYINDEX, MG_SNAP_FILES);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (ok && lua_next(L, -2)) {
            mg_snap_rec_t rec = {0, 0, 0};
            size_t plen, dlen = 0;
            const char *path = lua_tolstring(L, -2, &plen), *data;
            if (lua_type(L, -1) == LUA_TSTRING) {
                data = lua_tolstring(L, -1, &dlen);
            } else {
                lua_getfield(L, -1, "errno");
                rec.err = (int32_t)lua_tointeger(L, -1);
                lua_pop(L, 1);
                data = mg_snap_msg(L);
                dlen = strlen(data);
                if (rec.err == 0)
                    rec.err = EIO;
            }
            rec.pathlen = (uint32_t)plen;
            rec.len = dlen;
            ok = mg_snap_write_all(fd, &rec, sizeof(rec)) == MG_OK &&
                 mg_snap_write_all(fd, path, plen) == MG_OK &&
                 mg_snap_write_all(fd, data, dlen) == MG_OK;
            lua_pop(L, 1);
        }
        if (!ok)
            lua_pop(L, 1); /* the key lua_next left */
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
    mg_snap_drop(L);
    return fd;
}

int mg_snap_import(lua_State *L, int fd, char *err, size_t errlen) {
    struct stat st;
    const char *base, *p, *end;
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
    lua_newtable(L);
    while (p < end) {
        mg_snap_rec_t rec;
        if ((size_t)(end - p) < sizeof(rec))
            goto bad_pop;
        memcpy(&rec, p, sizeof(rec));
        p += sizeof(rec);
        if (rec.pathlen > (size_t)(end - p) || rec.len > (size_t)(end - p) - rec.pathlen)
            goto bad_pop;
        lua_pushlstring(L, p, rec.pathlen);
        if (rec.err == 0) {
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
    munmap((void *)base, (size_t)st.st_size);
    return MG_OK;
bad_pop:
    lua_pop(L, 1);
bad:
    munmap((void *)base, (size_t)st.st_size);
    snprintf(err, errlen, "snapshot: corrupt");
    return MG_ERR;
}
