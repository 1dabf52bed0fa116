-- request-id: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("request-id schema", function()
    it("defaults to the core's X-Request-Id, echoed", function()
        local conf = assert(ph.configure("request-id", {}))
        assert.equal("X-Request-Id", conf.header_name)
        assert.equal("x-request-id", conf._lower)
        assert.is_true(conf.echo_downstream)
        assert.is_true(conf.keep_incoming)
        assert.equal("uuid", conf.generator)
    end)

    local bad = {
        { { header_name = "X Id" }, "field header_name: 'X Id' does not match" },
        { { generator = "ulid" }, "field generator: expected one of 'uuid', 'hex', got 'ulid'" },
        { { max_length = 0 }, "field max_length: must be at least 1" },
        { { echo = true }, "field echo: unknown field" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("request-id", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end
end)
