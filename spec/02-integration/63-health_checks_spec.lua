-- Active health checks (issue 13): per upstream `health_check = { path,
-- interval, timeout, expect, rise, fall }`, run by every worker on its own
-- connections; a server marked down gets no traffic until it passes `rise`
-- checks; a status other than `expect` fails; with every server down the
-- client gets 503; passive ejections (max_fails) with a health check last
-- until the server rises; a broken health_check is refused at load with
-- `file: reason`, and on reload the old generation keeps serving.
local helpers = require "spec.helpers"
local json = helpers.json
local tls = require "spec.tls_helpers"

local fmt = string.format
local shq = helpers.shq

local TLS_PY = helpers.root .. "/spec/fixtures/tls_upstream.py"

-- A test CA and a server certificate for 127.0.0.1 (spec/tls_helpers.lua),
-- made now under spec/out/ (test-only keys, never committed).
local function make_certs()
    local d = helpers.tmpdir("hc-certs")
    tls.cert(tls.ca(d, "moongate-test-hc-ca"), { out = d .. "/srv", eku = "serverAuth" })
    return d
end

-- tls_upstream.py serving srv.pem; helpers.cleanup() stops it.
local function start_tls(d)
    return helpers.start_upstream({ script = TLS_PY, args = fmt("--cert %s --key %s",
        shq(d .. "/srv.pem"), shq(d .. "/srv.key")) })
end

local function count(s, needle)
    local n, i = 0, 1
    while true do
        local a, b = s:find(needle, i, true)
        if not a then
            return n
        end
        n, i = n + 1, b + 1
    end
end

-- {port = n} as text, for messages
local function show(seen)
    local t = {}
    for port, n in pairs(seen) do
        t[#t + 1] = port .. "=" .. n
    end
    table.sort(t)
    return table.concat(t, " ")
end

-- The server_port the echo fixture reports for n proxied requests.
local function ports_seen(mg, path, n)
    local seen = {}
    for _ = 1, n do
        local st, _, body = helpers.http(mg.port, "GET", path)
        assert.are.equal(200, st, body)
        local j = json.decode(body)
        seen[j.server_port] = (seen[j.server_port] or 0) + 1
    end
    return seen
end

local function heads_of(up, what)
    local n = 0
    for _, h in ipairs(helpers.upstream_log(up).heads) do
        if h == what then
            n = n + 1
        end
    end
    return n
end

describe("active health checks", function()
    local a, b, mg

    after_each(function()
        if mg then
            mg:stop()
            mg = nil
        end
        helpers.cleanup()
    end)

    it("marks a stopped server down in every worker, sends it nothing, and brings it back after rise passes",
        function()
        a = helpers.start_upstream()
        b = helpers.start_upstream()
        local admin = helpers.free_port()
        mg = helpers.start_moongate({
            workers = 2,
            vars = { A = a.port, B = b.port, ADMIN = admin },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  admin = { listen = "127.0.0.1:$ADMIN" },
  upstreams = {
    up = { servers = { "http://127.0.0.1:$A", "http://127.0.0.1:$B" },
           health_check = { path = "/hc", interval = 0.1, timeout = 0.5, rise = 2, fall = 2 } },
  },
}
]],
            routes = [[return { { prefix = "/", upstream = "up" } }]],
        })
        -- both are checked (each worker checks for itself) and both get traffic
        assert.truthy(helpers.wait_until(function()
            return heads_of(a, "GET /hc") >= 4 and heads_of(b, "GET /hc") >= 4
        end, 10), "no health checks reached the servers")
        local seen = ports_seen(mg, "/x", 8)
        assert.truthy(seen[a.port] and seen[b.port], "round robin over both: " .. show(seen))

        helpers.stop(a.pid)
        local down = fmt("server 127.0.0.1:%d failed 2 health checks", a.port)
        assert.truthy(helpers.wait_until(function() return count(mg:log(), down) >= 2 end, 10),
            "not marked down by both workers:\n" .. mg:log())
        seen = ports_seen(mg, "/y", 20)
        assert.are.equal(20, seen[b.port], "the down server got traffic: " .. show(seen))
        -- the metrics say so too: down, and ejected (once per worker)
        local function series(name)
            local st, _, body = helpers.http(admin, "GET", "/metrics")
            assert.are.equal(200, st, body)
            return tonumber(body:match(name .. "{[^}]*127%.0%.0%.1:" .. a.port .. "[^}]*} (%d+)"))
        end
        assert.are.equal(0, series("moongate_upstream_server_up"))
        assert.is_true(series("moongate_upstream_server_ejections_total") >= 2)

        -- the same port again: after 2 passes it is back in the rotation
        a = helpers.start_upstream({ port = a.port })
        local up = fmt("server 127.0.0.1:%d passed 2 health checks: up again", a.port)
        assert.truthy(helpers.wait_until(function() return count(mg:log(), up) >= 2 end, 10),
            "not back up in both workers:\n" .. mg:log())
        seen = ports_seen(mg, "/z", 8)
        assert.truthy(seen[a.port] and seen[b.port], "both again: " .. show(seen))
        assert.are.equal(1, series("moongate_upstream_server_up"))
        assert.truthy(heads_of(a, "GET /z") > 0)
    end)

    it("fails a status other than expect; with every server down the client gets 503", function()
        a = helpers.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            vars = { A = a.port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    bad = { servers = { "http://127.0.0.1:$A" },
            health_check = { path = "/status/500", interval = 0.1, fall = 1 } },
  },
}
]],
            routes = [[return {
  { prefix = "/bad", upstream = "bad" },
}]],
        })
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("failed 1 health checks (status 500, expected 200): marked down", 1, true)
        end, 10), mg:log())
        local st, _, body = helpers.http(mg.port, "GET", "/bad/x")
        assert.are.equal(503, st, body)
        assert.are.equal("no healthy upstream server", json.decode(body).error)
        assert.are.equal(0, heads_of(a, "GET /bad/x"), "the request reached the down server")
        -- the checks did reach it
        assert.truthy(heads_of(a, "GET /status/500") >= 1, json.encode(helpers.upstream_log(a)))
    end)

    it("an upstream whose status matches expect stays up", function()
        a = helpers.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            vars = { A = a.port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    up = { servers = { "http://127.0.0.1:$A" },
           health_check = { path = "/status/404", expect = 404, interval = 0.1, fall = 1 } },
  },
}
]],
            routes = [[return { { prefix = "/", upstream = "up" } }]],
        })
        assert.truthy(helpers.wait_until(function() return heads_of(a, "GET /status/404") >= 5 end, 10))
        assert.falsy(mg:log():find("marked down", 1, true), mg:log())
        local st = helpers.http(mg.port, "GET", "/hello")
        assert.are.equal(200, st)
    end)

    it("a check that times out fails (a server that accepts and never answers)", function()
        local hole = helpers.start_upstream({ blackhole = true })
        b = helpers.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            vars = { H = hole.port, B = b.port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    up = { servers = { "http://127.0.0.1:$H", "http://127.0.0.1:$B" },
           health_check = { path = "/hc", interval = 0.1, timeout = 0.2, fall = 2 } },
  },
}
]],
            routes = [[return { { prefix = "/", upstream = "up" } }]],
        })
        assert.truthy(helpers.wait_until(function()
            return mg:log():find(fmt("server 127.0.0.1:%d failed 2 health checks (timed out)",
                hole.port), 1, true)
        end, 10), mg:log())
        local seen = ports_seen(mg, "/t", 6)
        assert.are.equal(6, seen[b.port], show(seen))
    end)

    it("with a health check, a passive ejection (max_fails) lasts until the server rises", function()
        a = helpers.start_upstream()
        b = helpers.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            vars = { A = a.port, B = b.port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    up = { servers = { "http://127.0.0.1:$A", "http://127.0.0.1:$B" },
           response_timeout = 0.3, max_fails = 1, fail_timeout = 0.1,
           health_check = { path = "/hc", interval = 0.2, rise = 3, fall = 100 } },
  },
}
]],
            routes = [[return { { prefix = "/", upstream = "up" } }]],
        })
        -- /delay on A times out: one failure ejects it (max_fails = 1)
        local down = fmt("server 127.0.0.1:%d failed 1 times: marked down until it passes 3 health checks",
            a.port)
        assert.truthy(helpers.wait_until(function()
            helpers.http(mg.port, "GET", "/delay/1000")
            return mg:log():find(down, 1, true)
        end, 10), mg:log())
        -- its checks pass: after 3 of them (not after fail_timeout) it is back
        local up = fmt("server 127.0.0.1:%d passed 3 health checks: up again", a.port)
        assert.truthy(helpers.wait_until(function() return mg:log():find(up, 1, true) end, 10), mg:log())
        assert.truthy(helpers.wait_until(function()
            local st, _, body = helpers.http(mg.port, "GET", "/p")
            return st == 200 and json.decode(body).server_port == a.port
        end, 10), "the server that rose gets no traffic")
    end)

    it("checks https:// servers over TLS, verified with the upstream's CA", function()
        local d = make_certs()
        local t = start_tls(d)
        mg = helpers.start_moongate({
            workers = 1,
            vars = { T = t.port, CA = d .. "/ca.pem" },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    good = { servers = { "https://127.0.0.1:$T" }, tls = { ca = "$CA" },
             health_check = { path = "/status/204", expect = 204, interval = 0.1, fall = 1 } },
  },
}
]],
            routes = [[return { { prefix = "/", upstream = "good" } }]],
        })
        -- the checks complete TLS handshakes and read the status (over TLS)
        assert.truthy(helpers.wait_until(function()
            local st, _, body = helpers.http(mg.port, "GET", "/__tls")
            return st == 200 and json.decode(body).handshakes >= 4
        end, 10), mg:log())
        assert.falsy(mg:log():find("marked down", 1, true), mg:log())
        local st, _, body = helpers.http(mg.port, "GET", "/hello")
        assert.are.equal(200, st, body)
        -- a status other than expect: down, then 503
        mg:write_conf([[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = {
    good = { servers = { "https://127.0.0.1:$T" }, tls = { ca = "$CA" },
             health_check = { path = "/status/503", interval = 0.1, fall = 1 } },
  },
}
]])
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("failed 1 health checks (status 503, expected 200): marked down", 1, true)
        end, 10), mg:log())
        assert.are.equal(503, (helpers.http(mg.port, "GET", "/hello")))
    end)

    it("refuses a broken health_check with file: reason, and a reload keeps the old generation", function()
        local bad = {
            { "interval = 0", "health_check.interval: must be more than 0" },
            { 'path = "hc"', "health_check.path: expected a path starting with '/'" },
            { "expect = 42", "health_check.expect: expected an HTTP status (100-599), got 42" },
            { "rise = 0", "health_check.rise: must be more than 0" },
            { 'fall = "x"', "health_check.fall: expected a non-negative integer" },
        }
        local dir = helpers.tmpdir("hc-t")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/scripts/routes.lua", "return {}\n")
        for _, c in ipairs(bad) do
            helpers.write_file(dir .. "/conf/moongate.lua", fmt([[
return {
  listen = "127.0.0.1:1",
  upstreams = { up = { servers = { "http://127.0.0.1:9" }, health_check = { %s } } },
}
]], c[1]))
            local out, rc = helpers.sh(fmt("cd %s && timeout 20 %s -t -c %s; echo rc=$?", shq(dir),
                shq(helpers.bin), shq(dir .. "/conf/moongate.lua")))
            assert.truthy(out:find("rc=1", 1, true), c[1] .. ": " .. out .. tostring(rc))
            assert.truthy(out:find("moongate.lua:", 1, true), c[1] .. ": " .. out)
            assert.truthy(out:find(c[2], 1, true), c[1] .. ": " .. out)
        end

        a = helpers.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            vars = { A = a.port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = { up = { servers = { "http://127.0.0.1:$A" }, health_check = { path = "/hc", interval = 0.1 } } },
}
]],
            routes = [[return { { prefix = "/", upstream = "up" } }]],
        })
        mg:write_conf([[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = { up = { servers = { "http://127.0.0.1:$A" }, health_check = { interval = -1 } } },
}
]])
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload refused, generation 1 keeps serving", 1, true)
        end, 10), mg:log())
        assert.truthy(mg:log():find("health_check.interval", 1, true), mg:log())
        -- still checking with the old settings, still serving
        helpers.upstream_reset(a)
        assert.truthy(helpers.wait_until(function() return heads_of(a, "GET /hc") >= 2 end, 10))
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/ok")))
    end)
end)
