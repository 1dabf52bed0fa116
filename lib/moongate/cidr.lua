-- moongate.cidr: IPv4 and IPv6 addresses and CIDR blocks, parsed once at
-- load time into byte strings, matched per request with a few byte
-- compares. Used by the ip-restriction plugin (allow/deny lists, trusted
-- proxies); pure Lua, no moongate APIs.
--
-- An address is kept as its network-order bytes: 4 for IPv4, 16 for IPv6.
-- An IPv4-mapped IPv6 address (::ffff:1.2.3.4) is treated as the IPv4
-- address, so a dual-stack listener's peers match IPv4 rules.

local bit = require "bit"

local type = type
local tonumber = tonumber
local ipairs = ipairs
local setmetatable = setmetatable
local band = bit.band
local lshift = bit.lshift
local rshift = bit.rshift
local str_byte = string.byte
local str_char = string.char
local str_find = string.find
local str_gmatch = string.gmatch
local str_match = string.match
local str_sub = string.sub
local str_rep = string.rep
local tbl_concat = table.concat


local _M = { _VERSION = "0.1.0" }

local V4_MAPPED = str_rep("\0", 10) .. "\255\255"


local function parse_v4(s)
  local a, b, c, d = str_match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local out = {}
  for i, x in ipairs({ a, b, c, d }) do
    if #x > 3 or (#x > 1 and str_sub(x, 1, 1) == "0") then return nil end
    local n = tonumber(x)
    if n > 255 then return nil end
    out[i] = n
  end
  return str_char(out[1], out[2], out[3], out[4])
end


local function groups_bytes(list, out)
  for _, g in ipairs(list) do
    if not str_find(g, "^%x%x?%x?%x?$") then return false end
    local n = tonumber(g, 16)
    out[#out + 1] = str_char(rshift(n, 8), band(n, 255))
  end
  return true
end


local function split_groups(s)
  local list = {}
  if s == "" then return list end
  for g in str_gmatch(s .. ":", "([^:]*):") do list[#list + 1] = g end
  return list
end


local function parse_v6(s)
  s = str_match(s, "^%[?([^%]]*)%]?$") or s
  s = str_match(s, "^([^%%]*)") -- drop a zone id (fe80::1%eth0)
  if s == "" or not str_find(s, ":", 1, true) then return nil end
  -- an embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups
  local tail4
  local head, v4 = str_match(s, "^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  if head then
    tail4 = parse_v4(v4)
    if not tail4 then return nil end
    s = head .. "0:0"
  end
  local left, right = s, nil
  local dc = str_find(s, "::", 1, true)
  if dc then
    if str_find(s, "::", dc + 1, true) then return nil end
    left, right = str_sub(s, 1, dc - 1), str_sub(s, dc + 2)
  end
  local lg, rg = split_groups(left), right and split_groups(right) or {}
  local n = #lg + #rg
  if (dc and n > 7) or (not dc and n ~= 8) then return nil end
  local out = {}
  if not groups_bytes(lg, out) then return nil end
  if dc then
    for _ = 1, 8 - n do out[#out + 1] = "\0\0" end
  end
  if not groups_bytes(rg, out) then return nil end
  local bytes = tbl_concat(out)
  if tail4 then
    bytes = str_sub(bytes, 1, 12) .. tail4
  end
  return bytes
end


--- Bytes of an address: 4 for IPv4 (and IPv4-mapped IPv6), 16 for IPv6;
-- nil when `s` is not an address.
function _M.parse_ip(s)
  if type(s) ~= "string" then return nil end
  local b = parse_v4(s)
  if b then return b end
  b = parse_v6(s)
  if b and str_sub(b, 1, 12) == V4_MAPPED then
    return str_sub(b, 13)
  end
  return b
end


--- A CIDR block "10.0.0.0/8", "2001:db8::/32", or a single address (a /32
-- or /128). Returns { bytes = network bytes, bits = prefix length } or nil,
-- reason. Host bits set in the address are ignored (10.1.2.3/8 = 10/8).
function _M.parse_cidr(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  local addr, bits = str_match(s, "^([^/]+)/(%d+)$")
  if not addr then addr = s end
  local b = parse_v4(addr)
  local mapped = false
  if not b then
    b = parse_v6(addr)
    if not b then return nil, "bad address '" .. addr .. "'" end
    if str_sub(b, 1, 12) == V4_MAPPED then
      b, mapped = str_sub(b, 13), true
    end
  end
  local max = #b * 8
  if bits then
    bits = tonumber(bits)
    if mapped then bits = bits - 96 end
    if bits < 0 or bits > max then
      return nil, "bad prefix length in '" .. s .. "' (0-" .. (mapped and 128 or max) .. ")"
    end
  else
    bits = max
  end
  return { bytes = b, bits = bits }
end


local function in_block(ip, block)
  if #ip ~= #block.bytes then return false end
  local bits = block.bits
  local full = rshift(bits, 3)
  if full > 0 and str_sub(ip, 1, full) ~= str_sub(block.bytes, 1, full) then
    return false
  end
  local rest = band(bits, 7)
  if rest == 0 then return true end
  local mask = band(lshift(0xff, 8 - rest), 0xff)
  return band(str_byte(ip, full + 1), mask) == band(str_byte(block.bytes, full + 1), mask)
end


local Set = {}
Set.__index = Set


--- A set of CIDR blocks from a list of strings. Returns the set, or nil,
-- index, reason for the first bad entry. O(#blocks) per match: lists are
-- short and hand-written.
function _M.new_set(list)
  local blocks = {}
  for i, s in ipairs(list or {}) do
    local b, err = _M.parse_cidr(s)
    if not b then return nil, i, err end
    blocks[i] = b
  end
  return setmetatable({ blocks = blocks }, Set)
end


--- True when address `ip` (a string, or bytes from parse_ip when `raw`)
-- is in one of the set's blocks.
function Set:contains(ip, raw)
  local b = raw and ip or _M.parse_ip(ip)
  if not b then return false end
  local blocks = self.blocks
  for i = 1, #blocks do
    if in_block(b, blocks[i]) then return true end
  end
  return false
end


function Set:empty()
  return #self.blocks == 0
end


return _M
