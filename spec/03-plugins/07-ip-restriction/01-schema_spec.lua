-- ip-restriction: configuration checks (CIDR lists parsed at load).
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("ip-restriction schema", function()
    it("parses IPv4 and IPv6 blocks and single addresses", function()
        local conf = assert(ph.configure("ip-restriction", {
            allow = { "10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::1" },
            trusted_proxies = { "127.0.0.1" } }))
        assert.equal(4, #conf._allow.blocks)
        assert.equal(8, conf._allow.blocks[1].bits)
        assert.equal(128, conf._allow.blocks[4].bits)
        assert.equal(403, conf.status)
    end)

    local bad = {
        { {}, "give allow, deny, or both" },
        { { allow = { "10.0.0.0/33" } }, "field allow: item 1: bad prefix length in '10.0.0.0/33' (0-32)" },
        { { deny = { "1.2.3.4", "nope" } }, "field deny: item 2: bad address 'nope'" },
        { { deny = { "2001:db8::1::2" } }, "bad address '2001:db8::1::2'" },
        { { deny = { "::1/129" } }, "bad prefix length" },
        { { allow = "10.0.0.0/8" }, "field allow: expected an array" },
        { { deny = { "1.2.3.4" }, trusted_proxies = { "10.0.0.256" } }, "field trusted_proxies: item 1: bad address" },
        { { deny = { "1.2.3.4" }, status = 200 }, "field status: must be at least 400" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("ip-restriction", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end

    it("matches addresses against blocks (moongate.cidr)", function()
        local cidr = require "moongate.cidr"
        local set = assert(cidr.new_set({ "10.0.0.0/8", "2001:db8::/33", "172.16.0.0/12" }))
        assert.is_true(set:contains("10.200.1.1"))
        assert.is_false(set:contains("11.0.0.1"))
        assert.is_true(set:contains("::ffff:10.0.0.1")) -- IPv4-mapped
        assert.is_true(set:contains("2001:db8:7fff::1"))
        assert.is_false(set:contains("2001:db8:8000::1"))
        assert.is_true(set:contains("172.31.255.255"))
        assert.is_false(set:contains("172.32.0.0"))
        assert.is_false(set:contains("garbage"))
    end)
end)
