-- moongate.redis_conf: checks and normalizes the conf's `redis` section
-- (docs/configuration.md, "Redis") and MOONGATE_REDIS_URL for the loader,
-- and parses redis:// and rediss:// URLs for moongate.redis. Pure Lua.
--
--   redis = { url = "redis://user:pass@127.0.0.1:6379/0", pool = 32, timeout = 1 }
--
-- The normalized section is kept here (_M.active) for the generation's
-- Lua state: moongate.redis.default() builds its client from it.

local type = type
local tonumber = tonumber
local tostring = tostring
local ipairs = ipairs
local math_floor = math.floor
local str_char = string.char
local str_find = string.find
local str_gsub = string.gsub
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub

local check = require "moongate.check"
local at = check.at
local bad = check.bad
local fail = check.fail
local show_key = check.show_key
local sorted_keys = check.sorted_keys

local _M = { _VERSION = "0.1.0" }

-- the defaults (docs/configuration.md)
_M.DEFAULTS = {
  pool = 32,           -- idle connections kept per worker
  timeout = 1,         -- seconds: connect, send, each read
  keepalive = 60,      -- seconds an idle pooled connection is kept
  backoff = 0.2,       -- seconds of fail-fast after the first failure
  backoff_max = 10,    -- doubling up to this
  ssl_verify = true,   -- rediss://: verify the server's certificate
}

local FIELDS = {
  url = true, pool = true, timeout = true, keepalive = true, backoff = true,
  backoff_max = true, ssl_verify = true, server_name = true,
}

local function unescape(s)
  return (str_gsub(s, "%%(%x%x)", function(h) return str_char(tonumber(h, 16)) end))
end

--- Parses a Redis URL: redis://[user[:password]@]host[:port][/db] or
-- rediss:// (TLS). IPv6 hosts in brackets. Returns a table { tls, host,
-- port, user, password, db } or nil, reason.
function _M.parse_url(url)
  if type(url) ~= "string" then
    return nil, "expected a redis:// or rediss:// URL, got " .. type(url)
  end
  if #url > 2048 then
    return nil, "the URL is longer than 2048 bytes"
  end
  local scheme, rest = str_match(url, "^(%a+)://(.*)$")
  scheme = scheme and str_lower(scheme)
  if scheme ~= "redis" and scheme ~= "rediss" then
    return nil, "expected a redis:// or rediss:// URL, got '" .. url .. "'"
  end
  local out = { tls = scheme == "rediss", port = 6379, db = 0 }
  local auth, hostpart = str_match(rest, "^(.*)@([^@]*)$")
  if not auth then
    hostpart = rest
  end
  if auth then
    local user, pass = str_match(auth, "^([^:]*):(.*)$")
    if not user then
      -- redis://secret@host is a password (as redis-cli -u reads it)
      user, pass = "", auth
    end
    out.user = user ~= "" and unescape(user) or nil
    out.password = pass ~= "" and unescape(pass) or nil
  end
  local hostport, path = str_match(hostpart, "^([^/?#]*)(.*)$")
  local host, port = str_match(hostport, "^%[([%x:%.]+)%]:?(%d*)$")
  if not host then
    host, port = str_match(hostport, "^([^:%[%]]*):?(%d*)$")
  end
  if not host or host == "" then
    return nil, "no host in '" .. url .. "'"
  end
  if str_find(hostport, ":", 1, true) and port == "" and not str_find(hostport, "^%[.*%]$") then
    return nil, "bad port in '" .. url .. "'"
  end
  if port ~= "" then
    local p = tonumber(port)
    if not p or p < 1 or p > 65535 then
      return nil, "bad port " .. port .. " (1-65535)"
    end
    out.port = p
  end
  out.host = host
  path = str_gsub(path, "[?#].*$", "")
  if path ~= "" and path ~= "/" then
    local db = str_match(path, "^/(%d+)$")
    db = db and tonumber(db)
    if not db or db > 1000000 then
      return nil, "bad database '" .. str_sub(path, 2) .. "' (expected /0, /1, ...)"
    end
    out.db = db
  end
  return out
end

-- a URL for messages and the admin documents: without its password
function _M.safe_url(url)
  return (str_gsub(url, "^(%a+://[^:@/]*):[^@/]*@", "%1:***@"))
end

local function number_field(w, raw, k, min, max, int)
  local v = raw[k]
  if v == nil then
    return _M.DEFAULTS[k]
  end
  if type(v) ~= "number" or v ~= v or v < min or v > max or (int and v ~= math_floor(v)) then
    bad(at(w, k), nil, "expected %s from %s to %s, got %s", int and "an integer" or "a number",
        tostring(min), tostring(max), type(v) == "number" and tostring(v) or type(v))
  end
  return v
end

--- Checks the conf's `redis` (raw, at `where`) and the environment's
-- MOONGATE_REDIS_URL (which replaces the file's url). Raises file:line
-- errors as the rest of the loader; returns the normalized section, or nil
-- when there is none.
function _M.load(where, raw, env)
  local ev = env and env.MOONGATE_REDIS_URL
  if ev == "" then
    ev = nil
  end
  if raw == nil and ev == nil then
    _M.active = nil
    return nil
  end
  local w = at(where, "redis")
  if raw ~= nil and type(raw) ~= "table" then
    bad(w, nil, "expected a table, got %s", type(raw))
  end
  raw = raw or {}
  for _, k in ipairs(sorted_keys(raw)) do
    if not FIELDS[k] then
      bad(at(w, k), nil, "unknown field %s (redis has url, pool, timeout, keepalive, backoff, "
          .. "backoff_max, ssl_verify, server_name)", show_key(k))
    end
  end
  local out = { from = "file" }
  local u
  if raw.url ~= nil then
    local reason
    u, reason = _M.parse_url(raw.url)
    if not u then
      bad(at(w, "url"), nil, "%s", reason)
    end
  end
  if ev then
    local reason
    u, reason = _M.parse_url(ev)
    if not u then
      fail("env", 0, "MOONGATE_REDIS_URL: %s", reason)
    end
    out.from = "environment"
  end
  if u == nil then
    bad(at(w, "url"), nil, "missing: the server, e.g. url = \"redis://127.0.0.1:6379/0\" "
        .. "(or MOONGATE_REDIS_URL)")
  end
  -- the URL's parts; its password only under a key the admin documents hide
  out.url = _M.safe_url(ev or raw.url)
  out.tls, out.host, out.port, out.db = u.tls, u.host, u.port, u.db
  out.user, out.password = u.user, u.password
  out.pool = number_field(w, raw, "pool", 1, 4096, true)
  out.timeout = number_field(w, raw, "timeout", 0.001, 3600)
  out.keepalive = number_field(w, raw, "keepalive", 0, 86400)
  out.backoff = number_field(w, raw, "backoff", 0.001, 3600)
  out.backoff_max = number_field(w, raw, "backoff_max", 0.001, 86400)
  if out.backoff_max < out.backoff then
    bad(at(w, "backoff_max"), nil, "must be at least backoff (%s)", tostring(out.backoff))
  end
  out.ssl_verify = _M.DEFAULTS.ssl_verify
  if raw.ssl_verify ~= nil then
    if type(raw.ssl_verify) ~= "boolean" then
      bad(at(w, "ssl_verify"), nil, "expected a boolean, got %s", type(raw.ssl_verify))
    end
    out.ssl_verify = raw.ssl_verify
  end
  if raw.server_name ~= nil then
    if type(raw.server_name) ~= "string" or raw.server_name == "" then
      bad(at(w, "server_name"), nil, "expected a host name, got %s", type(raw.server_name))
    end
    out.server_name = raw.server_name
  end
  _M.active = out
  return out
end

return _M
