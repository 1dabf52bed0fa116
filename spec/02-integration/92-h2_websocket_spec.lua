-- WebSockets over HTTP/2 (RFC 8441, http/h2_ws.c) with real clients:
-- spec/fixtures/h2_ws_client.py (python3-h2 doing extended CONNECT, the
-- WebSocket framing and permessage-deflate its own) over prior-knowledge
-- h2c, node's http2 module (spec/fixtures/h2_ws_node.js), and headless
-- Chromium over TLS (h2 by ALPN: the page and then its WebSocket on one h2
-- connection). The three modes (handler, relay and tunnel, which reach
-- ws_upstream.py over HTTP/1.1 with the usual Upgrade), subprotocol,
-- ping/pong, close codes, permessage-deflate, heartbeats, max_message, the
-- access hook, the refusals (a plain CONNECT, another :protocol, a route
-- that does not speak WebSocket, the setting off), several WebSockets and
-- plain requests on one connection, a client that never opens its window,
-- drain with 1012 on reload and 1001 on SIGTERM.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local tls = require "spec.tls_helpers"
local h2 = require "spec.h2_helpers"

local fmt = string.format
local shq = helpers.shq
local json = helpers.json

local CLIENT = helpers.root .. "/spec/fixtures/h2_ws_client.py"
local NODE = helpers.root .. "/spec/fixtures/h2_ws_node.js"
local CDP = helpers.root .. "/spec/fixtures/cdp_page.js"

local PAGE = [[
<!doctype html>
<html><head><meta charset="utf-8"><title>moongate ws over h2</title></head>
<body><div id="state">loading</div>
<script>
const out = { msgs: [] };
window.report = out;
const s = new WebSocket('wss://' + location.host + '/ws/echo', ['chat']);
s.onopen = () => {
  out.protocol = s.protocol;
  out.extensions = s.extensions;
  s.send('hello over h2');
  s.send('z'.repeat(20000));
};
s.onmessage = (e) => {
  out.msgs.push(e.data.length > 100 ? 'big ' + e.data.length : e.data);
  if (out.msgs.length === 2) s.close(1000, 'bye');
};
s.onerror = () => { out.error = true; };
s.onclose = (e) => {
  out.closed = e.code;
  const nav = performance.getEntriesByType('navigation')[0];
  out.nextHop = nav && nav.nextHopProtocol;
  document.getElementById('state').textContent = 'done';
};
</script>
</body></html>
]]

local ROUTES = [=[
local PAGE = [==[$PAGE]==]
local moongate = require "moongate"
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
local opened = 0
return {
  { path = "/", handler = function()
      return 200, PAGE, { ["content-type"] = "text/html; charset=utf-8" }
  end },
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/opened", handler = function() return 200, tostring(opened) end },
  { path = "/ws/echo", websocket = { mode = "handler", protocols = { "chat" },
      heartbeat = { interval = 0 } }, handler = function(ws, req)
      opened = opened + 1
      if req.headers["x-greet"] then ws:send("greet " .. req.headers["x-greet"]) end
      echo(ws)
  end },
  { path = "/ws/hb", websocket = { mode = "handler", heartbeat = { interval = 1 } },
    handler = echo },
  { path = "/ws/small", websocket = { mode = "handler", max_message = 1000,
      heartbeat = { interval = 0 } }, handler = echo },
  { path = "/ws/bye", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws) ws:recv(); ws:close(4003, "handler bye") end },
  { path = "/ws/drain", on_reload = "drain", websocket = { mode = "handler",
      heartbeat = { interval = 0 } }, handler = function(ws)
      opened = opened + 1
      echo(ws)
  end },
  { path = "/ws/auth", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    access = function(req)
      if req.headers["authorization"] ~= "Bearer ok" then return 401, { error = "who are you" } end
      req.ctx.user = "alice"
    end,
    handler = function(ws, req) ws:send("hi " .. tostring(req.ctx.user)); echo(ws) end },
  { path = "/ws/slowauth", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    access = function(req)
      moongate.sleep(0.2) -- the access step yields: the stream waits, its DATA too
      req.ctx.user = "bob"
    end,
    handler = function(ws, req) ws:send("hi " .. tostring(req.ctx.user)); echo(ws) end },
  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { path = "/relay/echo", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 } } },
  { path = "/relay/close", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/close/4002", heartbeat = { interval = 0 } } },
  { path = "/relay/missing", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/no-such-ws", heartbeat = { interval = 0 } } },
}
]=]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  h2c = true,
  access_log = true,
  timeouts = { write = 2, idle = 20, drain = 5 },
  upstreams = { wsup = { servers = { "http://127.0.0.1:$WSUP" } } },
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = "$CERT", key = "$KEY" } },
    http2 = true,
  },%s
}
]]

-- SETTINGS identifiers (RFC 9113 6.5.2, RFC 8441 3), error codes (7)
local ENABLE_CONNECT_PROTOCOL = "8"
local PROTOCOL_ERROR, CANCEL = 1, 8

-- the report with JSON nulls as nil
local function denull(t)
    if type(t) ~= "table" then return t end
    for k, v in pairs(t) do
        if v == json.null then t[k] = nil else denull(v) end
    end
    return t
end

local function client(port, spec, opts)
    opts = opts or {}
    local cmd = fmt("timeout -s KILL %d %s %s --port %d --timeout %d%s --spec %s 2>&1",
        (opts.timeout or 10) + 10, helpers.python, shq(CLIENT), port, opts.timeout or 10,
        opts.tls and " --tls" or "", shq(json.encode(spec)))
    if opts.async then
        local h = helpers.spawn(cmd)
        return {
            wait = function()
                local out = h:wait((opts.timeout or 10) + 15)
                local ok, t = pcall(json.decode, (out or ""):match("(%b{})%s*$") or "")
                assert(ok and t, "no report from h2_ws_client.py:\n" .. tostring(out))
                return denull(t)
            end,
        }
    end
    local out = helpers.sh(cmd)
    local ok, t = pcall(json.decode, out:match("(%b{})%s*$") or "")
    assert(ok and t, "no report from h2_ws_client.py:\n" .. out)
    return denull(t)
end

-- one WebSocket: its result (and the whole report)
local function one(port, sock, opts)
    local r = client(port, { sockets = { sock } }, opts)
    assert.is_nil(r.error, json.encode(r))
    return r.sockets[1], r
end

-- the messages (text/binary) of a socket's events
local function msgs(s)
    local m = {}
    for _, e in ipairs(s.events) do
        if e.kind == "text" then m[#m + 1] = e.data
        elseif e.kind == "binary" then m[#m + 1] = "hex:" .. e.hex end
    end
    return m
end

local function event(s, kind)
    for _, e in ipairs(s.events) do
        if e.kind == kind then return e end
    end
end

local function spki(cert)
    return (helpers.sh(fmt("openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform der "
        .. "| openssl dgst -sha256 -binary | openssl enc -base64", shq(cert))):gsub("%s+", ""))
end

describe("WebSockets over HTTP/2 (RFC 8441)", function()
    local mg, up, dir, certs, tport

    local function conf(extra)
        return fmt(CONF, extra or "")
    end

    local function access(path)
        local out
        helpers.wait_until(function()
            for _, l in ipairs(h2.access_lines(mg:log())) do
                if l.path == path and l.websocket then out = l end
            end
            return out
        end, 5)
        return out
    end

    lazy_setup(function()
        dir = helpers.tmpdir("h2ws")
        local ca = tls.ca(dir)
        certs = tls.cert(ca, { names = { "localhost" } })
        up = ws.start_upstream()
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "h2ws", routes = ROUTES, conf = conf(),
            vars = { WSUP = up.port, TLSPORT = tport, CERT = certs.cert, KEY = certs.key,
                PAGE = PAGE } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 10))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        ws.cleanup()
        helpers.cleanup()
    end)

    it("announces SETTINGS_ENABLE_CONNECT_PROTOCOL", function()
        local r = client(mg.port, { sockets = {} })
        assert.equal(1, r.settings[ENABLE_CONNECT_PROTOCOL])
    end)

    it("serves a handler route: 200, the subprotocol, echo, ping/pong, the close", function()
        local s = one(mg.port, { path = "/ws/echo", subprotocol = "chat", headers = { { "x-greet", "h2" } },
            steps = { { "recv" }, { "text", "hello" }, { "recv" }, { "binary_hex", "00ff7f80" }, { "recv" },
                { "text", "κόσμε 😀" }, { "recv" }, { "ping", "pp" }, { "recv" },
                { "close", 1000, "bye" }, { "recv_close" } } })
        assert.equal(200, s.status)
        assert.equal("chat", s.headers["sec-websocket-protocol"])
        assert.is_nil(s.headers["sec-websocket-accept"])
        assert.is_nil(s.headers["upgrade"])
        assert.same({ "greet h2", "hello", "hex:00ff7f80", "κόσμε 😀" }, msgs(s))
        assert.equal("pp", event(s, "pong").data)
        assert.equal(1000, event(s, "close").code)
        assert.is_true(s.ended) -- END_STREAM after the close handshake
        local l = access("/ws/echo")
        assert.equal("CONNECT", l.method)
        assert.equal("HTTP/2.0", l.protocol)
        assert.equal(200, l.status)
        assert.equal("handler", l.websocket.mode)
        assert.equal(1000, l.websocket.close_code)
        assert.equal("client", l.websocket.close_by)
    end)

    it("keeps an idle WebSocket past timeouts.write (only a shut window is a stall)", function()
        local s = one(mg.port, { path = "/ws/echo", steps = { { "text", "one" }, { "recv" },
            { "sleep", 3.5 }, { "big", 40000 }, { "recv" }, { "close", 1000, "" }, { "recv_close" } } })
        assert.equal("one", s.events[1].data)
        assert.equal(40000, s.events[2].len)
        assert.equal(1000, event(s, "close").code)
        assert.is_nil(s.reset)
    end)

    it("negotiates permessage-deflate both ways", function()
        local s = one(mg.port, { path = "/ws/echo", deflate = true,
            steps = { { "big", 50000 }, { "recv" }, { "text", "short" }, { "recv" },
                { "close", 1000, "" }, { "recv_close" } } })
        assert.equal(200, s.status)
        assert.truthy(s.headers["sec-websocket-extensions"]:find("permessage-deflate", 1, true))
        local big = s.events[1]
        assert.equal("text", big.kind)
        assert.equal(50000, big.len)
        assert.is_true(big.compressed)
        assert.equal("short", s.events[2].data)
    end)

    it("relays to the upstream over HTTP/1.1 (relay mode), and passes its close code", function()
        local s = one(mg.port, { path = "/relay/echo",
            steps = { { "text", "via relay" }, { "recv" }, { "big", 70000 }, { "recv" },
                { "close", 1000, "" }, { "recv_close" } } })
        assert.equal(200, s.status)
        assert.equal("via relay", s.events[1].data)
        assert.equal(70000, s.events[2].len)
        local c = one(mg.port, { path = "/relay/close", steps = { { "recv_close" } } })
        assert.equal(200, c.status)
        assert.equal(4002, event(c, "close").code)
        local l = access("/relay/close")
        assert.equal("relay", l.websocket.mode)
        assert.equal("HTTP/2.0", l.protocol)
    end)

    it("tunnels to the upstream with its own HTTP/1.1 upgrade (tunnel mode)", function()
        local s = one(mg.port, { path = "/tun/echo",
            steps = { { "text", "via tunnel" }, { "recv" }, { "close", 1000, "" }, { "recv_close" } } })
        assert.equal(200, s.status)
        assert.is_nil(s.headers["sec-websocket-accept"])
        assert.equal("via tunnel", s.events[1].data)
        assert.equal(1000, event(s, "close").code)
        -- the upstream saw a plain HTTP/1.1 upgrade: GET, Upgrade, a key
        local st, _, body = helpers.http(up.port, "GET", "/__log")
        assert.equal(200, st)
        local seen
        for _, c in ipairs(json.decode(body)) do
            if c.path:find("/tun/echo", 1, true) then seen = c end
        end
        assert.truthy(seen, body)
        local h = {}
        for _, kv in ipairs(seen.raw) do h[kv[1]:lower()] = kv[2] end
        assert.equal("websocket", h["upgrade"])
        assert.equal("Upgrade", h["connection"])
        assert.truthy(h["sec-websocket-key"])
        assert.equal("13", h["sec-websocket-version"])
        assert.equal("tunnel", access("/tun/echo").websocket.mode)
    end)

    it("passes an upstream's refusal on as the stream's answer", function()
        local s = one(mg.port, { path = "/relay/missing", steps = { { "text", "x" } } })
        assert.equal(404, s.status)
        assert.is_true(s.ended)
    end)

    it("sends the route's heartbeats and closes a message over max_message with 1009", function()
        local s = one(mg.port, { path = "/ws/hb", steps = { { "recv" }, { "close", 1000, "" },
            { "recv_close" } } }, { timeout = 6 })
        assert.truthy(s.events[1].data:match('^{"type":"ping","ts":%d+}$'), json.encode(s.events))
        local b = one(mg.port, { path = "/ws/small", steps = { { "text", "ok" }, { "recv" },
            { "big", 2000 }, { "recv_close" } } })
        assert.equal("ok", b.events[1].data)
        assert.equal(1009, event(b, "close").code)
        local h = one(mg.port, { path = "/ws/bye", steps = { { "text", "go" }, { "recv_close" } } })
        assert.equal(4003, event(h, "close").code)
        assert.equal("handler bye", event(h, "close").reason)
    end)

    it("runs the route's access hook first: refused, nothing is opened", function()
        local s = one(mg.port, { path = "/ws/auth", steps = {} })
        assert.equal(401, s.status)
        assert.is_true(s.ended)
        local ok = one(mg.port, { path = "/ws/auth", headers = { { "authorization", "Bearer ok" } },
            steps = { { "recv" }, { "close", 1000, "" }, { "recv_close" } } })
        assert.equal(200, ok.status)
        assert.equal("hi alice", ok.events[1].data)
        -- a hook that yields; a message sent before the answer waits for the socket
        local slow = one(mg.port, { path = "/ws/slowauth", early = "sent early",
            steps = { { "recv" }, { "recv" }, { "close", 1000, "" }, { "recv_close" } } })
        assert.equal(200, slow.status)
        assert.same({ "hi bob", "sent early" }, msgs(slow))
    end)

    it("refuses a plain CONNECT, another :protocol, a non-WebSocket route and a bad version", function()
        local r = client(mg.port, { sockets = {
            { path = "/ws/echo", protocol = json.null },          -- plain CONNECT
            { path = "/ws/echo", protocol = "connect-udp" },      -- another :protocol
            { path = "/hello" },                                  -- not a WebSocket route
            { path = "/nowhere" },                                -- no route
            { path = "/ws/echo", version = "8" },                 -- another version
        } })
        assert.is_nil(r.error, json.encode(r))
        local st = {}
        for i, s in ipairs(r.sockets) do st[i] = s.status end
        assert.same({ 501, 400, 400, 404, 426 }, st)
        for _, s in ipairs(r.sockets) do assert.is_true(s.ended) end
        local body = r.sockets[1].events[1].data
        assert.truthy(body:find("CONNECT is not supported", 1, true), body)
        assert.truthy(r.sockets[2].events[1].data:find("unsupported :protocol", 1, true))
        -- and the connection still serves
        local again = one(mg.port, { path = "/ws/echo", steps = { { "text", "still" }, { "recv" } } })
        assert.equal("still", again.events[1].data)
    end)

    it("carries several WebSockets and plain requests on one connection", function()
        local socks = {}
        for i = 1, 6 do
            local path = i % 3 == 0 and "/relay/echo" or i % 3 == 1 and "/ws/echo" or "/tun/echo"
            socks[i] = { path = path, steps = { { "text", "m" .. i }, { "recv" }, { "big", 30000 + i },
                { "recv" }, { "close", 1000, "" }, { "recv_close" } } }
        end
        local r = client(mg.port, { sockets = socks, gets = { "/hello", "/hello", "/hello", "/opened" } })
        assert.is_nil(r.error, json.encode(r))
        for i, s in ipairs(r.sockets) do
            assert.equal(200, s.status)
            assert.equal("m" .. i, s.events[1].data)
            assert.equal(30000 + i, s.events[2].len)
            assert.equal(1000, event(s, "close").code)
        end
        for i = 1, 3 do
            assert.equal(200, r.gets[i].status)
            assert.equal("hello\n", r.gets[i].data)
        end
    end)

    it("bounds a client that never opens its window: the stream is reset, the worker serves", function()
        local steps = {}
        for _ = 1, 12 do steps[#steps + 1] = { "big", 60000 } end
        steps[#steps + 1] = { "recv_close" }
        local r = client(mg.port, { window = 0, read_window = false,
            sockets = { { path = "/ws/echo", steps = steps } } }, { timeout = 12 })
        local s = r.sockets[1]
        assert.equal(200, s.status)
        assert.equal(CANCEL, s.reset, json.encode(r))
        assert.equal(200, (h2.h2c(mg.port, "GET", "/hello")))
    end)

    it("works with node's http2 module as the client", function()
        local out = helpers.sh(fmt("timeout -s KILL 20 node %s %d /ws/echo 2>&1", shq(NODE), mg.port))
        local line = out:match("(%b{})%s*$")
        assert(line, "no report from h2_ws_node.js:\n" .. out)
        local r = json.decode(line)
        assert.is_nil(r.error, out)
        assert.is_true(r.enableConnectProtocol)
        assert.equal(200, r.status)
        assert.same({ "hello from node", "second" }, r.msgs)
        assert.equal(1000, r.close)
    end)

    it("opens a WebSocket over h2 from headless Chromium (the page's connection)", function()
        local job = {
            url = fmt("https://127.0.0.1:%d/", tport),
            ["until"] = "document.getElementById('state').textContent === 'done'",
            result = "window.report",
            timeout = 30,
            args = { "--ignore-certificate-errors-spki-list=" .. spki(certs.cert) },
            user_data_dir = helpers.tmpdir("chromium-h2ws"),
        }
        local out = helpers.sh("timeout -s KILL 60 node " .. shq(CDP) .. " " .. shq(json.encode(job)))
        local line = out:match("(%b{})%s*$")
        assert(line, "no report from cdp_page.js:\n" .. out)
        local r = json.decode(line)
        assert.truthy(r.ok, "the page did not finish: " .. tostring(r.error))
        local v = r.value
        assert.equal("h2", v.nextHop)
        assert.equal("chat", v.protocol)
        assert.truthy(v.extensions:find("permessage-deflate", 1, true))
        assert.same({ "hello over h2", "big 20000" }, v.msgs)
        assert.equal(1000, v.closed)
        -- the WebSocket itself went over HTTP/2 (extended CONNECT), not HTTP/1.1
        local l
        helpers.wait_until(function()
            for _, x in ipairs(h2.access_lines(mg:log())) do
                if x.path == "/ws/echo" and x.websocket and x.tls and
                    (x.user_agent or ""):find("Chrome", 1, true) then l = x end
            end
            return l
        end, 5)
        assert.truthy(l, "no access line for chromium's websocket")
        assert.equal("HTTP/2.0", l.protocol)
        assert.equal("CONNECT", l.method)
    end)

    it("drains a route's WebSockets with 1012 on reload", function()
        local st0, _, before = helpers.http(mg.port, "GET", "/opened")
        assert.equal(200, st0)
        local h = client(mg.port, { sockets = { { path = "/ws/drain", steps = { { "text", "a" }, { "recv" },
            { "recv_close" } } } } }, { async = true, timeout = 10 })
        assert(helpers.wait_until(function()
            local _, _, b = helpers.http(mg.port, "GET", "/opened")
            return tonumber(b) and tonumber(b) > tonumber(before)
        end, 8))
        mg:reload(0.2)
        local r = h:wait()
        local s = r.sockets[1]
        assert.equal("a", s.events[1].data)
        assert.equal(1012, event(s, "close").code, json.encode(r))
        assert.is_true(s.ended, json.encode(r))
    end)

    it("closes WebSockets with 1001 and sends GOAWAY on SIGTERM", function()
        local _, _, before = helpers.http(mg.port, "GET", "/opened")
        local h = client(mg.port, { sockets = { { path = "/ws/echo", steps = { { "text", "b" }, { "recv" },
            { "recv_close" } } } } }, { async = true, timeout = 10 })
        assert(helpers.wait_until(function()
            local _, _, b = helpers.http(mg.port, "GET", "/opened")
            return tonumber(b) and tonumber(b) > tonumber(before)
        end, 8))
        mg:stop()
        local r = h:wait()
        assert(r.sockets, json.encode(r))
        local s = r.sockets[1]
        assert.equal("b", s.events[1].data)
        assert.equal(1001, event(s, "close").code, json.encode(r))
        assert.equal(0, r.goaway)
    end)
end)

describe("WebSockets over HTTP/2 with http2_websocket = false", function()
    local mg

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "h2ws-off", routes = [[
return { { path = "/ws/echo", websocket = { mode = "handler" }, handler = function(ws) ws:recv() end } }
]], conf = [[
return { listen = "127.0.0.1:$PORT", workers = 1, h2c = true, http2_websocket = false }
]] })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
    end)

    it("does not announce the setting, and an extended CONNECT is a protocol error", function()
        local r = client(mg.port, { sockets = { { path = "/ws/echo", steps = { { "text", "x" } } } } })
        assert.is_nil(r.settings[ENABLE_CONNECT_PROTOCOL])
        local s = r.sockets[1]
        assert.is_nil(s.status)
        assert.equal(PROTOCOL_ERROR, s.reset, json.encode(r))
        -- plain HTTP/2 still serves (the route answers a GET with 426)
        assert.equal(426, (h2.h2c(mg.port, "GET", "/ws/echo")))
    end)
end)
