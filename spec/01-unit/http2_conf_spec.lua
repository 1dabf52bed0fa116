-- Unit specs for the loader's HTTP/2 switches (docs/configuration.md,
-- "HTTP/2"): `http2` (top level, the default of every tls table, and
-- MOONGATE_HTTP2), `tls.http2`, `h2c` (main conf and each server),
-- `http2_websocket` (RFC 8441, on) and limits.h2_streams: what
-- core/app/load.c and tls_ctx.c are handed, the defaults (all off but
-- http2_websocket), and the "file:line: reason" of a bad value.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit

local loader = require "moongate.loader"
local pl_dir = require "pl.dir"
local pl_path = require "pl.path"

local tmp_root
local seq = 0

local function write(path, text)
  assert(pl_dir.makepath(pl_path.dirname(path)))
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- the loader reads the PEM files; OpenSSL (tls_ctx.c) judges them, not Lua
local function load(conf, env)
  seq = seq + 1
  local dir = tmp_root .. "/p" .. seq
  local conf_path = write(dir .. "/conf/moongate.lua", conf)
  write(dir .. "/scripts/routes.lua", "return {}\n")
  write(dir .. "/scripts/other.lua", "return {}\n")
  write(dir .. "/certs/c.pem", "not checked here\n")
  write(dir .. "/certs/k.pem", "not checked here\n")
  local saved = package.path
  local gen, err = loader.load(conf_path, { env = env or {} })
  package.path = saved
  return gen, err
end

local TLS = [[tls = { listen = "127.0.0.1:8443", certificates = { { cert = "certs/c.pem", key = "certs/k.pem" } }%s },]]

local function conf(top, tls_extra)
  return "return {\n" .. (top or "") .. "\n" .. TLS:format(tls_extra or "") .. "\n}\n"
end

describe("the loader's HTTP/2 switches", function()
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

  it("is off by default: no h2 by ALPN, no h2c, 128 streams", function()
    local gen = assert(load(conf()))
    assert.is_false(gen.conf.http2)
    assert.is_false(gen.conf.h2c)
    assert.is_false(gen.conf.tls.http2)
    assert.equal(128, gen.conf.limits.h2_streams)
  end)

  it("takes the top-level http2 as every tls table's default; tls.http2 overrides it", function()
    local gen = assert(load(conf("http2 = true, h2c = true, limits = { h2_streams = 8 },")))
    assert.is_true(gen.conf.tls.http2)
    assert.is_true(gen.conf.h2c)
    assert.equal(8, gen.conf.limits.h2_streams)
    gen = assert(load(conf("http2 = true,", ", http2 = false")))
    assert.is_false(gen.conf.tls.http2)
    gen = assert(load(conf(nil, ", http2 = true")))
    assert.is_true(gen.conf.tls.http2)
  end)

  it("lets MOONGATE_HTTP2 override the top-level switch", function()
    local gen = assert(load(conf(), { MOONGATE_HTTP2 = "1" }))
    assert.is_true(gen.conf.tls.http2)
    gen = assert(load(conf("http2 = true,"), { MOONGATE_HTTP2 = "off" }))
    assert.is_false(gen.conf.tls.http2)
    local _, err = load(conf(), { MOONGATE_HTTP2 = "maybe" })
    assert.truthy(tostring(err):find("MOONGATE_HTTP2: expected 0 or 1, got 'maybe'", 1, true),
      tostring(err))
  end)

  it("gives each server its own h2c", function()
    local gen = assert(load([[
return {
  h2c = true,
  servers = {
    plain = { listen = "127.0.0.1:9001", routes = "scripts/other.lua" },
    fast = { listen = "127.0.0.1:9002", routes = "scripts/other.lua", h2c = true },
  },
}
]]))
    local by = {}
    for _, s in ipairs(gen.servers) do
      by[s.name] = s
    end
    assert.is_false(by.plain.h2c)
    assert.is_true(by.fast.h2c)
  end)

  it("refuses a switch that is not a boolean, with its line", function()
    local _, err = load("return {\n  http2 = \"yes\",\n}\n")
    assert.truthy(tostring(err):find("moongate.lua:2:", 1, true), tostring(err))
    assert.truthy(tostring(err):find("expected a boolean", 1, true), tostring(err))
    _, err = load(conf(nil, ", http2 = 1"))
    assert.truthy(tostring(err):find("http2", 1, true), tostring(err))
    assert.truthy(tostring(err):find("expected a boolean, got number", 1, true), tostring(err))
    _, err = load("return {\n  limits = { h2_streams = 0 },\n}\n")
    assert.truthy(tostring(err):find("moongate.lua:2:", 1, true), tostring(err))
    assert.truthy(tostring(err):find("at least 1", 1, true), tostring(err))
  end)

  it("has WebSockets over HTTP/2 (http2_websocket) on by default, and takes false", function()
    local gen = assert(load(conf()))
    assert.is_true(gen.conf.http2_websocket)
    gen = assert(load(conf("http2_websocket = false,")))
    assert.is_false(gen.conf.http2_websocket)
    local _, err = load("return {\n  http2_websocket = \"no\",\n}\n")
    assert.truthy(tostring(err):find("moongate.lua:2:", 1, true), tostring(err))
    assert.truthy(tostring(err):find("expected a boolean", 1, true), tostring(err))
  end)
end)
