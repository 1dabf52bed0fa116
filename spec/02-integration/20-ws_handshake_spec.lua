-- WebSocket handshake (RFC 6455 section 4.2), over raw sockets: the 101 and
-- its Sec-WebSocket-Accept, tolerant header token matching, 400 for a bad
-- handshake, 426 with Sec-WebSocket-Version: 13 for another version, the
-- upgrade request handed to the handler, frames pipelined with the head.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json

local ROUTES = [=[
local moongate = require "moongate"
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
return {
  { path = "/ws/echo", websocket = { mode = "handler" }, handler = echo },
  -- mode defaults to "handler" when the route has a handler
  { path = "/ws/default", websocket = {}, handler = echo },
  { path = "/ws/info/{id}", websocket = { mode = "handler" }, handler = function(ws, req)
      ws:send(moongate.json.encode({
        id = req.params.id, q = req.query.q, x = req.headers["x-test"],
        method = req.method, path = req.path, protocol = ws.protocol or false,
      }))
      ws:recv()
  end },
  { path = "/plain", handler = function(req) return 200, "plain\n" end },
}
]=]

describe("websocket handshake", function()
    local mg

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "ws-handshake", routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        ws.cleanup()
        helpers.cleanup()
    end)

    local function hs(path, opts)
        local c, res = ws.handshake(mg.port, path, opts)
        assert.truthy(c, "no response: " .. tostring(res))
        return c, res
    end

    -- status of a handshake that must be refused; the connection is dropped
    local function refused(path, opts)
        local c, res = hs(path, opts)
        c:close()
        return res.status, res
    end

    it("answers 101 with the RFC 6455 sample key's accept value", function()
        local c, res = hs("/ws/echo", { key = "dGhlIHNhbXBsZSBub25jZQ==" })
        assert.equal(101, res.status)
        assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])
        assert.equal("websocket", (res.headers["upgrade"] or ""):lower())
        local conn = (res.headers["connection"] or ""):lower()
        assert.truthy(conn:find("upgrade", 1, true), "Connection: " .. conn)
        c:close()
    end)

    it("computes Sec-WebSocket-Accept for a random key and then echoes", function()
        local c, res = hs("/ws/echo")
        assert.equal(101, res.status)
        assert.equal(ws.accept_for(res.key), res.headers["sec-websocket-accept"])
        local m = assert(c:echo("hello"))
        assert.same({ "text", "hello" }, { m.kind, m.data })
        assert.equal(1000, c:finish())
    end)

    it("offers no subprotocol and no extension when none was asked for", function()
        local c, res = hs("/ws/echo")
        assert.equal(101, res.status)
        assert.is_nil(res.headers["sec-websocket-protocol"])
        assert.is_nil(res.headers["sec-websocket-extensions"])
        c:close()
    end)

    it("matches Upgrade and Connection tokens case-insensitively and in lists", function()
        local c, res = hs("/ws/echo", { upgrade = "WebSocket", connection = "keep-alive, Upgrade" })
        assert.equal(101, res.status)
        c:close()
        c, res = hs("/ws/echo", { connection = "upgrade" })
        assert.equal(101, res.status)
        local m = assert(c:echo("ok"))
        assert.equal("ok", m.data)
        c:close()
    end)

    it("defaults the mode to handler for a route with a handler", function()
        local c, res = hs("/ws/default")
        assert.equal(101, res.status)
        local m = assert(c:echo("default-mode"))
        assert.equal("default-mode", m.data)
        c:close()
    end)

    it("sends unmasked frames and nothing before the first message", function()
        local c, res = hs("/ws/echo")
        assert.equal(101, res.status)
        assert.equal("", c.buf)
        c:text("x")
        local f = assert(c:read_frame(3))
        assert.is_false(f.masked)
        assert.is_true(f.fin)
        assert.equal(1, f.opcode)
        assert.equal("x", f.payload)
        c:close()
    end)

    it("serves frames sent in the same write as the handshake", function()
        local c, res = hs("/ws/echo", { extra = ws.frame({ opcode = 1, payload = "early bird" }) })
        assert.equal(101, res.status)
        local m = assert(c:read_message(3))
        assert.equal("early bird", m.data)
        c:close()
    end)

    it("hands the upgrade request to the handler (params, query, headers)", function()
        local c, res = hs("/ws/info/abc?q=42", { headers = { "X-Test: yes" } })
        assert.equal(101, res.status)
        local m = assert(c:read_message(3))
        local info = json.decode(m.data)
        assert.equal("abc", info.id)
        assert.equal("42", info.q)
        assert.equal("yes", info.x)
        assert.equal("GET", info.method)
        assert.equal("/ws/info/abc", info.path)
        assert.equal(false, info.protocol)
        c:close()
    end)

    describe("refuses a bad handshake with 400", function()
        it("when Upgrade is not websocket", function()
            assert.equal(400, (refused("/ws/echo", { upgrade = "h2c" })))
        end)

        it("when Connection lacks the Upgrade token", function()
            assert.equal(400, (refused("/ws/echo", { connection = "keep-alive" })))
        end)

        it("when Sec-WebSocket-Key is missing", function()
            assert.equal(400, (refused("/ws/echo", { key = false })))
        end)

        it("when Sec-WebSocket-Key is not 16 bytes of base64", function()
            assert.equal(400, (refused("/ws/echo", { key = ws.base64(("k"):rep(15)) })))
            assert.equal(400, (refused("/ws/echo", { key = ws.base64(("k"):rep(17)) })))
            assert.equal(400, (refused("/ws/echo", { key = "not base64 at all!!!!!==" })))
        end)

        it("when Sec-WebSocket-Key is sent twice", function()
            assert.equal(400, (refused("/ws/echo", { headers = { "Sec-WebSocket-Key: " .. ws.new_key() } })))
        end)

        it("when the method is not GET", function()
            local st = refused("/ws/echo", { method = "POST", headers = { "Content-Length: 0" } })
            assert.truthy(st == 400 or st == 405, "status " .. tostring(st))
        end)

        it("when the request is HTTP/1.0", function()
            local st = refused("/ws/echo", { http_version = "1.0" })
            assert.equal(400, st)
        end)

        it("when Sec-WebSocket-Version is missing (400 or 426)", function()
            local st = refused("/ws/echo", { version = false })
            assert.truthy(st == 400 or st == 426, "status " .. tostring(st))
        end)

        it("when a plain GET reaches a WebSocket route (400 or 426)", function()
            local st = helpers.http(mg.port, "GET", "/ws/echo")
            assert.truthy(st == 400 or st == 426, "status " .. tostring(st))
        end)
    end)

    it("answers 426 with Sec-WebSocket-Version: 13 for another version", function()
        local st, res = refused("/ws/echo", { version = "8" })
        assert.equal(426, st)
        assert.equal("13", res.headers["sec-websocket-version"])
        st, res = refused("/ws/echo", { version = "14" })
        assert.equal(426, st)
        assert.equal("13", res.headers["sec-websocket-version"])
    end)

    it("answers 404 to an upgrade for a path with no route", function()
        assert.equal(404, (refused("/nowhere")))
    end)

    it("does not upgrade on a route that is not a WebSocket route", function()
        local st = refused("/plain")
        assert.is_not.equal(101, st)
    end)

    it("keeps serving plain HTTP after refused handshakes", function()
        local st, _, body = helpers.http(mg.port, "GET", "/plain")
        assert.equal(200, st)
        assert.equal("plain\n", body)
    end)
end)
