-- request-size-limit: refuses a request whose Content-Length is above
-- conf.max_bytes with 413 before any of the body is read or proxied.
--
-- A chunked body announces no length: the core bounds it with the route's
-- `body_size` while it streams (413, or a reset once the upstream has the
-- head). Set the route's body_size too when chunked uploads must obey the
-- smaller limit, or require_length = true to refuse them (411).
local tonumber = tonumber
local find = string.find
local lower = string.lower

local _M = {
  name = "request-size-limit",
  VERSION = "0.1.0",
  PRIORITY = 22000, -- cheap: refuse before authentication does any work
}

function _M.access(conf, req)
  local h = req.headers
  local cl = h["content-length"]
  if cl then
    local n = tonumber(cl)
    if n and n > conf.max_bytes then
      return 413, { error = "request body too large", max_bytes = conf.max_bytes }
    end
  elseif conf.require_length then
    local te = h["transfer-encoding"]
    if te and find(lower(te), "chunked", 1, true) then
      return 411, { error = "length required" }
    end
  end
end

return _M
