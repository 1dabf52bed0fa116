-- Limits: request line (414), head size and header count (431), body size
-- per route (413), with the defaults of docs/configuration.md.
local helpers = require "spec.helpers"
local json = helpers.json

local ROUTES = [=[
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/small", body_size = 1000, handler = function(req)
      return 200, { len = #req:body() }
  end },
  { path = "/default", handler = function(req)
      return 200, { len = #req:body() }
  end },
  { prefix = "/up-small", upstream = "up", body_size = 1000 },
  { prefix = "/up", upstream = "up" },
}
]=]

describe("limits", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "limits", upstream = up, routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function status_of(data)
        return tonumber((data or ""):match("^HTTP/1%.%d (%d%d%d)"))
    end

    it("answers 414 to a request line over 16 KiB", function()
        local data = helpers.raw(mg.port, helpers.request("GET", "/hello?x=" .. string.rep("a", 20000)))
        assert.equal(414, status_of(data), data:sub(1, 200))
        -- just under the limit is fine
        local st = helpers.http(mg.port, "GET", "/hello?x=" .. string.rep("a", 8000))
        assert.equal(200, st)
    end)

    it("answers 431 to a head over 16 KiB", function()
        local hs = { "Host: x" }
        for i = 1, 10 do
            hs[#hs + 1] = "X-Big-" .. i .. ": " .. string.rep("b", 2000)
        end
        local data = helpers.raw(mg.port, helpers.request("GET", "/hello", hs))
        assert.equal(431, status_of(data), data:sub(1, 200))
    end)

    it("answers 431 to more than 100 headers", function()
        local hs = { "Host: x" }
        for i = 1, 150 do
            hs[#hs + 1] = "X-H-" .. i .. ": v"
        end
        local data = helpers.raw(mg.port, helpers.request("GET", "/hello", hs))
        assert.equal(431, status_of(data), data:sub(1, 200))
        -- 50 are fine
        hs = { "Host: x", "Connection: close" }
        for i = 1, 50 do
            hs[#hs + 1] = "X-H-" .. i .. ": v"
        end
        data = helpers.raw(mg.port, helpers.request("GET", "/hello", hs))
        assert.equal(200, status_of(data), data:sub(1, 200))
    end)

    it("answers 413 to a body over the route's limit (Content-Length)", function()
        local st = helpers.http(mg.port, "POST", "/small", { body = string.rep("x", 2000) })
        assert.equal(413, st)
        local st2, _, body = helpers.http(mg.port, "POST", "/small", { body = string.rep("x", 1000) })
        assert.equal(200, st2)
        assert.equal(1000, json.decode(body).len)
    end)

    it("answers 413 to a chunked body over the route's limit", function()
        local st = helpers.http(mg.port, "POST", "/small", { body = string.rep("x", 5000), chunked = true })
        assert.equal(413, st)
    end)

    it("answers 413 before 100 Continue when the declared length is too big", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("POST", "/small",
            { "Host: x", "Content-Length: 5000", "Expect: 100-continue" })))
        local r = assert(helpers.read_response(c, { timeout = 3 }))
        assert.equal(413, r.status)
        c:close()
    end)

    it("applies the default 1 MiB limit", function()
        local st = helpers.http(mg.port, "POST", "/default", { body = string.rep("x", 1048576 + 10) })
        assert.equal(413, st)
        st = helpers.http(mg.port, "POST", "/default", { body = string.rep("x", 1048576) })
        assert.equal(200, st)
    end)

    it("answers 413 on a proxy route without forwarding the request", function()
        helpers.upstream_reset(up)
        local st = helpers.http(mg.port, "POST", "/up-small/too-big", { body = string.rep("x", 2000) })
        assert.equal(413, st)
        local st2 = helpers.http(mg.port, "POST", "/up-small/fits", { body = string.rep("x", 500) })
        assert.equal(200, st2)
        local log = helpers.upstream_log(up)
        assert.same({ "POST /up-small/fits" }, log.heads)
    end)
end)
