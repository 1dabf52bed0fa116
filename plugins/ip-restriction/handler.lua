-- ip-restriction: CIDR allow and deny lists, IPv4 and IPv6, with trusted
-- proxies for X-Forwarded-For. It starts from req.remote_addr, which the
-- core already resolved behind the conf's trusted_proxies or a PROXY
-- protocol header. The client address it settles on is left in
-- ctx.client_ip for later phases (rate-limit keys on it).
local cidr = require "moongate.cidr"

local find = string.find
local match = string.match
local sub = string.sub
local setmetatable = setmetatable

local _M = {
  name = "ip-restriction",
  VERSION = "0.1.0",
  PRIORITY = 3000,
}

local CACHE_MAX = 4096 -- decisions remembered per conf; cleared when full

function _M.check(conf)
  -- the schema checked every entry: these cannot fail
  conf._allow = cidr.new_set(conf.allow)
  conf._deny = cidr.new_set(conf.deny)
  conf._trusted = cidr.new_set(conf.trusted_proxies)
  return true
end

-- decisions per conf: address -> true (pass) | false (refuse)
local caches = setmetatable({}, { __mode = "k" })

-- The client's address, or nil when a hop that must be read to find it does
-- not parse ("ip:port", "010.006.006.006", an empty entry): falling back to
-- the proxy's own address would let such a client through a deny list.
local function client_ip(conf, req)
  local ip = req.remote_addr
  local trusted = conf._trusted
  if trusted:empty() or not trusted:contains(ip) then
    return ip
  end
  local xff = req.headers["x-forwarded-for"]
  if not xff then return ip end
  -- walk right to left: each hop was added by the one after it
  local hops = {}
  local pos = 1
  while true do -- every entry, empty ones too ("a,,b" has three)
    local comma = find(xff, ",", pos, true)
    hops[#hops + 1] = match(sub(xff, pos, comma and comma - 1 or #xff), "^%s*(.-)%s*$")
    if not comma then break end
    pos = comma + 1
  end
  for i = #hops, 1, -1 do
    local h = hops[i]
    if not cidr.parse_ip(h) then
      return nil -- garbage where the client should be: refuse, never guess
    end
    ip = h
    if not trusted:contains(h) then
      break
    end
  end
  return ip
end

local function decide(conf, ip)
  local b = cidr.parse_ip(ip)
  if not b then
    return false -- an address that does not parse is never let through
  end
  if conf._deny:contains(b, true) then return false end
  if not conf._allow:empty() and not conf._allow:contains(b, true) then return false end
  return true
end

function _M.access(conf, req, ctx)
  local ip = client_ip(conf, req)
  if not ip then
    return conf.status, { error = conf.message }
  end
  ctx.client_ip = ip
  local cache = caches[conf]
  if not cache then
    cache = { n = 0, map = {} }
    caches[conf] = cache
  end
  local ok = cache.map[ip]
  if ok == nil then
    ok = decide(conf, ip)
    if cache.n >= CACHE_MAX then
      cache.n, cache.map = 0, {}
    end
    cache.map[ip] = ok
    cache.n = cache.n + 1
  end
  if not ok then
    return conf.status, { error = conf.message }
  end
end

return _M
