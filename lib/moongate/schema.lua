-- moongate.schema: plugin config schemas (docs/plugins.md). check()
-- vets a plugin author's schema once, at load; validate() checks an
-- operator's config against it and returns a fresh normalized copy with
-- defaults filled in. Errors are nil, field path, reason. Pure Lua.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local pcall = pcall
local math_floor = math.floor
local math_huge = math.huge
local str_find = string.find
local str_format = string.format
local tbl_concat = table.concat

local hints = require "moongate.hints"
local suggestion = hints.suggestion
local sorted_keys = require("moongate.check").sorted_keys

local _M = {}

local TYPES = {
  string = true, number = true, integer = true, boolean = true,
  table = true, array = true, ["function"] = true,
}

-- Keys a field spec may hold. Anything else is an author's typo.
local SPEC_KEYS = {
  type = true, required = true, default = true, one_of = true, min = true, max = true,
  len_min = true, len_max = true, match = true, items = true, fields = true,
  values = true, check = true, description = true,
}

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end


local function show(v)
  if type(v) == "string" then
    return "'" .. v .. "'"
  elseif type(v) == "number" or type(v) == "boolean" then
    return tostring(v)
  end
  return type(v)
end


-- "a.b", "a[2]", 'a["X-Foo"]': field paths as an operator would write them.
local function path_join(path, key)
  if type(key) == "number" then
    return (path or "") .. "[" .. key .. "]"
  end
  if str_find(key, "^[%a_][%w_]*$") then
    return path and (path .. "." .. key) or key
  end
  return (path or "") .. '["' .. key .. '"]'
end


local function is_array(t)
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      return false, k
    end
  end
  return true
end

---------------------------------------------------------------------------
-- Schemas
--
-- A schema is { fields = { name = spec } }. A spec: type (string, number,
-- integer, boolean, table, array, function), required, default, one_of,
-- min/max (numbers), len_min/len_max (string length, array size), match
-- (Lua pattern a string must match), items (spec of array items), fields
-- (a record: only these keys), values (a map: spec of each value, keys are
-- strings), check (function(v) -> true | nil, reason), description.
---------------------------------------------------------------------------

local check_spec

local function check_fields_spec(fields, path)
  if type(fields) ~= "table" then
    return nil, str_format("field %s: 'fields' must be a table", path or "?")
  end
  for _, name in ipairs(sorted_keys(fields)) do
    if type(name) ~= "string" then
      return nil, "field names must be strings, got " .. show(name)
    end
    local ok, err = check_spec(fields[name], path_join(path, name))
    if not ok then return nil, err end
  end
  return true
end


-- Checks a plugin author's spec once, at load: a typo in a schema is a
-- load error, not a silently ignored rule.
check_spec = function(spec, path)
  if type(spec) ~= "table" then
    return nil, str_format("field %s: spec must be a table, got %s", path, type(spec))
  end
  for _, k in ipairs(sorted_keys(spec)) do
    if not SPEC_KEYS[k] then
      return nil, str_format("field %s: unknown schema key %s%s", path, show(k),
                             suggestion(k, SPEC_KEYS))
    end
  end
  if not TYPES[spec.type] then
    return nil, str_format("field %s: bad type %s", path, show(spec.type))
  end
  if spec.one_of ~= nil and (type(spec.one_of) ~= "table" or #spec.one_of == 0) then
    return nil, str_format("field %s: 'one_of' must be a non-empty list", path)
  end
  if spec.check ~= nil and type(spec.check) ~= "function" then
    return nil, str_format("field %s: 'check' must be a function", path)
  end
  if spec.match ~= nil then
    if type(spec.match) ~= "string" or not pcall(str_find, "", spec.match) then
      return nil, str_format("field %s: 'match' must be a valid Lua pattern", path)
    end
  end
  if spec.items ~= nil then
    if spec.type ~= "array" then
      return nil, str_format("field %s: 'items' applies to arrays", path)
    end
    local ok, err = check_spec(spec.items, path .. "[]")
    if not ok then return nil, err end
  end
  if spec.fields ~= nil or spec.values ~= nil then
    if spec.type ~= "table" then
      return nil, str_format("field %s: 'fields' and 'values' apply to tables", path)
    end
    if spec.fields ~= nil and spec.values ~= nil then
      return nil, str_format("field %s: give 'fields' (a record) or 'values' (a map), not both",
                             path)
    end
    if spec.fields ~= nil then
      local ok, err = check_fields_spec(spec.fields, path)
      if not ok then return nil, err end
    else
      local ok, err = check_spec(spec.values, path .. "[]")
      if not ok then return nil, err end
    end
  end
  return true
end


--- Checks a schema table. Returns true or nil, reason.
function _M.check(schema)
  if schema == nil then return true end
  if type(schema) ~= "table" then
    return nil, "schema: expected a table, got " .. type(schema)
  end
  for _, k in ipairs(sorted_keys(schema)) do
    if k ~= "fields" and k ~= "check" then
      return nil, "schema: unknown key " .. show(k) .. " (expected 'fields' and 'check')"
    end
  end
  if schema.check ~= nil and type(schema.check) ~= "function" then
    return nil, "schema: 'check' must be a function"
  end
  local ok, err = check_fields_spec(schema.fields or {}, nil)
  if not ok then return nil, "schema: " .. err end
  return true
end


local validate_value

local function validate_record(fields, v, path)
  local out = {}
  for _, k in ipairs(sorted_keys(v)) do
    if type(k) ~= "string" or fields[k] == nil then
      return nil, path_join(path, type(k) == "string" and k or tostring(k)),
             "unknown field" .. suggestion(k, fields)
    end
  end
  for _, name in ipairs(sorted_keys(fields)) do
    local x, fpath, reason = validate_value(fields[name], v[name], path_join(path, name))
    if fpath then return nil, fpath, reason end
    out[name] = x
  end
  return out
end


-- An absent record with no required fields becomes {} with its defaults,
-- so handlers can index conf.request.set without checking for nil.
local function has_required(fields)
  for _, s in pairs(fields) do
    if s.required then return true end
  end
  return false
end


-- Returns the normalized value, or nil, path, reason.
validate_value = function(spec, v, path)
  if v == nil then
    if spec.default ~= nil then
      return deep_copy(spec.default)
    end
    if spec.required then
      return nil, path, "required"
    end
    if spec.type == "table" and spec.fields and not has_required(spec.fields) then
      return validate_record(spec.fields, {}, path)
    end
    return nil
  end

  local t = spec.type
  local vt = type(v)
  if t == "integer" then
    if vt ~= "number" or v ~= v or v == math_huge or v == -math_huge or v ~= math_floor(v) then
      return nil, path, "expected an integer, got " .. show(v)
    end
  elseif t == "number" then
    if vt ~= "number" or v ~= v or v == math_huge or v == -math_huge then
      return nil, path, "expected a number, got " .. show(v)
    end
  elseif t == "array" then
    if vt ~= "table" then
      return nil, path, "expected an array, got " .. show(v)
    end
    local ok, k = is_array(v)
    if not ok then
      return nil, path, "expected an array, found key " .. show(k)
    end
  elseif vt ~= t then
    return nil, path, str_format("expected a%s %s, got %s",
                                 (t == "integer" or t == "array") and "n" or "", t, show(v))
  end

  if spec.one_of then
    local found = false
    for _, x in ipairs(spec.one_of) do
      if x == v then found = true break end
    end
    if not found then
      local names = {}
      for i, x in ipairs(spec.one_of) do names[i] = show(x) end
      return nil, path, str_format("expected one of %s, got %s", tbl_concat(names, ", "), show(v))
    end
  end
  if spec.min and vt == "number" and v < spec.min then
    return nil, path, str_format("must be at least %s, got %s", tostring(spec.min), tostring(v))
  end
  if spec.max and vt == "number" and v > spec.max then
    return nil, path, str_format("must be at most %s, got %s", tostring(spec.max), tostring(v))
  end
  if spec.len_min and #v < spec.len_min then
    return nil, path, str_format("must have at least %d %s", spec.len_min,
                                 t == "string" and "characters" or "items")
  end
  if spec.len_max and #v > spec.len_max then
    return nil, path, str_format("must have at most %d %s", spec.len_max,
                                 t == "string" and "characters" or "items")
  end
  if spec.match and not str_find(v, spec.match) then
    return nil, path, str_format("%s does not match %s", show(v), spec.match)
  end

  local out = v
  if t == "array" then
    out = {}
    for i = 1, #v do
      if spec.items then
        local x, fpath, reason = validate_value(spec.items, v[i], path_join(path, i))
        if fpath then return nil, fpath, reason end
        out[i] = x
      else
        out[i] = deep_copy(v[i])
      end
    end
  elseif t == "table" then
    if spec.fields then
      local x, fpath, reason = validate_record(spec.fields, v, path)
      if fpath then return nil, fpath, reason end
      out = x
    elseif spec.values then
      out = {}
      for _, k in ipairs(sorted_keys(v)) do
        if type(k) ~= "string" then
          return nil, path, "expected string keys, found key " .. show(k)
        end
        local x, fpath, reason = validate_value(spec.values, v[k], path_join(path, k))
        if fpath then return nil, fpath, reason end
        out[k] = x
      end
    else
      out = deep_copy(v)
    end
  end

  if spec.check then
    local ok, reason = spec.check(out)
    if not ok then
      return nil, path, reason or "invalid value"
    end
  end
  return out
end


--- Validates `conf` (a plugin's config as the operator wrote it) against
-- `schema`. Returns a fresh normalized table (defaults filled in, the
-- operator's table untouched), or nil, field path, reason.
function _M.validate(schema, conf)
  if conf == nil then conf = {} end
  if type(conf) ~= "table" then
    return nil, nil, "expected a table, got " .. show(conf)
  end
  local fields = schema and schema.fields or {}
  local out, fpath, reason = validate_record(fields, conf, nil)
  if not out then return nil, fpath, reason end
  if schema and schema.check then
    local ok, r2, f2 = schema.check(out)
    if not ok then return nil, f2, r2 or "invalid config" end
  end
  return out
end



_M.deep_copy = deep_copy
_M.show = show

return _M
