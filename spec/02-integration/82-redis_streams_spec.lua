-- Execution streams across instances (issue 15): three gateways running the
-- shipped scripts with MOONGATE_REDIS_URL, one counting test Runtime, one
-- redis-server. 999 subscribers to one execution spread over the three cost
-- Runtime one poll per interval for the whole cluster (without Redis: one per
-- worker per instance); every change reaches every subscriber once; the
-- lease holder is killed and the stream goes on (nothing lost or sent
-- twice); Redis stops and the streams go on by local polling; it comes back
-- and the final status then close 1000 reach everyone.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"
local rh = require "spec.redis_helpers"

local INTERVAL = 0.5
local CONFIG = { ["stream.poll_interval"] = INTERVAL, ["stream.max_backoff"] = 1,
                 ["stream.poll_timeout"] = 1, ["stream.heartbeat"] = 0 }

describe("execution streams across instances (Redis)", function()
    local cl, redis, rt, gws = {}, nil, nil, {}

    lazy_setup(function()
        cl.gws = gws
        seed.start_cluster(cl, "redis-streams", 3, CONFIG)
        redis, rt = cl.redis, cl.rt
    end)

    lazy_teardown(function() seed.stop_cluster(cl) end)

    it("polls once per interval for the cluster, survives its holder, Redis going away and back",
        function()
        local N, ID = 999, "cluster-1"
        local socks, where = {}, {}
        for i = 1, N do
            local g = (i - 1) % 3 + 1
            local c, res = seed.ws_open(gws[g].port, seed.stream_path(ID, "t1"), "t1")
            assert.truthy(c and res.status == 101, "subscriber " .. i)
            socks[i], where[i] = c, g
        end
        -- each got the status at once
        for i = 1, N do
            local m = seed.next_json(socks[i], 5)
            assert.truthy(m and m.type == "status" and m.status == "running",
                "subscriber " .. i .. ": " .. helpers.json.encode(m))
        end

        -- one poller for the cluster: 6 workers, yet one poll per interval
        local before = seed.runtime_polls(rt, ID).count
        local WINDOW = 3
        helpers.sleep(WINDOW)
        local during = seed.runtime_polls(rt, ID).count - before
        local one = math.floor(WINDOW / INTERVAL) + 1
        assert.truthy(during >= 1, "no poll in " .. WINDOW .. " s")
        assert.truthy(during <= one + 1, string.format("%d polls in %d s (one poller: at most %d; "
            .. "one per worker would be %d)", during, WINDOW, one + 1, 6 * one))

        -- a change reaches everyone once
        local function expect_all(progress, alive, what)
            for i = 1, N do
                if alive(i) then
                    local m = seed.next_json(socks[i], 8)
                    assert.truthy(m and m.type == "status" and m.data.progress == progress,
                        what .. ": subscriber " .. i .. " got " .. helpers.json.encode(m))
                end
            end
        end
        seed.runtime_set(rt, ID, "running", 50)
        expect_all(50, function() return true end, "change")

        -- kill the lease holder's instance (SIGKILL: no goodbye, its lease expires)
        local keys = rh.cli(redis, "--scan --pattern " .. helpers.shq("moongate:exec:*:lease"))
        assert.truthy(keys:match("^moongate:exec:%x+:lease$"), keys)
        local holder = tonumber(rh.cli(redis, "GET " .. keys):match("^pid:(%d+):%x%x%x%x+$"))
        assert(holder, "no lease holder")
        local dead
        for g, gw in ipairs(gws) do
            for _, w in ipairs(gw:workers()) do
                if w == holder then dead = g end
            end
        end
        assert(dead, "the holder " .. holder .. " is none of the gateways' workers")
        -- the master stopped first: it would start new workers for killed ones
        helpers.kill(gws[dead].pid, "STOP")
        for _, w in ipairs(gws[dead]:workers()) do helpers.kill(w, "KILL") end
        helpers.kill(gws[dead].pid, "KILL")
        gws[dead].stopped = true
        assert(helpers.wait_until(function() return not helpers.alive(holder) end, 5))
        local function alive(i) return where[i] ~= dead end
        -- another takes over: the next change arrives once, the last one is not repeated
        assert(helpers.wait_until(function()
            local v = rh.cli(redis, "GET " .. keys)
            return v ~= "" and not v:find("pid:" .. holder .. ":", 1, true)
        end, 10, 0.1), "nobody took the lease over")
        seed.runtime_set(rt, ID, "running", 75)
        expect_all(75, alive, "after the takeover")

        -- Redis stops: every worker polls for itself, the streams go on
        rh.stop(redis)
        seed.runtime_set(rt, ID, "running", 90)
        expect_all(90, alive, "Redis down")

        -- Redis comes back: one poller again; the end reaches everyone once
        rh.restart(redis)
        assert(helpers.wait_until(function()
            return rh.cli(redis, "--scan --pattern " .. helpers.shq("moongate:exec:*:lease")) ~= ""
        end, 20, 0.2), "no lease after Redis came back")
        seed.runtime_set(rt, ID, "completed", 100)
        for i = 1, N do
            if alive(i) then
                local msgs, code = seed.read_until_close(socks[i], 10)
                assert.equal(1000, code, "subscriber " .. i)
                assert.equal(1, #msgs, "subscriber " .. i .. ": " .. helpers.json.encode(msgs))
                assert.equal("completed", msgs[1].status)
                assert.equal(100, msgs[1].data.progress)
            end
        end
    end)
end)
