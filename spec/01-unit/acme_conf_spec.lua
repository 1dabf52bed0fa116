-- Unit specs for lib/moongate/acme_conf.lua through the loader: the acme
-- section's defaults, normalization and the "file:line: acme.x: reason"
-- errors, and the chunk handed to the ACME process.
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

-- A project whose conf is `return { acme = <acme> }`.
local function load(acme)
  seq = seq + 1
  local dir = tmp_root .. "/p" .. seq
  local conf_path = write(dir .. "/conf/moongate.lua", "return {\n  acme = " .. acme .. ",\n}\n")
  write(dir .. "/scripts/routes.lua", "return {}\n")
  write(dir .. "/certs/ca.pem", "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n")
  write(dir .. "/certs/not.pem", "hello\n")
  local gen, err = loader.load(conf_path, { env = {} })
  return gen, err, dir
end

local DIR = [[directory = "https://acme.test/dir"]]

describe("moongate.acme_conf", function()
  setup(function()
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    assert(pl_dir.makepath(tmp_root))
  end)

  teardown(function()
    pl_dir.rmtree(tmp_root)
  end)

  it("is absent unless configured", function()
    seq = seq + 1
    local p = write(tmp_root .. "/none" .. seq .. "/conf/moongate.lua", "return {}\n")
    write(tmp_root .. "/none" .. seq .. "/scripts/routes.lua", "return {}\n")
    local gen = assert(loader.load(p, { env = {} }))
    assert.is_nil(gen.conf.acme)
  end)

  it("fills the defaults, lower-cases names and resolves paths from the project root", function()
    local gen, err, dir = load("{ " .. DIR .. [[, names = { "Example.COM", "www.example.com" },
      ca = "certs/ca.pem" }]])
    assert.is_nil(err)
    local a = gen.conf.acme
    assert.same({ "example.com", "www.example.com" }, a.names)
    assert.equal("http-01", a.challenge)
    assert.equal(dir .. "/acme", a.storage)
    assert.equal(dir .. "/certs/ca.pem", a.ca)
    assert.equal(2 / 3, a.renew)
    assert.same({ min = 30, max = 86400 }, a.backoff)
    assert.same({}, a.contact)
    -- the chunk for the ACME process is the same table
    local back = assert(loadstring(a.src))()
    assert.same(a.names, back.names)
    assert.equal(a.storage, back.storage)
    assert.same(a.backoff, back.backoff)
  end)

  local bad = {
    { "a wildcard", [[names = { "*.example.com" }]], "acme.names: '*.example.com': a wildcard" },
    { "an IP address", [[names = { "10.0.0.1" }]], "an IP address" },
    { "a name twice", [[names = { "a.test", "A.test" }]], "listed twice" },
    { "no names", [[contact = "mailto:a@b.test"]], "acme: names: the names" },
    { "an empty list", [[names = {}]], "acme.names: the list is empty" },
    { "a bad contact", [[names = { "a.test" }, contact = "a@b.test"]], "acme.contact: item #1" },
    { "another challenge", [[names = { "a.test" }, challenge = "dns-01"]], "acme.challenge" },
    { "a missing CA file", [[names = { "a.test" }, ca = "certs/nope.pem"]], "nope.pem" },
    { "a CA file without PEM", [[names = { "a.test" }, ca = "certs/not.pem"]],
      "no PEM certificate" },
    { "renew out of range", [[names = { "a.test" }, renew = 1]], "acme.renew" },
    { "backoff max below min", [[names = { "a.test" }, backoff = { min = 10, max = 5 }]],
      "acme.backoff: max (5) is below min (10)" },
    { "an unknown field", [[names = { "a.test" }, tls_alpn = true]], "acme.tls_alpn: unknown field" },
    { "on_demand without allow", [[on_demand = {}]], "acme.on_demand: allow: the names" },
    { "a bad on_demand pattern", [[on_demand = { allow = { "*.*.test" } }]],
      "acme.on_demand.allow: '*.*.test': a wildcard" },
    { "a bad on_demand.max", [[on_demand = { allow = { "*.a.test" }, max = 0 }]],
      "acme.on_demand.max: expected an integer from 1 to 1000" },
  }
  for _, c in ipairs(bad) do
    it("refuses " .. c[1], function()
      local gen, err = load("{ " .. DIR .. ", " .. c[2] .. " }")
      assert.is_nil(gen)
      assert.truthy(err:find("moongate.lua:%d+: "), err)
      assert.truthy(err:find(c[3], 1, true), err)
    end)
  end

  it("takes on_demand alone, lower-cased, max 100 by default", function()
    local gen, err = load("{ " .. DIR .. [[, on_demand = { allow = { "*.Apps.test", "x.test" } } }]])
    assert.is_nil(err)
    assert.same({}, gen.conf.acme.names)
    assert.same({ allow = { "*.apps.test", "x.test" }, max = 100 }, gen.conf.acme.on_demand)
  end)

  it("refuses a directory that is not https://", function()
    local gen, err = load([[{ directory = "http://acme.test/dir", names = { "a.test" } }]])
    assert.is_nil(gen)
    assert.truthy(err:find("acme.directory: expected the https:// URL", 1, true), err)
  end)
end)
