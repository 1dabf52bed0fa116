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
local moongate = require "moongate"
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
local match = string.match
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

local function broadcast(p, text)
  each_sub(p, function(ws) ws:send(text) end)
end

local function finish(p, code, reason)
  p.stopped = true
  if pollers[p.key] == p then
    pollers[p.key] = nil
  end
  each_sub(p, function(ws) ws:close(code, reason) end)
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
      broadcast(p, status_msg(p))
    end
    if TERMINAL[data.status] then
      finish(p, 1000, data.status)
      return nil
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
    broadcast(p, error_msg(p, resp.status, code, message, { detail = j.error or j.message }))
    finish(p, 1008, code)
    return nil
  end
  if resp and resp.status >= 300 then
    err = api.err(resp.status, "runtime_error", "Runtime answered " .. tostring(resp.status))
  elseif resp then
    err = api.err(502, "runtime_bad_response", "Runtime answered without an execution status")
  end
  p.fails = p.fails + 1
  local delay = min(s.poll_interval * 2 ^ (p.fails - 1), s.max_backoff)
  p.error = error_msg(p, err.status, err.error, err.message, { retry_in = delay })
  broadcast(p, p.error)
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

local function subscribe(ws, tenant_id, execution_id)
  local key = tenant_id .. "\0" .. execution_id
  local p = pollers[key]
  if not p then
    p = { key = key, tenant_id = tenant_id, execution_id = execution_id, subs = {}, n = 0,
          polls = 0, fails = 0 }
    pollers[key] = p
    _M.stats.pollers_started = _M.stats.pollers_started + 1
    moongate.timer(0, run_poller, p)
  end
  p.subs[ws] = true
  p.n = p.n + 1
  if p.data then
    ws:send(status_msg(p)) -- at once: what the poller already knows
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
