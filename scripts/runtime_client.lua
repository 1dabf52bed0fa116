-- runtime_client: the gateway's calls to Runtime (the `runtime` upstream).
-- Two ways, one mapping of failures for every caller (an err of
-- scripts/json_api.lua):
--   Runtime unreachable (refused, reset, bad answer) -> 502 {"error":"runtime_unavailable"}
--   Runtime slower than the timeout                  -> 504 {"error":"runtime_timeout"}
--   Runtime's answer is not JSON                      -> 502 {"error":"runtime_bad_response"}
-- * pass{...} (and the pass_* operations): the request is handed to the C
--   proxy (moongate.proxy), which streams Runtime's answer back unchanged:
--   for the routes that pass Runtime's answer on as it is.
-- * call{...} (and the other operations): moongate's non-blocking HTTP
--   client, for the calls whose answer the gateway reads; relay() passes
--   such an answer on.
-- Runtime's own answers (any status, its JSON body) are passed on as they are.
-- The paths and shapes are those of docs/runtime-contract.md.
local moongate = require "moongate"
local api = require "json_api"
local config = require "gateway_config"

local json = moongate.json
local pairs = pairs
local find = string.find

local _M = { _VERSION = "0.1.0" }

--- Percent-encodes one path segment (ids come from the client's URL), as
--- moongate.encode_query does (moongate.escape: in C, the string itself
--- when nothing needs encoding; no pattern, so a handler's trace goes on).
_M.segment = moongate.escape
local segment = _M.segment

local function unavailable()
  return api.err(502, "runtime_unavailable", "Runtime is unreachable")
end
local function timed_out()
  return api.err(504, "runtime_timeout", "Runtime did not answer in time")
end
local function not_json()
  return api.err(502, "runtime_bad_response", "Runtime answered with something other than JSON")
end

--- One call. opts: method (GET), path, query (table), body (table => JSON),
--- headers, timeout (s, default gateway_config.runtime.timeout).
--- Returns resp {status, headers, body, json (decoded body or nil)}, or
--- nil, err {status = 502|504, error, message}.
function _M.call(opts)
  local headers = { Accept = "application/json" }
  for k, v in pairs(opts.headers or {}) do
    headers[k] = v
  end
  local resp, err = moongate.http.request{
    method = opts.method or "GET",
    upstream = config.runtime.upstream,
    path = opts.path,
    query = opts.query,
    headers = headers,
    body = opts.body,
    timeout = opts.timeout or config.runtime.timeout,
  }
  if not resp then
    if err == "timeout" then
      return nil, timed_out()
    end
    return nil, unavailable()
  end
  local ctype = resp.headers["content-type"] or ""
  if ctype:find("json", 1, true) and resp.body ~= "" then
    resp.json = json.decode(resp.body)
  end
  return resp
end

--- Passes Runtime's answer on unchanged (status, body, content type).
--- An answer that is not JSON is a bad gateway: the browser only ever sees JSON.
function _M.relay(resp, req)
  if resp.json == nil and resp.body ~= "" then
    return api.answer(not_json(), req)
  end
  return resp.status, resp.body, { ["Content-Type"] = resp.headers["content-type"] or "application/json" }
end

--- call() then relay(), or the answer to call()'s err: the usual proxy step
--- of a handler.
function _M.proxy(req, opts)
  local resp, err = _M.call(opts)
  if not resp then
    return api.answer(err, req)
  end
  return _M.relay(resp, req)
end

-- The C proxy's failures (moongate.proxy's on_error: run outside the
-- handler, it must not wait), as call()'s errs.
local function pass_error(status, reason, req)
  local err
  if status == 504 then
    err = timed_out()
  elseif find(reason, "content type", 1, true) then
    err = not_json()
  else
    err = unavailable()
  end
  return api.answer(err, req)
end

local ACCEPT_JSON = { Accept = "application/json" }

--- pass(path, query, headers): hands the request to Runtime through the C
--- proxy (moongate.proxy): the client's method, headers (the auth hook's
--- X-Auth-* added) and body go on streamed, Runtime's answer comes back
--- streamed and unchanged when it is JSON (else 502 runtime_bad_response).
--- path and query (a table or a string) default to the client's; headers
--- to Accept: application/json; the timeout is gateway_config.runtime's.
--- A handler returns its result. The request body must not have been read.
-- moongate.proxy reads its table before it returns: one table, refilled
-- per call, is no garbage per request
local PASS = { content_type = "json", on_error = pass_error }
function _M.pass(path, query, headers)
  PASS.upstream, PASS.path, PASS.query = config.runtime.upstream, path, query
  PASS.headers, PASS.timeout = headers or ACCEPT_JSON, config.runtime.timeout
  return moongate.proxy(PASS)
end

-- The contract's operations -------------------------------------------------

local function bool(v)
  if v == nil then return nil end
  return v and "true" or "false"
end

function _M.execution_status(tenant_id, execution_id, opts)
  opts = opts or {}
  return _M.call{
    path = "/v1/executions/" .. segment(execution_id) .. "/status",
    query = { tenant_id = tenant_id, include_artifacts = bool(opts.include_artifacts),
              include_visuals = bool(opts.include_visuals) },
    timeout = opts.timeout,
  }
end

--- The status query as pass() sends it: the path and the query string
--- (sorted, as moongate.encode_query would make it).
local function status_target(tenant_id, execution_id, include_artifacts, include_visuals)
  local q = "tenant_id=" .. segment(tenant_id)
  if include_visuals ~= nil then
    q = (include_visuals and "include_visuals=true&" or "include_visuals=false&") .. q
  end
  if include_artifacts ~= nil then
    q = (include_artifacts and "include_artifacts=true&" or "include_artifacts=false&") .. q
  end
  return "/v1/executions/" .. segment(execution_id) .. "/status", q
end

--- GET status through the C proxy (Runtime's answer passed on unchanged).
function _M.pass_execution_status(tenant_id, execution_id, include_artifacts, include_visuals)
  return _M.pass(status_target(tenant_id, execution_id, include_artifacts, include_visuals))
end

function _M.pass_session_get(tenant_id, session_id)
  return _M.pass("/v1/sessions/" .. segment(session_id), { tenant_id = tenant_id })
end

function _M.pass_intent_pending(tenant_id, session_id)
  return _M.pass("/v1/intents/pending", { tenant_id = tenant_id, session_id = session_id })
end

function _M.pass_artifact_list(tenant_id, execution_id)
  return _M.pass("/v1/executions/" .. segment(execution_id) .. "/artifacts", { tenant_id = tenant_id })
end

function _M.session_create(body)
  return _M.call{ method = "POST", path = "/v1/sessions", body = body }
end

function _M.session_get(tenant_id, session_id)
  return _M.call{ path = "/v1/sessions/" .. segment(session_id), query = { tenant_id = tenant_id } }
end

function _M.session_upgrade(session_id, body)
  return _M.call{ method = "POST", path = "/v1/sessions/" .. segment(session_id) .. "/upgrade",
                  body = body }
end

function _M.intent_submit(body)
  return _M.call{ method = "POST", path = "/v1/intents", body = body }
end

function _M.intent_pending(tenant_id, session_id)
  return _M.call{ path = "/v1/intents/pending",
                  query = { tenant_id = tenant_id, session_id = session_id } }
end

function _M.artifact_list(tenant_id, execution_id)
  return _M.call{ path = "/v1/executions/" .. segment(execution_id) .. "/artifacts",
                  query = { tenant_id = tenant_id } }
end

function _M.artifact_resolve(tenant_id, artifact_id)
  return _M.call{ path = "/v1/artifacts/" .. segment(artifact_id), query = { tenant_id = tenant_id } }
end

function _M.introspect(path, token)
  return _M.call{ method = "POST", path = path, body = { token = token } }
end

function _M.health()
  return _M.call{ path = "/v1/health", timeout = 2 }
end

return moongate.module("runtime_client", _M)
