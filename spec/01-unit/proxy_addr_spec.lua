-- Unit specs for the loader's trusted_proxies and proxy_protocol (main conf
-- and each server): what core/app/load.c is handed ({bytes, bits} blocks),
-- the defaults, and the "file:line: reason" of a bad value.
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

local function load(conf)
  seq = seq + 1
  local dir = tmp_root .. "/p" .. seq
  local conf_path = write(dir .. "/conf/moongate.lua", conf)
  write(dir .. "/scripts/routes.lua", "return {}\n")
  local saved = package.path
  local gen, err = loader.load(conf_path, { env = {} })
  package.path = saved
  return gen, err
end

local function bytes(...)
  return string.char(...)
end

describe("trusted_proxies and proxy_protocol in the loader", function()
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

  it("defaults to none and off", function()
    local gen = assert(load("return {}\n"))
    assert.same({}, gen.conf.trusted_proxies)
    assert.is_false(gen.conf.proxy_protocol)
  end)

  it("normalizes blocks to network-order bytes and a prefix length", function()
    local gen = assert(load([[
return { trusted_proxies = { "10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:10.1.0.0/112" },
         proxy_protocol = true }
]]))
    assert.same({
      { bytes = bytes(10, 0, 0, 0), bits = 8 },
      { bytes = bytes(192, 0, 2, 7), bits = 32 },
      { bytes = bytes(0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), bits = 32 },
      { bytes = bytes(10, 1, 0, 0), bits = 16 }, -- IPv4-mapped: an IPv4 block
    }, gen.conf.trusted_proxies)
    assert.is_true(gen.conf.proxy_protocol)
  end)

  it("takes a single string", function()
    local gen = assert(load('return { trusted_proxies = "127.0.0.1" }\n'))
    assert.same({ { bytes = bytes(127, 0, 0, 1), bits = 32 } }, gen.conf.trusted_proxies)
  end)

  it("gives each server its own, not the main conf's", function()
    local gen = assert(load([[
return {
  trusted_proxies = { "10.0.0.0/8" }, proxy_protocol = true,
  servers = {
    a = { listen = "127.0.0.1:9101", routes = "scripts/routes.lua" },
    b = { listen = "127.0.0.1:9102", routes = "scripts/routes.lua",
          trusted_proxies = { "127.0.0.1" }, proxy_protocol = true },
  },
}
]]))
    assert.equal("a", gen.servers[1].name)
    assert.same({}, gen.servers[1].trusted_proxies)
    assert.is_false(gen.servers[1].proxy_protocol)
    assert.same({ { bytes = bytes(127, 0, 0, 1), bits = 32 } }, gen.servers[2].trusted_proxies)
    assert.is_true(gen.servers[2].proxy_protocol)
  end)

  it("refuses what is not an address or block, with the line", function()
    local cases = {
      { 'return {\n  trusted_proxies = { "10.0.0.0/8",\n    "10.0.0.256" },\n}\n',
        "moongate.lua:3: trusted_proxies: item #2: bad address '10.0.0.256'" },
      { 'return {\n  trusted_proxies = { "10.0.0.0/40" },\n}\n',
        "moongate.lua:2: trusted_proxies: item #1: bad prefix length in '10.0.0.0/40' (0-32)" },
      { 'return {\n  trusted_proxies = { "example.com" },\n}\n',
        "moongate.lua:2: trusted_proxies: item #1: bad address 'example.com'" },
      { 'return {\n  trusted_proxies = { 10 },\n}\n',
        "moongate.lua:2: trusted_proxies: item #1: expected a string, got number" },
      { 'return {\n  trusted_proxies = { a = "10.0.0.0/8" },\n}\n',
        "trusted_proxies: expected a list, found key 'a'" },
      { 'return {\n  proxy_protocol = "on",\n}\n',
        "moongate.lua:2: proxy_protocol: expected a boolean, got string" },
      { 'return {\n  servers = { s = { listen = "127.0.0.1:9103", routes = "scripts/routes.lua",\n'
        .. '    trusted_proxies = { "2001:db8::/200" } } },\n}\n',
        "moongate.lua:3: servers.s.trusted_proxies: item #1: bad prefix length" },
    }
    for _, c in ipairs(cases) do
      local gen, err = load(c[1])
      assert.is_nil(gen, c[1])
      assert.truthy(err:find(c[2], 1, true), err)
    end
  end)
end)
