-- Execution streams across instances and a reload (issue 15): two gateways
-- of two workers running the shipped scripts with MOONGATE_REDIS_URL, one
-- counting test Runtime, one redis-server. Streams are opened, gateway 1 is
-- reloaded (SIGHUP) in the middle, more streams are opened on the new
-- generation. Across the reload the cluster still costs Runtime one poll per
-- interval (before the fix the old generation's workers each polled for
-- themselves), every change reaches old- and new-generation sockets once
-- (none lost, none twice), and the old generation's poller and subscriber
-- connection end when its last socket goes.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"
local rh = require "spec.redis_helpers"

local INTERVAL = 0.3
local CONFIG = { ["stream.poll_interval"] = INTERVAL, ["stream.max_backoff"] = 1,
                 ["stream.poll_timeout"] = 1, ["stream.heartbeat"] = 0 }
local ID = "reload-1"

describe("execution streams across a reload (Redis)", function()
    local cl, redis, rt, gws = {}, nil, nil, {}

    lazy_setup(function()
        cl.gws = gws
        seed.start_cluster(cl, "redis-streams-reload", 2, CONFIG)
        redis, rt = cl.redis, cl.rt
    end)

    lazy_teardown(function() seed.stop_cluster(cl) end)

    local function open(n, progress, into)
        for i = 1, n do
            local g = (i - 1) % 2 + 1
            local c, res = seed.ws_open(gws[g].port, seed.stream_path(ID, "t1"), "t1")
            assert.truthy(c and res.status == 101, "subscriber " .. i)
            local m = seed.next_json(c, 5)
            assert.truthy(m and m.type == "status" and m.data.progress == progress,
                "subscriber " .. i .. ": " .. helpers.json.encode(m))
            into[#into + 1] = c
        end
    end

    -- the next message of each socket is the status with this progress:
    -- a change lost, or one sent twice, shows as another message first
    local function expect_all(socks, progress, what)
        for i, c in ipairs(socks) do
            local m = seed.next_json(c, 8)
            assert.truthy(m and m.type == "status" and m.data.progress == progress,
                what .. ": subscriber " .. i .. " got " .. helpers.json.encode(m))
        end
    end

    -- polls Runtime saw in `window` seconds, and the most one poller makes
    local function polls_in(window)
        local before = seed.runtime_polls(rt, ID).count
        helpers.sleep(window)
        return seed.runtime_polls(rt, ID).count - before, math.floor(window / INTERVAL) + 2
    end

    -- subscriber connections on the execution's channel (named once from its
    -- lease: the lease itself may be between holders at any moment)
    local chan
    local function numsub()
        if not chan then
            assert(helpers.wait_until(function()
                local keys = rh.cli(redis, "--scan --pattern " .. helpers.shq("moongate:exec:*:lease"))
                chan = keys:match("^(moongate:exec:%x+):lease$")
                return chan ~= nil
            end, 5, 0.1), "no lease")
        end
        return tonumber(rh.cli(redis, "PUBSUB NUMSUB " .. chan):match("\n(%d+)$"))
    end

    it("keeps one poll per interval, every message once, and ends the old generation's poller",
        function()
        local old, new = {}, {}
        open(40, 0, old)
        local n, most = polls_in(1.5)
        assert.truthy(n >= 1 and n <= most, n .. " polls before the reload (one poller: " .. most .. ")")
        local subs_before = numsub()
        assert.truthy(subs_before >= 2 and subs_before <= 4, "subscribers before: " .. subs_before)

        gws[1]:reload()
        seed.runtime_set(rt, ID, "running", 10)
        expect_all(old, 10, "just after the reload")
        open(40, 10, new) -- the new generation: the last status at once

        local all = {}
        for _, c in ipairs(old) do all[#all + 1] = c end
        for _, c in ipairs(new) do all[#all + 1] = c end
        -- gateway 1's workers now have two generations, each a member of the cluster
        local subs_both = numsub()
        assert.truthy(subs_both > subs_before,
            "the old generation kept no subscriber connection: " .. subs_both .. " <= " .. subs_before)
        n, most = polls_in(1.5)
        assert.truthy(n >= 1 and n <= most,
            n .. " polls across the reload (one poller for the cluster: at most " .. most .. ")")
        seed.runtime_set(rt, ID, "running", 20)
        expect_all(all, 20, "old and new generations")
        seed.runtime_set(rt, ID, "running", 30)
        expect_all(all, 30, "the next change")

        -- the old generation's sockets leave: its poller and subscriber end
        for _, c in ipairs(old) do c:finish(1000) end
        assert(helpers.wait_until(function() return numsub() <= subs_before end, 5, 0.1),
            "the old generation still listens: " .. numsub() .. " subscribers")
        seed.runtime_set(rt, ID, "running", 40)
        expect_all(new, 40, "after the old generation left")
        n, most = polls_in(1.5)
        assert.truthy(n >= 1 and n <= most, n .. " polls after the old generation left")

        seed.runtime_set(rt, ID, "completed", 100)
        for i, c in ipairs(new) do
            local msgs, code = seed.read_until_close(c, 10)
            assert.equal(1000, code, "subscriber " .. i)
            assert.equal(1, #msgs, "subscriber " .. i .. ": " .. helpers.json.encode(msgs))
            assert.equal(100, msgs[1].data.progress)
        end
    end)
end)
