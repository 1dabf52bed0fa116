-- forward-auth: configuration checks and defaults.
local ph = require "spec.plugin_helpers"
ph.stub_moongate()

describe("forward-auth schema", function()
    local env = { upstreams = { auth = {} } }

    it("takes a url or an upstream and path, with defaults", function()
        local conf = assert(ph.configure("forward-auth", { url = "http://127.0.0.1:9/check" }, env))
        assert.equal("GET", conf.method)
        assert.equal(5, conf.timeout)
        assert.same({ "authorization", "cookie" }, conf._request_headers)
        assert.equal(503, conf.status_on_error)
        conf = assert(ph.configure("forward-auth", { upstream = "auth", upstream_headers = { "X-User" } }, env))
        assert.equal("/", conf.path)
        assert.same({ "x-user" }, conf._upstream_headers)
    end)

    local bad = {
        { {}, "give url or upstream (one of them)" },
        { { url = "http://a:1", upstream = "auth" }, "give url or upstream (one of them)" },
        { { url = "https://auth.test/" }, "field url: 'https://auth.test/' does not match" },
        { { upstream = "nope" }, "field upstream: unknown upstream 'nope'" },
        { { upstream = "auth", path = "check" }, "field path: 'check' does not match" },
        { { url = "http://a:1", method = "PUT" }, "field method: expected one of 'GET', 'POST', 'HEAD'" },
        { { url = "http://a:1", request_headers = { "bad name" } }, "field request_headers: item 1: bad header name" },
        { { url = "http://a:1", timeout = 0 }, "field timeout: must be at least 0.001" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("forward-auth", c[1], env)
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end
end)
