-- HTTP/2 at the edge (http/h2.c; docs/configuration.md, "HTTP/2"): h2 over
-- TLS by ALPN (`http2 = true`) and prior-knowledge h2c on a plain listener
-- (`h2c = true`), with real clients (curl --http2 / --http2-prior-knowledge,
-- nghttp) against the real binary and spec/fixtures/upstream.py: a Lua
-- handler and the C proxy, request bodies streamed to the upstream (with
-- and without content-length), response bodies streamed back under small
-- windows, many streams on one connection, the access log's protocol and
-- the metrics. HTTP/1.1 clients on the same listeners see no change; with
-- the switches off (the default) nobody gets HTTP/2.
local helpers = require "spec.helpers"
local tls = require "spec.tls_helpers"
local h2 = require "spec.h2_helpers"

local fmt = string.format
local shq = helpers.shq

local ROUTES = [[
local moongate = require "moongate"
return {
  { path = "/info", handler = function(req)
      return 200, { version = req.http_version, scheme = req.scheme, method = req.method,
                    host = req.headers.host, cookie = req.headers.cookie or false,
                    tls = req.tls and req.tls.version or false }
  end },
  { path = "/echo", method = "POST", body_size = 8388608,
    handler = function(req) return 200, req:body() end },
  { name = "up", prefix = "/up", upstream = "up", strip_prefix = true, body_size = 8388608 },
  { path = "/stream", handler = function(req, res)
      res:status(200)
      res:header("x-streamed", "yes")
      for i = 1, 64 do res:write(string.rep(string.char(64 + i % 26), 16384)) end
  end },
  { path = "/slow", handler = function()
      moongate.sleep(0.5)
      return 200, "late\n"
  end },
  { path = "/keyed", plugins = { ["key-auth"] = { keys = { alice = "k-123" } } },
    handler = function() return 200, "keyed\n" end },
  { prefix = "/guarded", upstream = "up", strip_prefix = true, body_size = 8388608,
    plugins = { ["key-auth"] = { keys = { alice = "k-123" } } } },
}
]]

local function conf(certs, admin, extra)
    return fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  timeouts = { header = 5, idle = 10 },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  admin = { listen = "127.0.0.1:%d" },
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = %q, key = %q } },
  },%s
}
]], admin, certs.cert, certs.key, extra or "")
end

local function sha256_file(path)
    return (helpers.sh("sha256sum " .. shq(path)):match("^(%x+)"))
end

local function metric(text, series)
    for line in (text or ""):gmatch("[^\n]+") do
        if line:sub(1, #series + 1) == series .. " " then
            return tonumber(line:sub(#series + 2))
        end
    end
    return 0
end

describe("HTTP/2", function()
    local up, mg, ca, certs, tport, admin, dir, big

    lazy_setup(function()
        dir = helpers.tmpdir("h2")
        ca = tls.ca(dir)
        certs = tls.cert(ca, { names = { "localhost" } })
        up = helpers.start_upstream()
        tport, admin = helpers.free_port(), helpers.free_port()
        mg = helpers.start_moongate({ name = "h2", upstream = up, routes = ROUTES,
            conf = conf(certs, admin, "\n  http2 = true,\n  h2c = true,"),
            vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 10))
        big = dir .. "/big.bin"
        helpers.sh(fmt("head -c 3000000 /dev/urandom > %s", shq(big)))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if up then helpers.stop(up.pid) end
    end)

    it("speaks h2 over TLS when ALPN offers it, and a handler sees HTTP/2.0", function()
        local st, _, body, info = h2.h2(tport, "GET", "/info", ca)
        assert.equal(200, st)
        assert.equal("2", info.version)
        local t = helpers.json.decode(body)
        assert.equal("2.0", t.version)
        assert.equal("https", t.scheme)
        assert.equal("localhost:" .. tport, t.host) -- :authority is the Host
        assert.truthy(t.tls)
    end)

    it("keeps HTTP/1.1 for clients that do not offer h2 on the same TLS listener", function()
        local st, _, body, info = tls.https(tport, "GET", "/info", ca, "localhost",
            { curl_args = { "--http1.1" } })
        assert.equal(200, st)
        assert.equal("1.1", info.version)
        assert.equal("1.1", helpers.json.decode(body).version)
        local r = tls.s_client(tport, { alpn = "http/1.1", servername = "localhost",
            request = "GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" })
        assert.equal("http/1.1", r.alpn)
        assert.truthy(r.out:find("HTTP/1.1 200", 1, true))
        -- no ALPN at all: HTTP/1.1 as before
        r = tls.s_client(tport, { servername = "localhost",
            request = "GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" })
        assert.is_nil(r.alpn)
        assert.truthy(r.out:find("HTTP/1.1 200", 1, true))
    end)

    it("takes prior-knowledge h2c on the plain listener, beside HTTP/1.1", function()
        local st, _, body, info = h2.h2c(mg.port, "GET", "/info")
        assert.equal(200, st)
        assert.equal("2", info.version)
        local t = helpers.json.decode(body)
        assert.equal("2.0", t.version)
        assert.equal("http", t.scheme)
        st, _, body, info = helpers.http(mg.port, "GET", "/info")
        assert.equal(200, st)
        assert.equal("1.1", info.version)
        assert.equal("1.1", helpers.json.decode(body).version)
    end)

    it("proxies to an HTTP/1.1 upstream with the forwarding headers", function()
        local st, h, body = h2.h2(tport, "GET", "/up/hello?x=1", ca,
            { headers = { "Cookie: a=1", "Cookie: b=2" } })
        assert.equal(200, st)
        assert.equal("moongate-test-upstream", h.server)
        local t = helpers.json.decode(body)
        assert.equal("HTTP/1.1", t.http_version)
        assert.equal("/hello?x=1", t.path)
        assert.equal("localhost:" .. tport, t.headers.host)
        assert.equal("https", t.headers["x-forwarded-proto"])
        assert.equal("127.0.0.1", t.headers["x-forwarded-for"])
        assert.truthy(t.headers["x-request-id"])
        -- cookie crumbs are one Cookie line for HTTP/1.1 (RFC 9113 8.2.3)
        assert.equal("a=1; b=2", t.headers.cookie)
    end)

    it("streams a request body to the upstream, with and without content-length", function()
        local want = sha256_file(big)
        local st, _, body = h2.h2(tport, "POST", "/up/upload", ca, { body_file = big })
        assert.equal(200, st)
        local t = helpers.json.decode(body)
        assert.equal(3000000, t.body_len)
        assert.equal(want, t.body_sha256)
        -- from a pipe: curl knows no length, sends DATA until END_STREAM; the
        -- upstream (its echo) gets it chunked
        local out = helpers.sh(fmt("cat %s | curl -sS --max-time 20 --http2-prior-knowledge "
            .. "-X POST -T - -H 'Expect:' http://127.0.0.1:%d/up/piped 2>&1", shq(big), mg.port))
        t = helpers.json.decode(out)
        assert.equal(3000000, t.body_len)
        assert.equal(want, t.body_sha256)
        assert.equal("chunked", t.headers["transfer-encoding"])
        assert.is_nil(t.headers["content-length"])
    end)

    it("gives a Lua handler the whole request body", function()
        local out = helpers.sh(fmt("curl -sS --max-time 20 --http2-prior-knowledge --data-binary @%s "
            .. "http://127.0.0.1:%d/echo | sha256sum", shq(big), mg.port))
        assert.equal(sha256_file(big), out:match("^(%x+)"))
    end)

    it("streams a response back under a small window (WINDOW_UPDATE by WINDOW_UPDATE)", function()
        local _, _, sb = helpers.http(up.port, "GET", "/bytes/2000000?sha=1")
        local sums = helpers.json.decode(sb)
        for _, q in ipairs({ "", "?chunked=1" }) do
            -- 2^12-1 bytes a stream, 2^16-1 the connection: hundreds of updates
            local out, rc = helpers.sh(fmt("timeout -s KILL 30 nghttp -w 12 -W 16 "
                .. "https://localhost:%d/up/bytes/2000000%s 2>/dev/null | sha256sum", tport, q))
            assert.equal(0, rc)
            assert.equal(sums.sha256, out:match("^(%x+)"))
        end
    end)

    it("serves many streams at once on one connection", function()
        helpers.upstream_reset(up)
        local urls = {}
        for i = 1, 40 do
            urls[#urls + 1] = fmt("http://127.0.0.1:%d/up/delay/300?i=%d", mg.port, i)
        end
        local out, rc = h2.nghttp({ "-n", "-s" }, urls)
        assert.equal(0, rc, out)
        local ok = 0
        for _ in out:gmatch("%s200%s+%d+%s+/up/delay/300%?i=%d+") do
            ok = ok + 1
        end
        assert.equal(40, ok, out)
        -- all 40 were in flight together: the upstream saw them all
        assert.equal(40, #helpers.upstream_log(up).heads)
    end)

    it("logs each stream with protocol HTTP/2.0 and counts it in the metrics", function()
        local _, _, before = helpers.http(admin, "GET", "/metrics")
        local series = 'moongate_http_requests_total{route="up",method="GET",status="2xx"}'
        local n0 = metric(before, series)
        for i = 1, 3 do
            assert.equal(200, (h2.h2(tport, "GET", "/up/logged-" .. i, ca)))
        end
        local line = helpers.wait_until(function()
            for _, t in ipairs(h2.access_lines(mg:log())) do
                if t.path == "/up/logged-3" then
                    return t
                end
            end
        end, 10)
        assert.truthy(line, "no access line")
        assert.equal("HTTP/2.0", line.protocol)
        assert.equal("localhost:" .. tport, line.host) -- :authority
        assert.equal(200, line.status)
        assert.equal("up", line.route)
        assert.equal("GET", line.method)
        assert.truthy(line.tls and line.tls.version)
        assert.equal(200, line.upstream_status)
        local _, _, after = helpers.http(admin, "GET", "/metrics")
        assert.equal(n0 + 3, metric(after, series))
    end)

    it("streams a Lua handler's res:write chunks", function()
        local out, rc = helpers.sh(fmt("timeout -s KILL 20 nghttp -w 14 "
            .. "http://127.0.0.1:%d/stream 2>/dev/null | wc -c", mg.port))
        assert.equal(0, rc)
        assert.equal(64 * 16384, tonumber(out:match("%d+")))
        local st, h = h2.h2c(mg.port, "GET", "/stream")
        assert.equal(200, st)
        assert.equal("yes", h["x-streamed"])
    end)

    it("answers HEAD, 204 and Expect: 100-continue as HTTP/1.1 does", function()
        local st, h, body = h2.h2c(mg.port, "HEAD", "/up/bytes/1000")
        assert.equal(200, st)
        assert.equal("1000", h["content-length"])
        assert.equal("", body)
        st, h, body = h2.h2c(mg.port, "GET", "/up/status/204")
        assert.equal(204, st)
        assert.equal("", body)
        assert.is_nil(h["content-length"])
        st, h, body = h2.h2c(mg.port, "POST", "/up/upload", { body = "abc", expect100 = true })
        assert.equal(200, st)
        assert.equal(3, helpers.json.decode(body).body_len)
        assert.equal("application/json", h["content-type"])
    end)

    it("runs a route's plugins (key-auth) on a stream", function()
        local st, h, body = h2.h2(tport, "GET", "/keyed", ca)
        assert.equal(401, st)
        assert.truthy(h["content-type"]:find("json", 1, true))
        assert.truthy(body:find('"error"', 1, true))
        st, h, body = h2.h2(tport, "GET", "/keyed", ca, { headers = { apikey = "k-123" } })
        assert.equal(200, st)
        assert.equal("keyed\n", body)
        assert.is_nil(h["www-authenticate"])
    end)

    it("holds a proxied body while the access step runs, then streams it", function()
        -- key-auth on a C-proxy route runs in a coroutine of its own: the
        -- DATA that comes meanwhile waits (unacknowledged), then goes
        local st = h2.h2(tport, "POST", "/guarded/upload", ca, { body_file = big })
        assert.equal(401, st)
        local st2, _, body = h2.h2(tport, "POST", "/guarded/upload", ca,
            { body_file = big, headers = { apikey = "k-123" } })
        assert.equal(200, st2)
        local t = helpers.json.decode(body)
        assert.equal(3000000, t.body_len)
        assert.equal(sha256_file(big), t.body_sha256)
    end)

    it("lets a handler finish when its client left, and serves on", function()
        -- the client gives up after 0.2 s; the handler sleeps 0.5 s, so it
        -- ends, detached, while the next request's handler sleeps
        local before = mg:workers()
        local r = h2.py(mg.port, "get", { path = "/slow", timeout = 0.2 })
        assert.truthy(r and r.timeout)
        local st, _, body = h2.h2c(mg.port, "GET", "/slow")
        assert.equal(200, st)
        assert.equal("late\n", body)
        assert.same(before, mg:workers()) -- no worker died and was restarted
    end)

    it("answers a bad request on its stream with a JSON error", function()
        local r = h2.py(mg.port, "get", { path = "/a/../b" })
        assert.truthy(r, "no result")
        local s = r.streams["1"]
        assert.equal(400, s.status)
        assert.truthy(s.data:find('"error"', 1, true))
        assert.equal("application/json", s.headers["content-type"])
    end)
end)

describe("HTTP/2 switched off (the default)", function()
    local mg, ca, tport

    lazy_setup(function()
        local dir = helpers.tmpdir("h2off")
        ca = tls.ca(dir)
        local certs = tls.cert(ca, { names = { "localhost" } })
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "h2off", routes = ROUTES,
            conf = conf(certs, helpers.free_port()), upstream = "http://127.0.0.1:1",
            vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 10))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
    end)

    it("offers only http/1.1 by ALPN and refuses the h2c preface", function()
        local st, _, _, info = h2.h2(tport, "GET", "/info", ca)
        assert.equal(200, st)
        assert.equal("1.1", info.version)
        local r = tls.s_client(tport, { alpn = "h2", servername = "localhost" })
        assert.is_nil(r.alpn)
        st = h2.h2c(mg.port, "GET", "/info")
        assert.are_not.equal(200, st)
        -- HTTP/1.1 on the plain listener as ever
        assert.equal(200, (helpers.http(mg.port, "GET", "/info")))
    end)
end)
