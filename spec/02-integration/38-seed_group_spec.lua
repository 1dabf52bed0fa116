-- The /api group of the shipped scripts/routes.lua (docs/configuration.md,
-- "Route groups"): a route added to the group with no access hook of its
-- own is still behind the auth hook, and a group that loses its protection
-- (its access line forgotten) is refused at reload, the last good table kept.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api

local shipped = helpers.read_file(helpers.root .. "/scripts/routes.lua")

-- The shipped table with one more route in the /api group, without `access`.
local GROUP_OPEN = '{ prefix = "/api", access = auth.access, routes = {\n'
local ADDED = '    { path = "/api/added", handler = function(req) return 200, { added = true } end },\n'

local function with_added(src)
    local s, n = src:gsub(GROUP_OPEN:gsub("%p", "%%%0"), (GROUP_OPEN .. ADDED):gsub("%%", "%%%%"), 1)
    assert(n == 1, "no /api group in scripts/routes.lua")
    return s
end

describe("seed /api group", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-group", routes = with_added(shipped) })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    it("puts a route added to the group behind the auth hook", function()
        local st, b, h = api(mg.port, "GET", "/api/added", false)
        assert.equal(401, st)
        assert.matches("application/json", h["content-type"], 1, true)
        assert.equal("unauthorized", b.error)
        assert.equal(401, (api(mg.port, "GET", "/api/added", "no-such-token")))
        local st2, b2 = api(mg.port, "GET", "/api/added", "t1")
        assert.equal(200, st2)
        assert.is_true(b2.added)
    end)

    it("refuses a reload where the group has no protection, and keeps the last table", function()
        local broken, n = with_added(shipped):gsub('prefix = "/api", access = auth%.access, routes',
                                                   'prefix = "/api", routes', 1)
        assert.equal(1, n)
        mg:write_routes(broken)
        mg:signal("HUP")
        assert(helpers.wait_until(function()
            return mg:log():find("group #1 (/api): no protection", 1, true)
        end, 5), mg:log())
        assert.equal(401, (api(mg.port, "GET", "/api/added", false)))
        assert.equal(200, (api(mg.port, "GET", "/api/added", "t1")))
        assert.truthy(helpers.alive(mg.pid))
    end)
end)
