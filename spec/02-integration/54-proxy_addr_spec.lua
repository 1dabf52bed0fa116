-- The real client address behind balancers: the PROXY protocol (v1 and v2)
-- on listeners with proxy_protocol = true, and trusted_proxies (whose
-- X-Forwarded-For/-Proto/-Host are believed). Raw sockets send the headers
-- an L4 balancer would (v2 built byte by byte here); the client address
-- must show in req.remote_addr, the access log, X-Forwarded-For to the
-- upstream, ip-restriction and rate-limit. Everything on 127.0.0.1: the
-- addresses of clients and proxies come from PROXY headers.
local helpers = require "spec.helpers"
local socket = require "socket"
local json = helpers.json

local fmt = string.format
local char = string.char

local CONF = [[
return {
  listen = "127.0.0.1:$PORT", workers = 1, log_level = "debug",
  proxy_protocol = true,
  trusted_proxies = { "10.0.0.0/8", "2001:db8::/32", "127.0.0.1" },
  timeouts = { header = 1 },
  shared_dicts = { rate_limit = 1048576 },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  servers = {
    -- plain listeners: 127.0.0.1 is a trusted proxy on one, not on the other
    trusting = { listen = "127.0.0.1:$TRUSTING", routes = "scripts/routes.lua",
                 trusted_proxies = "127.0.0.1/32" },
    plain = { listen = "127.0.0.1:$PLAIN", routes = "scripts/routes.lua" },
  },
}
]]

local ROUTES = [[
return {
  { prefix = "/up", upstream = "up" },
  { path = "/addr", handler = function(req) return 200, { remote_addr = req.remote_addr } end },
  { prefix = "/deny", upstream = "up",
    plugins = { ["ip-restriction"] = { deny = { "198.51.100.66", "2001:db9::66" } } } },
  { prefix = "/rl", handler = function() return 200, "ok" end,
    plugins = { ["rate-limit"] = { rate = 1, per = "hour" } } },
  { path = "/ws", websocket = { mode = "handler" },
    handler = function(ws, req) ws:send(req.remote_addr); ws:close() end },
}
]]

-- ---- PROXY headers ----------------------------------------------------------

local function v1(proto, src, dst, sport, dport)
    if proto == "UNKNOWN" then
        return "PROXY UNKNOWN\r\n"
    end
    return fmt("PROXY %s %s %s %d %d\r\n", proto, src, dst, sport, dport)
end

local SIG = "\r\n\r\n\0\r\nQUIT\n"

local function be16(n)
    return char(math.floor(n / 256) % 256, n % 256)
end

local function v4_bytes(s)
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

-- a full IPv6 address ("2001:db8:0:0:0:0:0:7"), eight groups
local function v6_bytes(s)
    local out = {}
    for g in s:gmatch("[^:]+") do
        out[#out + 1] = be16(tonumber(g, 16))
    end
    assert(#out == 8, s)
    return table.concat(out)
end

-- v2: cmd "PROXY" | "LOCAL"; fam "TCP4" | "TCP6" | "UNSPEC"; tlvs: raw bytes
local function v2(cmd, fam, src, dst, sport, dport, tlvs)
    local famb, addrs = 0x00, ""
    if fam == "TCP4" then
        famb, addrs = 0x11, v4_bytes(src) .. v4_bytes(dst) .. be16(sport) .. be16(dport)
    elseif fam == "TCP6" then
        famb, addrs = 0x21, v6_bytes(src) .. v6_bytes(dst) .. be16(sport) .. be16(dport)
    end
    local body = addrs .. (tlvs or "")
    return SIG .. char(cmd == "LOCAL" and 0x20 or 0x21, famb) .. be16(#body) .. body
end

local function tlv(t, value)
    return char(t) .. be16(#value) .. value
end

-- ---- clients ----------------------------------------------------------------

local function req(path, headers)
    local h = { "Host: app.test" }
    for _, x in ipairs(headers or {}) do
        h[#h + 1] = x
    end
    h[#h + 1] = "Connection: close"
    return helpers.request("GET", path, h)
end

-- Sends the pieces on one connection (a real pause between them, so each
-- is its own segment) and reads one response. Returns res or nil, err.
local function send(port, pieces, pause)
    local c = assert(helpers.connect(port))
    c:setoption("tcp-nodelay", true)
    for i, p in ipairs(pieces) do
        if i > 1 then
            socket.sleep(pause or 0.1)
        end
        local ok, err = c:send(p)
        if not ok then
            c:close()
            return nil, err
        end
    end
    local res, err = helpers.read_response(c)
    c:close()
    return res, err
end

local function body_of(res)
    assert(res, "no response")
    return json.decode(res.body)
end

-- Sends bytes and expects the server to close without a byte of answer.
local function refused(port, bytes, timeout)
    local t0 = helpers.now()
    local data, closed, why = helpers.raw(port, bytes, { timeout = timeout or 3 })
    return data == "" and closed, helpers.now() - t0, fmt("%q %s %s", data or "", tostring(closed), why)
end

describe("PROXY protocol and trusted proxies", function()
    local up, mg, ports

    lazy_setup(function()
        up = helpers.start_upstream()
        ports = { TRUSTING = helpers.free_port(), PLAIN = helpers.free_port() }
        mg = helpers.start_moongate({ name = "proxy-addr", upstream = up, conf = CONF, routes = ROUTES,
                                      workers = 1, vars = ports, wait_port = ports.PLAIN })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    -- the access-log line of the request whose path has this marker
    local function log_line(marker)
        return helpers.wait_until(function()
            for line in mg:log():gmatch("[^\n]+") do
                if line:find('"type":"access"', 1, true) and line:find(marker, 1, true) then
                    return json.decode(line)
                end
            end
        end, 3)
    end

    local function log_has(text)
        return helpers.wait_until(function() return mg:log():find(text, 1, true) end, 3)
    end

    describe("v1", function()
        it("TCP4: the header's source is the client everywhere", function()
            local res = send(mg.port, { v1("TCP4", "203.0.113.7", "127.0.0.1", 40000, mg.port)
                                        .. req("/addr?m=v1tcp4") })
            assert.equal(200, res.status)
            assert.equal("203.0.113.7", body_of(res).remote_addr)
            local line = log_line("m=v1tcp4")
            assert.truthy(line, mg:log():sub(-2000))
            assert.equal("203.0.113.7", line.remote)
        end)

        it("TCP6", function()
            local res = send(mg.port, { v1("TCP6", "2001:db9::7", "::1", 40000, 443) .. req("/addr") })
            assert.equal("2001:db9::7", body_of(res).remote_addr)
        end)

        it("UNKNOWN: the socket's peer", function()
            local res = send(mg.port, { v1("UNKNOWN") .. req("/addr") })
            assert.equal("127.0.0.1", body_of(res).remote_addr)
        end)

        it("goes to the upstream as X-Forwarded-For", function()
            local res = send(mg.port, { v1("TCP4", "203.0.113.8", "127.0.0.1", 1, 2) .. req("/up/x") })
            assert.equal(200, res.status)
            local h = body_of(res).headers
            assert.equal("203.0.113.8", h["x-forwarded-for"])
            assert.equal("http", h["x-forwarded-proto"])
        end)

        it("a header split over segments, and split again mid-line", function()
            local h = v1("TCP4", "203.0.113.9", "127.0.0.1", 1, 2)
            local res = send(mg.port, { h:sub(1, 9), h:sub(10, 30), h:sub(31) .. req("/addr") })
            assert.equal("203.0.113.9", body_of(res).remote_addr)
            -- the header alone, then the request in its own segment
            res = send(mg.port, { h, req("/addr") })
            assert.equal("203.0.113.9", body_of(res).remote_addr)
        end)

        it("the bytes after the header are the request, pipelined ones too", function()
            local c = assert(helpers.connect(mg.port))
            local two = helpers.request("GET", "/addr", { "Host: a" })
                .. helpers.request("GET", "/up/second", { "Host: a", "Connection: close" })
            assert(c:send(v1("TCP4", "192.0.2.44", "127.0.0.1", 1, 2) .. two))
            local r1 = assert(helpers.read_response(c))
            local r2 = assert(helpers.read_response(c))
            c:close()
            assert.equal("192.0.2.44", json.decode(r1.body).remote_addr)
            assert.equal("/up/second", json.decode(r2.body).path)
            assert.equal("192.0.2.44", json.decode(r2.body).headers["x-forwarded-for"])
        end)
    end)

    describe("v2", function()
        it("PROXY TCP4 with TLVs (skipped)", function()
            local tlvs = tlv(0x01, "http/1.1") .. tlv(0x02, "app.test") .. tlv(0x04, ("\0"):rep(40))
            local res = send(mg.port, { v2("PROXY", "TCP4", "198.51.100.20", "127.0.0.1", 5000, 80, tlvs)
                                        .. req("/addr?m=v2tcp4") })
            assert.equal(200, res.status)
            assert.equal("198.51.100.20", body_of(res).remote_addr)
            assert.equal("198.51.100.20", log_line("m=v2tcp4").remote)
        end)

        it("PROXY TCP6", function()
            local res = send(mg.port, { v2("PROXY", "TCP6", "2001:db9:0:0:0:0:0:20", "0:0:0:0:0:0:0:1", 5000,
                                           443) .. req("/addr") })
            assert.equal("2001:db9::20", body_of(res).remote_addr)
        end)

        it("LOCAL (a balancer's health check), with TLVs: the socket's peer", function()
            local res = send(mg.port, { v2("LOCAL", "TCP4", "198.51.100.21", "127.0.0.1", 1, 2,
                                           tlv(0x04, "xx")) .. req("/addr") })
            assert.equal("127.0.0.1", body_of(res).remote_addr)
            res = send(mg.port, { v2("LOCAL", "UNSPEC") .. req("/addr") })
            assert.equal("127.0.0.1", body_of(res).remote_addr)
        end)

        it("a header split inside the signature and inside the addresses", function()
            local h = v2("PROXY", "TCP4", "198.51.100.22", "127.0.0.1", 1, 2, tlv(0x04, "abc"))
            local res = send(mg.port, { h:sub(1, 5), h:sub(6, 20), h:sub(21) .. req("/addr") })
            assert.equal("198.51.100.22", body_of(res).remote_addr)
        end)
    end)

    describe("without a valid header the connection is closed and counted", function()
        local cases = {
            { "no header (a plain request)", req("/addr"), "no PROXY header" },
            { "garbage", "\22\3\1\0\5hello", "no PROXY header" },
            { "a bad v1 line", "PROXY TCP4 1.2.3.400 127.0.0.1 1 2\r\n" .. req("/addr"), "v1: bad IPv4 address" },
            { "v1 without CRLF within 107 bytes", "PROXY UNKNOWN " .. ("x"):rep(200), "v1: no CRLF within 107 bytes" },
            { "v2 longer than 536 bytes", v2("PROXY", "TCP4", "1.2.3.4", "1.2.3.5", 1, 2,
                                             tlv(0x04, ("x"):rep(600))), "v2: header longer than 536 bytes" },
            { "v2 with a truncated TLV", SIG .. "\33\17" .. be16(15) .. ("\1"):rep(12) .. "\4\0\9",
              "v2: truncated TLV" },
            { "v2 version 3", SIG .. "\49\17" .. be16(12) .. ("\1"):rep(12), "v2: bad version" },
        }
        for _, case in ipairs(cases) do
            it(case[1], function()
                local ok, _, why = refused(mg.port, case[2])
                assert.truthy(ok, why)
                assert.truthy(log_has("proxy protocol: closed a connection from 127.0.0.1: " .. case[3]),
                    mg:log():sub(-1500))
            end)
        end

        it("closed by the peer before the header ended; a connect and close is not counted", function()
            local function closed_early() -- every refusal has one debug line
                return select(2, mg:log():gsub("%[debug%][^\n]*proxy protocol: closed a connection", ""))
            end
            local before = closed_early()
            local c = assert(helpers.connect(mg.port)) -- a TCP health check: connect, close
            c:close()
            c = assert(helpers.connect(mg.port))
            assert(c:send("PROXY TCP4 1.2"))
            c:close()
            assert.truthy(log_has("closed before the header ended"), mg:log():sub(-1500))
            -- the probe was accepted first (one listener, one worker) and logged nothing
            assert.equal(before + 1, closed_early())
        end)

        it("a header that never completes is cut by the header timeout", function()
            -- header = 1 s; raw() reads for up to 4 s
            local ok, took, why = refused(mg.port, "PROXY TCP4 203.0.113.1 127.0.0.1 1", 4)
            assert.truthy(ok, why)
            assert.truthy(took >= 0.8 and took < 3.5, "closed after " .. took .. " s")
            assert.truthy(log_has("no complete header within the header timeout"), mg:log():sub(-1500))
        end)

        it("a slow header is bounded by one deadline, not a gap between bytes", function()
            local c = assert(helpers.connect(mg.port))
            c:setoption("tcp-nodelay", true)
            local h = v1("TCP4", "203.0.113.2", "127.0.0.1", 1, 2)
            local t0, closed = helpers.now(), false
            for i = 1, #h - 2 do -- one byte every 0.3 s: each gap under the timeout
                if not c:send(h:sub(i, i)) then
                    closed = true
                    break
                end
                c:settimeout(0.3)
                local _, err = c:receive(1)
                if err == "closed" then
                    closed = true
                    break
                end
            end
            c:close()
            assert.truthy(closed, "still open after " .. (helpers.now() - t0) .. " s")
            assert.truthy(helpers.now() - t0 < 3, "closed only after " .. (helpers.now() - t0) .. " s")
        end)

        it("the worker's warning counts them", function()
            assert.truthy(mg:log():find("proxy protocol: closed a connection from 127%.0%.0%.1: [^\n]*%(%d+ "
                .. "without a valid header since the last report, %d+ in all in worker %d+%)"),
                mg:log():sub(-1500))
        end)
    end)

    describe("trusted_proxies", function()
        local CLAIMS = { "X-Forwarded-For: 198.51.100.7", "X-Forwarded-Proto: https",
                         "X-Forwarded-Host: www.example" }

        it("from a trusted peer (PROXY source 10.1.2.3): kept, and appended to", function()
            local res = send(mg.port, { v1("TCP4", "10.1.2.3", "127.0.0.1", 1, 2) .. req("/up/t", CLAIMS) })
            local h = body_of(res).headers
            assert.equal("198.51.100.7, 10.1.2.3", h["x-forwarded-for"])
            assert.equal("https", h["x-forwarded-proto"])
            assert.equal("www.example", h["x-forwarded-host"])
            -- the client is the rightmost untrusted address
            res = send(mg.port, { v1("TCP4", "10.1.2.3", "127.0.0.1", 1, 2)
                                  .. req("/addr?m=trusted1", { "X-Forwarded-For: 6.6.6.6, 198.51.100.7, 10.9.9.9" }) })
            assert.equal("198.51.100.7", body_of(res).remote_addr)
            assert.equal("198.51.100.7", log_line("m=trusted1").remote)
            -- IPv6 trusted block
            res = send(mg.port, { v1("TCP6", "2001:db8::1", "::1", 1, 2)
                                  .. req("/addr", { "X-Forwarded-For: 2001:db9::5" }) })
            assert.equal("2001:db9::5", body_of(res).remote_addr)
        end)

        it("from an untrusted peer: the claims are overwritten", function()
            local res = send(mg.port, { v1("TCP4", "203.0.113.7", "127.0.0.1", 1, 2) .. req("/up/u", CLAIMS) })
            local h = body_of(res).headers
            assert.equal("198.51.100.7, 203.0.113.7", h["x-forwarded-for"])
            assert.equal("http", h["x-forwarded-proto"])
            assert.equal("app.test", h["x-forwarded-host"])
            res = send(mg.port, { v1("TCP4", "203.0.113.7", "127.0.0.1", 1, 2) .. req("/addr", CLAIMS) })
            assert.equal("203.0.113.7", body_of(res).remote_addr)
        end)

        it("on a plain listener: a server's own list", function()
            local st, _, body = helpers.http(ports.TRUSTING, "GET", "/up/p", { headers = CLAIMS })
            assert.equal(200, st)
            local h = json.decode(body).headers
            assert.equal("198.51.100.7, 127.0.0.1", h["x-forwarded-for"])
            assert.equal("https", h["x-forwarded-proto"])
            assert.equal("www.example", h["x-forwarded-host"])
            st, _, body = helpers.http(ports.TRUSTING, "GET", "/addr?m=trusting", { headers = CLAIMS })
            assert.equal(200, st)
            assert.equal("198.51.100.7", json.decode(body).remote_addr)
            assert.equal("198.51.100.7", log_line("m=trusting").remote)
            -- the main conf's list (127.0.0.1 in it too) does not carry over to a server
            st, _, body = helpers.http(ports.PLAIN, "GET", "/up/p", { headers = CLAIMS })
            assert.equal(200, st)
            h = json.decode(body).headers
            assert.equal("198.51.100.7, 127.0.0.1", h["x-forwarded-for"])
            assert.equal("http", h["x-forwarded-proto"])
            assert.equal("127.0.0.1:" .. ports.PLAIN, h["x-forwarded-host"]) -- curl's Host
            st, _, body = helpers.http(ports.PLAIN, "GET", "/addr", { headers = CLAIMS })
            assert.equal(200, st)
            assert.equal("127.0.0.1", json.decode(body).remote_addr)
        end)

        it("an entry that is not an address ends the walk at the last good one", function()
            local st, _, body = helpers.http(ports.TRUSTING, "GET", "/addr",
                { headers = { "X-Forwarded-For: 198.51.100.8, junk" } })
            assert.equal(200, st)
            assert.equal("127.0.0.1", json.decode(body).remote_addr)
        end)

        it("ip-restriction denies by the real client", function()
            local function deny(hdr_xff, src)
                local res = send(mg.port, { v1("TCP4", src, "127.0.0.1", 1, 2)
                                            .. req("/deny/x", hdr_xff and { "X-Forwarded-For: " .. hdr_xff }) })
                return res.status
            end
            assert.equal(403, deny(nil, "198.51.100.66"))           -- the PROXY source
            assert.equal(200, deny(nil, "198.51.100.67"))
            assert.equal(403, deny("198.51.100.66", "10.0.0.9"))     -- behind a trusted proxy
            assert.equal(200, deny("198.51.100.67", "10.0.0.9"))
            assert.equal(200, deny("198.51.100.66", "203.0.113.50")) -- an untrusted peer's claim
            -- plain listener, trusted 127.0.0.1
            assert.equal(403, (helpers.http(ports.TRUSTING, "GET", "/deny/x",
                { headers = { "X-Forwarded-For: 2001:db9::66" } })))
            assert.equal(200, (helpers.http(ports.TRUSTING, "GET", "/deny/x",
                { headers = { "X-Forwarded-For: 2001:db9::67" } })))
        end)

        it("rate-limit keys on the real client", function()
            local function get(src)
                return send(mg.port, { v1("TCP4", "10.0.0.1", "127.0.0.1", 1, 2)
                                       .. req("/rl", { "X-Forwarded-For: " .. src }) }).status
            end
            assert.equal(200, get("192.0.2.101"))
            assert.equal(429, get("192.0.2.101"))
            assert.equal(200, get("192.0.2.102")) -- another client, same proxy: its own bucket
        end)

        it("the WebSocket session's log line and req.remote_addr", function()
            local c = assert(helpers.connect(mg.port))
            assert(c:send(v1("TCP4", "192.0.2.77", "127.0.0.1", 1, 2) .. helpers.request("GET", "/ws?m=wslog", {
                "Host: a", "Upgrade: websocket", "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13" })))
            local res = assert(helpers.read_response(c))
            assert.equal(101, res.status)
            local frame = helpers.read_all(c, 2)
            c:close()
            assert.truthy(frame:find("192.0.2.77", 1, true), frame)
            local line = log_line("m=wslog")
            assert.truthy(line, mg:log():sub(-1500))
            assert.equal("192.0.2.77", line.remote)
        end)
    end)
end)

describe("PROXY protocol and trusted_proxies settings", function()
    local mg

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    local function check(conf)
        local dir = helpers.tmpdir("pp-t")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/conf/moongate.lua", conf)
        helpers.write_file(dir .. "/scripts/routes.lua", "return {}\n")
        return helpers.sh(fmt("cd %s && timeout 20 %s -t -c %s", helpers.shq(dir), helpers.shq(helpers.bin),
            helpers.shq(dir .. "/conf/moongate.lua")))
    end

    it("refuses a malformed trusted_proxies entry or proxy_protocol with file:line: reason", function()
        local out, rc = check('return {\n  listen = "127.0.0.1:1",\n'
            .. '  trusted_proxies = { "10.0.0.0/8", "10.0.0.300" },\n}\n')
        assert.not_equal(0, rc)
        assert.truthy(out:find("moongate.lua:3: trusted_proxies: item #2: bad address '10.0.0.300'", 1, true), out)
        out, rc = check('return {\n  trusted_proxies = { "10.0.0.0/33" },\n}\n')
        assert.not_equal(0, rc)
        assert.truthy(out:find("moongate.lua:2: trusted_proxies: item #1: bad prefix length", 1, true), out)
        out, rc = check('return {\n  trusted_proxies = 10,\n}\n')
        assert.not_equal(0, rc)
        assert.truthy(out:find("trusted_proxies: expected a string or a list of strings, got number", 1, true), out)
        out, rc = check('return {\n  proxy_protocol = "yes",\n}\n')
        assert.not_equal(0, rc)
        assert.truthy(out:find("moongate.lua:2: proxy_protocol: expected a boolean, got string", 1, true), out)
        out, rc = check('return {\n  listen = "127.0.0.1:1",\n  servers = { s = { listen = "127.0.0.1:2",\n'
            .. '    routes = "scripts/routes.lua", trusted_proxies = { "2001:db8::/129" } } },\n}\n')
        assert.not_equal(0, rc)
        assert.truthy(out:find("servers.s.trusted_proxies: item #1: bad prefix length", 1, true), out)
        out, rc = check('return {\n  listen = "127.0.0.1:1",\n  trusted_proxies = { "10.0.0.0/8", "::1" },\n'
            .. '  proxy_protocol = false,\n}\n')
        assert.equal(0, rc, out)
    end)

    it("the example in docs/configuration.md loads as written", function()
        local doc = assert(helpers.read_file(helpers.root .. "/docs/configuration.md"))
        local example = doc:match("### Behind a balancer.-```lua\n(.-)```")
        assert.truthy(example and example:find("proxy_protocol = true", 1, true), "no example found")
        local out, rc = check(example)
        assert.equal(0, rc, out)
        assert.truthy(out:find("2 listeners", 1, true), out)
    end)

    it("a reload turns proxy_protocol on and off; a bad list is refused and the old one serves", function()
        local conf = [[
return { listen = "127.0.0.1:$PORT", workers = 1, proxy_protocol = %s, trusted_proxies = { %s } }
]]
        local routes = [[
return { { path = "/addr", handler = function(req) return 200, { remote_addr = req.remote_addr } end } }
]]
        mg = helpers.start_moongate({ name = "pp-reload", conf = fmt(conf, "false", '"127.0.0.1"'),
                                      routes = routes })
        local function addr(pp)
            local res = send(mg.port, { (pp or "") .. req("/addr", { "X-Forwarded-For: 192.0.2.1" }) })
            return res and body_of(res).remote_addr
        end
        assert.equal("192.0.2.1", addr())
        mg:write_conf(fmt(conf, "true", '"127.0.0.1"'))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return addr(v1("TCP4", "127.0.0.1", "127.0.0.1", 1, 2)) == "192.0.2.1"
        end, 5), mg:log():sub(-1500))
        assert.is_nil((send(mg.port, { req("/addr") }))) -- no header now: closed
        -- a broken list: refused, the old generation (PROXY on, 127.0.0.1 trusted) serves
        mg:write_conf(fmt(conf, "false", '"127.0.0.1", "nonsense/8"'))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload refused, generation %d+ keeps serving: [^\n]*trusted_proxies: "
                .. "item #2: bad address 'nonsense'")
        end, 5), mg:log():sub(-1500))
        assert.equal("192.0.2.1", addr(v1("TCP4", "127.0.0.1", "127.0.0.1", 1, 2)))
        mg:write_conf(fmt(conf, "false", ""))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function() return addr() == "127.0.0.1" end, 5), mg:log():sub(-1500))
    end)
end)

-- With TLS listeners (the `tls` table, another part of issue 12): the PROXY
-- header comes first, the TLS handshake after it. Pending in a build
-- without them.
describe("PROXY protocol on a TLS listener", function()
    local mg, dir, tls_port, has_tls

    lazy_setup(function()
        dir = helpers.tmpdir("pp-tls")
        -- a test-only self-signed certificate, made here (spec/out/, never committed)
        local out, rc = helpers.sh(fmt("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
            .. "-nodes -keyout %s -out %s -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost",
            helpers.shq(dir .. "/key.pem"), helpers.shq(dir .. "/cert.pem")))
        assert(rc == 0, out)
        tls_port = helpers.free_port()
        local ok, err = pcall(function()
            mg = helpers.start_moongate({ name = "pp-tls", workers = 1, vars = { TLS = tls_port, CERTDIR = dir },
                conf = [[
return { listen = "127.0.0.1:$PORT", workers = 1, proxy_protocol = true, log_level = "debug",
         tls = { listen = "127.0.0.1:$TLS",
                 certificates = { { cert = "$CERTDIR/cert.pem", key = "$CERTDIR/key.pem" } } } }
]],
                routes = [[
return { { path = "/addr", handler = function(req)
  return 200, { remote_addr = req.remote_addr, scheme = req.scheme } end } }
]], wait_port = tls_port })
        end)
        has_tls = ok
        if not ok and not tostring(err):find("unknown field 'tls'", 1, true) then
            error(err, 0)
        end
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    local function hex(s)
        return (s:gsub(".", function(ch) return fmt("%02x", ch:byte()) end))
    end

    local function get(header, split)
        return helpers.sh(fmt("timeout 20 %s %s %d %s %s /addr%s", helpers.python,
            helpers.shq(helpers.root .. "/spec/fixtures/pp_tls_client.py"), tls_port,
            helpers.shq(dir .. "/cert.pem"), helpers.shq(hex(header)), split and " split" or ""))
    end

    it("v1 header and ClientHello in one segment", function()
        if not has_tls then return pending("no TLS listeners in this build") end
        local out, rc = get(v1("TCP4", "203.0.113.78", "127.0.0.1", 1, 2))
        assert.equal(0, rc, out)
        local body = json.decode(out:match("\r\n\r\n(.*)$"))
        assert.equal("203.0.113.78", body.remote_addr)
        assert.equal("https", body.scheme)
    end)

    it("v2 header alone, then the handshake", function()
        if not has_tls then return pending("no TLS listeners in this build") end
        local out, rc = get(v2("PROXY", "TCP6", "2001:db9:0:0:0:0:0:78", "0:0:0:0:0:0:0:1", 1, 443,
                               tlv(0x01, "http/1.1")), true)
        assert.equal(0, rc, out)
        assert.equal("2001:db9::78", json.decode(out:match("\r\n\r\n(.*)$")).remote_addr)
    end)

    it("a ClientHello without a header is closed and counted", function()
        if not has_tls then return pending("no TLS listeners in this build") end
        local out, rc = get("")
        assert.not_equal(0, rc, out)
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("proxy protocol: closed a connection from 127.0.0.1: no PROXY header", 1, true)
        end, 3), mg:log():sub(-1500))
    end)
end)
