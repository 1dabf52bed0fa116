-- moongate.hints: helpers for load-time error messages, shared by the loader
-- and the plugin checker: "did you mean" suggestions for unknown names, and
-- whole file paths in Lua's chunk errors.
local str_byte = string.byte
local str_format = string.format
local str_match = string.match
local str_sub = string.sub
local math_min = math.min
local pairs = pairs
local type = type

local _M = { _VERSION = "0.1.0" }

-- Edit distance; O(#a * #b) on names of a few characters.
local function distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    local ca = str_byte(a, i)
    for j = 1, #b do
      local cost = (ca == str_byte(b, j)) and 0 or 1
      cur[j] = math_min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end
_M.distance = distance

--- " (did you mean 'x'?)" for the closest allowed name within 2 edits, or "".
function _M.suggestion(key, allowed)
  if type(key) ~= "string" then
    return ""
  end
  local best, best_d
  for name in pairs(allowed) do
    local d = distance(key, name)
    if d <= 2 and (not best_d or d < best_d or (d == best_d and name < best)) then
      best, best_d = name, d
    end
  end
  return best and str_format(" (did you mean '%s'?)", best) or ""
end

--- LuaJIT shortens chunk names longer than LUA_IDSIZE to "...<tail>"; puts
--- the whole path back so the message names a file that can be opened.
function _M.fix_chunkname(msg, path)
  local tail, rest = str_match(msg, "^%.%.%.([^\n]-)(:%d+: .*)$")
  if tail and #tail < #path and str_sub(path, -#tail) == tail then
    return path .. rest
  end
  return msg
end

return _M
