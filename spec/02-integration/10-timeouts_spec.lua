-- Timeouts with short test values: header (slowloris), idle keep-alive,
-- read (a stalled body); none of them cuts a request that is being served.
local helpers = require "spec.helpers"

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  timeouts = { header = 1, idle = 2, read = 1 },
}
]]

local ROUTES = [=[
local moongate = require "moongate"
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/body", handler = function(req) return 200, tostring(#req:body()) end },
  { path = "/slow", handler = function()
      moongate.sleep(3)
      return 200, "slow-done"
  end },
}
]=]

-- Waits until the server closes c; returns seconds waited, or nil.
local function wait_close(c, timeout)
    local t0 = helpers.now()
    local _, closed = helpers.read_all(c, timeout)
    return closed and (helpers.now() - t0) or nil
end

describe("timeouts", function()
    local mg

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "timeouts", conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("header timeout closes a slowloris connection that keeps trickling", function()
        local c = assert(helpers.connect(mg.port))
        local t0 = helpers.now()
        assert(c:send("GET /hello HTTP/1.1\r\nHost: x\r\n"))
        local closed_at
        for i = 1, 25 do
            helpers.sleep(0.2)
            local ok = c:send("X-Trickle-" .. i .. ": 1\r\n")
            c:settimeout(0)
            local data, err, partial = c:receive(8192)
            -- an answer (a 408) or a close both end the trickle
            if not ok or (data or partial or "") ~= "" or (err and err ~= "timeout") then
                closed_at = helpers.now() - t0
                break
            end
        end
        local _, closed = helpers.read_all(c, 2)
        c:close()
        assert.is_not_nil(closed_at, "still open after 5 s of trickling (header timeout 1 s)")
        assert.truthy(closed, "answered but not closed")
        assert.truthy(closed_at >= 0.7, "closed too early: " .. closed_at)
        assert.truthy(closed_at < 3, "closed after " .. closed_at .. " s")
    end)

    it("header timeout closes a connection that sends nothing", function()
        local c = assert(helpers.connect(mg.port))
        local took = wait_close(c, 5)
        c:close()
        assert.is_not_nil(took, "a silent connection stayed open")
        assert.truthy(took < 3, "closed after " .. tostring(took))
    end)

    it("idle timeout closes a keep-alive connection, not before", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/hello")))
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        local t0 = helpers.now()
        local _, closed = helpers.read_all(c, 1.2)
        assert.falsy(closed, "closed after " .. (helpers.now() - t0) .. " s with idle = 2")
        -- still usable, which re-arms the idle timer
        assert(c:send(helpers.request("GET", "/hello")))
        r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        local took = wait_close(c, 5)
        c:close()
        assert.is_not_nil(took, "an idle keep-alive connection stayed open")
        assert.truthy(took > 1.5 and took < 3.5, "closed after " .. took .. " s with idle = 2")
    end)

    it("read timeout closes a connection whose body stalls", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send("POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"))
        local t0 = helpers.now()
        local data, closed = helpers.read_all(c, 5)
        local took = helpers.now() - t0
        c:close()
        assert.truthy(closed, "a stalled body kept the connection open; got: " .. data:sub(1, 40))
        assert.truthy(took < 3, "closed after " .. took .. " s with read = 1")
    end)

    it("does not cut a slow handler (longer than header and idle timeouts)", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/slow")))
        local r = assert(helpers.read_response(c, { timeout = 6 }))
        assert.equal(200, r.status)
        assert.equal("slow-done", r.body)
        c:close()
    end)

    it("lets a body that keeps coming take longer than the read timeout", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send("POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"))
        for _ = 1, 10 do
            helpers.sleep(0.3)
            assert(c:send("x"))
        end
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        assert.equal("10", r.body)
        c:close()
    end)
end)
