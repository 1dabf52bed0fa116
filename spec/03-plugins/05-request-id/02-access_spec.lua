-- request-id over real HTTP: kept or generated, passed upstream, echoed
-- once in the response, and visible to handlers as ctx.request_id.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  plugins = { ["request-id"] = {} } }
]]

local ROUTES = [[
return {
  { prefix = "/up", upstream = "up" },
  { path = "/lua", handler = function(req) return 200, { id = req.ctx.request_id, core = req.id } end },
  { prefix = "/corr", upstream = "up", plugins = { ["request-id"] = { header_name = "X-Correlation-Id" } } },
  { prefix = "/fresh", upstream = "up", plugins = { ["request-id"] = {
      header_name = "X-Correlation-Id", keep_incoming = false, generator = "hex" } } },
}
]]

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function count(info, name)
    local n = 0
    for _, kv in ipairs(info.headers_list) do
        if kv[1] == name then n = n + 1 end
    end
    return n
end

describe("request-id", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "reqid", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("passes the core's id upstream and echoes it on a proxied response", function()
        local st, h, body, info = helpers.http(mg.port, "GET", "/up/x")
        assert.equal(200, st)
        local sent = helpers.json.decode(body).headers["x-request-id"]
        assert.matches("^%x+$", sent)
        assert.equal(sent, h["x-request-id"])
        assert.equal(1, count(info, "x-request-id"))
    end)

    it("keeps a valid id from the client", function()
        local st, h, body = helpers.http(mg.port, "GET", "/up/x", { headers = { "X-Request-Id: abc-123" } })
        assert.equal(200, st)
        assert.equal("abc-123", helpers.json.decode(body).headers["x-request-id"])
        assert.equal("abc-123", h["x-request-id"])
    end)

    it("gives handlers ctx.request_id, echoed once", function()
        local st, h, body, info = helpers.http(mg.port, "GET", "/lua", { headers = { "X-Request-Id: lua-1" } })
        assert.equal(200, st)
        local j = helpers.json.decode(body)
        assert.equal("lua-1", j.id)
        assert.equal("lua-1", j.core)
        assert.equal(1, count(info, "x-request-id"), "X-Request-Id sent more than once: " .. info.raw_head)
        assert.equal("lua-1", h["x-request-id"])
    end)

    it("generates a UUID in a custom header, passes it on and echoes it", function()
        local st, h, body = helpers.http(mg.port, "GET", "/corr/x")
        assert.equal(200, st)
        local sent = helpers.json.decode(body).headers["x-correlation-id"]
        assert.matches(UUID, sent)
        assert.equal(sent, h["x-correlation-id"])
        local _, h2 = helpers.http(mg.port, "GET", "/corr/x")
        assert.are_not.equal(sent, h2["x-correlation-id"])
    end)

    it("keeps a valid custom id, replaces an invalid one", function()
        local _, h, body = helpers.http(mg.port, "GET", "/corr/x", { headers = { "X-Correlation-Id: trace.42_a" } })
        assert.equal("trace.42_a", helpers.json.decode(body).headers["x-correlation-id"])
        assert.equal("trace.42_a", h["x-correlation-id"])
        _, h, body = helpers.http(mg.port, "GET", "/corr/x", { headers = { "X-Correlation-Id: bad id!" } })
        local sent = helpers.json.decode(body).headers["x-correlation-id"]
        assert.matches(UUID, sent)
        assert.equal(sent, h["x-correlation-id"])
    end)

    it("always generates with keep_incoming = false (hex)", function()
        local _, h, body = helpers.http(mg.port, "GET", "/fresh/x", { headers = { "X-Correlation-Id: mine" } })
        local sent = helpers.json.decode(body).headers["x-correlation-id"]
        assert.matches("^%x+$", sent)
        assert.equal(32, #sent)
        assert.equal(sent, h["x-correlation-id"])
    end)
end)
