-- Backpressure and limits: a slow reader is closed with 1008 once the
-- route's send_buffer is exceeded (and the worker's memory stays bounded); a
-- client flooding a slow upstream is paused, not buffered; the per-worker
-- socket cap answers 503; the Origin allow-list answers 403; subprotocol
-- selection; max_message with real clients.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json
local socket = require "socket"

local ROUTES = [=[
local moongate = require "moongate"
flood_result = { done = false }
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
return {
  { path = "/ws/echo", websocket = { mode = "handler" }, handler = echo },
  -- sends 64 KiB messages to a client that never reads, up to 256 MiB
  { path = "/ws/flood", websocket = { mode = "handler", send_buffer = 262144, deflate = false,
      heartbeat = { interval = 0 } }, handler = function(ws)
      local chunk = string.rep("x", 65536)
      local sent, ok, err = 0, true, nil
      flood_result = { done = false }
      for i = 1, 4096 do
        ok, err = ws:send(chunk, "binary")
        if not ok then break end
        sent = sent + #chunk
        if i % 16 == 0 then moongate.sleep(0.001) end
      end
      flood_result = { done = true, sent = sent, err = err and tostring(err) or false }
  end },
  { path = "/flood-result", handler = function() return 200, flood_result end },
  { path = "/ws/origin", websocket = { mode = "handler",
      origins = { "https://app.example", "http://127.0.0.1:8080" } }, handler = echo },
  { path = "/ws/proto", websocket = { mode = "handler", protocols = { "chat.v2", "chat.v1" } },
    handler = function(ws)
      ws:send("protocol:" .. tostring(ws.protocol))
      echo(ws)
  end },
  { path = "/ws/noproto", websocket = { mode = "handler" }, handler = function(ws)
      ws:send("protocol:" .. tostring(ws.protocol))
      echo(ws)
  end },
  { path = "/relay/silent", upstream = "wsup", websocket = { mode = "relay", upstream_path = "/silent",
      heartbeat = { interval = 0 } } },
  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { prefix = "/idle-tun", upstream = "wsup", websocket = { mode = "tunnel", timeouts = { idle = 1 } } },
}
]=]

local CAP_CONF = [=[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  limits = { websockets = 3 },
}
]=]

local CAP_ROUTES = [=[
return {
  { path = "/ws/echo", websocket = { mode = "handler" }, handler = function(ws)
      while true do
        local data, kind = ws:recv()
        if not data then break end
        ws:send(data, kind)
      end
  end },
  { path = "/plain", handler = function() return 200, "plain\n" end },
}
]=]

local function hwm_kb(pid)
    local s = helpers.read_file("/proc/" .. pid .. "/status")
    return s and tonumber(s:match("VmHWM:%s*(%d+)"))
end

describe("websocket limits", function()
    local mg, up

    lazy_setup(function()
        up = ws.start_upstream()
        mg = helpers.start_moongate({ name = "ws-limits", routes = ROUTES,
            conf = ws.conf({ workers = 1, ws_upstream = up }) })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        ws.cleanup()
        helpers.cleanup()
    end)

    describe("backpressure", function()
        it("closes a slow reader with 1008 past send_buffer and stays bounded", function()
            local worker = mg:workers()[1]
            local hwm0 = hwm_kb(worker)
            local c = ws.connect(mg.port, "/ws/flood")
            -- never read until the handler is done
            local res = helpers.wait_until(function()
                local st, _, body = helpers.http(mg.port, "GET", "/flood-result")
                local t = st == 200 and json.decode(body)
                return t and t.done and t
            end, 8)
            assert.truthy(res, "the flooding handler never finished (ws:send never failed?)")
            assert.truthy(res.err, "ws:send never returned nil, err")
            assert(res.sent < 64 * 1048576, "sent " .. res.sent .. " bytes to a client that reads nothing")
            local grown = (hwm_kb(worker) - hwm0) / 1024
            assert(grown < 64, string.format("worker peak RSS grew by %.1f MiB", grown))
            -- now read: whatever was queued, then the close frame
            local code, info = c:expect_close(8)
            c:close()
            assert.equal(1008, code, "close: " .. tostring(info.err))
        end)

        -- Sends 64 KiB binary frames as fast as the socket takes them for
        -- `secs` seconds (at most 200 MiB). Returns whether a send stalled,
        -- the bytes taken, the worker's peak RSS growth (MiB), and what
        -- moongate logged meanwhile.
        local function flood(path, secs)
            local worker = mg:workers()[1]
            local hwm0 = hwm_kb(worker)
            local log0 = #mg:log()
            local c = ws.connect(mg.port, path)
            local frame = ws.frame({ opcode = 2, payload = ws.pattern(65536) })
            local total, stalled = 0, false
            local deadline = socket.gettime() + secs
            c.sock:settimeout(0.5)
            while socket.gettime() < deadline and total < 200 * 1048576 do
                local ok, err = c.sock:send(frame)
                if not ok then
                    stalled = true
                    if err ~= "timeout" then
                        break
                    end
                else
                    total = total + #frame
                end
            end
            local grown = (hwm_kb(worker) - hwm0) / 1024
            -- paused, not closed: nothing comes back to the client
            local f = c:read_frame(0.3)
            c:close()
            return stalled, total, grown, mg:log():sub(log0 + 1), f
        end

        local function check_paused(path, secs)
            local stalled, total, grown, log, f = flood(path, secs)
            assert.truthy(stalled, string.format("moongate took all %d MiB", math.floor(total / 1048576)))
            assert(grown < 48, string.format("worker peak RSS grew by %.1f MiB (%.1f MiB sent)",
                grown, total / 1048576))
            assert(not log:find("send buffer over", 1, true),
                "moongate buffered for the silent upstream until it overflowed instead of pausing the client:\n"
                .. log)
            assert(not f, "the client got a frame (opcode " .. tostring(f and f.opcode) .. ") instead of a pause")
        end

        it("pauses a client flooding a relay to a silent upstream", function()
            -- three times: the failure has been intermittent
            for _ = 1, 3 do
                check_paused("/relay/silent", 1.5)
            end
        end)

        it("pauses a client flooding a tunnel to a silent upstream", function()
            check_paused("/tun/silent", 2)
        end)
    end)

    describe("tunnel idle timeout (websocket.timeouts.idle)", function()
        it("closes a tunnel with no bytes either way for timeouts.idle", function()
            local c = ws.connect(mg.port, "/idle-tun/echo")
            local t0 = socket.gettime()
            local f, err = c:read_frame(4)
            local t = socket.gettime() - t0
            assert.is_nil(f and f.opcode ~= 8 and f or nil)
            assert.truthy(f or err == "closed", "tunnel still open after 4 s idle")
            assert(t > 0.8 and t < 2.5, "idle tunnel closed after " .. t .. " s, idle is 1 s")
            c:close()
        end)

        it("keeps a tunnel with traffic open past timeouts.idle", function()
            local c = ws.connect(mg.port, "/idle-tun/echo")
            local t0 = socket.gettime()
            while socket.gettime() - t0 < 2.2 do
                local m, err = c:echo("keep", "text", 1)
                assert(m, "tunnel closed while busy: " .. tostring(err))
                socket.sleep(0.3)
            end
            assert.equal(1000, c:finish())
        end)
    end)

    describe("max_message with real clients", function()
        for _, kind in ipairs({ "python", "node" }) do
            it("closes with 1009 when the " .. kind .. " client sends 2 MiB (default max 1 MiB)", function()
                local job = { url = "ws://127.0.0.1:" .. mg.port .. "/ws/echo", skip_pings = true,
                    timeout = 8, send = { { text = "0123456789abcdef", times = 131072 } }, recv = 1 }
                local r = kind == "node" and ws.node_client(job) or ws.py_client(job)
                assert.truthy(r.opened, tostring(r.error))
                assert.same({}, r.messages)
                assert.equal(1009, r.close_code)
            end)
        end
    end)

    describe("origins", function()
        it("upgrades an allowed Origin", function()
            local c, res = ws.handshake(mg.port, "/ws/origin", { origin = "https://app.example" })
            assert.equal(101, res.status)
            c:close()
            c, res = ws.handshake(mg.port, "/ws/origin", { origin = "http://127.0.0.1:8080" })
            assert.equal(101, res.status)
            c:close()
        end)

        it("answers 403 to an Origin not in the list", function()
            local c, res = ws.handshake(mg.port, "/ws/origin", { origin = "https://evil.example" })
            assert.equal(403, res.status)
            c:close()
            c, res = ws.handshake(mg.port, "/ws/origin", { origin = "https://app.example.evil" })
            assert.equal(403, res.status)
            c:close()
        end)

        it("answers 403 to the python client with a foreign Origin", function()
            local r = ws.py_client({ url = "ws://127.0.0.1:" .. mg.port .. "/ws/origin",
                origin = "https://evil.example", recv = 0 })
            assert.equal(403, r.status)
        end)
    end)

    describe("subprotocols", function()
        local function proto(path, offer)
            local c, res = ws.handshake(mg.port, path, { protocols = offer })
            assert.equal(101, res.status)
            local m = assert(c:read_message(3, { skip_heartbeats = true }))
            c:close()
            return res.headers["sec-websocket-protocol"], m.data
        end

        it("picks the first protocol the client offers that the route speaks", function()
            local h, seen = proto("/ws/proto", "chat.v1, chat.v2")
            assert.equal("chat.v1", h)
            assert.equal("protocol:chat.v1", seen)
            h, seen = proto("/ws/proto", "other, chat.v2")
            assert.equal("chat.v2", h)
            assert.equal("protocol:chat.v2", seen)
        end)

        it("reads offers spread over several header lines", function()
            local c, res = ws.handshake(mg.port, "/ws/proto",
                { headers = { "Sec-WebSocket-Protocol: other", "Sec-WebSocket-Protocol: chat.v2" } })
            assert.equal(101, res.status)
            assert.equal("chat.v2", res.headers["sec-websocket-protocol"])
            c:close()
        end)

        it("selects none when no offer matches, and none on a route without protocols", function()
            local h, seen = proto("/ws/proto", "other")
            assert.is_nil(h)
            assert.equal("protocol:nil", seen)
            h, seen = proto("/ws/noproto", "chat.v1")
            assert.is_nil(h)
            assert.equal("protocol:nil", seen)
        end)

        it("agrees with the python and node clients", function()
            for _, kind in ipairs({ "python", "node" }) do
                local job = { url = "ws://127.0.0.1:" .. mg.port .. "/ws/proto", protocols = { "x", "chat.v2" },
                    recv = 1, skip_pings = true }
                local r = kind == "node" and ws.node_client(job) or ws.py_client(job)
                assert.is_nil(r.error, kind .. ": " .. tostring(r.error))
                assert.equal("chat.v2", r.protocol)
                assert.equal("protocol:chat.v2", r.messages[1] and r.messages[1].data)
            end
        end)
    end)

    describe("per-worker socket cap", function()
        local mgcap

        lazy_setup(function()
            mgcap = helpers.start_moongate({ name = "ws-cap", routes = CAP_ROUTES, conf = CAP_CONF })
        end)

        lazy_teardown(function()
            if mgcap then
                mgcap:stop()
            end
        end)

        it("answers 503 to an upgrade beyond limits.websockets, and 101 again once one closes", function()
            local cs = {}
            for i = 1, 3 do
                local c, res = ws.handshake(mgcap.port, "/ws/echo")
                assert.equal(101, res.status, "socket " .. i)
                cs[i] = c
            end
            local c4, res4 = ws.handshake(mgcap.port, "/ws/echo")
            assert.equal(503, res4.status)
            c4:close()
            -- plain HTTP is not capped
            assert.equal(200, (helpers.http(mgcap.port, "GET", "/plain")))
            -- the open ones still work
            for i = 1, 3 do
                assert.equal("still " .. i, assert(cs[i]:echo("still " .. i)).data)
            end
            cs[1]:finish(1000)
            local ok = helpers.wait_until(function()
                local c, res = ws.handshake(mgcap.port, "/ws/echo")
                if res and res.status == 101 then
                    cs[1] = c
                    return true
                end
                if c then
                    c:close()
                end
            end, 3, 0.2)
            assert.truthy(ok, "no socket slot freed after a close")
            for i = 1, 3 do
                cs[i]:close()
            end
        end)
    end)
end)
