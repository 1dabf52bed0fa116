-- Unit specs for lib/moongate/loader.lua: conf and routes files are written
-- to a temporary project tree, loaded, and the normalized generation (or
-- the "file:line: reason" error) is checked.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit

local loader = require "moongate.loader"
local pl_dir = require "pl.dir"
local pl_path = require "pl.path"

local tmp_root      -- one directory for the whole file, removed in teardown
local seq = 0       -- each project gets its own subdirectory


-- Writes `text` to `path`, creating directories as needed.
local function write(path, text)
  assert(pl_dir.makepath(pl_path.dirname(path)))
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end


-- A fresh project: <dir>/conf/moongate.lua and <dir>/scripts/routes.lua.
-- Returns the conf path and the directory.
local function project(conf, routes)
  seq = seq + 1
  local dir = tmp_root .. "/p" .. seq
  local conf_path = write(dir .. "/conf/moongate.lua", conf or "return {}\n")
  write(dir .. "/scripts/routes.lua", routes or "return {}\n")
  return conf_path, dir
end


-- Loads a project with an empty environment unless one is given.
local function load(conf, routes, opts)
  local conf_path, dir = project(conf, routes)
  opts = opts or {}
  for name, text in pairs(opts.files or {}) do
    write(dir .. "/" .. name, text)
  end
  opts.files = nil
  if opts.env == nil then
    opts.env = {}
  end
  local gen, err = loader.load(conf_path, opts)
  return gen, err, dir
end


-- Routes with a conf that defines upstreams `runtime` and `agent`.
local UPSTREAMS_CONF = [[
return {
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:9001" } },
    agent = { servers = { "http://127.0.0.1:9002" } },
  },
}
]]

local function load_routes(routes, opts)
  return load(UPSTREAMS_CONF, routes, opts)
end


-- Asserts that `err` is "<file>:<line>: ..." and contains `fragment`.
local function assert_err(err, file, line, fragment)
  assert.is_string(err)
  local prefix = file .. ":" .. line .. ": "
  assert.equal(prefix, err:sub(1, #prefix), "unexpected position in: " .. err)
  if fragment then
    assert.truthy(err:find(fragment, 1, true),
                  "expected '" .. fragment .. "' in: " .. err)
  end
end


describe("moongate.loader", function()
  local saved_path

  setup(function()
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    assert(pl_dir.makepath(tmp_root))
  end)

  teardown(function()
    if tmp_root and pl_path.isdir(tmp_root) then
      pl_dir.rmtree(tmp_root)
    end
  end)

  before_each(function()
    saved_path = package.path
  end)

  after_each(function()
    package.path = saved_path
  end)


  describe("conf defaults", function()
    it("fills every field of an empty conf", function()
      local gen, err, dir = load("return {}", "return {}", { ncpu = 8 })
      assert.is_nil(err)
      local conf = gen.conf
      assert.same({ { host = "127.0.0.1", port = 8080 } }, conf.listen)
      assert.equal(8, conf.workers)
      assert.equal(dir, conf.root)
      assert.equal(dir .. "/conf/moongate.lua", conf.conf_file)
      assert.equal(dir .. "/scripts/routes.lua", conf.routes_file)
      assert.same({ dir .. "/scripts", dir .. "/lib" }, conf.lua_path)
      assert.is_true(conf.access_log)
      assert.equal("info", conf.log_level)
      assert.same({ read = 0, write = 0, idle = 3600, header = 30, drain = 10, body = 60 },
                  conf.timeouts)
      assert.same({ header_size = 16384, header_count = 100, body_size = 1048576,
                    websockets = 10000, h2_streams = 128 }, conf.limits)
      assert.same({}, conf.upstreams)
      assert.same({}, gen.routes)
    end)

    it("resolves workers = auto to 1 without ncpu", function()
      local gen = assert(load("return { workers = 'auto' }"))
      assert.equal(1, gen.conf.workers)
    end)

    it("fills partial groups field by field", function()
      local gen = assert(load([[
return {
  timeouts = { idle = 60 },
  limits = { body_size = 0 },
  access_log = false,
  log_level = "debug",
}
]]))
      assert.same({ read = 0, write = 0, idle = 60, header = 30, drain = 10, body = 60 },
                  gen.conf.timeouts)
      assert.same({ header_size = 16384, header_count = 100, body_size = 0, websockets = 10000,
                    h2_streams = 128 }, gen.conf.limits)
      assert.is_false(gen.conf.access_log)
      assert.equal("debug", gen.conf.log_level)
    end)
  end)


  describe("root directory", function()
    it("is the conf file's directory when it is not named conf", function()
      seq = seq + 1
      local dir = tmp_root .. "/flat" .. seq
      local conf_path = write(dir .. "/moongate.lua", "return { routes = 'r.lua' }")
      write(dir .. "/r.lua", "return {}")
      local gen = assert(loader.load(conf_path, { env = {} }))
      assert.equal(dir, gen.conf.root)
      assert.equal(dir .. "/r.lua", gen.conf.routes_file)
    end)

    it("keeps absolute routes and lua_path entries", function()
      seq = seq + 1
      local other = tmp_root .. "/abs" .. seq
      write(other .. "/routes.lua", "return {}")
      local gen = assert(load(([[
return { routes = %q, lua_path = { %q, "mods" } }
]]):format(other .. "/routes.lua", other)))
      assert.equal(other .. "/routes.lua", gen.conf.routes_file)
      assert.same({ other, gen.conf.root .. "/mods" }, gen.conf.lua_path)
    end)

    it("keeps relative paths as given, without './'", function()
      -- the spec runs from the repository root; the shipped scripts need
      -- the binary's moongate.core, stubbed here
      package.preload["moongate.core"] = function()
        return setmetatable({ version = "test" }, { __index = function() return function() end end })
      end
      local gen = assert(loader.load("conf/moongate.lua", { env = {} }))
      package.preload["moongate.core"] = nil
      assert.equal(".", gen.conf.root)
      assert.equal("scripts/routes.lua", gen.conf.routes_file)
      assert.same({ "scripts", "lib" }, gen.conf.lua_path)
    end)
  end)


  describe("lua_path", function()
    it("prepends ?.lua and ?/init.lua for each entry, in order", function()
      local gen = assert(load("return { lua_path = { 'a', 'b' } }"))
      local root = gen.conf.root
      local expect = table.concat({
        root .. "/a/?.lua", root .. "/a/?/init.lua",
        root .. "/b/?.lua", root .. "/b/?/init.lua",
      }, ";") .. ";"
      assert.equal(expect, package.path:sub(1, #expect))
    end)

    it("accepts a single string", function()
      local gen = assert(load("return { lua_path = 'only' }"))
      assert.same({ gen.conf.root .. "/only" }, gen.conf.lua_path)
    end)

    it("does not grow package.path across repeated loads", function()
      local conf_path = project("return {}")
      assert(loader.load(conf_path, { env = {} }))
      local once = package.path
      for _ = 1, 3 do
        assert(loader.load(conf_path, { env = {} }))
      end
      assert.equal(once, package.path)
    end)

    it("lets routes.lua require modules from scripts/", function()
      local conf_path, dir = project(nil, [[
local helper = require "loader_spec_helper_a"
return { { path = "/", handler = helper.handler } }
]])
      write(dir .. "/scripts/loader_spec_helper_a.lua",
            "return { handler = function() return 200, 'hi' end }")
      local gen, err = loader.load(conf_path, { env = {} })
      assert.is_nil(err)
      assert.equal(200, (gen.routes[1].handler()))
      package.loaded.loader_spec_helper_a = nil
    end)

    it("rejects an empty entry", function()
      local gen, err, dir = load("return {\n  lua_path = { 'a', '' },\n}")
      assert.is_nil(gen)
      assert_err(err, dir .. "/conf/moongate.lua", 2, "lua_path: item #2 must not be empty")
    end)
  end)


  describe("conf errors", function()
    it("rejects an unknown top-level field with its line", function()
      local gen, err, dir = load([[
return {
  workers = 2,
  lisen = "0.0.0.0:80",
}
]])
      assert.is_nil(gen)
      assert_err(err, dir .. "/conf/moongate.lua", 3, "unknown field 'lisen'")
      assert.truthy(err:find("did you mean 'listen'", 1, true))
    end)

    it("falls back to line 1 when the field name is not in the text", function()
      local _, err, dir = load("local t = {}\nt['bo' .. 'gus'] = 1\nreturn t\n")
      assert_err(err, dir .. "/conf/moongate.lua", 1, "unknown field 'bogus'")
    end)

    it("rejects unknown nested fields", function()
      local _, err, dir = load([[
return {
  timeouts = {
    reed = 5,
  },
}
]])
      assert_err(err, dir .. "/conf/moongate.lua", 3,
                 "timeouts: unknown field 'reed' (did you mean 'read'?)")
    end)

    it("reports a syntax error with the file's own position", function()
      local _, err, dir = load("return {\n  listen = ,\n}\n")
      assert_err(err, dir .. "/conf/moongate.lua", 2)
    end)

    it("reports a runtime error with the file's own position", function()
      local _, err, dir = load("local x = nil\nreturn { workers = x.y }\n")
      assert_err(err, dir .. "/conf/moongate.lua", 2, "attempt to index")
    end)

    it("rejects a conf that does not return a table", function()
      local _, err, dir = load("local x = 1\nreturn x\n")
      assert_err(err, dir .. "/conf/moongate.lua", 2,
                 "conf file must return a table, got number")
    end)

    it("reports a missing conf file at line 0", function()
      local path = tmp_root .. "/nowhere/moongate.lua"
      local gen, err = loader.load(path, { env = {} })
      assert.is_nil(gen)
      assert_err(err, path, 0, "cannot open file: No such file or directory")
    end)

    it("raises on a non-string path (misuse)", function()
      assert.has_error(function() loader.load(nil) end)
      assert.has_error(function() loader.load("x", { env = "nope" }) end)
    end)

    local cases = {
      { "listen = 'localhost'", 'listen: \'localhost\': expected "host:port"' },
      { "listen = '1.2.3.4:0'", "port 0 out of range" },
      { "listen = '1.2.3.4:65536'", "port 65536 out of range" },
      { "listen = 'a b:80'", "bad host 'a b'" },
      { "listen = {}", "listen: at least one address is required" },
      { "listen = { ':80', '0.0.0.0:80' }", "'0.0.0.0:80' is listed twice" },
      { "listen = 8080", "listen: expected a string or a list of strings, got number" },
      { "workers = -1", "workers: expected a non-negative integer or \"auto\", got -1" },
      { "workers = 1.5", "got 1.5" },
      { "workers = 'many'", "got 'many'" },
      { "workers = 5000", "workers: 5000 is too many" },
      { "timeouts = { read = -1 }", "timeouts.read: expected a non-negative number, got -1" },
      { "timeouts = { idle = 'x' }", "timeouts.idle: expected a non-negative number, got 'x'" },
      { "timeouts = { body = -1 }", "timeouts.body: expected a non-negative number, got -1" },
      { "timeouts = { idle = 0/0 }", "timeouts.idle: expected a non-negative number" },
      { "timeouts = { idle = math.huge }", "timeouts.idle: expected a non-negative number" },
      { "timeouts = 5", "timeouts: expected a table, got number" },
      { "limits = { header_count = 1.5 }",
        "limits.header_count: expected a non-negative integer, got 1.5" },
      { "limits = { body_size = -1 }", "limits.body_size: expected a non-negative integer" },
      { "log_level = 'verbose'", "log_level: expected one of debug, info, warn, error" },
      { "access_log = 'yes'", "access_log: expected a boolean, got string" },
      { "routes = 5", "routes: expected a string, got number" },
      { "lua_path = { 1 }", "lua_path: item #1: expected a string, got number" },
      { "upstreams = 'x'", "upstreams: expected a table, got string" },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case[1], function()
        local gen, err, dir = load("return {\n  " .. case[1] .. ",\n}\n")
        assert.is_nil(gen)
        assert_err(err, dir .. "/conf/moongate.lua", 2, case[2])
      end)
    end
  end)


  describe("listen", function()
    it("normalizes every accepted form", function()
      local gen = assert(load([[
return { listen = { "127.0.0.1:8080", ":8081", "[::1]:8082", "[::]:8083", "example.com:80" } }
]]))
      assert.same({
        { host = "127.0.0.1", port = 8080 },
        { host = "0.0.0.0", port = 8081 },
        { host = "::1", port = 8082 },
        { host = "::", port = 8083 },
        { host = "example.com", port = 80 },
      }, gen.conf.listen)
    end)

    it("points at the offending string", function()
      local _, err, dir = load([[
return {
  listen = {
    "127.0.0.1:8080",
    "127.0.0.1:99999",
  },
}
]])
      assert_err(err, dir .. "/conf/moongate.lua", 4, "'127.0.0.1:99999': port 99999")
    end)
  end)


  describe("workers", function()
    it("keeps a number", function()
      assert.equal(3, assert(load("return { workers = 3 }", nil, { ncpu = 8 })).conf.workers)
    end)

    it("treats 0 and 'auto' as one per core", function()
      assert.equal(6, assert(load("return { workers = 0 }", nil, { ncpu = 6 })).conf.workers)
      assert.equal(6, assert(load("return { workers = 'auto' }", nil, { ncpu = 6 })).conf.workers)
    end)

    it("ignores a nonsensical ncpu", function()
      assert.equal(1, assert(load("return {}", nil, { ncpu = -2 })).conf.workers)
    end)
  end)


  describe("upstreams", function()
    it("returns an array sorted by name with defaults", function()
      local gen = assert(load([[
return {
  upstreams = {
    zeta = { servers = { "http://10.0.0.2:81" } },
    alpha = { servers = "http://Example.COM:9000/", keepalive = 0, connect_timeout = 0.5,
              response_timeout = 120, max_fails = 0, fail_timeout = 1 },
  },
}
]]))
      assert.same({
        {
          name = "alpha",
          servers = { { host = "example.com", port = 9000, url = "http://example.com:9000" } },
          keepalive = 0, connect_timeout = 0.5, response_timeout = 120, body_timeout = 60,
          max_fails = 0, fail_timeout = 1,
        },
        {
          name = "zeta",
          servers = { { host = "10.0.0.2", port = 81, url = "http://10.0.0.2:81" } },
          keepalive = 64, connect_timeout = 5, response_timeout = 60, body_timeout = 60,
          max_fails = 3, fail_timeout = 10,
        },
      }, gen.conf.upstreams)
    end)

    it("accepts several servers, IPv6 and a missing port (80)", function()
      local gen = assert(load([[
return { upstreams = { a = { servers = { "http://h1", "http://[::1]:9001", "HTTP://h2:82/" } } } }
]]))
      assert.same({
        { host = "h1", port = 80, url = "http://h1:80" },
        { host = "::1", port = 9001, url = "http://[::1]:9001" },
        { host = "h2", port = 82, url = "http://h2:82" },
      }, gen.conf.upstreams[1].servers)
    end)

    it("takes https:// and wss:// servers (tls = true, port 443 by default) and ws://", function()
      local gen = assert(load([[
return { upstreams = { a = { servers = { "https://h1", "HTTPS://h2:8443/" } },
                       w = { servers = { "wss://h3" } }, p = { servers = { "ws://h4" } } } }
]]))
      local ups = {}
      for _, u in ipairs(gen.conf.upstreams) do ups[u.name] = u end
      assert.same({
        { host = "h1", port = 443, tls = true, url = "https://h1:443" },
        { host = "h2", port = 8443, tls = true, url = "https://h2:8443" },
      }, ups.a.servers)
      assert.same({ verify = true }, ups.a.tls)
      assert.same({ { host = "h3", port = 443, tls = true, url = "https://h3:443" } }, ups.w.servers)
      assert.same({ { host = "h4", port = 80, url = "http://h4:80" } }, ups.p.servers)
      assert.is_nil(ups.p.tls)
    end)

    it("reads an upstream's tls files, relative to the project root", function()
      local gen, err, dir = load([[
return { upstreams = { a = { servers = { "https://h1" },
  tls = { ca = "conf/ca.pem", server_name = "api.internal", verify = true } } } }
]], nil, { files = { ["conf/ca.pem"] = "PEM BYTES" } })
      assert.truthy(gen, err)
      local t = gen.conf.upstreams[1].tls
      assert.equal(dir .. "/conf/ca.pem", t.ca)
      assert.equal("PEM BYTES", t.ca_pem)
      assert.equal("api.internal", t.server_name)
      assert.is_true(t.verify)
    end)

    it("refuses a missing tls file with file: reason", function()
      local gen, err, dir = load([[
return { upstreams = { a = { servers = { "https://h1" }, tls = { ca = "conf/nope.pem" } } } }
]])
      assert.is_nil(gen)
      assert_err(err, dir .. "/conf/nope.pem", 0, "cannot open file: No such file or directory")
    end)

    it("needs both cert and key for a client certificate", function()
      local gen, err, dir = load([[
return { upstreams = { a = { servers = { "https://h1" }, tls = { cert = "conf/c.pem" } } } }
]], nil, { files = { ["conf/c.pem"] = "x" } })
      assert.is_nil(gen)
      assert_err(err, dir .. "/conf/moongate.lua", 1,
        "upstreams.a.tls: a client certificate needs both cert and key")
    end)

    local cases = {
      { "a = { servers = { 'http://h:1', 'https://h:2' } }",
        "upstreams.a.servers: mixes http:// and https:// servers" },
      { "a = { servers = { 'http://h:1' }, tls = { verify = false } }",
        "upstreams.a.tls: applies to https:// and wss:// servers only" },
      { "a = { servers = { 'https://h:1' }, tls = { verify = 'no' } }",
        "upstreams.a.tls.verify: expected a boolean, got string" },
      { "a = { servers = { 'https://h:1' }, tls = { verfy = false } }",
        "upstreams.a.tls: unknown field 'verfy' (did you mean 'verify'?)" },
      { "a = { servers = { 'https://h:1' }, tls = { server_name = 'a b' } }",
        "upstreams.a.tls.server_name: expected a host name, got 'a b'" },
      { "a = { servers = { 'http://h:80/api' } }", "must not have a path or query" },
      { "a = { servers = { 'http://h:80?x' } }", "must not have a path or query" },
      { "a = { servers = { 'http://u@h:80' } }", "must not have user info" },
      { "a = { servers = { 'ftp://h:21' } }", "unsupported scheme 'ftp'" },
      { "a = { servers = { 'h:80' } }", 'expected "http://host:port"' },
      { "a = { servers = { 'http://h:0' } }", "out of range" },
      { "a = { servers = { 'http://:80' } }", "missing host" },
      { "a = { servers = {} }", "upstreams.a.servers: at least one server is required" },
      { "a = { keepalive = 1 }", "upstreams.a.servers: required" },
      { "a = { servers = { 'http://h:1' }, keepalive = -1 }",
        "upstreams.a.keepalive: expected a non-negative integer" },
      { "a = { servers = { 'http://h:1' }, max_fails = 2.5 }",
        "upstreams.a.max_fails: expected a non-negative integer" },
      { "a = { servers = { 'http://h:1' }, connect_timeout = 'x' }",
        "upstreams.a.connect_timeout: expected a non-negative number" },
      { "a = { servers = { 'http://h:1' }, keepalve = 1 }",
        "upstreams.a: unknown field 'keepalve' (did you mean 'keepalive'?)" },
      { "a = 'http://h:1'", "upstreams.a: expected a table, got string" },
      { "['a b'] = { servers = { 'http://h:1' } }", "bad upstream name 'a b'" },
      { "{ servers = { 'http://h:1' } }", "bad upstream name [1]" },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case[1], function()
        local gen, err, dir = load("return {\n  upstreams = { " .. case[1] .. " },\n}\n")
        assert.is_nil(gen)
        assert_err(err, dir .. "/conf/moongate.lua", 2, case[2])
      end)
    end

    it("points at the offending server", function()
      local _, err, dir = load([[
return {
  upstreams = {
    a = {
      keepalive = 1,
      servers = {
        "http://ok:1",
        "ftp://bad:2",
      },
    },
  },
}
]])
      assert_err(err, dir .. "/conf/moongate.lua", 7, "upstreams.a.servers: 'ftp://bad:2'")
    end)
  end)


  describe("environment overrides", function()
    local conf = [[
return {
  listen = "127.0.0.1:8080",
  workers = 2,
  upstreams = { runtime = { servers = { "http://127.0.0.1:9001" }, keepalive = 8 } },
}
]]

    it("MOONGATE_LISTEN replaces listen, comma-separated", function()
      local gen = assert(load(conf, nil, { env = { MOONGATE_LISTEN = "0.0.0.0:80, [::]:81" } }))
      assert.same({ { host = "0.0.0.0", port = 80 }, { host = "::", port = 81 } },
                  gen.conf.listen)
    end)

    it("MOONGATE_WORKERS replaces workers", function()
      assert.equal(4, assert(load(conf, nil, { env = { MOONGATE_WORKERS = "4" } })).conf.workers)
      assert.equal(5, assert(load(conf, nil, { ncpu = 5, env = { MOONGATE_WORKERS = "auto" } }))
                        .conf.workers)
    end)

    it("MOONGATE_UPSTREAM_<NAME> replaces servers and keeps other settings", function()
      local gen = assert(load(conf, nil, { env = {
        MOONGATE_UPSTREAM_RUNTIME = "http://runtime:9001,http://runtime2:9001",
      } }))
      local up = gen.conf.upstreams[1]
      assert.equal("runtime", up.name)
      assert.equal(8, up.keepalive)
      assert.same({
        { host = "runtime", port = 9001, url = "http://runtime:9001" },
        { host = "runtime2", port = 9001, url = "http://runtime2:9001" },
      }, up.servers)
    end)

    it("MOONGATE_UPSTREAM_<NAME> creates a missing upstream, name lowercased", function()
      local gen = assert(load(conf, [[
return { { prefix = "/agent", upstream = "agent_chat" } }
]], { env = { MOONGATE_UPSTREAM_AGENT_CHAT = "http://agent:7000" } }))
      assert.equal(2, #gen.conf.upstreams)
      local up = gen.conf.upstreams[1]
      assert.equal("agent_chat", up.name)
      assert.same({ { host = "agent", port = 7000, url = "http://agent:7000" } }, up.servers)
      assert.equal(64, up.keepalive)
      assert.equal("agent_chat", gen.routes[1].upstream)
    end)

    it("ignores empty values", function()
      local gen = assert(load(conf, nil, { env = {
        MOONGATE_LISTEN = "", MOONGATE_WORKERS = "", MOONGATE_UPSTREAM_X = "",
      } }))
      assert.equal(2, gen.conf.workers)
      assert.equal(1, #gen.conf.upstreams)
      assert.equal(8080, gen.conf.listen[1].port)
    end)

    it("takes https:// from MOONGATE_UPSTREAM_<NAME>, verified against the system store", function()
      local gen = assert(load(conf, nil, { env = { MOONGATE_UPSTREAM_EDGE = "https://e:8443" } }))
      local ups = {}
      for _, u in ipairs(gen.conf.upstreams) do ups[u.name] = u end
      assert.same({ { host = "e", port = 8443, tls = true, url = "https://e:8443" } },
                  ups.edge.servers)
      assert.same({ verify = true }, ups.edge.tls)
    end)

    local cases = {
      { "MOONGATE_WORKERS", "x", 'MOONGATE_WORKERS: expected a non-negative integer or "auto"' },
      { "MOONGATE_WORKERS", "-3", "MOONGATE_WORKERS: expected" },
      { "MOONGATE_LISTEN", "0.0.0.0:80,", "MOONGATE_LISTEN: '': expected \"host:port\"" },
      { "MOONGATE_LISTEN", "nope", "MOONGATE_LISTEN: 'nope'" },
      { "MOONGATE_UPSTREAM_RUNTIME", "ftp://x:1", "unsupported scheme 'ftp'" },
      { "MOONGATE_UPSTREAM_NEW", "http://x:1/p", "MOONGATE_UPSTREAM_NEW: 'http://x:1/p'" },
      { "MOONGATE_UPSTREAM_", "http://x:1", "MOONGATE_UPSTREAM_: bad upstream name ''" },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case[1] .. "=" .. case[2], function()
        local gen, err = load(conf, nil, { env = { [case[1]] = case[2] } })
        assert.is_nil(gen)
        assert_err(err, "env", 0, case[3])
      end)
    end

    it("reads the process environment when opts.env is absent", function()
      local ok, ffi = pcall(require, "ffi")
      if not ok then
        pending("needs LuaJIT's FFI to set variables")
        return
      end
      pcall(ffi.cdef, [[
        int setenv(const char *name, const char *value, int overwrite);
        int unsetenv(const char *name);
      ]])
      ffi.C.setenv("MOONGATE_WORKERS", "7", 1)
      ffi.C.setenv("MOONGATE_UPSTREAM_FROMENV", "http://e:1", 1)
      local conf_path = project(conf)
      local gen, err = loader.load(conf_path)
      ffi.C.unsetenv("MOONGATE_WORKERS")
      ffi.C.unsetenv("MOONGATE_UPSTREAM_FROMENV")
      assert.is_nil(err)
      assert.equal(7, gen.conf.workers)
      assert.equal("fromenv", gen.conf.upstreams[1].name)
    end)
  end)


  describe("routes", function()
    it("normalizes a full route", function()
      local function h() end
      _G.loader_spec_handler = h
      local gen, err, dir = load_routes([[
local h = loader_spec_handler
return {
  { path = "/api/execution/{id}/status", method = { "GET", "HEAD", "GET" },
    host = "Example.COM:8080", priority = 50, handler = h, body_size = 10,
    name = "status" },
}
]])
      _G.loader_spec_handler = nil
      assert.is_nil(err)
      assert.same({
        index = 1,
        rule = "/api/execution/{id}/status",
        kind = "exact",
        params = { "id" },
        methods = { "GET", "HEAD" },
        host = "example.com",
        priority = 50,
        handler = h,
        strip_prefix = false,
        body_size = 10,
        name = "status",
        file = dir .. "/scripts/routes.lua",
        line = 3,
      }, gen.routes[1])
    end)

    it("applies route defaults", function()
      local gen = assert(load_routes([[
return {
  { prefix = "/api/runtime", upstream = "runtime" },
}
]]))
      local r = gen.routes[1]
      assert.equal("prefix", r.kind)
      assert.equal(#"/api/runtime", r.priority)
      assert.equal(1048576, r.body_size)
      assert.is_false(r.strip_prefix)
      assert.is_nil(r.methods)
      assert.is_nil(r.host)
      assert.is_nil(r.name)
      assert.is_nil(r.handler)
      assert.equal("runtime", r.upstream)
      assert.same({}, r.params)
    end)

    it("uses limits.body_size as the default body_size", function()
      local gen = assert(load([[
return { limits = { body_size = 99 }, upstreams = { a = { servers = "http://h:1" } } }
]], "return { { path = '/x', upstream = 'a' } }"))
      assert.equal(99, gen.routes[1].body_size)
    end)

    it("accepts a single method string and strip_prefix on prefix upstream routes", function()
      local gen = assert(load_routes([[
return { { prefix = "/rt", method = "POST", upstream = "runtime", strip_prefix = true } }
]]))
      assert.same({ "POST" }, gen.routes[1].methods)
      assert.is_true(gen.routes[1].strip_prefix)
    end)

    it("keeps IPv6 hosts in brackets", function()
      local gen = assert(load_routes([[
return { { path = "/", host = "[::1]:8080", upstream = "runtime" } }
]]))
      assert.equal("[::1]", gen.routes[1].host)
    end)

    it("accepts '/' and a trailing slash", function()
      local gen = assert(load_routes([[
return {
  { prefix = "/", upstream = "runtime" },
  { path = "/api/", upstream = "runtime" },
  { path = "/{a}/{b_2}/x", upstream = "runtime" },
}
]]))
      assert.equal(3, #gen.routes)
      local by_rule = {}
      for _, r in ipairs(gen.routes) do by_rule[r.rule] = r end
      assert.same({ "a", "b_2" }, by_rule["/{a}/{b_2}/x"].params)
    end)

    it("normalizes websocket tables with their defaults", function()
      local gen = assert(load_routes([[
return {
  { path = "/ws", upstream = "agent", websocket = { mode = "relay", heartbeat = { interval = 5 } } },
  { path = "/h", websocket = {}, handler = function() end },
}
]]))
      local by = {}
      for _, r in ipairs(gen.routes) do by[r.rule] = r.websocket end
      assert.equal("relay", by["/ws"].mode)
      assert.same({ interval = 5, message = true, ping_frames = false, timeout = 0 },
                  by["/ws"].heartbeat)
      assert.equal("handler", by["/h"].mode)
      assert.equal(1048576, by["/h"].max_message)
      assert.is_true(by["/h"].deflate)
      local _, err = load_routes([[
return { { path = "/ws", upstream = "agent", websocket = { heartbeat = 30 } } }
]])
      assert.matches("routes.lua:1: route #1 %(/ws%): websocket.heartbeat: expected a table", err)
      _, err = load_routes([[
return { { path = "/ws", upstream = "agent", websocket = { mdoe = "relay" } } }
]])
      assert.matches("websocket: unknown field 'mdoe'", err)
    end)

    it("passes reserved fields through unchanged", function()
      local gen = assert(load_routes([[
return {
  { path = "/ws", upstream = "agent", websocket = { mode = "relay" },
    plugins = { cors = {} }, on_reload = "drain",
    timeouts = { read = 0, write = 1.5, idle = 3600 } },
}
]]))
      local r = gen.routes[1]
      assert.same({ cors = {} }, r.plugins)
      assert.equal("drain", r.on_reload)
      assert.same({ read = 0, write = 1.5, idle = 3600 }, r.timeouts)
    end)

    it("accepts an empty route list", function()
      assert.same({}, assert(load_routes("return {}")).routes)
    end)
  end)


  describe("route ordering", function()
    it("sorts by priority descending; default priority is the rule length", function()
      local gen = assert(load_routes([[
return {
  { prefix = "/api", upstream = "runtime" },
  { prefix = "/api/runtime", upstream = "runtime" },
  { prefix = "/api/runtime/agent", upstream = "agent", priority = 20 },
  { path = "/", upstream = "runtime" },
  { prefix = "/api/realms", upstream = "runtime" },
}
]]))
      local order = {}
      for i, r in ipairs(gen.routes) do order[i] = r.rule .. "=" .. r.priority end
      assert.same({
        "/api/runtime/agent=20", "/api/runtime=12", "/api/realms=11", "/api=4", "/=1",
      }, order)
    end)

    it("keeps file order on ties (stable), including many ties", function()
      local lines = { "return {" }
      for i = 1, 40 do
        lines[#lines + 1] = ('  { path = "/t%02d", upstream = "runtime", priority = %d },')
                            :format(i, i % 3)
      end
      lines[#lines + 1] = "}"
      local gen = assert(load_routes(table.concat(lines, "\n")))
      for i = 2, #gen.routes do
        local a, b = gen.routes[i - 1], gen.routes[i]
        assert.truthy(a.priority > b.priority or (a.priority == b.priority and a.index < b.index))
      end
      -- priorities cycle 1, 2, 0: /t02 is the first route with priority 2
      assert.equal("/t02", gen.routes[1].rule)
      assert.equal("/t05", gen.routes[2].rule)
      assert.equal("/t39", gen.routes[40].rule)
    end)

    it("negative and fractional priorities sort too", function()
      local gen = assert(load_routes([[
return {
  { path = "/a", upstream = "runtime", priority = -1 },
  { path = "/b", upstream = "runtime", priority = 2.5 },
  { path = "/c", upstream = "runtime", priority = 2.5 },
  { path = "/d", upstream = "runtime", priority = 3 },
}
]]))
      local order = {}
      for i, r in ipairs(gen.routes) do order[i] = r.rule end
      assert.same({ "/d", "/b", "/c", "/a" }, order)
      assert.same({ 4, 2, 3, 1 }, { gen.routes[1].index, gen.routes[2].index,
                                    gen.routes[3].index, gen.routes[4].index })
    end)
  end)


  describe("routes errors", function()
    local function routes_file(dir)
      return dir .. "/scripts/routes.lua"
    end

    it("reports a syntax error as path:line:", function()
      local gen, err, dir = load_routes([[
return {
  { path = "/a", upstream = "runtime" },
  { path = "/b" upstream = "runtime" },
}
]])
      assert.is_nil(gen)
      assert_err(err, routes_file(dir), 3, "'}' expected")
    end)

    it("reports a runtime error as path:line:", function()
      local _, err, dir = load_routes([[
local t = {}

error("boom")
return t
]])
      assert_err(err, routes_file(dir), 3, "boom")
    end)

    it("places errors that carry no position (require, level 0, tables)", function()
      local _, err, dir = load_routes([[
local x = 1
local m = require "loader_spec_no_such_module"
return {}
]])
      assert_err(err, routes_file(dir), 2, "module 'loader_spec_no_such_module' not found")

      _, err, dir = load_routes('\n\nerror("plain", 0)\n')
      assert_err(err, routes_file(dir), 3, "plain")

      _, err, dir = load_routes('\nerror({ code = 1 })\n')
      assert_err(err, routes_file(dir), 2, "error object is a table value")

      _, err, dir = load_routes([[
error(setmetatable({}, { __tostring = function() return "custom" end }))
]])
      assert_err(err, routes_file(dir), 1, "custom")
    end)

    it("keeps the position of an error raised in a required module", function()
      local conf_path, dir = project(UPSTREAMS_CONF, [[
require "loader_spec_bad_module"
return {}
]])
      write(dir .. "/scripts/loader_spec_bad_module.lua", "\nlocal x = nil + 1\n")
      local _, err = loader.load(conf_path, { env = {} })
      assert_err(err, dir .. "/scripts/loader_spec_bad_module.lua", 2, "arithmetic")
    end)

    it("restores long paths that Lua shortens in messages", function()
      seq = seq + 1
      local dir = tmp_root .. "/p" .. seq .. "/" .. string.rep("deep/", 20) .. "project"
      local conf_path = write(dir .. "/conf/moongate.lua", "return {}")
      write(dir .. "/scripts/routes.lua", "return {\n  {,\n}")
      local _, err = loader.load(conf_path, { env = {} })
      assert_err(err, dir .. "/scripts/routes.lua", 2)
      write(dir .. "/scripts/routes.lua", "\nerror('late')")
      _, err = loader.load(conf_path, { env = {} })
      assert_err(err, dir .. "/scripts/routes.lua", 2, "late")
    end)

    it("reports a missing routes file at line 0", function()
      local _, err, dir = load("return { routes = 'scripts/none.lua' }")
      assert_err(err, dir .. "/scripts/none.lua", 0, "cannot open file")
    end)

    it("rejects a file that does not return a list", function()
      local _, err, dir = load_routes("local r = 'x'\nreturn r\n")
      assert_err(err, routes_file(dir), 2, "must return a list of routes, got string")
      _, err, dir = load_routes("return {\n  { path = '/', upstream = 'runtime' },\n  x = 1 }\n")
      assert_err(err, routes_file(dir), 1, "found key 'x'")
    end)

    -- { route source, message fragment[, line] }: the error is on line 4,
    -- where the rule literal is, or on the `return` (line 1) without one
    local cases = {
      { [[{ path = "/a", upstream = "runtime", methdo = "GET" }]],
        "route #2 (/a): unknown field 'methdo' (did you mean 'method'?)" },
      { [[{ path = "/a", upstream = "runtme" }]],
        "route #2 (/a): unknown upstream 'runtme' (did you mean 'runtime'?)" },
      { [[{ path = "/a", prefix = "/a", upstream = "runtime" }]],
        "route #2 (/a): both 'path' and 'prefix' given" },
      { [[{ upstream = "runtime" }]], "route #2 (?): one of 'path' or 'prefix' is required", 1 },
      { [[{ path = 5, upstream = "runtime" }]], "route #2 (?): path: expected a string", 1 },
      { [[{ path = "/a", upstream = "runtime", handler = print }]],
        "both 'upstream' and 'handler' given" },
      { [[{ path = "/a" }]], "one of 'upstream' or 'handler' is required" },
      { [[{ path = "/a", handler = "fn" }]], "handler: expected a function, got string" },
      { [[{ path = "/a", upstream = 1 }]], "upstream: expected a string, got number" },
      { [[{ path = "a", upstream = "runtime" }]], "route #2 (a): path: must start with '/'" },
      { [[{ prefix = "/a/{id}x", upstream = "runtime" }]],
        "prefix: bad segment '{id}x': a parameter is a whole segment" },
      { [[{ path = "/a/{1x}", upstream = "runtime" }]], "bad segment '{1x}'" },
      { [[{ path = "/a/{}", upstream = "runtime" }]], "bad segment '{}'" },
      { [[{ path = "/a/{i-d}", upstream = "runtime" }]], "bad segment '{i-d}'" },
      { [[{ path = "/a/x{id}", upstream = "runtime" }]], "bad segment 'x{id}'" },
      { [[{ path = "/{id}/x/{id}", upstream = "runtime" }]], "duplicate parameter '{id}'" },
      { [[{ path = "/a//b", upstream = "runtime" }]], "empty segment" },
      { [[{ path = "/a?x=1", upstream = "runtime" }]], "must not contain whitespace, '?'" },
      { [[{ path = "/a b", upstream = "runtime" }]], "must not contain whitespace" },
      { [[{ path = "/" .. string.rep("a/", 33), upstream = "runtime" }]], "too many segments", 1 },
      { [[{ path = "/a", upstream = "runtime", method = "get" }]],
        "method 'get' must be upper-case" },
      { [[{ path = "/a", upstream = "runtime", method = { "GET", "BAD METHOD" } }]],
        "method 'BAD METHOD' is not a valid method token" },
      { [[{ path = "/a", upstream = "runtime", method = {} }]], "method: empty list" },
      { [[{ path = "/a", upstream = "runtime", method = { 1 } }]],
        "method: expected a string, got number" },
      { [[{ path = "/a", upstream = "runtime", method = true }]],
        "method: expected a string or a list of strings, got boolean" },
      { [[{ path = "/a", upstream = "runtime", host = 1 }]], "host: expected a string" },
      { [[{ path = "/a", upstream = "runtime", host = "a b" }]], "host: bad host 'a b'" },
      { [[{ path = "/a", upstream = "runtime", host = "a:b" }]], "host: bad host 'a:b'" },
      { [[{ path = "/a", upstream = "runtime", priority = "high" }]],
        "priority: expected a finite number, got 'high'" },
      { [[{ path = "/a", upstream = "runtime", priority = 0/0 }]],
        "priority: expected a finite number" },
      { [[{ path = "/a", upstream = "runtime", strip_prefix = true }]],
        "strip_prefix needs a 'prefix' rule" },
      { [[{ prefix = "/a", handler = print, strip_prefix = true }]],
        "strip_prefix applies to upstream routes only" },
      { [[{ prefix = "/a", upstream = "runtime", strip_prefix = 1 }]],
        "strip_prefix: expected a boolean" },
      { [[{ path = "/a", upstream = "runtime", body_size = -1 }]],
        "body_size: expected a non-negative integer, got -1" },
      { [[{ path = "/a", upstream = "runtime", body_size = 1.5 }]],
        "body_size: expected a non-negative integer, got 1.5" },
      { [[{ path = "/a", upstream = "runtime", name = 1 }]], "name: expected a string" },
      { [[{ path = "/a", upstream = "runtime", websocket = true }]],
        "websocket: expected a table, got boolean" },
      { [[{ path = "/a", upstream = "runtime", plugins = "cors" }]],
        "plugins: expected a table, got string" },
      { [[{ path = "/a", upstream = "runtime", on_reload = "restart" }]],
        "on_reload: expected \"keep\" or \"drain\", got 'restart'" },
      { [[{ path = "/a", upstream = "runtime", timeouts = 5 }]],
        "timeouts: expected a table, got number" },
      { [[{ path = "/a", upstream = "runtime", timeouts = { header = 1 } }]],
        "timeouts: unknown field 'header'" },
      { [[{ path = "/a", upstream = "runtime", timeouts = { idle = -1 } }]],
        "timeouts.idle: expected a non-negative number of seconds, got -1" },
      { [["/a"]], "route #2 (?): expected a table, got string", 1 },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case[1], function()
        local gen, err, dir = load_routes(table.concat({
          "return {",
          '  { path = "/ok", upstream = "runtime" },',
          "",
          "  " .. case[1] .. ",",
          "}",
        }, "\n"))
        assert.is_nil(gen)
        assert_err(err, routes_file(dir), case[3] or 4, case[2])
      end)
    end

    it("finds the nth occurrence of a rule shared by several routes", function()
      local _, err, dir = load_routes([[
return {
  { path = "/x", method = "GET", upstream = "runtime" },
  { path = "/x", method = "POST", upstream = "runtime" },
  { path = '/x', method = "put", upstream = "runtime" },
}
]])
      assert_err(err, routes_file(dir), 4, "route #3 (/x): method 'put' must be upper-case")
    end)

    it("falls back to the handler's line for computed rules", function()
      local _, err, dir = load_routes([[
local base = "/api"
return {
  { prefix = base .. "/v1",
    handler = function() end, bogus = 1 },
}
]])
      assert_err(err, routes_file(dir), 4, "route #1 (/api/v1): unknown field 'bogus'")
    end)

    it("falls back to the top-level return line", function()
      local _, err, dir = load_routes([[
local base = "/api"
local function f()
  return 1
end
return {
  { prefix = base .. "/v1", upstream = "nope" },
}
]])
      assert_err(err, routes_file(dir), 5, "unknown upstream 'nope'")
    end)

    it("records each route's file and line", function()
      local gen, _, dir = load_routes([[
return {
  { path = "/a", upstream = "runtime" },

  { path = "/b",
    upstream = "runtime" },
}
]])
      local lines = {}
      for _, r in ipairs(gen.routes) do
        lines[r.rule] = r.line
        assert.equal(routes_file(dir), r.file)
      end
      assert.same({ ["/a"] = 2, ["/b"] = 4 }, lines)
    end)
  end)


  describe("describe and diff", function()
    local function gen_of(routes)
      return assert(load_routes(routes))
    end

    it("describes routes in match order", function()
      local gen = gen_of([[
return {
  { path = "/", method = { "GET", "HEAD" }, handler = function() end, name = "home" },
  { prefix = "/api/runtime", upstream = "runtime", strip_prefix = true },
  { prefix = "/api/runtime/agent", upstream = "agent", priority = 20, host = "A.example",
    websocket = {} },
}
]])
      assert.same({
        "20 prefix /api/runtime/agent host=a.example -> upstream agent websocket",
        "12 prefix /api/runtime -> upstream runtime (strip_prefix)",
        "1 exact / GET,HEAD -> handler 'home'",
      }, loader.describe(gen))
      assert.same({}, loader.describe(nil))
    end)

    it("diffs two descriptions", function()
      local old = loader.describe(gen_of([[
return {
  { prefix = "/api/runtime", upstream = "runtime" },
  { prefix = "/api/realms", upstream = "runtime" },
}
]]))
      local new = loader.describe(gen_of([[
return {
  { prefix = "/api/runtime", upstream = "runtime" },
  { prefix = "/api/realms", upstream = "agent" },
  { path = "/health", handler = function() end },
}
]]))
      assert.same({
        added = { "11 prefix /api/realms -> upstream agent", "7 exact /health -> handler" },
        removed = { "11 prefix /api/realms -> upstream runtime" },
      }, loader.diff(old, new))
      assert.same({ added = {}, removed = {} }, loader.diff(new, new))
      assert.same({ added = new, removed = {} }, loader.diff(nil, new))
    end)

    it("counts duplicate lines", function()
      assert.same({ added = { "a" }, removed = {} }, loader.diff({ "a", "b" }, { "a", "b", "a" }))
      assert.same({ added = {}, removed = { "a" } }, loader.diff({ "a", "a" }, { "a" }))
    end)
  end)


  describe("shipped conf and routes", function()
    -- the shipped scripts require "moongate", whose C half only exists in
    -- the binary: a stub is enough to load (not run) them
    lazy_setup(function()
      package.preload["moongate.core"] = function()
        return setmetatable({ version = "test" }, { __index = function() return function() end end })
      end
    end)
    lazy_teardown(function()
      package.preload["moongate.core"] = nil
      package.loaded["moongate.core"] = nil
      package.loaded["moongate"] = nil
    end)

    it("load cleanly with the documented values", function()
      local gen, err = loader.load("conf/moongate.lua", { env = {}, ncpu = 2 })
      assert.is_nil(err)
      local conf = gen.conf
      assert.same({ { host = "127.0.0.1", port = 8080 } }, conf.listen)
      assert.equal(2, conf.workers)
      assert.same({ read = 0, write = 0, idle = 3600, header = 30, drain = 10, body = 60 }, conf.timeouts)
      assert.equal("runtime", conf.upstreams[1].name)
      assert.same({ { host = "127.0.0.1", port = 9001, url = "http://127.0.0.1:9001" } },
                  conf.upstreams[1].servers)
      -- the embedded demo Runtime is the second server, on the runtime upstream's address
      assert.equal("demo_runtime", gen.servers[1].name)
      assert.same({ { host = "127.0.0.1", port = 9001 } }, gen.servers[1].listen)
    end)

    it("carry the seed's routing table, agent above runtime", function()
      local gen = assert(loader.load("conf/moongate.lua", { env = {} }))
      local pos, route = {}, {}
      for i, r in ipairs(gen.routes) do
        pos[r.rule] = pos[r.rule] or i
        route[r.rule] = route[r.rule] or r
      end
      for _, rule in ipairs({ "/api/execution/{execution_id}/status",
                              "/api/execution/{execution_id}/stream", "/api/runtime/agent",
                              "/api/runtime", "/api/realms", "/api/session", "/api/intent",
                              "/api/auth", "/api/ws", "/api/admin", "/api" }) do
        assert.truthy(pos[rule], "missing route " .. rule)
      end
      assert.equal(20, route["/api/runtime/agent"].priority)
      assert.truthy(pos["/api/runtime/agent"] < pos["/api/runtime"])
      assert.equal("relay", route["/api/runtime/agent"].websocket.mode)
      assert.equal("handler", route["/api/execution/{execution_id}/stream"].websocket.mode)
      assert.equal("runtime", route["/api/runtime"].upstream)
      assert.equal("runtime", route["/api/realms"].upstream)
      -- every /api route runs the auth hook first
      for rule, r in pairs(route) do
        if rule:sub(1, 4) == "/api" then
          assert.truthy(r.access and #r.access >= 1, rule .. " has no access hook")
        end
      end
    end)

    it("take MOONGATE_UPSTREAM_RUNTIME", function()
      local gen = assert(loader.load("conf/moongate.lua",
                                     { env = { MOONGATE_UPSTREAM_RUNTIME = "http://rt:80" } }))
      assert.equal("http://rt:80", gen.conf.upstreams[1].servers[1].url)
    end)
  end)
end)
