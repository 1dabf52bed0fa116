-- Upstreams over TLS (issue 12): https:// and wss:// servers, verified
-- against a CA file or the system store, with the server's host or a
-- configured name; verification off only explicitly (warned once); client
-- certificates (mTLS); keep-alive pools that keep TLS connections and
-- resume sessions on new ones; moongate.http.request to https:// URLs.
--
-- Real processes: spec/fixtures/tls_upstream.py (python3 ssl, upstream.py's
-- endpoints; --ws: ws_upstream.py's over wss://) with certificates this file
-- makes with `openssl` under spec/out/ (a test CA, server certificates for
-- 127.0.0.1/localhost, one from an unknown CA, one for a wrong name, an
-- expired one, and a client certificate).
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local tls = require "spec.tls_helpers"
local json = helpers.json
local shq = helpers.shq
local fmt = string.format

local TLS_PY = helpers.root .. "/spec/fixtures/tls_upstream.py"

-- Runs a shell command, failing the spec with its output if it fails.
local function run(cmd)
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, cmd .. "\n" .. tostring(out))
    return out
end

-- The certificates, in a fresh directory: ca, other_ca (unknown to
-- moongate), srv (127.0.0.1 + localhost, by ca), unknown (by other_ca),
-- wrong (wrong.example only), expired (2020), client (clientAuth, by ca).
local function make_certs()
    local d = helpers.tmpdir("uptls-certs")
    local ca = tls.ca(d, "moongate-test-ca")
    local other = tls.ca(d, "moongate-test-other_ca", "other_ca")
    local function cert(by, name, opts)
        opts.out, opts.eku = d .. "/" .. name, opts.eku or "serverAuth"
        tls.cert(by, opts)
    end
    cert(ca, "srv", {})
    cert(other, "unknown", {})
    cert(ca, "wrong", { names = { "wrong.example" }, ip = false })
    cert(ca, "client", { cn = "moongate-client", names = {}, ip = false, eku = "clientAuth" })
    cert(ca, "expired", { start = "20200101000000Z", finish = "20200201000000Z" })
    return d
end

local procs = {}

-- Starts tls_upstream.py with cert/key `name` of dir d; opts.ca (client
-- certificates required), opts.ws. Returns {port, pid}.
local function start_tls(d, name, opts)
    opts = opts or {}
    local up = helpers.start_upstream({ script = TLS_PY, args = fmt("--cert %s --key %s%s%s",
        shq(d .. "/" .. name .. ".pem"), shq(d .. "/" .. name .. ".key"),
        opts.ca and (" --ca " .. shq(d .. "/ca.pem")) or "", opts.ws and " --ws" or "") })
    procs[#procs + 1] = up.pid
    return up
end

-- Stops the fixtures this file started, by their pids.
local function stop_all()
    for _, pid in ipairs(procs) do
        helpers.stop(pid, 3)
    end
    procs = {}
end

-- The fixture's own counters, asked directly over TLS (curl, the test CA).
local function tls_stats(d, up)
    local out = run(fmt("curl -s --max-time 5 --cacert %s https://127.0.0.1:%d/__tls",
        shq(d .. "/ca.pem"), up.port))
    return json.decode(out)
end

-- upstream.py's /bytes pattern: byte i is (i * 7 + 3) & 0xFF, by 64 KiB block.
local BLOCK
local function pattern(n)
    if not BLOCK then
        local t = {}
        for i = 0, 65535 do
            t[#t + 1] = string.char(bit.band(i * 7 + 3, 0xFF))
        end
        BLOCK = table.concat(t)
    end
    local full = math.floor(n / 65536)
    return BLOCK:rep(full) .. BLOCK:sub(1, n - full * 65536)
end

-- Counts the plain occurrences of s in text.
local function count(text, s)
    local n, i = 0, 1
    while true do
        local a, b = text:find(s, i, true)
        if not a then
            return n
        end
        n, i = n + 1, b + 1
    end
end

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    good = { servers = { "https://127.0.0.1:$GOOD" }, tls = { ca = "$CERTS/ca.pem" } },
    named = { servers = { "https://127.0.0.1:$GOOD" },
              tls = { ca = "$CERTS/ca.pem", server_name = "localhost" } },
    sysstore = { servers = { "https://127.0.0.1:$GOOD" } },
    unknown = { servers = { "https://127.0.0.1:$UNKNOWN" }, tls = { ca = "$CERTS/ca.pem" } },
    wrongname = { servers = { "https://127.0.0.1:$WRONG" },
                  tls = { ca = "$CERTS/ca.pem", server_name = "localhost" } },
    wrongip = { servers = { "https://127.0.0.1:$WRONG" }, tls = { ca = "$CERTS/ca.pem" } },
    expired = { servers = { "https://127.0.0.1:$EXPIRED" }, tls = { ca = "$CERTS/ca.pem" } },
    noverify = { servers = { "https://127.0.0.1:$UNKNOWN" }, tls = { verify = false } },
    mtls = { servers = { "https://127.0.0.1:$MTLS" },
             tls = { ca = "$CERTS/ca.pem", cert = "$CERTS/client.pem", key = "$CERTS/client.key" } },
    mtls_nocert = { servers = { "https://127.0.0.1:$MTLS" }, tls = { ca = "$CERTS/ca.pem" } },
    wss = { servers = { "wss://127.0.0.1:$WSS" }, tls = { ca = "$CERTS/ca.pem" } },
    wss_unknown = { servers = { "wss://127.0.0.1:$UNKNOWN" }, tls = { ca = "$CERTS/ca.pem" } },
    -- connects (the kernel's backlog), then never answers the ClientHello
    stall = { servers = { "https://127.0.0.1:$STALL" }, connect_timeout = 0.5,
              tls = { ca = "$CERTS/ca.pem" } },
  },
}
]]

local ROUTES = [[
local moongate = require "moongate"
local function up(name)
  return { prefix = "/" .. name, upstream = name, strip_prefix = true, body_size = 0 }
end
return {
  up("good"), up("named"), up("sysstore"), up("unknown"), up("wrongname"), up("wrongip"),
  up("expired"), up("noverify"), up("mtls"), up("mtls_nocert"), up("stall"),
  { prefix = "/wss-relay", upstream = "wss", strip_prefix = true,
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 } } },
  { prefix = "/wss-tunnel", upstream = "wss", strip_prefix = true, websocket = { mode = "tunnel" } },
  { prefix = "/wss-bad", upstream = "wss_unknown", strip_prefix = true,
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 } } },
  { path = "/lua/upstream", handler = function()
      local resp, err = moongate.http.request{ upstream = "good", path = "/lua?x=1" }
      if not resp then return 200, { err = err } end
      return 200, { status = resp.status, echo = moongate.json.decode(resp.body) }
  end },
  { path = "/lua/url", handler = function()
      local resp, err = moongate.http.request{ url = "https://127.0.0.1:$GOOD/lua-url" }
      if not resp then return 200, { err = err } end
      return 200, { status = resp.status, echo = moongate.json.decode(resp.body) }
  end },
}
]]

describe("upstreams over TLS", function()
    local certs, good, unknown, wrong, expired, mtls, wss, stall, mg

    setup(function()
        certs = make_certs()
        good = start_tls(certs, "srv")
        unknown = start_tls(certs, "unknown")
        wrong = start_tls(certs, "wrong")
        expired = start_tls(certs, "expired")
        mtls = start_tls(certs, "srv", { ca = true })
        wss = start_tls(certs, "srv", { ws = true })
        stall = helpers.start_upstream({ blackhole = true })
        mg = helpers.start_moongate({
            name = "uptls", conf = CONF, routes = ROUTES,
            vars = { CERTS = certs, GOOD = good.port, UNKNOWN = unknown.port, WRONG = wrong.port,
                     EXPIRED = expired.port, MTLS = mtls.port, WSS = wss.port,
                     STALL = stall.port },
        })
    end)

    teardown(function()
        if mg then
            mg:stop()
        end
        stop_all()
        ws.cleanup()
        helpers.cleanup()
    end)

    -- the log, once it holds `s` (log lines are written as they happen)
    local function log_has(s)
        return helpers.wait_until(function() return mg:log():find(s, 1, true) ~= nil end, 5)
    end

    describe("proxying", function()
        it("GETs over https, verified against the configured CA", function()
            local st, _, body = helpers.http(mg.port, "GET", "/good/x?y=1")
            assert.equal(200, st, body)
            local e = json.decode(body)
            assert.equal("/x?y=1", e.path)
            assert.equal("TLSv1.3", e.tls.version)
        end)

        it("verifies a configured server_name (localhost) instead of the host", function()
            local st, _, body = helpers.http(mg.port, "GET", "/named/n")
            assert.equal(200, st, body)
            assert.equal("/n", json.decode(body).path)
        end)

        it("streams a POST body up and a large body down", function()
            local up = pattern(3 * 1024 * 1024 + 17)
            local st, _, body = helpers.http(mg.port, "POST", "/good/upload", { body = up })
            assert.equal(200, st, body)
            assert.equal(#up, json.decode(body).body_len)
            local n = 5 * 1024 * 1024 + 3
            st, _, body = helpers.http(mg.port, "GET", "/good/bytes/" .. n)
            assert.equal(200, st)
            assert.equal(n, #body)
            assert.is_true(body == pattern(n), "the body differs from the pattern")
        end)

        it("passes chunked bodies both ways", function()
            local n = 1024 * 1024 + 5
            local st, h, body = helpers.http(mg.port, "GET", "/good/bytes/" .. n .. "?chunked=1")
            assert.equal(200, st)
            assert.equal("chunked", h["transfer-encoding"])
            assert.is_true(body == pattern(n), "the chunked body differs")
            local st2, _, body2 = helpers.http(mg.port, "POST", "/good/upload",
                { body = ("c"):rep(200000), chunked = true })
            assert.equal(200, st2, body2)
            assert.equal(200000, json.decode(body2).body_len)
        end)
    end)

    describe("verification", function()
        local function refused(path, reason)
            local st, h, body = helpers.http(mg.port, "GET", path)
            assert.equal(502, st, body)
            assert.matches("application/json", h["content-type"] or "")
            assert.equal("upstream TLS handshake failed", json.decode(body).error)
            assert.truthy(log_has(reason), "no log line with '" .. reason .. "' in:\n" .. mg:log())
        end

        it("refuses a server whose CA is unknown (502, and the log says why)", function()
            refused("/unknown/x", fmt("upstream unknown: TLS handshake with 127.0.0.1:%d failed: "
                .. "unable to get local issuer certificate", unknown.port))
        end)

        it("refuses a certificate for another name", function()
            refused("/wrongname/x", fmt("upstream wrongname: TLS handshake with 127.0.0.1:%d "
                .. "failed: hostname mismatch", wrong.port))
        end)

        it("refuses a certificate that is not for the server's IP address", function()
            refused("/wrongip/x", fmt("upstream wrongip: TLS handshake with 127.0.0.1:%d failed: "
                .. "IP address mismatch", wrong.port))
        end)

        it("refuses an expired certificate", function()
            refused("/expired/x", fmt("upstream expired: TLS handshake with 127.0.0.1:%d failed: "
                .. "certificate has expired", expired.port))
        end)

        it("uses the system store when no CA is configured (the test CA is not in it)", function()
            refused("/sysstore/x", fmt("upstream sysstore: TLS handshake with 127.0.0.1:%d failed: "
                .. "unable to get local issuer certificate", good.port))
        end)

        it("cuts a handshake the server never answers at connect_timeout (504)", function()
            local t0 = helpers.now()
            local st, _, body = helpers.http(mg.port, "GET", "/stall/x")
            local dt = helpers.now() - t0
            assert.equal(504, st, body)
            assert.equal("upstream TLS handshake timed out", json.decode(body).error)
            assert.is_true(dt >= 0.4 and dt < 5, "took " .. dt .. " s")
        end)

        it("connects without verification only when told, and warns once", function()
            for i = 1, 3 do
                local st, _, body = helpers.http(mg.port, "GET", "/noverify/v" .. i,
                    { headers = { "Connection: close" } })
                assert.equal(200, st, body)
                assert.equal("/v" .. i, json.decode(body).path)
            end
            assert.equal(1, count(mg:log(), "upstream noverify: TLS certificate verification is off"))
        end)
    end)

    describe("client certificates", function()
        it("presents the configured certificate to an upstream that requires one", function()
            local st, _, body = helpers.http(mg.port, "GET", "/mtls/m")
            assert.equal(200, st, body)
            assert.equal("moongate-client", json.decode(body).tls.client)
        end)

        it("gets a 502 from such an upstream without one", function()
            local st, _, body = helpers.http(mg.port, "GET", "/mtls_nocert/m")
            assert.equal(502, st, body)
        end)
    end)

    describe("pools and sessions", function()
        it("keeps one TLS connection for keep-alive requests", function()
            local before = tls_stats(certs, good).accepted
            local conns = {}
            for i = 1, 6 do
                local st, _, body = helpers.http(mg.port, "GET", "/good/ka" .. i)
                assert.equal(200, st, body)
                conns[json.decode(body).tls.conn] = true
            end
            local n = 0
            for _ in pairs(conns) do n = n + 1 end
            assert.equal(1, n, "requests went over several upstream connections")
            -- at most the one connection (none if an earlier test left it in the
            -- pool), plus the one of tls_stats itself
            assert.is_true(tls_stats(certs, good).accepted - before <= 2)
        end)

        it("resumes the TLS session on a new connection", function()
            -- the upstream closes after this answer: the next request connects anew
            local st, _, body = helpers.http(mg.port, "GET", "/good/close")
            assert.equal(200, st, body)
            local first = json.decode(body).tls.conn
            st, _, body = helpers.http(mg.port, "GET", "/good/after")
            assert.equal(200, st, body)
            local e = json.decode(body)
            assert.not_equal(first, e.tls.conn)
            assert.is_true(e.tls.session_reused, "the new connection did not resume")
        end)
    end)

    describe("moongate.http.request", function()
        it("reaches an https upstream of the conf with its CA", function()
            local st, _, body = helpers.http(mg.port, "GET", "/lua/upstream")
            assert.equal(200, st, body)
            local r = json.decode(body)
            assert.equal(200, r.status, body)
            assert.equal("/lua?x=1", r.echo.path)
        end)

        it("refuses an https:// URL whose CA is not in the system store", function()
            local st, _, body = helpers.http(mg.port, "GET", "/lua/url")
            assert.equal(200, st, body)
            assert.equal("upstream TLS handshake failed", json.decode(body).err)
            assert.truthy(log_has(fmt("TLS handshake with 127.0.0.1:%d failed: unable to get local "
                .. "issuer certificate", good.port)))
        end)

        it("reaches an https:// URL when the store holds its CA (SSL_CERT_FILE)", function()
            local mg2 = helpers.start_moongate({
                name = "uptls-store", conf = CONF, routes = ROUTES,
                env = { SSL_CERT_FILE = certs .. "/ca.pem" },
                vars = { CERTS = certs, GOOD = good.port, UNKNOWN = unknown.port,
                         WRONG = wrong.port, EXPIRED = expired.port, MTLS = mtls.port,
                         WSS = wss.port, STALL = stall.port },
            })
            local st, _, body = helpers.http(mg2.port, "GET", "/lua/url")
            local st2, _, body2 = helpers.http(mg2.port, "GET", "/sysstore/s")
            mg2:stop()
            assert.equal(200, st, body)
            local r = json.decode(body)
            assert.equal(200, r.status, body)
            assert.equal("/lua-url", r.echo.path)
            assert.equal(200, st2, body2)
        end)
    end)

    describe("wss:// upstreams", function()
        it("relays messages to a wss:// upstream", function()
            local c = ws.connect(mg.port, "/wss-relay")
            local m = c:echo("hello over wss")
            assert.truthy(m, "no echo")
            assert.equal("hello over wss", m.data)
            local big = ("r"):rep(200000)
            m = c:echo(big, "binary", 5)
            assert.truthy(m, "no echo of the big message")
            assert.is_true(m.data == big)
            c:finish()
        end)

        it("tunnels to a wss:// upstream", function()
            local c = ws.connect(mg.port, "/wss-tunnel/echo")
            local m = c:echo("through the tunnel")
            assert.truthy(m, "no echo")
            assert.equal("through the tunnel", m.data)
            local big = ("t"):rep(300000)
            m = c:echo(big, "text", 5)
            assert.truthy(m, "no echo of the big message")
            assert.is_true(m.data == big)
            c:finish()
        end)

        it("refuses the handshake when the wss:// upstream does not verify", function()
            local c, res = ws.handshake(mg.port, "/wss-bad")
            if c then
                c:close()
            end
            assert.truthy(res, "no answer")
            assert.equal(502, res.status)
        end)
    end)

    describe("loading", function()
        local function check(conf)
            local dir = helpers.tmpdir("uptls-t")
            helpers.mkdir_p(dir .. "/conf")
            helpers.mkdir_p(dir .. "/scripts")
            helpers.write_file(dir .. "/conf/moongate.lua", helpers.expand(conf, { CERTS = certs }))
            helpers.write_file(dir .. "/scripts/routes.lua", "return {}\n")
            return helpers.sh(fmt("cd %s && timeout 20 %s -t -c %s 2>&1", shq(dir), shq(helpers.bin),
                shq(dir .. "/conf/moongate.lua")))
        end
        local function conf_with(tls_conf)
            return 'return { listen = "127.0.0.1:1", workers = 1, upstreams = { a = { servers = '
                .. '{ "https://127.0.0.1:9" }, tls = ' .. tls_conf .. ' } } }\n'
        end

        it("accepts a CA, a name and a client certificate", function()
            local out, rc = check(conf_with('{ ca = "$CERTS/ca.pem", server_name = "localhost", '
                .. 'cert = "$CERTS/client.pem", key = "$CERTS/client.key" }'))
            assert.equal(0, rc, out)
        end)

        it("refuses a missing CA file with file: reason", function()
            local out, rc = check(conf_with('{ ca = "$CERTS/nope.pem" }'))
            assert.not_equal(0, rc)
            assert.truthy(out:find(certs .. "/nope.pem:0: cannot open file: No such file or directory",
                1, true), out)
        end)

        it("refuses a CA file without certificates", function()
            local out, rc = check(conf_with('{ ca = "$CERTS/srv.key" }'))
            assert.not_equal(0, rc)
            assert.truthy(out:find(certs .. "/srv.key: no PEM certificate found", 1, true), out)
        end)

        it("refuses a key that does not match the client certificate", function()
            local out, rc = check(conf_with('{ cert = "$CERTS/client.pem", key = "$CERTS/srv.key" }'))
            assert.not_equal(0, rc)
            assert.truthy(out:find(certs .. "/srv.key: ", 1, true), out)
            assert.truthy(out:lower():find("mismatch", 1, true) or out:find("does not match", 1, true),
                out)
        end)

        -- CONF with the first `old` replaced by `new` (plain strings)
        local function conf_replace(old, new)
            local a, b = CONF:find(old, 1, true)
            assert(a, "not in CONF: " .. old)
            return CONF:sub(1, a - 1) .. new .. CONF:sub(b + 1)
        end
        local function reload_to(conf)
            local n = count(mg:log(), "serving on")
            mg:write_conf(conf)
            mg:signal("HUP")
            assert.truthy(helpers.wait_until(function()
                return count(mg:log(), "serving on") > n
            end, 10), "no new generation:\n" .. mg:log())
        end

        it("verifies new connections with a reloaded CA; pooled ones are not reused", function()
            local st, _, body = helpers.http(mg.port, "GET", "/good/pre")
            assert.equal(200, st, body) -- leaves a pooled connection verified with ca.pem
            reload_to(conf_replace('"https://127.0.0.1:$GOOD" }, tls = { ca = "$CERTS/ca.pem" }',
                '"https://127.0.0.1:$GOOD" }, tls = { ca = "$CERTS/other_ca.pem" }'))
            st, _, body = helpers.http(mg.port, "GET", "/good/post")
            assert.equal(502, st, body)
            reload_to(CONF)
            st, _, body = helpers.http(mg.port, "GET", "/good/back")
            assert.equal(200, st, body)
        end)

        it("refuses a reload with a broken tls file and keeps serving", function()
            local broken = CONF:gsub('tls = { ca = "%$CERTS/ca.pem" } },\n    named',
                'tls = { ca = "$CERTS/missing-ca.pem" } },\n    named', 1)
            assert.not_equal(CONF, broken)
            mg:write_conf(broken)
            mg:signal("HUP")
            assert.truthy(log_has(certs .. "/missing-ca.pem:0: cannot open file"), mg:log())
            assert.truthy(log_has("reload refused"), mg:log())
            local st, _, body = helpers.http(mg.port, "GET", "/good/still")
            assert.equal(200, st, body)
            mg:write_conf(CONF)
        end)
    end)
end)
