-- request-size-limit: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("request-size-limit schema", function()
    it("needs max_bytes", function()
        local conf = assert(ph.configure("request-size-limit", { max_bytes = 1024 }))
        assert.is_false(conf.require_length)
        local _, err = ph.configure("request-size-limit", {})
        assert.equal("field max_bytes: required", err)
        _, err = ph.configure("request-size-limit", { max_bytes = -1 })
        assert.equal("field max_bytes: must be at least 0, got -1", err)
        _, err = ph.configure("request-size-limit", { max_bytes = "1k" })
        assert.equal("field max_bytes: expected an integer, got '1k'", err)
    end)
end)
