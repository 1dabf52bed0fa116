-- The seed's route table as shipped (scripts/routes.lua) in front of the
-- embedded demo Runtime (servers.demo_runtime): the page, the /api areas
-- served by moongate's own logic (session, intent, auth, admin, artifacts),
-- Runtime's own API (/api/runtime, /api/realms) proxied after the auth hook,
-- the JSON 404 for anything else under /api, and the 502/504 answers when
-- Runtime is unreachable or slow.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local seed = require "spec.seed_helpers"

local api = seed.api

-- Nothing behind the gateway may show in a 404 of the gateway's own.
local function names_nothing_internal(raw, mg)
    local low = raw:lower()
    for _, word in ipairs({ "runtime", "demo", "127.0.0.1", "upstream", tostring(mg.rt_port), "9001" }) do
        if low:find(word, 1, true) then
            return false, word
        end
    end
    return true
end

describe("seed routes", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-routes" })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    describe("the page", function()
        it("serves public/index.html at / and its script and style", function()
            local st, h, body = helpers.http(mg.port, "GET", "/")
            assert.equal(200, st)
            assert.matches("text/html", h["content-type"], 1, true)
            assert.truthy(body:find("/app.js", 1, true))
            local st2, h2, js = helpers.http(mg.port, "GET", "/app.js")
            assert.equal(200, st2)
            assert.matches("javascript", h2["content-type"], 1, true)
            assert.truthy(js:find("/api/execution/", 1, true))
            local st3, h3 = helpers.http(mg.port, "GET", "/app.css")
            assert.equal(200, st3)
            assert.matches("text/css", h3["content-type"], 1, true)
        end)
    end)

    describe("anything else under /api", function()
        it("is a JSON 404 naming no internal service", function()
            for _, path in ipairs({ "/api/nope", "/api/execution/x/nope", "/api/execution", "/api/v2/x?y=1",
                                    "/api/sessions" }) do
                local st, body, h, raw = api(mg.port, "GET", path)
                assert.equal(404, st, path)
                assert.matches("application/json", h["content-type"], 1, true)
                assert.equal("not_found", body.error, path)
                local ok, word = names_nothing_internal(raw, mg)
                assert.truthy(ok, path .. " names '" .. tostring(word) .. "': " .. raw)
            end
        end)

        it("answers a WebSocket upgrade to an unknown /api path with the JSON 404, not a 101", function()
            local c, res = ws.handshake(mg.port, "/api/nowhere/stream?tenant_id=t1",
                { headers = { "Authorization: Bearer " .. seed.TOKEN.t1 } })
            assert.truthy(c, tostring(res))
            assert.equal(404, res.status)
            assert.equal("not_found", helpers.json.decode(res.body).error)
            c:close()
            -- a query token is for a WebSocket route only: here it is no token at all
            c, res = seed.ws_open(mg.port, "/api/nowhere/stream?tenant_id=t1", "t1")
            assert.truthy(c, tostring(res))
            assert.equal(401, res.status)
            c:close()
        end)

        it("answers a known path with the wrong method with a JSON 405 and Allow", function()
            local st, body, h = api(mg.port, "GET", "/api/session")
            assert.equal(405, st)
            assert.equal("POST", h["allow"])
            assert.equal("method_not_allowed", body.error)
            st = api(mg.port, "DELETE", "/api/execution/x/status?tenant_id=t1")
            assert.equal(405, st)
        end)
    end)

    describe("sessions", function()
        it("creates, gets and upgrades a session", function()
            local st, s = api(mg.port, "POST", "/api/session", "t1", {})
            assert.equal(201, st)
            assert.equal("t1", s.tenant_id) -- the token's tenant
            assert.equal("anonymous", s.kind)
            local st2, g = api(mg.port, "GET", "/api/session/" .. s.session_id)
            assert.equal(200, st2)
            assert.equal(s.session_id, g.session_id)
            local st3, u = api(mg.port, "POST", "/api/session/" .. s.session_id .. "/upgrade", "t1",
                { user_id = "alice" })
            assert.equal(200, st3)
            assert.equal("user", u.kind)
            assert.equal("alice", u.user_id)
            assert.equal(s.session_id, u.previous_session_id)
            local st4, g2 = api(mg.port, "GET", "/api/session/" .. u.session_id .. "?tenant_id=t1")
            assert.equal(200, st4)
            assert.equal("alice", g2.user_id)
        end)

        it("passes Runtime's 404 for an unknown session, and checks its input", function()
            local st, b = api(mg.port, "GET", "/api/session/se-nope")
            assert.equal(404, st)
            assert.equal("not_found", b.error)
            local st2, s = api(mg.port, "POST", "/api/session", "t1", {})
            assert.equal(201, st2)
            local st3, b3 = api(mg.port, "POST", "/api/session/" .. s.session_id .. "/upgrade", "t1", {})
            assert.equal(400, st3)
            assert.equal("user_id", b3.parameter)
            local st4, b4 = api(mg.port, "POST", "/api/session", "t1", "{not json")
            assert.equal(400, st4)
            assert.equal("invalid_body", b4.error)
            local st5, b5 = api(mg.port, "POST", "/api/session", "admin", {})
            assert.equal(400, st5) -- an operator's token names no tenant: the body must
            assert.equal("tenant_id", b5.parameter)
        end)
    end)

    describe("intents and artifacts", function()
        it("submits an intent and links its status and stream through the gateway", function()
            local id, session, i = seed.run_intent(mg.port, "t1", "t1", { duration = 30 })
            assert.matches("^ex%-", id)
            assert.equal("pending", i.status)
            assert.equal("/api/execution/" .. id .. "/stream?tenant_id=t1", i.links.stream)
            assert.equal("/api/execution/" .. id .. "/status?tenant_id=t1", i.links.status)
            -- the demo Runtime keeps the list in a shared dict: every worker
            -- (each curl may reach either) answers the same
            for _ = 1, 6 do
                local st, p = api(mg.port, "GET", "/api/intent/pending?session_id=" .. session)
                assert.equal(200, st)
                assert.equal(1, #p.intents)
                assert.equal(id, p.intents[1].execution_id)
                assert.equal("spec intent", p.intents[1].intent)
                assert.equal(session, p.intents[1].session_id)
            end
            local st2, all = api(mg.port, "GET", "/api/intent/pending", "t1")
            assert.equal(200, st2)
            assert.truthy(#all.intents >= 1)
            local st3, none = api(mg.port, "GET", "/api/intent/pending", "t2")
            assert.equal(200, st3)
            for _, e in ipairs(none.intents) do
                assert.are_not.equal(id, e.execution_id)
            end
        end)

        it("checks the intent's input", function()
            local st, s = api(mg.port, "POST", "/api/session", "t1", {})
            assert.equal(201, st)
            local st2, b2 = api(mg.port, "POST", "/api/intent", "t1", { intent = "x" })
            assert.equal(400, st2)
            assert.equal("session_id", b2.parameter)
            local st3, b3 = api(mg.port, "POST", "/api/intent", "t1", { session_id = s.session_id })
            assert.equal(400, st3)
            assert.equal("intent", b3.parameter)
            local st4, b4 = api(mg.port, "POST", "/api/intent", "t1",
                { session_id = "se-1-00-t9", intent = "x" })
            assert.equal(403, st4) -- Runtime: that session is another tenant's
            assert.equal("tenant_mismatch", b4.error)
        end)

        it("lists and resolves the artifact of a completed execution", function()
            local id = seed.run_intent(mg.port, "t1", "t1", { duration = 0.5 })
            local st, l = api(mg.port, "GET", "/api/execution/" .. id .. "/artifacts")
            assert.equal(200, st)
            assert.same({}, l.artifacts) -- not yet
            helpers.sleep(0.7)
            st, l = api(mg.port, "GET", "/api/execution/" .. id .. "/artifacts?tenant_id=t1")
            assert.equal(200, st)
            assert.equal(1, #l.artifacts)
            local aid = l.artifacts[1].artifact_id
            local st2, a = api(mg.port, "GET", "/api/execution/" .. id .. "/artifacts/" .. aid)
            assert.equal(200, st2)
            assert.equal("summary.md", a.name)
            assert.truthy(a.content:find(id, 1, true))
            -- an artifact of another execution is not found through this one
            local other = seed.run_intent(mg.port, "t1", "t1", { duration = 0.5 })
            local st3 = api(mg.port, "GET", "/api/execution/" .. other .. "/artifacts/" .. aid)
            assert.equal(404, st3)
        end)

        it("follows the status to completed", function()
            local id = seed.run_intent(mg.port, "t1", "t1", { duration = 0.5 })
            local st, b = api(mg.port, "GET", "/api/execution/" .. id .. "/status?tenant_id=t1&include_visuals=true")
            assert.equal(200, st)
            assert.equal("pending", b.status)
            assert.equal("progress", b.visuals[1].type)
            helpers.sleep(0.7)
            st, b = api(mg.port, "GET", "/api/execution/" .. id .. "/status?tenant_id=t1&include_artifacts=true")
            assert.equal(200, st)
            assert.equal("completed", b.status)
            assert.equal(1, #b.artifacts)
        end)
    end)

    describe("auth and admin areas", function()
        it("tells the caller who it is", function()
            local st, b = api(mg.port, "GET", "/api/auth/whoami", "t2")
            assert.equal(200, st)
            assert.same({ subject = "demo-user-2", tenant_id = "t2", admin = false }, b)
            local st2, b2 = api(mg.port, "GET", "/api/auth/whoami", "admin")
            assert.equal(200, st2)
            assert.equal(true, b2.admin)
            assert.equal(helpers.json.null, b2.tenant_id)
        end)

        it("passes other /api/auth paths to Runtime", function()
            local st, b = api(mg.port, "GET", "/api/auth/providers", "t1")
            assert.equal(404, st) -- the demo Runtime has none
            assert.equal("not_found", b.error)
        end)

        it("serves /api/admin to admin tokens only", function()
            local st, b = api(mg.port, "GET", "/api/admin/status", "admin")
            assert.equal(200, st)
            assert.equal(200, b.runtime.status)
            assert.is_number(b.streams.pollers)
            local st2, b2 = api(mg.port, "GET", "/api/admin/status", "t1")
            assert.equal(403, st2)
            assert.equal("forbidden", b2.error)
            assert.equal(403, (api(mg.port, "GET", "/api/admin/anything", "t1")))
        end)
    end)

    describe("Runtime's own API", function()
        it("proxies /api/runtime and /api/realms after the auth hook", function()
            local st, b = api(mg.port, "GET", "/api/runtime/info", "t1")
            assert.equal(200, st)
            assert.equal("v1", b.contract)
            assert.equal(401, (api(mg.port, "GET", "/api/runtime/info", false)))
            -- the hook tells Runtime the caller's tenant: t1 sees its realm only
            local st2, r = api(mg.port, "GET", "/api/realms", "t1")
            assert.equal(200, st2)
            assert.equal(1, #r.realms)
            assert.equal("t1", r.realms[1].realm_id)
            local _, all = api(mg.port, "GET", "/api/realms", "admin")
            assert.equal(2, #all.realms)
            assert.equal(200, (api(mg.port, "GET", "/api/realms/t1", "t1")))
        end)
    end)
end)

describe("seed routes when Runtime fails", function()
    local dead, slow, rt

    lazy_setup(function()
        rt = seed.start_test_runtime()
        slow = seed.start_gateway({ name = "seed-routes-slow", workers = 1,
            runtime = "http://127.0.0.1:" .. rt.port, config = { ["runtime.timeout"] = 1 } })
        dead = seed.start_gateway({ name = "seed-routes-dead", workers = 1,
            runtime = "http://127.0.0.1:" .. helpers.free_port() })
    end)

    lazy_teardown(function()
        for _, m in ipairs({ dead, slow, rt }) do
            m:stop()
        end
        seed.cleanup()
    end)

    it("answers 502 JSON when Runtime is unreachable", function()
        for _, req in ipairs({
            { "POST", "/api/session", {} },
            { "GET", "/api/execution/x/status?tenant_id=t1" },
            { "GET", "/api/intent/pending" },
        }) do
            local st, b, h, raw = api(dead.port, req[1], req[2], "t1", req[3])
            assert.equal(502, st, req[2])
            assert.matches("application/json", h["content-type"], 1, true)
            assert.equal("runtime_unavailable", b.error, raw)
            assert.is_string(b.request_id)
        end
    end)

    it("answers 502 on proxied Runtime routes when Runtime is unreachable", function()
        local st = api(dead.port, "GET", "/api/runtime/info", "t1")
        assert.equal(502, st)
    end)

    it("answers 504 JSON when Runtime is slower than runtime.timeout", function()
        local t0 = helpers.now()
        local st, b = api(slow.port, "GET", "/api/execution/slow-1/status?tenant_id=t1", "t1")
        assert.equal(504, st)
        assert.equal("runtime_timeout", b.error)
        assert.truthy(helpers.now() - t0 < 2.5)
    end)

    it("answers 502 JSON when Runtime answers something other than JSON", function()
        local st, b = api(slow.port, "GET", "/api/execution/broken-1/status?tenant_id=t1", "t1")
        assert.equal(502, st)
        assert.equal("runtime_bad_response", b.error)
    end)

    it("keeps the WebSocket routes' failures as HTTP answers before any 101", function()
        local c, res = ws.handshake(dead.port, "/api/runtime/agent?tenant_id=t1&token=demo-token")
        assert.truthy(c, tostring(res))
        assert.equal(502, res.status)
        c:close()
    end)
end)
