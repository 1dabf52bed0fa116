-- moongate.loader: reads conf/moongate.lua and scripts/routes.lua, checks
-- them against docs/configuration.md and returns one normalized
-- "generation" table that core/gen.c copies into C structs.
--
-- Pure Lua, no moongate APIs: `moongate -t`, the SIGHUP reload path and the
-- unit specs all run exactly this code.
--
-- Errors: load() returns `nil, "file:line: reason"` for every problem in the
-- operator's files or environment, so the message can be printed as is and
-- an editor can jump to it. Line 0 means "no line applies" (a file that
-- cannot be opened, an environment variable). Misuse (a non-string path)
-- raises, as do bugs in this file.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local error = error
local pcall = pcall
local xpcall = xpcall
local require = require
local loadfile = loadfile
local setmetatable = setmetatable
local getmetatable = getmetatable
local package = package
local io_open = io.open
local os_getenv = os.getenv
local debug_getinfo = debug.getinfo
local math_floor = math.floor
local math_huge = math.huge
local math_min = math.min
local str_find = string.find
local str_format = string.format
local str_gmatch = string.gmatch
local str_gsub = string.gsub
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub
local str_upper = string.upper
local tbl_concat = table.concat
local tbl_sort = table.sort

local plugins = require "moongate.plugins"


local _M = { _VERSION = "0.1.0" }


-- Defaults, as documented in docs/configuration.md. Durations in seconds,
-- sizes in bytes.
local DEFAULT_LISTEN = "127.0.0.1:8080"
local DEFAULT_ROUTES = "scripts/routes.lua"
local DEFAULT_LUA_PATH = { "scripts", "lib" }

local TIMEOUT_DEFAULTS = { read = 0, write = 0, idle = 3600, header = 30, drain = 10 }
local TIMEOUT_ORDER = { "read", "write", "idle", "header", "drain" }

local LIMIT_DEFAULTS = { header_size = 16384, header_count = 100, body_size = 1048576, websockets = 10000 }
local LIMIT_ORDER = { "header_size", "header_count", "body_size", "websockets" }

-- kind: "int" = non-negative integer, "num" = non-negative number (seconds)
local UPSTREAM_SETTINGS = {
  { "keepalive", "int", 64 },
  { "connect_timeout", "num", 5 },
  { "response_timeout", "num", 60 },
  { "max_fails", "int", 3 },
  { "fail_timeout", "num", 10 },
}

local CONF_FIELDS = {
  servers = true, shared_dicts = true, plugins = true,
  listen = true, workers = true, routes = true, lua_path = true,
  access_log = true, log_level = true, timeouts = true, limits = true,
  upstreams = true,
}

local UPSTREAM_FIELDS = { servers = true }
for _, s in ipairs(UPSTREAM_SETTINGS) do UPSTREAM_FIELDS[s[1]] = true end

local ROUTE_FIELDS = {
  path = true, prefix = true, method = true, host = true, priority = true,
  upstream = true, handler = true, strip_prefix = true, body_size = true,
  name = true, access = true, header_filter = true, log = true,
  -- reserved for later work: checked for type only, passed through as is
  websocket = true, plugins = true, on_reload = true, timeouts = true,
}

local ROUTE_TIMEOUT_FIELDS = { read = true, write = true, idle = true }

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true }
local ON_RELOAD = { keep = true, drain = true }

-- Limits imposed by the C side (core/mg.h): durations become int
-- milliseconds, counts are ints, names and hosts live in char[64].
local MAX_SECONDS = 2147482
local MAX_INT = 2147483647
local MAX_NAME = 63
local MAX_SEGMENTS = 32
local MAX_WORKERS = 1024

-- RFC 9110 token characters, upper-case letters only.
local METHOD_PATTERN = "^[A-Z0-9!#$%%&'*+.^_`|~-]+$"


---------------------------------------------------------------------------
-- Errors
--
-- Validation is deep; rather than thread `nil, err` through every level,
-- checks raise a LoadError that load() turns back into `nil, err`. Any
-- other error escaping load() is a bug here and is re-raised.
---------------------------------------------------------------------------

local LoadError = {}

local function fail(file, line, fmt, ...)
  local msg = str_format("%s:%d: ", file, line) .. str_format(fmt, ...)
  error(setmetatable({ msg = msg }, LoadError), 0)
end


local hints = require "moongate.hints"
local suggestion = hints.suggestion
local fix_chunkname = hints.fix_chunkname


-- Keys of `t` in a fixed order (strings first, then by tostring), so that
-- with several mistakes the same one is always reported first.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  tbl_sort(keys, function(a, b)
    local sa, sb = type(a) == "string", type(b) == "string"
    if sa ~= sb then
      return sa
    end
    return tostring(a) < tostring(b)
  end)
  return keys
end


local function show_key(k)
  if type(k) == "string" then
    return "'" .. k .. "'"
  end
  return "[" .. tostring(k) .. "]"
end


-- For messages: numbers as written, strings quoted, anything else by type.
local function show_value(v)
  if type(v) == "number" then
    return tostring(v)
  elseif type(v) == "string" then
    return "'" .. v .. "'"
  end
  return type(v)
end


---------------------------------------------------------------------------
-- Source positions
--
-- A table returned by a chunk carries no line numbers, so errors about a
-- value are placed by searching the file's text for the field names (and
-- the offending string, when there is one). A heuristic: good enough to
-- point an editor at the right spot, never wrong about the file.
---------------------------------------------------------------------------

local function escape_pattern(s)
  return (str_gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end


-- Line number of byte position `pos` in `text`. O(pos).
local function line_of(text, pos)
  local n = 1
  for _ in str_gmatch(str_sub(text, 1, pos - 1), "\n") do
    n = n + 1
  end
  return n
end


-- Positions of `s` as a quoted string literal ("s" or 's') from `init`,
-- in file order.
local function quoted_positions(text, s, init)
  local found = {}
  for _, q in ipairs({ '"', "'" }) do
    local lit = q .. s .. q
    local pos = init or 1
    while true do
      local p = str_find(text, lit, pos, true)
      if not p then break end
      found[#found + 1] = p
      pos = p + 1
    end
  end
  tbl_sort(found)
  return found
end


-- Where `key` appears as a table key at or after `init`: `key =` first,
-- then `["key"]`, then any quoted or bare occurrence.
local function find_key(text, key, init)
  if type(key) ~= "string" or key == "" then
    return nil
  end
  local e = escape_pattern(key)
  local patterns = {
    "%f[%w_]" .. e .. "%s*=",
    "%[%s*[\"']" .. e .. "[\"']%s*%]",
    "[\"']" .. e .. "[\"']",
    "%f[%w_]" .. e .. "%f[^%w_]",
  }
  for _, p in ipairs(patterns) do
    local s = str_find(text, p, init)
    if s then
      return s
    end
  end
  return nil
end


-- Line of the value at field path `keys` (e.g. { "upstreams", "runtime",
-- "servers" }), each key searched after the previous one; then of the
-- string `value` if given. 1 when nothing is found, 0 without a text.
local function locate(text, keys, value)
  if not text then
    return 0
  end
  local pos, found = 1, false
  for i = 1, #keys do
    local p = find_key(text, keys[i], pos)
    if p then
      pos, found = p, true
    end
  end
  if type(value) == "string" and value ~= "" then
    local p = quoted_positions(text, value, pos)[1]
    if p then
      pos, found = p, true
    end
  end
  return found and line_of(text, pos) or 1
end


-- Line of the chunk's top-level `return`: the last one at column 0, as a
-- handler's own `return`s are indented.
local function return_line(text)
  local last
  for p in str_gmatch("\n" .. text, "\n()return%f[^%w_]") do
    last = p - 1
  end
  return last and line_of(text, last) or 1
end


---------------------------------------------------------------------------
-- Files and chunks
---------------------------------------------------------------------------

local function read_source(path)
  local f, err = io_open(path, "rb")
  if not f then
    -- io.open says "<path>: <strerror>"; keep only the reason
    if str_sub(err, 1, #path + 2) == path .. ": " then
      err = str_sub(err, #path + 3)
    end
    fail(path, 0, "cannot open file: %s", err)
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then
    fail(path, 0, "cannot read file: %s", tostring(rerr))
  end
  return { path = path, text = text }
end


-- Compiles and runs the file `src.path`, returning its first result. Syntax
-- errors and errors raised with error("...") already carry "file:line:";
-- error(x, 0), non-string errors and errors raised by C functions such as
-- require() do not, and get the innermost line of this file on the stack.
local function run_file(src)
  local path = src.path
  local chunk, err = loadfile(path)
  if not chunk then
    if not str_find(err, "^[^\n]-:%d+: ") then
      fail(path, 0, "%s", err)
    end
    error(setmetatable({ msg = fix_chunkname(err, path) }, LoadError), 0)
  end

  local source = "@" .. path
  local function handler(e)
    local msg
    if type(e) == "string" then
      msg = e
    else
      local mt = getmetatable(e)
      if mt and mt.__tostring then
        msg = tostring(e)
      else
        msg = "(error object is a " .. type(e) .. " value)"
      end
    end
    if str_find(msg, "^[^\n]-:%d+: ") then
      return fix_chunkname(msg, path)
    end
    local line = 1
    for level = 2, 200 do
      local info = debug_getinfo(level, "Sl")
      if not info then break end
      if info.source == source and info.currentline > 0 then
        line = info.currentline
        break
      end
    end
    return str_format("%s:%d: %s", path, line, msg)
  end

  local ok, res = xpcall(chunk, handler)
  if not ok then
    error(setmetatable({ msg = res }, LoadError), 0)
  end
  return res
end


---------------------------------------------------------------------------
-- Paths
---------------------------------------------------------------------------

local function dirname(p)
  local d = str_match(p, "^(.*)/[^/]*$")
  if d == nil then
    return "."
  end
  if d == "" then
    return "/"
  end
  return d
end


local function basename(p)
  return str_match(p, "([^/]*)/*$")
end


-- The project root: conf/'s parent when the conf file lives in conf/,
-- else the conf file's own directory.
local function root_of(conf_path)
  local dir = dirname(conf_path)
  if basename(dir) == "conf" then
    return dirname(dir)
  end
  return dir
end


-- Joins without inventing "./": a root of "." keeps paths as the operator
-- wrote them, so messages read "scripts/routes.lua:12: ...".
local function join(root, p)
  if str_sub(p, 1, 1) == "/" or root == "." or root == "" then
    return p
  end
  if str_sub(root, -1) == "/" then
    return root .. p
  end
  return root .. "/" .. p
end


-- Prepends dir/?.lua and dir/?/init.lua for each dir, skipping templates
-- already on package.path, so repeated loads in one state (moongate -t,
-- the specs) do not grow it.
local function add_lua_path(dirs)
  local have = ";" .. package.path .. ";"
  local add = {}
  for _, dir in ipairs(dirs) do
    for _, tpl in ipairs({ join(dir, "?.lua"), join(dir, "?/init.lua") }) do
      if not str_find(have, ";" .. tpl .. ";", 1, true) then
        add[#add + 1] = tpl
        have = have .. tpl .. ";"
      end
    end
  end
  if #add > 0 then
    package.path = tbl_concat(add, ";") .. ";" .. package.path
  end
end


---------------------------------------------------------------------------
-- Environment
---------------------------------------------------------------------------

-- os.getenv cannot list variables, yet MOONGATE_UPSTREAM_<NAME> may name an
-- upstream the file does not. Under LuaJIT the FFI reads environ(7);
-- without it only the names already known are looked up.
local function process_env(file_upstreams)
  local env = {}
  local ok, ffi = pcall(require, "ffi")
  if ok then
    -- fails harmlessly if already declared by someone else
    pcall(ffi.cdef, "extern char **environ;")
    local ok2, environ = pcall(function() return ffi.C.environ end)
    if ok2 and environ ~= nil then
      local i = 0
      while environ[i] ~= nil do
        local k, v = str_match(ffi.string(environ[i]), "^(MOONGATE_[^=]*)=(.*)$")
        if k then
          env[k] = v
        end
        i = i + 1
      end
      return env
    end
  end

  env.MOONGATE_LISTEN = os_getenv("MOONGATE_LISTEN")
  env.MOONGATE_WORKERS = os_getenv("MOONGATE_WORKERS")
  if type(file_upstreams) == "table" then
    for name in pairs(file_upstreams) do
      if type(name) == "string" then
        local k = "MOONGATE_UPSTREAM_" .. str_upper(name)
        env[k] = os_getenv(k)
      end
    end
  end
  return env
end


local function split_list(s)
  local items = {}
  for item in str_gmatch(s .. ",", "([^,]*),") do
    items[#items + 1] = str_match(item, "^%s*(.-)%s*$")
  end
  return items
end


---------------------------------------------------------------------------
-- Conf values
--
-- A "where" says where a value came from: { path=, text=, keys=, label= }.
-- path/text name the file (text nil for the environment), keys is the field
-- path used to find the line, label prefixes the reason ("timeouts.read",
-- "MOONGATE_WORKERS").
---------------------------------------------------------------------------

local function at(where, key)
  local keys = {}
  for i = 1, #where.keys do keys[i] = where.keys[i] end
  keys[#keys + 1] = key
  return {
    path = where.path, text = where.text, keys = keys,
    label = where.env and where.label or tbl_concat(keys, "."),
    env = where.env,
  }
end


local function bad(where, value, fmt, ...)
  local line = locate(where.text, where.keys, value)
  fail(where.path, line, "%s: " .. fmt, where.label, ...)
end


local function check_fields(where, t, allowed)
  for _, k in ipairs(sorted_keys(t)) do
    if not allowed[k] then
      local keys = {}
      for i = 1, #where.keys do keys[i] = where.keys[i] end
      keys[#keys + 1] = k
      local prefix = #where.keys > 0 and (where.label .. ": ") or ""
      fail(where.path, locate(where.text, keys), "%sunknown field %s%s",
           prefix, show_key(k), suggestion(k, allowed))
    end
  end
end


local function check_type(where, v, want)
  if type(v) ~= want then
    bad(where, nil, "expected a %s, got %s", want, type(v))
  end
end


-- A number that is not NaN (v ~= v), not negative, finite, and an
-- integer when `int`.
local function is_nonneg(v, int)
  return type(v) == "number" and v == v and v >= 0 and v < math_huge
         and (not int or v == math_floor(v))
end


-- Non-negative, finite, at most `max`; integer when `int`.
local function check_number(where, v, int, max)
  if not is_nonneg(v, int) then
    bad(where, nil, "expected a non-negative %s, got %s",
        int and "integer" or "number", show_value(v))
  end
  if v > max then
    bad(where, nil, "%s is too large (at most %d)", tostring(v), max)
  end
  return v
end


-- A string or a list of strings -> list of strings.
local function string_list(where, v)
  if type(v) == "string" then
    return { v }
  end
  if type(v) ~= "table" then
    bad(where, nil, "expected a string or a list of strings, got %s", type(v))
  end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      bad(where, nil, "expected a list, found key %s", show_key(k))
    end
  end
  local out = {}
  for i = 1, n do
    if type(v[i]) ~= "string" then
      bad(where, nil, "item #%d: expected a string, got %s", i, type(v[i]))
    end
    out[i] = v[i]
  end
  return out
end


local function valid_hostname(h)
  return h ~= "" and #h <= MAX_NAME and str_find(h, "^[%w%.%-_]+$") ~= nil
end


-- "host:port", "[v6]:port" or ":port" -> host, port (or nil, reason).
-- `default_port` makes the port optional.
local function parse_hostport(s, default_port)
  local host, port
  if str_sub(s, 1, 1) == "[" then
    host, port = str_match(s, "^%[([%x:%.]+)%](.*)$")
    if not host or #host > MAX_NAME then
      return nil, "bad IPv6 address"
    end
  else
    host, port = str_match(s, "^([^:]*)(.*)$")
    if host ~= "" and not valid_hostname(host) then
      return nil, "bad host '" .. host .. "'"
    end
  end
  if port == "" and default_port then
    port = default_port
  else
    port = str_match(port, "^:(%d+)$")
    port = port and tonumber(port)
    if not port then
      return nil, "expected \"host:port\""
    end
  end
  if port < 1 or port > 65535 then
    return nil, "port " .. port .. " out of range (1-65535)"
  end
  return host, port
end


local function norm_listen(where, v)
  local items = string_list(where, v)
  if #items == 0 then
    bad(where, nil, "at least one address is required")
  end
  local out, seen = {}, {}
  for i, s in ipairs(items) do
    local host, port = parse_hostport(s)
    if not host then
      bad(where, s, "'%s': %s", s, port)
    end
    if host == "" then
      host = "0.0.0.0"
    end
    local key = host .. "\0" .. port
    if seen[key] then
      bad(where, s, "'%s' is listed twice", s)
    end
    seen[key] = true
    out[i] = { host = host, port = port }
  end
  return out
end


local function norm_workers(where, v, ncpu)
  if v == "auto" then
    return ncpu
  end
  if not is_nonneg(v, true) then
    bad(where, nil, "expected a non-negative integer or \"auto\", got %s", show_value(v))
  end
  if v == 0 then
    return ncpu
  end
  if v > MAX_WORKERS then
    bad(where, nil, "%d is too many (at most %d)", v, MAX_WORKERS)
  end
  return v
end


-- "http://host[:port][/]" -> { host=, port=, url= }. No path: the request's
-- own path is forwarded. No TLS to upstreams yet.
local function parse_server(s)
  local scheme, rest = str_match(s, "^(%a[%w+.%-]*)://(.*)$")
  if not scheme then
    return nil, "expected \"http://host:port\""
  end
  scheme = str_lower(scheme)
  if scheme == "https" then
    return nil, "https upstreams are not supported yet"
  end
  if scheme ~= "http" then
    return nil, "unsupported scheme '" .. scheme .. "' (only http)"
  end
  rest = str_gsub(rest, "/$", "", 1)
  if str_find(rest, "[/?#]") then
    return nil, "must not have a path or query"
  end
  if str_find(rest, "@", 1, true) then
    return nil, "must not have user info"
  end
  local host, port = parse_hostport(rest, 80)
  if not host then
    return nil, port
  end
  if host == "" then
    return nil, "missing host"
  end
  host = str_lower(host)
  local url_host = str_find(host, ":", 1, true) and ("[" .. host .. "]") or host
  return { host = host, port = port, url = "http://" .. url_host .. ":" .. port }
end


local function norm_servers(where, v)
  local items = string_list(where, v)
  if #items == 0 then
    bad(where, nil, "at least one server is required")
  end
  local out = {}
  for i, s in ipairs(items) do
    local server, err = parse_server(s)
    if not server then
      bad(where, s, "'%s': %s", s, err)
    end
    out[i] = server
  end
  return out
end


local function check_upstream_name(where, name)
  if type(name) ~= "string" or not str_find(name, "^[%w_%-]+$") or #name > MAX_NAME then
    bad(where, type(name) == "string" and name or nil,
        "bad upstream name %s (letters, digits, '_' and '-', at most %d)",
        show_key(name), MAX_NAME)
  end
end


local function norm_upstream(where, name, raw)
  check_type(where, raw, "table")
  check_fields(where, raw, UPSTREAM_FIELDS)
  if raw.servers == nil then
    bad(at(where, "servers"), nil, "required")
  end
  local u = { name = name, servers = norm_servers(at(where, "servers"), raw.servers) }
  for _, s in ipairs(UPSTREAM_SETTINGS) do
    local field, kind, default = s[1], s[2], s[3]
    local v = raw[field]
    if v == nil then
      u[field] = default
    else
      u[field] = check_number(at(where, field), v, kind == "int",
                              kind == "int" and MAX_INT or MAX_SECONDS)
    end
  end
  return u
end


local function norm_group(where, raw, defaults, order, int, max)
  local out = {}
  if raw == nil then
    raw = {}
  end
  check_type(where, raw, "table")
  check_fields(where, raw, defaults)
  for _, k in ipairs(order) do
    local v = raw[k]
    out[k] = v == nil and defaults[k] or check_number(at(where, k), v, int, max)
  end
  return out
end


-- Checks and normalizes every field of the file, then applies the
-- environment overrides. A bad value in the file is an error even when the
-- environment overrides it: the file must stand on its own (moongate -t).
-- Returns the conf and a map name -> upstream for checking routes.
local function norm_conf(src, raw, env, ncpu)
  local top = { path = src.path, text = src.text, keys = {}, label = "" }
  check_fields(top, raw, CONF_FIELDS)

  local function env_where(var)
    return { path = "env", keys = {}, label = var, env = true }
  end

  local root = root_of(src.path)
  local conf = { conf_file = src.path, root = root }

  -- listen
  conf.listen = norm_listen(at(top, "listen"),
                            raw.listen == nil and DEFAULT_LISTEN or raw.listen)
  local v = env.MOONGATE_LISTEN
  if v and v ~= "" then
    conf.listen = norm_listen(env_where("MOONGATE_LISTEN"), split_list(v))
  end

  -- workers
  conf.workers = norm_workers(at(top, "workers"),
                              raw.workers == nil and "auto" or raw.workers, ncpu)
  v = env.MOONGATE_WORKERS
  if v and v ~= "" then
    v = str_match(v, "^%s*(.-)%s*$")
    conf.workers = norm_workers(env_where("MOONGATE_WORKERS"),
                                v == "auto" and v or tonumber(v) or v, ncpu)
  end

  -- routes and lua_path, relative to the project root
  local routes = raw.routes == nil and DEFAULT_ROUTES or raw.routes
  check_type(at(top, "routes"), routes, "string")
  if routes == "" then
    bad(at(top, "routes"), nil, "must not be empty")
  end
  conf.routes_file = join(root, routes)

  local where = at(top, "lua_path")
  local dirs = string_list(where, raw.lua_path == nil and DEFAULT_LUA_PATH or raw.lua_path)
  for i, dir in ipairs(dirs) do
    if dir == "" then
      bad(where, nil, "item #%d must not be empty", i)
    end
    dirs[i] = join(root, dir)
  end
  conf.lua_path = dirs

  -- logging
  if raw.access_log == nil then
    conf.access_log = true
  else
    check_type(at(top, "access_log"), raw.access_log, "boolean")
    conf.access_log = raw.access_log
  end
  local level = raw.log_level == nil and "info" or raw.log_level
  if not LOG_LEVELS[level] then
    bad(at(top, "log_level"), type(level) == "string" and level or nil,
        "expected one of debug, info, warn, error, got %s", show_value(level))
  end
  conf.log_level = level

  conf.timeouts = norm_group(at(top, "timeouts"), raw.timeouts, TIMEOUT_DEFAULTS,
                             TIMEOUT_ORDER, false, MAX_SECONDS)
  conf.limits = norm_group(at(top, "limits"), raw.limits, LIMIT_DEFAULTS,
                           LIMIT_ORDER, true, MAX_INT)

  -- upstreams: a map in the file, an array sorted by name for the core
  local ups = {}
  where = at(top, "upstreams")
  local raw_ups = raw.upstreams == nil and {} or raw.upstreams
  check_type(where, raw_ups, "table")
  for _, name in ipairs(sorted_keys(raw_ups)) do
    check_upstream_name(where, name)
    ups[name] = norm_upstream(at(where, name), name, raw_ups[name])
  end

  -- sorted so that with several bad variables the error is always the same
  local vars = {}
  for k in pairs(env) do
    if type(k) == "string" and str_sub(k, 1, 18) == "MOONGATE_UPSTREAM_" then
      vars[#vars + 1] = k
    end
  end
  tbl_sort(vars)
  for _, var in ipairs(vars) do
    v = env[var]
    if type(v) == "string" and v ~= "" then
      local ew = env_where(var)
      local name = str_lower(str_sub(var, 19))
      if name == "" or not str_find(name, "^[%w_%-]+$") or #name > MAX_NAME then
        bad(ew, nil, "bad upstream name '%s'", name)
      end
      if ups[name] then
        ups[name].servers = norm_servers(ew, split_list(v))
      else
        ups[name] = norm_upstream(ew, name, { servers = split_list(v) })
      end
    end
  end

  local list = {}
  for _, u in pairs(ups) do
    list[#list + 1] = u
  end
  tbl_sort(list, function(a, b) return a.name < b.name end)
  conf.upstreams = list

  return conf, ups
end


---------------------------------------------------------------------------
-- Routes
---------------------------------------------------------------------------

-- Checks a path/prefix rule; returns its parameter names in order.
-- "/" and a trailing "/" are allowed, empty segments elsewhere are not.
local function parse_rule(rule)
  if str_sub(rule, 1, 1) ~= "/" then
    return nil, "must start with '/'"
  end
  if str_find(rule, "[%s%c?#]") then
    return nil, "must not contain whitespace, '?' or '#'"
  end
  local params, seen, segs = {}, {}, {}
  for seg in str_gmatch(str_sub(rule, 2) .. "/", "([^/]*)/") do
    segs[#segs + 1] = seg
  end
  if #segs > MAX_SEGMENTS then
    return nil, "too many segments (at most " .. MAX_SEGMENTS .. ")"
  end
  for i, seg in ipairs(segs) do
    if seg == "" and i < #segs then
      return nil, "empty segment ('//')"
    end
    if str_find(seg, "[{}]") then
      local name = str_match(seg, "^{([%a_][%w_]*)}$")
      if not name then
        return nil, "bad segment '" .. seg .. "': a parameter is a whole segment"
                    .. " '{name}', name made of letters, digits and '_'"
      end
      if seen[name] then
        return nil, "duplicate parameter '{" .. name .. "}'"
      end
      seen[name] = true
      params[#params + 1] = name
    end
  end
  return params
end


-- "Example.COM:8080" -> "example.com"; "[::1]:80" -> "[::1]" (the core
-- compares IPv6 literals with their brackets, as in the Host header).
local function norm_host(h)
  local host, rest
  if str_sub(h, 1, 1) == "[" then
    host, rest = str_match(h, "^(%[[%x:%.]+%])(.*)$")
  else
    host, rest = str_match(h, "^([^:]*)(.*)$")
    if not valid_hostname(host) then
      host = nil
    end
  end
  if not host or not (rest == "" or str_find(rest, "^:%d+$")) then
    return nil
  end
  return str_lower(host)
end


local function norm_methods(v, bad_route)
  local list
  if type(v) == "string" then
    list = { v }
  elseif type(v) == "table" then
    list = v
    local n = #v
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
        bad_route("method: expected a list, found key %s", show_key(k))
      end
    end
    if n == 0 then
      bad_route("method: empty list")
    end
  else
    bad_route("method: expected a string or a list of strings, got %s", type(v))
  end
  local out, seen = {}, {}
  for _, m in ipairs(list) do
    if type(m) ~= "string" then
      bad_route("method: expected a string, got %s", type(m))
    end
    if str_upper(m) ~= m then
      bad_route("method '%s' must be upper-case", m)
    end
    if not str_find(m, METHOD_PATTERN) then
      bad_route("method '%s' is not a valid method token", m)
    end
    if not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
  return out
end


-- Line of route #n: the nth quoted occurrence of its rule (two routes may
-- share a rule), else where its handler is defined, else the file's
-- `return`. Scans the file once per route: O(routes x file size), fine for
-- hand-written tables.
local function route_line(ctx, rule, nth, handler)
  if rule then
    local found = quoted_positions(ctx.text, rule)
    local p = found[nth] or found[1]
    if p then
      return line_of(ctx.text, p)
    end
  end
  if type(handler) == "function" then
    local info = debug_getinfo(handler, "S")
    if info.source == "@" .. ctx.path and info.linedefined > 0 then
      return info.linedefined
    end
  end
  return return_line(ctx.text)
end


-- The `websocket` table of a route, with defaults (docs/websocket.md).
local WS_FIELDS = {
  mode = true, heartbeat = true, max_message = true, send_buffer = true, overflow = true,
  deflate = true, protocols = true, origins = true, timeouts = true, upstream_path = true,
  on_message = true, ws_open = true, ws_close = true,
}

-- A hook field: a function or a list of functions, as a list.
local function function_list(v, name, bad_route)
  if type(v) == "function" then
    return { v }
  end
  if type(v) ~= "table" then
    bad_route("%s: expected a function or a list of functions, got %s", name, type(v))
  end
  local list = {}
  for i, f in ipairs(v) do
    if type(f) ~= "function" then
      bad_route("%s[%d]: expected a function, got %s", name, i, type(f))
    end
    list[i] = f
  end
  return list
end
local WS_HB_FIELDS = { interval = true, message = true, ping_frames = true, timeout = true }
local WS_MODES = { tunnel = true, relay = true, handler = true }

local function normalize_websocket(raw, bad_route)
  local w = raw.websocket
  if type(w) ~= "table" then
    bad_route("websocket: expected a table, got %s", type(w))
  end
  for _, k in ipairs(sorted_keys(w)) do
    if not WS_FIELDS[k] then
      bad_route("websocket: unknown field %s%s", show_key(k), suggestion(k, WS_FIELDS))
    end
  end
  local mode = w.mode or (raw.handler and "handler" or "tunnel")
  if not WS_MODES[mode] then
    bad_route("websocket.mode: expected \"tunnel\", \"relay\" or \"handler\", got %s",
              show_value(mode))
  end
  if mode == "handler" and type(raw.handler) ~= "function" then
    bad_route("websocket.mode \"handler\" needs a handler function")
  end
  if mode ~= "handler" and raw.upstream == nil then
    bad_route("websocket.mode \"%s\" needs an upstream", mode)
  end
  local hb = w.heartbeat
  if hb == nil then hb = {} end
  if hb == false then hb = { interval = 0, message = false } end
  if type(hb) ~= "table" then
    bad_route("websocket.heartbeat: expected a table or false, got %s", type(hb))
  end
  for _, k in ipairs(sorted_keys(hb)) do
    if not WS_HB_FIELDS[k] then
      bad_route("websocket.heartbeat: unknown field %s%s", show_key(k), suggestion(k, WS_HB_FIELDS))
    end
  end
  local function num(v, dflt, name)
    if v == nil then return dflt end
    if not is_nonneg(v) or v > MAX_SECONDS then
      bad_route("websocket.%s: expected a non-negative number, got %s", name, show_value(v))
    end
    return v
  end
  local function bool(v, dflt, name)
    if v == nil then return dflt end
    if type(v) ~= "boolean" then
      bad_route("websocket.%s: expected a boolean, got %s", name, show_value(v))
    end
    return v
  end
  local function list(v, name)
    if v == nil then return {} end
    if type(v) == "string" then return { v } end
    if type(v) ~= "table" then
      bad_route("websocket.%s: expected a list of strings, got %s", name, type(v))
    end
    for i, s in ipairs(v) do
      if type(s) ~= "string" then
        bad_route("websocket.%s[%d]: expected a string, got %s", name, i, type(s))
      end
    end
    return v
  end
  local t = w.timeouts or {}
  if type(t) ~= "table" then
    bad_route("websocket.timeouts: expected a table, got %s", type(t))
  end
  if w.overflow ~= nil and w.overflow ~= "close" then
    bad_route("websocket.overflow: expected \"close\", got %s", show_value(w.overflow))
  end
  if w.on_message ~= nil and type(w.on_message) ~= "function" then
    bad_route("websocket.on_message: expected a function, got %s", type(w.on_message))
  end
  if w.upstream_path ~= nil and (type(w.upstream_path) ~= "string" or w.upstream_path:sub(1, 1) ~= "/") then
    bad_route("websocket.upstream_path: expected a path starting with '/', got %s",
              show_value(w.upstream_path))
  end
  return {
    mode = mode,
    heartbeat = {
      interval = num(hb.interval, 30, "heartbeat.interval"),
      message = bool(hb.message, true, "heartbeat.message"),
      ping_frames = bool(hb.ping_frames, false, "heartbeat.ping_frames"),
      timeout = num(hb.timeout, 0, "heartbeat.timeout"),
    },
    max_message = num(w.max_message, 1048576, "max_message"),
    send_buffer = num(w.send_buffer, 1048576, "send_buffer"),
    overflow = "close",
    deflate = bool(w.deflate, mode ~= "tunnel", "deflate"),
    protocols = list(w.protocols, "protocols"),
    origins = list(w.origins, "origins"),
    idle = num(t.idle, 3600, "timeouts.idle"),
    upstream_path = w.upstream_path,
    on_message = w.on_message,
    ws_open = w.ws_open ~= nil and function_list(w.ws_open, "websocket.ws_open", bad_route) or nil,
    ws_close = w.ws_close ~= nil and function_list(w.ws_close, "websocket.ws_close", bad_route) or nil,
  }
end

local function norm_route(ctx, n, raw)
  local rule
  if type(raw) == "table" then
    local p = raw.path ~= nil and raw.path or raw.prefix
    if type(p) == "string" then
      rule = p
    end
  end

  local nth = 1
  if rule then
    nth = (ctx.rule_seen[rule] or 0) + 1
    ctx.rule_seen[rule] = nth
  end
  local line = route_line(ctx, rule, nth, type(raw) == "table" and raw.handler or nil)

  local function bad_route(fmt, ...)
    fail(ctx.path, line, "route #%d (%s): " .. fmt, n, rule or "?", ...)
  end

  if type(raw) ~= "table" then
    bad_route("expected a table, got %s", type(raw))
  end
  for _, k in ipairs(sorted_keys(raw)) do
    if not ROUTE_FIELDS[k] then
      bad_route("unknown field %s%s", show_key(k), suggestion(k, ROUTE_FIELDS))
    end
  end

  -- rule
  if raw.path ~= nil and raw.prefix ~= nil then
    bad_route("both 'path' and 'prefix' given; use one")
  end
  if raw.path == nil and raw.prefix == nil then
    bad_route("one of 'path' or 'prefix' is required")
  end
  local kind = raw.path ~= nil and "exact" or "prefix"
  local field = raw.path ~= nil and "path" or "prefix"
  if not rule then
    bad_route("%s: expected a string, got %s", field, type(raw[field]))
  end
  local params, err = parse_rule(rule)
  if not params then
    bad_route("%s: %s", field, err)
  end

  -- target
  if raw.upstream ~= nil and raw.handler ~= nil then
    bad_route("both 'upstream' and 'handler' given; use one")
  end
  if raw.upstream == nil and raw.handler == nil then
    bad_route("one of 'upstream' or 'handler' is required")
  end
  if raw.upstream ~= nil then
    if type(raw.upstream) ~= "string" then
      bad_route("upstream: expected a string, got %s", type(raw.upstream))
    end
    if not ctx.upstreams[raw.upstream] then
      bad_route("unknown upstream '%s'%s", raw.upstream,
                suggestion(raw.upstream, ctx.upstreams))
    end
  elseif type(raw.handler) ~= "function" then
    bad_route("handler: expected a function, got %s", type(raw.handler))
  end

  local route = {
    index = n,
    rule = rule,
    kind = kind,
    params = params,
    upstream = raw.upstream,
    handler = raw.handler,
    strip_prefix = false,
    body_size = ctx.body_size,
    file = ctx.path,
    line = line,
  }

  if raw.method ~= nil then
    route.methods = norm_methods(raw.method, bad_route)
  end

  if raw.host ~= nil then
    if type(raw.host) ~= "string" then
      bad_route("host: expected a string, got %s", type(raw.host))
    end
    route.host = norm_host(raw.host)
    if not route.host then
      bad_route("host: bad host '%s'", raw.host)
    end
  end

  if raw.priority ~= nil then
    local p = raw.priority
    if type(p) ~= "number" or p ~= p or p == math_huge or p == -math_huge then
      bad_route("priority: expected a finite number, got %s", show_value(p))
    end
    route.priority = p
  else
    -- Traefik's default: longer rules are more specific
    route.priority = #rule
  end

  if raw.strip_prefix ~= nil then
    if type(raw.strip_prefix) ~= "boolean" then
      bad_route("strip_prefix: expected a boolean, got %s", type(raw.strip_prefix))
    end
    if raw.strip_prefix and kind ~= "prefix" then
      bad_route("strip_prefix needs a 'prefix' rule")
    end
    if raw.strip_prefix and raw.upstream == nil then
      bad_route("strip_prefix applies to upstream routes only")
    end
    route.strip_prefix = raw.strip_prefix
  end

  if raw.body_size ~= nil then
    local b = raw.body_size
    if not is_nonneg(b, true) or b > MAX_INT then
      bad_route("body_size: expected a non-negative integer, got %s", show_value(b))
    end
    route.body_size = b
  end

  if raw.name ~= nil then
    if type(raw.name) ~= "string" then
      bad_route("name: expected a string, got %s", type(raw.name))
    end
    route.name = raw.name
  end

  if raw.websocket ~= nil then
    route.websocket = normalize_websocket(raw, bad_route)
  end

  -- hooks: access runs first (as a coroutine) on any kind of route;
  -- header_filter edits the response head; log runs after the response
  for _, f in ipairs({ "access", "header_filter", "log" }) do
    if raw[f] ~= nil then
      route[f] = function_list(raw[f], f, bad_route)
    end
  end

  -- reserved fields: type-checked, passed through unchanged
  for _, f in ipairs({ "plugins" }) do
    if raw[f] ~= nil and type(raw[f]) ~= "table" then
      bad_route("%s: expected a table, got %s", f, type(raw[f]))
    end
    route[f] = raw[f]
  end
  if raw.on_reload ~= nil and not ON_RELOAD[raw.on_reload] then
    bad_route("on_reload: expected \"keep\" or \"drain\", got %s", show_value(raw.on_reload))
  end
  route.on_reload = raw.on_reload
  if raw.timeouts ~= nil then
    local t = raw.timeouts
    if type(t) ~= "table" then
      bad_route("timeouts: expected a table, got %s", type(t))
    end
    for _, k in ipairs(sorted_keys(t)) do
      local tv = t[k]
      if not ROUTE_TIMEOUT_FIELDS[k] then
        bad_route("timeouts: unknown field %s%s", show_key(k),
                  suggestion(k, ROUTE_TIMEOUT_FIELDS))
      end
      if not is_nonneg(tv) or tv > MAX_SECONDS then
        bad_route("timeouts.%s: expected a non-negative number of seconds, got %s",
                  k, show_value(tv))
      end
    end
    route.timeouts = t
  end

  return route
end


local function load_routes(conf, upstreams)
  local src = read_source(conf.routes_file)
  local list = run_file(src)
  if type(list) ~= "table" then
    fail(src.path, return_line(src.text),
         "routes file must return a list of routes, got %s", type(list))
  end

  local n = #list
  for k in pairs(list) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      fail(src.path, return_line(src.text),
           "routes file must return a list of routes, found key %s", show_key(k))
    end
  end

  local ctx = {
    path = src.path, text = src.text, upstreams = upstreams,
    body_size = conf.limits.body_size, rule_seen = {},
  }
  local routes = {}
  for i = 1, n do
    routes[i] = norm_route(ctx, i, list[i])
  end

  -- table.sort is not stable: ties fall back to file order explicitly
  tbl_sort(routes, function(a, b)
    if a.priority ~= b.priority then
      return a.priority > b.priority
    end
    return a.index < b.index
  end)
  return routes
end


-- shared_dicts = { name = bytes }: shared-memory dictionaries across workers.
local function norm_shared_dicts(src, raw)
  local out = {}
  if raw == nil then
    return out
  end
  local top = { path = src.path, text = src.text, keys = {}, label = "" }
  local where = at(top, "shared_dicts")
  check_type(where, raw, "table")
  for _, name in ipairs(sorted_keys(raw)) do
    local w = at(where, name)
    if type(name) ~= "string" or not str_match(name, "^[%a_][%w_]*$") or #name > 31 then
      bad(w, nil, "dictionary names are identifiers of at most 31 characters")
    end
    local size = raw[name]
    if type(size) ~= "number" or size < 65536 or size > 1073741824 or size ~= math_floor(size) then
      bad(w, size, "expected a size in bytes from 65536 to 1 GiB, got %s", show_value(size))
    end
    out[#out + 1] = { name = name, size = size }
  end
  return out
end


-- Extra servers: listeners with their own route table (e.g. the embedded
-- demo Runtime). MOONGATE_SERVER_<NAME>_LISTEN overrides a listen address.
local SERVER_FIELDS = { listen = true, routes = true, enabled = true }

local function load_servers(src, raw, conf, upstreams, env)
  local out = {}
  if raw == nil then
    return out
  end
  local top = { path = src.path, text = src.text, keys = {}, label = "" }
  local where = at(top, "servers")
  check_type(where, raw, "table")
  local taken = {}
  for _, a in ipairs(conf.listen) do
    taken[a.host .. ":" .. a.port] = "listen"
  end
  for _, name in ipairs(sorted_keys(raw)) do
    local w = at(where, name)
    if type(name) ~= "string" or not str_match(name, "^[%w_]+$") then
      bad(w, nil, "server names are letters, digits and '_'")
    end
    local s = raw[name]
    check_type(w, s, "table")
    check_fields(w, s, SERVER_FIELDS)
    if s.enabled ~= nil and type(s.enabled) ~= "boolean" then
      bad(at(w, "enabled"), s.enabled, "expected a boolean, got %s", type(s.enabled))
    end
    if s.enabled ~= false then
      local listen
      local var = "MOONGATE_SERVER_" .. str_upper(name) .. "_LISTEN"
      local ev = env[var]
      if ev ~= nil and ev ~= "" then
        listen = norm_listen({ path = "env", keys = {}, label = var, env = true }, split_list(ev))
      else
        listen = norm_listen(at(w, "listen"), s.listen)
      end
      for _, a in ipairs(listen) do
        local key = a.host .. ":" .. a.port
        if taken[key] then
          bad(at(w, "listen"), nil, "%s is already used by %s", key, taken[key])
        end
        taken[key] = "servers." .. name
      end
      if type(s.routes) ~= "string" or s.routes == "" then
        bad(at(w, "routes"), s.routes, "expected the path of a routes file")
      end
      local routes = load_routes({ routes_file = join(conf.root, s.routes), limits = conf.limits },
                                 upstreams)
      out[#out + 1] = { name = name, listen = listen, routes = routes }
    end
  end
  return out
end


---------------------------------------------------------------------------
-- API
---------------------------------------------------------------------------

local function load_generation(conf_path, opts)
  local src = read_source(conf_path)
  local raw = run_file(src)
  if type(raw) ~= "table" then
    fail(src.path, return_line(src.text), "conf file must return a table, got %s", type(raw))
  end

  local ncpu = opts.ncpu
  if type(ncpu) ~= "number" or ncpu < 1 or ncpu ~= math_floor(ncpu) then
    ncpu = 1
  end
  local env = opts.env
  if env == nil then
    env = process_env(type(raw.upstreams) == "table" and raw.upstreams or nil)
  end

  local conf, upstreams = norm_conf(src, raw, env, math_min(ncpu, MAX_WORKERS))
  add_lua_path(conf.lua_path)
  local routes = load_routes(conf, upstreams)
  local servers = load_servers(src, raw.servers, conf, upstreams, env)
  conf.shared_dicts = norm_shared_dicts(src, raw.shared_dicts)
  local gen = { conf = conf, routes = routes, servers = servers }

  -- plugins (docs/plugins.md): configs checked against their schemas and
  -- bound into each route's hook lists; a route without any is untouched
  local ok, res = plugins.apply(gen, {
    root = conf.root, conf_file = src.path, conf_text = src.text, global = raw.plugins,
    upstreams = upstreams, shared_dicts = conf.shared_dicts,
  })
  if not ok then
    error(setmetatable({ msg = res }, LoadError), 0)
  end
  conf.plugins = res
  return gen
end


--- Loads and checks a conf file and the routes file it names.
-- @param conf_path path of conf/moongate.lua, kept as given in messages
-- @param opts optional: env (table of variables, replaces the process
--   environment: for specs), ncpu (number of cores, for workers = "auto")
-- @return generation `{ conf = ..., routes = ... }`, or nil and
--   "file:line: reason"
function _M.load(conf_path, opts)
  if type(conf_path) ~= "string" then
    error("bad argument #1 to 'load' (string expected, got " .. type(conf_path) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'load' (table expected, got " .. type(opts) .. ")", 2)
  end
  if opts and opts.env ~= nil and type(opts.env) ~= "table" then
    error("bad option 'env' to 'load' (table expected, got " .. type(opts.env) .. ")", 2)
  end
  local ok, res = pcall(load_generation, conf_path, opts or {})
  if ok then
    return res
  end
  if getmetatable(res) == LoadError then
    return nil, res.msg
  end
  error(res, 0)
end


--- One line per route, in match order: "priority kind rule [methods]
-- [host=h] -> target", e.g. "12 prefix /api/runtime -> upstream runtime".
-- Lines are compared between generations to log what a reload changed.
function _M.describe(gen)
  local out = {}
  for i, r in ipairs(gen and gen.routes or {}) do
    local parts = { tostring(r.priority), r.kind, r.rule }
    if r.methods then
      parts[#parts + 1] = tbl_concat(r.methods, ",")
    end
    if r.host then
      parts[#parts + 1] = "host=" .. r.host
    end
    parts[#parts + 1] = "->"
    if r.upstream then
      parts[#parts + 1] = "upstream " .. r.upstream
      if r.strip_prefix then
        parts[#parts + 1] = "(strip_prefix)"
      end
    else
      parts[#parts + 1] = "handler"
    end
    if r.websocket then
      parts[#parts + 1] = "websocket"
    end
    if r.plugin_names then
      parts[#parts + 1] = "plugins=" .. tbl_concat(r.plugin_names, ",")
    end
    if r.name then
      parts[#parts + 1] = "'" .. r.name .. "'"
    end
    out[i] = tbl_concat(parts, " ")
  end
  return out
end


--- Lines of `new` not in `old` (added) and of `old` not in `new`
-- (removed), each in its list's order. Counts duplicates: a line listed
-- twice in `new` and once in `old` is added once. Either may be nil.
function _M.diff(old, new)
  local function counts(list)
    local c = {}
    for _, s in ipairs(list or {}) do
      c[s] = (c[s] or 0) + 1
    end
    return c
  end
  local function minus(list, c)
    local out = {}
    for _, s in ipairs(list or {}) do
      if (c[s] or 0) > 0 then
        c[s] = c[s] - 1
      else
        out[#out + 1] = s
      end
    end
    return out
  end
  return { added = minus(new, counts(old)), removed = minus(old, counts(new)) }
end


return _M
