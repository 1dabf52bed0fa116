-- moongate.loader: reads conf/moongate.lua and scripts/routes.lua, checks
-- them against docs/configuration.md and returns one normalized
-- "generation" table that core/app/load.c copies into C structs.
--
-- Pure Lua, no moongate APIs: `moongate -t`, the SIGHUP reload path and the
-- unit specs all run exactly this code. The conf is described by the
-- moongate.schema specs below, the routes file by moongate.routes; both
-- raise through moongate.check.
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
local io_open = io.open
local tonumber = tonumber
local error = error
local pcall = pcall
local require = require
local os_getenv = os.getenv
local math_floor = math.floor
local math_min = math.min
local math_max = math.max
local str_byte = string.byte
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
local check = require "moongate.check"
local tls_extras = require "moongate.tls_extras"
local fail = check.fail
local show_key = check.show_key
local show_value = check.show_value
local read_source = check.read_source
local run_file = check.run_file
local return_line = check.return_line
local at = check.at
local bad = check.bad
local locate = check.locate
local is_nonneg = check.is_nonneg
local number_reason = check.number_reason
local string_list_reason = check.string_list_reason
local valid_hostname = check.valid_hostname
local sorted_keys = check.sorted_keys
local join = check.join
local root_of = check.root_of
local add_lua_path = check.add_lua_path
local MAX_SECONDS = check.MAX_SECONDS
local MAX_INT = check.MAX_INT
local MAX_NAME = check.MAX_NAME
local cidr = require "moongate.cidr"
local load_routes = require("moongate.routes").load
local tls_conf = require "moongate.tls_conf"
local mode = require "moongate.mode"
local validate = require("moongate.schema").validate


local _M = { _VERSION = "0.1.0" }


-- Defaults, as documented in docs/configuration.md, live in the schemas
-- below. Durations in seconds, sizes in bytes.
local MAX_WORKERS = 1024 -- a sanity bound (the master keeps one slot per worker)


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
  env.MOONGATE_TLS_LISTEN = os_getenv("MOONGATE_TLS_LISTEN")
  env.MOONGATE_TLS_CERT = os_getenv("MOONGATE_TLS_CERT")
  env.MOONGATE_TLS_KEY = os_getenv("MOONGATE_TLS_KEY")
  env.MOONGATE_ADMIN_LISTEN = os_getenv("MOONGATE_ADMIN_LISTEN")
  env.MOONGATE_ADMIN_TOKEN = os_getenv("MOONGATE_ADMIN_TOKEN")
  env.MOONGATE_REDIS_URL = os_getenv("MOONGATE_REDIS_URL")
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


-- The variables moongate reads (docs/configuration.md, "Environment"), and
-- those of its own spec harness (spec/, tools/run-specs.sh), which the
-- gateway ignores. Any other MOONGATE_* is a warning, with the closest
-- known name when one is near.
local KNOWN_ENV = {
  "MOONGATE_LISTEN", "MOONGATE_WORKERS", "MOONGATE_MAX_OPEN_FILES", "MOONGATE_DEMO",
  "MOONGATE_TLS_LISTEN", "MOONGATE_TLS_CERT", "MOONGATE_TLS_KEY", "MOONGATE_LIB",
  "MOONGATE_CONF", "MOONGATE_ADMIN_LISTEN", "MOONGATE_ADMIN_TOKEN", "MOONGATE_JIT_LOG",
  "MOONGATE_REDIS_URL",
}
local HARNESS_ENV = {
  MOONGATE_BIN = true, MOONGATE_ASAN = true, MOONGATE_CTESTS = true,
  MOONGATE_FUZZ_N = true, MOONGATE_FUZZ_SECS = true,
}

-- Levenshtein distance, for "did you mean" (short names only).
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    local ai = str_sub(a, i, i)
    for j = 1, #b do
      local cost = ai == str_sub(b, j, j) and 0 or 1
      cur[j] = math_min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- A note for every MOONGATE_* variable moongate does not read.
local function check_env_names(env, raw)
  local known, candidates = {}, {}
  for _, k in ipairs(KNOWN_ENV) do
    known[k] = true
    candidates[#candidates + 1] = k
  end
  for name in pairs(type(raw.upstreams) == "table" and raw.upstreams or {}) do
    if type(name) == "string" then
      candidates[#candidates + 1] = "MOONGATE_UPSTREAM_" .. str_upper(name)
    end
  end
  for name in pairs(type(raw.servers) == "table" and raw.servers or {}) do
    if type(name) == "string" then
      candidates[#candidates + 1] = "MOONGATE_SERVER_" .. str_upper(name) .. "_LISTEN"
    end
  end
  local names = {}
  for k in pairs(env) do
    if type(k) == "string" then names[#names + 1] = k end
  end
  tbl_sort(names)
  for _, k in ipairs(names) do
    if not known[k] and not HARNESS_ENV[k] and not str_find(k, "^MOONGATE_UPSTREAM_.")
       and not str_find(k, "^MOONGATE_SERVER_.+_LISTEN$") then
      local best, bestd
      for _, c in ipairs(candidates) do
        local d = distance(k, c)
        if not bestd or d < bestd then best, bestd = c, d end
      end
      if best and bestd <= math_max(2, math_floor(#k / 5)) then
        mode.note("warn", "env: %s is not a moongate variable (ignored): did you mean %s?", k, best)
      else
        mode.note("warn", "env: %s is not a moongate variable (ignored); moongate --help "
                  .. "lists them", k)
      end
    end
  end
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


-- The converters below return the normalized value, or nil, reason and
-- the string to look for when finding the line.

local function norm_listen(v)
  local items, err = string_list_reason(v)
  if not items then return nil, err end
  if #items == 0 then
    return nil, "at least one address is required"
  end
  local out, seen = {}, {}
  for i, s in ipairs(items) do
    local host, port = parse_hostport(s)
    if not host then
      return nil, str_format("'%s': %s", s, port), s
    end
    if host == "" then
      host = "0.0.0.0"
    end
    local key = host .. "\0" .. port
    if seen[key] then
      return nil, str_format("'%s' is listed twice", s), s
    end
    seen[key] = true
    out[i] = { host = host, port = port }
  end
  return out
end


-- "auto" and 0 are resolved by the caller (ncpu).
local function norm_workers(v)
  if v == "auto" then
    return 0
  end
  if not is_nonneg(v, true) then
    return nil, str_format("expected a non-negative integer or \"auto\", got %s", show_value(v))
  end
  if v > MAX_WORKERS then
    return nil, str_format("%d is too many (at most %d)", v, MAX_WORKERS)
  end
  return v
end


-- "http://host[:port][/]" -> { host=, port=, url= }; https:// (and wss://,
-- the same for a WebSocket upstream) add tls = true. ws:// is http://. No
-- path: the request's own path is forwarded.
local SCHEMES = { http = 80, ws = 80, https = 443, wss = 443 }

local function parse_server(s)
  local scheme, rest = str_match(s, "^(%a[%w+.%-]*)://(.*)$")
  if not scheme then
    return nil, "expected \"http://host:port\""
  end
  scheme = str_lower(scheme)
  local default_port = SCHEMES[scheme]
  if not default_port then
    return nil, "unsupported scheme '" .. scheme .. "' (http, https, ws or wss)"
  end
  local tls = default_port == 443 or nil
  rest = str_gsub(rest, "/$", "", 1)
  if str_find(rest, "[/?#]") then
    return nil, "must not have a path or query"
  end
  if str_find(rest, "@", 1, true) then
    return nil, "must not have user info"
  end
  local host, port = parse_hostport(rest, default_port)
  if not host then
    return nil, port
  end
  if host == "" then
    return nil, "missing host"
  end
  host = str_lower(host)
  local url_host = str_find(host, ":", 1, true) and ("[" .. host .. "]") or host
  return { host = host, port = port, tls = tls,
           url = (tls and "https://" or "http://") .. url_host .. ":" .. port }
end


local function norm_servers(v)
  local items, err = string_list_reason(v)
  if not items then return nil, err end
  if #items == 0 then
    return nil, "at least one server is required"
  end
  local out = {}
  for i, s in ipairs(items) do
    local server, serr = parse_server(s)
    if not server then
      return nil, str_format("'%s': %s", s, serr), s
    end
    out[i] = server
  end
  return out
end


-- trusted_proxies: CIDR blocks (or single addresses), IPv4 and IPv6 ->
-- { {bytes = network-order bytes (4 or 16), bits = prefix length}, ... }
local function norm_trusted(v)
  local items, err = string_list_reason(v)
  if not items then return nil, err end
  local out = {}
  for i, s in ipairs(items) do
    local block, reason = cidr.parse_cidr(s)
    if not block then
      return nil, str_format("item #%d: %s (expected an address or CIDR block such as "
                             .. "\"10.0.0.0/8\" or \"2001:db8::/32\")", i, reason), s
    end
    out[i] = { bytes = block.bytes, bits = block.bits }
  end
  return out
end

local TRUSTED_PROXIES = { type = "any", default = {}, convert = norm_trusted }
local PROXY_PROTOCOL = { type = "boolean", default = false,
                         message = "expected a boolean, got {type}" }
-- HTTP/2 (docs/configuration.md, "HTTP/2"): `http2` offers ALPN "h2" on
-- TLS listeners (the default of every tls table; tls.http2 overrides it),
-- `h2c` takes prior-knowledge HTTP/2 on plain listeners; both off by default
local HTTP2 = { type = "boolean", default = false, message = "expected a boolean, got {type}" }


local function norm_lua_path(v, _, ctx)
  local dirs, err = string_list_reason(v)
  if not dirs then return nil, err end
  for i, dir in ipairs(dirs) do
    if dir == "" then
      return nil, str_format("item #%d must not be empty", i)
    end
    dirs[i] = join(ctx.root, dir)
  end
  return dirs
end


---------------------------------------------------------------------------
-- The conf file's shape, as moongate.schema specs (docs/configuration.md).
-- Every reason is the one the hand-written checks gave.
---------------------------------------------------------------------------

-- A number for the core: non-negative, finite, at most max.
local function count(default, max)
  return { type = "any", default = default,
           convert = function(v) return number_reason(v, true, max) end }
end

local function seconds(default)
  return { type = "any", default = default,
           convert = function(v) return number_reason(v, false, MAX_SECONDS) end }
end

local function table_of(fields)
  return { type = "table", message = "expected a table, got {type}", fields = fields }
end

local function file_field()
  return { type = "string", message = "expected the path of a file, got {type}",
           check = function(v) return v ~= "", "must not be empty" end }
end

-- Active health checks: GET path every interval on a connection of its
-- own; fall failures in a row mark a server down, rise passes bring it back
-- (core/upstream/health.c).
local function positive(kind, default, max)
  return { type = "any", default = default,
           convert = function(v)
             local x, reason = number_reason(v, kind == "count", max)
             if x == nil then return nil, reason end
             if x <= 0 then return nil, "must be more than 0" end
             if kind == "seconds" and x < 0.01 then return nil, "must be at least 0.01 s" end
             return x
           end }
end

local HEALTH_CHECK = {
  type = "table", optional = true, message = "expected a table, got {type}", fields = {
    path = { type = "string", default = "/", message = "expected a string, got {type}",
             check = function(v)
               return #v <= 127 and str_find(v, "^/[\33-\126]*$") ~= nil,
                 "expected a path starting with '/' (at most 127 characters, no spaces), got "
                   .. show_value(v)
             end },
    interval = positive("seconds", 5, 86400),
    timeout = positive("seconds", 2, 3600),
    expect = { type = "any", default = 200,
               convert = function(v)
                 local x, reason = number_reason(v, true, 599)
                 if x == nil then return nil, reason end
                 if x < 100 then return nil, "expected an HTTP status (100-599), got " .. x end
                 return x
               end },
    rise = positive("count", 2, 1000),
    fall = positive("count", 3, 1000),
  },
}

-- access_log: true (stderr), false, "stderr", "stdout" or a file (a path
-- with a '/', relative to the project root), which must open for appending
-- now: a reload that names one that cannot is refused.
local function norm_access_log(v, _, ctx)
  if type(v) == "boolean" or v == "stderr" or v == "stdout" then
    return v
  end
  -- a file is named with a '/' ("logs/access.log", "./access.log"): a bare
  -- word is more likely a mistyped boolean
  if type(v) ~= "string" or not str_find(v, "/", 1, true) then
    return nil, str_format('expected a boolean, got %s (or "stderr", "stdout", or a file: a path '
      .. 'with a "/", like "logs/access.log")', type(v))
  end
  local path = join(ctx.root, v)
  local f, err = io_open(path, "a")
  if not f then
    -- io.open says "<path>: <strerror>"; keep only the reason
    return nil, "cannot open it for appending: " .. (str_match(tostring(err), ": ([^:]+)$") or tostring(err))
  end
  f:close()
  return path
end

local UPSTREAM = table_of({
  servers = { type = "any", required = true, convert = norm_servers },
  -- https:// and wss:// servers (norm_upstream_tls reads the files)
  tls = { type = "table", optional = true, message = "expected a table, got {type}", fields = {
    verify = { type = "boolean", default = true, message = "expected a boolean, got {type}" },
    ca = file_field(), cert = file_field(), key = file_field(),
    server_name = { type = "string", message = "expected a string, got {type}",
                    check = function(v)
                      return valid_hostname(v), "expected a host name, got " .. show_value(v)
                    end },
  } },
  keepalive = count(64, MAX_INT),
  connect_timeout = seconds(5),
  response_timeout = seconds(60),
  body_timeout = seconds(60),
  max_fails = count(3, MAX_INT),
  fail_timeout = seconds(10),
  health_check = HEALTH_CHECK,
})

-- An upstream's TLS: its servers all https:// (wss://) or all http://; the
-- tls table only with the first; the CA, certificate and key files read now
-- (through the load's snapshot: workers get the master's bytes), and
-- parsed by core/app/uptls.c, which refuses what OpenSSL refuses.
local function norm_upstream_tls(top, name, u, root)
  local w = at(at(top, "upstreams"), name)
  local tls = u.servers[1].tls or false
  for _, srv in ipairs(u.servers) do
    if (srv.tls or false) ~= tls then
      bad(at(w, "servers"), nil, "mixes http:// and https:// servers")
    end
  end
  if not tls then
    if u.tls ~= nil then
      bad(at(w, "tls"), nil, "applies to https:// and wss:// servers only")
    end
    return
  end
  local t = u.tls or { verify = true }
  local out = { verify = t.verify ~= false, server_name = t.server_name }
  for _, k in ipairs({ "ca", "cert", "key" }) do
    if t[k] then
      local src = read_source(join(root, t[k]))
      out[k] = src.path
      out[k .. "_pem"] = src.text
    end
  end
  if (out.cert == nil) ~= (out.key == nil) then
    bad(at(w, "tls"), nil, "a client certificate needs both cert and key")
  end
  u.tls = out
end

local function upstream_name(name)
  return type(name) == "string" and str_find(name, "^[%w_%-]+$") ~= nil and #name <= MAX_NAME
end

local ANY = { type = "any" }

-- The order is the order of the checks; env(var) functions apply the
-- environment's override of the field just checked.
local function conf_schema(env_fn)
  return {
    order = {
      "listen", env_fn("listen"), "workers", env_fn("workers"),
      "max_open_files", env_fn("max_open_files"), "demo", env_fn("demo"), "routes", "lua_path",
      "access_log", "log_level", "timeouts", "limits", "upstreams",
      "trusted_proxies", "proxy_protocol", "http2", env_fn("http2"), "h2c", "http2_websocket",
    },
    fields = {
      listen = { type = "any", default = "127.0.0.1:8080", convert = norm_listen },
      workers = { type = "any", default = "auto", convert = norm_workers },
      -- the soft RLIMIT_NOFILE the master sets at start (0 = the hard
      -- limit); applied once, so a reload cannot change it
      max_open_files = count(0, MAX_INT),
      -- the demo (the embedded demo Runtime, the demo's static tokens):
      -- lib/moongate/mode.lua tells the scripts; MOONGATE_DEMO=0|1
      demo = { type = "boolean", default = false, message = "expected a boolean, got {type}" },
      -- relative to the project root
      routes = { type = "string", default = "scripts/routes.lua", as = "routes_file",
                 message = "expected a string, got {type}",
                 convert = function(v, _, ctx)
                   if v == "" then return nil, "must not be empty" end
                   return join(ctx.root, v)
                 end },
      lua_path = { type = "any", default = { "scripts", "lib" }, convert = norm_lua_path },
      access_log = { type = "any", default = true, convert = norm_access_log },
      -- plain listeners answer with a redirect to https (moongate.tls_extras)
      redirect_https = tls_extras.redirect_https,
      log_level = { type = "any", default = "info", one_of = { "debug", "info", "warn", "error" },
                    message = "expected one of debug, info, warn, error, got {value}" },
      timeouts = table_of({
        read = seconds(0), write = seconds(0), idle = seconds(3600),
        header = seconds(30), drain = seconds(10), body = seconds(60),
      }),
      limits = table_of({
        header_size = count(16384, MAX_INT), header_count = count(100, MAX_INT),
        body_size = count(1048576, MAX_INT), websockets = count(10000, MAX_INT),
        -- HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS per connection (0 would
        -- refuse every stream: at least 1)
        h2_streams = { type = "any", default = 128, convert = function(v)
          if v == 0 then return nil, "expected at least 1, got 0" end
          return number_reason(v, true, 65536)
        end },
      }),
      -- a map in the file; an array sorted by name for the core (norm_conf)
      upstreams = {
        type = "table", default = {}, message = "expected a table, got {type}", values = UPSTREAM,
        keys = function(name)
          if upstream_name(name) then return true end
          return nil, str_format("bad upstream name %s (letters, digits, '_' and '-', at most %d)",
                                 show_key(name), MAX_NAME), true
        end,
      },
      -- the hop before moongate: whose X-Forwarded-* to believe, and
      -- whether every listener expects a PROXY protocol header first
      trusted_proxies = TRUSTED_PROXIES,
      proxy_protocol = PROXY_PROTOCOL,
      http2 = HTTP2, h2c = HTTP2,
      -- RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL on HTTP/2 connections, so
      -- WebSocket routes take extended CONNECT (docs/websocket.md)
      http2_websocket = { type = "boolean", default = true,
                          message = "expected a boolean, got {type}" },
      -- checked after the routes, in this order (load_generation)
      servers = ANY, shared_dicts = ANY, plugins = ANY,
      tls = ANY, -- moongate.tls_conf (norm_conf)
      acme = ANY, -- moongate.acme_conf
      admin = ANY, health_path = ANY, -- norm_admin (norm_conf)
      redis = ANY, -- moongate.redis_conf (load_generation)
    },
  }
end


-- Raises the error of a failed schema.validate(), placed by `where` (the
-- record's position) and the keys and hint it returned.
local function raise_invalid(where, keys, reason, hint)
  for _, k in ipairs(keys or {}) do
    where = at(where, k)
  end
  if type(hint) == "table" then
    -- an unknown key: the line of that key
    fail(where.path, locate(where.text, at(where, hint.unknown).keys), "%s%s",
         #where.keys > 0 and (where.label .. ": ") or "", reason)
  end
  if where.env or #where.keys > 0 then
    bad(where, hint, "%s", reason)
  end
  fail(where.path, locate(where.text, {}, hint), "%s", reason)
end


local function check_with(where, spec, raw, ctx)
  local out, _, reason, hint, keys = validate(spec, raw, { ctx = ctx, named_unknown = true })
  if not out then
    raise_invalid(where, keys, reason, hint)
  end
  return out
end


-- Where the conf file's values come from, and the environment's.
local function file_where(src)
  return { path = src.path, text = src.text, keys = {}, label = "" }
end


local function env_where(var)
  return { path = "env", keys = {}, label = var, env = true }
end


local function from_env(var, v, reason, hint)
  if reason then
    raise_invalid(env_where(var), nil, reason, hint)
  end
  return v
end


-- admin = { listen = "127.0.0.1:9901", token = "..." } (docs/operations.md):
-- the admin listener, opened at start beside the others and never routed;
-- MOONGATE_ADMIN_LISTEN and MOONGATE_ADMIN_TOKEN replace the file's values.
-- health_path = "/ping": /readyz on the main listeners too. Returns the
-- admin table (nil: no admin listener) and the health path (or nil).
local function norm_admin(raw, top, env, taken)
  local w = at(top, "admin")
  local a = raw.admin
  if a ~= nil and type(a) ~= "table" then
    bad(w, nil, "expected a table, got %s", type(a))
  end
  a = a or {}
  for k in pairs(a) do
    if k ~= "listen" and k ~= "token" then
      bad(at(w, k), nil, "unknown field %s (admin has listen and token)", show_key(k))
    end
  end
  local out = { from = {} }
  if a.listen ~= nil then
    local v, reason, hint = norm_listen(a.listen)
    if not v then
      bad(at(w, "listen"), hint, "%s", reason)
    end
    out.listen, out.from.listen = v, "file"
  end
  if a.token ~= nil then
    if type(a.token) ~= "string" or #a.token < 8 or str_find(a.token, "[%s%c]") then
      bad(at(w, "token"), nil, "expected a string of at least 8 characters without spaces")
    end
    out.token, out.from.token = a.token, "file"
  end
  local ev = env.MOONGATE_ADMIN_LISTEN
  if ev and ev ~= "" then
    out.listen = from_env("MOONGATE_ADMIN_LISTEN", norm_listen(split_list(ev)))
    out.from.listen = "environment"
  end
  ev = env.MOONGATE_ADMIN_TOKEN
  if ev and ev ~= "" then
    if #ev < 8 or str_find(ev, "[%s%c]") then
      from_env("MOONGATE_ADMIN_TOKEN", nil,
               "expected a string of at least 8 characters without spaces")
    end
    out.token, out.from.token = ev, "environment"
  end
  local hp = raw.health_path
  if hp ~= nil and (type(hp) ~= "string" or str_sub(hp, 1, 1) ~= "/" or
                    str_find(hp, "[%s%c?#]")) then
    bad(at(top, "health_path"), nil, "expected a path such as \"/ping\", got %s",
        show_value(hp))
  end
  if out.listen == nil then
    if out.token then
      bad(w, nil, "a token without admin.listen (or MOONGATE_ADMIN_LISTEN) serves nothing")
    end
    return nil, hp
  end
  for _, l in ipairs(out.listen) do
    local key = l.host .. ":" .. l.port
    if taken[key] then
      if out.from.listen == "environment" then
        from_env("MOONGATE_ADMIN_LISTEN", nil, key .. " is already used by " .. taken[key])
      end
      bad(at(w, "listen"), nil, "%s is already used by %s", key, taken[key])
    end
    taken[key] = "admin.listen"
  end
  return out, hp
end


-- Checks and normalizes every field of the file, then applies the
-- environment overrides. A bad value in the file is an error even when the
-- environment overrides it: the file must stand on its own (moongate -t).
-- Returns the conf and a map name -> upstream for checking routes.
local function norm_conf(src, raw, env, ncpu)
  local top = file_where(src)
  local function trim(v) return str_match(v, "^%s*(.-)%s*$") end
  local function parse_bool(v)
    v = str_lower(trim(v))
    if v == "1" or v == "true" or v == "yes" or v == "on" then return true end
    if v == "0" or v == "false" or v == "no" or v == "off" then return false end
    return nil, str_format("expected 0 or 1, got '%s'", v)
  end
  -- MOONGATE_<FIELD> replaces the file's value of `field`, parsed by `parse`
  local function override(field, parse)
    local var = "MOONGATE_" .. str_upper(field)
    return function(_, out)
      local v = env[var]
      if v and v ~= "" then
        out[field] = from_env(var, parse(v))
      end
      return true
    end
  end
  local ENV = {
    listen = override("listen", function(v) return norm_listen(split_list(v)) end),
    workers = override("workers", function(v)
      v = trim(v)
      return norm_workers(v == "auto" and v or tonumber(v) or v)
    end),
    max_open_files = override("max_open_files", function(v)
      return number_reason(tonumber(trim(v)) or v, true, MAX_INT)
    end),
    demo = override("demo", parse_bool),
    http2 = override("http2", parse_bool),
  }
  local root = root_of(src.path)
  local conf = check_with(top, conf_schema(function(f) return ENV[f] end), raw, { root = root })
  conf.conf_file = src.path
  conf.root = root
  if conf.workers == 0 then
    conf.workers = ncpu
  end
  conf.servers, conf.shared_dicts, conf.plugins = nil, nil, nil

  -- TLS (moongate.tls_conf): listeners beside `listen`, and the ticket key
  -- rotation every TLS table shares
  local tls = tls_conf.norm(raw.tls, at(top, "tls"), {
    main = true, env = env, root = root, norm_listen = norm_listen, split_list = split_list,
    http2 = conf.http2,
  })
  conf.tls_ticket_rotate = tls.ticket_rotate
  conf.tls = tls.listen and tls or nil
  local taken = {}
  for _, a in ipairs(conf.listen) do
    taken[a.host .. ":" .. a.port] = "listen"
  end
  tls_conf.claim(conf.tls, at(top, "tls"), taken, "tls.listen")
  conf.admin, conf.health_path = norm_admin(raw, top, env, taken)
  -- where each top-level value came from, for GET /config and moongate -T
  local sources = {}
  for k in pairs(conf) do
    sources[k] = raw[k] ~= nil and "file" or "default"
  end
  for _, k in ipairs({ "listen", "workers", "max_open_files" }) do
    local v = env["MOONGATE_" .. str_upper(k)]
    if v and v ~= "" then sources[k] = "environment" end
  end
  if conf.admin then
    sources.admin = conf.admin.from
  end
  sources.conf_file, sources.root, sources.tls_ticket_rotate = nil, nil, nil
  sources.routes_file = nil
  sources.routes = raw.routes ~= nil and "file" or "default"
  conf.sources = sources

  local ups = conf.upstreams
  for name, u in pairs(ups) do
    u.name = name
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
    local v = env[var]
    if type(v) == "string" and v ~= "" then
      local name = str_lower(str_sub(var, 19))
      if name == "" or not upstream_name(name) then
        from_env(var, nil, "bad upstream name '" .. name .. "'")
      end
      if ups[name] then
        ups[name].servers = from_env(var, norm_servers(split_list(v)))
      else
        local out, _, reason, hint = validate(UPSTREAM, { servers = split_list(v) })
        ups[name] = from_env(var, out, reason, hint)
        ups[name].name = name
      end
    end
  end

  local list = {}
  for _, u in pairs(ups) do
    list[#list + 1] = u
  end
  tbl_sort(list, function(a, b) return a.name < b.name end)
  for _, u in ipairs(list) do
    norm_upstream_tls(top, u.name, u, root)
  end
  conf.upstreams = list

  return conf, ups
end


-- shared_dicts = { name = bytes }: shared-memory dictionaries across workers.
local SHARED_DICTS = {
  fields = {
    shared_dicts = {
      type = "table", default = {}, message = "expected a table, got {type}",
      keys = function(name)
        if type(name) ~= "string" or not str_match(name, "^[%a_][%w_]*$") or #name > 31 then
          return nil, "dictionary names are identifiers of at most 31 characters"
        end
        return true
      end,
      values = { type = "integer", min = 65536, max = 1073741824,
                 message = "expected a size in bytes from 65536 to 1 GiB, got {value}" },
    },
  },
}

local function norm_shared_dicts(src, raw)
  local top = file_where(src)
  local dicts = check_with(top, SHARED_DICTS, { shared_dicts = raw }).shared_dicts
  local out = {}
  for _, name in ipairs(sorted_keys(dicts)) do
    out[#out + 1] = { name = name, size = dicts[name] }
  end
  return out
end


-- Extra servers: listeners with their own route table (e.g. the embedded
-- demo Runtime). MOONGATE_SERVER_<NAME>_LISTEN overrides a listen address.
local SERVER = {
  fields = {
    -- a server's own (the main conf's do not carry over)
    trusted_proxies = TRUSTED_PROXIES,
    proxy_protocol = PROXY_PROTOCOL,
    -- prior-knowledge HTTP/2 on this server's plain listeners (its own)
    h2c = { type = "boolean", message = "expected a boolean, got {type}" },
    -- false: this server's requests are not in the access log (the demo Runtime's)
    access_log = { type = "boolean", message = "expected a boolean, got {type}" },

    -- listen and routes are checked by load_servers: the environment
    -- overrides listen, and only an enabled server's need be valid
    listen = ANY, routes = ANY, tls = ANY,
    enabled = { type = "boolean", message = "expected a boolean, got {type}" },
    -- part of the demo: served only in demo mode (the conf's `demo`)
    demo = { type = "boolean", message = "expected a boolean, got {type}" },
    redirect_https = tls_extras.redirect_https,
  },
}

local function load_servers(src, raw, conf, upstreams, env)
  local out = {}
  if raw == nil then
    return out
  end
  local top = file_where(src)
  local where = at(top, "servers")
  if type(raw) ~= "table" then
    bad(where, nil, "expected a table, got %s", type(raw))
  end
  local taken = {}
  local edges = {} -- name -> the checked entry (trusted_proxies, proxy_protocol)
  for _, a in ipairs(conf.listen) do
    taken[a.host .. ":" .. a.port] = "listen"
  end
  for _, a in ipairs(conf.tls and conf.tls.listen or {}) do
    taken[a.host .. ":" .. a.port] = "tls.listen"
  end
  for _, a in ipairs(conf.admin and conf.admin.listen or {}) do
    taken[a.host .. ":" .. a.port] = "admin.listen"
  end
  for _, name in ipairs(sorted_keys(raw)) do
    local w = at(where, name)
    if type(name) ~= "string" or not str_match(name, "^[%w_]+$") then
      bad(w, nil, "server names are letters, digits and '_'")
    end
    local s = raw[name]
    if type(s) ~= "table" then
      bad(w, nil, "expected a table, got %s", type(s))
    end
    local sv = check_with(w, SERVER, s)
    edges[name] = sv
    if s.enabled ~= false and s.demo and not conf.demo then
      mode.note("info", "servers.%s: off outside demo mode (demo = false; MOONGATE_DEMO=1 "
                .. "turns it on)", name)
    end
    if s.enabled ~= false and (not s.demo or conf.demo) then
      local listen, reason, hint
      local var = "MOONGATE_SERVER_" .. str_upper(name) .. "_LISTEN"
      local ev = env[var]
      if ev ~= nil and ev ~= "" then
        listen = from_env(var, norm_listen(split_list(ev)))
      else
        listen, reason, hint = norm_listen(s.listen)
        if not listen then
          bad(at(w, "listen"), hint, "%s", reason)
        end
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
      local tls = tls_conf.norm(s.tls, at(w, "tls"), {
        root = conf.root, ticket_rotate = conf.tls_ticket_rotate, norm_listen = norm_listen,
        split_list = split_list, http2 = conf.http2,
      })
      tls = tls.listen and tls or nil
      tls_conf.claim(tls, at(w, "tls"), taken, "servers." .. name .. ".tls")
      local routes = load_routes({ routes_file = join(conf.root, s.routes), limits = conf.limits },
                                 upstreams)
      out[#out + 1] = { name = name, listen = listen, routes = routes, tls = tls,
                        redirect_https = sv.redirect_https, access_log = sv.access_log }
    end
  end
  for _, srv in ipairs(out) do -- each server's own (the main conf's do not carry over)
    srv.trusted_proxies = edges[srv.name].trusted_proxies
    srv.proxy_protocol = edges[srv.name].proxy_protocol
    srv.h2c = edges[srv.name].h2c or false
  end
  return out
end


---------------------------------------------------------------------------
-- API
---------------------------------------------------------------------------

-- The notes on what serves and where each setting came from: the
-- environment, the file (with its line) or the default.
local function addr_list(list)
  local out = {}
  for i, a in ipairs(list or {}) do
    out[i] = (str_find(a.host, ":", 1, true) and ("[" .. a.host .. "]") or a.host) .. ":" .. a.port
  end
  return tbl_concat(out, ", ")
end

local function note_origins(src, raw, env, conf, servers)
  local function origin(var, keys, present)
    if var and env[var] and env[var] ~= "" then
      return "env " .. var
    end
    if not present then
      return "default"
    end
    return str_format("%s:%d", src.path, locate(src.text, keys))
  end
  mode.note("info", "demo mode %s (%s)", conf.demo and "on" or "off",
            origin("MOONGATE_DEMO", { "demo" }, raw.demo ~= nil))
  mode.note("info", "listen %s (%s)", addr_list(conf.listen),
            origin("MOONGATE_LISTEN", { "listen" }, raw.listen ~= nil))
  if conf.tls then
    mode.note("info", "tls.listen %s (%s)", addr_list(conf.tls.listen),
              origin("MOONGATE_TLS_LISTEN", { "tls", "listen" }, true))
  end
  mode.note("info", "workers %d (%s)", conf.workers,
            origin("MOONGATE_WORKERS", { "workers" }, raw.workers ~= nil))
  for _, srv in ipairs(servers) do
    mode.note("info", "servers.%s listen %s (%s)", srv.name, addr_list(srv.listen),
              origin("MOONGATE_SERVER_" .. str_upper(srv.name) .. "_LISTEN",
                     { "servers", srv.name, "listen" }, true))
  end
  local file_ups = type(raw.upstreams) == "table" and raw.upstreams or {}
  for _, u in ipairs(conf.upstreams) do
    local urls = {}
    for i, srv in ipairs(u.servers) do urls[i] = srv.url end
    mode.note("info", "upstream %s: %s (%s)", u.name, tbl_concat(urls, ", "),
              origin("MOONGATE_UPSTREAM_" .. str_upper(u.name), { "upstreams", u.name },
                     file_ups[u.name] ~= nil))
  end
end


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

  local notes = mode.reset(false)
  check_env_names(env, raw)
  local conf, upstreams = norm_conf(src, raw, env, math_min(ncpu, MAX_WORKERS))
  mode.demo = conf.demo
  add_lua_path(conf.lua_path)
  local routes = load_routes(conf, upstreams)
  local servers = load_servers(src, raw.servers, conf, upstreams, env)
  note_origins(src, raw, env, conf, servers)
  conf.shared_dicts = norm_shared_dicts(src, raw.shared_dicts)
  conf.acme = require("moongate.acme_conf").load(file_where(src), raw.acme, conf.root)
  conf.redis = require("moongate.redis_conf").load(file_where(src), raw.redis, env)
  if conf.redis then
    conf.sources.redis = conf.redis.from
    mode.note("info", "redis %s (%s)", conf.redis.url, conf.redis.from == "environment"
              and "env MOONGATE_REDIS_URL" or "file")
  end
  local gen = { conf = conf, routes = routes, servers = servers, notes = notes }

  -- plugins (docs/plugins.md): configs checked against their schemas and
  -- bound into each route's hook lists; a route without any is untouched
  local ok, res = plugins.apply(gen, {
    root = conf.root, conf_file = src.path, conf_text = src.text, global = raw.plugins,
    upstreams = upstreams, shared_dicts = conf.shared_dicts, redis = conf.redis,
  })
  if not ok then
    check.raise(res)
  end
  conf.plugins = res
  -- the groups' share of the access hooks was for plugins.apply only
  local function strip(list)
    for _, r in ipairs(list) do r.group_access = nil end
  end
  strip(routes)
  for _, srv in ipairs(servers) do strip(srv.routes) end

  -- the directories whose .lua files are all part of the generation
  -- (core/app/snap.c): lua_path and the plugin directories, as spelled in
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


-- The admin API's documents (GET /config, GET /routes, moongate -T), as
-- JSON text made once per generation, on the first request for one
-- (core/app/load.c; a load does not wait for them): secrets (tokens, passwords, keys) are
-- "***", PEM text and functions are named, not shown.
local ADMIN_PAGE
do
  local src = debug.getinfo(1, "S").source
  local dir = str_sub(src, 1, 1) == "@" and str_match(str_sub(src, 2), "^(.*)/[^/]*$")
  ADMIN_PAGE = dir and (dir .. "/admin/dashboard.html") or "lib/moongate/admin/dashboard.html"
end

local SECRET = { token = true, password = true, secret = true, key = true, key_pem = true,
                 ticket_key = true }

local function admin_clean(v, k, depth)
  local t = type(v)
  if type(k) == "string" and (SECRET[k] or str_find(k, "password") or str_find(k, "secret")) and
     (t == "string" or t == "number") then
    return "***"
  end
  if t == "function" then
    return "(function)"
  elseif t == "string" and str_sub(v, 1, 11) == "-----BEGIN " then
    return str_format("(PEM, %d bytes)", #v)
  elseif t == "table" then
    if depth > 8 then return "(...)" end
    local out, n = {}, 0
    for kk, vv in pairs(v) do
      n = n + 1
      if n > 1000 then break end
      out[type(kk) == "number" and kk or tostring(kk)] = admin_clean(vv, kk, depth + 1)
    end
    return out
  elseif t == "number" or t == "boolean" or t == "string" then
    return v
  end
  return tostring(v)
end

-- JSON for the admin documents: keys sorted (stable output), a table
-- with a positive length or the ARRAY metatable is a list.
local ARRAY = {}
local JSON_ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r",
                   ["\t"] = "\\t" }
-- what each character '[%c"\\]' matches becomes (%c: 0-31 and 127)
local JSON_ESC_ALL = {}
for b = 0, 127 do
  local c = string.char(b)
  if b < 32 or b == 127 or JSON_ESC[c] then
    JSON_ESC_ALL[c] = JSON_ESC[c] or str_format("\\u%04x", b)
  end
end

-- A string as JSON. Keys and most values repeat from route to route: the
-- short ones are kept (at most JSON_MEMO_MAX, then the memo starts over).
local JSON_MEMO_MAX = 20000
local json_memo, json_nmemo = {}, 0

local function json_string(v)
  local j = json_memo[v]
  if j then
    return j
  end
  -- most strings need no escape: no gsub (and no closure) for them; a
  -- byte loop finds out faster than a pattern
  local esc = false
  for i = 1, #v do
    local b = str_byte(v, i)
    if b < 32 or b == 34 or b == 92 or b == 127 then -- %c, '"', '\\'
      esc = true
      break
    end
  end
  if esc then
    j = '"' .. str_gsub(v, '[%c"\\]', JSON_ESC_ALL) .. '"'
  else
    j = '"' .. v .. '"'
  end
  if #v <= 32 then
    if json_nmemo >= JSON_MEMO_MAX then
      json_memo, json_nmemo = {}, 0
    end
    json_memo[v] = j
    json_nmemo = json_nmemo + 1
  end
  return j
end

local function json_encode(v, out)
  local t = type(v)
  if t == "table" then
    local n = #v
    if n > 0 or getmetatable(v) == ARRAY then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        json_encode(v[i], out)
      end
      out[#out + 1] = "]"
      return
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    tbl_sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      json_encode(k, out)
      out[#out + 1] = ":"
      local x = v[k]
      if x == nil then x = v[tonumber(k)] end
      json_encode(x, out)
    end
    out[#out + 1] = "}"
  elseif t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif v == math_floor(v) and v > -2^53 and v < 2^53 then
      out[#out + 1] = str_format("%d", v)
    else
      out[#out + 1] = str_format("%.17g", v)
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  else
    out[#out + 1] = "null"
  end
end

local function to_json(v)
  local out = {}
  json_encode(v, out)
  return tbl_concat(out)
end

function _M.admin_json(gen)
  local conf = gen.conf or {}
  local c = admin_clean(conf, nil, 0)
  c.sources = nil
  local servers = {}
  for _, srv in ipairs(gen.servers or {}) do
    servers[#servers + 1] = { name = srv.name, listen = admin_clean(srv.listen, nil, 0) }
  end
  c.servers = #servers > 0 and servers or nil
  local routes = {}
  local function add(list, server)
    for _, r in ipairs(list or {}) do
      -- a route's plugins: a list of names or { name = ... } tables, or a
      -- map name -> config
      local plist = {}
      local rp = type(r.plugins) == "table" and r.plugins or {}
      if #rp > 0 then
        for _, p in ipairs(rp) do
          plist[#plist + 1] = type(p) == "table" and tostring(p.name or p[1]) or tostring(p)
        end
      else
        for name, v in pairs(rp) do
          if v ~= false then plist[#plist + 1] = tostring(name) end
        end
        tbl_sort(plist)
      end
      routes[#routes + 1] = {
        name = r.name or r.rule, rule = r.rule, kind = r.kind, server = server,
        at = str_format("%s:%s", tostring(r.file), tostring(r.line)),
        target = r.upstream and ("upstream " .. r.upstream) or
                 (r.handler and "handler") or (r.websocket and "websocket") or "none",
        websocket = r.websocket and (r.websocket.mode or true) or nil,
        methods = r.methods, host = r.host, priority = r.priority,
        plugins = setmetatable(plist, ARRAY),
      }
    end
  end
  add(gen.routes, "main")
  for _, srv in ipairs(gen.servers or {}) do add(srv.routes, srv.name) end
  local cfg = to_json({ config = c, sources = conf.sources or {} })
  -- the routes' document, and for GET /routes's hits (gateway/admin.c):
  -- each route's metrics label and the byte offset (from 0) of the "}"
  -- that ends its object, where the C side adds "hits"
  local parts, marks, len = { "[" }, {}, 1
  for i, r in ipairs(routes) do
    local js = to_json(r)
    if i > 1 then
      parts[#parts + 1] = ","
      len = len + 1
    end
    parts[#parts + 1] = js
    len = len + #js
    marks[#marks + 1] = r.name
    marks[#marks + 1] = len - 1
  end
  parts[#parts + 1] = "]"
  json_memo, json_nmemo = {}, 0 -- not kept for the generation's life
  return cfg, tbl_concat(parts), marks
end

--- The dashboard (GET /): lib/moongate/admin/dashboard.html, read at load
-- through the generation's snapshot; nil if it cannot be read.
function _M.admin_page()
  local f = io.open(ADMIN_PAGE, "rb")
  if not f then
    return nil
  end
  local page = f:read("*a")
  f:close()
  return page
end


--- One line per route, in match order: "priority kind rule [methods]
-- [host=h] -> target", e.g. "12 prefix /api/runtime -> upstream runtime".
-- Lines are compared between generations to log what a reload changed.
function _M.describe(gen)
  local out = {}
  -- the parts joined by " ", in one concatenation per route
  for i, r in ipairs(gen and gen.routes or {}) do
    local methods = r.methods and (" " .. tbl_concat(r.methods, ",")) or ""
    local host = r.host and (" host=" .. r.host) or ""
    local target
    if r.upstream then
      target = " upstream " .. r.upstream .. (r.strip_prefix and " (strip_prefix)" or "")
    else
      target = " handler"
    end
    out[i] = tostring(r.priority) .. " " .. r.kind .. " " .. r.rule .. methods .. host .. " ->"
             .. target .. (r.websocket and " websocket" or "")
             .. (r.plugin_names and (" plugins=" .. tbl_concat(r.plugin_names, ",")) or "")
             .. (r.name and (" '" .. r.name .. "'") or "")
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
