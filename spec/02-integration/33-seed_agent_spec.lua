-- The guide-agent chat as shipped: WebSocket /api/runtime/agent (priority
-- 20, above /api/runtime) relayed to the Runtime's agent endpoint, with the
-- core's heartbeats to the client and the connection's tenant and session
-- attached to the upstream handshake; the demo Runtime's agent answers.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local seed = require "spec.seed_helpers"

local json = helpers.json

local function agent_path(q)
    return "/api/runtime/agent" .. (q and ("?" .. q) or "")
end

describe("seed agent chat", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-agent", config = { ["agent.heartbeat"] = 1 } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    it("greets with the connection's tenant and session, and answers chat messages", function()
        local _, session = seed.run_intent(mg.port, "t1", "t1", { duration = 30 })
        local c, res = seed.ws_open(mg.port, agent_path("tenant_id=t1&session_id=" .. session), "t1")
        assert.equal(101, res.status)
        local hello = seed.next_json(c, 3, true)
        assert.equal("hello", hello.type)
        assert.equal("t1", hello.tenant_id)
        assert.equal(session, hello.session_id)
        c:text(json.encode({ type = "message", text = "how do I follow an execution?", id = "c1" }))
        assert.equal("typing", seed.next_json(c, 3, true).type)
        local reply = seed.next_json(c, 3, true)
        assert.equal("message", reply.type)
        assert.equal("agent", reply.role)
        assert.equal("c1", reply.in_reply_to)
        assert.truthy(reply.text:find("/stream", 1, true), reply.text)
        assert.equal(1000, c:finish())
    end)

    it("sends the core's heartbeats to the client and ignores its pongs", function()
        local c = assert(seed.ws_open(mg.port, agent_path(), "t2"))
        local hello = seed.next_json(c, 3)
        assert.equal("t2", hello.tenant_id) -- the token's tenant
        assert.equal(json.null, hello.session_id)
        local ping = seed.next_json(c, 2.5)
        assert.equal("ping", ping.type)
        assert.is_number(ping.ts)
        c:text('{"type":"pong"}')
        -- nothing comes back for the pong: the next message is the next ping
        local nxt = seed.next_json(c, 2.5)
        assert.equal("ping", nxt.type)
        assert.equal(1000, c:finish())
    end)

    it("refuses before the upgrade: no token 401, another tenant 403, no tenant at all 400", function()
        local c, res = seed.ws_open(mg.port, agent_path("tenant_id=t1"), false)
        assert.equal(401, res.status)
        c:close()
        c, res = seed.ws_open(mg.port, agent_path("tenant_id=t2"), "t1")
        assert.equal(403, res.status)
        c:close()
        c, res = seed.ws_open(mg.port, agent_path(), "admin")
        assert.equal(400, res.status)
        assert.equal("tenant_id", json.decode(res.body).parameter)
        c:close()
    end)

    it("routes /api/runtime/agent above /api/runtime, and the rest of /api/runtime to Runtime", function()
        local st, b = seed.api(mg.port, "GET", "/api/runtime/info", "t1")
        assert.equal(200, st)
        assert.equal("v1", b.contract)
        local st2 = seed.api(mg.port, "GET", "/api/runtime/agent/history", "t1")
        assert.equal(404, st2) -- Runtime's own 404: only the exact path is the chat
    end)

    it("works with a stock client (python3-websockets)", function()
        local r = ws.py_client({ url = "ws://127.0.0.1:" .. mg.port .. agent_path("tenant_id=t1&token=demo-token"),
                                 send = { { text = "help" } }, recv = 3, skip_pings = true })
        assert.is_nil(r.error)
        assert.equal("hello", json.decode(r.messages[1].data).type)
        assert.equal("typing", json.decode(r.messages[2].data).type)
        local m = json.decode(r.messages[3].data)
        assert.equal("message", m.type)
        assert.truthy(m.text:find("sessions", 1, true))
    end)
end)

describe("seed agent chat's upstream handshake", function()
    local mg, rt

    lazy_setup(function()
        rt = seed.start_test_runtime()
        mg = seed.start_gateway({ name = "seed-agent-rt", workers = 1, runtime = "http://127.0.0.1:" .. rt.port })
    end)

    lazy_teardown(function()
        for _, m in ipairs({ mg, rt }) do
            m:stop()
        end
        seed.cleanup()
    end)

    it("carries the tenant, the session and the caller, which the client cannot forge", function()
        local c, res = ws.handshake(mg.port, agent_path("tenant_id=t1&session_id=s-42&token=demo-token"),
            { headers = { "X-Tenant-Id: t2", "X-Auth-Tenant: *", "X-Session-Id: forged" } })
        assert.equal(101, res.status)
        local first = seed.next_json(c, 3, true)
        assert.equal("headers", first.type)
        local h = first.headers
        assert.equal("t1", h["x-tenant-id"])
        assert.equal("s-42", h["x-session-id"])
        assert.equal("demo-user", h["x-auth-subject"])
        assert.equal("t1", h["x-auth-tenant"])
        c:finish()
        -- without a session, an empty one: never the client's
        c = ws.handshake(mg.port, agent_path("token=demo-token"), { headers = { "X-Session-Id: forged" } })
        assert.equal("", seed.next_json(c, 3, true).headers["x-session-id"])
        c:text("hi")
        assert.equal("echo:hi", c:read_message(3, { skip_heartbeats = true }).data)
        c:finish()
    end)
end)
