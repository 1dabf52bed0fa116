-- Heartbeats and liveness, with a short interval (0.3 s): the seed's text
-- ping {"type":"ping","ts":<unix seconds>} at the interval, {"type":"pong"}
-- ignored, timers gone once a socket ends (however it ends), a silent peer
-- closed after heartbeat.timeout, protocol ping frames on request, and the
-- same in relay mode.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json
local socket = require "socket"

local ROUTES = [=[
local moongate = require "moongate"
sockets_open = 0
local function counted(ws)
  sockets_open = sockets_open + 1
  while true do
    local data = ws:recv()
    if not data then break end
    if data == "quit" then break end
    if data:sub(1, 5) == "echo:" then ws:send(data) end
  end
  sockets_open = sockets_open - 1
end
local function hb(t) return { mode = "handler", heartbeat = t, deflate = false } end
return {
  { path = "/hb", websocket = hb({ interval = 0.3 }), handler = counted },
  { path = "/hb/frames", websocket = hb({ interval = 0.3, ping_frames = true }), handler = counted },
  { path = "/hb/frames-only", websocket = hb({ interval = 0.3, ping_frames = true, message = false }),
    handler = counted },
  { path = "/hb/off", websocket = hb({ interval = 0 }), handler = counted },
  { path = "/hb/timeout", websocket = hb({ interval = 0.3, timeout = 1 }), handler = counted },
  { path = "/hb/timeout-frames", websocket = hb({ interval = 0.3, timeout = 1, ping_frames = true,
      message = false }), handler = counted },
  { path = "/hb/fast", websocket = hb({ interval = 0.02 }), handler = counted },
  { path = "/hb/relay", upstream = "wsup", websocket = { mode = "relay", upstream_path = "/echo",
      heartbeat = { interval = 0.3 } } },
  { path = "/hb/relay-dead", upstream = "wsup", websocket = { mode = "relay", upstream_path = "/silent",
      heartbeat = { interval = 0.3, timeout = 1, ping_frames = true } } },
  { path = "/sockets", handler = function() return 200, { open = sockets_open } end },
}
]=]

describe("websocket heartbeats", function()
    local mg, up

    lazy_setup(function()
        up = ws.start_upstream()
        mg = helpers.start_moongate({ name = "ws-heartbeat", routes = ROUTES,
            conf = ws.conf({ workers = 1, ws_upstream = up }) })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        ws.cleanup()
        helpers.cleanup()
    end)

    local function open_sockets()
        local st, _, body = helpers.http(mg.port, "GET", "/sockets")
        assert.equal(200, st)
        return json.decode(body).open
    end

    -- Reads frames for `secs` seconds; returns {text = {{t, data}}, pings =
    -- {{t, payload}}, other = {...}, close = frame|nil}. on_frame(c, f) may
    -- answer.
    local function collect(c, secs, on_frame)
        local t0 = socket.gettime()
        local out = { text = {}, pings = {}, other = {} }
        while socket.gettime() - t0 < secs do
            local f, err = c:read_frame(secs - (socket.gettime() - t0))
            if not f then
                out.err = err
                break
            end
            local t = socket.gettime() - t0
            if f.opcode == 1 then
                out.text[#out.text + 1] = { t, f.payload }
            elseif f.opcode == 9 then
                out.pings[#out.pings + 1] = { t, f.payload }
            elseif f.opcode == 8 then
                out.close = f
                break
            else
                out.other[#out.other + 1] = f
            end
            if on_frame then
                on_frame(c, f)
            end
        end
        return out
    end

    local function check_shape(data)
        local ok, t = pcall(json.decode, data)
        assert(ok and type(t) == "table", "heartbeat is not JSON: " .. data)
        local keys = {}
        for k in pairs(t) do
            keys[#keys + 1] = k
        end
        table.sort(keys)
        assert.same({ "ts", "type" }, keys)
        assert.equal("ping", t.type)
        assert.equal("number", type(t.ts))
        assert.equal(math.floor(t.ts), t.ts)
        assert(data:match('"ts"%s*:%s*%d+%s*[,}]'), "ts is not written as an integer: " .. data)
        assert(math.abs(t.ts - os.time()) <= 2, "ts is not the current unix time: " .. data)
    end

    it("sends {\"type\":\"ping\",\"ts\":<unix seconds>} at the interval", function()
        local c = ws.connect(mg.port, "/hb")
        local got = collect(c, 1.65)
        c:close()
        assert.is_nil(got.close)
        assert.truthy(#got.text >= 4 and #got.text <= 6, #got.text .. " heartbeats in 1.65 s at 0.3 s")
        for _, e in ipairs(got.text) do
            check_shape(e[2])
        end
        local gaps = {}
        for i = 2, #got.text do
            gaps[#gaps + 1] = got.text[i][1] - got.text[i - 1][1]
        end
        local sum = 0
        for _, g in ipairs(gaps) do
            assert(g > 0.15 and g < 0.6, "heartbeat gap " .. g)
            sum = sum + g
        end
        local mean = sum / #gaps
        assert(mean > 0.25 and mean < 0.4, "mean heartbeat gap " .. mean)
        assert(got.text[1][1] < 0.6, "first heartbeat after " .. got.text[1][1] .. " s")
        assert.same({}, got.pings)
    end)

    it("ignores {\"type\":\"pong\"} from the client and keeps beating", function()
        local c = ws.connect(mg.port, "/hb")
        local got = collect(c, 1.65, function(cl, f)
            if f.opcode == 1 then
                cl:text('{"type":"pong"}')
            end
        end)
        assert.is_nil(got.close)
        assert.truthy(#got.text >= 4, #got.text .. " heartbeats")
        for _, e in ipairs(got.text) do
            check_shape(e[2]) -- nothing but heartbeats came back
        end
        local m = assert(c:echo("echo:still open"))
        assert.equal("echo:still open", m.data)
        c:close()
    end)

    it("sends no heartbeat with interval = 0", function()
        local c = ws.connect(mg.port, "/hb/off")
        local got = collect(c, 1)
        c:close()
        assert.same({}, got.text)
        assert.same({}, got.pings)
    end)

    it("also sends protocol ping frames with ping_frames = true", function()
        local c = ws.connect(mg.port, "/hb/frames")
        local got = collect(c, 1.35, function(cl, f)
            if f.opcode == 9 then
                cl:pong(f.payload)
            end
        end)
        c:close()
        assert.truthy(#got.pings >= 3 and #got.pings <= 5, #got.pings .. " ping frames")
        assert.truthy(#got.text >= 3, #got.text .. " text heartbeats")
        for _, e in ipairs(got.text) do
            check_shape(e[2])
        end
    end)

    it("sends only ping frames with message = false", function()
        local c = ws.connect(mg.port, "/hb/frames-only")
        local got = collect(c, 1.35)
        c:close()
        assert.truthy(#got.pings >= 3, #got.pings .. " ping frames")
        assert.same({}, got.text)
    end)

    it("ends the handler when the client closes (the socket count drops)", function()
        -- sockets of earlier tests may still be winding down
        local base = helpers.wait_until(function() return open_sockets() == 0 and 0 end, 3) or open_sockets()
        local cs = {}
        for i = 1, 5 do
            cs[i] = ws.connect(mg.port, "/hb")
        end
        assert.truthy(helpers.wait_until(function() return open_sockets() == base + 5 end, 2))
        cs[1]:finish(1000)  -- close handshake
        cs[2]:close()       -- TCP close without a close frame
        cs[3]:text("quit")  -- the handler returns
        assert.truthy(helpers.wait_until(function() return open_sockets() == base + 2 end, 3),
            "open sockets: " .. tostring(open_sockets()))
        cs[4]:finish(1001)
        cs[5]:close()
        cs[3]:close()
        assert.truthy(helpers.wait_until(function() return open_sockets() == base end, 3))
    end)

    it("stops every heartbeat timer once its socket ends, however it ends", function()
        local worker = mg:workers()[1]
        assert.truthy(worker, "no worker")
        local cs = {}
        for i = 1, 300 do
            cs[i] = ws.connect(mg.port, "/hb/fast")
        end
        -- the 20 ms heartbeats are running: they cost CPU
        for i = 1, 300, 50 do
            local m = assert(cs[i]:read_message(2))
            check_shape(m.data)
        end
        local busy0 = ws.cpu_seconds(worker)
        socket.sleep(1)
        local busy = ws.cpu_seconds(worker) - busy0
        for i = 1, 300 do
            if i % 3 == 0 then
                pcall(cs[i].send_close, cs[i], 1000, "")
            elseif i % 3 == 1 then
                cs[i]:text("quit")
            end
        end
        for i = 1, 300 do
            if i % 3 ~= 1 then
                cs[i]:close()
            end
        end
        socket.sleep(0.5)
        for i = 1, 300, 3 do
            cs[i]:close()
        end
        assert.truthy(helpers.wait_until(function() return open_sockets() == 0 end, 5),
            "sockets still open: " .. tostring(open_sockets()))
        socket.sleep(0.3)
        local idle0 = ws.cpu_seconds(worker)
        socket.sleep(1)
        local idle = ws.cpu_seconds(worker) - idle0
        assert.truthy(helpers.alive(worker), "the worker died")
        assert.same({ worker }, mg:workers())
        assert(idle <= 0.03 and idle < busy / 3 + 0.011,
            string.format("worker CPU after all sockets closed: %.2f s/s (with 300 open: %.2f s/s)", idle, busy))
        assert.is_nil(mg:log():find("AddressSanitizer", 1, true))
    end)

    it("closes a silent peer after heartbeat.timeout", function()
        local c = ws.connect(mg.port, "/hb/timeout")
        local t0 = socket.gettime()
        local got = collect(c, 4) -- reads, never answers
        local t = socket.gettime() - t0
        assert.truthy(got.close or got.err == "closed", "still open after 4 s")
        assert(t > 0.8 and t < 2.5, "closed after " .. t .. " s, timeout is 1 s")
        assert.truthy(c:wait_eof(2), "TCP left open")
        c:close()
    end)

    it("closes a silent peer after heartbeat.timeout when only ping frames are sent", function()
        local c = ws.connect(mg.port, "/hb/timeout-frames")
        local t0 = socket.gettime()
        local got = collect(c, 4)
        local t = socket.gettime() - t0
        assert.truthy(got.close or got.err == "closed", "still open after 4 s")
        assert(t > 0.8 and t < 2.5, "closed after " .. t .. " s, timeout is 1 s")
        c:close()
    end)

    it("keeps a peer that answers with {\"type\":\"pong\"} past the timeout", function()
        local c = ws.connect(mg.port, "/hb/timeout")
        local got = collect(c, 2.5, function(cl, f)
            if f.opcode == 1 then
                cl:text('{"type":"pong"}')
            end
        end)
        assert.is_nil(got.close)
        assert.is_nil(got.err == "closed" and got.err or nil)
        assert.truthy(#got.text >= 6)
        local m = assert(c:echo("echo:alive"))
        assert.equal("echo:alive", m.data)
        c:close()
    end)

    it("keeps a peer that only answers ping frames with pong frames past the timeout", function()
        local c = ws.connect(mg.port, "/hb/timeout-frames")
        local got = collect(c, 2.5, function(cl, f)
            if f.opcode == 9 then
                cl:pong(f.payload)
            end
        end)
        assert.is_nil(got.close)
        assert.truthy(#got.pings >= 6)
        local m = assert(c:echo("echo:alive"))
        assert.equal("echo:alive", m.data)
        c:close()
    end)

    describe("in relay mode", function()
        it("sends heartbeats to the client and none to the upstream", function()
            ws.upstream_reset(up)
            local c = ws.connect(mg.port, "/hb/relay")
            local got = collect(c, 1.35)
            assert.truthy(#got.text >= 3 and #got.text <= 5, #got.text .. " heartbeats")
            for _, e in ipairs(got.text) do
                check_shape(e[2])
            end
            local m = assert(c:echo("relayed"))
            assert.equal("relayed", m.data)
            c:close()
            local log = ws.upstream_log(up)
            assert.equal(1, #log)
            assert.equal(1, log[1].received) -- only "relayed"
        end)

        it("closes the client when the upstream goes silent past heartbeat.timeout", function()
            local c = ws.connect(mg.port, "/hb/relay-dead")
            local t0 = socket.gettime()
            local got = collect(c, 5, function(cl, f)
                if f.opcode == 9 then
                    cl:pong(f.payload)
                elseif f.opcode == 1 then
                    cl:text('{"type":"pong"}')
                end
            end)
            local t = socket.gettime() - t0
            assert.truthy(got.close or got.err == "closed", "still open after 5 s with a dead upstream")
            assert(t < 3, "closed after " .. t .. " s, timeout is 1 s")
            c:close()
        end)
    end)
end)

describe("websocket parking", function()
    -- An idle socket gives its wslay context (two 4 KiB buffers) back and
    -- gets a new one for its next frames: heartbeats go on meanwhile.
    local mg

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "ws-park", conf = ws.conf({ workers = 1, log_level = "debug" }),
            routes = [=[
return {
  { path = "/park", websocket = { mode = "handler", deflate = false, heartbeat = { interval = 0.3 } },
    handler = function(ws)
      while true do
        local data = ws:recv()
        if not data then return end
        if data:sub(1, 5) == "echo:" then ws:send(data) end
      end
    end },
}
]=] })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("parks an idle socket, keeps beating, and wakes it for the next frames", function()
        local c = ws.connect(mg.port, "/park")
        -- wslay at work: a control frame takes it (whole text frames need it not)
        c:ping("p0")
        local f0 = c:read_frame(2)
        while f0 and f0.opcode ~= 10 do f0 = c:read_frame(2) end
        assert.truthy(f0, "no pong")
        local beats = 0
        local t0 = socket.gettime()
        while socket.gettime() - t0 < 1.8 do -- idle (only heartbeats come in)
            local f = c:read_frame(1.8 - (socket.gettime() - t0))
            if f and f.opcode == 1 then beats = beats + 1 end
        end
        assert.truthy(beats >= 4, beats .. " heartbeats")
        assert.truthy(mg:log():find("wslay context parked", 1, true), "no socket was parked")
        local function next_non_heartbeat()
            while true do
                local f = assert(c:read_frame(2))
                if not (f.opcode == 1 and f.payload:find('"type":"ping"', 1, true)) then return f end
            end
        end
        c:text("echo:1")
        local f = next_non_heartbeat()
        assert.equal("echo:1", f.payload)
        c:ping("p1")
        f = next_non_heartbeat()
        assert.equal(10, f.opcode)
        assert.equal("p1", f.payload)
        c:text("echo:", false)
        c:cont("2", true)
        f = next_non_heartbeat()
        assert.equal("echo:2", f.payload)
        c:send_close(1000, "bye")
        local ok, info = c:expect_close(2)
        assert.truthy(ok, tostring(info and info.err))
        c:close()
    end)
end)
