-- RFC 6455 / RFC 7692 conformance of moongate's WebSocket server side,
-- frame by frame over raw sockets, against a handler-mode echo route.
-- Each protocol violation must fail the connection with the right close
-- code (RFC 6455 section 7.4.1) and the server must then close TCP.
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
last_close = {}
return {
  { path = "/ws/echo", websocket = { mode = "handler", max_message = 100000, deflate = false,
      heartbeat = { interval = 0 } }, handler = echo },
  { path = "/ws/small", websocket = { mode = "handler", max_message = 1024, deflate = false,
      heartbeat = { interval = 0 } }, handler = echo },
  { path = "/ws/deflate", websocket = { mode = "handler", max_message = 100000, deflate = true,
      heartbeat = { interval = 0 } }, handler = echo },
  { path = "/ws/deflate-small", websocket = { mode = "handler", max_message = 1024, deflate = true,
      heartbeat = { interval = 0 } }, handler = echo },
  -- the handler closes first
  { path = "/ws/server-close", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws)
      local data = ws:recv()
      if data then ws:close(4001, "custom") end
  end },
  -- records what ws:recv() returned when the peer closed
  { path = "/ws/recv-close", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws)
      while true do
        local data, err, code, reason = ws:recv()
        if not data then
          last_close = { err = tostring(err), code = code or false, reason = reason or false }
          break
        end
      end
  end },
  { path = "/last-close", handler = function() return 200, last_close end },
  -- the same rules apply where moongate parses frames for a relay
  { path = "/relay/echo", upstream = "wsup", websocket = { mode = "relay", upstream_path = "/echo",
      max_message = 1024, heartbeat = { interval = 0 } } },
}
]=]

local INVALID_CLOSE_CODES = { 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535 }
local VALID_CLOSE_CODES = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999 }

describe("websocket conformance", function()
    local mg, up

    lazy_setup(function()
        up = ws.start_upstream()
        mg = helpers.start_moongate({ name = "ws-conformance", routes = ROUTES,
            conf = ws.conf({ workers = 1, ws_upstream = up }) })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        ws.cleanup()
        helpers.cleanup()
    end)

    local function connect(path, opts)
        return ws.connect(mg.port, path or "/ws/echo", opts)
    end

    -- Runs send(c) on a fresh connection and asserts that the server fails
    -- the connection with close code `code` (or one of a list), closes TCP,
    -- and (when no_echo) echoed no data before.
    local function expect_failure(code, send, opts)
        opts = opts or {}
        local c = connect(opts.path, opts.handshake)
        send(c)
        local got, info = c:expect_close(opts.timeout or 3)
        c:close()
        local want = type(code) == "table" and code or { code }
        local ok = false
        for _, w in ipairs(want) do
            ok = ok or got == w
        end
        assert(ok, string.format("expected close code %s, got %s (%s)", table.concat(want, " or "),
            tostring(got), tostring(info.err)))
        assert.is_true(info.eof, "the server did not close the TCP connection")
        if opts.no_echo then
            for _, f in ipairs(info.frames) do
                assert(f.opcode ~= 1 and f.opcode ~= 2 and f.opcode ~= 0,
                    "a data frame was echoed before the close: " .. f.payload)
            end
        end
        return got, info
    end

    local function echo_ok(c, data, kind)
        local m, err, cf = c:echo(data, kind)
        assert(m, "no echo: " .. tostring(err) .. (cf and (" close " .. tostring(cf.code)) or ""))
        assert.equal(kind or "text", m.kind)
        assert(m.data == data, "echo differs")
        return m
    end

    describe("masking", function()
        it("fails an unmasked text frame with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 1, payload = "unmasked", mask = false })
            end, { no_echo = true })
        end)

        it("fails an unmasked ping with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 9, payload = "p", mask = false })
            end)
        end)

        it("accepts an all-zero mask key", function()
            local c = connect()
            c:send_frame({ opcode = 1, payload = "zero key", mask_key = "\0\0\0\0" })
            local m = assert(c:read_message(3))
            assert.equal("zero key", m.data)
            c:close()
        end)
    end)

    describe("reserved bits without a negotiated extension", function()
        for _, rsv in ipairs({ "rsv1", "rsv2", "rsv3" }) do
            it("fails a text frame with " .. rsv .. " set with 1002", function()
                expect_failure(1002, function(c)
                    c:send_frame({ opcode = 1, payload = "x", [rsv] = true })
                end, { no_echo = true })
            end)
        end

        it("fails a ping with rsv1 set with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 9, payload = "x", rsv1 = true })
            end)
        end)
    end)

    describe("opcodes", function()
        local ops = { 3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF }
        for _, op in ipairs(ops) do
            it(string.format("fails reserved opcode 0x%X with 1002", op), function()
                expect_failure(1002, function(c)
                    c:send_frame({ opcode = op, payload = "x" })
                end, { no_echo = true })
            end)
        end

        it("fails a reserved opcode inside a fragmented message with 1002", function()
            expect_failure(1002, function(c)
                c:text("frag", false)
                c:send_frame({ opcode = 0xB, payload = "" })
                c:cont("ment", true)
            end, { no_echo = true })
        end)
    end)

    describe("control frames", function()
        it("answers a ping with a pong carrying the same payload", function()
            local c = connect()
            c:ping("hello ping")
            local f = assert(c:read_frame(3))
            assert.equal(0xA, f.opcode)
            assert.equal("hello ping", f.payload)
            assert.is_true(f.fin)
            c:close()
        end)

        it("answers an empty ping with an empty pong", function()
            local c = connect()
            c:ping("")
            local f = assert(c:read_frame(3))
            assert.equal(0xA, f.opcode)
            assert.equal("", f.payload)
            c:close()
        end)

        it("answers a 125-byte binary ping with the same 125 bytes", function()
            local c = connect()
            local p = ws.pattern(125)
            c:ping(p)
            local f = assert(c:read_frame(3))
            assert.equal(0xA, f.opcode)
            assert.equal(p, f.payload)
            c:close()
        end)

        it("answers every one of several pings in order", function()
            local c = connect()
            for i = 1, 5 do
                c:ping("p" .. i)
            end
            for i = 1, 5 do
                local f = assert(c:read_frame(3))
                assert.equal(0xA, f.opcode)
                assert.equal("p" .. i, f.payload)
            end
            c:close()
        end)

        it("ignores an unsolicited pong", function()
            local c = connect()
            c:pong("unsolicited")
            echo_ok(c, "still here")
            c:close()
        end)

        it("fails a ping with a 126-byte payload with 1002", function()
            expect_failure(1002, function(c)
                c:ping(("x"):rep(126))
            end)
        end)

        it("fails a pong with a 126-byte payload with 1002", function()
            expect_failure(1002, function(c)
                c:pong(("x"):rep(126))
            end)
        end)

        it("fails a close with a 126-byte payload with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 8, payload = ws.close_payload(1000, ("r"):rep(124)) })
            end)
        end)

        it("fails a fragmented ping (FIN clear) with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 9, payload = "frag", fin = false })
                c:send_frame({ opcode = 0, payload = "ment", fin = true })
            end)
        end)

        it("fails a fragmented pong (FIN clear) with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 0xA, payload = "frag", fin = false })
            end)
        end)

        it("fails a fragmented close (FIN clear) with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 8, payload = ws.close_payload(1000), fin = false })
            end)
        end)
    end)

    describe("fragmentation", function()
        it("reassembles a text message sent in three fragments", function()
            local c = connect()
            c:text("frag", false)
            c:cont("men", false)
            c:cont("ted", true)
            local m = assert(c:read_message(3))
            assert.same({ "text", "fragmented" }, { m.kind, m.data })
            c:close()
        end)

        it("reassembles a binary message sent in 100 fragments", function()
            local c = connect()
            local p = ws.pattern(1000)
            for i = 0, 99 do
                local part = p:sub(i * 10 + 1, i * 10 + 10)
                if i == 0 then
                    c:binary(part, false)
                else
                    c:cont(part, i == 99)
                end
            end
            local m = assert(c:read_message(3))
            assert.equal("binary", m.kind)
            assert(m.data == p, "binary reassembly differs")
            c:close()
        end)

        it("accepts empty fragments", function()
            local c = connect()
            c:text("", false)
            c:cont("", false)
            c:cont("x", false)
            c:cont("", true)
            local m = assert(c:read_message(3))
            assert.equal("x", m.data)
            c:close()
        end)

        it("answers a ping interleaved in a fragmented message and still delivers it", function()
            local c = connect()
            c:text("Hel", false)
            c:ping("mid-message")
            c:cont("lo, ", false)
            c:pong("ignored")
            c:cont("world", true)
            local m = assert(c:read_message(3))
            assert.same({ "text", "Hello, world" }, { m.kind, m.data })
            local pongs = {}
            for _, f in ipairs(c.controls) do
                if f.opcode == 0xA then
                    pongs[#pongs + 1] = f.payload
                end
            end
            if #pongs == 0 then -- the pong may come after the echo
                local f = assert(c:read_frame(2))
                pongs[1] = f.opcode == 0xA and f.payload or ("opcode " .. f.opcode)
            end
            assert.same({ "mid-message" }, pongs)
            c:close()
        end)

        it("answers the ping before the fragmented message is complete", function()
            local c = connect()
            c:text("start", false)
            c:ping("now")
            local f = assert(c:read_frame(3))
            assert.equal(0xA, f.opcode)
            assert.equal("now", f.payload)
            c:cont(" end", true)
            local m = assert(c:read_message(3))
            assert.equal("start end", m.data)
            c:close()
        end)

        it("fails a continuation frame with no message started with 1002", function()
            expect_failure(1002, function(c)
                c:cont("orphan", true)
            end, { no_echo = true })
        end)

        it("fails a non-final continuation with no message started with 1002", function()
            expect_failure(1002, function(c)
                c:cont("orphan", false)
            end, { no_echo = true })
        end)

        it("fails a new text frame while a message is in progress with 1002", function()
            expect_failure(1002, function(c)
                c:text("first", false)
                c:text("second", true)
            end, { no_echo = true })
        end)

        it("fails a new binary frame while a text message is in progress with 1002", function()
            expect_failure(1002, function(c)
                c:text("first", false)
                c:binary("second", true)
            end, { no_echo = true })
        end)
    end)

    describe("UTF-8", function()
        it("echoes valid multi-byte text unchanged", function()
            local c = connect()
            echo_ok(c, "κόσμε – ünïcödé – 😀 – \u{10FFFF}")
            c:close()
        end)

        it("accepts valid multi-byte UTF-8 split across fragments at every byte", function()
            local s = "κόσμε😀"
            for cut = 1, #s - 1 do
                local c = connect()
                c:text(s:sub(1, cut), false)
                c:cont(s:sub(cut + 1), true)
                local m, err, cf = c:read_message(3)
                assert(m, "cut at " .. cut .. ": " .. tostring(err) .. " " .. tostring(cf and cf.code))
                assert.equal(s, m.data)
                c:close()
            end
        end)

        it("accepts a 4-byte character split over three fragments", function()
            local c = connect()
            c:text("\xF0", false)
            c:cont("\x9F\x98", false)
            c:cont("\x80", true)
            local m = assert(c:read_message(3))
            assert.equal("😀", m.data)
            c:close()
        end)

        it("echoes a binary message that is not UTF-8 as binary", function()
            local c = connect()
            echo_ok(c, "\xFF\xFE\xC0\xAF\xED\xA0\x80", "binary")
            c:close()
        end)

        it("fails a text message with invalid UTF-8 with 1007", function()
            expect_failure(1007, function(c)
                c:text("hello\x80world")
            end, { no_echo = true })
        end)

        it("checks UTF-8 after and between long ASCII runs (8-byte steps)", function()
            local c = connect()
            echo_ok(c, ("a"):rep(21) .. "κόσμε" .. ("b"):rep(17) .. "😀" .. ("c"):rep(8), "text")
            c:close()
            for _, at in ipairs({ 8, 15, 16, 17 }) do
                expect_failure(1007, function(c2)
                    c2:text(("x"):rep(at) .. "\x80" .. ("y"):rep(9))
                end, { no_echo = true })
            end
        end)

        it("fails a text message ending in a truncated sequence with 1007", function()
            expect_failure(1007, function(c)
                c:text("abc\xCE\xBA\xE1\xBD")
            end, { no_echo = true })
        end)

        it("fails overlong, surrogate and out-of-range sequences with 1007", function()
            local bads = { "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF8\x88\x80\x80\x80" }
            for _, bad in ipairs(bads) do
                expect_failure(1007, function(c)
                    c:text("a" .. bad .. "b")
                end, { no_echo = true })
            end
        end)

        it("fails an invalid sequence split across fragments with 1007", function()
            expect_failure(1007, function(c)
                c:text("ok \xCE", false)
                c:cont("\x41 not a continuation", true)
            end, { no_echo = true })
        end)

        -- As early as the invalid byte arrives: the first fragment (no FIN)
        -- already holds it, and nothing more is sent.
        local early = {
            { "a byte that is never valid (0xFF)", "abc\xFFdef" },
            { "an overlong lead byte (0xC0)", "abc\xC0\xAF" },
            { "a UTF-16 surrogate (ED A0)", "abc\xED\xA0" },
            { "a code point above U+10FFFF (F4 90)", "abc\xF4\x90" },
        }
        for _, e in ipairs(early) do
            it("fails at once, before the message ends, on " .. e[1], function()
                expect_failure(1007, function(c)
                    c:text(e[2], false)
                end, { no_echo = true, timeout = 2 })
            end)
        end

        it("fails at once when a later non-final fragment breaks a split sequence", function()
            expect_failure(1007, function(c)
                c:text("ok \xE2\x82", false)
                c:cont("\x41", false)
            end, { no_echo = true, timeout = 2 })
        end)
    end)

    describe("close frames", function()
        it("completes the close handshake echoing 1000 and closes TCP", function()
            local c = connect()
            c:send_close(1000, "bye")
            local code, info = c:expect_close(3, { reply = false })
            assert.equal(1000, code)
            assert.is_true(info.eof, "TCP still open after the close handshake")
            c:close()
        end)

        for _, code in ipairs(VALID_CLOSE_CODES) do
            it("echoes the valid close code " .. code, function()
                local c = connect()
                c:send_close(code, "reason " .. code)
                local got, info = c:expect_close(3, { reply = false })
                assert.equal(code, got)
                assert.is_true(info.eof)
                c:close()
            end)
        end

        it("answers an empty close with an empty close or 1000", function()
            local c = connect()
            c:send_close(nil)
            local got, info = c:expect_close(3, { reply = false })
            assert.truthy(info.close, "no close frame: " .. tostring(info.err))
            assert.truthy(got == nil or got == 1000, "close code " .. tostring(got))
            assert.is_true(info.eof)
            c:close()
        end)

        it("accepts a close whose payload is exactly 125 bytes", function()
            local c = connect()
            c:send_close(1000, ("r"):rep(123))
            local got = c:expect_close(3, { reply = false })
            assert.equal(1000, got)
            c:close()
        end)

        it("fails a close with a 1-byte payload with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 8, payload = "\3" })
            end)
        end)

        for _, code in ipairs(INVALID_CLOSE_CODES) do
            it("fails the invalid close code " .. code .. " with 1002", function()
                expect_failure(1002, function(c)
                    c:send_close(code, "")
                end)
            end)
        end

        it("fails a close reason that is not UTF-8 with 1007 (or 1002)", function()
            expect_failure({ 1007, 1002 }, function(c)
                c:send_close(1000, "bad \xFF reason")
            end)
        end)

        it("ignores data frames after the client's close", function()
            local c = connect()
            c:send_close(1000, "")
            c:text("after close")
            local got, info = c:expect_close(3, { reply = false })
            assert.equal(1000, got)
            for _, f in ipairs(info.frames) do
                assert.is_not.equal(1, f.opcode)
            end
            c:close()
        end)

        it("sends the handler's ws:close(code, reason) and waits for the client's close", function()
            local c = connect("/ws/server-close")
            c:text("go")
            local code, info = c:expect_close(3, { reply = false })
            assert.equal(4001, code)
            assert.equal("custom", info.close.reason)
            c:send_close(4001, "")
            assert.is_true(c:wait_eof(2), "TCP not closed after the client answered the close")
            c:close()
        end)

        it("gives the handler's ws:recv() nil, err, code, reason when the client closes", function()
            local c = connect("/ws/recv-close")
            c:send_close(3001, "client says why")
            assert.equal(3001, (c:expect_close(3, { reply = false })))
            c:close()
            local rec = helpers.wait_until(function()
                local st, _, body = helpers.http(mg.port, "GET", "/last-close")
                local t = st == 200 and json.decode(body)
                return t and t.code and t
            end, 3)
            assert.truthy(rec, "the handler never saw the close")
            assert.equal(3001, rec.code)
            assert.equal("client says why", rec.reason)
        end)
    end)

    describe("lengths and limits", function()
        for _, n in ipairs({ 0, 125, 126, 127, 65535, 65536, 99999 }) do
            it("echoes a " .. n .. "-byte message (7-, 16- and 64-bit lengths)", function()
                local c = connect()
                local p = ws.pattern(n)
                c:binary(p)
                local m = assert(c:read_message(5))
                assert.equal("binary", m.kind)
                assert.equal(n, #m.data)
                assert(m.data == p, "payload differs")
                c:close()
            end)
        end

        it("accepts a message of exactly max_message bytes", function()
            local c = connect("/ws/small")
            echo_ok(c, ("m"):rep(1024))
            c:close()
        end)

        it("fails a length not in its shortest form with 1002", function()
            expect_failure(1002, function(c)
                c:send_raw(ws.frame({ opcode = 1, payload = "hello", len_form = 16 }))
            end)
            expect_failure(1002, function(c)
                c:send_raw(ws.frame({ opcode = 2, payload = "hello", len_form = 64 }))
            end)
        end)

        it("fails a 64-bit length with its top bit set with 1002", function()
            expect_failure(1002, function(c)
                c:send_raw(string.char(0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0) .. ws.random_bytes(4))
            end)
        end)

        it("answers the good frames of one read before failing the bad one after them", function()
            local c = connect()
            c:send_raw(ws.frame({ opcode = 1, payload = "ok" }) .. ws.frame({ opcode = 1, payload = "\xFF" }))
            local m = assert(c:read_message(2))
            assert.equal("ok", m.data)
            local code = c:expect_close(2)
            c:close()
            assert.equal(1007, code)
        end)

        it("fails a single frame larger than max_message with 1009", function()
            expect_failure(1009, function(c)
                c:text(("m"):rep(1025))
            end, { path = "/ws/small", no_echo = true })
        end)

        it("fails a fragmented message growing past max_message with 1009", function()
            expect_failure(1009, function(c)
                c:text(("m"):rep(400), false)
                c:cont(("m"):rep(400), false)
                c:cont(("m"):rep(400), true)
            end, { path = "/ws/small", no_echo = true })
        end)

        it("fails a huge frame with 1009 without waiting for (or buffering) all of it", function()
            expect_failure(1009, function(c)
                -- a header for a 1 MiB binary frame, then only 4 KiB of it
                local key = "\1\2\3\4"
                c:send_raw(ws.frame({ opcode = 2, length = 1048576, payload = "", mask_key = key })
                    .. ws.mask_bytes(("x"):rep(4096), key))
            end, { path = "/ws/small", no_echo = true, timeout = 2 })
        end)
    end)

    describe("permessage-deflate (RFC 7692)", function()
        local function pmd_of(res)
            for _, e in ipairs(ws.parse_extensions(res.headers["sec-websocket-extensions"])) do
                if e.name == "permessage-deflate" then
                    return e.params, e
                end
            end
        end

        local function valid_params(params)
            local known = { server_no_context_takeover = true, client_no_context_takeover = true,
                server_max_window_bits = true, client_max_window_bits = true }
            for k, v in pairs(params) do
                assert(known[k], "unknown parameter in the response: " .. k)
                if k:find("window_bits") then
                    local n = tonumber(v)
                    assert(n and n >= 8 and n <= 15, k .. "=" .. tostring(v))
                else
                    assert.is_true(v, k .. " takes no value")
                end
            end
        end

        local function deflate_connect(ext, opts)
            opts = opts or {}
            local c, res = ws.connect(mg.port, opts.path or "/ws/deflate",
                { extensions = ext, inflate_bits = opts.inflate_bits })
            local params = pmd_of(res)
            assert.truthy(params, "permessage-deflate not accepted for: " .. ext)
            valid_params(params)
            return c, params, res
        end

        local function compressed_echo(c, data, kind, fragments)
            c:send_compressed(data, kind, fragments)
            local m, err, cf = c:read_message(3)
            assert(m, "no echo: " .. tostring(err) .. (cf and (" close " .. tostring(cf.code)) or ""))
            assert.equal(kind or "text", m.kind)
            assert(m.data == data, "compressed round trip differs")
            return m
        end

        it("accepts a plain offer and round-trips compressed text and binary", function()
            local c, params = deflate_connect("permessage-deflate")
            assert.is_nil(params.client_max_window_bits,
                "client_max_window_bits in the response but not in the offer")
            compressed_echo(c, ("hello deflate "):rep(40))
            compressed_echo(c, ws.pattern(3000), "binary")
            compressed_echo(c, "")
            assert.equal(1000, c:finish())
        end)

        it("keeps its decompression context between messages (context takeover)", function()
            local c = deflate_connect("permessage-deflate")
            local msg = "the same sentence, over and over: " .. ws.base64(ws.random_bytes(300))
            for _ = 1, 4 do
                compressed_echo(c, msg)
            end
            c:close()
        end)

        it("inflates a compressed message sent in fragments (RSV1 on the first only)", function()
            local c = deflate_connect("permessage-deflate")
            compressed_echo(c, ("fragmented and compressed "):rep(100), "text", 4)
            c:close()
        end)

        it("also takes uncompressed messages on a deflate connection", function()
            local c = deflate_connect("permessage-deflate")
            local m = echo_ok(c, "not compressed")
            assert.equal("not compressed", m.data)
            c:close()
        end)

        it("confirms server_no_context_takeover and resets its compressor each message", function()
            local c, params = deflate_connect("permessage-deflate; server_no_context_takeover")
            assert.is_true(params.server_no_context_takeover)
            -- each server message must inflate on its own: a fresh inflater per message
            c.inflater = ws.inflater(15, false)
            local msg = ("no context takeover "):rep(30)
            for _ = 1, 3 do
                compressed_echo(c, msg)
            end
            c:close()
        end)

        it("accepts client_no_context_takeover (the client resets per message)", function()
            local c, params = deflate_connect("permessage-deflate; client_no_context_takeover")
            c.deflater = ws.deflater(tonumber(params.client_max_window_bits) or 15, false)
            for _ = 1, 3 do
                compressed_echo(c, ("client resets "):rep(30))
            end
            c:close()
        end)

        it("honours server_max_window_bits=10 (a 10-bit inflater decodes the server)", function()
            local c, params = deflate_connect("permessage-deflate; server_max_window_bits=10",
                { inflate_bits = 10 })
            local bits = tonumber(params.server_max_window_bits)
            assert.truthy(bits, "server_max_window_bits missing from the response")
            assert.truthy(bits <= 10, "server_max_window_bits=" .. tostring(bits))
            c.inflater = ws.inflater(bits)
            -- repeats 4000 bytes apart: a 32 KiB window would reference them
            local chunk = ws.base64(ws.random_bytes(3000))
            compressed_echo(c, chunk .. chunk .. chunk)
            compressed_echo(c, chunk)
            c:close()
        end)

        it("takes client_max_window_bits with no value and a client window that small", function()
            local c, params = deflate_connect("permessage-deflate; client_max_window_bits")
            local bits = tonumber(params.client_max_window_bits) or 15
            c.deflater = ws.deflater(math.max(bits, 9))
            local chunk = ws.base64(ws.random_bytes(3000))
            compressed_echo(c, chunk .. chunk)
            c:close()
        end)

        it("takes client_max_window_bits=9 and a 9-bit client window", function()
            local c, params = deflate_connect("permessage-deflate; client_max_window_bits=9")
            local bits = tonumber(params.client_max_window_bits)
            if bits then
                assert.truthy(bits <= 9)
            end
            c.deflater = ws.deflater(9)
            compressed_echo(c, ("nine bits "):rep(200))
            c:close()
        end)

        it("negotiates all four parameters at once", function()
            local c, params = deflate_connect("permessage-deflate; server_no_context_takeover; "
                .. "client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
                { inflate_bits = 12 })
            assert.is_true(params.server_no_context_takeover)
            assert.truthy(tonumber(params.server_max_window_bits) <= 12)
            if params.client_max_window_bits then
                assert.truthy(tonumber(params.client_max_window_bits) <= 12)
            end
            c.deflater = ws.deflater(tonumber(params.client_max_window_bits) or 12, false)
            c.inflater = ws.inflater(12, false)
            for i = 1, 3 do
                compressed_echo(c, ("all four " .. i .. " "):rep(100))
            end
            c:close()
        end)

        it("declines an offer with an unknown parameter (falling back to the next offer)", function()
            local c, res = ws.connect(mg.port, "/ws/deflate",
                { extensions = "permessage-deflate; x_unknown=1, permessage-deflate" })
            local params = pmd_of(res)
            if params then
                assert.is_nil(params.x_unknown)
                valid_params(params)
            end
            echo_ok(c, "still works")
            c:close()
        end)

        it("declines an offer with server_max_window_bits out of range", function()
            local c, res = ws.connect(mg.port, "/ws/deflate",
                { extensions = "permessage-deflate; server_max_window_bits=7" })
            local params = pmd_of(res)
            if params then
                valid_params(params)
                assert.is_not.equal("7", params.server_max_window_bits)
            end
            c:close()
        end)

        it("does not negotiate deflate on a route with deflate = false", function()
            local c, res = ws.connect(mg.port, "/ws/echo", { extensions = "permessage-deflate" })
            assert.is_nil(pmd_of(res))
            c:close()
        end)

        it("fails RSV1 on a continuation frame with 1002", function()
            expect_failure(1002, function(c)
                local payload = c.deflater:compress(("abc"):rep(100))
                c:send_frame({ opcode = 1, payload = payload:sub(1, 5), rsv1 = true, fin = false })
                c:send_frame({ opcode = 0, payload = payload:sub(6), rsv1 = true, fin = true })
            end, { path = "/ws/deflate", handshake = { extensions = "permessage-deflate" }, no_echo = true })
        end)

        it("fails RSV1 on a control frame with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 9, payload = "x", rsv1 = true })
            end, { path = "/ws/deflate", handshake = { extensions = "permessage-deflate" } })
        end)

        it("fails RSV2 even with deflate negotiated with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 1, payload = "x", rsv2 = true })
            end, { path = "/ws/deflate", handshake = { extensions = "permessage-deflate" }, no_echo = true })
        end)

        it("fails RSV1 when deflate was not negotiated with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 1, payload = ws.deflater():compress("hello"), rsv1 = true })
            end, { path = "/ws/deflate", no_echo = true })
        end)

        it("fails compressed text that inflates to invalid UTF-8 with 1007", function()
            expect_failure(1007, function(c)
                c:send_compressed("valid start \xFF\xFE invalid end")
            end, { path = "/ws/deflate", handshake = { extensions = "permessage-deflate" }, no_echo = true })
        end)

        it("fails a compressed payload that is not deflate data (1007 or 1002)", function()
            expect_failure({ 1007, 1002 }, function(c)
                c:send_frame({ opcode = 2, payload = "\255\255\255\255garbage", rsv1 = true })
            end, { path = "/ws/deflate", handshake = { extensions = "permessage-deflate" }, no_echo = true })
        end)

        it("fails a message that inflates past max_message with 1009", function()
            expect_failure(1009, function(c)
                c:send_compressed(("z"):rep(100000))
            end, { path = "/ws/deflate-small", handshake = { extensions = "permessage-deflate" },
                no_echo = true })
        end)
    end)
    describe("in relay mode (client side)", function()
        local R = { path = "/relay/echo" }
        local function on_relay(extra)
            local o = { path = R.path }
            for k, v in pairs(extra or {}) do
                o[k] = v
            end
            return o
        end

        it("relays a fragmented message with a ping interleaved, and answers the ping", function()
            local c = connect(R.path)
            c:text("re", false)
            c:ping("rp")
            c:cont("layed", true)
            local m = assert(c:read_message(3))
            assert.equal("relayed", m.data)
            local pong
            for _, f in ipairs(c.controls) do
                if f.opcode == 0xA then
                    pong = f.payload
                end
            end
            if not pong then
                local f = assert(c:read_frame(2))
                pong = f.opcode == 0xA and f.payload
            end
            assert.equal("rp", pong)
            c:close()
        end)

        it("fails an unmasked frame with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 1, payload = "x", mask = false })
            end, on_relay({ no_echo = true }))
        end)

        it("fails RSV2 with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 1, payload = "x", rsv2 = true })
            end, on_relay({ no_echo = true }))
        end)

        it("fails a reserved opcode with 1002", function()
            expect_failure(1002, function(c)
                c:send_frame({ opcode = 3, payload = "x" })
            end, on_relay({ no_echo = true }))
        end)

        it("fails a 126-byte ping with 1002", function()
            expect_failure(1002, function(c)
                c:ping(("p"):rep(126))
            end, on_relay())
        end)

        it("fails a continuation with no message started with 1002", function()
            expect_failure(1002, function(c)
                c:cont("x", true)
            end, on_relay({ no_echo = true }))
        end)

        it("fails the close code 1005 with 1002", function()
            expect_failure(1002, function(c)
                c:send_close(1005, "")
            end, on_relay())
        end)

        it("fails invalid UTF-8 at once, before the message ends, with 1007", function()
            expect_failure(1007, function(c)
                c:text("abc\xFF", false)
            end, on_relay({ no_echo = true, timeout = 2 }))
        end)

        it("fails a message over max_message with 1009", function()
            expect_failure(1009, function(c)
                c:text(("m"):rep(1025))
            end, on_relay({ no_echo = true }))
        end)

        it("round-trips a compressed message", function()
            local c, res = ws.connect(mg.port, R.path, { extensions = "permessage-deflate" })
            assert.truthy(c.deflater, "permessage-deflate not negotiated on a relay route: "
                .. tostring(res.headers["sec-websocket-extensions"]))
            local msg = ("relay deflate "):rep(50)
            c:send_compressed(msg)
            local m = assert(c:read_message(3))
            assert.equal(msg, m.data)
            c:close()
        end)
    end)
end)
