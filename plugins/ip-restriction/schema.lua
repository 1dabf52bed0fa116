-- ip-restriction: configuration. Entries are addresses or CIDR blocks,
-- IPv4 or IPv6 ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7").
local cidr = require "moongate.cidr"

local function cidrs(t)
  for i, s in ipairs(t) do
    local ok, err = cidr.parse_cidr(s)
    if not ok then return nil, "item " .. i .. ": " .. err end
  end
  return true
end

return {
  fields = {
    -- Only these clients may pass (empty: everyone not denied).
    allow = { type = "array", items = { type = "string" }, default = {}, check = cidrs },
    -- These clients are refused, even when allowed.
    deny = { type = "array", items = { type = "string" }, default = {}, check = cidrs },
    -- Peers whose X-Forwarded-For is believed: the client is the rightmost
    -- address in it that is not itself a trusted proxy.
    trusted_proxies = { type = "array", items = { type = "string" }, default = {},
                        check = cidrs },
    status = { type = "integer", default = 403, min = 400, max = 599 },
    message = { type = "string", default = "forbidden" },
  },
  check = function(conf)
    if #conf.allow == 0 and #conf.deny == 0 then
      return nil, "give allow, deny, or both"
    end
    return true
  end,
}
