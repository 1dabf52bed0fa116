-- Unit specs for lib/moongate/plugins.lua and its use by the loader:
-- schema validation and defaults, finding plugins (plugins/<name>.lua,
-- plugins/<name>/handler.lua + schema.lua, moongate.plugins.<name> on
-- package.path, the bundled ones), load errors as "file:line: plugin
-- <name>: field <f>: reason", and the order in which a route's hooks are
-- composed. `moongate` is stubbed: nothing here runs the binary.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit/plugins_spec.lua

local ph = require "spec.plugin_helpers"
ph.stub_moongate()

local plugins = require "moongate.plugins"
local loader = require "moongate.loader"

local fmt = string.format


-- A plugin module's source: records its phases into ctx.trace / msg.trace.
local function tracer(name, priority, extra)
  return fmt([[
local _M = { VERSION = "1.0.0", PRIORITY = %d,
  schema = { fields = { tag = { type = "string", default = %q } } } }
local function add(ctx, what) ctx.trace = ctx.trace or {}; ctx.trace[#ctx.trace + 1] = what end
function _M.rewrite(conf, req, ctx) add(ctx, "rewrite:" .. conf.tag) end
function _M.access(conf, req, ctx) add(ctx, "access:" .. conf.tag) end
function _M.header_filter(conf, res, ctx) add(ctx, "hf:" .. conf.tag) end
function _M.log(conf, entry, ctx) add(ctx, "log:" .. conf.tag) end
function _M.ws_open(conf, info, ctx) add(ctx, "open:" .. conf.tag) end
function _M.ws_close(conf, info, ctx) add(ctx, "close:" .. conf.tag) end
function _M.ws_message(conf, msg, ctx)
  add(ctx, "msg:" .. conf.tag)
  do %s end
  return true
end
return _M
]], priority, name, extra or "")
end


local function load(conf, routes, files)
  local dir = ph.project("unitplug", conf, routes, files)
  local gen, err = loader.load(dir .. "/conf/moongate.lua", { env = {} })
  return gen, err, dir
end


local function route(gen, rule)
  for _, r in ipairs(gen.routes) do
    if r.rule == rule then return r end
  end
  error("no route " .. rule)
end


describe("moongate.plugins", function()

  describe("validate()", function()
    local schema = {
      fields = {
        name = { type = "string", required = true },
        count = { type = "integer", default = 3, min = 1, max = 10 },
        ratio = { type = "number" },
        on = { type = "boolean", default = false },
        mode = { type = "string", default = "a", one_of = { "a", "b" } },
        tags = { type = "array", items = { type = "string", len_min = 1 }, default = {} },
        opts = { type = "table", fields = {
          depth = { type = "integer", default = 2 },
          label = { type = "string", match = "^%l+$" },
        } },
        map = { type = "table", values = { type = "number" } },
        any = { type = "table" },
        fn = { type = "function" },
        even = { type = "integer", check = function(v)
          if v % 2 ~= 0 then return nil, "must be even" end
          return true
        end },
      },
    }

    it("fills defaults, nested record defaults included, and copies", function()
      local raw = { name = "x", tags = { "a" } }
      local conf = assert(plugins.validate(schema, raw))
      assert.same({ name = "x", count = 3, on = false, mode = "a", tags = { "a" },
                    opts = { depth = 2 } }, conf)
      assert.are_not.equal(raw.tags, conf.tags)
      assert.is_nil(raw.count) -- the operator's table is untouched
    end)

    it("accepts every type", function()
      local f = function() end
      local conf = assert(plugins.validate(schema, {
        name = "x", ratio = 0.5, on = true, mode = "b", opts = { depth = 1, label = "ab" },
        map = { a = 1 }, any = { 1, x = 2 }, fn = f, even = 4,
      }))
      assert.equal(f, conf.fn)
      assert.same({ a = 1 }, conf.map)
    end)

    local cases = {
      { {}, "name", "required" },
      { { name = 1 }, "name", "expected a string, got 1" },
      { { name = "x", count = 1.5 }, "count", "expected an integer, got 1.5" },
      { { name = "x", count = 0 }, "count", "must be at least 1, got 0" },
      { { name = "x", count = 11 }, "count", "must be at most 10, got 11" },
      { { name = "x", ratio = 0 / 0 }, "ratio", "expected a number" },
      { { name = "x", on = "yes" }, "on", "expected a boolean, got 'yes'" },
      { { name = "x", mode = "c" }, "mode", "expected one of 'a', 'b', got 'c'" },
      { { name = "x", tags = "a" }, "tags", "expected an array, got 'a'" },
      { { name = "x", tags = { x = 1 } }, "tags", "expected an array, found key 'x'" },
      { { name = "x", tags = { "a", 2 } }, "tags[2]", "expected a string, got 2" },
      { { name = "x", tags = { "" } }, "tags[1]", "must have at least 1 characters" },
      { { name = "x", opts = 1 }, "opts", "expected a table, got 1" },
      { { name = "x", opts = { depht = 1 } }, "opts.depht", "unknown field (did you mean 'depth'?)" },
      { { name = "x", opts = { label = "A1" } }, "opts.label", "'A1' does not match ^%l+$" },
      { { name = "x", map = { a = "b" } }, "map.a", "expected a number, got 'b'" },
      { { name = "x", map = { ["X-Y"] = "b" } }, 'map["X-Y"]', "expected a number" },
      { { name = "x", map = { 1 } }, "map", "expected string keys, found key 1" },
      { { name = "x", even = 3 }, "even", "must be even" },
      { { name = "x", nane = 1 }, "nane", "unknown field (did you mean 'name'?)" },
    }
    for _, c in ipairs(cases) do
      it("refuses " .. c[2] .. ": " .. c[3], function()
        local conf, field, reason = plugins.validate(schema, c[1])
        assert.is_nil(conf)
        assert.equal(c[2], field)
        assert.matches(c[3], reason, 1, true)
      end)
    end

    it("refuses a conf that is not a table", function()
      local conf, field, reason = plugins.validate(schema, "x")
      assert.is_nil(conf)
      assert.is_nil(field)
      assert.equal("expected a table, got 'x'", reason)
    end)

    it("runs the schema's own check with the normalized conf", function()
      local s = { fields = { a = { type = "number" }, b = { type = "number" } },
                  check = function(c)
                    if (c.a == nil) == (c.b == nil) then return nil, "give a or b", "a" end
                    return true
                  end }
      assert.truthy(plugins.validate(s, { a = 1 }))
      local _, field, reason = plugins.validate(s, {})
      assert.equal("a", field)
      assert.equal("give a or b", reason)
    end)
  end)


  describe("check_schema()", function()
    local cases = {
      { { fields = { a = { typ = "string" } } }, "field a: unknown schema key 'typ' (did you mean 'type'?)" },
      { { fields = { a = { type = "str" } } }, "field a: bad type 'str'" },
      { { fields = { a = { type = "string", items = { type = "string" } } } },
        "'items' applies to arrays" },
      { { fields = { a = { type = "table", fields = { b = { type = "x" } } } } }, "field a.b: bad type 'x'" },
      { { fields = { a = { type = "string", match = "[" } } }, "'match' must be a valid Lua pattern" },
      { { fields = { a = { type = "string", one_of = {} } } }, "'one_of' must be a non-empty list" },
      { { feilds = {} }, "schema: unknown key 'feilds'" },
    }
    for _, c in ipairs(cases) do
      it("refuses " .. c[2], function()
        local ok, err = plugins.check_schema(c[1])
        assert.is_nil(ok)
        assert.matches(c[2], err, 1, true)
      end)
    end
  end)


  describe("finding plugins", function()
    it("loads plugins/<name>.lua and plugins/<name>/handler.lua + schema.lua", function()
      local dir = ph.project("find", nil, nil, {
        ["plugins/single.lua"] = tracer("single", 10),
        ["plugins/split/handler.lua"] = [[
return { VERSION = "2.0.0", PRIORITY = 5, access = function() end }]],
        ["plugins/split/schema.lua"] = [[
return { fields = { x = { type = "integer", default = 7 } } }]],
      })
      local reg = plugins.new({ root = dir })
      local single = assert(reg:get("single"))
      assert.equal("single", single.name)
      assert.equal(dir .. "/plugins/single.lua", single.file)
      local split = assert(reg:get("split"))
      assert.equal("2.0.0", split.VERSION)
      assert.same({ x = 7 }, assert(plugins.configure(split, {})))
      assert.equal(split, reg:get("split")) -- loaded once per registry
    end)

    it("finds moongate.plugins.<name> and .<name>.handler on package.path (rocks)", function()
      local dir = ph.project("rocks", nil, nil, {
        ["tree/moongate/plugins/rocky.lua"] = [[
return { VERSION = "1.0", PRIORITY = 1, schema = { fields = {} }, log = function() end }]],
        ["tree/moongate/plugins/split-rock/handler.lua"] = [[
return { VERSION = "1.0", PRIORITY = 1, access = function() end }]],
        ["tree/moongate/plugins/split-rock/schema.lua"] = [[
return { fields = { y = { type = "boolean", default = true } } }]],
      })
      local saved = package.path
      package.path = dir .. "/tree/?.lua;" .. dir .. "/tree/?/init.lua;" .. package.path
      local reg = plugins.new({ root = dir .. "/elsewhere" })
      local rocky, err = reg:get("rocky")
      local split = reg:get("split-rock")
      package.path = saved
      assert.truthy(rocky, err)
      assert.truthy(split)
      assert.same({ y = true }, assert(plugins.configure(split, {})))
    end)

    it("finds the bundled plugins from any project root", function()
      local reg = plugins.new({ root = "/nonexistent" })
      for _, name in ipairs({ "cors", "jwt-auth", "key-auth", "rate-limit", "request-id",
                              "headers", "ip-restriction", "forward-auth",
                              "request-size-limit", "ws-message-limit" }) do
        local p, err = reg:get(name)
        assert.truthy(p, err)
        assert.equal(name, p.name)
        assert.is_number(p.PRIORITY)
        assert.is_string(p.VERSION)
      end
    end)

    it("prefers the project's plugins/ over a bundled plugin of the same name", function()
      local dir = ph.project("override", nil, nil, {
        ["plugins/cors.lua"] = [[return { VERSION = "9", PRIORITY = 1, access = function() end }]],
      })
      assert.equal("9", assert(plugins.new({ root = dir }):get("cors")).VERSION)
    end)

    it("says where it looked for an unknown plugin", function()
      local p, err = plugins.new({ root = "/x" }):get("nope")
      assert.is_nil(p)
      assert.matches("not found (looked in plugins/nope.lua, plugins/nope/handler.lua, "
                     .. "package.path (moongate.plugins.nope)", err, 1, true)
    end)

    it("refuses names that are not plain words", function()
      local _, err = plugins.new({ root = "/x" }):get("../etc")
      assert.matches("bad plugin name '../etc'", err, 1, true)
    end)

    local bad = {
      { "return { VERSION = '1', access = function() end }", "PRIORITY: expected a number, got nil" },
      { "return { PRIORITY = 1, access = function() end }", "VERSION: expected a string, got nil" },
      { "return { VERSION = '1', PRIORITY = 1 }", "defines no phase" },
      { "return { VERSION = '1', PRIORITY = 1, access = 1 }", "access: expected a function, got number" },
      { "return { name = 'other', VERSION = '1', PRIORITY = 1, access = print }",
        "plugin module says name = 'other', expected 'bad'" },
      { "return { VERSION = '1', PRIORITY = 1, access = print, schema = { fields = { a = {} } } }",
        "schema: field a: bad type nil" },
      { "return 42", "expected the plugin module (a table), got number" },
    }
    for _, c in ipairs(bad) do
      it("refuses a module: " .. c[2], function()
        local dir = ph.project("badmod", nil, nil, { ["plugins/bad.lua"] = c[1] })
        local p, err = plugins.new({ root = dir }):get("bad")
        assert.is_nil(p)
        assert.equal(dir .. "/plugins/bad.lua: " .. c[2], err:sub(1, #dir + 18 + #c[2]))
      end)
    end

    it("reports errors inside a plugin's file at their own position", function()
      local dir = ph.project("synerr", nil, nil, {
        ["plugins/syn.lua"] = "local x = \nreturn {",
        ["plugins/boom.lua"] = "local _M = {}\nerror('kaboom')\nreturn _M",
      })
      local reg = plugins.new({ root = dir })
      local _, err = reg:get("syn")
      assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/plugins/syn%.lua:2: ", err)
      _, err = reg:get("boom")
      assert.matches(dir .. "/plugins/boom.lua:2: kaboom", err, 1, true)
    end)
  end)


  describe("the loader", function()
    local FILES = {
      ["plugins/alpha.lua"] = tracer("alpha", 100),
      ["plugins/beta.lua"] = tracer("beta", 200),
      ["plugins/gamma.lua"] = tracer("gamma", 150),
      ["plugins/wsonly.lua"] = [[
return { VERSION = "1", PRIORITY = 1, ws_message = function() return true end }]],
    }

    it("leaves a route without plugins untouched", function()
      local gen = assert(load(nil, [[
return { { path = "/a", handler = function() end } }]], FILES))
      local r = gen.routes[1]
      assert.is_nil(r.access)
      assert.is_nil(r.header_filter)
      assert.is_nil(r.log)
      assert.is_nil(r.plugin_names)
    end)

    it("composes rewrite, then access by priority, then the route's own hooks", function()
      local gen = assert(load(nil, [[
local function own(req) req.ctx.trace[#req.ctx.trace + 1] = "own" end
local function own_hf(res, ctx) ctx.trace[#ctx.trace + 1] = "own_hf" end
return {
  { path = "/a", handler = function() end, access = own, header_filter = own_hf,
    plugins = { alpha = {}, beta = {}, gamma = { tag = "G" } } },
}]], FILES))
      local r = gen.routes[1]
      assert.same({ "beta", "gamma", "alpha" }, r.plugin_names)
      local ctx = {}
      local req = { ctx = ctx }
      for _, f in ipairs(r.access) do f(req) end
      assert.same({ "rewrite:beta", "rewrite:G", "rewrite:alpha",
                    "access:beta", "access:G", "access:alpha", "own" }, ctx.trace)
      ctx.trace = {}
      for _, f in ipairs(r.header_filter) do f({ status = 200, headers = {} }, ctx) end
      for _, f in ipairs(r.log) do f({}, ctx) end
      assert.same({ "hf:beta", "hf:G", "hf:alpha", "own_hf", "log:beta", "log:G", "log:alpha" },
                  ctx.trace)
    end)

    it("applies global plugins to every main route; a route's own config wins", function()
      local gen = assert(load([[
return { plugins = { alpha = { tag = "global" }, gamma = {} },
         servers = { side = { listen = "127.0.0.1:1", routes = "scripts/side.lua" } } }]], [[
return {
  { path = "/plain", handler = function() end },
  { path = "/own", handler = function() end, plugins = { alpha = { tag = "mine" } } },
  { path = "/off", handler = function() end, plugins = { gamma = false } },
}]], (function()
        local files = { ["scripts/side.lua"] = [[
return { { path = "/side", handler = function() end } }]] }
        for k, v in pairs(FILES) do files[k] = v end
        return files
      end)()))
      assert.same({ "alpha", "gamma" }, gen.conf.plugins)
      local function trace(r)
        local ctx = {}
        for _, f in ipairs(r.access) do f({ ctx = ctx }) end
        return ctx.trace
      end
      assert.same({ "rewrite:gamma", "rewrite:global", "access:gamma", "access:global" },
                  trace(route(gen, "/plain")))
      assert.same({ "rewrite:gamma", "rewrite:mine", "access:gamma", "access:mine" },
                  trace(route(gen, "/own")))
      assert.same({ "rewrite:global", "access:global" }, trace(route(gen, "/off")))
      -- extra servers do not get the global plugins
      assert.is_nil(gen.servers[1].routes[1].access)
    end)

    it("gives each route's conf a stable _route label", function()
      local seen = {}
      package.loaded["spec_seen_routes"] = seen
      local gen = assert(load([[return { plugins = { rec = {} } }]], [[
return {
  { path = "/a", method = "GET", handler = function() end },
  { prefix = "/b", name = "bee", handler = function() end },
}]], { ["plugins/rec.lua"] = [[
local seen = require "spec_seen_routes"
return { VERSION = "1", PRIORITY = 1,
  access = function(conf) seen[#seen + 1] = conf._route end }]] }))
      for _, r in ipairs(gen.routes) do r.access[1]({ ctx = {} }) end
      table.sort(seen)
      assert.same({ "main GET * /a", "main bee" }, seen)
      package.loaded["spec_seen_routes"] = nil
    end)

    it("chains ws_message hooks: rewrite, pass, drop and close", function()
      local gen = assert(load(nil, [[
return {
  { path = "/ws", websocket = { mode = "handler",
      on_message = function(msg) return msg.data .. "!" end },
    handler = function() end,
    plugins = { alpha = {}, beta = {} } },
}]], {
        ["plugins/alpha.lua"] = tracer("alpha", 100, [[
if msg.data == "drop" then return nil end
if msg.data == "close" then return false, 4001, "closed by alpha" end
return msg.data:upper()]]),
        ["plugins/beta.lua"] = tracer("beta", 200),
      }))
      local ws = gen.routes[1].websocket
      local ctx = {}
      assert.equal("HI!", ws.on_message({ data = "hi", kind = "text" }, ctx))
      assert.same({ "msg:beta", "msg:alpha" }, ctx.trace)
      assert.is_nil(ws.on_message({ data = "drop" }, {}))
      assert.same({ false, 4001, "closed by alpha" }, { ws.on_message({ data = "close" }, {}) })
      assert.equal(2, #ws.ws_open)
      assert.equal(2, #ws.ws_close)
      ws.ws_open[1]({}, ctx)
      assert.equal("open:beta", ctx.trace[#ctx.trace])
    end)

    it("passes a message unchanged with true when no hook rewrites it", function()
      local gen = assert(load(nil, [[
return { { path = "/ws", websocket = { mode = "handler" }, handler = function() end,
           plugins = { wsonly = {} } } }]], FILES))
      assert.is_true(gen.routes[1].websocket.on_message({ data = "x" }, {}))
    end)

    it("describes routes with their plugins", function()
      local gen = assert(load(nil, [[
return { { path = "/a", handler = function() end, plugins = { alpha = {}, beta = {} } } }]],
        FILES))
      assert.matches("plugins=beta,alpha", loader.describe(gen)[1], 1, true)
    end)

    -- errors: "file:line: plugin <name>: ..." at the route's or conf entry's line
    local route_cases = {
      { "{ path = '/x', handler = h, plugins = { nope = {} } }", "plugin nope: not found" },
      { "{ path = '/x', handler = h, plugins = { alpha = { tga = 'x' } } }",
        "plugin alpha: field tga: unknown field (did you mean 'tag'?)" },
      { "{ path = '/x', handler = h, plugins = { alpha = { tag = 5 } } }",
        "plugin alpha: field tag: expected a string, got 5" },
      { "{ path = '/x', handler = h, plugins = { alpha = 'on' } }",
        "plugin alpha: expected a table, got 'on'" },
      { "{ path = '/x', handler = h, plugins = { wsonly = {} } }",
        "plugin wsonly: applies to WebSocket routes in relay or handler mode only" },
      { "{ path = '/x', handler = h, plugins = { cors = { max_age = -1 } } }",
        "plugin cors: field max_age: must be at least 0, got -1" },
      { "{ path = '/x', handler = h, plugins = { ['rate-limit'] = { rate = 1 } } }",
        "plugin rate-limit: field dict: no shared dictionary 'rate_limit'" },
    }
    for _, c in ipairs(route_cases) do
      it("refuses the generation: " .. c[2], function()
        local gen, err, dir = load(nil, table.concat({
          "local function h() end",
          "return {",
          "  { path = '/ok', handler = h },",
          "  " .. c[1] .. ",",
          "}",
        }, "\n"), FILES)
        assert.is_nil(gen)
        assert.equal(dir .. "/scripts/routes.lua:4: " .. c[2], err:sub(1, #dir + 23 + #c[2]))
      end)
    end

    it("places a bad global plugin at its conf entry", function()
      local gen, err, dir = load(table.concat({
        "return {",
        "  listen = '127.0.0.1:8080',",
        "  plugins = {",
        "    alpha = {},",
        "    ['jwt-auth'] = { algorithm = 'HS512' },",
        "  },",
        "}",
      }, "\n"), nil, FILES)
      assert.is_nil(gen)
      assert.equal(dir .. "/conf/moongate.lua:5: plugin jwt-auth: field algorithm: expected one of "
                   .. "'HS256', 'RS256', 'ES256', got 'HS512'", err)
    end)

    it("places an error inside a plugin file there, naming where it was enabled", function()
      local gen, err, dir = load(nil, [[
return { { path = "/x", handler = function() end, plugins = { boom = {} } } }]],
        { ["plugins/boom.lua"] = "local x = 1\nerror('no good')\n" })
      assert.is_nil(gen)
      assert.equal(fmt("%s/plugins/boom.lua:2: no good (plugin boom, enabled at %s/scripts/routes.lua:1)",
                       dir, dir), err)
    end)

    it("accepts shared_dicts and a rate-limit that names one", function()
      local gen = assert(load([[return { shared_dicts = { rate_limit = 65536 } }]], [[
return { { path = "/x", handler = function() end, plugins = { ["rate-limit"] = { rate = 5 } } } }]]))
      assert.same({ "rate-limit" }, gen.routes[1].plugin_names)
      assert.same({ { name = "rate_limit", size = 65536 } }, gen.conf.shared_dicts)
    end)
  end)
end)
