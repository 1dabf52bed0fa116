-- Unit specs for moongate.module (lib/moongate/init.lua): a script module
-- made strict, so that reading a field it does not have raises at the
-- reader's line, with a did-you-mean, instead of giving nil.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit

local pl_dir = require "pl.dir"
local pl_path = require "pl.path"

local moongate
local tmp_root
local seq = 0

-- Runs `src` as a file of its own; returns the error it raises (or nil) and
-- the file's path.
local function run(src)
  seq = seq + 1
  local path = tmp_root .. "/m" .. seq .. ".lua"
  assert(pl_dir.makepath(pl_path.dirname(path)))
  local f = assert(io.open(path, "wb"))
  f:write(src)
  f:close()
  local ok, err = pcall(assert(loadfile(path)))
  if ok then return nil, path end
  return err, path
end

describe("moongate.module", function()
  lazy_setup(function()
    -- moongate.core only exists in the binary: a stub is enough here
    package.preload["moongate.core"] = function()
      return setmetatable({ version = "test" }, { __index = function() return function() end end })
    end
    package.loaded["moongate"] = nil
    moongate = require "moongate"
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    assert(pl_dir.makepath(tmp_root))
  end)

  lazy_teardown(function()
    package.preload["moongate.core"] = nil
    package.loaded["moongate.core"] = nil
    package.loaded["moongate"] = nil
    package.loaded["spec_strict_auth"] = nil
    if tmp_root then pl_dir.rmtree(tmp_root) end
  end)

  it("returns the table itself, whose fields read, set and iterate as before", function()
    local f = function() end
    local t = { access = f, _VERSION = "0.1.0" }
    assert.equal(t, moongate.module("auth", t))
    assert.equal(f, t.access)
    assert.equal("0.1.0", t._VERSION)
    t.later = 1
    assert.equal(1, t.later)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "_VERSION", "access", "later" }, keys)
    assert.is_nil(rawget(t, "missing"))
  end)

  it("raises at the reader's line on a misspelt field, with a did-you-mean", function()
    local err, path = run([[
local moongate = require "moongate"
local auth = moongate.module("auth", { access = function() end, admin = function() end })

local hooks = { auth.admin,
  auth.acces }
]])
    assert.equal(path .. ":5: module auth has no field 'acces' (did you mean 'access'?)", err)
  end)

  it("names the field without a hint when nothing is close", function()
    local err, path = run([[
local moongate = require "moongate"
local m = moongate.module("gateway", { whoami = function() end })
return m.session_create
]])
    assert.equal(path .. ":3: module gateway has no field 'session_create'", err)
  end)

  it("raises through require, at the line of the file that reads the module", function()
    package.preload["spec_strict_auth"] = function()
      return moongate.module("auth", { access = function() end })
    end
    local err, path = run('local auth = require "spec_strict_auth"\nlocal x = 1\nreturn { x, auth.acess }\n')
    assert.equal(path .. ":3: module auth has no field 'acess' (did you mean 'access'?)", err)
  end)

  it("refuses what it cannot make strict, at the caller's line", function()
    local err, path = run('local moongate = require "moongate"\nmoongate.module("x", "nope")\n')
    assert.equal(path .. ":2: module: expected (name, table), got (string, string)", err)
    err, path = run('local moongate = require "moongate"\n'
      .. 'moongate.module("x", setmetatable({}, {}))\n')
    assert.equal(path .. ":2: module: x already has a metatable", err)
  end)
end)
