-- moongate.acme_conf: checks and normalizes the conf's `acme` section
-- (docs/configuration.md, "Automatic certificates (ACME)") for the loader.
-- Pure Lua. The result goes to core/app/acme.c: storage and names for the
-- workers, and `src`, the whole section as a Lua chunk, for the ACME
-- process (lib/moongate/acme.lua), which has no other view of the conf.

local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local io_open = io.open
local math_floor = math.floor
local str_find = string.find
local str_format = string.format
local str_lower = string.lower
local str_sub = string.sub
local tbl_concat = table.concat
local tbl_sort = table.sort

local check = require "moongate.check"
local at = check.at
local bad = check.bad
local join = check.join
local show_key = check.show_key
local sorted_keys = check.sorted_keys

local _M = { _VERSION = "0.1.0" }

local MAX_NAMES = 100
local FIELDS = {
  directory = true, contact = true, names = true, challenge = true, storage = true,
  ca = true, renew = true, backoff = true, on_demand = true,
}
local MAX_ON_DEMAND = 1000

local function string_list(w, v, what)
  if type(v) == "string" then
    return { v }
  end
  if type(v) ~= "table" then
    bad(w, nil, "expected %s (a string or a list of strings), got %s", what, type(v))
  end
  local out = {}
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > #v or k ~= math_floor(k) then
      bad(w, nil, "expected a list, found key %s", show_key(k))
    end
  end
  for i, s in ipairs(v) do
    if type(s) ~= "string" then
      bad(w, nil, "item #%d: expected a string, got %s", i, type(s))
    end
    out[i] = s
  end
  return out
end

-- A DNS name this client can get a certificate for with http-01.
local function name_reason(n)
  if str_find(n, "*", 1, true) then
    return "a wildcard name needs the dns-01 challenge, which moongate does not do: list "
        .. "the names themselves"
  end
  if #n > 253 or not str_find(n, "^[%w][%w%-%.]*$") or str_find(n, "%.%.") or
     str_sub(n, -1) == "." then
    return "not a DNS name"
  end
  if str_find(n, "^[%d%.]+$") or str_find(n, ":", 1, true) then
    return "an IP address: ACME certificates here are for DNS names"
  end
  for label in n:gmatch("[^%.]+") do
    if #label > 63 then
      return "a label is longer than 63 characters"
    end
  end
  return nil
end

local function number_in(w, v, default, lo, hi, open_lo)
  if v == nil then
    return default
  end
  if type(v) ~= "number" or v ~= v or v > hi or v < lo or (open_lo and v == lo) then
    bad(w, nil, "expected a number %s %s and at most %s, got %s", open_lo and "above" or "from",
        tostring(lo), tostring(hi), tostring(v))
  end
  return v
end

-- The normalized section as `return {...}` (strings, numbers, lists).
local function serialize(v)
  if type(v) == "string" then
    return str_format("%q", v)
  elseif type(v) == "number" then
    return str_format("%.17g", v)
  elseif type(v) == "boolean" then
    return tostring(v)
  end
  local parts = {}
  if #v > 0 then
    for _, x in ipairs(v) do parts[#parts + 1] = serialize(x) end
  else
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    tbl_sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. " = " .. serialize(v[k]) end
  end
  return "{ " .. tbl_concat(parts, ", ") .. " }"
end
_M.serialize = serialize

--- Checks raw (conf.acme as written; nil: no ACME) placed at where (the
-- conf file's top), with paths relative to root. Raises a load error.
function _M.load(where, raw, root)
  if raw == nil then
    return nil
  end
  local w = at(where, "acme")
  if type(raw) ~= "table" then
    bad(w, nil, "expected a table, got %s", type(raw))
  end
  for _, k in ipairs(sorted_keys(raw)) do
    if not FIELDS[k] then
      bad(at(w, k), nil, "unknown field")
    end
  end
  local out = {}

  local dir = raw.directory
  if type(dir) ~= "string" or not str_find(dir, "^https://[^/]+") then
    bad(at(w, "directory"), dir,
        "expected the https:// URL of the ACME server's directory, got %s",
        type(dir) == "string" and ("'" .. dir .. "'") or type(dir))
  end
  out.directory = dir

  out.contact = {}
  if raw.contact ~= nil then
    out.contact = string_list(at(w, "contact"), raw.contact, "contact URLs")
    for i, c in ipairs(out.contact) do
      if not str_find(c, "^mailto:[^@%s]+@[^@%s]+$") then
        bad(at(w, "contact"), c, "item #%d: expected 'mailto:someone@example.com', got '%s'", i, c)
      end
    end
  end

  if raw.names == nil and raw.on_demand == nil then
    bad(w, nil, "names: the names to get certificates for are missing (e.g. names = { "
        .. "\"example.com\" }, or on_demand = { allow = { \"*.example.com\" } })")
  end
  local names = raw.names == nil and {} or string_list(at(w, "names"), raw.names, "DNS names")
  if raw.names ~= nil and #names == 0 then
    bad(at(w, "names"), nil, "the list is empty")
  end
  if #names > MAX_NAMES then
    bad(at(w, "names"), nil, "at most %d names", MAX_NAMES)
  end
  local seen = {}
  for i, n in ipairs(names) do
    local low = str_lower(n)
    local reason = name_reason(low)
    if reason then
      bad(at(w, "names"), n, "'%s': %s", n, reason)
    end
    if seen[low] then
      bad(at(w, "names"), n, "'%s' is listed twice (items #%d and #%d)", n, seen[low], i)
    end
    seen[low] = i
    names[i] = low
  end
  out.names = names

  -- on_demand: names seen in SNI, when the allow list covers them
  if raw.on_demand ~= nil then
    local ow = at(w, "on_demand")
    local od = raw.on_demand
    if type(od) ~= "table" then
      bad(ow, nil, "expected a table { allow = { \"*.example.com\", ... }, max = 100 }, got %s",
          type(od))
    end
    for _, k in ipairs(sorted_keys(od)) do
      if k ~= "allow" and k ~= "max" then
        bad(at(ow, k), nil, "unknown field (allow and max are)")
      end
    end
    if od.allow == nil then
      bad(ow, nil, "allow: the names or *.wildcards that may get a certificate are missing")
    end
    local allow = string_list(at(ow, "allow"), od.allow, "names or *.wildcards")
    if #allow == 0 then
      bad(at(ow, "allow"), nil, "the list is empty")
    end
    for i, a in ipairs(allow) do
      local low = str_lower(a)
      local rest = str_sub(low, 1, 2) == "*." and str_sub(low, 3) or low
      local reason = name_reason(rest)
      if reason then
        bad(at(ow, "allow"), a, "'%s': %s", a, reason)
      end
      allow[i] = low
    end
    local max = od.max
    if max == nil then
      max = 100
    end
    if type(max) ~= "number" or max ~= math_floor(max) or max < 1 or max > MAX_ON_DEMAND then
      bad(at(ow, "max"), nil, "expected an integer from 1 to %d, got %s", MAX_ON_DEMAND,
          tostring(max))
    end
    out.on_demand = { allow = allow, max = max }
  end

  local ch = raw.challenge
  if ch == nil then
    ch = "http-01"
  end
  if ch ~= "http-01" and ch ~= "tls-alpn-01" then
    bad(at(w, "challenge"), ch, "expected 'http-01' or 'tls-alpn-01', got %s",
        type(ch) == "string" and ("'" .. ch .. "'") or type(ch))
  end
  out.challenge = ch

  local st = raw.storage
  if st == nil then
    st = "acme"
  end
  if type(st) ~= "string" or st == "" then
    bad(at(w, "storage"), nil, "expected the path of a folder, got %s", type(st))
  end
  out.storage = join(root, st)

  if raw.ca ~= nil then
    if type(raw.ca) ~= "string" or raw.ca == "" then
      bad(at(w, "ca"), nil, "expected the path of a PEM file of CA certificates, got %s",
          type(raw.ca))
    end
    local path = join(root, raw.ca)
    local f, err = io_open(path, "rb")
    if not f then
      bad(at(w, "ca"), raw.ca, "%s", err or (path .. ": cannot open"))
    end
    local pem = f:read("*a") or ""
    f:close()
    if not str_find(pem, "-----BEGIN CERTIFICATE-----", 1, true) then
      bad(at(w, "ca"), raw.ca, "%s: no PEM certificate in it", path)
    end
    out.ca = path
  end

  out.renew = number_in(at(w, "renew"), raw.renew, 2 / 3, 0, 0.99, true)

  local b = raw.backoff
  if b ~= nil and type(b) ~= "table" then
    bad(at(w, "backoff"), nil, "expected a table { min = seconds, max = seconds }, got %s",
        type(b))
  end
  b = b or {}
  for _, k in ipairs(sorted_keys(b)) do
    if k ~= "min" and k ~= "max" then
      bad(at(at(w, "backoff"), k), nil, "unknown field (min and max are)")
    end
  end
  out.backoff = {
    min = number_in(at(at(w, "backoff"), "min"), b.min, 30, 0, 86400, true),
    max = number_in(at(at(w, "backoff"), "max"), b.max, 86400, 0, 30 * 86400, true),
  }
  if out.backoff.max < out.backoff.min then
    bad(at(w, "backoff"), nil, "max (%s) is below min (%s)", tostring(out.backoff.max),
        tostring(out.backoff.min))
  end

  out.src = "return " .. serialize(out)
  return out
end

return _M
