-- The access log (issue 13): every field of an HTTP line (ISO 8601
-- timestamp, request id, client, host, method, redacted path, status, bytes
-- in and out, duration, route, generation, listener, user agent, and for
-- proxied requests the upstream's address, status and time), a WebSocket
-- session's line at its end, the destination (a file, reopened on SIGUSR1
-- after logrotate moved it), the per-route and per-server switch, and a
-- destination that cannot be opened refused at load with `file: reason`.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json

local fmt = string.format
local shq = helpers.shq

-- The access lines in text, decoded.
local function access_lines(text)
    local out = {}
    for line in (text or ""):gmatch("[^\n]+") do
        if line:find('"type":"access"', 1, true) then
            local ok, t = pcall(json.decode, line)
            assert.truthy(ok, "not JSON: " .. line)
            out[#out + 1] = t
        end
    end
    return out
end

-- Waits for the line whose path is `path` (the log is flushed every 200 ms).
local function wait_line(read, path)
    return helpers.wait_until(function()
        for _, t in ipairs(access_lines(read())) do
            if t.path == path then
                return t
            end
        end
    end, 10)
end

local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"

describe("access log", function()
    local up, mg

    after_each(function()
        if mg then
            mg:stop()
            mg = nil
        end
        helpers.cleanup()
        ws.cleanup()
    end)

    it("an HTTP line carries every field, the upstream's too when proxied", function()
        up = helpers.start_upstream()
        local demo_port = helpers.free_port()
        mg = helpers.start_moongate({
            workers = 1,
            upstream = up,
            vars = { DEMO = demo_port },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  servers = { demo = { listen = "127.0.0.1:$DEMO", routes = "scripts/demo.lua", access_log = false } },
}
]],
            routes = [[
return {
  { prefix = "/api", upstream = "up", name = "api", strip_prefix = true },
  { path = "/hi", handler = function() return 200, "hi\n" end },
  { path = "/quiet", handler = function() return 200, "shh\n" end, access_log = false },
}
]],
            scripts = {
                ["demo.lua"] = [[return { { path = "/demo", handler = function() return 200, "demo\n" end } }]],
            },
        })
        local body = string.rep("x", 1000)
        local st = helpers.http(mg.port, "POST", "/api/status/201?token=s3cret&a=1", {
            body = body, headers = { ["User-Agent"] = "spec-agent/1.0", ["Host"] = "edge.example" },
        })
        assert.are.equal(201, st)
        local t = wait_line(function() return mg:log() end, "/api/status/201?token=-&a=1")
        assert.truthy(t, "no line for the proxied request:\n" .. mg:log())
        assert.falsy(mg:log():find("s3cret", 1, true), "the token is in the log")
        assert.truthy(type(t.time) == "number")
        assert.truthy(t.timestamp:match(ISO), t.timestamp)
        assert.are.equal(32, #t.request_id)
        assert.are.equal("127.0.0.1", t.remote)
        assert.are.equal("edge.example", t.host)
        assert.are.equal("POST", t.method)
        assert.are.equal(201, t.status)
        assert.truthy(t.bytes_in > 1000 and t.bytes_in < 1400, tostring(t.bytes_in))
        assert.truthy(t.bytes_out > 0)
        assert.are.equal(t.bytes, t.bytes_out)
        assert.truthy(t.duration_ms >= 0)
        assert.are.equal("api", t.route)
        assert.are.equal(1, t.generation)
        assert.are.equal("127.0.0.1:" .. mg.port, t.listener)
        assert.are.equal("spec-agent/1.0", t.user_agent)
        assert.are.equal("127.0.0.1:" .. up.port, t.upstream_addr)
        assert.are.equal(201, t.upstream_status)
        assert.truthy(t.upstream_ms >= 0 and t.upstream_ms <= t.duration_ms + 1)

        -- a handler's line has no upstream fields; no User-Agent is null
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/hi", { headers = { "User-Agent:" } })))
        t = wait_line(function() return mg:log() end, "/hi")
        assert.truthy(t, mg:log())
        assert.are.equal(json.null, t.user_agent)
        assert.are.equal(nil, t.upstream_addr)
        assert.are.equal("/hi", t.route)

        -- the unreachable upstream is named, with no status
        helpers.stop(up.pid)
        assert.are.equal(502, (helpers.http(mg.port, "GET", "/api/gone")))
        t = wait_line(function() return mg:log() end, "/api/gone")
        assert.truthy(t, mg:log())
        assert.are.equal("127.0.0.1:" .. up.port, t.upstream_addr)
        assert.are.equal(0, t.upstream_status)

        -- access_log = false on a route and on a server: not logged
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/quiet")))
        assert.are.equal(200, (helpers.http(demo_port, "GET", "/demo")))
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/hi?after=1")))
        assert.truthy(wait_line(function() return mg:log() end, "/hi?after=1"))
        assert.falsy(mg:log():find('"path":"/quiet"', 1, true), mg:log())
        assert.falsy(mg:log():find('"path":"/demo"', 1, true), mg:log())
    end)

    it("a WebSocket session gets one line when it ends", function()
        mg = helpers.start_moongate({
            workers = 1,
            routes = [[
return {
  { path = "/ws/echo", name = "echo", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws)
      while true do
        local data, kind = ws:recv()
        if not data then break end
        ws:send(data, kind)
      end
    end },
}
]],
        })
        local r = ws.py_client({ url = fmt("ws://127.0.0.1:%d/ws/echo", mg.port),
            send = { { text = "hello" }, { text = "world!" } }, headers = { ["User-Agent"] = "spec-ws/2" },
            deflate = false })
        assert.falsy(r.error, r.raw_output)
        local t = wait_line(function() return mg:log() end, "/ws/echo")
        assert.truthy(t, mg:log())
        assert.are.equal(101, t.status)
        assert.are.equal("echo", t.route)
        assert.truthy(t.timestamp:match(ISO), t.timestamp)
        assert.are.equal("spec-ws/2", t.user_agent)
        assert.are.equal("127.0.0.1:" .. mg.port, t.listener)
        assert.are.equal("handler", t.websocket.mode)
        assert.are.equal(1000, t.websocket.close_code)
        assert.are.equal("client", t.websocket.close_by)
        assert.are.equal(2, t.websocket.messages_in)
        assert.are.equal(2, t.websocket.messages_out)
        assert.are.equal(t.websocket.bytes_in, t.bytes_in)
        assert.are.equal(t.websocket.bytes_out, t.bytes_out)
        assert.truthy(t.bytes_in >= 11 and t.bytes_out >= 11)
        assert.truthy(t.duration_ms > 0)
    end)

    it("an upgrade that did not happen gets the line of the answer the client got", function()
        local wsup = ws.start_upstream()
        mg = helpers.start_moongate({
            workers = 1,
            routes = [[
return {
  { prefix = "/tun", name = "tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { prefix = "/relay", name = "relay", upstream = "wsup", websocket = { mode = "relay" } },
  { prefix = "/dead", name = "dead", upstream = "dead", websocket = { mode = "relay" } },
}
]],
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    wsup = { servers = { "http://127.0.0.1:$WSUP" } },
    dead = { servers = { "http://127.0.0.1:$DEAD" } },
  },
}
]],
            vars = { WSUP = wsup.port, DEAD = helpers.free_port() },
        })
        -- refused by the upstream (its 404 passed on), tunnel and relay
        for _, path in ipairs({ "/tun/not-a-ws-path", "/relay/not-a-ws-path" }) do
            local c, res = ws.handshake(mg.port, path)
            assert.truthy(c, tostring(res))
            assert.are.equal(404, res.status)
            c:close()
            local t = wait_line(function() return mg:log() end, path)
            assert.truthy(t, mg:log())
            assert.are.equal(404, t.status)
            assert.are.equal(404, t.upstream_status)
            assert.are.equal("GET", t.method)
            assert.are.equal(path:match("^/(%a+)"), t.route)
            assert.truthy(t.bytes > 0 and t.bytes == t.bytes_out, mg:log())
            assert.truthy(t.bytes_in > #path, mg:log())
            assert.is_nil(t.websocket)
        end
        -- the upstream is down: moongate's own 502, no upstream status
        local c, res = ws.handshake(mg.port, "/dead/x")
        assert.truthy(c, tostring(res))
        assert.are.equal(502, res.status)
        c:close()
        local t = wait_line(function() return mg:log() end, "/dead/x")
        assert.truthy(t, mg:log())
        assert.are.equal(502, t.status)
        assert.is_nil(t.upstream_status)
        assert.are.equal("dead", t.route)
        assert.truthy(t.bytes > 0, mg:log())
    end)

    it("a route name and headers that need escaping still make one JSON line each", function()
        mg = helpers.start_moongate({
            workers = 1,
            routes = [==[
return {
  { path = "/q", name = [[say "hi" \ there]], handler = function() return 200, "ok\n" end },
  { path = "/ws/q", name = [[ws "quoted"]], websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws) ws:recv() end },
}
]==],
        })
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/q?x=%22", {
            headers = { ["User-Agent"] = 'ua "quoted" \\ \tend' },
        })))
        local t = wait_line(function() return mg:log() end, "/q?x=%22")
        assert.truthy(t, mg:log())
        assert.are.equal('say "hi" \\ there', t.route)
        assert.are.equal('ua "quoted" \\ \tend', t.user_agent)
        local r = ws.py_client({ url = fmt("ws://127.0.0.1:%d/ws/q", mg.port), send = { { text = "x" } },
            deflate = false })
        assert.falsy(r.error, r.raw_output)
        t = wait_line(function() return mg:log() end, "/ws/q")
        assert.truthy(t, mg:log())
        assert.are.equal('ws "quoted"', t.route)
        assert.are.equal("handler", t.websocket.mode)
    end)

    it("a head refused before it was whole is logged with method \"-\", not a method it never sent",
        function()
        mg = helpers.start_moongate({ workers = 1 })
        -- a header line without a colon: 400 before the head is whole
        local resp = helpers.raw(mg.port, "PUT /refused HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
        assert.truthy(resp:find("^HTTP/1.1 400"), resp)
        local t = helpers.wait_until(function()
            for _, l in ipairs(access_lines(mg:log())) do
                if l.status == 400 then
                    return l
                end
            end
        end, 10)
        assert.truthy(t, mg:log())
        assert.are.equal("-", t.method)
        assert.are.equal("", t.route) -- no route was matched
        -- it has a request id like any other, the same in the log and the answer
        assert.truthy(t.request_id:match("^%x+$") and #t.request_id == 32, t.request_id)
        assert.truthy(resp:find('"request_id":"' .. t.request_id .. '"', 1, true), resp)
    end)

    it("goes to a file, reopened on SIGUSR1 by every worker after logrotate moved it", function()
        local dir = helpers.tmpdir("alog-file")
        helpers.mkdir_p(dir .. "/logs")
        mg = helpers.start_moongate({
            workers = 2,
            vars = { LOGDIR = dir .. "/logs" },
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  access_log = "$LOGDIR/access.log",
}
]],
            routes = [[return { { prefix = "/", handler = function() return 200, "ok\n" end } }]],
        })
        local file = dir .. "/logs/access.log"
        local function read() return helpers.read_file(file) end
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/one")))
        assert.truthy(wait_line(read, "/one"), tostring(read()))
        assert.falsy(mg:log():find('"type":"access"', 1, true), "an access line on stderr")

        assert(os.rename(file, file .. ".1"))
        mg:signal("USR1")
        assert.truthy(helpers.wait_until(function()
            local _, n = mg:log():gsub("access log reopened", "")
            return n >= 2
        end, 10), mg:log())
        -- several connections, so that both workers write
        for i = 1, 8 do
            assert.are.equal(200, (helpers.http(mg.port, "GET", "/two/" .. i)))
        end
        for i = 1, 8 do
            assert.truthy(wait_line(read, "/two/" .. i), "not in the new file: /two/" .. i)
        end
        local old = helpers.read_file(file .. ".1")
        assert.truthy(old:find('"path":"/one"', 1, true))
        assert.falsy(old:find('"path":"/two/', 1, true), old)
        assert.truthy(helpers.alive(mg.pid), "SIGUSR1 stopped the master")
        assert.are.equal(2, #mg:workers())
    end)

    it("refuses a destination it cannot open, with file: reason; a reload keeps the old one", function()
        local dir = helpers.tmpdir("alog-t")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/scripts/routes.lua", "return {}\n")
        for _, c in ipairs({
            { '"/nonexistent-dir/x.log"', "access_log: cannot open it for appending" },
            { "42", "access_log: expected a boolean, got number" },
            { '"yes"', 'access_log: expected a boolean, got string (or "stderr", "stdout", or a file' },
        }) do
            helpers.write_file(dir .. "/conf/moongate.lua",
                fmt('return { listen = "127.0.0.1:1", access_log = %s }\n', c[1]))
            local out = helpers.sh(fmt("cd %s && timeout 20 %s -t -c %s; echo rc=$?", shq(dir),
                shq(helpers.bin), shq(dir .. "/conf/moongate.lua")))
            assert.truthy(out:find("rc=1", 1, true), out)
            assert.truthy(out:find("moongate.lua:", 1, true), out)
            assert.truthy(out:find(c[2], 1, true), out)
        end

        mg = helpers.start_moongate({
            workers = 1,
            conf = [[return { listen = "127.0.0.1:$PORT", workers = $WORKERS, access_log = "./a.log" }]],
            routes = [[return { { prefix = "/", handler = function() return 200, "ok\n" end } }]],
        })
        mg:write_conf([[
return { listen = "127.0.0.1:$PORT", workers = $WORKERS, access_log = "/nonexistent-dir/b.log" }
]])
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload refused, generation 1 keeps serving", 1, true)
        end, 10), mg:log())
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/still")))
        assert.truthy(wait_line(function() return helpers.read_file(mg.dir .. "/a.log") end, "/still"))
    end)
end)
