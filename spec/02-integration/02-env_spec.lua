-- Environment overrides for containers: MOONGATE_LISTEN, MOONGATE_WORKERS,
-- MOONGATE_UPSTREAM_<NAME>.
local helpers = require "spec.helpers"
local json = helpers.json

local ROUTES = [[
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { prefix = "/rt", upstream = "runtime", strip_prefix = true },
}
]]

describe("environment overrides", function()
    local a, b

    lazy_setup(function()
        a = helpers.start_upstream()
        b = helpers.start_upstream()
    end)

    lazy_teardown(function()
        helpers.stop(a and a.pid)
        helpers.stop(b and b.pid)
        helpers.cleanup()
    end)

    it("MOONGATE_LISTEN replaces the conf's listen address", function()
        local other = helpers.free_port()
        local mg = helpers.start_moongate({
            name = "env-listen",
            conf = 'return { listen = "127.0.0.1:$PORT", workers = 1,\n'
                .. '  upstreams = { runtime = { servers = { "$UPSTREAM" } } } }\n',
            upstream = a,
            routes = ROUTES,
            env = { MOONGATE_LISTEN = "127.0.0.1:" .. other },
            wait_port = other,
        })
        finally(function() mg:stop() end)
        local st, _, body = helpers.http(other, "GET", "/hello")
        assert.equal(200, st)
        assert.equal("hello\n", body)
        assert.falsy(helpers.port_open(mg.port), "the conf's port should not listen")
    end)

    it("MOONGATE_WORKERS sets the number of workers", function()
        local mg = helpers.start_moongate({
            name = "env-workers",
            workers = 1,
            routes = ROUTES:gsub('  { prefix = "/rt".-\n', ""),
            env = { MOONGATE_WORKERS = "3" },
        })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function()
            return #mg:workers() == 3
        end, 5), "expected 3 workers, got " .. #mg:workers())
        helpers.sleep(0.3)
        assert.equal(3, #mg:workers())
    end)

    it("MOONGATE_UPSTREAM_RUNTIME creates an upstream the conf does not name", function()
        local mg = helpers.start_moongate({
            name = "env-up-new",
            conf = 'return { listen = "127.0.0.1:$PORT", workers = 1 }\n',
            routes = ROUTES,
            env = { MOONGATE_UPSTREAM_RUNTIME = a.url },
        })
        finally(function() mg:stop() end)
        local st, _, body = helpers.http(mg.port, "GET", "/rt/x?y=1")
        assert.equal(200, st, body)
        local j = json.decode(body)
        assert.equal("/x?y=1", j.path)
        assert.equal(a.port, j.server_port)
    end)

    it("MOONGATE_UPSTREAM_RUNTIME overrides the conf's servers, comma-separated", function()
        local dead = helpers.free_port()
        local mg = helpers.start_moongate({
            name = "env-up-override",
            conf = 'return { listen = "127.0.0.1:$PORT", workers = 1,\n'
                .. '  upstreams = { runtime = { servers = { "http://127.0.0.1:' .. dead .. '" } } } }\n',
            routes = ROUTES,
            env = { MOONGATE_UPSTREAM_RUNTIME = a.url .. "," .. b.url },
        })
        finally(function() mg:stop() end)
        local seen = {}
        for _ = 1, 6 do
            local st, _, body = helpers.http(mg.port, "GET", "/rt/who")
            assert.equal(200, st, body)
            local port = json.decode(body).server_port
            seen[port] = (seen[port] or 0) + 1
        end
        assert.truthy(seen[a.port], "server a never used")
        assert.truthy(seen[b.port], "server b never used")
        assert.falsy(seen[dead])
    end)

    it("-t sees the environment too", function()
        local dir = helpers.tmpdir("env-t")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/conf/moongate.lua", 'return { workers = 1 }\n')
        helpers.write_file(dir .. "/scripts/routes.lua", ROUTES)
        local cmd = string.format("cd %s && %%s %s -t -c conf/moongate.lua", helpers.shq(dir),
            helpers.shq(helpers.bin))
        local out, rc = helpers.sh(cmd:format("env MOONGATE_UPSTREAM_RUNTIME=" .. a.url))
        assert.equal(0, rc, out)
        out, rc = helpers.sh(cmd:format("env -u MOONGATE_UPSTREAM_RUNTIME"))
        assert.not_equal(0, rc, "a route to an undefined upstream must fail -t: " .. out)
    end)
end)
