-- ip-restriction: CIDR allow and deny lists, IPv4 and IPv6, with trusted
-- proxies for X-Forwarded-For. The client address it settles on is left in
-- ctx.client_ip for later phases (rate-limit keys on it).
local cidr = require "moongate.cidr"

local gmatch = string.gmatch
local match = string.match
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
  for h in gmatch(xff, "[^,]+") do
    hops[#hops + 1] = match(h, "^%s*(.-)%s*$")
  end
  for i = #hops, 1, -1 do
    local h = hops[i]
    if not cidr.parse_ip(h) then
      break -- garbage: stop at the last address we could trust
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
    return #conf.allow == 0 -- an unparseable address passes a deny-only list
  end
  if conf._deny:contains(b, true) then return false end
  if not conf._allow:empty() and not conf._allow:contains(b, true) then return false end
  return true
end

function _M.access(conf, req, ctx)
  local ip = client_ip(conf, req)
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
