-- key-auth over real HTTP: keys from a header or the query, consumers named
-- in ctx, refused before the upstream sees anything, hidden on request.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/api", upstream = "up", plugins = { ["key-auth"] = {
      keys = { alice = "alice-key-123", bob = "bob-key-456" }, key_names = { "X-API-Key", "apikey" },
      hide_credentials = true } } },
  { path = "/who", handler = function(req) return 200, { consumer = req.ctx.consumer } end,
    plugins = { ["key-auth"] = { keys = { alice = "alice-key-123" } } } },
  { prefix = "/hdr", upstream = "up", plugins = { ["key-auth"] = {
      keys = { "list-key" }, key_in_query = false } } },
}
]]

describe("key-auth", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "keyauth", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("refuses a missing or wrong key before the upstream", function()
        helpers.upstream_reset(up)
        local st, h, body = helpers.http(mg.port, "GET", "/api/x")
        assert.equal(401, st)
        assert.equal("missing API key", helpers.json.decode(body).error)
        assert.matches("Key", h["www-authenticate"])
        st, h, body = helpers.http(mg.port, "GET", "/api/x", { headers = { "X-API-Key: alice-key-12" } })
        assert.equal(401, st)
        assert.matches("Key", h["www-authenticate"])
        assert.equal("invalid API key", helpers.json.decode(body).error)
        st = helpers.http(mg.port, "GET", "/api/x", { headers = { "X-API-Key: alice-key-1234" } })
        assert.equal(401, st)
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("accepts a key from a header and hides it from the upstream", function()
        local st, _, body = helpers.http(mg.port, "GET", "/api/x", { headers = { "X-API-Key: bob-key-456" } })
        assert.equal(200, st)
        assert.is_nil(helpers.json.decode(body).headers["x-api-key"])
    end)

    it("accepts a key from the query (second key name)", function()
        local st = helpers.http(mg.port, "GET", "/api/x?apikey=alice-key-123")
        assert.equal(200, st)
    end)

    it("names the consumer in ctx", function()
        local st, _, body = helpers.http(mg.port, "GET", "/who", { headers = { "apikey: alice-key-123" } })
        assert.equal(200, st)
        assert.equal("alice", helpers.json.decode(body).consumer)
    end)

    it("ignores the query when key_in_query is false", function()
        assert.equal(401, (helpers.http(mg.port, "GET", "/hdr/x?apikey=list-key")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/hdr/x", { headers = { "apikey: list-key" } })))
    end)
end)
