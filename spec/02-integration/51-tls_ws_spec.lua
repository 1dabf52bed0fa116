-- wss:// on a TLS listener: the three WebSocket modes (handler, relay to
-- ws_upstream.py, tunnel) with real clients (python3-websockets and node ws,
-- verifying against a test CA made by `openssl` into spec/out/),
-- permessage-deflate, big messages, heartbeats, req.scheme/req.tls in a
-- handler, X-Forwarded-Proto on the upstream handshake, and reloads: a
-- socket keeps working across one, a draining route's sockets get 1012.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local tls = require "spec.tls_helpers"
local json = helpers.json

local fmt = string.format

local ROUTES = [=[
local moongate = require "moongate"
local json = moongate.json
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
return {
  { path = "/ws/echo", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = echo },
  { path = "/ws/info", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws, req)
      ws:send(json.encode({ scheme = req.scheme, tls = req.tls or false }))
      echo(ws)
  end },
  { path = "/ws/hb", websocket = { mode = "handler", heartbeat = { interval = 0.3 } }, handler = echo },
  { path = "/ws/drain", on_reload = "drain",
    websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = echo },
  { path = "/relay/echo", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 } } },
  { path = "/relay/headers", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/headers", heartbeat = { interval = 0 } } },
  { path = "/relay/hb", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0.3 } } },
  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { prefix = "/tundrain", upstream = "wsup", on_reload = "drain", strip_prefix = true,
    websocket = { mode = "tunnel" } },
}
]=]

local MSGS = {
    { text = "hello" }, { text = "é, ünïcödé ✓" }, { binary_hex = "00ff10" },
    { text = "z", times = 200000 },
}

describe("wss:// on a TLS listener", function()
    local mg, up, ca, tport

    local function url(path)
        return fmt("wss://127.0.0.1:%d%s", tport, path)
    end

    local function client(kind, job)
        job.cafile = ca.cert
        return kind == "node" and ws.node_client(job) or ws.py_client(job)
    end

    local function check_echo(r, what)
        assert.is_true(r.opened, what .. ": " .. (r.error or "") .. (r.raw_output or ""))
        assert.equal(#MSGS, #r.messages, what)
        assert.same({ kind = "text", data = "hello" }, r.messages[1])
        assert.same({ kind = "text", data = "é, ünïcödé ✓" }, r.messages[2])
        assert.same({ kind = "binary", hex = "00ff10" }, r.messages[3])
        assert.equal(200000, #r.messages[4].data)
    end

    lazy_setup(function()
        local dir = helpers.tmpdir("tls-ws")
        ca = tls.ca(dir)
        local c = tls.cert(ca)
        up = ws.start_upstream()
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-ws", routes = ROUTES,
            conf = ws.conf({ workers = 2, ws_upstream = up, extra = fmt(
                '  tls = { listen = "127.0.0.1:%d", certificates = { { cert = %q, key = %q } } },',
                tport, c.cert, c.key) }) })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        ws.cleanup()
        helpers.cleanup()
    end)

    for _, kind in ipairs({ "python", "node" }) do
        it("echoes in handler, relay and tunnel modes (" .. kind .. ")", function()
            check_echo(client(kind, { url = url("/ws/echo"), send = MSGS }), kind .. " handler")
            check_echo(client(kind, { url = url("/relay/echo"), send = MSGS }), kind .. " relay")
            check_echo(client(kind, { url = url("/tun/echo"), send = MSGS }), kind .. " tunnel")
            local r = client(kind, { url = url("/ws/echo"), send = MSGS, deflate = false })
            check_echo(r, kind .. " handler, no deflate")
        end)
    end

    it("shows req.scheme and req.tls to a handler, X-Forwarded-Proto to the upstream", function()
        local r = client("python", { url = url("/ws/info"), send = {}, recv = 1 })
        assert.is_true(r.opened, r.error)
        local info = json.decode(r.messages[1].data)
        assert.equal("https", info.scheme)
        assert.equal("TLSv1.3", info.tls.version)
        for _, path in ipairs({ "/relay/headers", "/tun/headers" }) do
            local h = client("python", { url = url(path), send = {}, recv = 1 })
            assert.is_true(h.opened, h.error)
            local seen = json.decode(h.messages[1].data)
            assert.equal("https", seen.headers["x-forwarded-proto"], path)
        end
        -- the plain listener: ws://, scheme http
        local p = ws.py_client({ url = fmt("ws://127.0.0.1:%d/ws/info", mg.port), send = {}, recv = 1 })
        assert.equal("http", json.decode(p.messages[1].data).scheme)
        -- the session's access-log line
        assert.truthy(helpers.wait_until(function()
            return mg:log():match('"path":"/ws/info","status":101,[^\n]*"tls":{"version":"TLSv1%.3"[^\n]*"websocket"')
        end, 3), mg:log():sub(-2000))
    end)

    it("sends heartbeats over TLS (handler and relay)", function()
        for _, path in ipairs({ "/ws/hb", "/relay/hb" }) do
            local r = client("python", { url = url(path), send = {}, recv = 2, timeout = 5 })
            assert.is_true(r.opened, r.error)
            assert.equal(2, #r.messages, path .. ": " .. (r.error or ""))
            for _, m in ipairs(r.messages) do
                assert.truthy(ws.is_heartbeat(m.data), m.data)
            end
        end
    end)

    it("keeps open wss sockets across a reload and drains the draining routes", function()
        local dir = helpers.tmpdir("tls-ws-reload")
        local script = dir .. "/keep.py"
        helpers.write_file(script, [[
import asyncio, os, ssl, sys
import websockets
url, ca, ready, go = sys.argv[1:5]
async def main():
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(url, ssl=ctx, ping_interval=None) as w:
        await w.send("before")
        print("got", await w.recv(), flush=True)
        open(ready, "w").close()
        while not os.path.exists(go):
            await asyncio.sleep(0.05)
        try:
            await w.send("after")
            print("got", await w.recv(), flush=True)
        except websockets.exceptions.ConnectionClosed as e:
            print("closed", e.code, flush=True)
asyncio.run(asyncio.wait_for(main(), 20))
]])
        local go = dir .. "/go"
        local runs = {}
        for i, path in ipairs({ "/ws/echo", "/relay/echo", "/tun/echo", "/ws/drain", "/tundrain/echo" }) do
            local ready = dir .. "/ready" .. i
            runs[i] = { path = path, ready = ready, h = helpers.spawn(fmt("timeout -s KILL 25 %s %s %s %s %s %s",
                helpers.python, helpers.shq(script), helpers.shq(url(path)), helpers.shq(ca.cert),
                helpers.shq(ready), helpers.shq(go))) }
        end
        for _, r in ipairs(runs) do
            assert(helpers.wait_until(function() return helpers.read_file(r.ready) end, 10),
                r.path .. " did not open")
        end
        local log0 = #mg:log()
        mg:signal("HUP")
        assert(helpers.wait_until(function()
            return mg:log():sub(log0 + 1):match("serving on 2 workers")
        end, 10), mg:log():sub(-2000))
        -- the draining handler closes with 1012 at once; the draining tunnel is cut
        helpers.sleep(0.5)
        helpers.write_file(go, "1")
        local out = {}
        for i, r in ipairs(runs) do
            out[i] = r.h:wait(25)
        end
        for i = 1, 3 do
            assert.truthy(out[i]:match("got before\ngot after"), runs[i].path .. ": " .. out[i])
        end
        assert.truthy(out[4]:match("got before\nclosed 1012"), out[4])
        assert.truthy(out[5]:match("got before\nclosed"), out[5])
        -- and a new client after the reload
        check_echo(client("python", { url = url("/ws/echo"), send = MSGS }), "after reload")
    end)
end)

-- A client that asks for a key update (RFC 8446 4.6.3) while the socket
-- towards it is full, on a WebSocket socket (handler mode) and a tunnel:
-- nothing spins (OpenSSL 3.0 answers with the next write; a transport read
-- that must write first waits for the socket to drain, ws.c and tunnel.c)
-- and everything arrives once the client reads.
describe("wss:// key update while the socket to the client is full", function()
    local ffi = require "ffi"
    local socket = require "socket"
    local mg, tport, up
    local BIG = 4 * 1024 * 1024

    pcall(ffi.cdef, [[
typedef struct ssl_ctx_st SSL_CTX; typedef struct ssl_st SSL; typedef struct ssl_method_st SSL_METHOD;
const SSL_METHOD *TLS_client_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *m);
void SSL_CTX_free(SSL_CTX *ctx);
SSL *SSL_new(SSL_CTX *ctx);
void SSL_free(SSL *s);
int SSL_set_fd(SSL *s, int fd);
int SSL_connect(SSL *s);
int SSL_write(SSL *s, const void *buf, int num);
int SSL_read(SSL *s, void *buf, int num);
int SSL_get_error(const SSL *s, int ret);
int SSL_key_update(SSL *s, int updatetype);
int setsockopt(int fd, int level, int name, const void *val, unsigned int len);
]])
    local ssl = ffi.load("ssl")

    lazy_setup(function()
        local dir = helpers.tmpdir("tls-keyupdate-certs")
        local ca = tls.ca(dir)
        local c = tls.cert(ca, {})
        up = ws.start_upstream()
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-keyupdate", workers = 1, routes = [=[
return {
  { path = "/ws/flood", websocket = { mode = "handler", heartbeat = { interval = 0 },
      send_buffer = 16777216, max_message = 16777216 },
    handler = function(ws)
      ws:recv()
      ws:send(string.rep("x", 4 * 1024 * 1024), "binary")
      while ws:recv() do end
  end },
  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
}
]=], conf = fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = { wsup = { servers = { "http://127.0.0.1:%d" } } },
  tls = { listen = "127.0.0.1:$TLSPORT", certificates = { { cert = %q, key = %q } } },
}
]], up.port, c.cert, c.key), vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if up then ws.stop(up.pid) end
        ws.cleanup()
        helpers.cleanup()
    end)

    -- A TLS client through the FFI with a small receive window, over which
    -- the test decides when to read.
    local function client(path)
        local ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
        local sock = assert((socket.tcp4 or socket.tcp)())
        local rcvbuf = ffi.new("int[1]", 4096)
        assert(ffi.C.setsockopt(sock:getfd(), 1, 8, rcvbuf, 4) == 0) -- SOL_SOCKET, SO_RCVBUF
        sock:settimeout(5)
        assert(sock:connect("127.0.0.1", tport))
        local s = ssl.SSL_new(ctx)
        ssl.SSL_set_fd(s, sock:getfd())
        local c = { sock = sock, s = s, ctx = ctx }
        function c.drive(f, secs)
            local deadline = helpers.now() + (secs or 10)
            while helpers.now() < deadline do
                local rc = f()
                if rc > 0 then return rc end
                local e = ssl.SSL_get_error(s, rc)
                if e ~= 2 and e ~= 3 then return nil, "ssl error " .. e end -- WANT_READ/WRITE
                socket.select({ sock }, e == 3 and { sock } or nil, 0.05)
            end
            return nil, "deadline"
        end
        function c.write(data)
            return c.drive(function() return ssl.SSL_write(s, data, #data) end)
        end
        local buf = ffi.new("char[65536]")
        function c.read(secs)
            local n, err = c.drive(function() return ssl.SSL_read(s, buf, 65536) end, secs)
            return n and ffi.string(buf, n), err
        end
        function c.close()
            ssl.SSL_free(s)
            ssl.SSL_CTX_free(ctx)
            sock:close()
        end
        assert(c.drive(function() return ssl.SSL_connect(s) end))
        assert(c.write("GET " .. path .. " HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n" ..
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" ..
            "Sec-WebSocket-Version: 13\r\n\r\n"))
        local head = ""
        while not head:find("\r\n\r\n", 1, true) do
            local got = assert(c.read())
            head = head .. got
        end
        assert.truthy(head:match("^HTTP/1.1 101"), head)
        return c
    end

    local function worker_cpu_while(f)
        local w = mg:workers()[1]
        local t0, c0 = socket.gettime(), ws.cpu_seconds(w)
        f()
        return (ws.cpu_seconds(w) - c0) / (socket.gettime() - t0)
    end

    local function key_update_then_idle(c)
        -- the server's socket is full (we read nothing): ask for a key
        -- update and send one more frame, then watch the worker
        assert.equal(1, ssl.SSL_key_update(c.s, 1)) -- SSL_KEY_UPDATE_REQUESTED
        assert(c.write(ws.frame({ opcode = 1, payload = "k" })))
        return worker_cpu_while(function() socket.sleep(1.5) end)
    end

    local function drain(c, want)
        local got, deadline = 0, helpers.now() + 20
        while got < want and helpers.now() < deadline do
            local data = c.read(2)
            if not data then break end
            got = got + #data
        end
        return got
    end

    it("handler mode: waits for the socket to drain, then reads on", function()
        local c = client("/ws/flood")
        finally(c.close)
        assert(c.write(ws.frame({ opcode = 1, payload = "go" })))
        -- until the server's side is full: the message is far more than
        -- the socket and our 4 KiB window take
        socket.sleep(0.5)
        local cpu = key_update_then_idle(c)
        assert.is_true(cpu < 0.3, fmt("worker CPU %.0f %% while the read waits to write", cpu * 100))
        -- everything arrives once we read, and the socket is still alive
        assert.is_true(drain(c, BIG) >= BIG)
    end)

    it("tunnel mode: waits for the socket to drain, then reads on", function()
        local c = client("/tun/echo")
        finally(c.close)
        -- 600 KiB echoed back through the tunnel, none of it read yet
        for _ = 1, 3 do
            assert(c.write(ws.frame({ opcode = 2, payload = string.rep("y", 200 * 1024) })))
        end
        socket.sleep(0.5)
        local cpu = key_update_then_idle(c)
        assert.is_true(cpu < 0.3, fmt("worker CPU %.0f %% while the read waits to write", cpu * 100))
        assert.is_true(drain(c, 3 * 200 * 1024) >= 3 * 200 * 1024)
    end)
end)
