-- Unit specs for moongate.methods (lib/moongate/init.lua): the handler it
-- builds (dispatch, 405 with a JSON body and a sorted Allow), and what it
-- refuses when it is built, at the caller's line, through the loader as a
-- routes file's "file:line: reason" too.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit

local pl_dir = require "pl.dir"
local pl_path = require "pl.path"

local moongate, loader
local tmp_root
local seq = 0

local function write(path, text)
  assert(pl_dir.makepath(pl_path.dirname(path)))
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Runs `src` as a file of its own; returns the error it raises (or nil).
local function run(src)
  seq = seq + 1
  local path = write(tmp_root .. "/f" .. seq .. ".lua", src)
  local ok, err = pcall(assert(loadfile(path)))
  if ok then return nil, path end
  return err, path
end

-- Loads a project whose routes file is `routes`: the generation or nil, err.
local function load_routes(routes)
  seq = seq + 1
  local dir = tmp_root .. "/p" .. seq
  local conf = write(dir .. "/conf/moongate.lua", "return { listen = '127.0.0.1:1', workers = 1 }\n")
  write(dir .. "/scripts/routes.lua", routes)
  return loader.load(conf, { env = {} })
end

local function req(method)
  return { method = method, id = "rid-1" }
end

describe("moongate.methods", function()
  lazy_setup(function()
    -- moongate.core only exists in the binary: a stub is enough here
    package.preload["moongate.core"] = function()
      return setmetatable({ version = "test" }, { __index = function() return function() end end })
    end
    package.loaded["moongate"] = nil
    moongate = require "moongate"
    loader = require "moongate.loader"
    tmp_root = os.tmpname()
    os.remove(tmp_root)
    assert(pl_dir.makepath(tmp_root))
  end)

  lazy_teardown(function()
    package.preload["moongate.core"] = nil
    package.loaded["moongate.core"] = nil
    package.loaded["moongate"] = nil
    if tmp_root then pl_dir.rmtree(tmp_root) end
  end)

  describe("the handler", function()
    it("calls the request method's function with req and res", function()
      local got
      local h = moongate.methods{
        GET = function(r, res) got = { r.method, res } return 200, "get" end,
        POST = function() return 201, "post" end,
      }
      local res = {}
      assert.same({ 200, "get" }, { h(req("GET"), res) })
      assert.same({ "GET", res }, got)
      assert.same({ 201, "post" }, { h(req("POST")) })
    end)

    it("answers another method with 405, a JSON body and a sorted Allow", function()
      local f = function() return 200 end
      local h = moongate.methods{ POST = f, GET = f, DELETE = f, PUT = f }
      local status, body, headers = h(req("PATCH"))
      assert.equal(405, status)
      assert.same({
        error = "method_not_allowed", message = "PATCH is not allowed here",
        request_id = "rid-1", allow = "DELETE, GET, POST, PUT",
      }, body)
      assert.same({ ["Content-Type"] = "application/json", Allow = "DELETE, GET, POST, PUT" }, headers)
    end)

    it("does not serve HEAD through GET unless HEAD is listed (as before)", function()
      local f = function() return 200, "x" end
      local status, _, headers = moongate.methods{ GET = f }(req("HEAD"))
      assert.equal(405, status)
      assert.equal("GET", headers.Allow)
      assert.equal(200, (moongate.methods{ GET = f, HEAD = f }(req("HEAD"))))
    end)

    it("takes any upper-case method token, as the route field method does", function()
      local f = function() return 200 end
      local _, _, headers = moongate.methods{ PURGE = f, ["M-SEARCH"] = f }(req("GET"))
      assert.equal("M-SEARCH, PURGE", headers.Allow)
    end)
  end)

  describe("refuses when built, at the caller's line", function()
    it("a nil handler (a typo), naming it, with a did-you-mean", function()
      local err, path = run([[
local moongate = require "moongate"
local gateway = { whoami = function() end, session_get = function() end }
local ok = moongate.methods{ GET = gateway.whoami }
local bad = moongate.methods{ GET = gateway.session_get,
  POST = gateway.whoam }
]])
      assert.equal(path .. ":4: methods: POST: the handler gateway.whoam is nil (did you mean 'whoami'?)",
        err)
    end)

    it("the only handler nil", function()
      local err, path = run("local methods = require('moongate').methods\n\nmethods{ GET = nil_typo }\n")
      assert.equal(path .. ":3: methods: GET: the handler nil_typo is nil", err)
    end)

    it("an empty table", function()
      local err, path = run("local methods = require('moongate').methods\nmethods{}\n")
      assert.equal(path .. ":2: methods: no handler (an empty table, or every handler is nil: a typo in a name?)",
        err)
    end)

    it("a handler that is not a function", function()
      local err, path = run("local methods = require('moongate').methods\nmethods{ GET = 'x' }\n")
      assert.equal(path .. ":2: methods: GET: expected a function, got string", err)
    end)

    it("a lower-case or invalid method name, and a list", function()
      local err, path = run("local methods = require('moongate').methods\nmethods{ get = print }\n")
      assert.equal(path .. ":2: methods: method 'get' must be upper-case", err)
      err, path = run("local methods = require('moongate').methods\nmethods{ ['GE T'] = print }\n")
      assert.equal(path .. ":2: methods: method 'GE T' is not a valid method token", err)
      err, path = run("local methods = require('moongate').methods\nmethods{ print }\n")
      assert.equal(path .. ":2: methods: expected METHOD = handler, found key [1] (function)", err)
      err, path = run("local methods = require('moongate').methods\nmethods('GET')\n")
      assert.equal(path .. ":2: methods: expected a table { GET = handler, ... }, got string", err)
    end)

    it("a method written twice", function()
      local err, path = run([[
local methods = require("moongate").methods
local f = function() end
methods{ GET = f, POST = f,
         GET = f }
]])
      assert.equal(path .. ":3: methods: GET given twice (the last one would win)", err)
    end)

    it("nothing that is right, whatever the handlers' bodies hold", function()
      local err = run([[
local methods = require("moongate").methods
local t = { f = function() end }
methods{ GET = t.f, POST = function(req)
    local x = { status = nil, ["PUT"] = nil }
    if req then for _ = 1, 2 do x.n = "}" end end
    return 200, x -- GET = nil, DELETE = t.g
  end, ["DELETE"] = t.f }
]])
      assert.is_nil(err)
    end)
  end)

  describe("through the loader", function()
    it("a routes file's nil handler is routes.lua:line: reason", function()
      local gen, err = load_routes([[
local moongate = require "moongate"
local h = { whoami = function() return 200 end }
return {
  { path = "/a", handler = moongate.methods{ GET = h.whoami } },
  { path = "/b", handler = moongate.methods{ GET = h.whoam } },
}
]])
      assert.is_nil(gen)
      assert.matches("/scripts/routes%.lua:5: methods: GET: the handler h%.whoam is nil %(did you mean 'whoami'%?%)$",
        err)
    end)

    it("the shipped routes load with it", function()
      assert.truthy(loader.load("conf/moongate.lua", { env = {} }))
    end)
  end)
end)
