-- HTTPS at the edge, the extras beside the TLS listeners: redirect_https
-- (plain listeners answer with a 301/308 to https, before routing; ACME
-- http-01 paths exempt; never on TLS), HSTS on TLS responses only, OCSP
-- stapling from a configured response file (checked at load, refused with
-- file: reason, per certificate), and the shipped demo page over HTTPS in
-- headless Chromium (wss:// streams and chat). Every certificate, key and
-- OCSP response is made here with `openssl` into spec/out/ (test only).
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local shq = helpers.shq
local fmt = string.format

-- runs an openssl (or any) command line; fails the spec on error
local function run(cmd)
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, cmd .. "\n" .. out)
    return out
end

-- A test CA, leaf certificates it signs, and an OCSP responder's index.
local PKI = {}
PKI.__index = PKI

local function new_pki(name)
    local dir = helpers.tmpdir(name)
    local p = setmetatable({ dir = dir, index = {} }, PKI)
    p.ca, p.ca_key = dir .. "/ca.pem", dir .. "/ca.key"
    run(fmt("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
        .. "-subj '/CN=moongate spec 53 test CA (test only)' -addext basicConstraints=critical,CA:TRUE "
        .. "-addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature -keyout %s -out %s",
        shq(p.ca_key), shq(p.ca)))
    return p
end

-- leaf(name, serial_hex, kind "ec"|"rsa"): cert (leaf + CA: a chain), key
function PKI:leaf(name, serial, kind)
    local d = self.dir
    local key, csr, crt = d .. "/" .. name .. ".key", d .. "/" .. name .. ".csr", d .. "/" .. name .. ".crt"
    local ext = d .. "/" .. name .. ".ext"
    helpers.write_file(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        .. "extendedKeyUsage=serverAuth\n")
    local newkey = kind == "rsa" and "-newkey rsa:2048" or "-newkey ec -pkeyopt ec_paramgen_curve:P-256"
    run(fmt("openssl req -new %s -nodes -subj /CN=localhost -keyout %s -out %s", newkey, shq(key), shq(csr)))
    run(fmt("openssl x509 -req -in %s -CA %s -CAkey %s -set_serial 0x%s -days 2 -extfile %s -out %s",
        shq(csr), shq(self.ca), shq(self.ca_key), serial, shq(ext), shq(crt)))
    local chain = d .. "/" .. name .. ".pem"
    helpers.write_file(chain, helpers.read_file(crt) .. helpers.read_file(self.ca))
    return { cert = chain, leaf = crt, key = key, serial = serial:upper() }
end

-- An OCSP response about leaf, signed by the CA (status "V" good, "R"
-- revoked), written to leaf's name .. suffix .. ".der".
function PKI:ocsp(leaf, status, suffix)
    local d = self.dir
    local index = d .. "/index-" .. leaf.serial .. ".txt"
    local line = status == "R"
        and fmt("R\t301231000000Z\t250101000000Z\t%s\tunknown\t/CN=localhost\n", leaf.serial)
        or fmt("V\t301231000000Z\t\t%s\tunknown\t/CN=localhost\n", leaf.serial)
    helpers.write_file(index, line)
    local req = d .. "/" .. leaf.serial .. ".req"
    local der = leaf.leaf:gsub("%.crt$", "") .. (suffix or "") .. ".ocsp.der"
    run(fmt("openssl ocsp -issuer %s -cert %s -no_nonce -reqout %s", shq(self.ca), shq(leaf.leaf), shq(req)))
    run(fmt("openssl ocsp -index %s -rsigner %s -rkey %s -CA %s -reqin %s -respout %s -ndays 1",
        shq(index), shq(self.ca), shq(self.ca_key), shq(self.ca), shq(req), shq(der)))
    return der
end

-- The SPKI hash Chromium's --ignore-certificate-errors-spki-list takes
local function spki(cert)
    return (run(fmt("openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform der "
        .. "| openssl dgst -sha256 -binary | openssl enc -base64", shq(cert))):gsub("%s+", ""))
end

-- One HTTPS request with curl against 127.0.0.1 (named localhost, so the
-- certificate's name checks). Returns status, headers (lower-case names;
-- repeats as a list in .all[name]), body.
local function https(port, path, ca, opts)
    opts = opts or {}
    local d = helpers.mkdir_p(helpers.out .. "/curl")
    local base = fmt("%s/53-%d-%d", d, os.time(), math.random(1e9))
    local hargs = {}
    for _, h in ipairs(opts.headers or {}) do
        hargs[#hargs + 1] = "-H " .. shq(h)
    end
    local out = helpers.sh(fmt("curl -sS --max-time 10 --cacert %s --resolve localhost:%d:127.0.0.1 "
        .. "-D %s -o %s -w '%%{http_code}' %s %s", shq(ca), port, shq(base .. ".head"),
        shq(base .. ".body"), table.concat(hargs, " "), shq(fmt("https://localhost:%d%s", port, path))))
    local head = helpers.read_file(base .. ".head") or ""
    local body = helpers.read_file(base .. ".body") or ""
    os.remove(base .. ".head")
    os.remove(base .. ".body")
    local h, all = {}, {}
    for name, value in head:gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do
        name = name:lower()
        h[name] = value
        all[name] = all[name] or {}
        table.insert(all[name], value)
    end
    h.all = all
    return tonumber(out:match("(%d%d%d)%s*$")) or 0, h, body, out
end

local ROUTES = [[
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/own-hsts", handler = function()
      return 200, "own\n", { ["Strict-Transport-Security"] = "max-age=5" }
  end },
  { prefix = "/.well-known/acme-challenge", handler = function(req)
      return 200, "acme:" .. req.path
  end },
}
]]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  redirect_https = 308,
  trusted_proxies = { "127.0.0.1/32" },
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = "$CERT", key = "$KEY" } },
    hsts = "max-age=63072000; includeSubDomains",
  },
  servers = {
    other = { listen = "127.0.0.1:$OTHERPORT", routes = "scripts/routes.lua", redirect_https = 301 },
  },
}
]]

describe("redirect_https and HSTS", function()
    local pki, leaf, mg, tls_port, other_port

    lazy_setup(function()
        pki = new_pki("tls-extras-redirect")
        leaf = pki:leaf("leaf", "1001", "ec")
        tls_port, other_port = helpers.free_port(), helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-extras-redirect", conf = CONF, routes = ROUTES,
            vars = { TLSPORT = tls_port, OTHERPORT = other_port, CERT = leaf.cert, KEY = leaf.key } })
        assert(helpers.wait_until(function() return helpers.port_open(tls_port) end, 5))
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("answers a plain request with 308 to the same host and target on the TLS port", function()
        local st, h, body = helpers.http(mg.port, "GET", "/some/path?a=1&b=%20x",
            { headers = { "Host: Example.COM:8080" } })
        assert.equal(308, st)
        assert.equal(fmt("https://Example.COM:%d/some/path?a=1&b=%%20x", tls_port), h["location"])
        assert.is_nil(h["strict-transport-security"], "HSTS on a plain response")
        assert.matches("https", body)
        assert.equal(#body, tonumber(h["content-length"]))
    end)

    it("keeps an IPv6 literal host and redirects before routing (no route, POST with a body)", function()
        local st, h = helpers.http(mg.port, "POST", "/no/such/route", { headers = { "Host: [::1]:8080" },
            body = "x=1" })
        assert.equal(308, st)
        assert.equal(fmt("https://[::1]:%d/no/such/route", tls_port), h["location"])
    end)

    it("does not redirect what a trusted balancer says came over https (it would loop)", function()
        local st, h, body = helpers.http(mg.port, "GET", "/hello",
            { headers = { "Host: example.com", "X-Forwarded-Proto: https" } })
        assert.equal(200, st)
        assert.equal("hello\n", body)
        assert.is_nil(h["location"])
        st = helpers.http(mg.port, "GET", "/hello",
            { headers = { "Host: example.com", "X-Forwarded-Proto: http" } })
        assert.equal(308, st)
        -- the other server trusts no one: the header changes nothing there
        st = helpers.http(other_port, "GET", "/hello",
            { headers = { "Host: example.com", "X-Forwarded-Proto: https" } })
        assert.equal(301, st)
    end)

    it("leaves ACME http-01 challenges alone", function()
        local st, h, body = helpers.http(mg.port, "GET", "/.well-known/acme-challenge/tok123",
            { headers = { "Host: example.com" } })
        assert.equal(200, st)
        assert.equal("acme:/.well-known/acme-challenge/tok123", body)
        assert.is_nil(h["location"])
    end)

    it("needs a Host to redirect an HTTP/1.0 request", function()
        local c = helpers.raw(mg.port, "GET /x HTTP/1.0\r\n\r\n")
        assert.matches("^HTTP/1.1 400", c)
    end)

    it("uses each server's own setting: 301 and no port without a TLS listener", function()
        local st, h = helpers.http(other_port, "GET", "/hello", { headers = { "Host: other.example:9" } })
        assert.equal(301, st)
        assert.equal("https://other.example/hello", h["location"])
    end)

    it("serves TLS requests with HSTS and never redirects them", function()
        local st, h, body = https(tls_port, "/hello", pki.ca)
        assert.equal(200, st, body)
        assert.equal("hello\n", body)
        assert.equal("max-age=63072000; includeSubDomains", h["strict-transport-security"])
        assert.is_nil(h["location"])
        -- our own errors too (RFC 6797 8.1: every response over TLS)
        st, h = https(tls_port, "/nothing-here", pki.ca)
        assert.equal(404, st)
        assert.equal("max-age=63072000; includeSubDomains", h["strict-transport-security"])
    end)

    it("keeps a response's own Strict-Transport-Security, once", function()
        local st, h = https(tls_port, "/own-hsts", pki.ca)
        assert.equal(200, st)
        assert.same({ "max-age=5" }, h.all["strict-transport-security"])
    end)

    it("refuses a bad redirect_https or hsts at load with file:line, and keeps serving", function()
        local good = helpers.read_file(mg.conf_path)
        mg:write_conf(CONF:gsub("redirect_https = 308", "redirect_https = 302"))
        local out, rc = helpers.sh(fmt("%s -t -c %s", shq(helpers.bin), shq(mg.conf_path)))
        assert.equal(1, rc, out)
        assert.matches("moongate%.lua:4: redirect_https: expected false, 301 or 308, got 302", out)
        mg:write_conf(CONF:gsub("max%-age=63072000; includeSubDomains", "includeSubDomains"))
        out, rc = helpers.sh(fmt("%s -t -c %s", shq(helpers.bin), shq(mg.conf_path)))
        assert.equal(1, rc, out)
        assert.matches("hsts: 'includeSubDomains' has no max%-age=<seconds> directive", out)
        mg:reload(0.2)
        assert(helpers.wait_until(function()
            return mg:log():find("has no max-age", 1, true)
        end, 5), "the refusal is not in the log:\n" .. mg:log():sub(-2000))
        local st = helpers.http(mg.port, "GET", "/x", { headers = { "Host: a.example" } })
        assert.equal(308, st)
        st = https(tls_port, "/hello", pki.ca)
        assert.equal(200, st)
        helpers.write_file(mg.conf_path, good)
    end)
end)

-- openssl s_client -status against a port: the handshake's output
local function s_client(port, extra)
    return helpers.sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -servername localhost "
        .. "-status %s 2>&1", port, extra or ""))
end

local OCSP_CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { $CERTS },
  },
}
]]

local function certs_lua(list)
    local t = {}
    for _, c in ipairs(list) do
        t[#t + 1] = fmt("{ cert = %q, key = %q%s }", c.cert, c.key, c.ocsp and fmt(", ocsp = %q", c.ocsp) or "")
    end
    return table.concat(t, ", ")
end

describe("OCSP stapling", function()
    local pki, ec, rsa, other, mg, tls_port

    lazy_setup(function()
        pki = new_pki("tls-extras-ocsp")
        ec = pki:leaf("ec", "1001", "ec")
        rsa = pki:leaf("rsa", "1002", "rsa")
        other = pki:leaf("other", "1003", "ec")
        ec.ocsp = pki:ocsp(ec, "V")
        rsa.ocsp = pki:ocsp(rsa, "V")
        other.ocsp = pki:ocsp(other, "V")
        tls_port = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-extras-ocsp", conf = OCSP_CONF, routes = ROUTES,
            vars = { TLSPORT = tls_port, CERTS = certs_lua({ ec, rsa }) } })
        assert(helpers.wait_until(function() return helpers.port_open(tls_port) end, 5))
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("staples the configured response (openssl s_client -status)", function()
        local out = s_client(tls_port, "-CAfile " .. shq(pki.ca))
        assert.matches("OCSP Response Status: successful", out)
        assert.matches("Cert Status: good", out)
        assert.matches("Verify return code: 0 %(ok%)", out)
    end)

    it("staples each certificate's own response (ECDSA and RSA for one name)", function()
        local out = s_client(tls_port, "-sigalgs ecdsa_secp256r1_sha256")
        assert.matches("OCSP Response Status: successful", out)
        assert.matches("Serial Number: 1001", out)
        out = s_client(tls_port, "-sigalgs rsa_pss_rsae_sha256")
        assert.matches("OCSP Response Status: successful", out)
        assert.matches("Serial Number: 1002", out)
    end)

    -- moongate -t on the conf with these certificates: output, exit status
    local function check(list)
        local dir = helpers.tmpdir("tls-extras-ocsp-t")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/scripts/routes.lua", ROUTES)
        helpers.write_file(dir .. "/conf/moongate.lua", helpers.expand(OCSP_CONF,
            { PORT = 1, TLSPORT = 2, CERTS = certs_lua(list) }))
        return helpers.sh(fmt("timeout 20 %s -t -c %s", shq(helpers.bin), shq(dir .. "/conf/moongate.lua")))
    end

    it("refuses a broken response file at load with file: reason", function()
        local garbage = pki.dir .. "/garbage.der"
        helpers.write_file(garbage, "this is not DER\n")
        local cases = {
            { ocsp = pki.dir .. "/missing.der", want = "missing%.der: " },
            { ocsp = garbage, want = "garbage%.der: not a DER%-encoded OCSP response" },
            { ocsp = other.ocsp, want = "other%.ocsp%.der: the OCSP response is not about this certificate" },
            { ocsp = pki:ocsp(ec, "R", "-revoked"), want = "ec%-revoked%.ocsp%.der: the OCSP response says "
                .. "the certificate is revoked" },
        }
        for _, c in ipairs(cases) do
            local out, rc = check({ { cert = ec.cert, key = ec.key, ocsp = c.ocsp } })
            assert.equal(1, rc, out)
            assert.matches(c.want, out)
        end
        local out, rc = check({ ec })
        assert.equal(0, rc, out)
    end)

    it("keeps the old generation's stapling when a reload's response is broken", function()
        local good = helpers.read_file(mg.conf_path)
        local garbage = pki.dir .. "/garbage2.der"
        helpers.write_file(garbage, "junk")
        mg:write_conf(OCSP_CONF:gsub("%$CERTS", certs_lua({ { cert = ec.cert, key = ec.key, ocsp = garbage } })))
        mg:reload(0.2)
        assert(helpers.wait_until(function()
            return mg:log():find("garbage2.der: not a DER-encoded OCSP response", 1, true)
        end, 5), "the refusal is not in the log:\n" .. mg:log():sub(-2000))
        local out = s_client(tls_port, "-sigalgs ecdsa_secp256r1_sha256")
        assert.matches("OCSP Response Status: successful", out)
        assert.matches("Serial Number: 1001", out)
        -- a good reload without ocsp: no staple on the next handshake
        mg:write_conf(OCSP_CONF:gsub("%$CERTS", certs_lua({ { cert = ec.cert, key = ec.key } })))
        mg:reload(0.2)
        assert(helpers.wait_until(function()
            return s_client(tls_port):find("OCSP response: no response sent", 1, true)
        end, 5), "still stapling after the reload")
        helpers.write_file(mg.conf_path, good)
    end)
end)

-- spec 34's page check, over HTTPS (wss:// for the stream and the chat)
local RESULT = [[({
  state: document.body.dataset.state,
  protocol: location.protocol,
  statuses: [...document.querySelectorAll('#timeline li.status')].map((l) => l.dataset.status),
  heartbeats: Number(document.getElementById('heartbeats').textContent),
  closed: [...document.querySelectorAll('#timeline li.msg-close')].map((l) => l.textContent),
  agent: [...document.querySelectorAll('#messages .bubble.agent')].map((b) => b.textContent),
})]]

local SEED_CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  log_level = "info",
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = "$CERT", key = "$KEY" } },
    hsts = "max-age=60",
  },
  servers = {
    demo_runtime = { listen = "127.0.0.1:$RTPORT", routes = "scripts/demo_runtime/routes.lua" },
  },
  shared_dicts = { demo_runtime = 1048576 },
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:$RTPORT" }, max_fails = 0, connect_timeout = 2 },
  },
}
]]

describe("the demo page over HTTPS in headless chromium", function()
    local pki, leaf, mg, tls_port

    lazy_setup(function()
        pki = new_pki("tls-extras-browser")
        leaf = pki:leaf("page", "2001", "ec")
        tls_port = helpers.free_port()
        local rt_port = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-extras-browser", conf = SEED_CONF,
            routes = helpers.read_file(helpers.root .. "/scripts/routes.lua"),
            scripts = seed.shipped_files({ ["stream.heartbeat"] = 1, ["stream.poll_interval"] = 0.25,
                ["agent.heartbeat"] = 1 }),
            vars = { TLSPORT = tls_port, RTPORT = rt_port, CERT = leaf.cert, KEY = leaf.key } })
        assert(helpers.wait_until(function()
            return helpers.port_open(tls_port) and helpers.port_open(rt_port)
        end, 5))
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("runs an intent to completion over wss:// and chats with the agent", function()
        local job = {
            url = fmt("https://127.0.0.1:%d/?auto=1&duration=3", tls_port),
            ["until"] = "document.body.dataset.state && document.body.dataset.state !== 'running'",
            result = RESULT,
            timeout = 30,
            args = { "--ignore-certificate-errors-spki-list=" .. spki(leaf.leaf) },
            user_data_dir = helpers.tmpdir("chromium-tls"),
        }
        local out = helpers.sh("timeout -s KILL 60 node " .. shq(helpers.root .. "/spec/fixtures/cdp_page.js")
            .. " " .. shq(helpers.json.encode(job)))
        local line = out:match("(%b{})%s*$")
        assert(line, "no report from cdp_page.js:\n" .. out)
        local r = helpers.json.decode(line)
        assert.truthy(r.ok, "the page did not finish: " .. tostring(r.error) .. " " .. helpers.json.encode(r.value))
        local v = r.value
        assert.equal("https:", v.protocol)
        assert.equal("done", v.state, helpers.json.encode(v))
        local order, seen = {}, {}
        for _, s in ipairs(v.statuses) do
            if not seen[s] then
                seen[s] = true
                order[#order + 1] = s
            end
        end
        assert.same({ "pending", "running", "completed" }, order)
        assert.truthy(v.heartbeats >= 1, "no heartbeat over wss: " .. helpers.json.encode(v))
        assert.truthy(v.closed[#v.closed]:find("1000", 1, true))
        assert.truthy(#v.agent >= 2, "the agent chat over wss: " .. helpers.json.encode(v.agent))
    end)
end)
