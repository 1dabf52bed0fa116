-- Unit spec for moongate.routes' fast_route: the common route checked and
-- normalized without moongate.schema. Property: on thousands of random
-- route tables (valid and invalid values of every field, unknown fields,
-- websocket tables), whenever fast_route accepts one, validate(ROUTE, ...)
-- accepts it too and gives the same table; and it accepts most valid
-- ones. Refusals always go through validate(), so their reasons are the
-- schema's (the loader specs check those).
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit/routes_fast_spec.lua

local ph = require "spec.plugin_helpers"
ph.stub_moongate()

local routes = require "moongate.routes"
local schema = require "moongate.schema"

local function f1() end
local function f2() end
local plugins = { cors = {} }

-- per field: values to pick from (nil leaves the field out)
local POOL = {
  path = { "/a", "/a/{id}", "/a/{id}/b/", "/", "a", "/a//b", "/a/{x}/{x}", "/a b", "/{1x}", 5, true },
  prefix = { "/p", "/p/{id}", "/", "p", "/p?x", {} },
  upstream = { "up", "other", "nope", 1, f1 },
  handler = { f1, f2, "f", {} },
  method = { "GET", "get", { "GET", "POST", "GET" }, {}, { "GET", 1 }, { x = "GET" }, "G ET", 3,
             "PURGE" },
  host = { "Example.COM", "example.com:8080", "[::1]:80", "bad host", "a:b", 7, "" },
  priority = { 0, 5, -3.5, 1 / 0, 0 / 0, "1" },
  strip_prefix = { true, false, "yes" },
  body_size = { 0, 1024, -1, 1.5, 2 ^ 31, 1 / 0, "1" },
  name = { "n", 3 },
  access = { f1, { f1, f2 }, {}, { f1, "x" }, "x", { [1] = f1, x = f2 } },
  header_filter = { f2, { f2 }, 1 },
  log = { f1, { f1 }, { 2 } },
  plugins = { plugins, "cors", {} },
  on_reload = { "keep", "drain", "stay" },
  access_log = { false, true, 0 },
  timeouts = { { read = 1 }, { read = 1, write = 2.5, idle = 0 }, {}, { read = -1 },
               { connect = 1 }, { idle = 2147483 }, "1", { [1] = 2 } },
  websocket = { { mode = "relay" }, {} },
  bogus = { 1 },
}
local FIELDS = {}
for k in pairs(POOL) do FIELDS[#FIELDS + 1] = k end
table.sort(FIELDS)

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

describe("routes.fast_route", function()
  it("agrees with validate(ROUTE) on every route it accepts", function()
    math.randomseed(14)
    local ctx = { path = "routes.lua", upstreams = { up = true, other = true } }
    local accepted, valid = 0, 0
    for _ = 1, 20000 do
      local raw = {}
      for _, f in ipairs(FIELDS) do
        -- most fields absent, and the first value (valid) most often
        local p = math.random()
        local rare = (f == "bogus" or f == "websocket") and 0.03 or 0.3
        if p < rare then
          local pool = POOL[f]
          raw[f] = math.random() < 0.5 and pool[1] or pool[math.random(#pool)]
        end
      end
      if math.random() < 0.7 then
        raw.path, raw.prefix = raw.path or "/a/{id}", nil
        if math.random() < 0.5 then raw.upstream, raw.handler = "up", nil end
      end
      ctx.route = raw
      local fast, params = routes.fast_route(ctx, raw)
      local slow = schema.validate(routes.ROUTE, raw, { ctx = ctx, named_unknown = true })
      if slow then valid = valid + 1 end
      if fast then
        accepted = accepted + 1
        assert.is_truthy(slow, "fast_route accepted a route validate() refuses")
        assert.is_true(same(fast, slow))
        -- the same objects where validate() passes them on
        assert.equal(slow.plugins, fast.plugins)
        local rule = raw.path or raw.prefix
        local names = {}
        for name in rule:gmatch("{([%w_]+)}") do names[#names + 1] = name end
        assert.same(names, params)
      end
    end
    -- not vacuous: many valid routes, most of them taken by the fast path
    assert.is_true(valid > 1000, "valid " .. valid)
    assert.is_true(accepted > valid * 0.8, accepted .. " of " .. valid)
  end)
end)

-- text_index as it was (gmatch for the line starts), the reference
describe("routes text_index", function()
  local function reference(text)
    local quotes = {}
    for _, q in ipairs({ '"', "'" }) do
      local by = {}
      local p = text:find(q, 1, true)
      while p do
        local e = text:find(q, p + 1, true)
        if not e then break end
        if text:byte(p + 1) == 47 then
          local s = text:sub(p + 1, e - 1)
          by[s] = by[s] or {}
          table.insert(by[s], p)
        end
        p = e
      end
      quotes[q] = by
    end
    local nl = {}
    for p in text:gmatch("()\n") do nl[#nl + 1] = p end
    return { quotes = quotes, nl = nl }
  end

  it("gives the same index as the reference on random texts", function()
    math.randomseed(41)
    local alphabet = { '"', "'", "/", "\n", "a", "{", "}", " ", "\\" }
    for _ = 1, 3000 do
      local t = {}
      for i = 1, math.random(0, 60) do t[i] = alphabet[math.random(#alphabet)] end
      local text = table.concat(t)
      assert.same(reference(text), routes._text_index(text))
    end
  end)
end)

describe("routes parse_rule", function()
  it("answers as the checked parse on random rules, valid and not", function()
    math.randomseed(32)
    local pieces = { "/", "/", "/", "a", "b1", "{id}", "{x}", "{1}", "{a", "}", "{_v2}", " ", "?",
                     "#", "\t", "{id}x", "é", "//" }
    local valid = 0
    for _ = 1, 20000 do
      local t = { math.random() < 0.95 and "/" or "a" }
      for i = 2, math.random(1, 12) do t[i] = pieces[math.random(#pieces)] end
      if math.random() < 0.02 then t[#t + 1] = string.rep("/s", 33) end
      local rule = table.concat(t)
      local a, ea = routes._parse_rule(rule)
      local b, eb = routes._parse_rule_checked(rule)
      assert.same({ b, eb }, { a, ea }, rule)
      if a then valid = valid + 1 end
    end
    assert.is_true(valid > 2000, "valid " .. valid)
  end)
end)
