-- key-auth: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("key-auth schema", function()
    it("takes a list or a map of keys, with defaults for where to look", function()
        local conf = assert(ph.configure("key-auth", { keys = { "k1", "k2" } }))
        assert.same({ "apikey" }, conf.key_names)
        assert.same({ "apikey" }, conf._names)
        assert.is_true(conf.key_in_header)
        assert.is_true(conf.key_in_query)
        conf = assert(ph.configure("key-auth", { keys = { alice = "k1" }, key_names = { "X-API-Key" } }))
        assert.same({ "x-api-key" }, conf._names)
    end)

    local bad = {
        { {}, "field keys: required" },
        { { keys = {} }, "field keys: at least one key is required" },
        { { keys = { "" } }, "field keys: key 1: expected a non-empty string" },
        { { keys = { alice = 5 } }, "field keys: key 'alice': expected a non-empty string" },
        { { keys = { [true] = "k" } }, "field keys: expected a list of keys or a map name -> key" },
        { { keys = { "k" }, key_names = {} }, "field key_names: must have at least 1 items" },
        { { keys = { "k" }, key_names = { "a b" } }, "field key_names[1]: 'a b' does not match" },
        { { keys = { "k" }, key_in_query = 1 }, "field key_in_query: expected a boolean" },
        { { key = { "k" } }, "field key: unknown field (did you mean 'keys'?)" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("key-auth", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end
end)
