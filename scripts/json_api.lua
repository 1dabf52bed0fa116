-- json_api: what the gateway's scripts (gateway.lua, auth.lua, execution.lua,
-- runtime_client.lua) and the demo Runtime (demo_runtime/app.lua) share:
-- one error shape, the one function that answers it, the JSON body reader
-- and the JSON content type. Both load it by name: scripts/ is on the conf's
-- lua_path (conf/moongate.lua: { "scripts", "lib" }), which every server of
-- the conf, the demo Runtime's included, uses.
--
-- The error shape (Kong's): a helper that fails returns
--   nil, err   with err = { status = 400, error = "invalid_body", message = "...",
--                           details = { parameter = "x" } (optional),
--                           headers = { ["WWW-Authenticate"] = "..." } (optional) }
-- and the handler (or access hook) answers it once: `return answer(err, req)`.
local moongate = require "moongate"

local json = moongate.json
local type = type
local pairs = pairs
local match = string.match

local _M = { _VERSION = "0.1.0" }

local JSON_TYPE = { ["Content-Type"] = "application/json" }
_M.JSON_TYPE = JSON_TYPE

--- An err: status (HTTP), error (the body's machine-readable code), message,
--- details (fields added to the body), headers (added to the response).
function _M.err(status, code, message, details, headers)
  return { status = status, error = code, message = message, details = details, headers = headers }
end

--- The JSON answer for an err: status, body {"error", "message",
--- "request_id" (when req is given), and the details' fields}, headers.
function _M.answer(err, req)
  local body = { error = err.error, message = err.message, request_id = req and req.id or nil }
  for k, v in pairs(err.details or {}) do
    body[k] = v
  end
  local headers = JSON_TYPE
  if err.headers then
    headers = { ["Content-Type"] = JSON_TYPE["Content-Type"] }
    for k, v in pairs(err.headers) do
      headers[k] = v
    end
  end
  return err.status, body, headers
end

--- The request's JSON body: a table, or nil, err (400 invalid_body). An
--- empty (or blank) body is {} when `optional`, else an error too.
function _M.json_body(req, optional)
  local raw = req:body()
  if raw == nil or match(raw, "^%s*$") then
    if optional then
      return {}
    end
    return nil, _M.err(400, "invalid_body", "a JSON object body is required")
  end
  local t = json.decode(raw)
  if type(t) ~= "table" then
    return nil, _M.err(400, "invalid_body", "the body is not a JSON object")
  end
  return t
end

return moongate.module("json_api", _M)
