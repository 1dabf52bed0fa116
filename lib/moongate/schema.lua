-- moongate.schema: declarative schemas for plugin configs (docs/plugins.md)
-- and for moongate's own conf and route tables (moongate.loader,
-- moongate.routes). check() vets a schema once, at load; validate() checks
-- an operator's table against it and returns a fresh normalized copy with
-- defaults filled in. Errors are nil, field path, reason (and, for the
-- loader, a value that helps find the line). Pure Lua.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local pcall = pcall
local math_floor = math.floor
local math_huge = math.huge
local str_find = string.find
local str_format = string.format
local str_gsub = string.gsub
local tbl_concat = table.concat

local hints = require "moongate.hints"
local suggestion = hints.suggestion
local check = require "moongate.check"
local sorted_keys = check.sorted_keys
local show_key = check.show_key

local _M = {}

local TYPES = {
  string = true, number = true, integer = true, boolean = true,
  table = true, array = true, ["function"] = true, any = true,
}

-- Keys a field spec may hold. Anything else is an author's typo. The last
-- line serves moongate's own conf and route schemas (see below).
local SPEC_KEYS = {
  type = true, required = true, default = true, one_of = true, min = true, max = true,
  len_min = true, len_max = true, match = true, items = true, fields = true,
  values = true, check = true, description = true,
  message = true, prepare = true, convert = true, as = true, order = true, open = true,
  keys = true, optional = true,
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


-- A spec's `message` with {type} and {value} filled in ({value} as the
-- loader shows values: strings quoted, numbers as written, else the type).
local function message(spec, v)
  local value = (type(v) == "string" or type(v) == "number") and show(v) or type(v)
  return (str_gsub(spec.message, "{(%a+)}", function(k)
    if k == "type" then return type(v) end
    if k == "value" then return value end
  end))
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
--
-- For moongate's own files (routes, conf), where every message is kept as
-- it was written by hand, a spec may also have:
--   type = "any"  no type check (convert does it)
--   message  the reason for any failure of the built-in checks (type,
--            one_of, min/max, lengths, match), with {type} and {value}
--   prepare  function(v, record) -> v: rewrites the raw value before it is
--            checked (a string becomes a list, false a table...)
--   convert  function(v, record, ctx) -> value | nil, reason, hint: a
--            custom check that also returns the normalized value
--   as       the key of the value in the output record
--   open     a record that ignores (and drops) unknown keys
--   optional a record that stays nil when absent (instead of {} with its
--            defaults)
--   keys     a map's key check: function(k) -> true | nil, reason, at_map
--            (at_map: report it at the map, not at the key)
--   order    a record's field order: names, and functions(raw, out, ctx)
--            -> true | nil, keys, reason run at that point (cross-field
--            checks; keys {} reports the reason alone, nil at the record);
--            fields not listed come after, sorted
-- `record` is the raw table holding the value; `ctx` is validate()'s
-- opts.ctx; `check` gets (value, record, ctx) too.
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
  for _, k in ipairs({ "prepare", "convert", "keys" }) do
    if spec[k] ~= nil and type(spec[k]) ~= "function" then
      return nil, str_format("field %s: '%s' must be a function", path, k)
    end
  end
  if spec.message ~= nil and type(spec.message) ~= "string" then
    return nil, str_format("field %s: 'message' must be a string", path)
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
    if k ~= "fields" and k ~= "check" and k ~= "order" and k ~= "open" then
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


-- Errors inside validation are nil, keys, reason, hint: `keys` is the
-- field path as a list (turned into text once, by validate()), `hint` a
-- value that helps the loader find the line (the offending string, or
-- { unknown = key } for an unknown key). A reason is never nil on an
-- error, so a normalized nil (an absent optional field) is not one.
local validate_value

local function key_path(keys, key)
  local out = {}
  for i = 1, #keys do out[i] = keys[i] end
  out[#out + 1] = key
  return out
end


-- Field names (and `order` functions) in validation order, made once per
-- spec (specs are not changed once made): a table of 10 000 routes
-- validates the same record spec 10 000 times.
local orders = setmetatable({}, { __mode = "k" })

local function field_order(spec)
  local list = orders[spec]
  if list then
    return list
  end
  list = {}
  orders[spec] = list
  local listed = {}
  for _, x in ipairs(spec.order or {}) do
    list[#list + 1] = x
    if type(x) == "string" then listed[x] = true end
  end
  for _, name in ipairs(sorted_keys(spec.fields)) do
    if not listed[name] then list[#list + 1] = name end
  end
  return list
end


local function validate_record(spec, v, keys, o)
  local fields = spec.fields
  local out = {}
  local unknown = false
  if not spec.open then
    for k in pairs(v) do
      if type(k) ~= "string" or fields[k] == nil then
        unknown = true
        break
      end
    end
  end
  -- with unknown keys, the first in sorted order is the one reported
  if unknown then
    for _, k in ipairs(sorted_keys(v)) do
      if type(k) ~= "string" or fields[k] == nil then
        if o.named_unknown then
          return nil, keys, "unknown field " .. show_key(k) .. suggestion(k, fields), { unknown = k }
        end
        return nil, key_path(keys, type(k) == "string" and k or tostring(k)),
               "unknown field" .. suggestion(k, fields)
      end
    end
  end
  for _, name in ipairs(field_order(spec)) do
    if type(name) == "function" then
      local ok, fkeys, reason, hint = name(v, out, o.ctx)
      if not ok then return nil, fkeys or keys, reason, hint end
    else
      local fs = fields[name]
      local x = v[name]
      -- an absent optional field without a default: validate_value would
      -- answer nil; skipped without making its key path (most of a
      -- route's fields, 10 000 times in a large table)
      if x ~= nil or fs.prepare or fs.default ~= nil or fs.required
         or (fs.type == "table" and fs.fields and not fs.optional) then
        local fkeys, reason, hint
        x, fkeys, reason, hint = validate_value(fs, x, key_path(keys, name), o, v)
        if reason then return nil, fkeys, reason, hint end
        out[fs.as or name] = x
      end
    end
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


-- The reason `v` is not of type `t`, or nil.
local function type_error(t, v)
  local vt = type(v)
  if t == "any" then
    return nil
  elseif t == "integer" then
    if vt ~= "number" or v ~= v or v == math_huge or v == -math_huge or v ~= math_floor(v) then
      return "expected an integer, got " .. show(v)
    end
  elseif t == "number" then
    if vt ~= "number" or v ~= v or v == math_huge or v == -math_huge then
      return "expected a number, got " .. show(v)
    end
  elseif t == "array" then
    if vt ~= "table" then
      return "expected an array, got " .. show(v)
    end
    local ok, k = is_array(v)
    if not ok then
      return "expected an array, found key " .. show(k)
    end
  elseif vt ~= t then
    return str_format("expected a %s, got %s", t, show(v))
  end
  return nil
end


-- The reason a value of type `t` breaks one of the spec's rules, or nil.
local function rule_error(spec, t, v)
  local vt = type(v)
  if spec.one_of then
    local found = false
    for _, x in ipairs(spec.one_of) do
      if x == v then found = true break end
    end
    if not found then
      local names = {}
      for i, x in ipairs(spec.one_of) do names[i] = show(x) end
      return str_format("expected one of %s, got %s", tbl_concat(names, ", "), show(v))
    end
  end
  if spec.min and vt == "number" and v < spec.min then
    return str_format("must be at least %s, got %s", tostring(spec.min), tostring(v))
  end
  if spec.max and vt == "number" and v > spec.max then
    return str_format("must be at most %s, got %s", tostring(spec.max), tostring(v))
  end
  if spec.len_min and #v < spec.len_min then
    return str_format("must have at least %d %s", spec.len_min,
                      t == "string" and "characters" or "items")
  end
  if spec.len_max and #v > spec.len_max then
    return str_format("must have at most %d %s", spec.len_max,
                      t == "string" and "characters" or "items")
  end
  if spec.match and not str_find(v, spec.match) then
    return str_format("%s does not match %s", show(v), spec.match)
  end
  return nil
end


-- The normalized value of an array or a table of type `t`.
local function validate_children(spec, t, v, keys, o)
  if t == "array" then
    local out = {}
    for i = 1, #v do
      if spec.items then
        local x, fkeys, reason, hint = validate_value(spec.items, v[i], key_path(keys, i), o, v)
        if reason then return nil, fkeys, reason, hint end
        out[i] = x
      else
        out[i] = deep_copy(v[i])
      end
    end
    return out
  end
  if spec.fields then
    return validate_record(spec, v, keys, o)
  end
  if not spec.values then
    return deep_copy(v)
  end
  local out = {}
  for _, k in ipairs(sorted_keys(v)) do
    if spec.keys then
      local ok, reason, at_map = spec.keys(k)
      if not ok then
        return nil, at_map and keys or key_path(keys, k), reason,
               at_map and type(k) == "string" and k or nil
      end
    elseif type(k) ~= "string" then
      return nil, keys, "expected string keys, found key " .. show(k)
    end
    local x, fkeys, reason, hint = validate_value(spec.values, v[k], key_path(keys, k), o, v)
    if reason then return nil, fkeys, reason, hint end
    out[k] = x
  end
  return out
end


-- Returns the normalized value, or nil, keys, reason, hint.
validate_value = function(spec, v, keys, o, record)
  if spec.prepare then
    v = spec.prepare(v, record)
  end
  if v == nil then
    if spec.default ~= nil then
      -- a default is written as an operator would write it: converted too
      local d = deep_copy(spec.default)
      if spec.convert then
        local x, reason, hint = spec.convert(d, record, o.ctx)
        if reason then return nil, keys, reason, hint end
        return x
      end
      return d
    end
    if spec.required then
      return nil, keys, "required"
    end
    if spec.type == "table" and spec.fields and not spec.optional
       and not has_required(spec.fields) then
      v = {}
    else
      return nil
    end
  end

  local t = spec.type
  local err = type_error(t, v) or rule_error(spec, t, v)
  if err then
    return nil, keys, spec.message and message(spec, v) or err, type(v) == "string" and v or nil
  end

  local out = v
  if t == "array" or t == "table" then
    local fkeys, reason, hint
    out, fkeys, reason, hint = validate_children(spec, t, v, keys, o)
    if reason then return nil, fkeys, reason, hint end
  end

  if spec.check then
    local ok, reason, hint = spec.check(out, record, o.ctx)
    if not ok then
      return nil, keys, reason or "invalid value", hint
    end
  end
  if spec.convert then
    local x, reason, hint = spec.convert(out, record, o.ctx)
    if reason then return nil, keys, reason, hint end
    out = x
  end
  return out
end


-- "a.b", "a[2]", 'a["X-Foo"]' from a list of keys.
local function show_path(keys)
  local path
  for _, k in ipairs(keys) do path = path_join(path, k) end
  return path
end


--- Validates `conf` (a plugin's config as the operator wrote it) against
-- `schema`. Returns a fresh normalized table (defaults filled in, the
-- operator's table untouched), or nil, field path, reason.
-- opts (moongate's own files): ctx (passed to convert, check and order
-- functions), named_unknown (report an unknown key as "<record>: unknown
-- field 'k'" rather than at "<record>.k"), format (function(keys) -> path
-- text). On error a 4th and 5th value follow: the hint and the keys.
function _M.validate(schema, conf, opts)
  local o = opts or {}
  if conf == nil then conf = {} end
  if type(conf) ~= "table" then
    return nil, nil, "expected a table, got " .. show(conf)
  end
  local spec = schema or { fields = {} }
  if not spec.fields then
    spec = { fields = {}, order = spec.order, open = spec.open }
  end
  local out, keys, reason, hint = validate_record(spec, conf, {}, o)
  if not out then
    local fmt = o.format or show_path
    return nil, #keys > 0 and fmt(keys) or nil, reason, hint, keys
  end
  if schema and schema.check then
    local ok, r2, f2 = schema.check(out)
    if not ok then return nil, f2, r2 or "invalid config" end
  end
  return out
end



_M.deep_copy = deep_copy
_M.show = show

return _M
