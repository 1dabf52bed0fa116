-- moongate.tls_extras: the conf fields of HTTPS at the edge beside the
-- listeners themselves (docs/configuration.md, "Redirects to HTTPS, HSTS and OCSP
-- stapling"): `redirect_https` (a conf's or a server's plain listeners
-- answer with a redirect to https) and `tls.hsts` (the
-- Strict-Transport-Security value its TLS listeners add), as field specs
-- for moongate.schema, used by moongate.loader. The C side reads the
-- normalized values (core/app/load_edge.c).

local type = type
local tostring = tostring
local str_find = string.find
local str_format = string.format
local str_lower = string.lower

local check = require "moongate.check"

local _M = { _VERSION = "0.1.0" }

local function show(v)
  if type(v) == "string" then
    return "'" .. v .. "'"
  end
  if type(v) == "number" or type(v) == "boolean" then
    return tostring(v)
  end
  return type(v)
end

--- redirect_https = false | 301 | 308: normalized to false or the status.
-- 301 is what browsers have always followed; 308 also keeps the method
-- and body of a POST (RFC 9110 15.4.9).
_M.redirect_https = {
  type = "any", default = false,
  convert = function(v)
    if v == false or v == 301 or v == 308 then
      return v
    end
    return nil, str_format("expected false, 301 or 308, got %s", show(v))
  end,
}

--- tls.hsts = "max-age=63072000[; includeSubDomains][; preload]" (RFC
-- 6797 6.1): the header's value as written. It must hold a max-age
-- directive (a browser ignores the header without one) and no control
-- character (it goes into every response head as it is).
_M.hsts = {
  type = "any",
  convert = function(v)
    if type(v) ~= "string" then
      return nil, str_format("expected a string such as \"max-age=63072000\", got %s", show(v))
    end
    if str_find(v, "[%c\127]") then
      return nil, "must not hold control characters"
    end
    if not str_find(str_lower(v), "^%s*max%-age=\"?%d+\"?%s*;?") and
       not str_find(str_lower(v), ";%s*max%-age=\"?%d+\"?%s*;?") then
      return nil, str_format("'%s' has no max-age=<seconds> directive (RFC 6797 6.1.1)", v), v
    end
    return v
  end,
}

--- The tls table's hsts (moongate.tls_conf): nil, or the value; a bad one
-- raises a LoadError at w ("file:line: tls.hsts: reason").
function _M.norm_hsts(w, v)
  if v == nil then
    return nil
  end
  local out, reason, hint = _M.hsts.convert(v)
  if out == nil then
    check.bad(w, hint, "%s", reason)
  end
  return out
end

return _M
