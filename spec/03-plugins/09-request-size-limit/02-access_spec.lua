-- request-size-limit over real HTTP: 413 from Content-Length before the
-- upstream sees anything; chunked bodies bounded by the route's body_size
-- (the core) or refused with 411 when a length is required.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/small", upstream = "up", plugins = { ["request-size-limit"] = { max_bytes = 1000 } } },
  { prefix = "/both", upstream = "up", body_size = 1000,
    plugins = { ["request-size-limit"] = { max_bytes = 1000 } } },
  { prefix = "/strict", upstream = "up",
    plugins = { ["request-size-limit"] = { max_bytes = 1000, require_length = true } } },
  { path = "/lua", handler = function(req) return 200, { len = #req:body() } end,
    plugins = { ["request-size-limit"] = { max_bytes = 10 } } },
}
]]

describe("request-size-limit", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "sizelimit", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("refuses a Content-Length above the limit before the upstream", function()
        helpers.upstream_reset(up)
        local st, _, body = helpers.http(mg.port, "POST", "/small/up", { body = string.rep("x", 1001) })
        assert.equal(413, st)
        local j = helpers.json.decode(body)
        assert.equal("request body too large", j.error)
        assert.equal(1000, j.max_bytes)
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("passes a body at the limit", function()
        local st, _, body = helpers.http(mg.port, "POST", "/small/up", { body = string.rep("x", 1000) })
        assert.equal(200, st)
        assert.equal(1000, helpers.json.decode(body).body_len)
    end)

    it("leaves chunked bodies to the route's body_size", function()
        local st = helpers.http(mg.port, "POST", "/small/up", { body = string.rep("x", 5000), chunked = true })
        assert.equal(200, st) -- documented: no length to check; body_size (1 MiB here) applies
        st = helpers.http(mg.port, "POST", "/both/up", { body = string.rep("x", 5000), chunked = true })
        assert.equal(413, st)
    end)

    it("answers 411 to a chunked body when a length is required", function()
        local st, _, body = helpers.http(mg.port, "POST", "/strict/up", { body = "abc", chunked = true })
        assert.equal(411, st)
        assert.equal("length required", helpers.json.decode(body).error)
        assert.equal(200, (helpers.http(mg.port, "POST", "/strict/up", { body = "abc" })))
        assert.equal(200, (helpers.http(mg.port, "GET", "/strict/up")))
    end)

    it("guards Lua handlers too", function()
        assert.equal(413, (helpers.http(mg.port, "POST", "/lua", { body = "0123456789a" })))
        local st, _, body = helpers.http(mg.port, "POST", "/lua", { body = "0123456789" })
        assert.equal(200, st)
        assert.equal(10, helpers.json.decode(body).len)
    end)
end)
