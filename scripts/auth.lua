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
-- Helpers return a value, or nil, err (scripts/json_api.lua); the hooks
-- answer an err once, with json_api.answer.
--
-- Plain Lua: edit, `kill -HUP <master pid>`.
local moongate = require "moongate"
local api = require "json_api"
local config = require "auth_config"
local mode = require "moongate.mode"

local type = type
local tostring = tostring
local match = string.match
local answer = api.answer

local _M = { _VERSION = "0.1.0" }

-- the demo's static tokens outside demo mode: said at every load (the
-- master logs it once per start and reload)
if not mode.demo and config.verifier == "static" and type(config.tokens) == "table" then
  local demo = {}
  for t in pairs(config.tokens) do
    if type(t) == "string" and t:find("^demo%-") then demo[#demo + 1] = t end
  end
  if #demo > 0 then
    table.sort(demo)
    mode.note("warn", "auth_config.lua: the demo's static tokens (%s) are on outside demo mode: "
              .. "anyone who has read the README can call /api; remove them, or set demo = true "
              .. "(MOONGATE_DEMO=1) for a demo", table.concat(demo, ", "))
  end
end

-- 401 err, with the challenge
local function unauthorized(message, invalid)
  local www = 'Bearer realm="moongate"'
  if invalid then
    www = www .. ', error="invalid_token"'
  end
  return api.err(401, "unauthorized", message, nil, { ["WWW-Authenticate"] = www })
end

local function forbidden(message, details)
  return api.err(403, "forbidden", message, details)
end

-- A real WebSocket handshake on a WebSocket route (the core checked
-- Upgrade, Connection, the key and the version before this hook ran): an
-- Upgrade header on a REST route is not one.
local function is_websocket(req)
  return req.websocket == true
end
_M.is_websocket = is_websocket

--- The bearer token of a request, or nil, err (401).
function _M.token_of(req)
  local h = req:header("authorization") -- one header: req.headers is not built
  if h then
    local t = match(h, "^[Bb][Ee][Aa][Rr][Ee][Rr] +([%w%-%._~%+/]+=*) *$")
    if t then
      return t
    end
    return nil, unauthorized("malformed Authorization header (expected: Bearer <token>)")
  end
  if config.query_token_for_websocket and is_websocket(req) then
    local t = req.query.token
    if t and t ~= "" then
      return t
    end
    return nil, unauthorized("missing token (Authorization: Bearer <token>, or ?token= on a WebSocket)")
  end
  return nil, unauthorized("missing bearer token (Authorization: Bearer <token>)")
end

-- verifiers -----------------------------------------------------------------
-- Each returns identity, or nil, "reason" (bad token), or nil, nil, err
-- (the verifier itself could not answer: 502/504), as auth_config's
-- verifier function may.

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
  local resp, err = client.introspect(ic.path or "/v1/auth/introspect", token)
  if not resp then
    return nil, nil, err
  end
  local id
  local j = resp.json
  if resp.status == 200 and type(j) == "table" and j.active == true then
    id = { subject = j.subject, tenant_id = j.tenant_id ~= moongate.json.null and j.tenant_id or nil,
           admin = j.admin == true or nil }
  elseif resp.status ~= 200 and resp.status ~= 401 and resp.status ~= 404 then
    return nil, nil, api.err(502, "runtime_unavailable", "Runtime could not check the token")
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

-- identity, or nil, err: 401 for a token the verifier refuses, the
-- verifier's own err when it could not answer
local function verify(token, req)
  local v = config.verifier
  local id, reason, err
  if type(v) == "function" then
    id, reason, err = v(token, req)
  elseif v == "runtime" then
    id, reason, err = verify_runtime(token)
  else
    id, reason, err = verify_static(token)
  end
  if id then
    return id
  end
  return nil, err or unauthorized("invalid token" .. (reason and (": " .. reason) or ""), true)
end

-- tenant binding ------------------------------------------------------------

--- true when the caller may touch `tenant` (nil/"" means "none named"),
--- else nil, err (403).
function _M.check_tenant(req, tenant)
  local id = req.ctx.auth
  if tenant == nil or tenant == "" or not id or id.tenant_id == nil or tenant == id.tenant_id then
    return true
  end
  return nil, forbidden("this token may not access tenant '" .. tostring(tenant) .. "'",
    { tenant_id = tenant })
end

--- The tenant a request acts for: the one it names, else the token's.
--- Returns tenant, or nil, err (400 naming tenant_id when there is none,
--- 403 when it is not the token's).
function _M.tenant_for(req, named)
  if named ~= nil and named ~= "" then
    if type(named) ~= "string" then
      return nil, api.err(400, "invalid_parameter", "tenant_id must be a string", { parameter = "tenant_id" })
    end
    local ok, err = _M.check_tenant(req, named)
    if not ok then
      return nil, err
    end
    return named
  end
  local id = req.ctx.auth
  if id and id.tenant_id then
    return id.tenant_id
  end
  return nil, api.err(400, "missing_parameter", "tenant_id is required", { parameter = "tenant_id" })
end

-- the hooks -----------------------------------------------------------------

-- The caller (set as req.ctx.auth), or nil, err.
local function authenticate(req)
  local token, err = _M.token_of(req)
  if not token then
    return nil, err
  end
  local id
  id, err = verify(token, req)
  if not id then
    return nil, err
  end
  req.ctx.auth = id
  local q = req.query
  if req.query_repeated and req.query_repeated.tenant_id then
    -- the hook would check one value while the upstream may read another
    return nil, api.err(400, "invalid_parameter", "tenant_id given more than once", { parameter = "tenant_id" })
  end
  local ok
  ok, err = _M.check_tenant(req, q.tenant_id)
  if not ok then
    return nil, err
  end
  ok, err = _M.check_tenant(req, req.params and req.params.tenant_id)
  if not ok then
    return nil, err
  end
  return id
end

--- access = auth.access: resolve the caller, check the tenant it names.
function _M.access(req)
  local id, err = authenticate(req)
  if not id then
    return answer(err, req)
  end
  req:set_header("X-Auth-Subject", id.subject or "")
  req:set_header("X-Auth-Tenant", id.tenant_id or "*")
end

--- access = { auth.access, auth.admin }: operators only (no tenant binding
--- and admin = true).
function _M.admin(req)
  local id = req.ctx.auth
  if not id or id.tenant_id ~= nil or not id.admin then
    return answer(forbidden("this endpoint needs an admin token"), req)
  end
end

return moongate.module("auth", _M)
