-- WebSockets across SIGHUP reloads: a socket keeps the generation it opened
-- on and keeps working (handler, relay, tunnel; heartbeats too); a route with
-- on_reload = "drain" has its sockets closed with 1012 after a reload; a
-- refused reload changes nothing.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local socket = require "socket"

local function routes(gen)
    return (([=[
local function tagged(ws)
  while true do
    local data = ws:recv()
    if not data then break end
    ws:send("GEN:" .. data)
  end
end
return {
  { path = "/ws/gen", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = tagged },
  { path = "/ws/drain", on_reload = "drain",
    websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = tagged },
  { path = "/ws/hb", websocket = { mode = "handler", heartbeat = { interval = 0.3 } }, handler = tagged },
  { path = "/relay/echo", upstream = "wsup", websocket = { mode = "relay", upstream_path = "/echo",
      heartbeat = { interval = 0 },
      on_message = function(msg)
        if msg.direction == "upstream" then return "GEN:" .. msg.data end
        return msg.data
      end } },
  { prefix = "/tun", upstream = "wsup", websocket = { mode = "tunnel" } },
  { path = "/gen", handler = function() return 200, "GEN" end },
}
]=]):gsub("GEN", gen))
end

describe("websockets and reload", function()
    local mg, up

    lazy_setup(function()
        up = ws.start_upstream()
        mg = helpers.start_moongate({ name = "ws-reload", routes = routes("v1"),
            conf = ws.conf({ workers = 2, ws_upstream = up }) })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        ws.cleanup()
        helpers.cleanup()
    end)

    local current = "v1"

    local function serves(gen)
        for _ = 1, 6 do
            local st, _, body = helpers.http(mg.port, "GET", "/gen", { headers = { "Connection: close" } })
            if st ~= 200 or body ~= gen then
                return false
            end
        end
        return true
    end

    local function reload_to(gen)
        mg:write_routes(routes(gen))
        mg:reload(0.3)
        assert.truthy(helpers.wait_until(function() return serves(gen) end, 5),
            "generation " .. gen .. " never served")
        current = gen
    end

    local function says(c, msg, gen)
        local m, err, cf = c:echo(msg)
        assert(m, "no echo: " .. tostring(err) .. (cf and (" close " .. tostring(cf.code)) or ""))
        assert.equal(gen .. ":" .. msg, m.data)
    end

    it("keeps a handler socket working on its own generation across reloads", function()
        local old = ws.connect(mg.port, "/ws/gen")
        says(old, "a", current)
        local first = current
        reload_to("v2")
        says(old, "b", first)
        reload_to("v3")
        says(old, "c", first)
        local new = ws.connect(mg.port, "/ws/gen")
        says(new, "d", "v3")
        assert.equal(1000, old:finish())
        assert.equal(1000, new:finish())
    end)

    it("closes the sockets of an on_reload = \"drain\" route with 1012, and only those", function()
        local drained = ws.connect(mg.port, "/ws/drain")
        local kept = ws.connect(mg.port, "/ws/gen")
        local before = current
        says(drained, "x", before)
        says(kept, "y", before)
        reload_to(current == "v4" and "v5" or "v4")
        local code, info = drained:expect_close(3)
        drained:close()
        assert.equal(1012, code, "drain close: " .. tostring(info.err))
        assert.is_true(info.eof, "TCP left open after the drain close")
        says(kept, "z", before)
        -- a new socket on the drained route serves the new generation
        local again = ws.connect(mg.port, "/ws/drain")
        says(again, "w", current)
        again:close()
        kept:close()
    end)

    it("changes nothing when a reload is refused", function()
        local drained = ws.connect(mg.port, "/ws/drain")
        local kept = ws.connect(mg.port, "/ws/gen")
        says(drained, "1", current)
        mg:write_routes("return { { path = '/broken', handler = function( } }\n")
        mg:reload(0.5)
        assert.truthy(serves(current), "a refused reload changed the table")
        -- the drain route's socket was not drained: no reload happened
        says(drained, "2", current)
        says(kept, "3", current)
        local f = drained:read_frame(0.5)
        assert.is_nil(f)
        drained:close()
        kept:close()
        mg:write_routes(routes(current))
    end)

    it("keeps relay and tunnel sockets through a reload", function()
        local relay = ws.connect(mg.port, "/relay/echo")
        local tun = ws.connect(mg.port, "/tun/echo")
        says(relay, "r1", current)
        assert.equal("t1", assert(tun:echo("t1")).data)
        local before = current
        reload_to(current == "v6" and "v7" or "v6")
        says(relay, "r2", before)
        assert.equal("t2", assert(tun:echo("t2")).data)
        assert.equal(1000, relay:finish())
        assert.equal(1000, tun:finish())
    end)

    it("keeps heartbeats going on a socket opened before the reload", function()
        local c = ws.connect(mg.port, "/ws/hb")
        reload_to(current == "v8" and "v9" or "v8")
        local n, t0 = 0, socket.gettime()
        while socket.gettime() - t0 < 1.2 do
            local m = c:read_message(1.2 - (socket.gettime() - t0))
            if not m then
                break
            end
            if ws.is_heartbeat(m.data) then
                n = n + 1
            end
        end
        assert.truthy(n >= 2, n .. " heartbeats in 1.2 s after the reload")
        c:close()
    end)
end)
