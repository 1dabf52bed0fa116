-- ip-restriction over real HTTP, IPv4 and IPv6 clients (moongate listens
-- on 127.0.0.1 and [::1]), X-Forwarded-For believed only from trusted
-- proxies, and the client address handed on to rate-limit.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = { "127.0.0.1:$PORT", "[::1]:$PORT" }, workers = 1,
  shared_dicts = { rate_limit = 1048576 },
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/v4only", upstream = "up", plugins = { ["ip-restriction"] = { allow = { "127.0.0.0/8" } } } },
  { prefix = "/no6", upstream = "up", plugins = { ["ip-restriction"] = { deny = { "::1/128" } } } },
  { prefix = "/xff", upstream = "up", plugins = { ["ip-restriction"] = {
      allow = { "203.0.113.0/24", "2001:db8::/32" }, trusted_proxies = { "127.0.0.1", "10.0.0.0/8" } } } },
  { prefix = "/untrusted", upstream = "up", plugins = { ["ip-restriction"] = { allow = { "203.0.113.0/24" } } } },
  { prefix = "/custom", upstream = "up", plugins = { ["ip-restriction"] = {
      deny = { "127.0.0.1", "::1" }, status = 451, message = "go away" } } },
  { path = "/combo", handler = function(req) return 200, { ip = req.ctx.client_ip } end, plugins = {
      ["ip-restriction"] = { deny = { "198.51.100.0/24" }, trusted_proxies = { "127.0.0.1" } },
      ["rate-limit"] = { rate = 1, per = "hour" } } },
}
]]

describe("ip-restriction", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "iprestr", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function get(path, xff, v6)
        return (helpers.http(mg.port, "GET", path, {
            headers = xff and { "X-Forwarded-For: " .. xff } or nil, ip = v6 and "[::1]" or nil }))
    end

    it("allows by IPv4 CIDR and refuses others (an IPv6 client)", function()
        assert.equal(200, get("/v4only/x"))
        assert.equal(403, get("/v4only/x", nil, true))
    end)

    it("denies an IPv6 address", function()
        assert.equal(403, get("/no6/x", nil, true))
        assert.equal(200, get("/no6/x"))
    end)

    it("believes X-Forwarded-For only from trusted proxies, right to left", function()
        helpers.upstream_reset(up)
        assert.equal(403, get("/xff/x"))                             -- the proxy itself
        assert.equal(200, get("/xff/x", "203.0.113.9"))
        assert.equal(200, get("/xff/x", "203.0.113.9, 10.1.1.1"))    -- through a second trusted hop
        assert.equal(403, get("/xff/x", "203.0.113.9, 198.51.100.1")) -- a forged left entry
        assert.equal(200, get("/xff/x", "2001:db8::5"))
        assert.equal(403, get("/xff/x", "2001:db9::5"))
        assert.equal(403, get("/xff/x", "not-an-ip"))
        assert.equal(403, get("/untrusted/x", "203.0.113.9"))        -- no trusted proxies: ignored
        assert.equal(3, #helpers.upstream_log(up).heads)
    end)

    it("answers with the configured status and message", function()
        local st, _, body = helpers.http(mg.port, "GET", "/custom/x")
        assert.equal(451, st)
        assert.equal("go away", helpers.json.decode(body).error)
        assert.equal(451, get("/custom/x", nil, true))
    end)

    it("hands the client address to rate-limit and the handler", function()
        local st, _, body = helpers.http(mg.port, "GET", "/combo", { headers = { "X-Forwarded-For: 192.0.2.1" } })
        assert.equal(200, st)
        assert.equal("192.0.2.1", helpers.json.decode(body).ip)
        assert.equal(429, get("/combo", "192.0.2.1"))
        assert.equal(200, get("/combo", "192.0.2.2")) -- another client, another bucket
        assert.equal(403, get("/combo", "198.51.100.7"))
    end)
end)
