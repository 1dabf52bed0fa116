-- headers: add, set and remove request headers (towards the upstream, and
-- a WebSocket relay's or tunnel's handshake) and response headers (towards
-- the client, for proxied and handler responses).
--
-- Request `remove` drops the client's header (req:set_header(name, nil)):
-- the upstream does not see it at all.
local pairs = pairs
local ipairs = ipairs
local lower = string.lower

local _M = {
  name = "headers",
  VERSION = "0.1.0",
  PRIORITY = 900, -- after authentication: an auth plugin's headers win over ours
}

-- Lower-cased copies for response editing: res.headers is keyed that way.
local function lower_map(t)
  local out = {}
  for k, v in pairs(t) do out[lower(k)] = v end
  return out
end

function _M.check(conf)
  local r = conf.response
  conf._res_set = lower_map(r.set)
  conf._res_add = lower_map(r.add)
  local rm = {}
  for i, name in ipairs(r.remove) do rm[i] = lower(name) end
  conf._res_remove = rm
  local add = {}
  for name, v in pairs(conf.request.add) do add[#add + 1] = { name, lower(name), v } end
  conf._req_add = add
  conf._has_response = next(r.set) ~= nil or next(r.add) ~= nil or #rm > 0
  return true
end

function _M.access(conf, req)
  local rq = conf.request
  for _, name in ipairs(rq.remove) do
    req:set_header(name, nil)
  end
  for name, v in pairs(rq.set) do
    req:set_header(name, v)
  end
  local headers = req.headers
  for _, a in ipairs(conf._req_add) do
    if headers[a[2]] == nil then
      req:set_header(a[1], a[3])
    end
  end
end

function _M.header_filter(conf, res)
  if not conf._has_response then return end
  local h = res.headers
  for _, name in ipairs(conf._res_remove) do
    h[name] = nil
  end
  for name, v in pairs(conf._res_set) do
    h[name] = v
  end
  for name, v in pairs(conf._res_add) do
    if h[name] == nil then h[name] = v end
  end
end

return _M
