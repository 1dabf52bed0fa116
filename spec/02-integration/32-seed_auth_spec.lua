-- The shipped auth hook (scripts/auth.lua + scripts/auth_config.lua) that
-- every /api route runs first: bearer tokens (header; ?token= on WebSocket
-- upgrades only), 401/403 as JSON, tenant binding (query, path, JSON body),
-- headers to upstreams that a client cannot forge, the Runtime verifier, and
-- an operator's edit picked up by SIGHUP (a broken edit refused).
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api
local json = helpers.json

describe("seed auth hook", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-auth" })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    local function is_401(st, b, h, why)
        assert.equal(401, st, why)
        assert.matches("application/json", h["content-type"], 1, true)
        assert.equal("unauthorized", b.error, why)
        assert.matches("^Bearer", h["www-authenticate"])
    end

    it("answers 401 JSON without a token, on every kind of /api route", function()
        for _, path in ipairs({ "/api/session/x", "/api/execution/x/status?tenant_id=t1", "/api/intent/pending",
                                "/api/runtime/info", "/api/realms", "/api/nope", "/api/admin/status",
                                "/api/auth/whoami", "/api/ws/x" }) do
            local st, b, h = api(mg.port, "GET", path, false)
            is_401(st, b, h, path)
        end
    end)

    it("answers 401 JSON for an unknown token or a malformed header", function()
        local st, b, h = api(mg.port, "GET", "/api/auth/whoami", "no-such-token")
        is_401(st, b, h, "unknown")
        assert.matches('error="invalid_token"', h["www-authenticate"], 1, true)
        for _, v in ipairs({ "Basic ZGVtbzpkZW1v", "Bearer", "Bearer a b", "demo-token" }) do
            local st2, b2, h2 = api(mg.port, "GET", "/api/auth/whoami", false, nil, { Authorization = v })
            is_401(st2, b2, h2, v)
        end
    end)

    it("takes ?token= on WebSocket upgrades only", function()
        local st, b, h = api(mg.port, "GET", "/api/auth/whoami?token=demo-token", false)
        is_401(st, b, h, "query token on REST")
    end)

    it("lets the page through without a token", function()
        assert.equal(200, (helpers.http(mg.port, "GET", "/")))
    end)

    it("answers 403 JSON when a tenant-bound token names another tenant", function()
        local cases = {
            { "GET", "/api/execution/x/status?tenant_id=t2" },
            { "GET", "/api/intent/pending?tenant_id=t2" },
            { "GET", "/api/session/x?tenant_id=t2" },
            { "GET", "/api/realms/t2" },
            { "GET", "/api/runtime/info?tenant_id=t2" },
            { "POST", "/api/session", { tenant_id = "t2" } },
            { "POST", "/api/intent", { tenant_id = "t2", session_id = "x", intent = "y" } },
            { "POST", "/api/session/x/upgrade", { tenant_id = "t2", user_id = "u" } },
        }
        for _, c in ipairs(cases) do
            local st, b, h = api(mg.port, c[1], c[2], "t1", c[3])
            assert.equal(403, st, c[1] .. " " .. c[2])
            assert.matches("application/json", h["content-type"], 1, true)
            assert.equal("forbidden", b.error)
            assert.equal("t2", b.tenant_id)
        end
    end)

    it("lets an operator's token (no tenant binding) touch any tenant", function()
        local id = seed.run_intent(mg.port, "t2", "t2", { duration = 30 })
        local st, b = api(mg.port, "GET", "/api/execution/" .. id .. "/status?tenant_id=t2", "admin")
        assert.equal(200, st)
        assert.equal("t2", b.tenant_id)
        -- and Runtime still guards its own data: t1's token naming t1 for t2's execution
        local st2, b2 = api(mg.port, "GET", "/api/execution/" .. id .. "/status?tenant_id=t1", "t1")
        assert.equal(403, st2)
        assert.equal("tenant_mismatch", b2.error)
    end)

    it("tells upstreams who called, and a client cannot forge it", function()
        local st, b = api(mg.port, "GET", "/api/realms", "t1", nil, { ["X-Auth-Tenant"] = "*" })
        assert.equal(200, st)
        assert.equal(1, #b.realms)
        assert.equal("t1", b.realms[1].realm_id)
    end)

    describe("on WebSockets", function()
        it("answers 401 JSON before any 101 without a token or with a bad one", function()
            for _, who in ipairs({ false, "nope" }) do
                local c, res = seed.ws_open(mg.port, seed.stream_path("ex-1", "t1"), who)
                assert.equal(401, res.status)
                assert.equal("unauthorized", json.decode(res.body).error)
                c:close()
                c, res = seed.ws_open(mg.port, "/api/runtime/agent?tenant_id=t1", who)
                assert.equal(401, res.status)
                c:close()
            end
        end)

        it("accepts the token in the query or in Authorization", function()
            local c, res = seed.ws_open(mg.port, seed.stream_path("ex-nope", "t1"), "t1")
            assert.equal(101, res.status)
            c:close()
            local ws = require "spec.ws_helpers"
            local c2, res2 = ws.handshake(mg.port, seed.stream_path("ex-nope", "t1"),
                { headers = { "Authorization: Bearer demo-token" } })
            assert.equal(101, res2.status)
            c2:close()
        end)

        it("answers 403 JSON before any 101 for another tenant", function()
            local c, res = seed.ws_open(mg.port, seed.stream_path("ex-1", "t2"), "t1")
            assert.equal(403, res.status)
            assert.equal("forbidden", json.decode(res.body).error)
            c:close()
            c, res = seed.ws_open(mg.port, "/api/runtime/agent?tenant_id=t2", "t1")
            assert.equal(403, res.status)
            c:close()
        end)
    end)
end)

describe("seed auth hook edited by an operator", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-auth-reload", workers = 2 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    local shipped = helpers.read_file(helpers.root .. "/scripts/auth_config.lua")

    it("picks up a new token table on SIGHUP", function()
        assert.equal(401, (api(mg.port, "GET", "/api/auth/whoami", "brand-new-token")))
        local edited = shipped:gsub('(%["demo%-token"%] = { subject = "demo%-user", tenant_id = "t1" },)',
            '%1\n    ["brand-new-token"] = { subject = "ops-added", tenant_id = "t2" },')
        assert.are_not.equal(shipped, edited)
        mg:write_script("auth_config.lua", edited)
        mg:reload(0.8)
        local st, b = api(mg.port, "GET", "/api/auth/whoami", "brand-new-token")
        assert.equal(200, st)
        assert.equal("ops-added", b.subject)
        assert.equal(403, (api(mg.port, "GET", "/api/intent/pending?tenant_id=t1", "brand-new-token")))
    end)

    it("refuses a broken edit and keeps serving with the last good table", function()
        mg:write_script("auth_config.lua", shipped:gsub("verifier = ", "verifier = = "))
        mg:reload(0.8)
        assert.truthy(mg:log():find("auth_config.lua", 1, true), "the refused load names the file")
        local st = api(mg.port, "GET", "/api/auth/whoami", "brand-new-token")
        assert.equal(200, st)
        assert.truthy(helpers.alive(mg.pid))
    end)

    it("switches to the Runtime's introspection with verifier = \"runtime\"", function()
        local edited = shipped:gsub('verifier = "static"', 'verifier = "runtime"')
            :gsub('%["demo%-token"%] = [^\n]*\n', "")
        mg:write_script("auth_config.lua", edited)
        mg:reload(0.8)
        -- demo-token is gone from the static table, but the demo Runtime knows it
        local st, b = api(mg.port, "GET", "/api/auth/whoami", "t1")
        assert.equal(200, st)
        assert.equal("t1", b.tenant_id)
        assert.equal(401, (api(mg.port, "GET", "/api/auth/whoami", "brand-new-token")))
        assert.equal(403, (api(mg.port, "GET", "/api/intent/pending?tenant_id=t2", "t1")))
    end)
end)
