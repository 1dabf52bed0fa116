-- HTTP/2 on ACME certificates: a TLS listener whose certificate comes from
-- ACME (pebble, tls-alpn-01 on that very listener) offers ALPN h2 as it
-- does with a static certificate when http2 is on, while the validator's
-- acme-tls/1 still gets the challenge certificate (the order and a renewal
-- succeed with h2 offered); with http2 off the ACME certificate is served
-- over HTTP/1.1 only.
local helpers = require "spec.helpers"
local pebble = require "spec.acme_pebble"

local fmt = string.format
local shq = helpers.shq

local ROUTES = [[
return {
  { path = "/hello", handler = function(req, res) return 200, "hello " .. req.http_version .. "\n" end },
}
]]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  http2 = $H2,
  tls = {
    listen = "127.0.0.1:$TLS_PORT",
    certificates = { { cert = "$CERTS/default.pem", key = "$CERTS/default.key" } },
  },
  acme = {
    directory = "https://127.0.0.1:$ACME_PORT/dir",
    contact = "mailto:ops@example.com",
    names = { "alpn.test" },
    challenge = "tls-alpn-01",
    renew = $RENEW,
    storage = "$STORE",
    ca = "$CERTS/ca.pem",
    backoff = { min = 1, max = 4 },
  },
}
]]

local function count(s, pat)
    local n = 0
    for _ in s:gmatch(pat) do n = n + 1 end
    return n
end

describe("http2 on ACME certificates", function()
    local d, store, mg, p, http_port, tls_port

    local function start(name, h2, renew)
        return helpers.start_moongate({
            name = name, conf = CONF, routes = ROUTES, port = http_port, workers = 2,
            vars = { TLS_PORT = tls_port, ACME_PORT = p.port, STORE = store, CERTS = d,
                     H2 = h2, RENEW = renew },
        })
    end

    -- curl to alpn.test on the TLS listener, verified against pebble's root:
    -- the body and the HTTP version curl spoke
    local function get(flag)
        local out, rc = helpers.sh(fmt("curl -sS --max-time 10 %s --cacert %s --resolve "
            .. "alpn.test:%d:127.0.0.1 -w '|%%{http_version}' https://alpn.test:%d/hello 2>&1",
            flag, shq(p.root), tls_port, tls_port))
        return out, rc
    end

    -- openssl s_client offering protos: the ALPN it got, and whether the
    -- chain verified against pebble's root
    local function s_client(protos)
        local out = helpers.sh(fmt("timeout 10 openssl s_client -connect 127.0.0.1:%d "
            .. "-servername alpn.test -alpn %s -CAfile %s < /dev/null 2>&1", tls_port,
            protos, shq(p.root)))
        return out:match("ALPN protocol: (%S+)") or "none",
            out:find("Verify return code: 0 (ok)", 1, true) ~= nil, out
    end

    lazy_setup(function()
        d = helpers.tmpdir("h2acme")
        store = d .. "/store"
        pebble.make_certs(d)
        http_port, tls_port = helpers.free_port(), helpers.free_port()
        p = pebble.start(d, http_port, tls_port, { "alpn.test" }, 45)
        -- renew = 0.1: a renewal (a second tls-alpn-01 validation on the
        -- h2 listener) about 4.5 s after the first certificate
        mg = start("h2acme", "true", "0.1")
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if p then pebble.stop(p) end
        helpers.cleanup()
    end)

    it("gets its certificate over tls-alpn-01 on an h2 listener and serves h2 with it", function()
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("alpn.test: certificate stored", 1, true)
        end, 30), mg:log())
        assert.truthy(helpers.wait_until(function()
            local alpn, ok = s_client("h2,http/1.1")
            return alpn == "h2" and ok
        end, 10, 0.2), mg:log())
        local alpn, ok, out = s_client("h2,http/1.1")
        assert.equal("h2", alpn, out)
        assert.truthy(ok, out)
        assert.truthy(out:find("Pebble Intermediate CA", 1, true), out)
        local body, rc = get("--http2")
        assert.equal(0, rc, body)
        assert.equal("hello 2.0\n|2", body)
        -- a client without h2 still gets HTTP/1.1 on the same certificate
        body, rc = get("--http1.1")
        assert.equal(0, rc, body)
        assert.equal("hello 1.1\n|1.1", body)
        alpn = s_client("http/1.1")
        assert.equal("http/1.1", alpn)
        -- the listener's own certificate (another name) offers h2 as before
        local o = helpers.sh(fmt("timeout 10 openssl s_client -connect 127.0.0.1:%d "
            .. "-servername default.test -alpn h2,http/1.1 < /dev/null 2>&1", tls_port))
        assert.truthy(o:find("ALPN protocol: h2", 1, true), o)
    end)

    it("renews with tls-alpn-01 while h2 is offered, and h2 goes on being served", function()
        assert.truthy(helpers.wait_until(function()
            return count(mg:log(), "alpn%.test: certificate stored") >= 2
        end, 30), mg:log())
        assert.falsy(mg:log():find("tls-alpn-01 for alpn.test failed", 1, true), mg:log())
        local body, rc = get("--http2")
        assert.equal(0, rc, body)
        assert.equal("hello 2.0\n|2", body)
    end)

    it("offers no h2 on the ACME certificate when http2 is off", function()
        mg:stop()
        -- the stored certificate serves at once (no new order)
        mg = start("h2acme-off", "false", "0.66")
        assert.truthy(helpers.wait_until(function()
            local _, ok = s_client("h2,http/1.1")
            return ok
        end, 10, 0.2), mg:log())
        local alpn, ok, out = s_client("h2,http/1.1")
        assert.equal("http/1.1", alpn, out)
        assert.truthy(ok, out)
        local body, rc = get("--http2")
        assert.equal(0, rc, body)
        assert.equal("hello 1.1\n|1.1", body)
    end)
end)
