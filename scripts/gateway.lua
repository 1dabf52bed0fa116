-- gateway: moongate's own /api logic in front of Runtime (the seed's
-- "Experience" role). Each handler checks its input, resolves the tenant
-- (auth.tenant_for: the one named, else the token's), calls Runtime through
-- runtime_client (docs/runtime-contract.md) and passes Runtime's answer on:
-- where the answer goes on unchanged, the request itself is handed to the C
-- proxy (runtime_client.pass, moongate.proxy), which streams both ways.
-- Helpers return a value, or nil, err (scripts/json_api.lua); the handler
-- answers an err once, with json_api.answer.
--
--   POST /api/session                         session create   {tenant_id?, user_id?}
--   GET  /api/session/{session_id}            session get      ?tenant_id=
--   POST /api/session/{session_id}/upgrade    session upgrade  {user_id, tenant_id?}
--   POST /api/intent                          intent submit    {session_id, intent, params?, tenant_id?}
--   GET  /api/intent/pending                  intent pending   ?tenant_id=&session_id=
--   GET  /api/execution/{id}/artifacts        artifact list    ?tenant_id=
--   GET  /api/execution/{id}/artifacts/{aid}  artifact resolve ?tenant_id=
--   GET  /api/auth/whoami                     the caller, as the auth hook resolved it
--   GET  /api/admin/status                    this worker's streams and Runtime's health (admin)
--   anything else under /api/auth, /api/admin -> passed to Runtime as is
local moongate = require "moongate"
local api = require "json_api"
local auth = require "auth"
local client = require "runtime_client"
local execution = require "execution"

local json = moongate.json
local answer = api.answer
local type = type

local _M = { _VERSION = "0.1.0" }

local JSON_TYPE = api.JSON_TYPE

--- The old name of moongate.methods (lib/moongate/init.lua), kept for
--- scripts that still call gateway.methods{ GET = f, POST = g }.
_M.methods = moongate.methods

--- The JSON 404 for anything under /api no route serves. It names the
--- path the client asked for and nothing behind the gateway.
function _M.not_found(req)
  return answer(api.err(404, "not_found", "no such API endpoint", { path = req.path }), req)
end

-- A string field of a JSON body: the string, false when it is absent and
-- not required, or nil, err (400 naming it).
local function string_field(t, name, required)
  local v = t[name]
  if v == nil or v == json.null or v == "" then
    if required then
      return nil, api.err(400, "missing_parameter", name .. " is required", { parameter = name })
    end
    return false
  end
  if type(v) ~= "string" then
    return nil, api.err(400, "invalid_parameter", name .. " must be a string", { parameter = name })
  end
  return v
end

-- The usual read: the tenant (?tenant_id=, else the token's), then
-- pass(tenant): the request goes to Runtime through the C proxy
-- (runtime_client.pass_*), whose answer streams back unchanged.
local function pass_for_tenant(req, pass)
  local tenant, err = auth.tenant_for(req, req.query.tenant_id)
  if not tenant then return answer(err, req) end
  return pass(tenant)
end

-- sessions --------------------------------------------------------------------

function _M.session_create(req)
  local body, err = api.json_body(req, true)
  if not body then return answer(err, req) end
  local tenant, user
  tenant, err = auth.tenant_for(req, body.tenant_id)
  if not tenant then return answer(err, req) end
  user, err = string_field(body, "user_id", false)
  if user == nil then return answer(err, req) end
  return client.proxy(req, { method = "POST", path = "/v1/sessions",
                             body = { tenant_id = tenant, user_id = user or nil } })
end

function _M.session_get(req)
  return pass_for_tenant(req, function(tenant)
    return client.pass_session_get(tenant, req.params.session_id)
  end)
end

function _M.session_upgrade(req)
  local body, err = api.json_body(req)
  if not body then return answer(err, req) end
  local tenant, user, resp
  tenant, err = auth.tenant_for(req, body.tenant_id)
  if not tenant then return answer(err, req) end
  user, err = string_field(body, "user_id", true)
  if not user then return answer(err, req) end
  resp, err = client.session_upgrade(req.params.session_id, { tenant_id = tenant, user_id = user })
  if not resp then return answer(err, req) end
  return client.relay(resp, req)
end

-- intents ---------------------------------------------------------------------

function _M.intent_submit(req)
  local body, err = api.json_body(req)
  if not body then return answer(err, req) end
  local tenant, session, intent, resp
  tenant, err = auth.tenant_for(req, body.tenant_id)
  if not tenant then return answer(err, req) end
  session, err = string_field(body, "session_id", true)
  if not session then return answer(err, req) end
  intent, err = string_field(body, "intent", true)
  if not intent then return answer(err, req) end
  local params = body.params
  if params ~= nil and type(params) ~= "table" then
    return answer(api.err(400, "invalid_parameter", "params must be an object", { parameter = "params" }), req)
  end
  resp, err = client.intent_submit({ tenant_id = tenant, session_id = session,
                                     intent = intent, params = params })
  if not resp then return answer(err, req) end
  local j = resp.json
  if resp.status < 300 and type(j) == "table" and type(j.execution_id) == "string" then
    -- where to follow it, through this gateway
    local base = "/api/execution/" .. client.segment(j.execution_id)
    local q = "?tenant_id=" .. client.segment(tenant)
    j.links = { status = base .. "/status" .. q, stream = base .. "/stream" .. q,
                artifacts = base .. "/artifacts" .. q }
    return resp.status, j, JSON_TYPE
  end
  return client.relay(resp, req)
end

function _M.intent_pending(req)
  return pass_for_tenant(req, function(tenant)
    return client.pass_intent_pending(tenant, req.query.session_id)
  end)
end

-- artifacts -------------------------------------------------------------------

function _M.artifact_list(req)
  return pass_for_tenant(req, function(tenant)
    return client.pass_artifact_list(tenant, req.params.execution_id)
  end)
end

function _M.artifact_resolve(req)
  local tenant, err = auth.tenant_for(req, req.query.tenant_id)
  if not tenant then return answer(err, req) end
  local resp
  resp, err = client.artifact_resolve(tenant, req.params.artifact_id)
  if not resp then return answer(err, req) end
  local j = resp.json
  if resp.status == 200 and type(j) == "table" and j.execution_id ~= req.params.execution_id then
    return answer(api.err(404, "not_found", "no such artifact in this execution"), req)
  end
  return client.relay(resp, req)
end

-- auth and admin ----------------------------------------------------------------

function _M.whoami(req)
  local id = req.ctx.auth or {}
  return 200, { subject = id.subject, tenant_id = id.tenant_id or json.null, admin = id.admin == true }
end

function _M.admin_status(req)
  local health
  local resp, err = client.health()
  if resp then
    health = { status = resp.status, body = resp.json }
  else
    health = { status = err.status, error = err.error }
  end
  return 200, { worker = moongate.worker_id, streams = execution.report(), runtime = health,
                request_id = req.id }
end

--- Access hook of the agent chat (after auth.access): the chat acts for a
--- tenant (?tenant_id=, else the token's) and maybe a session
--- (?session_id=); both go to Runtime's agent on the upstream handshake.
function _M.agent_access(req)
  local tenant, err = auth.tenant_for(req, req.query.tenant_id)
  if not tenant then return answer(err, req) end
  req:set_header("X-Tenant-Id", tenant)
  -- always set, so that a client cannot send its own
  req:set_header("X-Session-Id", req.query.session_id or "")
end

--- Passes the request to Runtime as it came (method, path, query, headers
--- with the auth hook's X-Auth-Subject and X-Auth-Tenant, the body
--- streamed) through the C proxy; Runtime's JSON answer streams back.
function _M.passthrough()
  return client.pass()
end

return moongate.module("gateway", _M)
