-- moongate.check: what moongate.loader and moongate.routes check files
-- with. Errors are raised as LoadError ("file:line: reason") and turned back
-- into `nil, err` by loader.load(); a value's line is found by searching the
-- file's text for its field names; operator files are read and run here;
-- and the value checks the conf and route schemas share (numbers for the
-- core, string lists) live here too. Pure Lua, no moongate APIs.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local xpcall = xpcall
local require = require
local loadfile = loadfile
local setmetatable = setmetatable
local getmetatable = getmetatable
local package = package
local io_open = io.open
local debug_getinfo = debug.getinfo
local math_floor = math.floor
local math_huge = math.huge
local str_find = string.find
local str_format = string.format
local str_gmatch = string.gmatch
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tbl_concat = table.concat
local tbl_sort = table.sort


local _M = {}

-- Limits imposed by the C side (core/conf/conf.h): durations become int
-- milliseconds, counts are ints, names and hosts live in char[64].
_M.MAX_SECONDS = 2147482
-- Byte counts (websocket.max_message, send_buffer) are uint64/size_t in C;
-- 1 GiB bounds what one message or one socket's queue may hold.
_M.MAX_BYTES = 1073741824
_M.MAX_INT = 2147483647
_M.MAX_NAME = 63
_M.MAX_SEGMENTS = 32

---------------------------------------------------------------------------
-- Errors
--
-- Validation is deep; rather than thread `nil, err` through every level,
-- checks raise a LoadError that load() turns back into `nil, err`. Any
-- other error escaping load() is a bug here and is re-raised.
---------------------------------------------------------------------------

local LoadError = {}

local function fail(file, line, fmt, ...)
  local msg = str_format("%s:%d: ", file, line) .. str_format(fmt, ...)
  error(setmetatable({ msg = msg }, LoadError), 0)
end


local hints = require "moongate.hints"
local suggestion = hints.suggestion
local fix_chunkname = hints.fix_chunkname


-- Keys of `t` in a fixed order (strings first, then by tostring), so that
-- with several mistakes the same one is always reported first.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  tbl_sort(keys, function(a, b)
    local sa, sb = type(a) == "string", type(b) == "string"
    if sa ~= sb then
      return sa
    end
    return tostring(a) < tostring(b)
  end)
  return keys
end


local function show_key(k)
  if type(k) == "string" then
    return "'" .. k .. "'"
  end
  return "[" .. tostring(k) .. "]"
end


-- For messages: numbers as written, strings quoted, anything else by type.
local function show_value(v)
  if type(v) == "number" then
    return tostring(v)
  elseif type(v) == "string" then
    return "'" .. v .. "'"
  end
  return type(v)
end


---------------------------------------------------------------------------
-- Source positions
--
-- A table returned by a chunk carries no line numbers, so errors about a
-- value are placed by searching the file's text for the field names (and
-- the offending string, when there is one). A heuristic: good enough to
-- point an editor at the right spot, never wrong about the file.
---------------------------------------------------------------------------

local function escape_pattern(s)
  return (str_gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end


-- Line number of byte position `pos` in `text`. O(pos).
local function line_of(text, pos)
  local n = 1
  for _ in str_gmatch(str_sub(text, 1, pos - 1), "\n") do
    n = n + 1
  end
  return n
end


-- Positions of `s` as a quoted string literal ("s" or 's') from `init`,
-- in file order.
local function quoted_positions(text, s, init)
  local found = {}
  for _, q in ipairs({ '"', "'" }) do
    local lit = q .. s .. q
    local pos = init or 1
    while true do
      local p = str_find(text, lit, pos, true)
      if not p then break end
      found[#found + 1] = p
      pos = p + 1
    end
  end
  tbl_sort(found)
  return found
end


-- Where `key` appears as a table key at or after `init`: `key =` first,
-- then `["key"]`, then any quoted or bare occurrence.
local function find_key(text, key, init)
  if type(key) ~= "string" or key == "" then
    return nil
  end
  local e = escape_pattern(key)
  local patterns = {
    "%f[%w_]" .. e .. "%s*=",
    "%[%s*[\"']" .. e .. "[\"']%s*%]",
    "[\"']" .. e .. "[\"']",
    "%f[%w_]" .. e .. "%f[^%w_]",
  }
  for _, p in ipairs(patterns) do
    local s = str_find(text, p, init)
    if s then
      return s
    end
  end
  return nil
end


-- Line of the value at field path `keys` (e.g. { "upstreams", "runtime",
-- "servers" }), each key searched after the previous one; then of the
-- string `value` if given. 1 when nothing is found, 0 without a text.
local function locate(text, keys, value)
  if not text then
    return 0
  end
  local pos, found = 1, false
  for i = 1, #keys do
    local p = find_key(text, keys[i], pos)
    if p then
      pos, found = p, true
    end
  end
  if type(value) == "string" and value ~= "" then
    local p = quoted_positions(text, value, pos)[1]
    if p then
      pos, found = p, true
    end
  end
  return found and line_of(text, pos) or 1
end


-- Line of the chunk's top-level `return`: the last one at column 0, as a
-- handler's own `return`s are indented.
local function return_line(text)
  local last
  for p in str_gmatch("\n" .. text, "\n()return%f[^%w_]") do
    last = p - 1
  end
  return last and line_of(text, last) or 1
end


---------------------------------------------------------------------------
-- Files and chunks
---------------------------------------------------------------------------

local function read_source(path)
  local f, err = io_open(path, "rb")
  if not f then
    -- io.open says "<path>: <strerror>"; keep only the reason
    if str_sub(err, 1, #path + 2) == path .. ": " then
      err = str_sub(err, #path + 3)
    end
    fail(path, 0, "cannot open file: %s", err)
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then
    fail(path, 0, "cannot read file: %s", tostring(rerr))
  end
  return { path = path, text = text }
end


-- Compiles and runs the file `src.path`, returning its first result. Syntax
-- errors and errors raised with error("...") already carry "file:line:";
-- error(x, 0), non-string errors and errors raised by C functions such as
-- require() do not, and get the innermost line of this file on the stack.
local function run_file(src)
  local path = src.path
  local chunk, err = loadfile(path)
  if not chunk then
    if not str_find(err, "^[^\n]-:%d+: ") then
      fail(path, 0, "%s", err)
    end
    error(setmetatable({ msg = fix_chunkname(err, path) }, LoadError), 0)
  end

  local source = "@" .. path
  local function handler(e)
    local msg
    if type(e) == "string" then
      msg = e
    else
      local mt = getmetatable(e)
      if mt and mt.__tostring then
        msg = tostring(e)
      else
        msg = "(error object is a " .. type(e) .. " value)"
      end
    end
    if str_find(msg, "^[^\n]-:%d+: ") then
      return fix_chunkname(msg, path)
    end
    local line = 1
    for level = 2, 200 do
      local info = debug_getinfo(level, "Sl")
      if not info then break end
      if info.source == source and info.currentline > 0 then
        line = info.currentline
        break
      end
    end
    return str_format("%s:%d: %s", path, line, msg)
  end

  local ok, res = xpcall(chunk, handler)
  if not ok then
    error(setmetatable({ msg = res }, LoadError), 0)
  end
  return res
end


---------------------------------------------------------------------------
-- Paths
---------------------------------------------------------------------------

local function dirname(p)
  local d = str_match(p, "^(.*)/[^/]*$")
  if d == nil then
    return "."
  end
  if d == "" then
    return "/"
  end
  return d
end


local function basename(p)
  return str_match(p, "([^/]*)/*$")
end


-- The project root: conf/'s parent when the conf file lives in conf/,
-- else the conf file's own directory.
local function root_of(conf_path)
  local dir = dirname(conf_path)
  if basename(dir) == "conf" then
    return dirname(dir)
  end
  return dir
end


-- Joins without inventing "./": a root of "." keeps paths as the operator
-- wrote them, so messages read "scripts/routes.lua:12: ...".
local function join(root, p)
  if str_sub(p, 1, 1) == "/" or root == "." or root == "" then
    return p
  end
  if str_sub(root, -1) == "/" then
    return root .. p
  end
  return root .. "/" .. p
end


-- Prepends dir/?.lua and dir/?/init.lua for each dir, skipping templates
-- already on package.path, so repeated loads in one state (moongate -t,
-- the specs) do not grow it.
local function add_lua_path(dirs)
  local have = ";" .. package.path .. ";"
  local add = {}
  for _, dir in ipairs(dirs) do
    for _, tpl in ipairs({ join(dir, "?.lua"), join(dir, "?/init.lua") }) do
      if not str_find(have, ";" .. tpl .. ";", 1, true) then
        add[#add + 1] = tpl
        have = have .. tpl .. ";"
      end
    end
  end
  if #add > 0 then
    package.path = tbl_concat(add, ";") .. ";" .. package.path
  end
end


---------------------------------------------------------------------------
-- Conf values
--
-- A "where" says where a value came from: { path=, text=, keys=, label= }.
-- path/text name the file (text nil for the environment), keys is the field
-- path used to find the line, label prefixes the reason ("timeouts.read",
-- "MOONGATE_WORKERS").
---------------------------------------------------------------------------

local function at(where, key)
  local keys = {}
  for i = 1, #where.keys do keys[i] = where.keys[i] end
  keys[#keys + 1] = key
  return {
    path = where.path, text = where.text, keys = keys,
    label = where.env and where.label or tbl_concat(keys, "."),
    env = where.env,
  }
end


local function bad(where, value, fmt, ...)
  local line = locate(where.text, where.keys, value)
  fail(where.path, line, "%s: " .. fmt, where.label, ...)
end


-- A number that is not NaN (v ~= v), not negative, finite, and an
-- integer when `int`.
local function is_nonneg(v, int)
  return type(v) == "number" and v == v and v >= 0 and v < math_huge
         and (not int or v == math_floor(v))
end


-- Non-negative, finite, at most `max`; integer when `int`. Returns v, or
-- nil and the reason.
local function number_reason(v, int, max)
  if not is_nonneg(v, int) then
    return nil, str_format("expected a non-negative %s, got %s",
                           int and "integer" or "number", show_value(v))
  end
  if v > max then
    return nil, str_format("%s is too large (at most %d)", tostring(v), max)
  end
  return v
end


-- A string or a list of strings -> list of strings, or nil and the reason.
local function string_list_reason(v)
  if type(v) == "string" then
    return { v }
  end
  if type(v) ~= "table" then
    return nil, "expected a string or a list of strings, got " .. type(v)
  end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      return nil, "expected a list, found key " .. show_key(k)
    end
  end
  local out = {}
  for i = 1, n do
    if type(v[i]) ~= "string" then
      return nil, str_format("item #%d: expected a string, got %s", i, type(v[i]))
    end
    out[i] = v[i]
  end
  return out
end



local function valid_hostname(h)
  return h ~= "" and #h <= _M.MAX_NAME and str_find(h, "^[%w%.%-_]+$") ~= nil
end

function _M.is_load_error(e)
  return getmetatable(e) == LoadError
end

-- Raises msg (already "file:line: reason") as a LoadError.
function _M.raise(msg)
  error(setmetatable({ msg = msg }, LoadError), 0)
end

_M.fail = fail
_M.sorted_keys = sorted_keys
_M.show_key = show_key
_M.show_value = show_value
_M.line_of = line_of
_M.locate = locate
_M.quoted_positions = quoted_positions
_M.return_line = return_line
_M.read_source = read_source
_M.run_file = run_file
_M.dirname = dirname
_M.basename = basename
_M.root_of = root_of
_M.join = join
_M.add_lua_path = add_lua_path
_M.at = at
_M.bad = bad
_M.is_nonneg = is_nonneg
_M.number_reason = number_reason
_M.string_list_reason = string_list_reason
_M.suggestion = suggestion
_M.valid_hostname = valid_hostname

return _M
