-- The worked example of docs/plugins.md (examples/plugins/hello-header):
-- its schema, defaults and load-time check.
local helpers = require "spec.helpers"
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

local plugins = require "moongate.plugins"

describe("hello-header schema", function()
    local plugin

    lazy_setup(function()
        -- examples/plugins/<name>/ is laid out as a project's plugins/ dir
        plugin = assert(plugins.new({ root = helpers.root .. "/examples" }):get("hello-header"))
    end)

    it("loads with its defaults", function()
        assert.equal("1.0.0", plugin.VERSION)
        assert.equal(500, plugin.PRIORITY)
        local conf = assert(plugins.configure(plugin, {}))
        assert.equal("X-Hello", conf.header)
        assert.equal("hello", conf.greeting)
        assert.same({}, conf.blocked)
        assert.equal("x-hello", conf._header)
    end)

    local bad = {
        { { greeting = "" }, "field greeting: must have at least 1 characters" },
        { { header = "X Hello" }, "field header: 'X Hello' does not match" },
        { { blocked = { "" } }, "field blocked: names must not be empty" },
        { { blocked = "eve" }, "field blocked: expected an array, got 'eve'" },
        { { greting = "hi" }, "field greting: unknown field (did you mean 'greeting'?)" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = plugins.configure(plugin, c[1])
            assert.is_nil(conf)
            assert.equal(c[2], err:sub(1, #c[2]))
        end)
    end
end)
