-- execution: the seed's /api/execution, served by moongate itself.
--
-- GET /api/execution/{execution_id}/status?tenant_id=T[&include_artifacts=true|false][&include_visuals=true|false]
--   Checked here, then handed to the C proxy (moongate.proxy, through
--   runtime_client.pass): Runtime's status code and JSON stream back
--   unchanged. tenant_id missing or empty, or a boolean that is not
--   true/false: 400 JSON naming the parameter. Runtime unreachable: 502
--   JSON; too slow: 504 JSON; an answer that is not JSON: 502 JSON.
--
-- WebSocket /api/execution/{execution_id}/stream?tenant_id=T (handler mode)
--   Follows the execution by polling Runtime's status (the seed's polling
--   fallback). ONE poller per (tenant, execution) per worker, shared by every
--   subscriber: started by the first, stopped when the last leaves. Messages:
--     {"type":"status","execution_id":...,"status":...,"data":<Runtime's JSON>}
--         at once on connect, then on every change (not on every poll)
--     {"type":"error","execution_id":...,"error":...,"status":<http>,"message":...}
--         when Runtime fails (then polling backs off, and the current status
--         follows once Runtime answers again)
--     {"type":"ping","ts":<unix_ts>} every 30 s: the route's websocket.heartbeat
--   {"type":"pong"} (and anything else) from the client is ignored. A terminal
--   status is sent, then the socket closes with 1000. An unknown execution or
--   a tenant mismatch: an error message, then close 1008.
--
--   With a Redis in the conf (moongate.redis, docs/scaling.md) ONE poller per
--   (tenant, execution) for the whole cluster: every worker that has
--   subscribers subscribes to the execution's channel; the worker that holds
--   its lease in Redis (expiring after two intervals, at least 1 s) polls and
--   publishes what to send (fenced: only the holder's publish goes out), and
--   every worker hands it to its sockets. When the holder dies another takes
--   the lease once it expires, starting from the last status published
--   (nothing sent twice). While Redis fails, each worker polls for itself as
--   without Redis. Across a reload each generation of a worker is a member
--   of its own: the old one keeps listening until its last socket leaves.
local moongate = require "moongate"
-- nil outside moongate (the loader's unit specs load this file in plain LuaJIT)
local redis_ok, redis = pcall(require, "moongate.redis")
if not redis_ok then
  redis = nil
end
local api = require "json_api"
local config = require "gateway_config"
local client = require "runtime_client"

local json = moongate.json
local type = type
local pairs = pairs
local next = next
local tostring = tostring
local pcall = pcall
local min = math.min
local ceil = math.ceil
local match = string.match
local sub = string.sub
local find = string.find
local format = string.format
local rep = string.rep
local byte = string.byte
local answer = api.answer

local _M = { _VERSION = "0.1.0" }

local function terminal_set()
  local t = {}
  for _, s in ipairs(config.stream.terminal or {}) do
    t[s] = true
  end
  return t
end
local TERMINAL = terminal_set()

-- "true"/"false" (or absent: nil); anything else is nil, err (400)
local function boolean_param(req, name)
  local v = req.query[name]
  if v == nil then
    return nil
  end
  if v == "true" then
    return true
  elseif v == "false" then
    return false
  end
  return nil, api.err(400, "invalid_parameter", name .. " must be true or false", { parameter = name })
end

-- ?tenant_id=, or nil, err (400)
local function tenant_param(req)
  local t = req.query.tenant_id
  if t == nil or t == "" then
    return nil, api.err(400, "missing_parameter", "tenant_id is required", { parameter = "tenant_id" })
  end
  return t
end

-- GET status ----------------------------------------------------------------

function _M.status(req)
  local tenant, err = tenant_param(req)
  if not tenant then
    return answer(err, req)
  end
  local artifacts, visuals
  artifacts, err = boolean_param(req, "include_artifacts")
  if err then
    return answer(err, req)
  end
  visuals, err = boolean_param(req, "include_visuals")
  if err then
    return answer(err, req)
  end
  return client.pass_execution_status(tenant, req.params.execution_id, artifacts, visuals)
end

-- stream: pollers -----------------------------------------------------------

local pollers = {} -- "tenant\0execution" -> poller (this worker, this generation)
_M.pollers = pollers
_M.stats = { polls = 0, pollers_started = 0 }

local function deep_equal(a, b)
  if a == b then
    return true
  end
  if type(a) ~= "table" or type(b) ~= "table" then
    return false
  end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- Runtime's JSON goes in as it came (re-encoding would turn [] into {})
local function status_msg(p)
  return '{"type":"status","execution_id":' .. json.encode(p.execution_id)
    .. ',"status":' .. json.encode(p.status) .. ',"data":' .. p.raw .. "}"
end

local function each_sub(p, fn)
  local list = {}
  for ws in pairs(p.subs) do
    list[#list + 1] = ws
  end
  for i = 1, #list do
    fn(list[i])
  end
end

-- one C loop over the sockets (moongate.ws_broadcast), not a ws:send call
-- per socket; a socket that closes meanwhile leaves p.subs as it goes
local ws_broadcast = moongate.ws_broadcast
local function broadcast(p, text)
  if ws_broadcast then
    ws_broadcast(p.subs, text)
  else
    each_sub(p, function(ws) ws:send(text) end) -- a stubbed moongate (unit specs)
  end
end

-- What the poller sends: to this worker's sockets, or (the cluster's
-- lease holder) published to every worker's.
local function emit(p, text)
  if p.publish then
    return p.publish(text)
  end
  if find(text, '^{"type":"status"') then
    p.last_msg = text -- for late subscribers, and the cluster's repeats after a Redis outage
  end
  broadcast(p, text)
end

local function finish(p, code, reason)
  p.stopped = true
  if pollers[p.key] == p then
    pollers[p.key] = nil
  end
  each_sub(p, function(ws) ws:close(code, reason) end)
end

local function close_all(p, code, reason)
  if p.publish_close then
    return p.publish_close(code, reason)
  end
  finish(p, code, reason)
end

local function error_msg(p, status, code, message, extra)
  local m = { type = "error", execution_id = p.execution_id, status = status, error = code,
              message = message }
  for k, v in pairs(extra or {}) do
    m[k] = v
  end
  return json.encode(m)
end

-- One poll; returns the delay before the next one, or nil when done.
local function poll_once(p)
  local s = config.stream
  local resp, err = client.execution_status(p.tenant_id, p.execution_id, {
    include_artifacts = s.include_artifacts, include_visuals = s.include_visuals,
    timeout = s.poll_timeout,
  })
  p.polls = p.polls + 1
  _M.stats.polls = _M.stats.polls + 1
  if p.stopped then
    return nil
  end
  local data = resp and resp.json
  if resp and resp.status == 200 and type(data) == "table" and type(data.status) == "string" then
    local recovered = p.fails > 0
    p.fails = 0
    p.error = nil
    if recovered or not deep_equal(data, p.data) then
      p.data, p.status = data, data.status
      p.raw = match(resp.body, "^%s*(.-)%s*$")
      emit(p, status_msg(p))
    end
    if TERMINAL[data.status] then
      -- false: deposed meanwhile; the holder's close comes on the channel
      return close_all(p, 1000, data.status) == false and s.poll_interval or nil
    end
    return s.poll_interval
  end
  if resp and resp.status >= 400 and resp.status < 500 and resp.status ~= 408 and resp.status ~= 429 then
    -- Runtime says no: unknown execution, another tenant's, bad request
    local j = type(data) == "table" and data or {}
    local code = resp.status == 404 and "not_found"
      or (resp.status == 403 and "tenant_mismatch") or "rejected"
    local message = resp.status == 404 and "unknown execution"
      or (resp.status == 403 and "execution belongs to another tenant")
      or ("Runtime refused the execution (" .. resp.status .. ")")
    emit(p, error_msg(p, resp.status, code, message, { detail = j.error or j.message }))
    return close_all(p, 1008, code) == false and s.poll_interval or nil
  end
  if resp and resp.status >= 300 then
    err = api.err(resp.status, "runtime_error", "Runtime answered " .. tostring(resp.status))
  elseif resp then
    err = api.err(502, "runtime_bad_response", "Runtime answered without an execution status")
  end
  p.fails = p.fails + 1
  local delay = min(s.poll_interval * 2 ^ (p.fails - 1), s.max_backoff)
  p.error = error_msg(p, err.status, err.error, err.message, { retry_in = delay })
  emit(p, p.error)
  return delay
end

local function run_poller(p)
  while not p.stopped do
    local ok, delay = pcall(poll_once, p)
    if not ok then
      -- a bug here must not leave the subscribers without a poller
      moongate.log.error("execution poller " .. p.execution_id .. ": " .. tostring(delay))
      p.fails = p.fails + 1
      delay = min(config.stream.poll_interval * 2 ^ (p.fails - 1), config.stream.max_backoff)
    end
    if not delay or p.stopped then
      break
    end
    moongate.sleep(delay)
  end
  if pollers[p.key] == p then
    pollers[p.key] = nil
  end
end

-- the cluster (a Redis in the conf) ----------------------------------------

-- 1: renewed, 2: taken, 0: another worker holds it
local LEASE_SRC = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 2
end
return 0
]]
local LEASE -- redis.script(LEASE_SRC), made in the worker

-- Fenced publish: only the lease's holder publishes (a holder whose lease
-- ran out while its loop was busy, and another took it, must not publish the
-- same change the new holder does). A status is kept (:last, :raw) before it
-- goes out: a worker that starts listening after the PUBLISH reads it in
-- :last, never neither. Returns PUBLISH's count, or -1: not the holder.
local PUB_SRC = [[
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[3])
end
return redis.call('PUBLISH', KEYS[4], ARGV[2])
]]
local PUB -- redis.script(PUB_SRC)

-- The holder that stops (its last socket left, the execution ended) lets the
-- lease go at once: a listener takes it at its next interval, not two later.
local RELEASE_SRC = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
]]
local RELEASE -- redis.script(RELEASE_SRC)

-- The lease lasts two intervals, and at least LEASE_MIN seconds: a holder's
-- loop that is busy handing one change to thousands of sockets must not lose
-- it to a listener (which would poll, and publish, beside it).
local LEASE_MIN = 1
local function lease_ms(interval)
  return ceil(math.max(interval * 2, LEASE_MIN) * 1000)
end
-- How often the holder renews it and a listener looks at it: every poll
-- interval, but no more often than four times a lease (at 0.02 s polls the
-- lease is not a Redis call per poll and per listener)
local function lease_period(interval)
  return math.max(interval, lease_ms(interval) / 4000)
end
local KEEP_MS = 600000 -- the last status kept in Redis for late subscribers and takeovers

-- This worker's lease value: "pid:<pid>:<generation>". The generation (the
-- address of a table of this Lua state, without a metatable: unique among
-- the states alive in the process) tells apart the two generations of one
-- worker across a reload: each is a member of the cluster of its own, one
-- of them holds the lease, the other listens.
local GENERATION = {}
local token
local function lease_token()
  if not token then
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    token = "pid:" .. tostring(ffi.C.getpid()) .. ":" .. match(tostring(GENERATION), "(%x+)$")
  end
  return token
end
_M.lease_token = lease_token

local function hex(s)
  return (format(rep("%02x", #s), byte(s, 1, -1)))
end

-- a message of the execution's channel: "M<text>" to send, "C<code> <reason>" to close
local function on_cluster_msg(p, text)
  if p.stopped then
    return
  end
  if sub(text, 1, 1) == "C" then
    local code, reason = match(text, "^C(%d+) (.*)$")
    finish(p, tonumber(code) or 1000, reason or "")
    return
  end
  local msg = sub(text, 2)
  if find(msg, '^{"type":"status"') then
    if msg == p.last_msg and not p.error then
      return -- seen already (the last status read at start, or sent while polling here)
    end
    p.last_msg, p.error = msg, nil
    -- what a poll here compares with, should Redis fail
    local raw = match(msg, ',"data":(.*)}$')
    local dok, d = pcall(json.decode, raw or "")
    if dok and type(d) == "table" then
      p.data, p.raw, p.status = d, raw, d.status
    end
  else
    p.error = msg
  end
  broadcast(p, msg)
end

local function publisher(p)
  local keys = { p.chan .. ":lease", p.chan .. ":last", p.chan .. ":raw", p.chan }
  -- nil, err: Redis failed; -1: another worker holds the lease now
  local function send(wire, status_text)
    local r = redis.new()
    return r and r:run_script(PUB, 4, keys[1], keys[2], keys[3], keys[4], lease_token(), wire,
                              KEEP_MS, status_text or "", status_text and p.raw or "")
  end
  p.publish = function(text)
    local is_status = find(text, '^{"type":"status"') ~= nil
    local n = send("M" .. text, is_status and text or nil)
    if n == -1 then
      -- deposed: the holder now polls and publishes what this one saw
      p.publish, p.publish_close, p.deposed = nil, nil, true
      return
    end
    if not n then
      on_cluster_msg(p, "M" .. text) -- Redis failed: this worker's sockets at least
    end
  end
  p.publish_close = function(code, reason)
    local n = send("C" .. code .. " " .. reason)
    if n == -1 then
      p.publish, p.publish_close, p.deposed = nil, nil, true
      return false -- the holder closes them all when it sees the end
    end
    if not n then
      finish(p, code, reason)
      return
    end
    -- this worker's sockets close when the message comes back (after the last status)
    local t0 = moongate.now()
    while not p.stopped and moongate.now() - t0 < 2 do
      moongate.sleep(0.02)
    end
    finish(p, code, reason)
  end
end

local function run_cluster(p)
  LEASE = LEASE or redis.script(LEASE_SRC)
  PUB = PUB or redis.script(PUB_SRC)
  RELEASE = RELEASE or redis.script(RELEASE_SRC)
  p.chan = "moongate:exec:" .. hex(moongate.crypto.sha256(p.key))
  p.on_msg = function(text) on_cluster_msg(p, text) end
  -- kept across a reload: this generation's sockets go on hearing the
  -- channel until the last of them leaves (the new generation has its own)
  local ok = pcall(redis.subscribe, p.chan, p.on_msg, { keep = true })
  local r = redis.new()
  if ok then
    -- what was published before this worker listened: the last status
    local t0 = moongate.now()
    while not redis.subscribed(p.chan) and not p.stopped and moongate.now() - t0 < 1 do
      moongate.sleep(0.02)
    end
    local last = r:get(p.chan .. ":last")
    if type(last) == "string" and not p.stopped then
      on_cluster_msg(p, "M" .. last)
    end
  end
  local leader, renewed = false, 0
  while not p.stopped do
    local s = config.stream
    local period = lease_period(s.poll_interval)
    -- only a worker that hears the channel may leave the polling to another
    -- (or hold the lease: its own sockets hear it from there too)
    local got
    if redis.subscribed(p.chan) then
      if leader and moongate.now() - renewed < period then
        got = 1 -- renewed less than a period ago: it lasts four more
      else
        got = r:run_script(LEASE, 1, p.chan .. ":lease", lease_token(), lease_ms(s.poll_interval))
        if got == 1 or got == 2 then
          renewed = moongate.now()
        end
      end
    end
    local delay
    if got == 1 or got == 2 then
      if not leader then
        -- taking over: go on from the last status published
        leader = true
        local raw = r:get(p.chan .. ":raw")
        if type(raw) == "string" then
          local dok, d = pcall(json.decode, raw)
          if dok and type(d) == "table" and type(d.status) == "string" then
            p.data, p.raw, p.status = d, raw, d.status
          end
        end
        publisher(p)
      end
    else
      -- another worker holds it (0), or Redis failed or this worker does
      -- not hear the channel (nil): then poll here. A holder that stopped
      -- hearing the channel lets the lease go: the others would not hear
      -- it either while it lasted.
      if leader and got == nil then
        r:run_script(RELEASE, 1, p.chan .. ":lease", lease_token())
      end
      leader = false
      p.publish, p.publish_close = nil, nil
    end
    if got == 0 then
      delay = period -- a listener only wakes to look at the lease
    else
      local pok, d = pcall(poll_once, p)
      if not pok then
        moongate.log.error("execution poller " .. p.execution_id .. ": " .. tostring(d))
        p.fails = p.fails + 1
        d = min(s.poll_interval * 2 ^ (p.fails - 1), s.max_backoff)
      end
      delay = d
      if leader and delay and delay > s.poll_interval then
        -- a backoff longer than the lease: keep it over the wait
        r:run_script(LEASE, 1, p.chan .. ":lease", lease_token(),
                     ceil(delay * 1000) + lease_ms(s.poll_interval))
        renewed = moongate.now()
      end
      if p.deposed then
        -- another worker took the lease while this one polled: listen again
        p.deposed, leader = nil, false
      end
    end
    if not delay or p.stopped then
      break
    end
    moongate.sleep(delay)
  end
  if leader and not p.stopped then
    p.stopped = true
  end
  if leader then
    r:run_script(RELEASE, 1, p.chan .. ":lease", lease_token())
  end
  if ok then
    redis.unsubscribe(p.chan, p.on_msg)
  end
  if pollers[p.key] == p then
    pollers[p.key] = nil
  end
end

local function subscribe(ws, tenant_id, execution_id)
  local key = tenant_id .. "\0" .. execution_id
  local p = pollers[key]
  if not p then
    p = { key = key, tenant_id = tenant_id, execution_id = execution_id, subs = {}, n = 0,
          polls = 0, fails = 0 }
    pollers[key] = p
    _M.stats.pollers_started = _M.stats.pollers_started + 1
    moongate.timer(0, redis and redis.configured() and run_cluster or run_poller, p)
  end
  p.subs[ws] = true
  p.n = p.n + 1
  -- at once: the last status this worker's sockets were sent. Not p.data: a
  -- lease holder has it while its PUBLISH is on the way back, and this
  -- socket would then get the same status twice.
  if p.last_msg then
    ws:send(p.last_msg)
  end
  if p.error then
    ws:send(p.error)
  end
  return p
end

local function unsubscribe(p, ws)
  if not p.subs[ws] then
    return
  end
  p.subs[ws] = nil
  p.n = p.n - 1
  if p.n == 0 and next(p.subs) == nil then
    p.stopped = true -- the loop ends at its next wake, without polling
    if pollers[p.key] == p then
      pollers[p.key] = nil
    end
  end
end

--- Access hook of the stream route (after auth.access): answers 400 before
--- the upgrade when tenant_id is missing.
function _M.stream_access(req)
  local tenant, err = tenant_param(req)
  if not tenant then
    return answer(err, req)
  end
end

--- The stream's handler (websocket mode "handler").
function _M.stream(ws, req)
  local p = subscribe(ws, req.query.tenant_id, req.params.execution_id)
  while true do
    local data = ws:recv()
    if not data then
      break
    end
    -- {"type":"pong"} answers our pings; nothing else is expected either
  end
  unsubscribe(p, ws)
end

--- Counts for /api/admin/status.
function _M.report()
  local n, subs = 0, 0
  for _, p in pairs(pollers) do
    n = n + 1
    subs = subs + p.n
  end
  return { pollers = n, subscribers = subs, polls = _M.stats.polls,
           pollers_started = _M.stats.pollers_started }
end

return moongate.module("execution", _M)
