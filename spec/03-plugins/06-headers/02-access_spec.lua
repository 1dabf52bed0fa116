-- headers over real HTTP: request headers set/added/blanked towards the
-- upstream, response headers set/added/removed on proxied and handler
-- responses.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
local H = {
  request = { set = { ["X-Env"] = "prod", ["X-Forwarded-Prefix"] = "/api" },
              add = { ["X-Default"] = "d" }, remove = { "X-Secret" } },
  response = { set = { ["X-Frame-Options"] = "DENY" }, add = { ["Cache-Control"] = "no-store" },
               remove = { "Server" } },
}
return {
  { prefix = "/api", upstream = "up", plugins = { headers = H } },
  { path = "/lua", handler = function() return 200, "ok", { Server = "lua", ["Cache-Control"] = "max-age=5" } end,
    plugins = { headers = H } },
}
]]

describe("headers", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "headers", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("sets, adds and blanks request headers", function()
        local st, _, body = helpers.http(mg.port, "GET", "/api/x",
            { headers = { "X-Env: dev", "X-Secret: hunter2", "X-Keep: 1" } })
        assert.equal(200, st)
        local got = helpers.json.decode(body).headers
        assert.equal("prod", got["x-env"]) -- replaced, not appended
        assert.equal("/api", got["x-forwarded-prefix"])
        assert.equal("d", got["x-default"])
        assert.is_nil(got["x-secret"]) -- the header never reaches the upstream
        assert.equal("1", got["x-keep"])
    end)

    it("adds a request header only when the client did not send it", function()
        local _, _, body = helpers.http(mg.port, "GET", "/api/x", { headers = { "X-Default: mine" } })
        assert.equal("mine", helpers.json.decode(body).headers["x-default"])
    end)

    it("edits a proxied response's headers", function()
        local st, h = helpers.http(mg.port, "GET", "/api/x")
        assert.equal(200, st)
        assert.equal("DENY", h["x-frame-options"])
        assert.equal("no-store", h["cache-control"])
        assert.is_nil(h["server"])
    end)

    it("edits a handler's response headers; add keeps an existing value", function()
        local st, h, body = helpers.http(mg.port, "GET", "/lua")
        assert.equal(200, st)
        assert.equal("ok", body)
        assert.equal("DENY", h["x-frame-options"])
        assert.equal("max-age=5", h["cache-control"])
        assert.is_nil(h["server"])
    end)
end)
