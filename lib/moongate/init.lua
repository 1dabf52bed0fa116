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
local tonumber = tonumber
local gsub = string.gsub
local gmatch = string.gmatch
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

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function escape(s)
  return (gsub(tostring(s), "[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

--- Decodes "a=1&b=2" into { a = "1", b = "2" } (a repeated key keeps the last value).
--- The second result is nil, or the set of names given more than once.
function _M.decode_query(qs)
  local t, repeated = {}, nil
  if not qs or qs == "" then return t end
  for pair in gmatch(qs, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    local k = unescape(eq and sub(pair, 1, eq - 1) or pair)
    if t[k] ~= nil then
      repeated = repeated or {}
      repeated[k] = true
    end
    t[k] = eq and unescape(sub(pair, eq + 1)) or ""
  end
  return t, repeated
end

function _M.encode_query(t)
  if type(t) == "string" then return t end
  local out = {}
  for k, v in pairs(t) do
    out[#out + 1] = escape(k) .. "=" .. escape(v)
  end
  table.sort(out)
  return concat(out, "&")
end

-- request objects: tables built by the core with method and path; the
-- fields below are made on first read.
local req_mt = {}
local LAZY = { headers = true, params = true, id = true, http_version = true,
               remote_addr = true, query_string = true, websocket = true,
               scheme = true, tls = true }
req_mt.__index = function(req, k)
  local m = req_mt[k]
  if m ~= nil then return m end
  if LAZY[k] then return core.req_fill(req, k) end
  if k == "query" or k == "query_repeated" then
    local q, repeated = _M.decode_query(req.query_string)
    req.query = q
    req.query_repeated = repeated or false
    return rawget(req, k)
  end
end
--- The client's header `name` (any case) as received, repeated ones joined
--- with ", "; nil when absent. Cheaper than req.headers for one header.
req_mt.header = core.req_header
function req_mt.body() return core.req_body() end
function req_mt.read() return core.req_read() end
--- Sets a header for the upstream (proxy, and WebSocket relay/tunnel
--- handshakes), replacing the client's; a nil value removes the client's.
req_mt.set_header = core.req_set_header
--- Sets a header on the response the client gets (from an access hook:
--- proxied and handler responses, and a later hook's refusal), replacing
--- the upstream's of that name; header_filter hooks still see it.
req_mt.set_response_header = core.req_set_response_header

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
  core.res_send(status, data, headers, ctype)
end

-- Access hooks in order; the first to return a status answers (through
-- the route's header_filter hooks, so a refusal gets CORS headers too).
local function check_access(access, req, header_filter)
  for i = 1, #access do
    local status, body, headers = access[i](req)
    if status ~= nil then
      respond(status, body, headers,
              header_filter and { _filter = header_filter, _ctx = req.ctx } or nil)
      return false
    end
  end
  return true
end

-- Upstream and WebSocket routes: the hooks run in a coroutine of their own.
debug.getregistry()["moongate.run_access"] = function(access, req, header_filter)
  -- req comes with its metatable (req_mt); ctx sized for a few plugins' keys
  if rawget(req, "ctx") == nil then req.ctx = new_tab(0, 4) end
  if check_access(access, req, header_filter) then
    core.access_done()
  end
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

local function run(handler, req, access, header_filter)
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
function _M.proxy(opts)
  if type(opts) ~= "table" then opts = { upstream = opts } end
  local q = opts.query
  if type(q) == "table" then q = _M.encode_query(q) end
  core.proxy(opts.upstream, opts.path, q, opts.headers, opts.timeout, opts.content_type,
    opts.on_error)
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

-- moongate.shared.<name>: the conf's shared_dicts, opened on first use
_M.shared = setmetatable({}, { __index = function(t, name)
  local d = core.shdict(name)
  if d then rawset(t, name, d) end
  return d
end })

_M.sleep = core.sleep
_M.timer = core.timer
_M.now = core.now
_M.time = core.time
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
