-- The command line: -v, -t (config and scripts check), -p (pidfile).
local helpers = require "spec.helpers"

local shq = helpers.shq

-- Writes conf + routes into a fresh dir and runs `moongate -t -c conf`.
local function check(conf, routes, extra)
    local dir = helpers.tmpdir("cli-t")
    helpers.mkdir_p(dir .. "/conf")
    helpers.mkdir_p(dir .. "/scripts")
    helpers.write_file(dir .. "/conf/moongate.lua", conf)
    if routes then
        helpers.write_file(dir .. "/scripts/routes.lua", routes)
    end
    for name, src in pairs(extra or {}) do
        helpers.write_file(dir .. "/scripts/" .. name, src)
    end
    return helpers.sh(string.format("cd %s && timeout 20 %s -t -c %s", shq(dir), shq(helpers.bin),
        shq(dir .. "/conf/moongate.lua")))
end

local GOOD_CONF = [[
return {
  listen = "127.0.0.1:1",
  workers = 1,
  upstreams = { up = { servers = { "http://127.0.0.1:9" } } },
}
]]

local GOOD_ROUTES = [[
local moongate = require "moongate"
return {
  { path = "/hello", handler = function(req, res) return 200, "hi" end },
  { prefix = "/api", upstream = "up" },
}
]]

describe("moongate CLI", function()
    lazy_teardown(function()
        helpers.cleanup()
    end)

    it("-v prints the versions of moongate and its libraries", function()
        local out, rc = helpers.sh(shq(helpers.bin) .. " -v")
        assert.equal(0, rc, out)
        local low = out:lower()
        for _, name in ipairs({ "moongate", "luajit", "libevent", "openssl", "wslay", "llhttp" }) do
            assert.truthy(low:find(name, 1, true), "missing " .. name .. " in: " .. out)
        end
        assert.matches("luajit%s*2%.1", low)
        assert.matches("libevent%S*%s*2%.1", low)
        assert.matches("openssl%s*3%.", low)
        assert.matches("llhttp%S*%s*%d+%.%d+", low)
    end)

    describe("-t", function()
        it("exits 0 for a good conf and routes", function()
            local out, rc = check(GOOD_CONF, GOOD_ROUTES)
            assert.equal(0, rc, out)
        end)

        it("reports a syntax error in the conf file as file:line:", function()
            local out, rc = check("return {\n  workers = 1,\n  listen = = 3,\n}\n", GOOD_ROUTES)
            assert.not_equal(0, rc)
            assert.matches("moongate%.lua:3:", out)
        end)

        it("reports a bad conf value", function()
            local out, rc = check("return {\n  workers = 1,\n  timeouts = { idle = \"soon\" },\n}\n",
                GOOD_ROUTES)
            assert.not_equal(0, rc)
            assert.matches("moongate%.lua:%d+:", out)
            assert.matches("idle", out)
        end)

        it("reports a syntax error in routes.lua as routes.lua:line:", function()
            local out, rc = check(GOOD_CONF, "return {\n  { path = \"/a\",\n    handler = function( end },\n}\n")
            assert.not_equal(0, rc)
            assert.matches("routes%.lua:3:", out)
        end)

        it("reports an error raised while loading routes.lua with its line", function()
            local out, rc = check(GOOD_CONF, "local x = 1\nerror(\"boom-at-load\")\nreturn {}\n")
            assert.not_equal(0, rc)
            assert.matches("routes%.lua:2:", out)
            assert.matches("boom%-at%-load", out)
        end)

        it("reports an invalid route (unknown field) with file:line:", function()
            local out, rc = check(GOOD_CONF, [[
return {
  { path = "/ok", handler = function() return 200 end },
  { path = "/bad", handler = function() return 200 end,
    colour = "blue" },
}
]])
            assert.not_equal(0, rc)
            assert.matches("routes%.lua:%d+:", out)
            assert.matches("colour", out)
        end)

        it("reports a route naming an unknown upstream", function()
            local out, rc = check(GOOD_CONF, "return {\n  { prefix = \"/x\", upstream = \"nowhere\" },\n}\n")
            assert.not_equal(0, rc)
            assert.matches("routes%.lua:%d+:", out)
            assert.matches("nowhere", out)
        end)

        it("reports a route with both path and prefix", function()
            local out, rc = check(GOOD_CONF,
                "return {\n  { path = \"/x\", prefix = \"/x\", upstream = \"up\" },\n}\n")
            assert.not_equal(0, rc)
            assert.matches("routes%.lua:%d+:", out)
        end)

        it("refuses moongate.methods{} with a nil handler (a typo) at its file:line:", function()
            local out, rc = check(GOOD_CONF, [[
local moongate = require "moongate"
local gateway = require "gw"
local methods = moongate.methods
return {
  { path = "/ok", handler = methods{ GET = gateway.whoami } },
  { path = "/whoami", handler = methods{ GET = gateway.whoam } },
}
]], { ["gw.lua"] = "return { whoami = function() return 200 end }\n" })
            assert.not_equal(0, rc, out)
            assert.matches("routes%.lua:6: methods: GET: the handler gateway%.whoam is nil "
                .. "%(did you mean 'whoami'%?%)", out)
        end)

        it("reports a missing conf file", function()
            local out, rc = helpers.sh(shq(helpers.bin) .. " -t -c /nonexistent/moongate.lua")
            assert.not_equal(0, rc)
            assert.matches("nonexistent", out)
        end)

        it("loads modules from scripts/ through require", function()
            local out, rc = check(GOOD_CONF,
                "local m = require \"mymod\"\nreturn {\n  { path = \"/m\", handler = m.h },\n}\n",
                { ["mymod.lua"] = "return { h = function() return 200, 'm' end }\n" })
            assert.equal(0, rc, out)
        end)
    end)

    describe("-p", function()
        local mg
        lazy_setup(function()
            mg = helpers.start_moongate({ name = "cli-p", workers = 2 })
        end)
        lazy_teardown(function()
            if mg then
                mg:stop()
            end
        end)

        it("writes the master's pid, whose children are the workers", function()
            local pid = tonumber(helpers.read_file(mg.pidfile))
            assert.is_number(pid)
            assert.truthy(helpers.alive(pid))
            local cmdline = helpers.read_file("/proc/" .. pid .. "/cmdline") or ""
            assert.matches("moongate", cmdline)
            assert.truthy(helpers.wait_until(function()
                return #mg:workers() == 2
            end, 5), "expected 2 workers, got " .. #mg:workers())
            local st, _, body = helpers.http(mg.port, "GET", "/hello")
            assert.equal(200, st)
            assert.equal("hello\n", body)
        end)

        it("logs to stderr", function()
            helpers.http(mg.port, "GET", "/hello")
            helpers.sleep(0.5) -- the access log is flushed on a timer
            assert.truthy(#mg:log() > 0)
        end)
    end)
end)
