-- headers: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("headers schema", function()
    it("defaults every group to empty and lower-cases response names", function()
        local conf = assert(ph.configure("headers", {}))
        assert.same({ set = {}, add = {}, remove = {} }, conf.request)
        assert.same({ set = {}, add = {}, remove = {} }, conf.response)
        assert.is_false(conf._has_response)
        conf = assert(ph.configure("headers", { response = { set = { ["X-A"] = "1" }, remove = { "Server" } } }))
        assert.same({ ["x-a"] = "1" }, conf._res_set)
        assert.same({ "server" }, conf._res_remove)
        assert.is_true(conf._has_response)
    end)

    local bad = {
        { { request = { set = { "X-A" } } }, "field request.set: expected string keys, found key 1" },
        { { request = { set = { ["X-A"] = 1 } } }, 'field request.set["X-A"]: expected a string, got 1' },
        { { request = { set = { ["X A"] = "1" } } }, "field request.set: bad header name 'X A'" },
        { { response = { remove = "Server" } }, "field response.remove: expected an array" },
        { { response = { adds = {} } }, "field response.adds: unknown field (did you mean 'add'?)" },
        { { requests = {} }, "field requests: unknown field (did you mean 'request'?)" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("headers", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end
end)
