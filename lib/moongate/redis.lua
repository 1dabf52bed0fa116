-- moongate.redis: a Redis client for handlers, hooks, plugins and timers,
-- in Lua on the cosocket API (moongate.socket.tcp, core/lua/lua_socket.c),
-- after lua-resty-redis. Every call yields to the event loop; nothing
-- blocks a worker (docs/plugins.md, "Redis").
--
--   local redis = require "moongate.redis"
--   local r = redis.new()               -- the conf's redis (or redis.new{ url = ... })
--   local v, err = r:get("k")           -- every command is a method; r:call("GET", "k")
--   r:init_pipeline() r:incr("n") r:get("n")
--   local res, perr = r:commit_pipeline()
--
-- Why cosockets and not hiredis: Debian 12's libhiredis is 0.14.1, without
-- TLS; the cosocket gives rediss:// (sslhandshake) and needs no new C
-- dependency.
--
-- Per worker: the connection pool (the cosocket's, one pool per server,
-- user and db), and the health of each server: after a failure (connect,
-- timeout, reset, AUTH) calls fail fast with `nil, err` for a backoff
-- period (doubling from conf backoff up to backoff_max); then one call
-- tries again while the others go on failing fast.
--
-- Replies (RESP2): status -> string, integer -> number, bulk -> string,
-- nil bulk/array -> redis.null, array -> table; an error reply -> nil, msg
-- (inside an array or a pipeline: { false, msg }). Bounds: a bulk string
-- of at most 16 MiB, an array of at most 1 048 576 items, 8 levels of
-- nesting, 64 MiB per reply; past them the connection is closed and the
-- call returns nil, "redis protocol error: ...".

local moongate = require "moongate"
local core = require "moongate.core"
local redis_conf = require "moongate.redis_conf"

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local pcall = pcall
local select = select
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local math_min = math.min
local str_byte = string.byte
local str_format = string.format
local str_lower = string.lower
local str_rep = string.rep
local str_sub = string.sub
local str_upper = string.upper
local tbl_remove = table.remove
local unpack = unpack

local tcp = moongate.socket.tcp
local now = moongate.now
local log = moongate.log

local _M = { _VERSION = "0.1.0" }

local null = moongate.json.null
_M.null = null

local MAX_BULK = 16 * 1024 * 1024
local RECV_MAX = 16 * 1024 * 1024 -- sock:receive(size)'s bound (docs/plugins.md)
local MAX_ARRAY = 1024 * 1024
local MAX_DEPTH = 8
local MAX_REPLY = 64 * 1024 * 1024
_M.MAX_BULK, _M.MAX_ARRAY, _M.MAX_DEPTH, _M.MAX_REPLY = MAX_BULK, MAX_ARRAY, MAX_DEPTH, MAX_REPLY

-- commands that would leave a pooled connection in another state than
-- the next caller expects
local REFUSED = {
  subscribe = "use moongate.redis.subscribe", psubscribe = "use moongate.redis.subscribe",
  ssubscribe = "use moongate.redis.subscribe", monitor = "not supported",
  select = "give the database in the URL (redis://host:port/N)",
  auth = "give user and password in the URL", quit = "not needed", reset = "not supported",
  hello = "moongate.redis speaks RESP2",
}

---------------------------------------------------------------------------
-- Settings
---------------------------------------------------------------------------

local function hex(d)
  return (str_format(str_rep("%02x", #d), str_byte(d, 1, -1)))
end

-- redis.new{...}'s numeric options: their least value (seconds; pool a count)
local OPTION_MIN = { timeout = 0.001, pool = 1, keepalive = 0, backoff = 0.001, backoff_max = 0.001 }

local function settings(opts)
  local d = redis_conf.DEFAULTS
  local c
  if opts.host then
    c = opts -- the loader's normalized section
  else
    for k, min in pairs(OPTION_MIN) do
      local v = opts[k]
      if v ~= nil and (type(v) ~= "number" or v ~= v or v < min or v > 86400) then
        return nil, str_format("bad option %s: expected a number from %g to 86400, got %s", k,
                               min, tostring(v))
      end
    end
    local u, reason = redis_conf.parse_url(opts.url)
    if not u then
      return nil, reason
    end
    c = u
  end
  local function pick(k)
    local v = opts[k]
    if v == nil then return d[k] end
    return v
  end
  local s = {
    host = c.host, port = c.port, user = c.user, password = c.password, db = c.db or 0,
    tls = c.tls, timeout_ms = pick("timeout") * 1000, pool_size = pick("pool"),
    idle_ms = pick("keepalive") * 1000, backoff = pick("backoff"),
    backoff_max = pick("backoff_max"), ssl_verify = pick("ssl_verify"),
    server_name = opts.server_name or c.host,
  }
  -- one pool per server, user, password, db and TLS: a pooled connection
  -- has done its AUTH and SELECT
  s.key = str_format("redis|%s|%d|%s|%d|%s", s.host, s.port, s.user or "", s.db,
                     s.password and hex(str_sub(moongate.crypto.sha1(s.password), 1, 8)) or "")
  if s.tls then -- and one per name the certificate was checked against
    s.key = str_format("%s|tls|%s|%s", s.key, s.server_name, s.ssl_verify and "v" or "-")
  end
  s.name = str_format("%s:%d/%d", s.host, s.port, s.db)
  return s
end

local default_cfg -- from the conf, made on first use

local mt = {}

--- A client: redis.new() for the conf's redis, redis.new{ url = "redis://...",
-- timeout = s, pool = n, keepalive = s, backoff = s, backoff_max = s,
-- ssl_verify = bool, server_name = name }. Cheap (one small table): make
-- one per request, as with lua-resty-redis (a pipeline belongs to it).
function _M.new(opts)
  local cfg
  if opts == nil then
    if not default_cfg then
      local c = redis_conf.active
      if not c then
        return nil, "no redis configured (conf redis.url or MOONGATE_REDIS_URL)"
      end
      default_cfg = assert(settings(c))
    end
    cfg = default_cfg
  else
    if type(opts) ~= "table" then
      error("moongate.redis.new: expected a table of options, got " .. type(opts), 2)
    end
    local reason
    cfg, reason = settings(opts)
    if not cfg then
      return nil, reason
    end
  end
  return setmetatable({ cfg = cfg }, mt)
end

--- Whether the conf has a redis section.
function _M.configured()
  return redis_conf.active ~= nil
end

---------------------------------------------------------------------------
-- Health: fail fast while a server is down
---------------------------------------------------------------------------

local health = {} -- key -> { fails =, retry_at =, probe_until =, err = }
_M._health = health

local DOWN_ERRORS = {
  timeout = true, closed = true, ["connection refused"] = true,
  ["connection reset by peer"] = true, ["broken pipe"] = true, ["handshake failed"] = true,
  ["no route to host"] = true, ["network is unreachable"] = true,
}

local function backoff_for(cfg, fails)
  return math_min(cfg.backoff * 2 ^ (fails - 1), cfg.backoff_max)
end

-- nil when calls may go on, else the error to fail fast with
local function gate(cfg)
  local h = health[cfg.key]
  if not h then
    return nil
  end
  local t = now()
  if t < h.retry_at or t < h.probe_until then
    return str_format("redis %s unavailable (%s); next try in %.1f s", cfg.name, h.err,
                      h.retry_at > t and h.retry_at - t or h.probe_until - t)
  end
  -- this call probes; the others fail fast until it ends
  h.probe_until = t + 2 * cfg.timeout_ms / 1000 + 1
  return nil
end

local function went_down(cfg, err)
  local h = health[cfg.key]
  if not h then
    h = { fails = 0, retry_at = 0, probe_until = 0 }
    health[cfg.key] = h
  end
  h.fails = h.fails + 1
  h.err = err
  local wait = backoff_for(cfg, h.fails)
  h.retry_at, h.probe_until = now() + wait, 0
  if h.fails == 1 then
    log.warn(str_format("redis %s: %s; failing fast, retrying with backoff (%g s doubling up to "
                        .. "%g s)", cfg.name, err, cfg.backoff, cfg.backoff_max))
  end
end

local function went_up(cfg)
  local h = health[cfg.key]
  if h then
    health[cfg.key] = nil
    log.info(str_format("redis %s: reachable again after %d failed tries", cfg.name, h.fails))
  end
end

---------------------------------------------------------------------------
-- RESP2
---------------------------------------------------------------------------

-- Appends one command (args i..j of ...) to out.
local function encode(out, n, cmd, ...)
  local nargs = select("#", ...)
  out[n + 1] = "*" .. (nargs + 1) .. "\r\n$" .. #cmd .. "\r\n"
  out[n + 2] = cmd
  n = n + 2
  for i = 1, nargs do
    local a = select(i, ...)
    local ta = type(a)
    if ta == "number" then
      a = tostring(a)
    elseif ta ~= "string" then
      error(str_format("moongate.redis: %s: argument #%d is a %s (strings and numbers only)",
                       cmd, i, ta), 4)
    end
    out[n + 1] = "\r\n$" .. #a .. "\r\n"
    out[n + 2] = a
    n = n + 2
  end
  out[n + 1] = "\r\n"
  return n + 1
end
_M._encode = encode

local function perr(what)
  return nil, "redis protocol error: " .. what
end

-- One reply. Returns the value; false, msg for an error reply; nil, err
-- when the connection failed or broke the protocol (then it must close).
-- `line` is the reply's first line when the caller has read it.
local read_reply
read_reply = function(sock, depth, budget, line)
  if not line then
    local err
    line, err = sock:receive()
    if not line then
      return nil, err
    end
  end
  local t = str_byte(line, 1)
  if t == 43 then -- +
    return str_sub(line, 2)
  elseif t == 45 then -- -
    return false, str_sub(line, 2)
  elseif t == 58 then -- :
    local n = tonumber(str_sub(line, 2))
    if not n then
      return perr("bad integer reply")
    end
    return n
  elseif t == 36 then -- $
    local n = tonumber(str_sub(line, 2))
    if not n or n < -1 or n % 1 ~= 0 then
      return perr("bad bulk length")
    end
    if n == -1 then
      return null
    end
    if n > MAX_BULK then
      return perr("bulk string of " .. n .. " bytes (at most " .. MAX_BULK .. ")")
    end
    budget[1] = budget[1] + n
    if budget[1] > MAX_REPLY then
      return perr("reply larger than " .. MAX_REPLY .. " bytes")
    end
    if n > RECV_MAX - 2 then -- the cosocket's receive(size) holds at most 16 MiB
      local data, err = sock:receive(n)
      if not data then
        return nil, err
      end
      local crlf, cerr = sock:receive(2)
      if not crlf then
        return nil, cerr
      end
      if crlf ~= "\r\n" then
        return perr("bulk string without CR LF")
      end
      return data
    end
    local data, err = sock:receive(n + 2)
    if not data then
      return nil, err
    end
    if str_sub(data, -2) ~= "\r\n" then
      return perr("bulk string without CR LF")
    end
    return str_sub(data, 1, n)
  elseif t == 42 then -- *
    local n = tonumber(str_sub(line, 2))
    if not n or n < -1 or n % 1 ~= 0 then
      return perr("bad array length")
    end
    if n == -1 then
      return null
    end
    if n > MAX_ARRAY then
      return perr("array of " .. n .. " items (at most " .. MAX_ARRAY .. ")")
    end
    if depth >= MAX_DEPTH then
      return perr("arrays nested deeper than " .. MAX_DEPTH)
    end
    budget[1] = budget[1] + n
    if budget[1] > MAX_REPLY then
      return perr("reply larger than " .. MAX_REPLY .. " bytes")
    end
    local vals = {}
    for i = 1, n do
      local v, err = read_reply(sock, depth + 1, budget)
      if v == nil then
        return nil, err
      end
      if v == false then
        v = { false, err }
      end
      vals[i] = v
    end
    return vals
  end
  return perr("unknown reply type " .. (t and str_format("0x%02x", t) or "(empty line)"))
end

---------------------------------------------------------------------------
-- Connections
---------------------------------------------------------------------------

local function fail(cfg, sock, err, what)
  if sock then
    sock:close()
  end
  if DOWN_ERRORS[err] or what then
    went_down(cfg, what and (what .. ": " .. err) or err)
  elseif health[cfg.key] then
    health[cfg.key].probe_until = 0 -- the probe ended without telling
  end
  return nil, what and (what .. ": " .. err) or err
end

-- A connected socket (pooled, or new: TLS, AUTH, SELECT done), or nil,
-- err. `pool`: the cosocket pool's name.
local function connect(cfg, pool)
  local gated = gate(cfg)
  if gated then
    return nil, gated
  end
  local sock = tcp()
  sock:settimeout(cfg.timeout_ms)
  local ok, err = sock:connect(cfg.host, cfg.port, { pool = pool, pool_size = cfg.pool_size })
  if not ok then
    return fail(cfg, sock, err, "connect")
  end
  if sock:getreusedtimes() > 0 then
    return sock
  end
  if cfg.tls then
    local sess, herr = sock:sslhandshake(false, cfg.server_name, cfg.ssl_verify)
    if not sess then
      return fail(cfg, nil, herr, "TLS handshake")
    end
  end
  local out, n = {}, 0
  if cfg.password then
    if cfg.user then
      n = encode(out, n, "AUTH", cfg.user, cfg.password)
    else
      n = encode(out, n, "AUTH", cfg.password)
    end
  end
  if cfg.db ~= 0 then
    n = encode(out, n, "SELECT", cfg.db)
  end
  if n > 0 then
    local sent, serr = sock:send(out)
    if not sent then
      return fail(cfg, sock, serr, "connect")
    end
    local budget = { 0 }
    if cfg.password then
      local v, aerr = read_reply(sock, 0, budget)
      if not v then
        return fail(cfg, sock, aerr or "closed", "AUTH")
      end
    end
    if cfg.db ~= 0 then
      local v, derr = read_reply(sock, 0, budget)
      if not v then
        return fail(cfg, sock, derr or "closed", "SELECT " .. cfg.db)
      end
    end
  end
  return sock
end

-- a pooled connection that fails this way before any reply came was closed
-- by its server while idle (a restart): the command is sent once more on a
-- new connection
local STALE = { closed = true, ["connection reset by peer"] = true, ["broken pipe"] = true }

-- Sends out (n pieces) and reads `count` replies. Returns the replies as a
-- list (`count` > 1 or `list`), or the one reply (nil, msg for an error).
local exchange
exchange = function(cfg, out, count, list, retried)
  local sock, err = connect(cfg, cfg.key)
  if not sock then
    return nil, err
  end
  local stale_ok = not retried and sock:getreusedtimes() > 0
  local sent, serr = sock:send(out)
  if not sent then
    if stale_ok and STALE[serr] then
      sock:close()
      return exchange(cfg, out, count, list, true)
    end
    return fail(cfg, sock, serr)
  end
  local budget = { 0 }
  local results = list and {} or nil
  local one, one_err
  for i = 1, count do
    local v, rerr = read_reply(sock, 0, budget)
    if v == nil then
      if i == 1 and stale_ok and STALE[rerr] and budget[1] == 0 then
        sock:close()
        return exchange(cfg, out, count, list, true)
      end
      return fail(cfg, sock, rerr)
    end
    if list then
      results[i] = v == false and { false, rerr } or v
    else
      one, one_err = v, rerr
    end
    budget[1] = 0
  end
  sock:setkeepalive(cfg.idle_ms, cfg.pool_size)
  went_up(cfg)
  if list then
    return results
  end
  if one == false then
    return nil, one_err
  end
  return one
end

---------------------------------------------------------------------------
-- Commands
---------------------------------------------------------------------------

local methods = {}

local function command(self, cmd, ...)
  local refused = REFUSED[str_lower(cmd)]
  if refused then
    error("moongate.redis: " .. cmd .. ": " .. refused, 3)
  end
  local pipe = self._pipe
  if pipe then
    pipe.n = encode(pipe.out, pipe.n, cmd, ...)
    pipe.count = pipe.count + 1
    return true
  end
  local out = {}
  encode(out, 0, cmd, ...)
  return exchange(self.cfg, out, 1)
end

--- r:call("HSET", "h", "f", "v"): any command by name.
function methods.call(self, cmd, ...)
  if type(cmd) ~= "string" or cmd == "" then
    error("moongate.redis: call: expected a command name, got " .. type(cmd), 2)
  end
  return command(self, str_upper(cmd), ...)
end

function methods.init_pipeline(self)
  self._pipe = { out = {}, n = 0, count = 0 }
end

function methods.cancel_pipeline(self)
  self._pipe = nil
end

--- The queued commands' replies in order ({ false, msg } for an error
-- reply), or nil, err (the connection failed: none is known to have run).
function methods.commit_pipeline(self)
  local pipe = self._pipe
  if not pipe then
    return nil, "no pipeline (init_pipeline first)"
  end
  self._pipe = nil
  if pipe.count == 0 then
    return {}
  end
  return exchange(self.cfg, pipe.out, pipe.count, true)
end

--- A script: redis.script(src) -> { src =, sha = } (its SHA-1, as Redis
-- names it). r:run_script(script, nkeys, keys..., args...) sends EVALSHA,
-- and EVAL once when Redis answers NOSCRIPT (a restart, SCRIPT FLUSH).
function _M.script(src)
  if type(src) ~= "string" or src == "" then
    error("moongate.redis.script: expected the script's source", 2)
  end
  return { src = src, sha = hex(moongate.crypto.sha1(src)) }
end

function methods.run_script(self, script, nkeys, ...)
  if type(script) ~= "table" or not script.sha then
    error("moongate.redis: run_script: expected a redis.script(src)", 2)
  end
  if self._pipe then
    error("moongate.redis: run_script: not inside a pipeline (queue EVALSHA with r:evalsha)", 2)
  end
  local out = {}
  encode(out, 0, "EVALSHA", script.sha, nkeys, ...)
  local v, err = exchange(self.cfg, out, 1)
  if v == nil and err and str_sub(err, 1, 8) == "NOSCRIPT" then
    out = {}
    encode(out, 0, "EVAL", script.src, nkeys, ...)
    return exchange(self.cfg, out, 1)
  end
  return v, err
end

mt.__index = function(_, name)
  local m = methods[name]
  if m then
    return m
  end
  if type(name) ~= "string" or name == "" or str_sub(name, 1, 1) == "_" then
    return nil
  end
  local cmd = str_upper(name)
  m = function(self, ...) return command(self, cmd, ...) end
  methods[name] = m
  return m
end

--- { "k1", "v1", "k2", "v2" } (HGETALL, CONFIG GET) -> { k1 = "v1", k2 = "v2" }
function _M.array_to_hash(t)
  if type(t) ~= "table" then
    return t
  end
  local h = {}
  for i = 1, #t, 2 do
    h[t[i]] = t[i + 1]
  end
  return h
end

---------------------------------------------------------------------------
-- Pub/sub: one subscriber connection per worker and server
---------------------------------------------------------------------------

local IDLE_MS = 250    -- how often the subscriber looks at new channels and its health
local PING_EVERY = 5   -- seconds without traffic before it checks the connection

local subs = {
  channels = {},  -- channel -> list of callbacks
  keep = {},      -- callback -> true: it outlives a reload (subscribe's opts.keep)
  retired = false, -- the generation was retired and the callbacks not kept were dropped
  dirty = false,  -- channels changed since the loop last looked
  running = false,
  confirmed = {}, -- channel -> true once Redis confirmed it on the current connection
  cfg = nil,
  stats = { connects = 0, messages = 0, errors = 0 },
}
_M._subs = subs

local function dispatch(ch, payload)
  local list = subs.channels[ch]
  if not list then
    return
  end
  subs.stats.messages = subs.stats.messages + 1
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn, payload, ch)
    if not ok then
      subs.stats.errors = subs.stats.errors + 1
      log.error("redis subscriber: callback for '" .. ch .. "': " .. tostring(err))
    end
  end
end

-- Whether the loop should end: no channels left, or the generation was
-- retired (a reload, the worker stopping) and no callback asked to be kept.
-- At the retirement the callbacks not kept are dropped: a kept one holds the
-- connection (and the old generation) until it unsubscribes.
local function sub_done()
  if core.gen_retired() and not subs.retired then
    subs.retired = true
    for ch, list in pairs(subs.channels) do
      for i = #list, 1, -1 do
        if not subs.keep[list[i]] then
          tbl_remove(list, i)
        end
      end
      if #list == 0 then
        subs.channels[ch] = nil
        subs.dirty = true
      end
    end
  end
  return next(subs.channels) == nil
end

-- Sends (UN)SUBSCRIBE for what changed; `sent` holds what this connection asked for.
local function sync(sock, sent)
  subs.dirty = false
  local add, drop = {}, {}
  for ch in pairs(subs.channels) do
    if not sent[ch] then add[#add + 1] = ch end
  end
  for ch in pairs(sent) do
    if not subs.channels[ch] then drop[#drop + 1] = ch end
  end
  local out, n = {}, 0
  if #add > 0 then
    n = encode(out, n, "SUBSCRIBE", unpack(add))
    for _, ch in ipairs(add) do sent[ch] = true end
  end
  if #drop > 0 then
    n = encode(out, n, "UNSUBSCRIBE", unpack(drop))
    for _, ch in ipairs(drop) do sent[ch] = nil end
  end
  if n > 0 then
    return sock:send(out)
  end
  return true
end

-- Runs one subscriber connection: returns true when the loop should end
-- (no channels left, the generation retired), nil, err when it failed.
local function subscribed(sock, cfg, on_ready)
  local sent, carry = {}, ""
  local ok, err = sync(sock, sent)
  if not ok then
    return nil, err
  end
  local last_io, last_look, ping_at = now(), now(), nil
  local budget = { 0 }
  local timeout_s = cfg.timeout_ms / 1000
  while true do
    sock:settimeout(IDLE_MS)
    local line, rerr, partial = sock:receive()
    local t = now()
    if line then
      line, carry = carry .. line, ""
      last_io = t
      sock:settimeout(cfg.timeout_ms)
      budget[1] = 0
      local v, verr = read_reply(sock, 0, budget, line)
      if v == nil then
        return nil, verr
      end
      if type(v) == "table" then
        local kind = v[1]
        if kind == "message" then
          dispatch(v[2], v[3])
        elseif kind == "subscribe" then
          subs.confirmed[v[2]] = true
          on_ready()
        elseif kind == "unsubscribe" then
          subs.confirmed[v[2]] = nil
        elseif kind == "pong" then
          ping_at = nil
        end
      elseif v == false then
        return nil, "redis: " .. tostring(verr)
      end
    elseif rerr ~= "timeout" then
      return nil, rerr
    elseif partial and partial ~= "" then
      carry = carry .. partial
      if #carry > 1048576 then
        return perr("line too long")
      end
    end
    if t - last_look >= IDLE_MS / 1000 or subs.dirty then
      last_look = t
      if sub_done() then
        return true
      end
      if subs.dirty then
        ok, err = sync(sock, sent)
        if not ok then
          return nil, err
        end
      end
      if ping_at and t - ping_at > timeout_s + IDLE_MS / 1000 then
        return nil, "timeout (no answer to PING)"
      end
      if not ping_at and t - last_io >= PING_EVERY then
        local out = {}
        encode(out, 0, "PING")
        ok, err = sock:send(out)
        if not ok then
          return nil, err
        end
        ping_at = t
      end
    end
  end
end

local function sub_loop(cfg)
  local fails = 0
  while not sub_done() do
    local sock, err = connect(cfg, cfg.key .. "|sub") -- never pooled: closed below
    if sock then
      subs.stats.connects = subs.stats.connects + 1
      local restored = fails
      local done
      done, err = subscribed(sock, cfg, function()
        if restored > 0 then
          log.info("redis subscriber " .. cfg.name .. ": connected again, channels restored")
          restored = 0
        end
        fails = 0
        went_up(cfg)
      end)
      sock:close()
      subs.confirmed = {}
      if done then
        break
      end
      went_down(cfg, err or "closed")
    end
    fails = fails + 1
    if fails == 1 then
      log.warn("redis subscriber " .. cfg.name .. ": " .. tostring(err)
               .. "; reconnecting with backoff")
    end
    moongate.sleep(backoff_for(cfg, fails))
  end
  subs.running = false
  subs.confirmed = {}
end

--- redis.subscribe(channel, fn): fn(message, channel) runs in this
-- worker's subscriber coroutine for each message on the channel. The first
-- subscription starts that coroutine (one connection per worker, to the
-- conf's redis); it restores every channel after a reconnect. Call it
-- where coroutines run (a handler, hook, timer, WebSocket handler), not at
-- load time. Returns true; Redis confirms within about 250 ms
-- (redis.subscribed(channel)). opts.keep: the callback outlives a reload of
-- the scripts (the connection, and the old generation, stay until it
-- unsubscribes); the others are dropped when a reload retires them.
function _M.subscribe(channel, fn, opts)
  if type(channel) ~= "string" or channel == "" or #channel > 1024 then
    error("moongate.redis.subscribe: expected a channel name (1 to 1024 bytes)", 2)
  end
  if type(fn) ~= "function" then
    error("moongate.redis.subscribe: expected a function, got " .. type(fn), 2)
  end
  if not subs.cfg then
    local r, err = _M.new()
    if not r then
      return nil, err
    end
    subs.cfg = r.cfg
  end
  local list = subs.channels[channel]
  if not list then
    list = {}
    subs.channels[channel] = list
    subs.dirty = true
  end
  list[#list + 1] = fn
  if type(opts) == "table" and opts.keep then
    subs.keep[fn] = true
  end
  if not subs.running then
    subs.running = true
    local ok, err = pcall(moongate.timer, 0, sub_loop, subs.cfg)
    if not ok then
      subs.running = false
      list[#list] = nil
      if #list == 0 then subs.channels[channel] = nil end
      error("moongate.redis.subscribe: " .. tostring(err), 2)
    end
  end
  return true
end

--- redis.unsubscribe(channel, fn?): drops fn (or every callback) of the channel.
function _M.unsubscribe(channel, fn)
  local list = subs.channels[channel]
  if not list then
    return false
  end
  for i = #list, 1, -1 do
    if fn == nil or list[i] == fn then
      subs.keep[list[i]] = nil
      tbl_remove(list, i)
    end
  end
  if #list == 0 then
    subs.channels[channel] = nil
    subs.dirty = true
  end
  return true
end

--- Whether Redis has confirmed the channel on this worker's subscriber
-- connection (false while it reconnects).
function _M.subscribed(channel)
  return subs.confirmed[channel] == true
end

--- redis.publish(channel, message) on the conf's redis: the number of
-- subscribers that got it, or nil, err.
function _M.publish(channel, message)
  local r, err = _M.new()
  if not r then
    return nil, err
  end
  return r:publish(channel, message)
end

--- This worker's view: { servers = { name -> { fails, retry_in, err } },
-- subscriber = { channels, confirmed, connects, messages, errors } }.
function _M.status()
  local out = { servers = {}, subscriber = { channels = 0, confirmed = 0 } }
  local t = now()
  for _, h in pairs(health) do
    out.servers[#out.servers + 1] = { fails = h.fails, err = h.err,
                                      retry_in = h.retry_at > t and h.retry_at - t or 0 }
  end
  for _ in pairs(subs.channels) do out.subscriber.channels = out.subscriber.channels + 1 end
  for _ in pairs(subs.confirmed) do out.subscriber.confirmed = out.subscriber.confirmed + 1 end
  for k, v in pairs(subs.stats) do out.subscriber[k] = v end
  out.subscriber.running = subs.running
  return out
end

return _M
