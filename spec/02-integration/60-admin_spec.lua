-- The admin listener (docs/operations.md): health and readiness, the token,
-- the JSON API (/routes, /upstreams, /generations, /websockets, /config,
-- /reloads), POST /reload as SIGHUP, health_path on the main listener,
-- moongate -T, and broken admin settings refused at load.
local helpers = require "spec.helpers"
local json = helpers.json
local shq = helpers.shq

local TOKEN = "test-only-admin-token-1234"
local AUTH = { "Authorization: Bearer " .. TOKEN }

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  admin = { listen = "127.0.0.1:$ADMIN", token = "$TOKEN" },
  health_path = "/ping",
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

local ROUTES = [[
local moongate = require "moongate"
return {
  { path = "/hello", handler = function(req, res) return 200, "hello\n" end },
  { path = "/slow", handler = function() moongate.sleep(2) return 200, "slow\n" end },
  { prefix = "/up", upstream = "up", strip_prefix = true, plugins = { ["request-id"] = {} } },
}
]]

local function get(port, path, headers, method)
    return helpers.http(port, method or "GET", path,
        { headers = headers or { "Connection: close" }, timeout = 10 })
end

local function with_close(h)
    local t = { "Connection: close" }
    for _, v in ipairs(h or {}) do t[#t + 1] = v end
    return t
end

local function api(port, path, method)
    local st, h, body = get(port, path, with_close(AUTH), method)
    local ok, doc = pcall(json.decode, body)
    return st, ok and doc or nil, body, h
end

describe("admin listener", function()
    local up, mg, admin

    lazy_setup(function()
        up = helpers.start_upstream()
        admin = helpers.free_port()
        mg = helpers.start_moongate({ name = "admin", conf = CONF, routes = ROUTES, upstream = up,
            workers = 1, vars = { ADMIN = admin, TOKEN = TOKEN } })
        assert(helpers.wait_until(function() return helpers.port_open(admin) end, 5),
            "the admin port did not open")
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("answers /healthz, /readyz and /metrics without a token", function()
        local st, _, body = get(admin, "/healthz")
        assert.equal(200, st)
        assert.equal("ok", json.decode(body).status)
        st, _, body = get(admin, "/readyz")
        assert.equal(200, st, body)
        assert.equal("ready", json.decode(body).status)
        local h
        st, h, body = get(admin, "/metrics")
        assert.equal(200, st)
        assert.matches("^text/plain; version=0.0.4", h["content-type"])
        assert.matches("moongate_", body)
    end)

    it("needs the token for everything else", function()
        for _, p in ipairs({ "/routes", "/upstreams", "/generations", "/websockets", "/config",
                             "/reloads" }) do
            local st, h = get(admin, p)
            assert.equal(401, st, p)
            assert.matches("^Bearer", h["www-authenticate"])
            st = get(admin, p, with_close({ "Authorization: Bearer wrong-token-xxxxxxxxxx" }))
            assert.equal(401, st, p)
            st = get(admin, p, with_close({ "Authorization: Bearer " .. TOKEN .. "x" }))
            assert.equal(401, st, p)
            st = get(admin, p, with_close(AUTH))
            assert.equal(200, st, p)
        end
        local st = get(admin, "/reload", nil, "POST")
        assert.equal(401, st)
    end)

    it("never routes: the admin port has no routes, the main port no admin API", function()
        local st, _, body = get(admin, "/hello")
        assert.equal(404, st)
        assert.matches("no such admin endpoint", body)
        st = get(admin, "/healthz", nil, "DELETE")
        assert.equal(405, st)
        st, _, body = get(mg.port, "/healthz")
        assert.equal(404, st)
        assert.matches("no route", body)
        st, _, body = get(mg.port, "/hello")
        assert.equal(200, st)
        assert.equal("hello\n", body)
    end)

    it("answers readiness at health_path on the main listener", function()
        local st, _, body = get(mg.port, "/ping")
        assert.equal(200, st, body)
        assert.equal("ready", json.decode(body).status)
    end)

    it("GET /routes: file:line, target and plugins of each route", function()
        local st, doc, body = api(admin, "/routes")
        assert.equal(200, st, body)
        local by = {}
        for _, r in ipairs(doc) do by[r.rule] = r end
        assert.truthy(by["/hello"], body)
        assert.matches("routes%.lua:3$", by["/hello"].at)
        assert.equal("handler", by["/hello"].target)
        assert.matches("routes%.lua:5$", by["/up"].at)
        assert.equal("upstream up", by["/up"].target)
        assert.same({ "request-id" }, by["/up"].plugins)
        assert.same({}, by["/hello"].plugins)
        -- hits: requests answered on the route (the metrics counters)
        local h0 = by["/hello"].hits
        for _ = 1, 3 do assert.equal(200, (get(mg.port, "/hello"))) end
        st, doc, body = api(admin, "/routes")
        assert.equal(200, st, body)
        by = {}
        for _, r in ipairs(doc) do by[r.rule] = r end
        assert.equal(h0 + 3, by["/hello"].hits, body)
    end)

    it("GET /upstreams: servers and their health", function()
        local st, doc, body = api(admin, "/upstreams")
        assert.equal(200, st, body)
        assert.equal("up", doc.upstreams[1].name)
        local s = doc.upstreams[1].servers[1]
        assert.equal("127.0.0.1:" .. up.port, s.address)
        assert.is_true(s.healthy)
        assert.equal(200, (get(mg.port, "/up/x")))
        st, doc, body = api(admin, "/upstreams")
        assert.equal(200, st, body)
        local u = doc.upstreams[1]
        assert.truthy(u.requests >= 1, body)
        assert.same({ connect = 0, timeout = 0, bad_response = 0 }, u.errors)
        assert.truthy(u.pool.open >= u.pool.idle and u.pool.idle >= 0, body)
    end)

    it("GET /config: the effective conf, where each value came from, secrets hidden", function()
        local st, doc, body = api(admin, "/config")
        assert.equal(200, st, body)
        assert.is_nil(body:find(TOKEN, 1, true), "the token is shown")
        assert.equal("***", doc.config.admin.token)
        assert.equal(mg.port, doc.config.listen[1].port)
        assert.equal("file", doc.sources.listen)
        assert.equal("default", doc.sources.timeouts)
        assert.equal("file", doc.sources.admin.token)
    end)

    it("GET /generations and /websockets", function()
        local st, doc, body = api(admin, "/generations")
        assert.equal(200, st, body)
        assert.equal("serving", doc.generations[1].state)
        assert.is_true(doc.generations[1].loaded_at > 1.6e9)
        st, doc, body = api(admin, "/websockets")
        assert.equal(200, st, body)
        assert.equal(0, doc.open)
        assert.same({}, doc.sockets)
    end)

    it("GET / serves the dashboard page", function()
        local st, h, body = get(admin, "/")
        assert.equal(200, st)
        assert.matches("^text/html", h["content-type"])
        assert.matches("<title>moongate", body)
    end)

    it("POST /reload switches as SIGHUP does and answers the diff, or 422 with the reason",
        function()
        mg:write_routes(ROUTES:gsub("return {\n", 'return {\n  { path = "/new", handler = ' ..
            'function() return 200, "new\\n" end },\n', 1))
        local st, doc, body = api(admin, "/reload", "POST")
        assert.equal(200, st, body)
        assert.equal("ok", doc.result)
        assert.equal(2, doc.generation)
        assert.matches("/new", table.concat(doc.added, "\n"))
        assert.same({}, doc.removed)
        local st2, _, b2 = get(mg.port, "/new")
        assert.equal(200, st2)
        assert.equal("new\n", b2)

        mg:write_routes("return {\n  { path = '/x', handler = 42 },\n}\n")
        st, doc, body = api(admin, "/reload", "POST")
        assert.equal(422, st, body)
        assert.equal("refused", doc.result)
        assert.matches("routes%.lua:2:", doc.error)
        st2 = get(mg.port, "/new") -- generation 2 keeps serving
        assert.equal(200, st2)
        assert.matches("reload refused", mg:log())

        -- workers = 2 only takes effect on a restart: the answer says so
        mg:write_routes(ROUTES)
        mg:write_conf(CONF:gsub("workers = %$WORKERS", "workers = 2"))
        st, doc, body = api(admin, "/reload", "POST")
        assert.equal(200, st, body)
        assert.matches("^workers = 2 needs a restart", doc.restart_needed[1])
        assert.matches("needs a restart", mg:log())

        st, doc, body = api(admin, "/reloads")
        assert.equal(200, st, body)
        assert.equal(3, doc.reloads)
        assert.equal(200, doc.recent[1].status)
        assert.equal(422, doc.recent[2].status)
        assert.matches("routes%.lua:2:", doc.recent[2].answer.error)
        assert.equal(200, doc.recent[3].status)
    end)

    it("readyz: 503 when an upstream has no healthy server", function()
        local dead = helpers.free_port()
        mg:write_conf(CONF:gsub("%$UPSTREAM", "http://127.0.0.1:" .. dead)
            :gsub("servers = ", "max_fails = 1, fail_timeout = 60, servers = "))
        local st, _, body = api(admin, "/reload", "POST")
        assert.equal(200, st, body)
        st = get(mg.port, "/up/x")
        assert.equal(502, st)
        st, _, body = get(admin, "/readyz")
        assert.equal(503, st, body)
        assert.matches("upstream up has no healthy server", body)
        local _, doc = api(admin, "/upstreams")
        assert.is_false(doc.upstreams[1].servers[1].healthy)
    end)

    it("GET /generations: a superseded generation drains while a request holds it, then goes",
        function()
        local function gens()
            local st, doc, body = api(admin, "/generations")
            assert.equal(200, st, body)
            local by = {}
            for _, g in ipairs(doc.generations) do by[g.id] = g end
            return by, doc
        end
        local c = assert(helpers.connect(mg.port, 10))
        finally(function() c:close() end)
        -- a head not yet whole: the request began on the serving generation
        assert(c:send("GET /hello HTTP/1.1\r\nHost: x\r\n"))
        local _, d0 = gens()
        local old = d0.generations[1].id
        assert.truthy(helpers.wait_until(function()
            return gens()[old].in_use >= 2 -- the partial one, and this
        end, 5), "the partial request did not start")
        mg:write_routes(ROUTES .. "\n-- again\n")
        local st, doc, body = api(admin, "/reload", "POST")
        assert.equal(200, st, body)
        local by, d1 = gens()
        assert.equal("serving", by[doc.generation].state)
        assert.truthy(by[old], "generation " .. old .. " not listed: " .. json.encode(d1))
        assert.equal("draining", by[old].state)
        assert.equal(1, by[old].in_use)
        assert.equal(0, by[old].websockets)
        assert.equal(old, d1.this_worker_draining[1].id)
        -- the request ends: the generation is freed and leaves the list
        assert(c:send("\r\n"))
        local res = assert(helpers.read_response(c))
        assert.equal(200, res.status)
        assert.equal("hello\n", res.body)
        assert.truthy(helpers.wait_until(function()
            local b, d = gens()
            return b[old] == nil and #d.this_worker_draining == 0
        end, 5), json.encode(select(2, gens())))
    end)

    it("readyz: 503 while draining on SIGTERM", function()
        -- one worker: the slow request holds the drain open
        mg:write_conf(CONF)
        local st, _, body = api(admin, "/reload", "POST")
        assert.equal(200, st, body)
        local slow = helpers.http_async(mg.port, "GET", "/slow", { timeout = 10 })
        assert.truthy(helpers.wait_until(function()
            local _, doc = api(admin, "/generations")
            return doc and doc.requests >= 2 -- this one and the slow one
        end, 5), "the slow request did not start")
        mg:signal("TERM")
        local seen
        assert.truthy(helpers.wait_until(function()
            local s, _, b = get(admin, "/readyz")
            seen = s .. " " .. tostring(b)
            return s == 503 and b:find("draining", 1, true)
        end, 5), "readyz during the drain: " .. tostring(seen))
        local code, sbody = slow:wait(10)
        assert.equal(200, code)
        assert.equal("slow\n", sbody)
        assert.equal(0, mg:wait_exit(10))
    end)
end)

describe("admin from the environment", function()
    it("MOONGATE_ADMIN_LISTEN and MOONGATE_ADMIN_TOKEN; no token: health only", function()
        local admin = helpers.free_port()
        local mg = helpers.start_moongate({ name = "admin-env", workers = 1,
            env = { MOONGATE_ADMIN_LISTEN = "127.0.0.1:" .. admin } })
        assert(helpers.wait_until(function() return helpers.port_open(admin) end, 5))
        assert.equal(200, (get(admin, "/healthz")))
        local st, _, body = get(admin, "/routes", with_close(AUTH))
        assert.equal(403, st)
        assert.matches("no admin token configured", body)
        mg:stop()

        admin = helpers.free_port()
        mg = helpers.start_moongate({ name = "admin-env2", workers = 1,
            env = { MOONGATE_ADMIN_LISTEN = "127.0.0.1:" .. admin, MOONGATE_ADMIN_TOKEN = TOKEN } })
        assert(helpers.wait_until(function() return helpers.port_open(admin) end, 5))
        local doc
        st, doc, body = api(admin, "/config")
        assert.equal(200, st, body)
        assert.equal("environment", doc.sources.admin.listen)
        assert.equal("environment", doc.sources.admin.token)
        assert.equal(admin, doc.config.admin.listen[1].port)
        assert.equal("***", doc.config.admin.token)
        assert.equal(0, mg:stop())
        helpers.cleanup()
    end)
end)

describe("moongate -T and broken admin settings", function()
    local function run(conf, flag, env)
        local dir = helpers.tmpdir("admin-cli")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/conf/moongate.lua", conf)
        helpers.write_file(dir .. "/scripts/routes.lua", ROUTES)
        return helpers.sh(string.format("cd %s && %s timeout 20 %s %s -c %s 2>&1", shq(dir),
            env or "", shq(helpers.bin), flag, shq(dir .. "/conf/moongate.lua")))
    end
    local function conf(admin_line)
        return "return {\n  listen = \"127.0.0.1:18080\",\n  workers = 1,\n" .. admin_line ..
            "\n  upstreams = { up = { servers = { \"http://127.0.0.1:9\" } } },\n}\n"
    end

    it("-T prints the effective conf and the routes as JSON, secrets hidden", function()
        local out, rc = run(conf('  admin = { listen = "127.0.0.1:19901", token = "' .. TOKEN ..
            '" },'), "-T", "MOONGATE_WORKERS=3")
        assert.equal(0, rc, out)
        assert.is_nil(out:find(TOKEN, 1, true))
        local doc = json.decode(out)
        assert.equal("***", doc.config.admin.token)
        assert.equal(3, doc.config.workers)
        assert.equal("environment", doc.sources.workers)
        assert.equal("file", doc.sources.listen)
        assert.equal(3, #doc.routes)
        local at = {}
        for _, r in ipairs(doc.routes) do at[r.rule] = r.at end
        assert.matches("routes%.lua:3$", at["/hello"])
    end)

    it("-t names the admin listener", function()
        local out, rc = run(conf('  admin = { listen = "127.0.0.1:19901" },'), "-t")
        assert.equal(0, rc, out)
        assert.matches("admin listener 127%.0%.0%.1:19901 %(no token%)", out)
    end)

    it("refuses broken admin settings with file:line: reason", function()
        local out, rc = run(conf('  admin = { listen = "nope" },'), "-t")
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: admin%.listen", out)
        out, rc = run(conf('  admin = { listen = "127.0.0.1:18080" },'), "-t")
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: admin%.listen: 127%.0%.0%.1:18080 is already used by " ..
            "listen", out)
        out, rc = run(conf('  admin = { listen = "127.0.0.1:19901", token = "short" },'), "-t")
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: admin%.token", out)
        out, rc = run(conf('  admin = { listne = "127.0.0.1:19901" },'), "-t")
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: admin%.listne", out)
        out, rc = run(conf('  health_path = "ping",'), "-t")
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: health_path", out)
        out, rc = run(conf(""), "-t", "MOONGATE_ADMIN_LISTEN=bad:port:x")
        assert.equal(1, rc, out)
        assert.matches("MOONGATE_ADMIN_LISTEN", out)
    end)
end)
