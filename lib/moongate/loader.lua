-- moongate.loader: reads conf/moongate.lua and scripts/routes.lua, checks
-- them against docs/configuration.md and returns one normalized
-- "generation" table that core/gen.c copies into C structs.
--
-- Pure Lua, no moongate APIs: `moongate -t`, the SIGHUP reload path and the
-- unit specs all run exactly this code. The routes file is checked by
-- moongate.routes; both raise through moongate.check.
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
local require = require
local os_getenv = os.getenv
local math_floor = math.floor
local math_min = math.min
local str_find = string.find
local str_gmatch = string.gmatch
local str_gsub = string.gsub
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub
local str_upper = string.upper
local tbl_concat = table.concat
local tbl_sort = table.sort

local plugins = require "moongate.plugins"
local check = require "moongate.check"
local fail = check.fail
local show_key = check.show_key
local show_value = check.show_value
local read_source = check.read_source
local run_file = check.run_file
local return_line = check.return_line
local at = check.at
local bad = check.bad
local check_fields = check.check_fields
local check_type = check.check_type
local is_nonneg = check.is_nonneg
local check_number = check.check_number
local string_list = check.string_list
local valid_hostname = check.valid_hostname
local sorted_keys = check.sorted_keys
local join = check.join
local root_of = check.root_of
local add_lua_path = check.add_lua_path
local MAX_SECONDS = check.MAX_SECONDS
local MAX_INT = check.MAX_INT
local MAX_NAME = check.MAX_NAME
local load_routes = require("moongate.routes").load


local _M = { _VERSION = "0.1.0" }


-- Defaults, as documented in docs/configuration.md. Durations in seconds,
-- sizes in bytes.
local DEFAULT_LISTEN = "127.0.0.1:8080"
local DEFAULT_ROUTES = "scripts/routes.lua"
local DEFAULT_LUA_PATH = { "scripts", "lib" }
local MAX_WORKERS = 1024 -- core/mg.h

local TIMEOUT_DEFAULTS = { read = 0, write = 0, idle = 3600, header = 30, drain = 10, body = 60 }
local TIMEOUT_ORDER = { "read", "write", "idle", "header", "drain", "body" }

local LIMIT_DEFAULTS = { header_size = 16384, header_count = 100, body_size = 1048576, websockets = 10000 }
local LIMIT_ORDER = { "header_size", "header_count", "body_size", "websockets" }

-- kind: "int" = non-negative integer, "num" = non-negative number (seconds)
local UPSTREAM_SETTINGS = {
  { "keepalive", "int", 64 },
  { "connect_timeout", "num", 5 },
  { "response_timeout", "num", 60 },
  { "body_timeout", "num", 60 },
  { "max_fails", "int", 3 },
  { "fail_timeout", "num", 10 },
}

local CONF_FIELDS = {
  servers = true, shared_dicts = true, plugins = true,
  listen = true, workers = true, routes = true, lua_path = true,
  access_log = true, log_level = true, timeouts = true, limits = true,
  upstreams = true, max_open_files = true,
}

local UPSTREAM_FIELDS = { servers = true }
for _, s in ipairs(UPSTREAM_SETTINGS) do UPSTREAM_FIELDS[s[1]] = true end

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true }




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
  env.MOONGATE_MAX_OPEN_FILES = os_getenv("MOONGATE_MAX_OPEN_FILES")
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

  -- max_open_files: the soft RLIMIT_NOFILE the master sets at start (0 =
  -- the hard limit); applied once, so a reload cannot change it
  v = raw.max_open_files
  conf.max_open_files = v == nil and 0 or check_number(at(top, "max_open_files"), v, true, MAX_INT)
  v = env.MOONGATE_MAX_OPEN_FILES
  if v and v ~= "" then
    conf.max_open_files = check_number(env_where("MOONGATE_MAX_OPEN_FILES"),
                                       tonumber(str_match(v, "^%s*(.-)%s*$")) or v, true, MAX_INT)
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
    check.raise(res)
  end
  conf.plugins = res

  -- the directories whose .lua files are all part of the generation
  -- (core/snap.c): lua_path and the plugin directories, as spelled in
  -- package.path and by the plugin finder
  local snap_dirs, seen = {}, {}
  local function snap_dir(d)
    if d and not seen[d] then
      seen[d] = true
      snap_dirs[#snap_dirs + 1] = d
    end
  end
  for _, d in ipairs(conf.lua_path) do
    snap_dir(d)
  end
  snap_dir((conf.root == "." or conf.root == "") and "plugins" or (conf.root .. "/plugins"))
  snap_dir(plugins.BUNDLED_DIR)
  gen.snap_dirs = snap_dirs
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
  if check.is_load_error(res) then
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
