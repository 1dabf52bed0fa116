-- The process model: the master restarts a worker that dies; SIGTERM and
-- SIGINT stop accepting, let in-flight requests finish, and exit 0; the
-- drain timeout bounds how long that takes.
local helpers = require "spec.helpers"

local ROUTES = [=[
local moongate = require "moongate"
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/slow", handler = function()
      moongate.sleep(1.5)
      return 200, "slow-done"
  end },
  { path = "/forever", handler = function()
      moongate.sleep(30)
      return 200, "too late"
  end },
}
]=]

local CONF10 -- CONF with a 10 s drain
local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  timeouts = { drain = 1 },
}
]]

CONF10 = CONF:gsub("drain = 1", "drain = 10")

describe("process model", function()
    lazy_teardown(function()
        helpers.cleanup()
    end)

    it("restarts a worker killed with SIGKILL and keeps serving", function()
        local mg = helpers.start_moongate({ name = "proc-kill", routes = ROUTES, workers = 2 })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        local before = mg:workers()
        local victim = before[1]
        assert.truthy(helpers.kill(victim, "KILL"))
        assert.truthy(helpers.wait_until(function()
            local now = mg:workers()
            if #now ~= 2 then
                return false
            end
            for _, p in ipairs(now) do
                if p == victim then
                    return false
                end
            end
            return true
        end, 5), "the master did not replace the killed worker")
        assert.truthy(helpers.alive(mg.pid))
        for i = 1, 20 do
            local st, _, body = helpers.http(mg.port, "GET", "/hello", { headers = { "Connection: close" } })
            assert.equal(200, st, "request " .. i)
            assert.equal("hello\n", body)
        end
        -- the other worker was left alone
        local now = mg:workers()
        assert.truthy(now[1] == before[2] or now[2] == before[2])
        -- neither the first workers nor the new one made libevent complain:
        -- a forked child frees the master's event base without re-adding a
        -- descriptor it closed (EBADF) and without its signal events left
        -- holding libevent's one signal base
        local log = mg:log()
        assert.falsy(log:find("[warn]", 1, true), log)
        assert.falsy(log:find("libevent:", 1, true), log)
    end)

    it("SIGTERM lets an in-flight request finish, stops accepting, exits 0", function()
        local mg = helpers.start_moongate({ name = "proc-term", routes = ROUTES, conf = CONF10 })
        finally(function() mg:stop() end)
        local slow = helpers.http_async(mg.port, "GET", "/slow")
        helpers.sleep(0.4)
        local t0 = helpers.now()
        assert.truthy(mg:signal("TERM"))
        -- new requests are no longer served while the slow one drains
        helpers.sleep(0.2)
        local st2, _, body2 = helpers.http(mg.port, "GET", "/hello", { timeout = 4 })
        assert.not_equal(200, st2, "served a new request after SIGTERM: " .. body2)
        local st, body = slow:wait(5)
        assert.equal(200, st)
        assert.equal("slow-done", body)
        local code = mg:wait_exit(10)
        assert.equal(0, code, mg:log():sub(-2000))
        assert.truthy(helpers.now() - t0 < 5)
        assert.same({}, helpers.children(mg.pid))
    end)

    it("SIGTERM closes idle keep-alive connections at once", function()
        local mg = helpers.start_moongate({ name = "proc-idle", routes = ROUTES, conf = CONF10 })
        finally(function() mg:stop() end)
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/hello")))
        assert.equal(200, assert(helpers.read_response(c)).status)
        local t0 = helpers.now()
        assert.truthy(mg:signal("TERM"))
        assert.equal(0, mg:wait_exit(10))
        assert.truthy(helpers.now() - t0 < 2, "an idle connection held the drain")
        local _, closed = helpers.read_all(c, 1)
        assert.truthy(closed)
        c:close()
    end)

    it("SIGINT stops it too, with exit status 0", function()
        local mg = helpers.start_moongate({ name = "proc-int", routes = ROUTES, workers = 2 })
        finally(function() mg:stop() end)
        assert.equal(200, (helpers.http(mg.port, "GET", "/hello")))
        local workers = mg:workers()
        assert.truthy(mg:signal("INT"))
        assert.equal(0, mg:wait_exit(10), mg:log():sub(-2000))
        for _, w in ipairs(workers) do
            assert.falsy(helpers.alive(w), "worker " .. w .. " outlived the master")
        end
    end)

    it("bounds draining by timeouts.drain", function()
        local mg = helpers.start_moongate({ name = "proc-drain", routes = ROUTES, conf = CONF })
        finally(function() mg:stop() end)
        local forever = helpers.http_async(mg.port, "GET", "/forever")
        helpers.sleep(0.4)
        local t0 = helpers.now()
        assert.truthy(mg:signal("TERM"))
        local code = mg:wait_exit(10)
        local took = helpers.now() - t0
        assert.is_not_nil(code, "did not exit")
        assert.truthy(took < 4, "exit took " .. took .. " s with drain = 1")
        assert.equal(0, code)
        local st = forever:wait(5)
        assert.not_equal(200, st)
    end)
end)
