-- The seed's /api/execution as shipped (scripts/execution.lua):
--  * GET .../status: tenant_id required, include_* booleans checked, and
--    Runtime's status code and JSON passed on unchanged;
--  * WebSocket .../stream: status at once and on change only, the seed's
--    ping, pong ignored, last status then 1000 at the end, error then 1008
--    for an unknown execution or another tenant's, error then recovery when
--    Runtime goes down and comes back;
--  * the coalescing proof: 1 000 subscribers to one execution cost Runtime at
--    most one poll per interval per worker.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api
local json = helpers.json

describe("seed execution status", function()
    local mg, tmg, rt

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-exec" })
        rt = seed.start_test_runtime()
        tmg = seed.start_gateway({ name = "seed-exec-test-rt", runtime = "http://127.0.0.1:" .. rt.port })
    end)

    lazy_teardown(function()
        for _, m in ipairs({ mg, tmg, rt }) do
            m:stop()
        end
        seed.cleanup()
    end)

    it("requires tenant_id (400 JSON naming it)", function()
        for _, q in ipairs({ "", "?tenant_id=", "?include_artifacts=true" }) do
            local st, b, h = api(mg.port, "GET", "/api/execution/ex-1/status" .. q, "admin")
            assert.equal(400, st, q)
            assert.matches("application/json", h["content-type"], 1, true)
            assert.equal("tenant_id", b.parameter, q)
            assert.equal("missing_parameter", b.error)
            assert.truthy(b.message:find("tenant_id", 1, true))
        end
    end)

    it("accepts only true or false for include_artifacts and include_visuals", function()
        for _, name in ipairs({ "include_artifacts", "include_visuals" }) do
            for _, v in ipairs({ "yes", "1", "TRUE", "", "truee" }) do
                local st, b = api(mg.port, "GET", "/api/execution/ex-1/status?tenant_id=t1&" .. name .. "=" .. v, "t1")
                assert.equal(400, st, name .. "=" .. v)
                assert.equal(name, b.parameter)
                assert.equal("invalid_parameter", b.error)
            end
        end
    end)

    it("passes the parameters on to Runtime", function()
        local st = api(tmg.port, "GET", "/api/execution/params-1/status?tenant_id=t1&include_artifacts=true"
            .. "&include_visuals=false", "t1")
        assert.equal(200, st)
        local p = seed.runtime_polls(rt, "params-1")
        assert.equal("include_artifacts=true&include_visuals=false&tenant_id=t1", p.queries[1])
    end)

    it("passes Runtime's status code and JSON body on unchanged", function()
        local st, _, h, raw = api(tmg.port, "GET", "/api/execution/teapot-1/status?tenant_id=t1", "t1")
        assert.equal(418, st)
        assert.matches("application/json", h["content-type"], 1, true)
        assert.equal('{"error":"teapot","list":[],"nested":{"a":[1,2,3]},"n":1.5}', raw)
        local st2, b2 = api(tmg.port, "GET", "/api/execution/missing-1/status?tenant_id=t1", "t1")
        assert.equal(404, st2)
        assert.equal("unknown execution", b2.message)
        local st3, b3 = api(tmg.port, "GET", "/api/execution/ok-1/status?tenant_id=t1", "t1")
        assert.equal(200, st3)
        assert.same({ execution_id = "ok-1", tenant_id = "t1", status = "running", progress = 0, artifacts = {} }, b3)
    end)

    it("answers the demo Runtime's status for a real execution", function()
        local id = seed.run_intent(mg.port, "t2", "t2", { duration = 20 })
        local st, b = api(mg.port, "GET", "/api/execution/" .. id .. "/status?tenant_id=t2&include_artifacts=false",
            "t2")
        assert.equal(200, st)
        assert.equal(id, b.execution_id)
        assert.equal("pending", b.status)
    end)
end)

describe("seed execution stream", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-stream", config = {
            ["stream.poll_interval"] = 0.2, ["stream.heartbeat"] = 1 } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    it("sends each status once, on change, then the last one and closes with 1000", function()
        local id = seed.run_intent(mg.port, "t1", "t1", { duration = 2 })
        local c, res = seed.ws_open(mg.port, seed.stream_path(id, "t1"), "t1")
        assert.equal(101, res.status)
        local msgs, code = seed.read_until_close(c, 6)
        c:close()
        assert.equal(1000, code)
        local seen, last = {}, nil
        for _, m in ipairs(msgs) do
            assert.equal("status", m.type)
            assert.equal(id, m.execution_id)
            assert.equal(m.status, m.data.status)
            local sig = m.data.status .. ":" .. m.data.progress
            assert.are_not.equal(last, sig, "a status was sent twice: " .. sig)
            last = sig
            seen[m.status] = true
        end
        assert.equal("pending", msgs[1].status)
        assert.truthy(seen.running)
        assert.equal("completed", msgs[#msgs].status)
        assert.equal(1, #msgs[#msgs].data.artifacts)
        -- Runtime's JSON as it came: an empty list stays a list
        assert.truthy(#msgs >= 4, #msgs .. " statuses")
    end)

    it("sends the status at once on connect, the seed's ping, and ignores pongs", function()
        local id = seed.run_intent(mg.port, "t1", "t1", { duration = 60 })
        local c = assert(seed.ws_open(mg.port, seed.stream_path(id), "t1"))
        local t0 = helpers.now()
        local first = seed.next_json(c, 2)
        assert.equal("status", first.type)
        assert.equal("pending", first.status)
        assert.truthy(helpers.now() - t0 < 1)
        -- a second subscriber gets the known status at once, from the shared poller
        local c2 = assert(seed.ws_open(mg.port, seed.stream_path(id), "t1"))
        local t1 = helpers.now()
        local again = seed.next_json(c2, 2)
        assert.equal("pending", again.status)
        assert.truthy(helpers.now() - t1 < 0.5)
        c2:finish()
        c:text('{"type":"pong"}')
        c:text("anything")
        local ping = seed.next_json(c, 2.5)
        assert.same({ "ts", "type" }, (function()
            local k = {}
            for key in pairs(ping) do k[#k + 1] = key end
            table.sort(k)
            return k
        end)())
        assert.equal("ping", ping.type)
        assert.truthy(math.abs(ping.ts - os.time()) <= 2)
        assert.equal(math.floor(ping.ts), ping.ts)
        -- nothing answered the pong; still open, still pinging
        local nxt = seed.next_json(c, 2.5)
        assert.equal("ping", nxt.type)
        assert.equal(1000, c:finish())
    end)

    it("sends an error then closes with 1008 for an unknown execution", function()
        local c = assert(seed.ws_open(mg.port, seed.stream_path("ex-nope", "t1"), "t1"))
        local msgs, code = seed.read_until_close(c, 3)
        c:close()
        assert.equal(1008, code)
        assert.equal(1, #msgs)
        assert.equal("error", msgs[1].type)
        assert.equal("not_found", msgs[1].error)
        assert.equal(404, msgs[1].status)
    end)

    it("sends an error then closes with 1008 for another tenant's execution", function()
        local id = seed.run_intent(mg.port, "t2", "t2", { duration = 30 })
        -- an operator's token passes the auth hook; Runtime says the execution is t2's
        local c = assert(seed.ws_open(mg.port, seed.stream_path(id, "t1"), "admin"))
        local msgs, code = seed.read_until_close(c, 3)
        c:close()
        assert.equal(1008, code)
        assert.equal("error", msgs[1].type)
        assert.equal("tenant_mismatch", msgs[1].error)
        -- a t1 token naming t2 never gets the upgrade
        local c2, res = seed.ws_open(mg.port, seed.stream_path(id, "t2"), "t1")
        assert.equal(403, res.status)
        c2:close()
    end)

    it("answers 400 naming tenant_id before the upgrade when it is missing", function()
        local c, res = seed.ws_open(mg.port, "/api/execution/ex-1/stream", "t1")
        assert.equal(400, res.status)
        local b = json.decode(res.body)
        assert.equal("tenant_id", b.parameter)
        c:close()
    end)
end)

describe("seed execution stream against a test Runtime", function()
    local mg, rt
    local INTERVAL = 0.5

    lazy_setup(function()
        rt = seed.start_test_runtime()
        mg = seed.start_gateway({ name = "seed-stream-rt", runtime = "http://127.0.0.1:" .. rt.port, config = {
            ["stream.poll_interval"] = INTERVAL, ["stream.max_backoff"] = 1, ["stream.poll_timeout"] = 1,
            ["stream.heartbeat"] = 0 } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        if rt then
            rt:stop()
        end
        seed.cleanup()
    end)

    it("coalesces 1 000 subscribers into one poll per interval per worker", function()
        local N, WORKERS = 1000, 2
        local socks = {}
        local t_open = helpers.now()
        for i = 1, N do
            local c, res = seed.ws_open(mg.port, seed.stream_path("coal-1", "t1"), "t1")
            assert.truthy(c and res.status == 101, "subscriber " .. i .. ": " .. tostring(res and res.status or res))
            socks[i] = c
        end
        -- each one got the status at once
        for i = 1, N do
            local m = seed.next_json(socks[i], 3)
            assert.truthy(m and m.type == "status" and m.status == "running", "subscriber " .. i)
        end
        local opened = helpers.now() - t_open
        -- a window with all 1000 subscribed
        local before = seed.runtime_polls(rt, "coal-1").count
        local WINDOW = 3
        helpers.sleep(WINDOW)
        local during = seed.runtime_polls(rt, "coal-1").count - before
        local max = WORKERS * (math.floor(WINDOW / INTERVAL) + 1)
        assert.truthy(during >= 1, "no poll at all in " .. WINDOW .. " s")
        assert.truthy(during <= max, string.format("%d polls in %.1f s with %d subscribers (max %d)",
            during, WINDOW, N, max))
        -- a change reaches every subscriber, once
        seed.runtime_set(rt, "coal-1", "running", 50)
        for i = 1, N do
            local m = seed.next_json(socks[i], 3)
            assert.truthy(m and m.status == "running" and m.data.progress == 50, "subscriber " .. i)
        end
        -- all polls since the first subscriber, over the whole time
        local total = seed.runtime_polls(rt, "coal-1")
        local span = total.times[#total.times] - total.times[1]
        assert.truthy(total.count <= WORKERS * (math.floor(span / INTERVAL) + 1) + WORKERS,
            total.count .. " polls in " .. span .. " s (opening took " .. opened .. " s)")
        -- the last one leaves: polling stops
        for i = 1, N do
            socks[i]:close()
        end
        helpers.sleep(INTERVAL * 2 + 0.3)
        local after = seed.runtime_polls(rt, "coal-1").count
        helpers.sleep(INTERVAL * 3)
        assert.equal(after, seed.runtime_polls(rt, "coal-1").count, "still polling with no subscriber")
    end)

    it("sends the terminal status then closes with 1000", function()
        local c = assert(seed.ws_open(mg.port, seed.stream_path("term-1", "t1"), "t1"))
        assert.equal("running", seed.next_json(c, 2).status)
        seed.runtime_set(rt, "term-1", "failed", 50)
        local msgs, code = seed.read_until_close(c, 3)
        c:close()
        assert.equal(1000, code)
        assert.equal(1, #msgs)
        assert.equal("failed", msgs[1].status)
    end)

    it("sends an error then closes with 1008 when Runtime says 404 or 403", function()
        for _, case in ipairs({ { "missing-2", "not_found" }, { "other-2", "tenant_mismatch" } }) do
            local c = assert(seed.ws_open(mg.port, seed.stream_path(case[1], "t1"), "t1"))
            local msgs, code = seed.read_until_close(c, 3)
            c:close()
            assert.equal(1008, code, case[1])
            assert.equal(case[2], msgs[1].error)
        end
    end)

    it("sends errors and keeps the socket while Runtime answers 5xx", function()
        local c = assert(seed.ws_open(mg.port, seed.stream_path("unavail-1", "t1"), "t1"))
        local e1 = seed.next_json(c, 2)
        assert.equal("error", e1.type)
        assert.equal("runtime_error", e1.error)
        assert.equal(503, e1.status)
        assert.is_number(e1.retry_in)
        local e2 = seed.next_json(c, 3)
        assert.equal("error", e2.type)
        assert.truthy(e2.retry_in >= e1.retry_in) -- backing off
        assert.equal(1000, c:finish())
    end)

    it("sends errors while Runtime is down mid-stream, then the status again when it is back", function()
        local c = assert(seed.ws_open(mg.port, seed.stream_path("down-1", "t1"), "t1"))
        local first = seed.next_json(c, 2)
        assert.equal("running", first.status)
        local port = rt.port
        rt:stop()
        local err = seed.next_json(c, 3)
        assert.truthy(err, "no message after Runtime went down")
        assert.equal("error", err.type)
        assert.equal(502, err.status)
        assert.equal("runtime_unavailable", err.error)
        assert.equal("down-1", err.execution_id)
        -- back, on the same port
        rt = seed.start_test_runtime({ port = port })
        local got
        local deadline = helpers.now() + 5
        while helpers.now() < deadline do
            local m = seed.next_json(c, deadline - helpers.now())
            if not m then break end
            if m.type == "status" then
                got = m
                break
            end
            assert.equal("error", m.type) -- more errors while it was down (backed off)
        end
        assert.truthy(got, "no status after Runtime came back")
        assert.equal("running", got.status)
        assert.equal(1000, c:finish())
    end)
end)
