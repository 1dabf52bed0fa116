-- The three WebSocket modes with real clients (python3-websockets and node
-- ws): handler (a Lua coroutine owns the socket; many run at once in one
-- worker), tunnel (upgrade proxied to ws_upstream.py, bytes spliced) and
-- relay (moongate's own socket to the upstream, on_message hooks that pass,
-- rewrite, drop or close, in both directions).
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json
local socket = require "socket"

local ROUTES = [=[
local moongate = require "moongate"
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
hook_seen = {}
local function hooks(msg, ctx)
  local d = msg.data
  hook_seen[#hook_seen + 1] = { direction = msg.direction, kind = msg.kind, len = #d }
  if msg.direction == "client" then
    if d == "drop-c" then return nil end
    if d == "close-c" then return false, 4000, "bye" end
    if d:sub(1, 10) == "rewrite-c:" then return "rewritten-by-client-hook:" .. d:sub(11) end
  else
    if d == "drop-u" then return nil end
    if d == "close-u" then return false, 4001, "from upstream hook" end
    if d:sub(1, 10) == "rewrite-u:" then return "rewritten-by-upstream-hook:" .. d:sub(11) end
  end
  return d
end
return {
  { path = "/ws/echo", websocket = { mode = "handler" }, handler = echo },
  { path = "/ws/slow", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws)
      while true do
        local data, kind = ws:recv()
        if not data then break end
        local secs = tonumber(data:match("^sleep:(.+)$"))
        if secs then moongate.sleep(secs) end
        ws:send(data, kind)
      end
  end },

  { path = "/ws/api", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = function(ws)
      while true do
        local data = ws:recv()
        if not data then break end
        if data == "ping" then ws:ping("hp")
        elseif data == "bin" then ws:send("\0\1\2", "binary")
        elseif data == "close" then
          ws:close()
          local ok, err = ws:send("after close")
          api_after_close = { ok = ok or false, err = tostring(err) }
          break
        else ws:send(data) end
      end
  end },
  { path = "/api-after-close", handler = function() return 200, api_after_close or {} end },
  { path = "/ws/return", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = function(ws)
      ws:send("last words")
  end },
  { path = "/ws/boom", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = function(ws)
      ws:recv()
      error("boom")
  end },

  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { prefix = "/tundead", upstream = "dead", websocket = { mode = "tunnel" } },

  { prefix = "/relay-default", upstream = "wsup", websocket = { mode = "relay" } },
  { prefix = "/relay-strip", upstream = "wsup", strip_prefix = true, websocket = { mode = "relay" } },
  { path = "/relay/echo", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 } } },
  { path = "/relay/headers", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/headers", heartbeat = { interval = 0 } } },
  { path = "/relay/close", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/close/4002", heartbeat = { interval = 0 } } },
  { path = "/relay/missing", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/no-such-ws", heartbeat = { interval = 0 } } },
  { path = "/relay/hooks", upstream = "wsup",
    websocket = { mode = "relay", upstream_path = "/echo", heartbeat = { interval = 0 }, on_message = hooks } },
  { path = "/hook-seen", handler = function() return 200, hook_seen end },
  { prefix = "/px", upstream = "httpup" },
}
]=]

local CONF = [=[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    wsup = { servers = { "http://127.0.0.1:$WSUP" } },
    dead = { servers = { "http://127.0.0.1:$DEAD" } },
    httpup = { servers = { "$HTTPUP" } },
  },
}
]=]

describe("websocket modes", function()
    local mg, up, httpup

    lazy_setup(function()
        up = ws.start_upstream()
        httpup = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "ws-modes", routes = ROUTES, conf = CONF,
            vars = { WSUP = up.port, DEAD = helpers.free_port(), HTTPUP = httpup.url } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(httpup and httpup.pid)
        ws.cleanup()
        helpers.cleanup()
    end)

    local function url(path)
        return "ws://127.0.0.1:" .. mg.port .. path
    end

    local MSGS = {
        { text = "hello" },
        { text = "κόσμε 😀" },
        { binary_hex = "00ff7f80c0affe" },
        { text = "" },
    }
    local WANT = {
        { kind = "text", data = "hello" },
        { kind = "text", data = "κόσμε 😀" },
        { kind = "binary", hex = "00ff7f80c0affe" },
        { kind = "text", data = "" },
    }

    local function check_echo(rep_, what)
        assert(rep_.opened, what .. ": not opened: " .. tostring(rep_.error) .. " " .. tostring(rep_.raw_output))
        assert.is_nil(rep_.error, what .. ": " .. tostring(rep_.error))
        assert.same(WANT, rep_.messages)
        assert.equal(1000, rep_.close_code)
    end

    local function client(kind, job)
        return kind == "node" and ws.node_client(job) or ws.py_client(job)
    end

    for _, kind in ipairs({ "python", "node" }) do
        describe("with the " .. kind .. " client", function()
            it("echoes text and binary in handler mode", function()
                check_echo(client(kind, { url = url("/ws/echo"), send = MSGS, skip_pings = true }), kind)
            end)

            it("echoes without permessage-deflate in handler mode", function()
                local r = client(kind, { url = url("/ws/echo"), send = MSGS, skip_pings = true, deflate = false })
                check_echo(r, kind)
                assert.same({}, r.extension_names)
            end)

            it("negotiates permessage-deflate with the client in handler mode", function()
                local r = client(kind, { url = url("/ws/echo"), skip_pings = true,
                    send = { { text = "compress me ", times = 2000 } } })
                assert.is_nil(r.error)
                assert.same({ "permessage-deflate" }, r.extension_names)
                assert.equal(("compress me "):rep(2000), r.messages[1] and r.messages[1].data)
            end)

            it("echoes a 300 KiB message in handler mode", function()
                local r = client(kind, { url = url("/ws/echo"), skip_pings = true, timeout = 10,
                    send = { { binary_hex = "0102030405060708090a0b0c0d0e0f10", times = 19200 } } })
                assert.is_nil(r.error)
                local m = r.messages[1]
                assert.truthy(m, "no echo")
                assert.equal("binary", m.kind)
                assert.equal(("0102030405060708090a0b0c0d0e0f10"):rep(19200), m.hex)
            end)

            it("echoes through a tunnel to the upstream", function()
                check_echo(client(kind, { url = url("/tun/echo"), send = MSGS }), kind)
            end)

            it("passes extension negotiation through the tunnel to the upstream", function()
                local r = client(kind, { url = url("/tun/echo"), send = { { text = "z", times = 5000 } } })
                assert.is_nil(r.error)
                assert.same({ "permessage-deflate" }, r.extension_names)
                assert.equal(("z"):rep(5000), r.messages[1] and r.messages[1].data)
            end)

            it("passes the upstream's close code through the tunnel", function()
                local r = client(kind, { url = url("/tun/close/4003"), recv = 0, wait_close = true })
                assert.truthy(r.opened, tostring(r.error))
                assert.equal(4003, r.close_code)
                assert.equal("upstream 4003", r.close_reason)
            end)

            it("relays messages to the upstream and back", function()
                check_echo(client(kind, { url = url("/relay/echo"), send = MSGS, skip_pings = true }), kind)
            end)

            it("relays a 300 KiB message", function()
                local r = client(kind, { url = url("/relay/echo"), skip_pings = true, timeout = 10,
                    send = { { text = "0123456789abcdef", times = 19200 } } })
                assert.is_nil(r.error)
                assert.equal(("0123456789abcdef"):rep(19200), r.messages[1] and r.messages[1].data)
            end)

            it("relays messages at the frame length encoding boundaries", function()
                -- 7-bit, 16-bit and 64-bit lengths, masked (to the upstream) and not
                local sizes = { 125, 126, 2048, 2049, 65535, 65536 }
                local send = {}
                for i, n in ipairs(sizes) do send[i] = { text = "x", times = n } end
                local r = client(kind, { url = url("/relay/echo"), skip_pings = true, timeout = 10,
                    send = send })
                assert.is_nil(r.error)
                for i, n in ipairs(sizes) do
                    assert.equal(n, r.messages[i] and #r.messages[i].data, "message " .. i)
                end
            end)

            it("relay: on_message rewrites in both directions", function()
                local r = client(kind, { url = url("/relay/hooks"), skip_pings = true,
                    send = { { text = "rewrite-c:one" }, { text = "rewrite-u:two" }, { text = "plain" } } })
                assert.is_nil(r.error)
                assert.same({
                    { kind = "text", data = "rewritten-by-client-hook:one" },
                    { kind = "text", data = "rewritten-by-upstream-hook:two" },
                    { kind = "text", data = "plain" },
                }, r.messages)
            end)

            it("relay: on_message drops in both directions", function()
                local r = client(kind, { url = url("/relay/hooks"), skip_pings = true, recv = 2,
                    send = { { text = "drop-c" }, { text = "drop-u" }, { text = "after-1" }, { text = "after-2" } } })
                assert.is_nil(r.error)
                assert.same({ { kind = "text", data = "after-1" }, { kind = "text", data = "after-2" } }, r.messages)
            end)

            it("relay: on_message closes from the client direction", function()
                local r = client(kind, { url = url("/relay/hooks"), skip_pings = true, recv = 0, wait_close = true,
                    send = { { text = "close-c" } } })
                assert.truthy(r.opened, tostring(r.error))
                assert.equal(4000, r.close_code)
                assert.equal("bye", r.close_reason)
            end)

            it("relay: on_message closes from the upstream direction", function()
                local r = client(kind, { url = url("/relay/hooks"), skip_pings = true, recv = 0, wait_close = true,
                    send = { { text = "close-u" } } })
                assert.truthy(r.opened, tostring(r.error))
                assert.equal(4001, r.close_code)
                assert.equal("from upstream hook", r.close_reason)
            end)
        end)
    end

    describe("handler mode", function()
        it("runs many sockets in one worker without one blocking another", function()
            local a = ws.connect(mg.port, "/ws/slow")
            local b = ws.connect(mg.port, "/ws/slow")
            local t0 = socket.gettime()
            a:text("sleep:1.5")
            local m = assert(b:echo("quick", "text", 1))
            assert.equal("quick", m.data)
            assert.truthy(socket.gettime() - t0 < 0.5, "a sleeping handler held up another socket")
            local ma = assert(a:read_message(3))
            assert.equal("sleep:1.5", ma.data)
            assert.truthy(socket.gettime() - t0 >= 1.4)
            a:close()
            b:close()
        end)

        it("serves 200 sockets at once in one worker", function()
            local cs = {}
            for i = 1, 200 do
                cs[i] = ws.connect(mg.port, "/ws/echo")
            end
            for i = 1, 200 do
                cs[i]:text("msg-" .. i)
            end
            for i = 200, 1, -1 do
                local m, err = cs[i]:read_message(3, { skip_heartbeats = true })
                assert(m, "socket " .. i .. ": " .. tostring(err))
                assert.equal("msg-" .. i, m.data)
            end
            for i = 1, 200 do
                cs[i]:close()
            end
        end)

        it("serves 20 python clients at once", function()
            local hs = {}
            for i = 1, 20 do
                hs[i] = ws.client_async("python", { url = url("/ws/slow"), skip_pings = true,
                    send = { { text = "sleep:0.5" }, { text = "c" .. i } } })
            end
            local t0 = socket.gettime()
            for i = 1, 20 do
                local r = hs[i]:wait(10)
                assert.is_nil(r.error, "client " .. i .. ": " .. tostring(r.error))
                assert.same({ { kind = "text", data = "sleep:0.5" }, { kind = "text", data = "c" .. i } }, r.messages)
            end
            -- 20 half-second sleeps run at once, not one after the other
            assert.truthy(socket.gettime() - t0 < 5, "handlers were serialised")
        end)
    end)

    describe("handler API", function()
        it("ws:ping(data) sends a ping frame", function()
            local c = ws.connect(mg.port, "/ws/api")
            c:text("ping")
            local f = assert(c:read_frame(3))
            assert.equal(9, f.opcode)
            assert.equal("hp", f.payload)
            c:pong("hp")
            assert.equal("still", assert(c:echo("still")).data)
            c:close()
        end)

        it("ws:send(data, \"binary\") sends a binary frame", function()
            local c = ws.connect(mg.port, "/ws/api")
            c:text("bin")
            local m = assert(c:read_message(3))
            assert.equal("binary", m.kind)
            assert.equal("\0\1\2", m.data)
            c:close()
        end)

        it("ws:close() closes with 1000 (or no code) and ws:send then fails", function()
            local c = ws.connect(mg.port, "/ws/api")
            c:text("close")
            local code, info = c:expect_close(3)
            assert.truthy(info.close, "no close frame: " .. tostring(info.err))
            assert.truthy(code == nil or code == 1000, "close code " .. tostring(code))
            assert.is_true(info.eof)
            for _, f in ipairs(info.frames) do
                assert.is_not.equal("after close", f.payload)
            end
            c:close()
            local st, _, body = helpers.http(mg.port, "GET", "/api-after-close")
            assert.equal(200, st)
            local t = json.decode(body)
            assert.equal(false, t.ok)
            assert.truthy(t.err and t.err ~= "nil", "ws:send after ws:close gave no error")
        end)

        it("closes with 1000 or 1001 when the handler returns", function()
            local c = ws.connect(mg.port, "/ws/return")
            local m = assert(c:read_message(3))
            assert.equal("last words", m.data)
            local code, info = c:expect_close(3)
            assert.truthy(code == 1000 or code == 1001, "close code " .. tostring(code) .. " " .. tostring(info.err))
            assert.is_true(info.eof)
            c:close()
        end)

        it("closes with 1011 when the handler raises an error", function()
            local c = ws.connect(mg.port, "/ws/boom")
            c:text("go")
            local code, info = c:expect_close(3)
            assert.equal(1011, code,
                tostring(info.err) .. " " .. (info.close and ws.hex(info.close.payload) or "no close frame"))
            c:close()
            assert.equal(200, (helpers.http(mg.port, "GET", "/api-after-close")))
        end)
    end)

    describe("forwarding headers", function()
        -- one builder for the proxy and both upgrades: the same
        -- X-Forwarded-Proto (the connection's, never the client's claim)
        it("sets the same X-Forwarded-Proto on the upgrade as the proxy does", function()
            local spoof = { "X-Forwarded-Proto: https" }
            local st, h, body = helpers.http(mg.port, "GET", "/px/xf", { headers = spoof })
            assert.equal(200, st, tostring(body))
            local proxied = json.decode(body).headers["x-forwarded-proto"]
            assert.equal("http", proxied, tostring(h))
            for _, path in ipairs({ "/tun/headers", "/relay/headers" }) do
                local c = ws.connect(mg.port, path, { headers = spoof })
                local m = assert(c:read_message(3, { skip_heartbeats = true }))
                local seen = json.decode(m.data)
                assert.same({ proxied }, ws.raw_header_values(seen.raw, "x-forwarded-proto"), path)
                c:close()
            end
        end)

        it("appends the peer to the client's X-Forwarded-For on the upgrade, as the proxy does", function()
            local xff = { "X-Forwarded-For: 10.1.2.3" }
            local st, _, body = helpers.http(mg.port, "GET", "/px/xf", { headers = xff })
            assert.equal(200, st, tostring(body))
            local proxied = json.decode(body).headers["x-forwarded-for"]
            assert.equal("10.1.2.3, 127.0.0.1", proxied)
            for _, path in ipairs({ "/tun/headers", "/relay/headers" }) do
                local c = ws.connect(mg.port, path, { headers = xff })
                local m = assert(c:read_message(3, { skip_heartbeats = true }))
                local seen = json.decode(m.data)
                assert.same({ proxied }, ws.raw_header_values(seen.raw, "x-forwarded-for"), path)
                c:close()
            end
        end)
    end)

    describe("tunnel mode", function()
        it("sends the upgrade with Connection: Upgrade exactly and the client's key", function()
            local c, res = ws.connect(mg.port, "/tun/headers", { connection = "keep-alive, Upgrade" })
            assert.equal(ws.accept_for(res.key), res.headers["sec-websocket-accept"])
            local m = assert(c:read_message(3))
            local seen = json.decode(m.data)
            assert.same({ "Upgrade" }, ws.raw_header_values(seen.raw, "connection"))
            assert.equal("websocket", (seen.headers["upgrade"] or ""):lower())
            assert.equal(res.key, seen.headers["sec-websocket-key"])
            assert.equal("13", seen.headers["sec-websocket-version"])
            assert.equal("/tun/headers", seen.path)
            c:close()
        end)

        it("adds X-Forwarded-For to the upgrade", function()
            local c = ws.connect(mg.port, "/tun/headers")
            local m = assert(c:read_message(3))
            local seen = json.decode(m.data)
            assert.equal("127.0.0.1", seen.headers["x-forwarded-for"])
            c:close()
        end)

        it("drops the headers the client's Connection header names (RFC 9110 7.6.1)", function()
            local c = ws.connect(mg.port, "/tun/headers", {
                connection = "Upgrade, X-Secret", headers = { "X-Secret: 1", "X-Kept: 2" } })
            local m = assert(c:read_message(3))
            local seen = json.decode(m.data)
            assert.same({}, ws.raw_header_values(seen.raw, "x-secret"))
            assert.same({ "2" }, ws.raw_header_values(seen.raw, "x-kept"))
            assert.same({ "Upgrade" }, ws.raw_header_values(seen.raw, "connection"))
            c:close()
        end)

        it("passes the upstream's refusal (404) back", function()
            local c, res = ws.handshake(mg.port, "/tun/not-a-ws-path")
            assert.truthy(c, tostring(res))
            assert.equal(404, res.status)
            c:close()
        end)

        it("drops the headers the upstream's Connection header names from its refusal", function()
            local c, res = ws.handshake(mg.port, "/tun/refuse-hop")
            assert.truthy(c, tostring(res))
            assert.equal(404, res.status)
            assert.equal("2", res.headers["x-end"])
            assert.is_nil(res.headers["x-hop"])
            c:close()
        end)

        it("answers 502 when the upstream is down", function()
            local c, res = ws.handshake(mg.port, "/tundead/echo")
            assert.truthy(c, tostring(res))
            assert.equal(502, res.status)
            c:close()
        end)

        it("splices frames untouched, fragments and pings included", function()
            local c = ws.connect(mg.port, "/tun/echo")
            c:text("tun", false)
            c:ping("tp")
            c:cont("nel", true)
            local m = assert(c:read_message(3))
            assert.equal("tunnel", m.data)
            local pong
            for _, f in ipairs(c.controls) do
                if f.opcode == 0xA then
                    pong = f.payload
                end
            end
            assert.equal("tp", pong)
            assert.equal(1000, c:finish())
        end)
    end)

    describe("relay mode", function()
        it("opens the upstream socket with Connection: Upgrade exactly", function()
            local c = ws.connect(mg.port, "/relay/headers", { connection = "keep-alive, Upgrade" })
            local m = assert(c:read_message(3, { skip_heartbeats = true }))
            local seen = json.decode(m.data)
            assert.same({ "Upgrade" }, ws.raw_header_values(seen.raw, "connection"))
            assert.same({ "websocket" }, ws.raw_header_values(seen.raw, "upgrade"))
            assert.same({ "13" }, ws.raw_header_values(seen.raw, "sec-websocket-version"))
            assert.equal(1, #ws.raw_header_values(seen.raw, "sec-websocket-key"))
            assert.equal("/headers", seen.path)
            c:close()
        end)

        it("drops the headers the client's Connection header names (RFC 9110 7.6.1)", function()
            local c = ws.connect(mg.port, "/relay/headers", {
                connection = "Upgrade, X-Secret", headers = { "X-Secret: 1", "X-Kept: 2" } })
            local m = assert(c:read_message(3, { skip_heartbeats = true }))
            local seen = json.decode(m.data)
            assert.same({}, ws.raw_header_values(seen.raw, "x-secret"))
            assert.same({ "2" }, ws.raw_header_values(seen.raw, "x-kept"))
            assert.same({ "Upgrade" }, ws.raw_header_values(seen.raw, "connection"))
            c:close()
        end)

        it("uses the request's path and query upstream by default", function()
            local c = ws.connect(mg.port, "/relay-default/headers?x=1&y=two")
            local m = assert(c:read_message(3, { skip_heartbeats = true }))
            local seen = json.decode(m.data)
            assert.equal("/relay-default/headers?x=1&y=two", seen.path)
            c:close()
        end)

        it("strips the matched prefix upstream when the route says strip_prefix", function()
            local c = ws.connect(mg.port, "/relay-strip/headers?x=1")
            local m = assert(c:read_message(3, { skip_heartbeats = true }))
            assert.equal("/headers?x=1", json.decode(m.data).path)
            c:close()
        end)

        it("shows each message's direction and kind to on_message", function()
            local c = ws.connect(mg.port, "/relay/hooks")
            local before = #json.decode((select(3, helpers.http(mg.port, "GET", "/hook-seen"))))
            local m = assert(c:echo("\1\2\3", "binary"))
            assert.equal("binary", m.kind)
            m = assert(c:echo("txt"))
            assert.equal("text", m.kind)
            c:close()
            local seen = json.decode((select(3, helpers.http(mg.port, "GET", "/hook-seen"))))
            local got = {}
            for i = before + 1, #seen do
                got[#got + 1] = seen[i].direction .. "/" .. seen[i].kind .. "/" .. seen[i].len
            end
            assert.same({ "client/binary/3", "upstream/binary/3", "client/text/3", "upstream/text/3" }, got)
        end)

        it("does not forward a message dropped in the client direction", function()
            ws.upstream_reset(up)
            local c = ws.connect(mg.port, "/relay/hooks")
            c:text("drop-c")
            local m = assert(c:echo("kept"))
            assert.equal("kept", m.data)
            c:finish()
            local log = ws.upstream_log(up)
            assert.equal(1, #log)
            assert.equal(1, log[1].received)
        end)

        it("closes the upstream side too when on_message closes", function()
            ws.upstream_reset(up)
            local c = ws.connect(mg.port, "/relay/hooks")
            c:text("close-c")
            local code = c:expect_close(3)
            assert.equal(4000, code)
            c:close()
            local ok = helpers.wait_until(function()
                local log = ws.upstream_log(up)
                return log[1] and log[1].closed
            end, 3)
            assert.truthy(ok, "the upstream socket stayed open")
            assert.equal(0, ws.upstream_log(up)[1].received)
        end)

        it("closes the upstream side when the client closes", function()
            ws.upstream_reset(up)
            local c = ws.connect(mg.port, "/relay/echo")
            assert.equal("x", assert(c:echo("x")).data)
            assert.equal(1000, c:finish(1000))
            local ok = helpers.wait_until(function()
                local log = ws.upstream_log(up)
                return log[1] and log[1].closed and log[1]
            end, 3)
            assert.truthy(ok, "the upstream socket stayed open")
            assert.equal(1000, ok.close_code)
        end)

        it("passes the upstream's close code to the client", function()
            local c = ws.connect(mg.port, "/relay/close")
            local code, info = c:expect_close(3)
            assert.equal(4002, code)
            assert.equal("upstream 4002", info.close and info.close.reason)
            c:close()
        end)

        it("refuses (502 or the upstream's 404) or closes (1011/1014) when the upstream refuses", function()
            local c, res = ws.handshake(mg.port, "/relay/missing")
            assert.truthy(c, tostring(res))
            if res.status == 101 then
                local code = c:expect_close(3)
                assert.truthy(code == 1011 or code == 1014, "close code " .. tostring(code))
            else
                assert.truthy(res.status == 502 or res.status == 404, "status " .. res.status)
            end
            c:close()
        end)

        it("applies the conformance rules to the client side (unmasked -> 1002)", function()
            local c = ws.connect(mg.port, "/relay/echo")
            c:send_frame({ opcode = 1, payload = "unmasked", mask = false })
            assert.equal(1002, (c:expect_close(3)))
            c:close()
        end)

        it("answers the client's pings itself", function()
            local c = ws.connect(mg.port, "/relay/echo")
            c:ping("relay-ping")
            local f = assert(c:read_frame(3))
            assert.equal(0xA, f.opcode)
            assert.equal("relay-ping", f.payload)
            c:close()
        end)
    end)
end)
