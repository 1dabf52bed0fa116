-- The worked example of docs/plugins.md over real HTTP: the plugin is
-- copied into the project's plugins/ directory, as the guide says, and
-- enabled on a proxied route and a handler route.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/api", upstream = "up",
    plugins = { ["hello-header"] = { greeting = "bonjour", blocked = { "eve" } } } },
  -- the loader registers each plugin as moongate.plugins.<name>: a script
  -- requiring it at run time shares the instance the route uses
  { path = "/count", handler = function()
      return 200, { greeted = require("moongate.plugins.hello-header").count() }
  end },
}
]]

describe("hello-header (examples/plugins)", function()
    local up, mg

    lazy_setup(function()
        local src = helpers.root .. "/examples/plugins/hello-header/"
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "hello", upstream = up, conf = CONF, routes = ROUTES,
            scripts = {
                -- scripts/../plugins/hello-header/ = <project>/plugins/hello-header/
                ["../plugins/hello-header/handler.lua"] = helpers.read_file(src .. "handler.lua"),
                ["../plugins/hello-header/schema.lua"] = helpers.read_file(src .. "schema.lua"),
            } })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("greets: the upstream and the client both see the header", function()
        local st, h, body = helpers.http(mg.port, "GET", "/api/x?name=ada")
        assert.equal(200, st)
        assert.equal("bonjour, ada", helpers.json.decode(body).headers["x-hello"])
        assert.equal("bonjour, ada", h["x-hello"])
        local _, h2 = helpers.http(mg.port, "GET", "/api/x")
        assert.equal("bonjour, world", h2["x-hello"])
    end)

    it("refuses a blocked name at the edge", function()
        helpers.upstream_reset(up)
        local st, _, body = helpers.http(mg.port, "GET", "/api/x?name=eve")
        assert.equal(403, st)
        assert.same({ error = "not welcome", name = "eve" }, helpers.json.decode(body))
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("counts greetings in its log phase (refusals not counted)", function()
        local function count()
            local _, _, body = helpers.http(mg.port, "GET", "/count")
            return helpers.json.decode(body).greeted
        end
        local before = count()
        helpers.http(mg.port, "GET", "/api/x?name=bob")
        helpers.http(mg.port, "GET", "/api/x?name=eve")
        assert.truthy(helpers.wait_until(function() return count() == before + 1 end, 2))
    end)
end)
