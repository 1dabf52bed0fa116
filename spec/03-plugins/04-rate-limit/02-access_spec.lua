-- rate-limit over real HTTP, with several workers: one bucket per key
-- shared by all of them, 429 with Retry-After and RateLimit-* headers,
-- keys by client IP, header and JWT claim, per-route and global scope.
local helpers = require "spec.helpers"
local ph = require "spec.plugin_helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 4,
  shared_dicts = { rate_limit = 1048576 },
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
return {
  { prefix = "/ip", upstream = "up", plugins = { ["rate-limit"] = { rate = 5, per = "minute" } } },
  { prefix = "/hdr", upstream = "up", plugins = { ["rate-limit"] = {
      rate = 2, per = "minute", key = "header", header = "X-Client" } } },
  { prefix = "/jwt", upstream = "up", plugins = {
      ["jwt-auth"] = { secret = "k", required_claims = {} },
      ["rate-limit"] = { rate = 1, per = "hour", key = "jwt_claim", claim = "sub" } } },
  { prefix = "/g1", upstream = "up", plugins = { ["rate-limit"] = { rate = 2, per = "hour", scope = "global" } } },
  { prefix = "/g2", upstream = "up", plugins = { ["rate-limit"] = { rate = 2, per = "hour", scope = "global" } } },
  { prefix = "/fast", upstream = "up", plugins = { ["rate-limit"] = { rate = 2, burst = 1 } } },
  { prefix = "/roomy", upstream = "up", plugins = { ["rate-limit"] = { rate = 1000000, burst = 1000000 } } },
  { prefix = "/seq", upstream = "up", plugins = { ["rate-limit"] = { rate = 0.001, burst = 40 } } },
  { path = "/lua", handler = function() return 200, "ok" end,
    plugins = { ["rate-limit"] = { rate = 1, per = "hour" } } },
}
]]

describe("rate-limit", function()
    local up, mg, dir

    lazy_setup(function()
        dir = helpers.tmpdir("rl")
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "ratelimit", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("holds one limit across all workers, then answers 429 with Retry-After", function()
        local reqs = {}
        for i = 1, 12 do reqs[i] = { "GET", "/ip/" .. i } end
        local res = helpers.http_parallel(mg.port, reqs)
        local ok, limited, sample = 0, 0, nil
        for _, r in ipairs(res) do
            if r.status == 200 then ok = ok + 1 end
            if r.status == 429 then limited = limited + 1; sample = r end
        end
        assert.equal(5, ok)
        assert.equal(7, limited)
        local retry = tonumber(sample.headers["retry-after"])
        assert.truthy(retry >= 1 and retry <= 12, "Retry-After " .. tostring(retry))
        assert.equal("5", sample.headers["ratelimit-limit"])
        assert.equal("0", sample.headers["ratelimit-remaining"])
        assert.equal(sample.headers["retry-after"], sample.headers["ratelimit-reset"])
        assert.equal("rate limit exceeded", helpers.json.decode(sample.body).error)
    end)

    it("sends RateLimit-* headers on allowed responses", function()
        local st, h = helpers.http(mg.port, "GET", "/hdr/x", { headers = { "X-Client: h1" } })
        assert.equal(200, st)
        assert.equal("2", h["ratelimit-limit"])
        assert.equal("1", h["ratelimit-remaining"])
        assert.equal("30", h["ratelimit-reset"]) -- 1 token at 2/minute
    end)

    it("keys by a header: each client has its own bucket", function()
        local function hit(c) return (helpers.http(mg.port, "GET", "/hdr/y", { headers = { "X-Client: " .. c } })) end
        assert.equal(200, hit("a"))
        assert.equal(200, hit("a"))
        assert.equal(429, hit("a"))
        assert.equal(200, hit("b"))
    end)

    it("keys by a JWT claim", function()
        local function tok(sub) return ph.jwt("HS256", "k", { sub = sub }, dir) end
        local function hit(t)
            return (helpers.http(mg.port, "GET", "/jwt/x", { headers = { "Authorization: Bearer " .. t } }))
        end
        local a1, a2, b = tok("alice"), tok("alice"), tok("bob")
        assert.equal(200, hit(a1))
        assert.equal(429, hit(a2))
        assert.equal(200, hit(b))
    end)

    it("shares a global-scope bucket between routes", function()
        assert.equal(200, (helpers.http(mg.port, "GET", "/g1/x")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/g2/x")))
        assert.equal(429, (helpers.http(mg.port, "GET", "/g1/x")))
        assert.equal(429, (helpers.http(mg.port, "GET", "/g2/x")))
    end)

    it("refills the bucket over time", function()
        assert.equal(200, (helpers.http(mg.port, "GET", "/fast/x")))
        assert.equal(429, (helpers.http(mg.port, "GET", "/fast/x")))
        helpers.sleep(0.6) -- 2/s: one token per 500 ms
        assert.equal(200, (helpers.http(mg.port, "GET", "/fast/x")))
    end)

    it("sends the same RateLimit-* figures when they repeat (kept as strings)", function()
        -- a bucket that refills faster than it is taken: the same figures on
        -- every request, in every worker, from the first
        for _ = 1, 16 do
            local st, h = helpers.http(mg.port, "GET", "/roomy/x")
            assert.equal(200, st)
            assert.equal("1000000", h["ratelimit-limit"])
            assert.equal("999999", h["ratelimit-remaining"])
            assert.equal("1", h["ratelimit-reset"])
        end
        -- one that does not: each request its own count, never a kept one
        for i = 1, 12 do
            local st, h = helpers.http(mg.port, "GET", "/seq/x")
            assert.equal(200, st)
            assert.equal(tostring(40 - i), h["ratelimit-remaining"])
            assert.equal(tostring(math.ceil(i / 0.001)), h["ratelimit-reset"])
        end
    end)

    it("limits Lua handler routes too", function()
        local st, h = helpers.http(mg.port, "GET", "/lua")
        assert.equal(200, st)
        assert.equal("0", h["ratelimit-remaining"])
        local st2, h2 = helpers.http(mg.port, "GET", "/lua")
        assert.equal(429, st2)
        assert.equal("3600", h2["retry-after"])
    end)
end)
