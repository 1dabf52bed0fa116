-- Automatic certificates (ACME, RFC 8555) against a real ACME server:
-- Debian's pebble, started here on 127.0.0.1 with its own TLS certificate
-- (made here with openssl), no validation sleeps, and a short certificate
-- lifetime, its http-01 validation pointed at moongate's plain listener.
-- moongate's ACME process orders a certificate for localhost, the workers
-- serve it over HTTPS (it verifies against pebble's root, fetched from
-- pebble's management API), a restart reuses the stored one without a new
-- order, and at 2/3 of its lifetime it is renewed and swapped in without a
-- reload (same workers, an open connection still served).
local helpers = require "spec.helpers"
local acme_pebble = require "spec.acme_pebble"

local fmt = string.format
local shq = helpers.shq

local LIFETIME = 45 -- s, pebble's certificateValidityPeriod: renewal at about 2/3

local ROUTES = [[
return {
  { path = "/hello", handler = function(req, res) return 200, "hello\n" end },
}
]]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  admin = { listen = "127.0.0.1:$ADMIN" },
  tls = {
    listen = "127.0.0.1:$TLS_PORT",
    certificates = { { cert = "$CERTS/default.pem", key = "$CERTS/default.key" } },
  },
  acme = {
    directory = "https://127.0.0.1:$ACME_PORT/dir",
    contact = "mailto:ops@example.com",
    names = { "localhost", "nothere.invalid" },
    on_demand = { allow = { "*.od.test" }, max = 5 },
    storage = "$STORE",
    ca = "$CERTS/ca.pem",
    backoff = { min = 1, max = 4 },
  },
}
]]

local function sh_ok(cmd)
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, cmd .. "\n" .. out)
    return out
end

local function mode_of(path)
    local out = sh_ok("stat -c %a " .. shq(path))
    return out:match("%d+")
end

-- pebble and its DNS (spec/acme_pebble.lua): localhost and the names below
-- are 127.0.0.1 (moongate), every other name 127.0.0.2 (nobody), so
-- nothere.invalid fails its validation and nothing leaves the host
local pebble = {}

local function start_pebble(d, http_port, tls_port)
    pebble = acme_pebble.start(d, http_port, tls_port, { "localhost", "a.od.test", "alpn.test" },
        LIFETIME)
end

local function stop_pebble()
    acme_pebble.stop(pebble)
end

local function count(s, pat)
    local n = 0
    for _ in s:gmatch(pat) do n = n + 1 end
    return n
end

-- What openssl s_client sees for servername on the TLS listener.
local function s_client(port, servername, cafile)
    return helpers.sh(fmt("timeout 10 openssl s_client -connect 127.0.0.1:%d -servername %s "
        .. "-CAfile %s -showcerts < /dev/null 2>&1", port, shq(servername), shq(cafile)))
end

local function served_serial(port, servername)
    local out = helpers.sh(fmt("timeout 10 openssl s_client -connect 127.0.0.1:%d -servername %s "
        .. "< /dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null",
        port, shq(servername)))
    return out:match("serial=(%x+)")
end

local function acme_pid(mg)
    for _, p in ipairs(mg:workers()) do
        local comm = helpers.read_file("/proc/" .. p .. "/comm") or ""
        if comm:match("^moongate%-acme") then
            return p
        end
    end
end

local function workers_only(mg)
    local out, a = {}, acme_pid(mg)
    for _, p in ipairs(mg:workers()) do
        if p ~= a then out[#out + 1] = p end
    end
    return out
end

describe("acme", function()
    local d, store, mg, http_port, tls_port, admin_port

    local function start(name)
        return helpers.start_moongate({
            name = name, conf = CONF, routes = ROUTES, port = http_port, workers = 2,
            vars = { TLS_PORT = tls_port, ACME_PORT = pebble.port, STORE = store, CERTS = d,
                     ADMIN = admin_port },
        })
    end

    lazy_setup(function()
        d = helpers.tmpdir("acme")
        store = d .. "/store"
        acme_pebble.make_certs(d)
        http_port, tls_port = helpers.free_port(), helpers.free_port()
        admin_port = helpers.free_port()
        start_pebble(d, http_port, tls_port)
        mg = start("acme")
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        stop_pebble()
        helpers.cleanup()
    end)

    it("orders a certificate for localhost over http-01 and stores it 0600", function()
        local pem = store .. "/localhost.pem"
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("localhost: certificate stored", 1, true)
        end, 60), mg:log())
        assert.equal("600", mode_of(pem))
        assert.equal("600", mode_of(store .. "/account.key"))
        assert.equal("700", mode_of(store))
        local body = helpers.read_file(pem)
        assert.truthy(body:find("BEGIN CERTIFICATE", 1, true))
        assert.truthy(body:find("PRIVATE KEY", 1, true))
        -- pebble validated through moongate's plain listener
        assert.truthy(mg:log():find("http-01 challenge", 1, true))
        -- the workers were told
        assert.truthy(helpers.wait_until(function()
            return count(mg:log(), "new certificate for localhost serves new handshakes") >= 2
        end, 10), mg:log())
    end)

    it("serves it over HTTPS, verified against pebble's root", function()
        local out = s_client(tls_port, "localhost", pebble.root)
        assert.truthy(out:find("Verify return code: 0 (ok)", 1, true), out)
        assert.truthy(out:find("Pebble Intermediate CA", 1, true), out)
        local body = sh_ok(fmt("curl -sS --fail --max-time 10 --cacert %s --resolve "
            .. "localhost:%d:127.0.0.1 https://localhost:%d/hello", shq(pebble.root),
            tls_port, tls_port))
        assert.equal("hello\n", body)
    end)

    it("exports the ACME certificate's expiry beside the configured ones", function()
        -- every worker serves it (both were told): any scrape has the series
        local series = 'moongate_tls_certificate_expiry_timestamp_seconds{server="acme",name="localhost"}'
        for _ = 1, 4 do
            local st, _, text = helpers.http(admin_port, "GET", "/metrics",
                { headers = { "Connection: close" } })
            assert.equal(200, st)
            local v
            for line in text:gmatch("[^\n]+") do
                if line:sub(1, #series + 1) == series .. " " then v = tonumber(line:sub(#series + 2)) end
            end
            assert.truthy(v, text)
            -- pebble's short lifetime: notAfter is within it from now
            local now = os.time()
            assert.truthy(v > now - 5 and v <= now + LIFETIME + 5, tostring(v))
            assert.truthy(text:find('moongate_tls_certificate_expiry_timestamp_seconds{server="0",'
                .. 'name="default.test"}', 1, true), text)
            -- one family: its HELP once
            local _, nhelp = text:gsub("# HELP moongate_tls_certificate_expiry_timestamp_seconds ", "")
            assert.equal(1, nhelp)
        end
    end)

    it("serves the default certificate for a name it could not get, and says why", function()
        local out = s_client(tls_port, "nothere.invalid", d .. "/ca.pem")
        assert.truthy(out:find("CN = default.test", 1, true), out)
        assert.truthy(helpers.wait_until(function()
            local log = mg:log()
            return log:find("no certificate for nothere.invalid yet", 1, true)
                and log:find("nothere.invalid: .*retrying in %d+ s")
        end, 20), mg:log())
        -- backoff: not one order per second
        local log = mg:log()
        assert.truthy(count(log, "nothere.invalid: order ") <= 8, log)
    end)

    it("reuses the stored certificate after a restart, without a new order", function()
        local pem = store .. "/localhost.pem"
        local mtime = sh_ok("stat -c %Y " .. shq(pem))
        local serial = served_serial(tls_port, "localhost")
        assert.truthy(serial)
        local orders = count(helpers.read_file(pebble.log) or "", "Added order")
        mg:stop()
        mg = start("acme-restart")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("localhost: stored certificate", 1, true)
        end, 10), mg:log())
        assert.equal(serial, served_serial(tls_port, "localhost"))
        assert.equal(mtime, sh_ok("stat -c %Y " .. shq(pem)))
        assert.falsy(mg:log():find("localhost: order ", 1, true), mg:log())
        -- pebble saw orders only for the name it cannot validate
        local now = count(helpers.read_file(pebble.log) or "", "Added order")
        assert.truthy(now - orders <= count(mg:log(), "nothere.invalid: order "))
    end)

    it("renews at 2/3 of the lifetime and swaps without a reload or a dropped connection",
        function()
        local before = served_serial(tls_port, "localhost")
        local pids = workers_only(mg)
        assert.equal(2, #pids)
        local go, out = d .. "/go", d .. "/hold.out"
        sh_ok(fmt("%s %s %d localhost %s %s %s > /dev/null 2>&1 < /dev/null &", helpers.python,
            shq(helpers.root .. "/spec/fixtures/tls_hold.py"), tls_port, shq(pebble.root),
            shq(go), shq(out)))
        assert.truthy(helpers.wait_until(function()
            return (helpers.read_file(out) or ""):find("READY")
        end, 10), helpers.read_file(out))
        local after = helpers.wait_until(function()
            local s = served_serial(tls_port, "localhost")
            return s and s ~= before and s
        end, LIFETIME + 15, 0.5)
        assert.truthy(after, mg:log())
        assert.same(pids, workers_only(mg))
        assert.falsy(mg:log():find("reload: ", 1, true))
        helpers.write_file(go, "")
        assert.truthy(helpers.wait_until(function()
            return (helpers.read_file(out) or ""):find("SECOND")
        end, 10), helpers.read_file(out))
        local res = helpers.read_file(out)
        assert.truthy(res:find("SECOND 200 hello", 1, true), res)
        assert.truthy(res:find("READY " .. before, 1, true), res)
        -- the new one verifies too
        local s = s_client(tls_port, "localhost", pebble.root)
        assert.truthy(s:find("Verify return code: 0 (ok)", 1, true), s)
    end)

    it("orders a certificate on demand for a name seen in SNI that on_demand.allow covers",
        function()
        -- the first handshake: nothing yet, the default serves and the name is asked for
        local first = s_client(tls_port, "a.od.test", d .. "/ca.pem")
        assert.truthy(first:find("CN = default.test", 1, true), first)
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("no certificate for a.od.test yet", 1, true)
        end, 10), mg:log())
        local ok = helpers.wait_until(function()
            local out = s_client(tls_port, "a.od.test", pebble.root)
            return out:find("Verify return code: 0 (ok)", 1, true)
                and out:find("Pebble Intermediate CA", 1, true) and out
        end, 30, 0.3)
        assert.truthy(ok, mg:log())
        assert.equal("600", mode_of(store .. "/a.od.test.pem"))
        -- one order for it, whatever the workers and handshakes
        assert.equal(1, count(mg:log(), "a%.od%.test: order "))
        -- a name outside the allow list is not even asked for
        local other = s_client(tls_port, "b.other.test", d .. "/ca.pem")
        assert.truthy(other:find("CN = default.test", 1, true), other)
        assert.falsy(mg:log():find("b.other.test", 1, true), mg:log())
    end)

    it("restarts the ACME process when it dies, and when a reload changes the section",
        function()
        local a = acme_pid(mg)
        assert.truthy(a)
        helpers.kill(a, "KILL")
        local b = helpers.wait_until(function()
            local p = acme_pid(mg)
            return p and p ~= a and p
        end, 15, 0.1)
        assert.truthy(b, mg:log())
        assert.truthy(mg:log():find(fmt("acme: process %d killed by signal 9, restarting", a), 1,
            true), mg:log())
        -- a reload that leaves the section as it was keeps the process
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload: generation 2 serving", 1, true)
        end, 10), mg:log())
        assert.equal(b, acme_pid(mg))
        -- one that changes it starts it anew on the new section
        mg:write_conf((CONF:gsub("max = 4 }", "max = 3 }")))
        mg:signal("HUP")
        local c = helpers.wait_until(function()
            local p = acme_pid(mg)
            return mg:log():find("reload: generation 3 serving", 1, true) and p and p ~= b and p
        end, 15, 0.1)
        assert.truthy(c, mg:log())
        assert.truthy(helpers.wait_until(function()
            return mg:log():find(fmt("acme: process %d started", c), 1, true)
        end, 10), mg:log())
    end)

    it("validates with tls-alpn-01 (RFC 8737) on the TLS listener", function()
        mg:stop()
        local store2 = d .. "/store-alpn"
        mg = helpers.start_moongate({
            name = "acme-alpn", routes = ROUTES, port = http_port, workers = 2,
            vars = { TLS_PORT = tls_port, ACME_PORT = pebble.port, STORE = store2, CERTS = d,
                     ADMIN = admin_port },
            conf = CONF:gsub('names = { "localhost", "nothere.invalid" },',
                'names = { "alpn.test" }, challenge = "tls-alpn-01", renew = 0.1,'),
        })
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("alpn.test: certificate stored", 1, true)
        end, 30), mg:log())
        -- pebble came to the TLS listener, not to the plain one
        assert.falsy(mg:log():find("http-01 challenge", 1, true), mg:log())
        assert.is_nil(helpers.read_file(store2 .. "/alpn.test.alpn.pem"))
        assert.truthy(helpers.wait_until(function()
            local out = s_client(tls_port, "alpn.test", pebble.root)
            return out:find("Verify return code: 0 (ok)", 1, true)
                and out:find("Pebble Intermediate CA", 1, true)
        end, 10, 0.2), mg:log())
        -- renewed (renew = 0.1: after about 4.5 s) while the name has its
        -- certificate: the validator must still get the challenge's
        assert.truthy(helpers.wait_until(function()
            return count(mg:log(), "alpn%.test: certificate stored") >= 2
        end, 30), mg:log())
        assert.falsy(mg:log():find("tls-alpn-01 for alpn.test failed", 1, true), mg:log())
    end)

    it("refuses a bad acme section at load with file: reason", function()
        local conf = d .. "/bad.lua"
        helpers.mkdir_p(d .. "/scripts")
        helpers.write_file(d .. "/scripts/routes.lua", ROUTES)
        local cases = {
            { 'names = { "*.example.com" }', "wildcard" },
            { 'names = { "localhost" }, challenge = "dns-01"', "challenge" },
            { 'names = { "localhost" }, ca = "/nonexistent/ca.pem"', "nonexistent" },
            { 'names = { "localhost" }, renew = 1.5', "renew" },
            { 'names = { "a.test", "A.test" }', "twice" },
            { 'on_demand = { allow = { "*.*.test" } }', "on_demand.allow" },
        }
        for _, c in ipairs(cases) do
            helpers.write_file(conf, fmt([[return {
  listen = "127.0.0.1:1",
  acme = { directory = "https://127.0.0.1:1/dir", %s },
}
]], c[1]))
            local res, rc = helpers.sh(fmt("%s -t -c %s", shq(helpers.bin), shq(conf)))
            assert.are_not.equal(0, rc)
            assert.truthy(res:find("bad.lua:%d+: acme"), res)
            assert.truthy(res:find(c[2], 1, true), res)
        end
    end)
end)
