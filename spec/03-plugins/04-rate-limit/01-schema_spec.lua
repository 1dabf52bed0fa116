-- rate-limit: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("rate-limit schema", function()
    local env = { shared_dicts = { rate_limit = 1048576, other = 65536 } }

    it("derives the per-second rate and the bucket size", function()
        local conf = assert(ph.configure("rate-limit", { rate = 120, per = "minute" }, env))
        assert.equal(2, conf._rate)
        assert.equal(120, conf._burst)
        assert.equal("ip", conf.key)
        assert.equal("route", conf.scope)
        conf = assert(ph.configure("rate-limit", { rate = 0.5, burst = 3 }, env))
        assert.equal(3, conf._burst)
        conf = assert(ph.configure("rate-limit", { rate = 0.5 }, env))
        assert.equal(1, conf._burst)
    end)

    local bad = {
        { {}, "field rate: required" },
        { { rate = 0 }, "field rate: must be at least 0.001" },
        { { rate = 1, per = "day" }, "field per: expected one of 'second', 'minute', 'hour', got 'day'" },
        { { rate = 1, key = "header" }, "field header: required when key = \"header\"" },
        { { rate = 1, key = "jwt_claim" }, "field claim: required when key = \"jwt_claim\"" },
        { { rate = 1, key = "cookie" }, "field key: expected one of" },
        { { rate = 1, burst = 0 }, "field burst: must be at least 1" },
        { { rate = 1, dict = "nope" }, "field dict: no shared dictionary 'nope'" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("rate-limit", c[1], env)
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end

    it("takes policy = \"redis\" only with the conf's redis", function()
        local conf, err = ph.configure("rate-limit", { rate = 1, policy = "redis" }, env)
        assert.is_nil(conf)
        assert.matches("field policy: policy = \"redis\" needs the conf's redis", err, 1, true)
        local renv = { shared_dicts = env.shared_dicts, redis = { host = "127.0.0.1" } }
        conf = assert(ph.configure("rate-limit", { rate = 1, policy = "redis" }, renv))
        assert.equal("local", conf.on_redis_error)
        -- the shared dictionary is needed only for the local fallback
        conf, err = ph.configure("rate-limit", { rate = 1, policy = "redis", dict = "nope" }, renv)
        assert.is_nil(conf)
        assert.matches("field dict: no shared dictionary 'nope'", err, 1, true)
        assert(ph.configure("rate-limit", { rate = 1, policy = "redis", dict = "nope",
                                            on_redis_error = "deny" }, renv))
        conf, err = ph.configure("rate-limit", { rate = 1, on_redis_error = "maybe" }, env)
        assert.is_nil(conf)
        assert.matches("field on_redis_error: expected one of", err, 1, true)
    end)
end)
