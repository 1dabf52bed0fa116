-- ws-message-limit: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("ws-message-limit schema", function()
    it("takes a size, a rate, or both", function()
        local conf = assert(ph.configure("ws-message-limit", { max_bytes = 100 }))
        assert.equal("client", conf.direction)
        assert.equal("close", conf.action)
        assert.equal(1009, conf.size_close_code)
        assert.equal(1008, conf.rate_close_code)
        conf = assert(ph.configure("ws-message-limit", { rate = 2.5 }))
        assert.equal(3, conf._burst)
    end)

    local bad = {
        { {}, "give max_bytes, rate, or both" },
        { { max_bytes = 0 }, "field max_bytes: must be at least 1" },
        { { max_bytes = 1, burst = 2 }, "field burst: burst needs rate" },
        { { rate = 1, action = "kick" }, "field action: expected one of 'close', 'drop'" },
        { { rate = 1, direction = "server" }, "field direction: expected one of 'client', 'both'" },
        { { rate = 1, size_close_code = 999 }, "field size_close_code: must be at least 1000" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("ws-message-limit", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end

    it("is refused on a route that is not a relay or handler WebSocket", function()
        local dir = ph.project("wsml-t", [[return { listen = "127.0.0.1:1",
  upstreams = { up = { servers = { "http://127.0.0.1:2" } } } }]], [[
return {
  { path = "/tun", upstream = "up", websocket = { mode = "tunnel" },
    plugins = { ["ws-message-limit"] = { max_bytes = 10 } } },
}]])
        local out, rc = ph.check_project(dir)
        assert.are_not.equal(0, rc)
        assert.matches("scripts/routes.lua:2: plugin ws-message-limit: applies to WebSocket routes in relay "
            .. "or handler mode only", out, 1, true)
    end)
end)
