-- headers: configuration. Names are header names as written; values are
-- strings. Every group defaults to empty.
local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$"

local function names_ok(t)
  for name in pairs(t) do
    if not string.find(name, TOKEN) then
      return nil, "bad header name '" .. name .. "'"
    end
  end
  return true
end

local function list_ok(t)
  for _, name in ipairs(t) do
    if not string.find(name, TOKEN) then
      return nil, "bad header name '" .. name .. "'"
    end
  end
  return true
end

local function group(what)
  return {
    type = "table",
    description = what,
    fields = {
      -- replace (or create) these headers
      set = { type = "table", values = { type = "string" }, default = {}, check = names_ok },
      -- create these headers only when absent
      add = { type = "table", values = { type = "string" }, default = {}, check = names_ok },
      -- drop these headers
      remove = { type = "array", items = { type = "string" }, default = {}, check = list_ok },
    },
  }
end

return {
  fields = {
    request = group("headers sent to the upstream"),
    response = group("headers sent to the client"),
  },
}
