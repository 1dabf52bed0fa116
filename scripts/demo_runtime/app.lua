-- The embedded demo Runtime: docs/runtime-contract.md in a few hundred lines
-- of moongate Lua handlers, so that a first run shows the whole gateway
-- working with nothing else installed. A real deployment points the
-- `runtime` upstream at a real Runtime instead (MOONGATE_UPSTREAM_RUNTIME).
--
-- Stateless by construction: moongate runs several workers, each with its
-- own Lua state, and any of them may answer any call. So every id carries
-- what is needed to answer for it:
--   session    se-<created_ms>-<nonce>-<tenant>            (anonymous)
--              su-<created_ms>-<nonce>-<user hex>-<tenant>  (upgraded)
--   execution  ex-<start_ms>-<duration_ms><c|f>-<nonce>-<tenant>
--   intent     in-<same tail as its execution>
--   artifact   ar-<same tail as its execution>
-- and an execution's status is computed from the time elapsed since its
-- start: pending -> running (progress 0, 25, 50, 75) -> completed (with an
-- artifact) over `duration` seconds, or -> failed at 60 % when the intent
-- asked for it (params.outcome = "failed", or an intent text with "fail").
-- Only the list of submitted intents is kept: in the shared dict
-- `demo_runtime` of the conf (shared_dicts), so that every worker answers
-- /v1/intents/pending alike (see docs/runtime-contract.md).
-- Answers: the gateway's error shape and body reader (scripts/json_api.lua):
-- helpers return nil, err, and the handler answers it once.
local moongate = require "moongate"
local api = require "json_api"
local config = require "demo_runtime.config"

local json = moongate.json
local type = type
local tostring = tostring
local tonumber = tonumber
local floor = math.floor
local format = string.format
local match = string.match
local gsub = string.gsub
local byte = string.byte
local char = string.char
local os_date = os.date
local answer = api.answer

local _M = { _VERSION = "0.1.0" }

local JSON_TYPE = api.JSON_TYPE

-- lua-cjson writes an empty table as {}; lists that may be empty are
-- written with this marker and turned into [] by reply()
local EMPTY = "__demo_empty_array__"
local function array(t)
  if #t == 0 then
    return EMPTY
  end
  return t
end

local function reply(status, t)
  local s = json.encode(t)
  return status, (gsub(s, '"' .. EMPTY .. '"', "[]")), JSON_TYPE
end

-- ISO 8601 (UTC) of a time in milliseconds
local function iso(ms)
  ms = floor(ms + 0.5)
  return os_date("!%Y-%m-%dT%H:%M:%S", floor(ms / 1000)) .. format(".%03dZ", ms % 1000)
end

local function now_ms()
  return floor(moongate.now() * 1000)
end

-- unique across workers: worker, counter, randomness
local counter, seeded = 0, false
local function nonce()
  if not seeded then
    math.randomseed(now_ms() % 1000003 + moongate.worker_id * 7919)
    seeded = true
  end
  counter = (counter + 1) % 65536
  return format("%02x%04x%04x", moongate.worker_id % 256, counter, math.random(0, 65535))
end

local function valid_tenant(t)
  return type(t) == "string" and #t <= 64 and match(t, "^[%w_%-]+$") ~= nil
end

local function hex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

local function unhex(h)
  return (gsub(h, "%x%x", function(x) return char(tonumber(x, 16)) end))
end

-- The request's JSON object, or {} (no body, or not an object)
local function body_or_empty(req)
  return (api.json_body(req)) or {}
end

-- A well-formed tenant id, or nil, err (400 invalid_parameter `message`)
local function tenant_arg(t, message)
  if not valid_tenant(t) then
    return nil, api.err(400, "invalid_parameter", message or "tenant_id is required")
  end
  return t
end

-- sessions ----------------------------------------------------------------------

local function parse_session(id)
  if type(id) ~= "string" then
    return nil
  end
  local ms, n, tenant = match(id, "^se%-(%d+)%-(%x+)%-([%w_%-]+)$")
  if ms then
    return { session_id = id, tenant_id = tenant, created_ms = tonumber(ms), nonce = n,
             kind = "anonymous" }
  end
  local user
  ms, n, user, tenant = match(id, "^su%-(%d+)%-(%x+)%-(%x+)%-([%w_%-]+)$")
  if ms and #user % 2 == 0 then
    return { session_id = id, tenant_id = tenant, created_ms = tonumber(ms), nonce = n,
             kind = "user", user_id = unhex(user) }
  end
  return nil
end

local function session_view(s)
  return { session_id = s.session_id, tenant_id = s.tenant_id, kind = s.kind,
           user_id = s.user_id or json.null, created_at = iso(s.created_ms) }
end

-- The session named by id, checked against tenant: session, or nil, err.
local function find_session(id, tenant)
  local s = parse_session(id)
  if not s or s.created_ms > now_ms() + 5000 then
    return nil, api.err(404, "not_found", "unknown session")
  end
  if s.tenant_id ~= tenant then
    return nil, api.err(403, "tenant_mismatch", "session belongs to another tenant")
  end
  return s
end

function _M.session_create(req)
  local b = body_or_empty(req)
  local _, err = tenant_arg(b.tenant_id, "tenant_id is required (letters, digits, '-', '_')")
  if err then return answer(err) end
  local s = { session_id = format("se-%d-%s-%s", now_ms(), nonce(), b.tenant_id), tenant_id = b.tenant_id,
              created_ms = now_ms(), kind = "anonymous" }
  if type(b.user_id) == "string" and b.user_id ~= "" then
    s.kind, s.user_id = "user", b.user_id
    s.session_id = format("su-%d-%s-%s-%s", s.created_ms, nonce(), hex(b.user_id), b.tenant_id)
  end
  return 201, session_view(s), JSON_TYPE
end

function _M.session_get(req)
  local tenant, err = tenant_arg(req.query.tenant_id)
  if not tenant then return answer(err) end
  local s
  s, err = find_session(req.params.session_id, tenant)
  if not s then return answer(err) end
  return 200, session_view(s), JSON_TYPE
end

function _M.session_upgrade(req)
  local b = body_or_empty(req)
  local tenant, err = tenant_arg(b.tenant_id)
  if not tenant then return answer(err) end
  if type(b.user_id) ~= "string" or b.user_id == "" or #b.user_id > 128 then
    return answer(api.err(400, "invalid_parameter", "user_id is required"))
  end
  local s
  s, err = find_session(req.params.session_id, tenant)
  if not s then return answer(err) end
  local up = { session_id = format("su-%d-%s-%s-%s", s.created_ms, s.nonce, hex(b.user_id), s.tenant_id),
               tenant_id = s.tenant_id, created_ms = s.created_ms, kind = "user", user_id = b.user_id }
  local view = session_view(up)
  view.previous_session_id = s.session_id
  return 200, view, JSON_TYPE
end

-- executions ----------------------------------------------------------------------

local STEPS = { "planning", "gathering", "drafting", "reviewing" }

local function parse_execution(id)
  if type(id) ~= "string" then
    return nil
  end
  local kind, ms, dur, outcome, n, tenant = match(id, "^(%l%l)%-(%d+)%-(%d+)([cf])%-(%x+)%-([%w_%-]+)$")
  if not kind then
    return nil
  end
  local tail = match(id, "^%l%l%-(.*)$")
  return { kind = kind, tail = tail, start_ms = tonumber(ms), duration_ms = tonumber(dur),
           failing = outcome == "f", nonce = n, tenant_id = tenant,
           execution_id = "ex-" .. tail, intent_id = "in-" .. tail, artifact_id = "ar-" .. tail }
end

-- Where an execution is at `t` (unix seconds): status, progress, step, since.
local function state_at(x, t)
  local d = x.duration_ms / 1000
  local start = x.start_ms / 1000
  local e = t - start
  local pend = 0.15 * d
  local function running_at(at)
    local k = floor((at - pend) / (d - pend) * 4)
    if k > 3 then k = 3 end
    return k * 25, STEPS[k + 1], start + pend + k * (d - pend) / 4
  end
  if e < pend then
    return "pending", 0, "queued", start
  end
  if x.failing and e >= 0.6 * d then
    local progress, step = running_at(0.6 * d)
    return "failed", progress, step, start + 0.6 * d
  end
  if e >= d then
    return "completed", 100, "done", start + d
  end
  local progress, step, since = running_at(e)
  return "running", progress, step, since
end

local function artifact_content(x)
  return format("# Demo result\n\nExecution `%s` of tenant `%s` completed at %s.\n\n"
    .. "This artifact was produced by moongate's embedded demo Runtime.\n",
    x.execution_id, x.tenant_id, iso(x.start_ms + x.duration_ms))
end

local function artifact_view(x, with_content)
  local content = artifact_content(x)
  local a = { artifact_id = x.artifact_id, execution_id = x.execution_id, tenant_id = x.tenant_id,
              name = "summary.md", content_type = "text/markdown", size = #content,
              created_at = iso(x.start_ms + x.duration_ms) }
  if with_content then
    a.content = content
  end
  return a
end

-- The execution named by id, checked against tenant: execution, or nil, err.
local function find_execution(id, tenant)
  local x = parse_execution(id)
  if not x or x.kind ~= "ex" or x.start_ms > now_ms() + 5000 then
    return nil, api.err(404, "not_found", "unknown execution")
  end
  if x.tenant_id ~= tenant then
    return nil, api.err(403, "tenant_mismatch", "execution belongs to another tenant")
  end
  return x
end

function _M.execution_status(req)
  local q = req.query
  local tenant, err = tenant_arg(q.tenant_id)
  if not tenant then return answer(err) end
  local x
  x, err = find_execution(req.params.execution_id, tenant)
  if not x then return answer(err) end
  local status, progress, step, since = state_at(x, moongate.now())
  local out = { execution_id = x.execution_id, intent_id = x.intent_id, tenant_id = x.tenant_id,
                status = status, progress = progress, step = step,
                started_at = iso(x.start_ms), updated_at = iso(since * 1000) }
  if status == "failed" then
    out.error = { code = "demo_failure", message = "the intent asked the demo to fail" }
  end
  if q.include_artifacts == "true" then
    out.artifacts = array(status == "completed" and { artifact_view(x) } or {})
  end
  if q.include_visuals == "true" then
    out.visuals = { { type = "progress", label = step, value = progress } }
  end
  return reply(200, out)
end

function _M.artifact_list(req)
  local q = req.query
  local tenant, err = tenant_arg(q.tenant_id)
  if not tenant then return answer(err) end
  local x
  x, err = find_execution(req.params.execution_id, tenant)
  if not x then return answer(err) end
  local status = state_at(x, moongate.now())
  return reply(200, { execution_id = x.execution_id, status = status,
                      artifacts = array(status == "completed" and { artifact_view(x) } or {}) })
end

function _M.artifact_resolve(req)
  local tenant, err = tenant_arg(req.query.tenant_id)
  if not tenant then return answer(err) end
  local x = parse_execution(req.params.artifact_id)
  if not x or x.kind ~= "ar" or state_at(x, moongate.now()) ~= "completed" then
    return answer(api.err(404, "not_found", "unknown artifact"))
  end
  if x.tenant_id ~= tenant then
    return answer(api.err(403, "tenant_mismatch", "artifact belongs to another tenant"))
  end
  return 200, artifact_view(x, true), JSON_TYPE
end

-- intents ---------------------------------------------------------------------------

-- Submitted intents, per tenant, oldest first: in the conf's shared dict
-- `demo_runtime` when there is one (every worker sees the same list), else
-- in this worker's memory. An entry: { x = execution id, s = session id (its
-- anonymous form, which an upgrade keeps), i = the intent's text, cut short }.
local KEEP = 200 -- entries per tenant
local memory = {} -- tenant -> entries (without the shared dict)

local function canonical_session(s)
  return format("se-%d-%s-%s", s.created_ms, s.nonce, s.tenant_id)
end

local function remember(tenant, entry)
  local d = moongate.shared.demo_runtime
  if not d then
    local list = memory[tenant] or {}
    memory[tenant] = list
    list[#list + 1] = entry
    if #list > KEEP then
      table.remove(list, 1)
    end
    return
  end
  local n = d:incr("n:" .. tenant, 1, 0)
  if not n then
    return
  end
  local key = "e:" .. tenant .. ":" .. n
  if not d:set(key, json.encode(entry), 3600) then
    entry.i = nil -- a slot holds about 230 bytes: keep the execution, drop the text
    d:set(key, json.encode(entry), 3600)
  end
end

local function recall(tenant)
  local d = moongate.shared.demo_runtime
  if not d then
    return memory[tenant] or {}
  end
  local n = d:get("n:" .. tenant) or 0
  local out = {}
  for i = math.max(1, n - KEEP + 1), n do
    local v = d:get("e:" .. tenant .. ":" .. i)
    local e = v and json.decode(v)
    if type(e) == "table" then
      out[#out + 1] = e
    end
  end
  return out
end

local function short(text)
  if #text <= 80 then
    return text
  end
  -- cut on a character boundary
  return (gsub(text:sub(1, 80), "[\192-\255][\128-\191]*$", "")) .. "..."
end

function _M.intent_submit(req)
  local b = api.json_body(req)
  if not b then
    -- one message for a missing body and one that is not an object
    return answer(api.err(400, "invalid_body", "a JSON object body is required"))
  end
  local _, err = tenant_arg(b.tenant_id)
  if err then return answer(err) end
  if type(b.intent) ~= "string" or b.intent == "" then
    return answer(api.err(400, "invalid_parameter", "intent is required"))
  end
  local s
  s, err = find_session(b.session_id, b.tenant_id)
  if not s then return answer(err) end
  local params = type(b.params) == "table" and b.params or {}
  local duration = tonumber(params.duration) or config.duration
  if duration < 0.5 or duration > 600 then
    return answer(api.err(400, "invalid_parameter", "params.duration must be between 0.5 and 600 seconds"))
  end
  local failing = params.outcome == "failed" or b.intent:lower():find("fail", 1, true) ~= nil
  local start = now_ms()
  local tail = format("%d-%d%s-%s-%s", start, floor(duration * 1000), failing and "f" or "c", nonce(),
    b.tenant_id)
  remember(b.tenant_id, { x = "ex-" .. tail, s = canonical_session(s), i = short(b.intent) })
  return 202, { intent_id = "in-" .. tail, execution_id = "ex-" .. tail, tenant_id = b.tenant_id,
                session_id = s.session_id, status = "pending", submitted_at = iso(start) }, JSON_TYPE
end

function _M.intent_pending(req)
  local q = req.query
  local _, err = tenant_arg(q.tenant_id)
  if err then return answer(err) end
  local only
  if q.session_id and q.session_id ~= "" then
    local s = parse_session(q.session_id)
    if not s then
      return answer(api.err(404, "not_found", "unknown session"))
    end
    only = canonical_session(s)
  end
  local out = {}
  local now = moongate.now()
  for _, e in ipairs(recall(q.tenant_id)) do
    local x = parse_execution(e.x)
    if x and (not only or e.s == only) then
      local status = state_at(x, now)
      if status == "pending" or status == "running" then
        out[#out + 1] = { intent_id = x.intent_id, execution_id = x.execution_id, session_id = e.s,
                          intent = e.i or json.null, status = status, submitted_at = iso(x.start_ms) }
      end
    end
  end
  return reply(200, { tenant_id = q.tenant_id, intents = array(out) })
end

-- auth, health, Runtime's public API -------------------------------------------------

function _M.introspect(req)
  local b = body_or_empty(req)
  local id = type(b.token) == "string" and config.tokens[b.token]
  if not id then
    return 200, { active = false }, JSON_TYPE
  end
  return 200, { active = true, subject = id.subject, tenant_id = id.tenant_id or json.null,
                admin = id.admin == true }, JSON_TYPE
end

function _M.health()
  return 200, { status = "ok", runtime = "moongate-demo", worker = moongate.worker_id }, JSON_TYPE
end

function _M.info()
  return 200, { name = "moongate demo runtime", contract = "v1", version = _M._VERSION }, JSON_TYPE
end

-- The gateway tells which tenant the caller is bound to (X-Auth-Tenant,
-- "*" for an operator's token): list only what it may see.
function _M.realms(req)
  local bound = req.headers["x-auth-tenant"]
  local out = {}
  for _, r in ipairs(config.realms) do
    if not bound or bound == "*" or bound == r.realm_id then
      out[#out + 1] = r
    end
  end
  return reply(200, { realms = array(out) })
end

function _M.realm(req)
  local id = req.params.tenant_id
  for _, r in ipairs(config.realms) do
    if r.realm_id == id then
      return 200, r, JSON_TYPE
    end
  end
  return answer(api.err(404, "not_found", "unknown realm"))
end

function _M.not_found(req)
  return answer(api.err(404, "not_found", "no such endpoint: " .. tostring(req.method) .. " " .. req.path))
end

-- exposed for the specs
_M.parse_execution = parse_execution
_M.state_at = state_at

return moongate.module("demo_runtime.app", _M)
