-- cors over real HTTP: preflights answered at the edge (never reaching the
-- upstream), exact and pattern origins, credentials, exposed headers, and
-- the headers added to proxied and handler responses.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/api", upstream = "up", plugins = { cors = {
      origins = { "https://app.example.com" },
      origin_patterns = { "https://[%w-]+%.preview%.example%.com" },
      headers = { "Authorization", "Content-Type" },
      exposed_headers = { "X-Total" },
      credentials = true, max_age = 600 } } },
  { prefix = "/open", upstream = "up", plugins = { cors = {} } },
  { path = "/lua", handler = function() return 200, { ok = true } end,
    plugins = { cors = { origins = { "https://app.example.com" } } } },
  { prefix = "/pass", upstream = "up", plugins = { cors = { preflight_continue = true } } },
  { prefix = "/auth", upstream = "up", plugins = { cors = { origins = { "https://app.example.com" } },
      ["key-auth"] = { keys = { "k" } } } },
}
]]

describe("cors", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "cors", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function preflight(path, origin, method, req_headers)
        local h = { "Origin: " .. origin, "Access-Control-Request-Method: " .. (method or "PUT") }
        if req_headers then h[#h + 1] = "Access-Control-Request-Headers: " .. req_headers end
        return helpers.http(mg.port, "OPTIONS", path, { headers = h })
    end

    it("answers a preflight at the edge without reaching the upstream", function()
        helpers.upstream_reset(up)
        local st, h = preflight("/api/items", "https://app.example.com", "PUT", "authorization")
        assert.equal(204, st)
        assert.equal("https://app.example.com", h["access-control-allow-origin"])
        assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS", h["access-control-allow-methods"])
        assert.equal("Authorization, Content-Type", h["access-control-allow-headers"])
        assert.equal("600", h["access-control-max-age"])
        assert.equal("true", h["access-control-allow-credentials"])
        assert.matches("Origin", h["vary"])
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("accepts an origin matching a pattern, refuses others on preflight", function()
        local st, h = preflight("/api/x", "https://pr-42.preview.example.com")
        assert.equal(204, st)
        assert.equal("https://pr-42.preview.example.com", h["access-control-allow-origin"])
        -- anchored: a suffix attack does not match
        st, h = preflight("/api/x", "https://pr-42.preview.example.com.evil.net")
        assert.equal(403, st)
        assert.is_nil(h["access-control-allow-origin"])
        st = preflight("/api/x", "https://other.example.com")
        assert.equal(403, st)
    end)

    it("adds CORS headers to a proxied response for an allowed origin only", function()
        local st, h, body = helpers.http(mg.port, "GET", "/api/list",
            { headers = { "Origin: https://app.example.com" } })
        assert.equal(200, st)
        assert.equal("/api/list", helpers.json.decode(body).path)
        assert.equal("https://app.example.com", h["access-control-allow-origin"])
        assert.equal("true", h["access-control-allow-credentials"])
        assert.equal("X-Total", h["access-control-expose-headers"])
        assert.matches("Origin", h["vary"])

        st, h = helpers.http(mg.port, "GET", "/api/list", { headers = { "Origin: https://evil.net" } })
        assert.equal(200, st) -- the browser enforces; the edge only withholds the grant
        assert.is_nil(h["access-control-allow-origin"])
        assert.matches("Origin", h["vary"])

        st, h = helpers.http(mg.port, "GET", "/api/list")
        assert.equal(200, st)
        assert.is_nil(h["access-control-allow-origin"])
    end)

    it("answers '*' for any origin without credentials, reflecting requested headers", function()
        local st, h = preflight("/open/x", "http://localhost:3000", "POST", "x-custom, content-type")
        assert.equal(204, st)
        assert.equal("*", h["access-control-allow-origin"])
        assert.equal("x-custom, content-type", h["access-control-allow-headers"])
        assert.is_nil(h["access-control-allow-credentials"])
        local st2, h2 = helpers.http(mg.port, "GET", "/open/x", { headers = { "Origin: http://x.test" } })
        assert.equal(200, st2)
        assert.equal("*", h2["access-control-allow-origin"])
    end)

    it("adds CORS headers to a Lua handler's response", function()
        local st, h = helpers.http(mg.port, "GET", "/lua", { headers = { "Origin: https://app.example.com" } })
        assert.equal(200, st)
        assert.equal("https://app.example.com", h["access-control-allow-origin"])
    end)

    it("passes a plain OPTIONS (no Access-Control-Request-Method) to the route", function()
        helpers.upstream_reset(up)
        local st, _, body = helpers.http(mg.port, "OPTIONS", "/api/opt",
            { headers = { "Origin: https://app.example.com" } })
        assert.equal(200, st)
        assert.equal("OPTIONS", helpers.json.decode(body).method)
    end)

    it("answers preflights before authentication runs", function()
        local st, h = preflight("/auth/x", "https://app.example.com", "GET", "apikey")
        assert.equal(204, st)
        assert.equal("https://app.example.com", h["access-control-allow-origin"])
    end)

    it("adds CORS headers to a refusal by a later plugin, so the browser can read it", function()
        -- needs the core to run header_filter on answers from access phases
        local st, h = helpers.http(mg.port, "GET", "/auth/x", { headers = { "Origin: https://app.example.com" } })
        assert.equal(401, st)
        assert.equal("https://app.example.com", h["access-control-allow-origin"])
    end)

    it("sends preflights on with preflight_continue", function()
        local st, h, body = preflight("/pass/x", "http://a.test")
        assert.equal(200, st)
        assert.equal("OPTIONS", helpers.json.decode(body).method)
        assert.equal("*", h["access-control-allow-origin"])
    end)
end)
