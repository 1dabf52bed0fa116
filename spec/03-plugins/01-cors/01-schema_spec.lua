-- cors: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("cors schema", function()
    it("has working defaults", function()
        local conf = assert(ph.configure("cors", {}))
        assert.same({ "*" }, conf.origins)
        assert.equal(3600, conf.max_age)
        assert.is_false(conf.credentials)
        assert.is_nil(conf.headers)
        assert.is_true(conf._any)
        assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS", conf._methods)
    end)

    it("anchors origin patterns", function()
        local conf = assert(ph.configure("cors", { origins = {},
            origin_patterns = { "https://[%w-]+%.example%.com", "^http://localhost:%d+$" } }))
        assert.same({ "^https://[%w-]+%.example%.com$", "^http://localhost:%d+$" }, conf._patterns)
        assert.is_false(conf._any)
    end)

    local bad = {
        { { origins = "*" }, "field origins: expected an array, got '*'" },
        { { origin_patterns = { "[a-" } }, "field origin_patterns: item 1: malformed Lua pattern" },
        { { methods = { "get" } }, "field methods[1]: 'get' does not match" },
        { { headers = { "X Bad" } }, "field headers[1]: 'X Bad' does not match" },
        { { credentials = "yes" }, "field credentials: expected a boolean, got 'yes'" },
        { { max_age = 1.5 }, "field max_age: expected an integer, got 1.5" },
        { { origin = { "*" } }, "field origin: unknown field (did you mean 'origins'?)" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("cors", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end

    it("is refused by moongate -t with the route's file:line", function()
        local dir = ph.project("cors-t", [[return { listen = "127.0.0.1:1" }]], [[
return {
  { path = "/ok", handler = function() return 200 end },
  { path = "/x", handler = function() return 200 end,
    plugins = { cors = { max_age = "1h" } } },
}]])
        local out, rc = ph.check_project(dir)
        assert.are_not.equal(0, rc)
        assert.matches("scripts/routes.lua:3: plugin cors: field max_age: expected an integer, got '1h'",
            out, 1, true)
    end)
end)
