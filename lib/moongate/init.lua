-- moongate: the module handlers and plugins use (`local moongate = require "moongate"`).
-- The C core provides `moongate.core`; this file gives it a friendly shape and
-- registers the coroutine entry point the core starts every Lua handler with.
local core = require "moongate.core"
local cjson = require "cjson.safe"
local new_tab = require "table.new" -- LuaJIT: a table with its hash part sized
local cjson_strict = require "cjson" -- raises: an unencodable response is a 500

local type = type
local pairs = pairs
local tostring = tostring
local concat = table.concat
local char = string.char
local floor = math.floor
local ceil = math.ceil
local tonumber = tonumber
local gsub = string.gsub
local find = string.find
local sub = string.sub
local setmetatable = setmetatable
local getmetatable = getmetatable
local select = select
local next = next
local lower = string.lower
local ipairs = ipairs
local match = string.match
local upper = string.upper
local format = string.format
local sort = table.sort
local rawget = rawget
local getfenv = getfenv
local error = error
local hints = require "moongate.hints"

local _M = { _VERSION = core.version, core = core, json = cjson }

-- MOONGATE_JIT_LOG=path: LuaJIT's trace events (as -jv prints them) appended
-- to path, one line each, prefixed with the worker (docs/performance.md)
do
  local jit_log = os.getenv("MOONGATE_JIT_LOG")
  if jit_log and jit_log ~= "" then
    require("moongate.jitlog").start(jit_log, function() return "w" .. core.worker_id() end)
  end
end

-- The FFI side of the core (core/lua/lua_ffi.c): plain C functions of the
-- binary, called through ffi.C so that the hooks calling them compile
-- into traces (a classic C function stops a trace). Declared once per
-- Lua state; the names are moongate's (mg_lua_ffi_*).
local ffi = require "ffi"
local C = ffi.C
local ffi_string = ffi.string
if not pcall(ffi.typeof, "mg_lua_ffi_str_t") then
  ffi.cdef [[
typedef struct mg_lua_ffi_str_s { const char *p; size_t n; } mg_lua_ffi_str_t;
typedef struct { const char *name, *value; size_t nlen, vlen; } mg_lua_ffi_kv_t;
int mg_lua_ffi_req_header(int64_t r, const char *name, size_t nl, mg_lua_ffi_str_t *out);
int mg_lua_ffi_req_headers(int64_t r, mg_lua_ffi_kv_t *out, int cap, int *oom);
int mg_lua_ffi_req_params(int64_t r, mg_lua_ffi_kv_t *out, int cap);
int mg_lua_ffi_req_query(int64_t r, mg_lua_ffi_str_t *out);
const char *mg_lua_ffi_req_id(int64_t r);
const char *mg_lua_ffi_req_remote_addr(int64_t r);
int mg_lua_ffi_req_set_header(int64_t r, int resp, const char *n, size_t nl, const char *v, size_t vl);
int mg_lua_ffi_req_set_header_num(int64_t r, int resp, const char *n, size_t nl, double d);
int mg_lua_ffi_shdict_take(void *ud, const char *k, size_t kl, double rate, double burst,
                           double cost, double *out);
long mg_lua_ffi_unescape(const char *s, size_t n, char *out);
long mg_lua_ffi_escape(const char *s, size_t n, char *out);
double mg_lua_ffi_now(void);
int mg_lua_ffi_res_begin(void);
int mg_lua_ffi_res_header(const char *n, size_t nl, const char *v, size_t vl);
void mg_lua_ffi_res_send(int status, const char *body, size_t blen, const char *ct, size_t ctl);
int mg_lua_ffi_proxy(const char *u, size_t ul, const char *path, size_t pl, const char *q,
                     size_t ql, double timeout, const char *ct, size_t cl, int flags, int *slot);
int mg_lua_ffi_proxy_header(const char *n, size_t nl, const char *v, size_t vl);
]]
end
-- in the binary; not when a spec loads this file under plain LuaJIT
local HAS_C = pcall(function() return C.mg_lua_ffi_escape end)
-- every symbol looked up once now: a trace that reaches one not yet in
-- ffi.C's cache aborts ("symbol not in cache"), which a slow first run of a
-- hook (an ASan build) can hit before the interpreter ever called it
if HAS_C then
  for _, name in ipairs({
    "mg_lua_ffi_req_header", "mg_lua_ffi_req_headers", "mg_lua_ffi_req_params",
    "mg_lua_ffi_req_query", "mg_lua_ffi_req_id", "mg_lua_ffi_req_remote_addr",
    "mg_lua_ffi_req_set_header", "mg_lua_ffi_req_set_header_num", "mg_lua_ffi_shdict_take",
    "mg_lua_ffi_unescape", "mg_lua_ffi_escape", "mg_lua_ffi_now", "mg_lua_ffi_res_begin",
    "mg_lua_ffi_res_header", "mg_lua_ffi_res_send", "mg_lua_ffi_proxy", "mg_lua_ffi_proxy_header",
  }) do
    local _ = C[name]
  end
end

-- cached out-parameters and buffers (one Lua state runs one thing at a time)
local str_out = ffi.new("mg_lua_ffi_str_t[1]")
local int_out = ffi.new("int[1]")
local kv_cap = 64 -- grows to the largest header count seen; >= the route params' 32
local kv_out = ffi.new("mg_lua_ffi_kv_t[?]", kv_cap)
local esc_cap = 512
local esc_buf = ffi.new("char[?]", esc_cap)

-- a buffer of n bytes: the cached one, grown up to 64 KiB; a bigger string
-- gets one of its own (collected with it), so the cache stays small
local ESC_KEEP = 65536
local function esc_room(n)
  if n > esc_cap then
    if n > ESC_KEEP then return ffi.new("char[?]", n) end
    esc_cap = n
    esc_buf = ffi.new("char[?]", n)
  end
  return esc_buf
end

local unescape, escape
if HAS_C then
  unescape = function(s)
    local n = #s
    local buf = esc_room(n)
    local m = C.mg_lua_ffi_unescape(s, n, buf)
    if m < 0 then return s end
    return ffi_string(buf, m)
  end
  escape = function(s)
    s = tostring(s)
    local n = #s
    local buf = esc_room(3 * n)
    local m = C.mg_lua_ffi_escape(s, n, buf)
    if m < 0 then return s end
    return ffi_string(buf, m)
  end
else
  unescape = function(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
  end
  escape = function(s)
    return (gsub(tostring(s), "[^%w%-%._~]", function(c)
      return string.format("%%%02X", c:byte())
    end))
  end
end
_M.unescape, _M.escape = unescape, escape

--- Decodes "a=1&b=2" into { a = "1", b = "2" } (a repeated key keeps the last value).
--- The second result is nil, or the set of names given more than once.
function _M.decode_query(qs)
  local t, repeated = {}, nil
  if not qs or qs == "" then return t end
  local pos, n = 1, #qs
  while pos <= n do
    local amp = find(qs, "&", pos, true) or n + 1
    if amp > pos then
      local eq = find(qs, "=", pos, true)
      local k, v
      if eq and eq < amp then
        k, v = unescape(sub(qs, pos, eq - 1)), unescape(sub(qs, eq + 1, amp - 1))
      else
        k, v = unescape(sub(qs, pos, amp - 1)), ""
      end
      if t[k] ~= nil then
        repeated = repeated or {}
        repeated[k] = true
      end
      t[k] = v
    end
    pos = amp + 1
  end
  return t, repeated
end

function _M.encode_query(t)
  if type(t) == "string" then return t end
  local out = {}
  for k, v in pairs(t) do
    out[#out + 1] = escape(k) .. "=" .. escape(v)
  end
  if #out > 1 then table.sort(out) end -- one pair (the usual query): no sort, no stitch
  return concat(out, "&")
end

-- request objects: tables built by the core with method and path, their
-- request's id under core.req_key (a number the FFI calls take; false once
-- the request is over, absent once every field below was filled for a
-- handler that outlives it); the fields below are made on first read.
local REQ_KEY = core.req_key
local OVER = " the request is over (read it while the request runs; copy what a timer needs)"
local OVER_RC = -2 -- lua_ffi.c's MG_FFI_OVER: an id whose request is gone

local function over(what, name, level)
  error("req" .. what .. name .. ":" .. OVER, level + 1)
end

-- The id of req's request, for the FFI calls, or nil when the table was
-- filled (the request may be gone); raises once the request is over.
local function req_of(req, what, name, fname, level)
  if type(req) ~= "table" then
    error(format("bad argument #1 to '%s' (table expected, got %s)", fname, type(req)), level)
  end
  local r = rawget(req, REQ_KEY)
  if r == false then over(what, name, level) end
  return r
end

local function arg_string(v, n, fname, level)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return tostring(v) end
  error(format("bad argument #%d to '%s' (string expected, got %s)", n, fname,
    v == nil and "no value" or tv), level)
end

-- lazy fields read through the FFI: f(r) -> value
local function kv_table(n)
  local t = new_tab(0, n)
  for i = 0, n - 1 do
    local kv = kv_out[i]
    local k, v = ffi_string(kv.name, kv.nlen), ffi_string(kv.value, kv.vlen)
    local old = t[k]
    if old then v = old .. ", " .. v end -- a repeated header: joined with ", "
    t[k] = v
  end
  return t
end

-- f(r, k) -> value; raises "the request is over" for an id whose request
-- is gone (a number copied out of its table)
local function ffi_str(p, k)
  if p == nil then over(".", k, 3) end
  return ffi_string(p)
end
local FFI_LAZY = {
  headers = function(r, k)
    local n = C.mg_lua_ffi_req_headers(r, kv_out, kv_cap, int_out)
    if n < 0 then
      kv_cap = -n
      kv_out = ffi.new("mg_lua_ffi_kv_t[?]", kv_cap)
      n = C.mg_lua_ffi_req_headers(r, kv_out, kv_cap, int_out)
    end
    local rc = int_out[0]
    if rc ~= 0 then
      if rc == OVER_RC then over(".", k, 2) end
      error("out of memory", 3)
    end
    return kv_table(n) -- names lower-case
  end,
  params = function(r, k)
    local n = C.mg_lua_ffi_req_params(r, kv_out, kv_cap)
    if n == OVER_RC then over(".", k, 2) end
    return kv_table(n)
  end,
  query_string = function(r, k)
    if C.mg_lua_ffi_req_query(r, str_out) ~= 0 then over(".", k, 2) end
    return ffi_string(str_out[0].p, str_out[0].n)
  end,
  id = function(r, k) return ffi_str(C.mg_lua_ffi_req_id(r), k) end,
  remote_addr = function(r, k) return ffi_str(C.mg_lua_ffi_req_remote_addr(r), k) end,
}
-- and through the classic core.req_fill (cold)
local LAZY = { http_version = true, websocket = true, scheme = true, tls = true }

local req_mt = {}
req_mt.__index = function(req, k)
  local m = req_mt[k]
  if m ~= nil then return m end
  local f = FFI_LAZY[k]
  if f then
    local r = req_of(req, ".", k, "req_fill", 3)
    if r == nil then return nil end
    local v = f(r, k)
    rawset(req, k, v)
    return v
  end
  if LAZY[k] then return core.req_fill(req, k) end
  if k == "ctx" then -- made on first use: a hook that keeps nothing allocates nothing
    local ctx = new_tab(0, 4) -- sized for a few plugins' keys
    rawset(req, "ctx", ctx)
    return ctx
  end
  if k == "query" or k == "query_repeated" then
    local q, repeated = _M.decode_query(req.query_string)
    req.query = q
    req.query_repeated = repeated or false
    return rawget(req, k)
  end
end
--- The client's header `name` (any case) as received, repeated ones joined
--- with ", "; nil when absent. Cheaper than req.headers for one header.
function req_mt.header(req, name)
  name = arg_string(name, 2, "header", 3)
  local r = req_of(req, ":header()", "", "header", 3)
  if r == nil then -- every field filled: read req.headers
    return req.headers[lower(name)]
  end
  local found = C.mg_lua_ffi_req_header(r, name, #name, str_out)
  if found == 1 then return ffi_string(str_out[0].p, str_out[0].n) end
  if found == 0 then return nil end
  if found == OVER_RC then over(":header()", "", 2) end
  error("out of memory", 2)
end
function req_mt.body() return core.req_body() end
function req_mt.read() return core.req_read() end

local SET_ERR = { "bad header ", "req: ", "out of memory" }
-- Names lua_ffi.c found to be tokens and not hop-by-hop (its answer 5 to
-- flag 4): passed again with flag 2, their checks are skipped. Plugins set
-- the same few names on every request. Emptied past NAME_OK_MAX.
local NAME_OK, name_ok_n, NAME_OK_MAX = {}, 0, 512
local function set_header(req, name, value, resp, what)
  name = arg_string(name, 2, what, 4)
  local r = req_of(req, what, "", what, 4) or -1 -- -1: filled, the request went on
  local tv, rc = type(value), nil
  resp = resp + (NAME_OK[name] and 2 or 4)
  if tv == "number" then
    rc = C.mg_lua_ffi_req_set_header_num(r, resp, name, #name, value)
  elseif tv == "string" then
    rc = C.mg_lua_ffi_req_set_header(r, resp, name, #name, value, #value)
  elseif value == nil then
    rc = C.mg_lua_ffi_req_set_header(r, resp, name, #name, nil, 0)
  else
    error(format("bad argument #3 to '%s' (string expected, got %s)", what, tv), 4)
  end
  if rc == 5 then
    if name_ok_n >= NAME_OK_MAX then NAME_OK, name_ok_n = {}, 0 end
    NAME_OK[name] = true
    name_ok_n = name_ok_n + 1
  elseif rc ~= 0 then
    if rc == OVER_RC then over(what, "", 3) end
    error(rc == 3 and SET_ERR[3]
          or SET_ERR[rc] .. name .. (rc == 2 and " after the request went on" or ""), 4)
  end
end
--- Sets a header for the upstream (proxy, and WebSocket relay/tunnel
--- handshakes), replacing the client's; a nil value removes the client's.
function req_mt.set_header(req, name, value)
  set_header(req, name, value, 0, ":set_header()")
end
--- Sets a header on the response the client gets (from an access hook:
--- proxied and handler responses, and a later hook's refusal), replacing
--- the upstream's of that name; header_filter hooks still see it.
function req_mt.set_response_header(req, name, value)
  set_header(req, name, value, 1, ":set_response_header()")
end

-- header_filter hooks: res = { status, headers } edited in place.
local HOP = {
  connection = true, ["keep-alive"] = true, te = true, trailer = true,
  ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
}

-- res.headers is a proxy: reading a name (any case) sees the response's
-- header, writing records a change (nil removes). Nothing is copied unless a
-- hook asks, so a filter that only adds a header stays cheap.
local function header_proxy(lookup)
  local changes = {}
  return setmetatable({}, {
    __index = function(_, k)
      k = lower(k)
      local v = changes[k]
      if v ~= nil then return v or nil end
      return lookup(k)
    end,
    __newindex = function(_, k, v)
      if v == nil then v = false end -- false marks a removal
      changes[lower(k)] = v
    end,
  }), changes
end

-- Handler responses: headers is a table (lower-case names), edited in place.
local function filter_head(list, status, headers, ctx)
  headers = headers or {}
  local proxy, changes = header_proxy(function(k) return headers[k] end)
  local res = { status = status, headers = proxy }
  for i = 1, #list do list[i](res, ctx) end
  for k, v in pairs(changes) do headers[k] = v or nil end
  return res.status, headers
end

local function lower_keys(h)
  local out = {}
  for k, v in pairs(h or {}) do out[tostring(k):lower()] = v end
  return out
end

local res_mt = {}
res_mt.__index = res_mt
function res_mt:status(n) self._status = n; return self end
function res_mt:header(name, value)
  self._headers = self._headers or {}
  self._headers[name] = value
  return self
end
function res_mt:write(chunk)
  if not self.started and self._filter then
    -- req:set_response_header()'s headers, for the filters to see
    local h = core.resp_headers_into(lower_keys(self._headers))
    self._status, self._headers = filter_head(self._filter, self._status or 200, h, self._ctx)
  end
  self.started = true
  return core.res_write(self._status or 200, self._headers, tostring(chunk))
end

local function encode_body(body)
  if type(body) == "table" then
    return cjson_strict.encode(body), "application/json"
  elseif body == nil then
    return "", nil
  end
  return tostring(body), "text/plain; charset=utf-8"
end

-- res_send(status, body, headers, default_ctype): the response in one go,
-- its head built in C header by header (lua_ffi.c); a response already
-- started is left alone.
local RES_ERR = {
  "response: only inside a handler or timer (not at load time or in a nested coroutine)",
  "response: no request in a timer", "out of memory",
}
local function res_send(status, body, headers, ctype)
  local st = C.mg_lua_ffi_res_begin()
  if st ~= 0 and st ~= 4 then error(RES_ERR[st], 2) end
  local s = tonumber(status)
  if s == nil then
    error(format("bad argument #1 to 'res_send' (number expected, got %s)", type(status)), 2)
  end
  s = s >= 0 and floor(s) or ceil(s)
  if s < 100 or s > 999 then error(format("bad status %d", s), 2) end
  if st == 4 then return end
  if type(headers) == "table" then
    for k, v in pairs(headers) do
      local tk, tv = type(k), type(v)
      if tk == "number" then k = tostring(k) elseif tk ~= "string" then k = nil end
      if tv == "number" then v = tostring(v) elseif tv ~= "string" then v = nil end
      if k == nil or v == nil or C.mg_lua_ffi_res_header(k, #k, v, #v) ~= 0 then
        error("bad response header " .. (k and sub(k, 1, 63) or "?"), 2)
      end
    end
  end
  if type(ctype) ~= "string" then ctype = nil end
  C.mg_lua_ffi_res_send(s, body, #body, ctype, ctype and #ctype or 0)
end

-- The core starts every handler coroutine here: handler(req, res), then the
-- response from its return values (status, body, headers) unless it streamed.
local function respond(status, body, headers, res)
  -- moongate.proxy{...}'s result: the C proxy takes the request (a hook's:
  -- the later hooks and the handler do not run)
  if status == _M.PROXIED then return end
  local data, ctype = encode_body(body)
  if type(status) ~= "number" then
    status = res and res._status or 200
  end
  if res and res._headers then
    headers = headers or {}
    for k, v in pairs(res._headers) do
      if headers[k] == nil then headers[k] = v end
    end
  end
  if res and res._filter then
    headers = core.resp_headers_into(lower_keys(headers))
    if ctype and headers["content-type"] == nil then headers["content-type"] = ctype end
    status, headers = filter_head(res._filter, status, headers, res._ctx)
  end
  res_send(status, data, headers, ctype)
end

-- A route's access list as one function, hook calling hook, made on first
-- use: no loop of a few iterations, which LuaJIT would leave interpreted
-- ("leaving loop in root trace"); the hooks inline into one trace. The
-- lists are the loader's, never changed after a load.
local function no_hook() return nil end
local chains = setmetatable({}, { __mode = "k" })
local function chain_of(access)
  local fn = no_hook
  for i = #access, 1, -1 do
    local hook, rest = access[i], fn
    fn = function(req)
      local status, body, headers = hook(req)
      if status ~= nil then return status, body, headers end
      return rest(req)
    end
  end
  chains[access] = fn
  return fn
end

-- Access hooks in order; the first to return a status answers (through
-- the route's header_filter hooks, so a refusal gets CORS headers too).
local function check_access(access, req, header_filter)
  local status, body, headers = (chains[access] or chain_of(access))(req)
  if status ~= nil then
    respond(status, body, headers,
            header_filter and { _filter = header_filter, _ctx = req.ctx } or nil)
    return false
  end
  return true
end

-- The req table of a request whose coroutine starts here (lua_api.c's
-- mg_lua_co_for_req): the core passes its parts, the method's number, the
-- path, the request's id and the slot that anchors the table until the
-- request ends (made here in compiled Lua, it costs less than field by
-- field through the C API), or the table itself (path nil) when it has one.
local REQS = debug.getregistry()["moongate.reqs"] -- the core's, by slot
local METHODS = core.methods -- llhttp's method numbers -> names
local function req_new(m, path, id, slot)
  if path == nil then return m end
  -- method, path, the id and ctx, and room for four lazy fields (the
  -- query's three and the params: the seed's auth hook reads them)
  local req = new_tab(0, 8)
  req.method = METHODS[m]
  req.path = path
  req[REQ_KEY] = id
  REQS[slot] = req
  return setmetatable(req, req_mt)
end

-- Upstream and WebSocket routes: the hooks run in a coroutine of their own.
debug.getregistry()["moongate.run_access"] = function(access, m, path, id, slot, header_filter)
  -- req comes with its metatable (req_mt): req.ctx is made when first read
  -- true: every hook allowed it (the core reads the coroutine's result)
  return check_access(access, req_new(m, path, id, slot), header_filter)
end

-- For proxied responses: the edited head as "Name: value\r\n" text.
-- Proxied responses: `lines` is the head as "Name: value\r\n" text. Returns
-- the status, the names to drop ("\nname\n..."; every changed name) and
-- the lines to add.
debug.getregistry()["moongate.run_header_filter"] = function(list, status, lines, ctx)
  local lowered
  local proxy, changes = header_proxy(function(k)
    lowered = lowered or "\n" .. lower(lines)
    local at = find(lowered, "\n" .. k .. ": ", 1, true)
    if not at then return nil end
    local from = at + #k + 2 -- in `lines`, shifted by the leading "\n"
    return sub(lines, from, (find(lines, "\r", from, true) or #lines + 1) - 1)
  end)
  local res = { status = status, headers = proxy }
  for i = 1, #list do list[i](res, ctx) end
  if next(changes) == nil then return res.status, "", "" end
  local drop, add = { "\n" }, {}
  for name, v in pairs(changes) do
    drop[#drop + 1] = name .. "\n"
    if v and not HOP[name] and not find(name, "^proxy%-") and name ~= "date" then
      local vals = type(v) == "table" and v or { v }
      for _, one in ipairs(vals) do
        one = tostring(one)
        -- a token name; no control character but HTAB in a value (RFC 9110 5.5)
        if not find(name, "^[%w!#$%%&'*+.^_`|~-]+$") or find(one, "[%z\1-\8\10-\31\127]") then
          error("header_filter: bad header " .. name, 0)
        end
        add[#add + 1] = name .. ": " .. one .. "\r\n"
      end
    end
  end
  return res.status, concat(drop), concat(add)
end

debug.getregistry()["moongate.run_hooks"] = function(list, info, ctx)
  for i = 1, #list do list[i](info, ctx) end
end

local function run(handler, m, path, id, slot, access, header_filter)
  local req = req_new(m, path, id, slot)
  req.ctx = new_tab(0, 4)
  if access and not check_access(access, req, header_filter) then return end
  local res = setmetatable({ _filter = header_filter, _ctx = req.ctx }, res_mt)
  local status, body, headers = handler(req, res)
  if res.started then return end
  respond(status, body, headers, res)
end
debug.getregistry()["moongate.run"] = run
debug.getregistry()["moongate.req_mt"] = req_mt

--- moongate.proxy{ upstream = name, path = "/p", query = t | "a=1" | false,
--- headers = { Name = "v", Other = false }, timeout = s, content_type = "json",
--- on_error = function(status, reason, req) return status, body, headers end }
--- Hands the request to the C proxy, which streams both bodies; a handler
--- or an access hook returns its result. Only `upstream` is required; the
--- others default to the client's path and query, its headers, the
--- upstream's timeouts, any content type and the proxy's JSON errors.
--- docs/configuration.md ("moongate.proxy").
local PROXIED = setmetatable({}, { __tostring = function() return "moongate.proxy" end })
_M.PROXIED = PROXIED -- what it returns: respond() lets the C proxy answer
-- The usual call through the FFI (lua_proxy.c's mg_lua_ffi_proxy): from a
-- request's coroutine (COS: the core's, by thread), arguments of the types
-- core.proxy takes. true: the plan is recorded; false: core.proxy takes the
-- call (its checks and messages), C having changed nothing it would not.
local COS = debug.getregistry()["moongate.cos"]
local PROXY_ERRS = debug.getregistry()["moongate.proxy_errs"]
local co_running = coroutine.running
local slot_out = ffi.new("int[1]")
local function proxy_ffi(u, path, q, headers, timeout, ctype, on_error)
  if type(u) ~= "string" or not COS or not COS[co_running()] then return false end
  local flags = 0
  if path ~= nil and type(path) ~= "string" then return false end
  if q == false then
    q, flags = "", 1
  elseif q ~= nil then
    if type(q) ~= "string" then return false end
    flags = 1
  end
  if timeout ~= nil then
    if type(timeout) ~= "number" then return false end
    flags = flags + 2
  end
  if ctype ~= nil and type(ctype) ~= "string" then return false end
  if on_error ~= nil then
    if type(on_error) ~= "function" then return false end
    flags = flags + 4
  end
  if headers ~= nil and type(headers) ~= "table" then return false end
  if C.mg_lua_ffi_proxy(u, #u, path, path and #path or 0, q, q and #q or 0, timeout or 0,
                        ctype, ctype and #ctype or 0, flags, slot_out) ~= 0 then
    return false
  end
  if headers ~= nil then
    for k, v in pairs(headers) do
      -- a number value (written by core.proxy), a bad name or value: core.proxy
      if type(k) ~= "string" then return false end
      local rc = 1
      if type(v) == "string" then
        rc = C.mg_lua_ffi_proxy_header(k, #k, v, #v)
      elseif v == false then
        rc = C.mg_lua_ffi_proxy_header(k, #k, nil, 0)
      end
      if rc ~= 0 then return false end
    end
  end
  if on_error ~= nil then PROXY_ERRS[slot_out[0]] = on_error end
  return true
end

function _M.proxy(opts)
  if type(opts) ~= "table" then opts = { upstream = opts } end
  local q = opts.query
  if type(q) == "table" then q = _M.encode_query(q) end
  local u, path, headers, timeout, ctype, on_error = opts.upstream, opts.path, opts.headers,
    opts.timeout, opts.content_type, opts.on_error
  if not (HAS_C and proxy_ffi(u, path, q, headers, timeout, ctype, on_error)) then
    core.proxy(u, path, q, headers, timeout, ctype, on_error)
  end
  return PROXIED
end

-- moongate.proxy's on_error, called by the core outside any coroutine (it
-- must not yield): its answer as the status, body, headers and the body's
-- default content type.
debug.getregistry()["moongate.proxy_error"] = function(fn, status, reason, req)
  local st, body, headers = fn(status, reason, req)
  local data, ctype = encode_body(body)
  return type(st) == "number" and st or status, data, headers, ctype
end

-- moongate.http: a non-blocking client; the calling coroutine yields until
-- the response (or an error) arrives.
local http = {}
_M.http = http

-- A streamed response (stream = true): resp:read() -> the next chunk, nil at
-- the end (or nil, err); resp:close() drops the rest.
local stream_mt = { __index = {
  read = function(self) return core.http_read(self._stream) end,
  close = function(self) return core.http_close(self._stream) end,
} }

--- opts: method, upstream (name) or url ("http[s]://host:port"), path, query
--- (table or string), headers, body (string, or table sent as JSON), timeout (s),
--- max_body (bytes, buffered responses; default 16 MiB), stream (boolean).
--- Returns resp { status, headers, body } or nil, err.
function http.request(opts)
  local method = opts.method or "GET"
  local target = opts.path or "/"
  if opts.query then
    local q = _M.encode_query(opts.query)
    if q ~= "" then target = target .. (find(target, "?", 1, true) and "&" or "?") .. q end
  end
  local body, headers = opts.body, opts.headers
  if type(body) == "table" then
    body = cjson.encode(body)
    headers = headers or {}
    local has = false
    for k in pairs(headers) do
      if k:lower() == "content-type" then has = true end
    end
    if not has then headers["Content-Type"] = "application/json" end
  end
  local url = opts.url
  if url then
    local base, path = url:match("^(https?://[^/]+)(/.*)$")
    if base then
      url = base
      if not opts.path then target = path end
    end
  end
  if opts.stream then
    local resp, err = core.http_request(method, opts.upstream, url, target, headers, body,
      opts.timeout, opts.max_body, true)
    if not resp then return nil, err end
    return setmetatable(resp, stream_mt)
  end
  return core.http_request(method, opts.upstream, url, target, headers, body, opts.timeout,
    opts.max_body)
end

function http.get(upstream, path, opts)
  opts = opts or {}
  opts.method = "GET"
  if find(upstream, "^https?://") then opts.url = upstream else opts.upstream = upstream end
  opts.path = path
  return http.request(opts)
end

--- Decodes a response body as JSON: returns value or nil, err.
function http.json(resp)
  if not resp then return nil, "no response" end
  return cjson.decode(resp.body)
end

_M.crypto = core.crypto
-- moongate.socket.tcp(): cosockets as OpenResty's ngx.socket.tcp (core/lua/lua_socket.c)
_M.socket = core.socket

-- moongate.shared.<name>: the conf's shared_dicts, opened on first use
_M.shared = setmetatable({}, { __index = function(t, name)
  local d = core.shdict(name)
  if d then rawset(t, name, d) end
  return d
end })

-- d:take() through the FFI: rate-limit calls it on every request
do
  local mt = debug.getregistry()["moongate.shdict"]
  if HAS_C and type(mt) == "table" and mt.take then
    local take_out = ffi.new("double[2]")
    local function num(v, n, fname)
      local x = tonumber(v)
      if x == nil then
        error(format("bad argument #%d to '%s' (number expected, got %s)", n, fname,
          v == nil and "no value" or type(v)), 3)
      end
      return x
    end
    mt.take = function(d, k, rate, burst, cost)
      if getmetatable(d) ~= mt then
        error(format("bad argument #1 to 'take' (moongate.shdict expected, got %s)", type(d)), 2)
      end
      k = arg_string(k, 2, "take", 3)
      local kl = #k
      if kl == 0 or kl > 200 then error("shared dict: key length must be 1 to 200 bytes", 2) end
      rate, burst = num(rate, 3, "take"), num(burst, 4, "take")
      cost = cost == nil and 1 or num(cost, 5, "take")
      local rc = C.mg_lua_ffi_shdict_take(d, k, kl, rate, burst, cost, take_out)
      if rc < 0 then
        if rc == -1 then return nil, "no memory" end
        error("shared dict take: rate and burst must be positive", 2)
      end
      return rc == 1, take_out[0], take_out[1]
    end
  end
end

_M.sleep = core.sleep
_M.timer = core.timer
-- moongate.ws_broadcast(set, data [, "binary"]): ws:send(data) to every
-- handler-mode socket that is a key of set, in one C loop; returns how many
_M.ws_broadcast = core.ws_broadcast
_M.now = function() return C.mg_lua_ffi_now() end
_M.time = function() return floor(C.mg_lua_ffi_now()) end
-- moongate.worker_id: this worker's index (0-based), read when asked since
-- the module loads before the workers fork
setmetatable(_M, { __index = function(_, k)
  if k == "worker_id" then return core.worker_id() end
end })

local log_mt = {
  __call = function(_, level, ...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    core.log(level, concat(parts, " "))
  end,
}
_M.log = setmetatable({}, log_mt)
for _, lvl in pairs({ "debug", "info", "warn", "error" }) do
  _M.log[lvl] = function(...) _M.log(lvl, ...) end
end


-- moongate.methods ----------------------------------------------------------
--
-- A handler that dispatches on the method. Checked when it is built, which
-- for a routes file is load time (`moongate -t`, a reload): an error is
-- raised at the caller's line, so the loader reports it as the routes
-- file's `file:line: reason` like any other route error.

-- An RFC 9110 token in upper case, as the route field `method` takes.
local METHOD_TOKEN = "^[A-Z0-9!#$%%&'*+.^_`|~-]+$"

-- The entries written in the constructor `{ ... }` starting at `pos` of
-- `text`: a list of { key, expr }, or nil when it cannot be read. A
-- heuristic over the source (strings, comments and nesting are skipped):
-- it only adds detail to messages (a name set to nil, a name written
-- twice), never refuses what the table itself shows to be right.
local function written_entries(text, pos)
  local block = match(text, "^%b{}", pos)
  if not block then return nil end
  local body = sub(block, 2, -2)
  local out, depth, i, n, start = {}, 0, 1, #body, 1
  local function entry(from, to)
    local piece = sub(body, from, to)
    local k, expr = match(piece, "^%s*([%a_][%w_]*)%s*=%s*(.-)%s*$")
    if not k then
      k, expr = match(piece, "^%s*%[%s*[\"']([^\"']*)[\"']%s*%]%s*=%s*(.-)%s*$")
    end
    if k and sub(expr, 1, 1) ~= "=" then out[#out + 1] = { k, expr } end
  end
  while i <= n do
    local c = sub(body, i, i)
    if c == "-" and sub(body, i + 1, i + 1) == "-" then
      local nl = find(body, "\n", i, true)
      body = sub(body, 1, i - 1) .. (nl and sub(body, nl) or "")
      n = #body
      i = i - 1
    elseif c == "\"" or c == "'" then
      local j = i + 1
      while j <= n and sub(body, j, j) ~= c do
        if sub(body, j, j) == "\\" then j = j + 1 end
        j = j + 1
      end
      i = j
    elseif c == "{" or c == "(" or c == "[" then
      depth = depth + 1
    elseif c == "}" or c == ")" or c == "]" then
      depth = depth - 1
      if depth < 0 then return nil end
    elseif depth == 0 and (c == "," or c == ";") then
      entry(start, i - 1)
      start = i + 1
    elseif match(body, "^%f[%w_]function%f[^%w_]", i) or match(body, "^%f[%w_]if%f[^%w_]", i)
      or match(body, "^%f[%w_]do%f[^%w_]", i) then
      -- a block (a function value, its if and loops): closed by `end`
      depth = depth + 1
    elseif match(body, "^%f[%w_]end%f[^%w_]", i) then
      depth = depth - 1
      if depth < 0 then return nil end
    end
    i = i + 1
  end
  if depth ~= 0 then return nil end
  entry(start, n)
  return out
end

-- What the caller (at `level`) wrote in its `name{ ... }` call, read from
-- its file; nil when the call is not in a file or cannot be found there.
local function caller_entries(level, map)
  local info = debug.getinfo(level + 1, "Sl")
  local name = debug.getinfo(level, "n").name
  if not info or not name or sub(info.source, 1, 1) ~= "@" or info.currentline <= 0 then
    return nil
  end
  local f = io.open(sub(info.source, 2), "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  if not text then return nil end
  local pos, line = 1, 1
  while line < info.currentline do
    pos = find(text, "\n", pos, true)
    if not pos then return nil end
    pos, line = pos + 1, line + 1
  end
  local eol = find(text, "\n", pos, true) or #text + 1
  local pat = "%f[%w_]" .. gsub(name, "%W", "%%%0") .. "%s*%(?%s*()%{"
  local from = pos
  while true do
    local brace = match(sub(text, from, eol), "^.-" .. pat)
    if not brace then return nil end
    brace = from + brace - 1
    local got = written_entries(text, brace)
    if got then
      -- the call whose written names cover the table's
      local written = {}
      for _, e in ipairs(got) do written[e[1]] = true end
      local covers = true
      for k in pairs(map) do
        if not written[k] then covers = false end
      end
      if covers then return got end
    end
    from = brace + 1
  end
end

-- " (did you mean 'x'?)" for `a.b` where `a` is a table the caller sees.
local function expr_hint(level, expr)
  local base, field = match(expr, "^([%a_][%w_]*)%.([%a_][%w_]*)$")
  if not base then return "" end
  local t
  for i = 1, 250 do
    local k, v = debug.getlocal(level + 1, i)
    if k == nil then break end
    if k == base then t = v end
  end
  if t == nil then t = rawget(getfenv(level + 1), base) end
  if type(t) ~= "table" then return "" end
  local names = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" then names[k] = true end
  end
  return hints.suggestion(field, names)
end

--- methods{ GET = f, POST = g }: a handler that calls the function of the
--- request's method, and answers any other with 405, a JSON body and a
--- sorted Allow header. HEAD is a method like the others (list it to serve
--- it). Refuses, at the caller's line, a name that is not an upper-case
--- token, a handler that is not a function (a nil one: a typo in its
--- name), a name written twice, and an empty table.
function _M.methods(map)
  if type(map) ~= "table" then
    error(format("methods: expected a table { GET = handler, ... }, got %s", type(map)), 2)
  end
  local allow = {}
  for m, f in pairs(map) do
    if type(m) ~= "string" then
      error(format("methods: expected METHOD = handler, found key [%s] (%s)",
        tostring(m), type(f)), 2)
    end
    if upper(m) ~= m then
      error(format("methods: method '%s' must be upper-case", m), 2)
    end
    if not find(m, METHOD_TOKEN) then
      error(format("methods: method '%s' is not a valid method token", m), 2)
    end
    if type(f) ~= "function" then
      error(format("methods: %s: expected a function, got %s", m, type(f)), 2)
    end
    allow[#allow + 1] = m
  end
  local entries = caller_entries(2, map)
  if entries then
    local seen = {}
    for _, e in ipairs(entries) do
      local m, expr = e[1], e[2]
      if seen[m] then
        error(format("methods: %s given twice (the last one would win)", m), 2)
      end
      seen[m] = true
      if map[m] == nil then
        if expr == "nil" then
          error(format("methods: %s: the handler is nil", m), 2)
        end
        error(format("methods: %s: the handler %s is nil%s", m, expr, expr_hint(2, expr)), 2)
      end
    end
  end
  if #allow == 0 then
    error("methods: no handler (an empty table, or every handler is nil: a typo in a name?)", 2)
  end
  sort(allow)
  allow = concat(allow, ", ")
  return function(req, res)
    local f = map[req.method]
    if not f then
      return 405, {
        error = "method_not_allowed", message = req.method .. " is not allowed here",
        request_id = req.id, allow = allow,
      }, { ["Content-Type"] = "application/json", Allow = allow }
    end
    return f(req, res)
  end
end


-- moongate.module ----------------------------------------------------------

--- moongate.module(name, t) -> t, made strict: reading a field t does not
--- have raises, at the line that reads it, "module <name> has no field 'x'
--- (did you mean 'y'?)" instead of giving nil. A script module ends with
--- `return moongate.module("auth", _M)`, so a misspelt `auth.acces` in a
--- routes file fails its load (`moongate -t`, a reload) as
--- `routes.lua:line: module auth has no field 'acces' (did you mean 'access'?)`
--- rather than leaving a route without its hook. Fields can still be set
--- and iterated; `rawget(t, k)` reads one that may be missing. Not for
--- tables read as `t.x or default` (settings): those want nil.
function _M.module(name, t)
  if type(name) ~= "string" or type(t) ~= "table" then
    error(format("module: expected (name, table), got (%s, %s)", type(name), type(t)), 2)
  end
  if getmetatable(t) ~= nil then
    error(format("module: %s already has a metatable", name), 2)
  end
  return setmetatable(t, { __index = function(_, k)
    local names = {}
    for key in pairs(t) do
      if type(key) == "string" then names[key] = true end
    end
    error(format("module %s has no field '%s'%s", name, tostring(k), hints.suggestion(k, names)), 2)
  end })
end

return _M
