-- An operator edits a route in scripts/routes.lua (of a test copy of the
-- shipped scripts) and sends SIGHUP: the new table serves new requests at
-- once, and the execution streams and agent chats that were open keep
-- receiving (heartbeats, status changes, the final status and 1000) on the
-- generation they started on. A broken edit is refused and changes nothing.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api
local json = helpers.json

describe("seed reload", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-reload", config = {
            ["stream.heartbeat"] = 1, ["stream.poll_interval"] = 0.25, ["agent.heartbeat"] = 1 } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    local shipped = helpers.read_file(helpers.root .. "/scripts/routes.lua")

    it("serves the edited table at once while open streams keep receiving", function()
        local id = seed.run_intent(mg.port, "t1", "t1", { duration = 4 })
        local streams = {}
        for i = 1, 4 do
            local c, res = seed.ws_open(mg.port, seed.stream_path(id, "t1"), "t1")
            assert.equal(101, res.status)
            assert.equal("status", seed.next_json(c, 2, true).type, "stream " .. i)
            streams[i] = c
        end
        local chat = assert(seed.ws_open(mg.port, "/api/runtime/agent?tenant_id=t1", "t1"))
        assert.equal("hello", seed.next_json(chat, 3, true).type)

        -- the edit: whoami moves to /api/auth/me
        local edited, n = shipped:gsub('path = "/api/auth/whoami"', 'path = "/api/auth/me"')
        assert.equal(1, n)
        mg:write_routes(edited)
        mg:reload(0.8)
        assert.truthy(mg:log():find("generation 2", 1, true), mg:log())
        local st, b = api(mg.port, "GET", "/api/auth/me", "t1")
        assert.equal(200, st)
        assert.equal("demo-user", b.subject)
        assert.equal(404, (api(mg.port, "GET", "/api/auth/whoami", "t1"))) -- now Runtime's 404
        -- new streams work on the new table
        local late = assert(seed.ws_open(mg.port, seed.stream_path(id, "t1"), "t1"))

        -- the old streams: more statuses, heartbeats, then completed and 1000
        for i, c in ipairs(streams) do
            local msgs, code = seed.read_until_close(c, 8, true)
            c:close()
            assert.equal(1000, code, "stream " .. i)
            local statuses, pings = 0, 0
            for _, m in ipairs(msgs) do
                if m.type == "ping" then pings = pings + 1 else statuses = statuses + 1 end
            end
            assert.truthy(statuses >= 2, "stream " .. i .. ": " .. statuses .. " statuses after the reload")
            assert.truthy(pings >= 1, "stream " .. i .. ": no heartbeat after the reload")
            assert.equal("completed", msgs[#msgs].status)
        end
        local lmsgs, lcode = seed.read_until_close(late, 3)
        late:close()
        assert.equal(1000, lcode)
        assert.equal("completed", lmsgs[#lmsgs].status)

        -- the chat opened before the reload still talks
        chat:text(json.encode({ type = "message", text = "status?" }))
        local reply
        repeat
            reply = seed.next_json(chat, 3, true)
        until not reply or reply.type == "message"
        assert.truthy(reply, "the chat went quiet after the reload")
        assert.equal(1000, chat:finish())
    end)

    it("refuses a broken routes.lua and keeps the streams and the table", function()
        local id = seed.run_intent(mg.port, "t1", "t1", { duration = 30 })
        local c = assert(seed.ws_open(mg.port, seed.stream_path(id, "t1"), "t1"))
        assert.equal("status", seed.next_json(c, 2, true).type)
        mg:write_routes(shipped:gsub("handler = gateway.not_found", "handler = gateway.no_such_function"))
        mg:reload(0.8)
        assert.truthy(mg:log():find("routes.lua", 1, true))
        -- still the last good table (the edited one from the test before)
        assert.equal(200, (api(mg.port, "GET", "/api/auth/me", "t1")))
        assert.equal("ping", seed.next_json(c, 2).type)
        assert.equal(1000, c:finish())
        assert.truthy(helpers.alive(mg.pid))
    end)
end)
