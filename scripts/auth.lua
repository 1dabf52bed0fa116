-- auth: the access hook every /api route runs first (routes.lua:
-- `access = auth.access`).
--
--  * The caller is resolved from a bearer token: `Authorization: Bearer <t>`,
--    or `?token=<t>` on a valid WebSocket handshake to a WebSocket route
--    (browsers cannot set headers there; `req.websocket`). No token, a malformed header or an unknown token: 401 JSON.
--  * The verifier is chosen in scripts/auth_config.lua (static table, the
--    Runtime's introspection endpoint, or a function of your own).
--  * A token bound to a tenant may only touch that tenant: a `tenant_id` in
--    the query or in the route's path parameters naming another tenant is
--    a 403 JSON; a query naming `tenant_id` twice is a 400 JSON. Handlers
--    that read a JSON body check its tenant_id with auth.check_tenant()
--    (the hook never reads bodies: on proxied routes the body streams to
--    the upstream untouched).
--  * The caller goes to the handler as req.ctx.auth, and to upstreams as
--    X-Auth-Subject / X-Auth-Tenant headers (set here, so a client cannot
--    forge them).
--
-- Plain Lua: edit, `kill -HUP <master pid>`.
local moongate = require "moongate"
local config = require "auth_config"

local type = type
local pairs = pairs
local tostring = tostring
local match = string.match

local _M = { _VERSION = "0.1.0" }

local JSON_TYPE = "application/json"

local function err_body(req, code, message, extra)
  local b = { error = code, message = message, request_id = req.id }
  for k, v in pairs(extra or {}) do
    b[k] = v
  end
  return b
end

local function unauthorized(req, message, invalid)
  local www = 'Bearer realm="moongate"'
  if invalid then
    www = www .. ', error="invalid_token"'
  end
  return 401, err_body(req, "unauthorized", message),
    { ["Content-Type"] = JSON_TYPE, ["WWW-Authenticate"] = www }
end

local function forbidden(req, message, extra)
  return 403, err_body(req, "forbidden", message, extra), { ["Content-Type"] = JSON_TYPE }
end
_M.forbidden = forbidden

-- A real WebSocket handshake on a WebSocket route (the core checked
-- Upgrade, Connection, the key and the version before this hook ran): an
-- Upgrade header on a REST route is not one.
local function is_websocket(req)
  return req.websocket == true
end
_M.is_websocket = is_websocket

--- The bearer token of a request, or nil, why.
function _M.token_of(req)
  local h = req.headers.authorization
  if h then
    local t = match(h, "^[Bb][Ee][Aa][Rr][Ee][Rr] +([%w%-%._~%+/]+=*) *$")
    if t then
      return t
    end
    return nil, "malformed Authorization header (expected: Bearer <token>)"
  end
  if config.query_token_for_websocket and is_websocket(req) then
    local t = req.query.token
    if t and t ~= "" then
      return t
    end
    return nil, "missing token (Authorization: Bearer <token>, or ?token= on a WebSocket)"
  end
  return nil, "missing bearer token (Authorization: Bearer <token>)"
end

-- verifiers -----------------------------------------------------------------
-- Each returns identity, or nil, "reason" (bad token), or nil, nil, failure
-- (the verifier itself could not answer: 502/504).

local function verify_static(token)
  local id = config.tokens and config.tokens[token]
  if type(id) ~= "table" then
    return nil, "unknown token"
  end
  return id
end

local cache = {} -- token -> { id =, expires = }; per worker, per generation
local cache_size = 0

local function verify_runtime(token)
  local now = moongate.now()
  local hit = cache[token]
  if hit and hit.expires > now then
    if not hit.id then
      return nil, "unknown token"
    end
    return hit.id
  end
  local client = require "runtime_client"
  local ic = config.introspect or {}
  local resp, failure = client.introspect(ic.path or "/v1/auth/introspect", token)
  if not resp then
    return nil, nil, failure
  end
  local id
  local j = resp.json
  if resp.status == 200 and type(j) == "table" and j.active == true then
    id = { subject = j.subject, tenant_id = j.tenant_id ~= moongate.json.null and j.tenant_id or nil,
           admin = j.admin == true or nil }
  elseif resp.status ~= 200 and resp.status ~= 401 and resp.status ~= 404 then
    return nil, nil, { status = 502, error = "runtime_unavailable",
                       message = "Runtime could not check the token" }
  end
  if cache_size > 10000 then
    cache, cache_size = {}, 0
  end
  if not cache[token] then
    cache_size = cache_size + 1
  end
  cache[token] = { id = id or false, expires = now + (ic.cache_ttl or 30) }
  if not id then
    return nil, "unknown token"
  end
  return id
end

local function verify(token, req)
  local v = config.verifier
  if type(v) == "function" then
    return v(token, req)
  elseif v == "runtime" then
    return verify_runtime(token)
  end
  return verify_static(token)
end

-- tenant binding ------------------------------------------------------------

--- nil when the caller may touch `tenant` (nil/"" means "none named"),
--- else the 403 answer (status, body, headers).
function _M.check_tenant(req, tenant)
  local id = req.ctx.auth
  if tenant == nil or tenant == "" or not id or id.tenant_id == nil then
    return nil
  end
  if tenant ~= id.tenant_id then
    return forbidden(req, "this token may not access tenant '" .. tostring(tenant) .. "'",
      { tenant_id = tenant })
  end
  return nil
end

--- The tenant a request acts for: the one it names, else the token's.
--- Returns tenant, or nil, status, body, headers (400 naming tenant_id when
--- there is none, 403 when it is not the token's).
function _M.tenant_for(req, named)
  if named ~= nil and named ~= "" then
    if type(named) ~= "string" then
      return nil, 400, err_body(req, "invalid_parameter", "tenant_id must be a string",
        { parameter = "tenant_id" }), { ["Content-Type"] = JSON_TYPE }
    end
    local st, body, headers = _M.check_tenant(req, named)
    if st then
      return nil, st, body, headers
    end
    return named
  end
  local id = req.ctx.auth
  if id and id.tenant_id then
    return id.tenant_id
  end
  return nil, 400, err_body(req, "missing_parameter", "tenant_id is required",
    { parameter = "tenant_id" }), { ["Content-Type"] = JSON_TYPE }
end

-- the hooks -----------------------------------------------------------------

--- access = auth.access: resolve the caller, check the tenant it names.
function _M.access(req)
  local token, why = _M.token_of(req)
  if not token then
    return unauthorized(req, why)
  end
  local id, reason, failure = verify(token, req)
  if not id then
    if failure then
      return failure.status, err_body(req, failure.error, failure.message),
        { ["Content-Type"] = JSON_TYPE }
    end
    return unauthorized(req, "invalid token" .. (reason and (": " .. reason) or ""), true)
  end
  req.ctx.auth = id
  local q = req.query
  if req.query_repeated and req.query_repeated.tenant_id then
    -- the hook would check one value while the upstream may read another
    return 400, err_body(req, "invalid_parameter", "tenant_id given more than once",
      { parameter = "tenant_id" }), { ["Content-Type"] = JSON_TYPE }
  end
  local st, body, headers = _M.check_tenant(req, q.tenant_id)
  if st then
    return st, body, headers
  end
  st, body, headers = _M.check_tenant(req, req.params and req.params.tenant_id)
  if st then
    return st, body, headers
  end
  req:set_header("X-Auth-Subject", id.subject or "")
  req:set_header("X-Auth-Tenant", id.tenant_id or "*")
end

--- access = { auth.access, auth.admin }: operators only (no tenant binding
--- and admin = true).
function _M.admin(req)
  local id = req.ctx.auth
  if not id or id.tenant_id ~= nil or not id.admin then
    return forbidden(req, "this endpoint needs an admin token")
  end
end

return _M
