-- rate-limit with policy = "redis" (issue 15): three moongate instances
-- against one redis-server share one bucket per key. A flood client
-- (spec/fixtures/flood.py) sends well over the limit to all three; the
-- accepted requests inside a middle window of several seconds are counted
-- against the window's length (counts, not latencies). Then Redis fails:
-- on_redis_error = "local" (this instance's own limit, logged once),
-- "allow", "deny"; and the cluster limit comes back with Redis.
local helpers = require "spec.helpers"
local rh = require "spec.redis_helpers"
local json = helpers.json

local FLOOD_PY = helpers.root .. "/spec/fixtures/flood.py"

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  shared_dicts = { rate_limit = 1048576 },
  redis = { url = "redis://127.0.0.1:$REDIS/0", timeout = 0.5, backoff = 0.2, backoff_max = 0.5 },
}
]]

local ROUTES = [[
local function ok() return 200, "ok\n" end
return {
  { path = "/rl", handler = ok, plugins = { ["rate-limit"] = {
      rate = 100, burst = 10, policy = "redis" } } },
  { path = "/once", handler = ok, plugins = { ["rate-limit"] = {
      rate = 1, per = "hour", policy = "redis", on_redis_error = "allow" } } },
  { path = "/local", handler = ok, plugins = { ["rate-limit"] = {
      rate = 2, per = "hour", policy = "redis" } } },
  { path = "/deny", handler = ok, plugins = { ["rate-limit"] = {
      rate = 1, per = "hour", policy = "redis", on_redis_error = "deny" } } },
}
]]

describe("rate-limit policy = redis", function()
    local redis, mgs = nil, {}

    lazy_setup(function()
        assert(rh.installed(), "redis-server is not installed (make deps installs it)")
        redis = rh.start({ name = "redis-rl" })
        for i = 1, 3 do
            mgs[i] = helpers.start_moongate({
                name = "redis-rl-" .. i, conf = CONF, routes = ROUTES, vars = { REDIS = redis.port },
            })
        end
    end)

    lazy_teardown(function()
        for _, mg in ipairs(mgs) do mg:stop() end
        rh.stop(redis)
        helpers.cleanup()
    end)

    local function status(i, path)
        local st, _, body = helpers.http(mgs[i].port, "GET", path)
        return st, body
    end

    it("lets three instances together through 100 +- 5 % per second", function()
        local ports = {}
        for i, mg in ipairs(mgs) do ports[i] = mg.port end
        local secs, edge = 8, 1
        local out, rc = helpers.sh(string.format("timeout -s KILL 60 %s %s --ports %s --path /rl "
            .. "--secs %d --edge %d --threads 3", helpers.python, helpers.shq(FLOOD_PY),
            table.concat(ports, ","), secs, edge))
        assert.equal(0, rc, out)
        local j = json.decode(out:match("{.*}"))
        local w = j.window_secs
        local accepted = j.window["200"] or 0
        local refused = j.window["429"] or 0
        local per_sec = accepted / w
        print(string.format("\n  redis rate-limit: %d accepted, %d refused in %.2f s: %.1f/s "
            .. "(by instance %s)", accepted, refused, w, per_sec, json.encode(j.window_by_port)))
        -- the client sent well over the limit ...
        assert.is_true(refused > accepted, out)
        -- ... nothing but 200 and 429 came back ...
        assert.equal(j.total, (j.status["200"] or 0) + (j.status["429"] or 0), out)
        -- ... and the three let through one limit, not three
        assert.is_true(per_sec >= 95 and per_sec <= 105, out)
        for _, p in ipairs(ports) do
            assert.is_true((j.window_by_port[tostring(p)] or 0) > 0, out)
        end
    end)

    it("shares one bucket per key across the instances", function()
        assert.equal(200, status(1, "/once"))
        assert.equal(429, status(2, "/once"))
        assert.equal(429, status(3, "/once"))
    end)

    it("falls back to this instance's limit, lets through or denies while Redis is down",
        function()
        rh.stop(redis)
        -- local: each instance its own bucket (rate 2 per hour)
        for i = 1, 3 do
            assert.equal(200, status(i, "/local"))
        end
        -- /once was used up in Redis; with Redis down it lets through
        for i = 1, 3 do
            assert.equal(200, status(i, "/once"))
        end
        local st, body = status(1, "/deny")
        assert.equal(503, st)
        assert.same({ error = "rate limiter unavailable" }, json.decode(body))
        -- a worker's local bucket: 2, then 429 (the workers share the dictionary)
        assert.equal(200, status(1, "/local"))
        assert.equal(429, status(1, "/local"))
        -- said once per worker and outage, not per request
        local log = mgs[1]:log()
        local n = select(2, log:gsub("rate%-limit: redis failed %(", ""))
        assert.is_true(n >= 1 and n <= 2, log)
        assert.matches("on_redis_error = local: this instance's own limit until it answers", log,
            1, true)

        rh.restart(redis)
        -- Redis is empty again: /deny has its one token, then the cluster's 429
        -- (a worker still in its backoff answers 503 a little longer)
        local function settled(i)
            return helpers.wait_until(function()
                local s = status(i, "/deny")
                return s ~= 503 and s
            end, 15, 0.1)
        end
        assert.equal(200, settled(2), "the redis limit did not come back")
        assert.equal(429, settled(3))
        -- the worker that logged the failure says so when it gets an answer
        -- (requests reach either worker: ask until that one has answered)
        assert(helpers.wait_until(function()
            status(2, "/once")
            return mgs[2]:log():match("rate%-limit: redis answers again")
        end, 10), mgs[2]:log())
    end)
end)
