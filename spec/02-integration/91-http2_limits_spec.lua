-- HTTP/2 limits, attacks and the graceful stop (http/h2.c), with exact
-- frames from spec/fixtures/h2_client.py (python3-h2, hyperframe) over
-- prior-knowledge h2c: the SETTINGS moongate announces, streams past
-- limits.h2_streams refused, a header list past limits.header_size (431 on
-- its stream), the rapid-reset flood (CVE-2023-44487: GOAWAY
-- ENHANCE_YOUR_CALM), the CONTINUATION flood (CVE-2024-27316: nghttp2 ends
-- it), PING and SETTINGS floods (bounded: the connection is closed), a
-- stream whose window never opens (reset after timeouts.write), a request
-- body that stops (408 after timeouts.body), DATA after END_STREAM; after
-- each, the worker still serves. SIGTERM: GOAWAY, and the open stream
-- finishes within the drain timeout.
local helpers = require "spec.helpers"
local h2 = require "spec.h2_helpers"

local ROUTES = [[
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { prefix = "/up", upstream = "up", strip_prefix = true },
}
]]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  h2c = true,
  timeouts = { idle = 10, write = 2, body = 2, header = 2, drain = 8 },
  limits = { h2_streams = 4, header_size = 4096 },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

-- SETTINGS identifiers (RFC 9113 6.5.2) and error codes (7)
local HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE = "1", "3", "6"
local PROTOCOL_ERROR, STREAM_CLOSED, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 1, 5, 7, 8, 11

describe("HTTP/2 limits", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "h2limits", upstream = up, routes = ROUTES,
            conf = CONF })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if up then helpers.stop(up.pid) end
    end)

    -- the worker still answers, over HTTP/2 and HTTP/1.1
    local function serves()
        assert.equal(200, (h2.h2c(mg.port, "GET", "/hello")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/hello")))
    end

    it("announces its stream limit, HPACK table and header list size", function()
        local r = assert(h2.py(mg.port, "settings"))
        assert.equal(4, r.settings[MAX_CONCURRENT_STREAMS])
        assert.equal(4096, r.settings[HEADER_TABLE_SIZE])
        assert.equal(4096 + 32 * 100, r.settings[MAX_HEADER_LIST_SIZE])
    end)

    it("refuses streams past limits.h2_streams and serves the others", function()
        local r = assert(h2.py(mg.port, "streams", { path = "/up/delay/500", count = 6 }))
        local ok, refused = 0, 0
        for _, s in pairs(r.streams) do
            if s.status == 200 and s.ended then ok = ok + 1 end
            if s.reset == REFUSED_STREAM then refused = refused + 1 end
        end
        assert.equal(4, ok)
        assert.equal(2, refused)
    end)

    it("answers a header list past limits.header_size with 431 on its stream", function()
        local r = assert(h2.py(mg.port, "bigheader", { path = "/hello", size = 5000 }))
        local s = r.streams["1"]
        assert.equal(431, s.status)
        assert.truthy(s.data:find("request header fields too large", 1, true))
        assert.is_false(r.closed)
        serves()
    end)

    it("ends a rapid-reset flood with GOAWAY ENHANCE_YOUR_CALM", function()
        local r = assert(h2.py(mg.port, "rapid-reset", { path = "/up/reset", count = 500 }))
        assert.equal(ENHANCE_YOUR_CALM, r.goaway)
        assert.is_true(r.closed)
        assert.truthy(mg:log():find("stream resets in", 1, true))
        serves()
    end)

    it("ends a CONTINUATION flood (nghttp2 bounds the frames of a header block)", function()
        local r = assert(h2.py(mg.port, "continuation", { path = "/hello", count = 10000 }))
        assert.equal(PROTOCOL_ERROR, r.goaway)
        assert.is_true(r.closed)
        serves()
    end)

    it("closes a connection that floods PINGs or SETTINGS without reading", function()
        for _, mode in ipairs({ "ping-flood", "settings-flood" }) do
            local r = assert(h2.py(mg.port, mode, { count = 200000 }))
            assert.is_true(r.closed, mode)
            assert.is_nil(r.timeout, mode)
        end
        serves()
        -- and the worker did not keep what the flood made (not measured
        -- under ASan: its shadow and quarantine are most of the RSS)
        if not os.getenv("MOONGATE_ASAN") then
            local workers = mg:workers()
            assert.truthy(helpers.rss_kb(workers[1]) < 64 * 1024)
        end
    end)

    it("resets a stream whose window stays shut past timeouts.write", function()
        local r = assert(h2.py(mg.port, "get", { path = "/up/bytes/200000", window = 0 }))
        local s = r.streams["1"]
        assert.equal(200, s.status) -- the head went; no byte of the body could
        assert.equal(0, s.body)
        assert.equal(CANCEL, s.reset)
        assert.is_false(r.closed) -- the connection lives on
        serves()
    end)

    it("answers 408 when a request body stops for timeouts.body", function()
        local r = assert(h2.py(mg.port, "stall-body", { path = "/up/stalled" }))
        local s = r.streams["1"]
        assert.equal(408, s.status)
        assert.truthy(s.ended)
        assert.truthy(s.data:find("request timeout", 1, true))
    end)

    it("closes a connection with no request, or a header block, past timeouts.header", function()
        local r = assert(h2.py(mg.port, "silent", { timeout = 8 }))
        assert.is_true(r.closed)
        assert.equal(0, r.goaway) -- GOAWAY NO_ERROR, then the close
        -- HEADERS without END_HEADERS, then nothing: the HPACK state is stuck
        r = assert(h2.py(mg.port, "continuation", { path = "/hello", count = 0, timeout = 8 }))
        assert.is_true(r.closed)
        assert.is_nil(r.timeout)
        serves()
    end)

    it("ends connections of random frames cleanly and serves on", function()
        local before = mg:workers()
        for seed = 1, 20 do
            local r = assert(h2.py(mg.port, "garbage", { count = 200, size = seed, timeout = 5 }))
            assert.is_true(r.closed, "seed " .. seed)
        end
        serves()
        assert.same(before, mg:workers()) -- the worker never died (and was restarted)
    end)

    it("ends a connection that sends DATA after END_STREAM", function()
        local r = assert(h2.py(mg.port, "data-after-end", { path = "/up/delay/500" }))
        assert.equal(STREAM_CLOSED, r.goaway)
        serves()
    end)
end)

describe("HTTP/2 graceful stop", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "h2stop", upstream = up, routes = ROUTES,
            conf = CONF })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if up then helpers.stop(up.pid) end
    end)

    -- SIGHUP with h2c on or off; waits for the reload's end
    local function reload(h2c)
        local log0 = #mg:log()
        mg:write_conf(helpers.expand(CONF:gsub("h2c = true", "h2c = " .. tostring(h2c)), mg.vars))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():sub(log0 + 1):match("serving on %d+ workers")
        end, 10), mg:log():sub(log0 + 1))
    end

    -- nghttp -v on a slow stream, in the background, once the upstream has it
    local function slow_stream()
        helpers.upstream_reset(up)
        local job = helpers.spawn(string.format("timeout -s KILL 20 nghttp -v "
            .. "http://127.0.0.1:%d/up/delay/1500 2>&1", mg.port))
        assert.truthy(helpers.wait_until(function()
            for _, h in ipairs(helpers.upstream_log(up).heads) do
                if h == "GET /delay/1500" then return true end
            end
        end, 10), "the request never reached the upstream")
        return job
    end

    -- what nghttp saw: GOAWAY NO_ERROR, then the whole answer on the stream it let finish
    local function finished_after_goaway(out)
        local last, code = out:match("recv GOAWAY[^\n]*\n%s*%(last_stream_id=(%d+), error_code=([%u_]+)")
        assert.equal("NO_ERROR", code, out)
        local sid = out:match("recv %(stream_id=(%d+)%) :status: 200")
        assert.equal(last, sid, out)
        assert.truthy(out:find('"path": "/delay/1500"', 1, true), out)
        assert.truthy(out:match("recv DATA frame <[^>]*stream_id=" .. sid .. ">%s*; END_STREAM"), out)
        assert.truthy(out:find("recv GOAWAY", 1, true) < out:find(":status: 200", 1, true))
    end

    it("sends GOAWAY when a reload turns h2c off, and the open stream finishes", function()
        local job = slow_stream()
        reload(false)
        local out, rc = job:wait(25)
        assert.equal(0, rc, out)
        finished_after_goaway(out)
        -- new connections: HTTP/1.1 only now
        assert.are_not.equal(200, (h2.h2c(mg.port, "GET", "/hello")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/hello")))
        reload(true)
        assert.equal(200, (h2.h2c(mg.port, "GET", "/hello")))
    end)

    it("sends GOAWAY on SIGTERM and lets the open stream finish", function()
        -- nghttp goes on reading a stream after GOAWAY (python3-h2 stops)
        local job = slow_stream()
        mg:signal("TERM")
        local out, rc = job:wait(25)
        assert.equal(0, rc, out)
        finished_after_goaway(out)
        assert.equal(0, mg:wait_exit(10))
    end)
end)
