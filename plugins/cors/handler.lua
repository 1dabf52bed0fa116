-- cors: Cross-Origin Resource Sharing at the edge. A preflight (OPTIONS
-- with Access-Control-Request-Method) is answered here, 204 with the
-- allowed methods and headers, or 403 for an origin not allowed; other
-- requests from an allowed origin get Access-Control-Allow-Origin (and
-- friends) added to the response head in header_filter.
local ipairs = ipairs
local type = type
local tostring = tostring
local concat = table.concat
local find = string.find
local lower = string.lower
local sub = string.sub

local _M = {
  name = "cors",
  VERSION = "0.1.0",
  PRIORITY = 4000, -- before authentication: preflights carry no credentials
}

function _M.check(conf)
  local exact, any = {}, false
  for _, o in ipairs(conf.origins) do
    if o == "*" then any = true else exact[o] = true end
  end
  local pats = {}
  for i, p in ipairs(conf.origin_patterns) do
    if sub(p, 1, 1) ~= "^" then p = "^" .. p end
    if sub(p, -1) ~= "$" or sub(p, -2) == "%$" then p = p .. "$" end
    pats[i] = p
  end
  conf._exact, conf._any, conf._patterns = exact, any, pats
  conf._methods = concat(conf.methods, ", ")
  conf._headers = conf.headers and concat(conf.headers, ", ")
  conf._exposed = #conf.exposed_headers > 0 and concat(conf.exposed_headers, ", ") or nil
  conf._max_age = tostring(conf.max_age)
  return true
end

-- The Access-Control-Allow-Origin value for `origin`, or nil when refused.
local function allow_origin(conf, origin)
  if conf._exact[origin] then return origin end
  for _, p in ipairs(conf._patterns) do
    if find(origin, p) then return origin end
  end
  if conf._any then
    return conf.credentials and origin or "*"
  end
  return nil
end

local function add_vary(h, v)
  local cur = h.vary
  if cur == nil then
    h.vary = v
  elseif type(cur) == "string" and not find(lower(cur), lower(v), 1, true) then
    h.vary = cur .. ", " .. v
  end
end

function _M.access(conf, req, ctx)
  local origin = req.headers.origin
  if not origin then return end -- not a cross-origin request
  local acao = allow_origin(conf, origin)
  local acrm = req.headers["access-control-request-method"]
  if req.method == "OPTIONS" and acrm then
    if not acao then
      return 403, { error = "origin not allowed" }, { Vary = "Origin" }
    end
    if conf.preflight_continue then
      ctx.cors_origin = acao
      return
    end
    local h = {
      ["Access-Control-Allow-Origin"] = acao,
      ["Access-Control-Allow-Methods"] = conf._methods,
      ["Access-Control-Max-Age"] = conf._max_age,
      Vary = acao == "*" and nil or "Origin",
    }
    local allow_headers = conf._headers
    if not allow_headers then
      allow_headers = req.headers["access-control-request-headers"]
      h.Vary = h.Vary and (h.Vary .. ", Access-Control-Request-Headers")
               or "Access-Control-Request-Headers"
    end
    if allow_headers and allow_headers ~= "" then
      h["Access-Control-Allow-Headers"] = allow_headers
    end
    if conf.credentials then
      h["Access-Control-Allow-Credentials"] = "true"
    end
    return 204, nil, h
  end
  ctx.cors_origin = acao or false -- false: refused, the answer still varies by Origin
end

function _M.header_filter(conf, res, ctx)
  local acao = ctx.cors_origin
  if acao == nil then return end
  local h = res.headers
  if acao == false then
    if not conf._any then add_vary(h, "Origin") end
    return
  end
  h["access-control-allow-origin"] = acao
  if conf.credentials then
    h["access-control-allow-credentials"] = "true"
  end
  if conf._exposed then
    h["access-control-expose-headers"] = conf._exposed
  end
  if acao ~= "*" then
    add_vary(h, "Origin")
  end
end

return _M
