-- Unit specs for route groups (lib/moongate/routes.lua, docs/configuration.md
-- "Route groups"): rules that must lie under the group's prefix, nesting, inherited
-- hooks, plugins and defaults, the refusal of a group that does not say how
-- it is protected, errors at the route's file:line, match order unchanged,
-- and where a group's access hooks run among the plugins
-- (moongate.plugins.compose). `moongate` is stubbed: nothing here runs the
-- binary.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit/groups_spec.lua

local ph = require "spec.plugin_helpers"
ph.stub_moongate()

local loader = require "moongate.loader"

local CONF = [[
return { upstreams = { up = { servers = "http://127.0.0.1:1" }, other = { servers = "http://127.0.0.1:2" } } }
]]

-- Hooks that record their name into req.ctx.trace, defined in the routes file.
local PRELUDE = [[
local function hook(name)
  return function(req) req.ctx.trace = req.ctx.trace or {}; req.ctx.trace[#req.ctx.trace + 1] = name end
end
local auth, admin, own = hook("auth"), hook("admin"), hook("own")
local authmod = { access = auth }
local function h() end
]]

local function load(routes, files, conf)
  local dir = ph.project("unitgroups", conf or CONF, PRELUDE .. routes, files)
  local gen, err = loader.load(dir .. "/conf/moongate.lua", { env = {} })
  return gen, err, dir
end

local function by_rule(gen)
  local out = {}
  for _, r in ipairs(gen.routes) do
    out[r.kind .. " " .. r.rule] = r
  end
  return out
end

local function trace(r)
  local ctx = {}
  for _, f in ipairs(r.access or {}) do f({ ctx = ctx }) end
  return ctx.trace or {}
end

-- A plugin recording its access phase, with the given PRIORITY.
local function tracer(name, priority)
  return string.format([[
return { VERSION = "1.0.0", PRIORITY = %d,
  access = function(conf, req, ctx) ctx.trace = ctx.trace or {}; ctx.trace[#ctx.trace + 1] = %q end }
]], priority, name)
end


describe("route groups", function()

  it("holds routes written in full under its prefix, the prefix itself included; groups nest", function()
    local gen = assert(load([[
return {
  { prefix = "/api", access = auth, routes = {
    { path = "/api/session", handler = h },
    { path = "/api", handler = h },
    { prefix = "/api", handler = h },
    { prefix = "/api/admin", access = admin, routes = {
      { path = "/api/admin/status", handler = h },
      { prefix = "/api/admin", handler = h },
    } },
  } },
  { prefix = "/", public = true, routes = { { path = "/page", handler = h }, { path = "/", handler = h } } },
}]]))
    local r = by_rule(gen)
    for _, key in ipairs({ "exact /api/session", "exact /api", "prefix /api",
                           "exact /api/admin/status", "prefix /api/admin", "exact /page", "exact /" }) do
      assert.truthy(r[key], key)
    end
    assert.equal(7, #gen.routes)
    assert.same({ "auth" }, trace(r["exact /api/session"]))
    assert.same({ "auth", "admin" }, trace(r["exact /api/admin/status"]))
    assert.same({}, trace(r["exact /page"]))
  end)

  it("runs the groups' hooks before the route's own, which cannot drop them", function()
    local gen = assert(load([[
return {
  { prefix = "/api", access = auth, header_filter = auth, log = { auth }, routes = {
    { prefix = "/api/admin", access = { admin }, routes = {
      { path = "/api/admin/x", handler = h, access = own, header_filter = own, log = own },
      { path = "/api/admin/y", handler = h, access = {} },
    } },
  } },
}]]))
    local r = by_rule(gen)
    assert.same({ "auth", "admin", "own" }, trace(r["exact /api/admin/x"]))
    assert.same({ "auth", "admin" }, trace(r["exact /api/admin/y"]))
    assert.equal(2, #r["exact /api/admin/x"].header_filter)
    assert.equal(2, #r["exact /api/admin/x"].log)
    assert.is_nil(r["exact /api/admin/x"].group_access)
  end)

  it("passes its defaults down; a route's own value wins", function()
    local gen = assert(load([[
return {
  { prefix = "/api", access = auth, upstream = "up", strip_prefix = true, host = "Example.com",
    method = "GET", body_size = 10, on_reload = "drain", timeouts = { read = 5, idle = 9 },
    websocket = { heartbeat = { interval = 7 }, max_message = 100 },
    routes = {
      { prefix = "/api/a" },
      { prefix = "/api/b", upstream = "other", host = "b.example", method = { "POST" }, body_size = 1,
        on_reload = "keep", timeouts = { read = 1 } },
      { path = "/api/c", handler = h },
      { path = "/api/ws", websocket = { heartbeat = { timeout = 2 } } },
      { path = "/api/ws2", websocket = { heartbeat = false, max_message = 5 } },
      { prefix = "/api/in", access = admin, websocket = { max_message = 50 }, timeouts = { write = 3 },
        routes = { { prefix = "/api/in/d" }, { path = "/api/in/ws", websocket = {} } } },
    } },
}]]))
    local r = by_rule(gen)
    local a = r["prefix /api/a"]
    assert.equal("up", a.upstream)
    assert.is_true(a.strip_prefix)
    assert.equal("example.com", a.host)
    assert.same({ "GET" }, a.methods)
    assert.equal(10, a.body_size)
    assert.equal("drain", a.on_reload)
    assert.same({ read = 5, idle = 9 }, a.timeouts)
    assert.is_nil(a.websocket)

    local b = r["prefix /api/b"]
    assert.equal("other", b.upstream)
    assert.is_false(b.strip_prefix)      -- strip_prefix comes with the group's upstream
    assert.equal("b.example", b.host)
    assert.same({ "POST" }, b.methods)
    assert.equal(1, b.body_size)
    assert.equal("keep", b.on_reload)
    assert.same({ read = 1, idle = 9 }, b.timeouts)

    local c = r["exact /api/c"]
    assert.is_nil(c.upstream)            -- a handler route keeps its own target
    assert.is_function(c.handler)

    local ws = r["exact /api/ws"].websocket
    assert.same({ interval = 7, message = true, ping_frames = false, timeout = 2 }, ws.heartbeat)
    assert.equal(100, ws.max_message)
    local ws2 = r["exact /api/ws2"].websocket
    assert.equal(0, ws2.heartbeat.interval)
    assert.equal(5, ws2.max_message)

    local d = r["prefix /api/in/d"]
    assert.equal("up", d.upstream)
    assert.same({ "auth", "admin" }, trace(d))
    assert.same({ read = 5, write = 3, idle = 9 }, d.timeouts)
    local inner = r["exact /api/in/ws"].websocket  -- nested groups merge key by key too
    assert.equal(7, inner.heartbeat.interval)
    assert.equal(50, inner.max_message)
    assert.equal("tunnel", inner.mode)
  end)

  describe("protection", function()
    it("refuses a group with no access hooks, no authentication plugin and no public = true", function()
      for _, g in ipairs({
        "access = authmod.acces",                       -- a typo: nil
        "access = {}",
        'plugins = { ["jwt-auth"] = false }',
        'plugins = { cors = {} }',
      }) do
        local gen, err, dir = load(string.format([[
return {
  { path = "/ok", handler = h },
  { prefix = "/api", %s,
    routes = { { path = "/api/a", handler = h } } },
}]], g), { ["plugins/cors.lua"] = tracer("cors", 4000) })
        assert.is_nil(gen, g)
        assert.equal(dir .. "/scripts/routes.lua:9: group #1 (/api): no protection: give it access hooks,"
                     .. " an authentication plugin (forward-auth, jwt-auth, key-auth) or public = true",
                     err, g)
      end
    end)

    it("accepts access hooks, an authentication plugin, public = true, or an enclosing protected group", function()
      assert(load([[
return {
  { prefix = "/a", access = auth, routes = { { prefix = "/a/in", routes = { { path = "/a/in/x", handler = h } } } } },
  { prefix = "/b", public = true, routes = { { path = "/b/x", handler = h } } },
  { prefix = "/c", plugins = { ["key-auth"] = { keys = { "k" } } }, routes = { { path = "/c/x", handler = h } } },
  { routes = { { path = "/d", handler = h } }, public = true },
}]]))
    end)

    it("asks a group inside a public one to say so again", function()
      local gen, err, dir = load([[
return {
  { prefix = "/pub", public = true, routes = {
    { prefix = "/pub/in", access = authmod.nope, routes = { { path = "/pub/in/x", handler = h } } },
  } },
}]])
      assert.is_nil(gen)
      assert.equal(dir .. "/scripts/routes.lua:9: group #2 (/pub/in): no protection: give it access hooks,"
                   .. " an authentication plugin (forward-auth, jwt-auth, key-auth) or public = true", err)
    end)

    it("refuses public = true where the group is protected anyway", function()
      local _, err = load([[
return { { prefix = "/api", access = auth, routes = { { prefix = "/api/in", public = true, routes = {} } } } }]])
      assert.matches("group #2 %(/api/in%): public = true, but the group is protected %(by group #1 %(/api%)%)",
                     err)
      local _, err2 = load([[return { { prefix = "/api", access = auth, public = true, routes = {} } }]])
      assert.matches("group #1 %(/api%): public = true, but the group is protected", err2)
    end)
  end)

  describe("rules", function()
    it("refuses a rule outside the group's prefix", function()
      for _, rule in ipairs({ "/apix", "/", "/other/api", "api/x", "/ap" }) do
        local gen, err, dir = load(string.format([[
return {
  { prefix = "/api", access = auth, routes = {
    { path = "/api/ok", handler = h },
    { path = %q, handler = h },
  } },
}]], rule))
        assert.is_nil(gen)
        assert.equal(string.format("%s/scripts/routes.lua:10: route #2 (%s): path: '%s' is outside its"
                                   .. " group's prefix '/api'", dir, rule, rule), err)
      end
      local _, err = load([[
return { { prefix = "/api", access = auth, routes = { { prefix = "/web", routes = {} } } } }]])
      assert.matches(":7: group #2 %(/web%): prefix: '/web' is outside its group's prefix '/api'", err)
    end)

    it("refuses a group prefix that is not a rule or ends with '/'", function()
      local _, err = load([[return { { prefix = "/api/", access = auth, routes = {} } }]])
      assert.matches(":7: group #1 %(/api/%): prefix: must not end with '/'", err)
      local _, err2 = load([[return { { prefix = "api", access = auth, routes = {} } }]])
      assert.matches(":7: group #1 %(api%): prefix: must start with '/'", err2)
      local _, err3 = load([[
return { { prefix = "/{a}", access = auth, routes = { { path = "/{a}/{a}", handler = h } } } }]])
      assert.matches("route #1 %(/{a}/{a}%): path: duplicate parameter '{a}'", err3)
    end)
  end)

  describe("errors", function()
    it("names the route's own file:line, with its whole rule", function()
      local gen, err, dir = load([[
return {
  { prefix = "/api", access = auth, routes = {
    { path = "/api/a", handler = h },
    { path = "/api/b", handler = h, methdo = "GET" },
  } },
}]])
      assert.is_nil(gen)
      assert.equal(dir .. "/scripts/routes.lua:10: route #2 (/api/b): unknown field 'methdo'"
                   .. " (did you mean 'method'?)", err)
    end)

    it("checks the group's own fields with the route messages", function()
      local cases = {
        { 'acces = auth', "group #1 (/api): unknown field 'acces' (did you mean 'access'?)" },
        { 'access = auth, upstream = "uq"', "group #1 (/api): unknown upstream 'uq' (did you mean 'up'?)" },
        { 'access = auth, host = 1', "group #1 (/api): host: expected a string, got number" },
        { 'access = auth, path = "/x"', "group #1 (/api): unknown field 'path'" },
        { 'access = 1', "group #1 (/api): access: expected a function or a list of functions, got number" },
        { 'access = auth, public = "yes"', "group #1 (/api): public: expected a boolean, got string" },
      }
      for _, c in ipairs(cases) do
        local _, err, dir = load("return { { prefix = \"/api\", " .. c[1] .. ", routes = {} } }")
        assert.equal(dir .. "/scripts/routes.lua:7: " .. c[2], err)
      end
      local _, err = load([[return { { prefix = "/api", access = auth, routes = 5 } }]])
      assert.matches("group #1 %(/api%): routes: expected a list of routes and groups, got number", err)
      local _, err2 = load([[return { { prefix = "/api", access = auth, routes = { x = 1 } } }]])
      assert.matches("group #1 %(/api%): routes: expected a list, found key 'x'", err2)
    end)
  end)

  it("keeps the match order: a group sorts like the same routes written out", function()
    local grouped = assert(load([[
return {
  { prefix = "/api", access = auth, upstream = "up", routes = {
    { path = "/api/x/{id}", handler = h },
    { prefix = "/api/x", priority = 20 },
    { prefix = "/api" },
    { path = "/api/a", handler = h },
    { path = "/api/b", handler = h },
  } },
  { path = "/api/a", handler = h },
  { prefix = "/", handler = h },
}]]))
    local flat = assert(load([[
return {
  { path = "/api/x/{id}", handler = h, access = auth },
  { prefix = "/api/x", priority = 20, upstream = "up", access = auth },
  { prefix = "/api", upstream = "up", access = auth },
  { path = "/api/a", handler = h, access = auth },
  { path = "/api/b", handler = h, access = auth },
  { path = "/api/a", handler = h },
  { prefix = "/", handler = h },
}]]))
    assert.same(loader.describe(flat), loader.describe(grouped))
    for i, r in ipairs(grouped.routes) do
      assert.equal(flat.routes[i].index, r.index)
      assert.same(trace(flat.routes[i]), trace(r))
    end
  end)

  describe("plugins", function()
    local FILES = {
      ["plugins/early.lua"] = tracer("early", 3000),
      ["plugins/authn.lua"] = tracer("authn", 2500),
      ["plugins/late.lua"] = tracer("late", 1001),
    }

    it("applies the group's plugins to every route; a route may add others", function()
      local gen = assert(load([[
return {
  { prefix = "/api", access = auth, plugins = { late = {} }, routes = {
    { path = "/api/a", handler = h },
    { path = "/api/b", handler = h, plugins = { early = {} } },
  } },
}]], FILES))
      local r = by_rule(gen)
      assert.same({ "late" }, r["exact /api/a"].plugin_names)
      assert.same({ "early", "late" }, r["exact /api/b"].plugin_names)
    end)

    it("refuses a route that changes or turns off a plugin of its group", function()
      for _, p in ipairs({ "late = false", "late = { }" }) do
        local gen, err, dir = load(string.format([[
return {
  { prefix = "/api", access = auth, plugins = { late = {} }, routes = {
    { path = "/api/a", handler = h, plugins = { %s } },
  } },
}]], p), FILES)
        assert.is_nil(gen)
        assert.equal(dir .. "/scripts/routes.lua:9: route #1 (/api/a): plugins: 'late' is set by"
                     .. " group #1 (/api); a route or group inside cannot change or turn it off", err)
      end
    end)

    it("runs a group's access hooks with authentication: after plugins of PRIORITY >= 2000,"
       .. " before the others and the route's own hooks", function()
      local gen = assert(load([[
return {
  { prefix = "/api", access = auth, routes = {
    { path = "/api/a", handler = h, access = own, plugins = { early = {}, authn = {}, late = {} } },
  } },
  { path = "/flat", handler = h, access = { auth, own }, plugins = { early = {}, authn = {}, late = {} } },
}]], FILES))
      local r = by_rule(gen)
      assert.same({ "early", "authn", "auth", "late", "own" }, trace(r["exact /api/a"]))
      -- outside a group every hook is the route's own: after every plugin, as before
      assert.same({ "early", "authn", "late", "auth", "own" }, trace(r["exact /flat"]))
      assert.is_nil(r["exact /api/a"].group_access)
    end)
  end)
end)
