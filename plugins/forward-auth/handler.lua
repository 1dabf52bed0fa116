-- forward-auth: asks an auth service before the route runs, as Traefik's
-- forwardAuth does. The sub-request goes through moongate.http.request, so
-- the coroutine yields and the worker serves others meanwhile. A 2xx lets
-- the request through, copying conf.upstream_headers from the auth answer
-- to the upstream request; anything else is returned to the client with
-- its status, body and conf.client_headers.
local moongate = require "moongate"

local ipairs = ipairs
local lower = string.lower

local _M = {
  name = "forward-auth",
  VERSION = "0.1.0",
  PRIORITY = 2002,
}

local function lower_list(t)
  local out = {}
  for i, n in ipairs(t) do out[i] = lower(n) end
  return out
end

function _M.check(conf, env)
  if (conf.url == nil) == (conf.upstream == nil) then
    return nil, "give url or upstream (one of them)"
  end
  if conf.upstream then
    if env.upstreams and env.upstreams[conf.upstream] == nil then
      return nil, "unknown upstream '" .. conf.upstream .. "'", "upstream"
    end
    conf.path = conf.path or "/"
  end
  conf._request_headers = lower_list(conf.request_headers)
  conf._upstream_headers = lower_list(conf.upstream_headers)
  conf._client_headers = lower_list(conf.client_headers)
  return true
end

function _M.access(conf, req, ctx)
  local h = req.headers
  local qs = req.query_string
  local out = {
    ["X-Forwarded-Method"] = req.method,
    ["X-Forwarded-Proto"] = "http",
    ["X-Forwarded-Host"] = h.host,
    ["X-Forwarded-Uri"] = qs ~= "" and (req.path .. "?" .. qs) or req.path,
    ["X-Forwarded-For"] = req.remote_addr,
  }
  for _, name in ipairs(conf._request_headers) do
    local v = h[name]
    if v then out[name] = v end
  end
  local resp, err = moongate.http.request({
    method = conf.method, url = conf.url, upstream = conf.upstream, path = conf.path,
    headers = out, timeout = conf.timeout,
  })
  if not resp then
    moongate.log.warn("forward-auth: ", conf.url or conf.upstream, ": ", err)
    return conf.status_on_error, { error = "authentication service unavailable" }
  end
  local rh = resp.headers or {}
  if resp.status >= 200 and resp.status < 300 then
    for _, name in ipairs(conf._upstream_headers) do
      local v = rh[name]
      if v then req:set_header(name, v) end
    end
    ctx.forward_auth = rh
    return
  end
  local answer = {}
  for _, name in ipairs(conf._client_headers) do
    local v = rh[name]
    if v then answer[name] = v end
  end
  return resp.status, resp.body or "", answer
end

return _M
