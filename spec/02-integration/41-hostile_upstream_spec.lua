-- Misbehaving upstreams (issue 10, upstream side): an EOF that arrives with
-- the last data (defect 1), close-delimited bodies (3), large bodies through
-- moongate.http.request (4), the upstream timeouts (6), unsolicited 1xx (9).
-- The upstreams are real processes: spec/fixtures/hostile_upstream.py (modes
-- by path) and spec/fixtures/upstream.py.
local helpers = require "spec.helpers"
local json = helpers.json

local HOSTILE_PY = helpers.root .. "/spec/fixtures/hostile_upstream.py"

-- Starts hostile_upstream.py; returns {port, pid}.
local function start_hostile()
    local dir = helpers.tmpdir("hostile")
    local pidfile, outfile = dir .. "/pid", dir .. "/out.log"
    assert(os.execute(string.format("%s %s --port 0 --pidfile %s > %s 2>&1 < /dev/null &",
        helpers.python, helpers.shq(HOSTILE_PY), helpers.shq(pidfile), helpers.shq(outfile))))
    local port = helpers.wait_until(function()
        local s = helpers.read_file(outfile)
        return s and tonumber(s:match("PORT (%d+)"))
    end, 10)
    local pid = tonumber(helpers.read_file(pidfile) or "")
    assert(port, "hostile_upstream.py did not start: " .. (helpers.read_file(outfile) or ""))
    return { port = port, pid = pid }
end

-- Stops the fixture this file started (by its pid).
local function stop_hostile(h)
    if h and h.pid and helpers.alive(h.pid) then
        os.execute("kill -TERM " .. h.pid .. " 2>/dev/null")
        if not helpers.wait_until(function() return not helpers.alive(h.pid) end, 3) then
            os.execute("kill -KILL " .. h.pid .. " 2>/dev/null")
        end
    end
end

-- The fixtures' body pattern: byte i is (i * 7 + 3) & 0xff, repeating every 64 KiB.
local function pattern(n)
    local t = {}
    for i = 0, 65535 do
        t[#t + 1] = string.char(bit.band(i * 7 + 3, 0xff))
    end
    local block, parts, left = table.concat(t), {}, n
    while left > 0 do
        parts[#parts + 1] = block:sub(1, math.min(left, 65536))
        left = left - 65536
    end
    return table.concat(parts)
end

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    h = { servers = { "http://127.0.0.1:$HPORT" }, response_timeout = 1 },
    hs = { servers = { "http://127.0.0.1:$HPORT" }, response_timeout = 10 },
    big = { servers = { "http://127.0.0.1:$BPORT" }, response_timeout = 1 },
  },
}
]]

local ROUTES = [=[
local moongate = require "moongate"
local H = "http://127.0.0.1:$HPORT"
local function pattern(n)
  local t = {}
  for i = 0, 65535 do t[#t + 1] = string.char(bit.band(i * 7 + 3, 0xff)) end
  local block, parts, left = table.concat(t), {}, n
  while left > 0 do
    parts[#parts + 1] = block:sub(1, math.min(left, 65536))
    left = left - 65536
  end
  return table.concat(parts)
end
local P300K = pattern(300000)
return {
  { prefix = "/h", upstream = "h", strip_prefix = true },
  { prefix = "/hs", upstream = "hs", strip_prefix = true },
  { prefix = "/big", upstream = "big", strip_prefix = true, body_size = 0 },

  { path = "/lua/closedelim", handler = function()
      local resp, err = moongate.http.request{ url = H, path = "/closedelim?n=300000" }
      if not resp then return 200, { err = err } end
      return 200, { status = resp.status, len = #resp.body, same = resp.body == P300K }
  end },

  { path = "/lua/kaclose", handler = function()
      -- streamed and read slowly: the exchange pauses and resumes reading
      local r1, e1 = moongate.http.request{ url = H, path = "/kaclose?n=4194304", stream = true }
      local n = 0
      while r1 do
        local chunk, rerr = r1:read()
        if not chunk then e1 = rerr; break end
        n = n + #chunk
        moongate.sleep(0.002)
      end
      local r2, e2 = moongate.http.request{ method = "POST", url = H, path = "/kaclose", body = "x" }
      return 200, { s1 = r1 and r1.status, n1 = n, e1 = e1, s2 = r2 and r2.status, e2 = e2 }
  end },

  { path = "/lua/toobig", handler = function(req)
      local q = req.query and req.query.chunked and "?chunked=1" or ""
      local resp, err = moongate.http.request{ upstream = "big", path = "/bytes/3145728" .. q,
                                              max_body = 1048576 }
      return 200, { got = resp ~= nil, len = resp and #resp.body, err = err }
  end },

  { path = "/lua/fits", handler = function()
      local resp, err = moongate.http.request{ upstream = "big", path = "/bytes/1048576?chunked=1",
                                              max_body = 1048576 }
      return 200, { got = resp ~= nil, len = resp and #resp.body, err = err }
  end },

  -- the body straight to the client, chunk by chunk
  { path = "/lua/stream", handler = function(req, res)
      local resp, err = moongate.http.request{ upstream = "big", path = "/bytes/6291456",
                                              stream = true }
      if not resp then return 502, { err = err } end
      res:status(resp.status)
      while true do
        local chunk, rerr = resp:read()
        if not chunk then
          if rerr then error(rerr) end
          break
        end
        res:write(chunk)
      end
  end },

  -- a slow reader: the upstream waits (backpressure), nothing is lost
  { path = "/lua/stream-slow", handler = function()
      local resp, err = moongate.http.request{ upstream = "big", path = "/bytes/4194304?chunked=1",
                                              stream = true }
      if not resp then return 502, { err = err } end
      local n, chunks, max = 0, 0, 0
      while true do
        local chunk, rerr = resp:read()
        if not chunk then
          if rerr then return 502, { err = rerr } end
          break
        end
        n, chunks = n + #chunk, chunks + 1
        if #chunk > max then max = #chunk end
        if chunks % 4 == 0 then moongate.sleep(0.01) end
      end
      return 200, { status = resp.status, len = n, max = max }
  end },

  { path = "/lua/u101", handler = function()
      local resp, err = moongate.http.request{ url = H, path = "/u101", timeout = 5 }
      return 200, { got = resp ~= nil, status = resp and resp.status, err = err }
  end },
}
]=]

-- A raw request on a fresh connection; returns the parsed response (or nil,
-- err) and the seconds it took.
local function raw_response(port, req, timeout)
    local c = assert(helpers.connect(port, timeout))
    local t0 = helpers.now()
    assert(c:send(req))
    local res, err = helpers.read_response(c, { timeout = timeout })
    local took = helpers.now() - t0
    c:close()
    return res, err, took
end

describe("hostile upstream", function()
    local hostile, up, mg

    lazy_setup(function()
        hostile = start_hostile()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "hostile-up", conf = CONF, routes = ROUTES,
            vars = { HPORT = hostile.port, BPORT = up.port } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        stop_hostile(hostile)
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    -- defect 1 --------------------------------------------------------------

    -- Before the fix reads were edge-triggered, but libevent drops EPOLLET
    -- from the read registration when the write event goes, so the upstream
    -- socket was edge-triggered only once reading had been paused and resumed
    -- (backpressure). These cases do that, read the
    -- body but its last 1000 bytes, and only then let the upstream send
    -- those with its FIN, in one segment, to a worker waiting idle.
    local function held_tail(target)
        local c = assert(helpers.connect(mg.port, 10))
        assert(c:send(target))
        helpers.sleep(0.3) -- a slow client first: moongate pauses the upstream
        c:settimeout(10)
        local head = {}
        while true do
            local l = assert(c:receive("*l"))
            if l == "" then break end
            head[#head + 1] = l
        end
        local part = assert(c:receive(8 * 1048576))
        assert(helpers.http(hostile.port, "GET", "/release") == 200)
        return c, table.concat(head, "\n"), part
    end

    it("defect 1: a close-delimited body ends with the upstream's FIN in the last segment (HTTP/1.0)", function()
        local c, head, part = held_tail("GET /hs/closedelim?n=8389608&tail=1 HTTP/1.0\r\n\r\n")
        local t0 = helpers.now()
        local rest, closed = helpers.read_all(c, 5)
        local took = helpers.now() - t0
        c:close()
        assert.truthy(head:find("^HTTP/1%.[01] 200"), head)
        assert.truthy(closed, "the response did not end in 5 s (response_timeout is 10 s)")
        assert.are.equal(1000, #rest)
        assert.truthy(part .. rest == pattern(8389608), "body differs")
        assert.truthy(took < 5, "took " .. took)
    end)

    it("defect 1: a pooled connection the upstream closed with its last response is not reused", function()
        local c, head, part = held_tail(helpers.request("GET", "/hs/kaclose?n=8389608&tail=1"))
        local rest = c:receive(1000)
        c:close()
        assert.truthy(head:find("^HTTP/1%.1 200"), head)
        assert.truthy(rest and part .. rest == pattern(8389608), "body differs")
        -- not idempotent, with a body: a dead pooled connection would be a 502
        local st2, _, b2 = helpers.http(mg.port, "POST", "/hs/kaclose", { body = "x" })
        assert.are.equal(200, st2, b2)
        assert.are.equal("ok", b2)
    end)

    it("defect 1: moongate.http.request does not reuse a connection the upstream closed", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/kaclose", { timeout = 20 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.are.equal(200, r.s1, body)
        assert.are.equal(4194304, r.n1, body)
        assert.are.equal(200, r.s2, body)
    end)

    -- defect 3 --------------------------------------------------------------

    it("defect 3: a close-delimited body reaches an HTTP/1.1 client complete (last chunk sent)", function()
        local st, h, body, info = helpers.http(mg.port, "GET", "/hs/closedelim?n=300000",
            { timeout = 8 })
        assert.are.equal(0, info.exit, info.err)
        assert.are.equal(200, st)
        assert.are.equal("chunked", h["transfer-encoding"])
        assert.are.equal(300000, #body)
        assert.truthy(body == pattern(300000), "body differs")
    end)

    it("defect 3 (kept working): a close-delimited body reaches an HTTP/1.0 client close-delimited", function()
        local st, h, body, info = helpers.http(mg.port, "GET", "/hs/closedelim?n=300000",
            { timeout = 8, http10 = true })
        assert.are.equal(0, info.exit, info.err)
        assert.are.equal(200, st)
        assert.is_nil(h["transfer-encoding"])
        assert.truthy(body == pattern(300000), "body differs")
    end)

    it("defect 3: moongate.http.request gets the whole close-delimited body", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/closedelim", { timeout = 15 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.is_nil(r.err, body)
        assert.are.equal(200, r.status)
        assert.are.equal(300000, r.len)
        assert.is_true(r.same)
    end)

    -- defect 4 --------------------------------------------------------------

    it("defect 4: a buffered body over max_body fails with its limit (Content-Length)", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/toobig", { timeout = 15 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.is_false(r.got, body)
        assert.are.equal("response body too large (limit 1048576)", r.err)
    end)

    it("defect 4: a buffered body over max_body fails with its limit (chunked)", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/toobig?chunked=1", { timeout = 15 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.is_false(r.got, body)
        assert.are.equal("response body too large (limit 1048576)", r.err)
        -- the worker goes on serving
        assert.are.equal(200, (helpers.http(mg.port, "GET", "/big/status/200")))
    end)

    it("defect 4 (kept working): a body of exactly max_body is returned whole", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/fits", { timeout = 15 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.is_true(r.got, body)
        assert.are.equal(1048576, r.len)
    end)

    it("defect 4: stream = true sends a 6 MiB body through Lua to the client intact", function()
        local _, _, want = helpers.http(up.port, "GET", "/bytes/6291456?sha=1")
        want = json.decode(want).sha256
        local out, rc = helpers.sh("(" .. helpers.curl_cmd(mg.port, "GET", "/lua/stream",
            { timeout = 20 }) .. ") | tail -c 6291456 | sha256sum")
        assert.are.equal(0, rc, out)
        assert.truthy(out:find(want, 1, true), "sha256 differs: " .. out)
    end)

    it("defect 4: a slow streaming reader gets every byte, in bounded chunks", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/stream-slow", { timeout = 20 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.are.equal(200, r.status)
        assert.are.equal(4194304, r.len)
        assert.truthy(r.max <= 512 * 1024, "a chunk of " .. r.max .. " bytes")
    end)

    -- defect 6 --------------------------------------------------------------

    it("defect 6: an upload slower than response_timeout succeeds", function()
        local c = assert(helpers.connect(mg.port, 10))
        local size, piece = 32 * 65536, string.rep("u", 65536)
        assert(c:send("POST /big/upload HTTP/1.1\r\nHost: x\r\nContent-Length: " .. size ..
            "\r\n\r\n"))
        local t0 = helpers.now()
        for _ = 1, 32 do
            local ok = c:send(piece)
            if not ok then break end
            helpers.sleep(0.05)
        end
        local took = helpers.now() - t0
        local res, err = helpers.read_response(c, { timeout = 10 })
        c:close()
        assert.truthy(took > 1.2, "the upload took only " .. took .. " s")
        assert.is_not_nil(res, err)
        assert.are.equal(200, res.status, (res.body or ""):sub(1, 200))
        assert.are.equal(size, json.decode(res.body).body_len)
    end)

    it("defect 6: an upstream that drip-feeds its head gets 504 after response_timeout", function()
        local res, err, took = raw_response(mg.port, helpers.request("GET", "/h/drip?ms=200"), 10)
        assert.is_not_nil(res, err)
        assert.are.equal(504, res.status)
        assert.truthy(took >= 0.8 and took < 4, "took " .. took)
    end)

    -- defect 9 --------------------------------------------------------------

    it("defect 9: an unsolicited 101 is a JSON 502", function()
        local res, err, took = raw_response(mg.port, helpers.request("GET", "/h/u101"), 5)
        assert.is_not_nil(res, err)
        assert.are.equal(502, res.status)
        assert.truthy((res.headers["content-type"] or ""):find("json"))
        assert.truthy(json.decode(res.body).error:find("101"), res.body)
        assert.truthy(took < 4, "took " .. took)
    end)

    it("defect 9: an interim 102 is a 502", function()
        local res, err = raw_response(mg.port, helpers.request("GET", "/h/interim?code=102"), 5)
        assert.is_not_nil(res, err)
        assert.are.equal(502, res.status)
    end)

    it("defect 9 (kept working): 100 and 103 are swallowed, the final response follows", function()
        for _, code in ipairs({ 100, 103 }) do
            local res, err = raw_response(mg.port,
                helpers.request("GET", "/h/interim?code=" .. code), 5)
            assert.is_not_nil(res, err)
            assert.are.equal(200, res.status, code)
            assert.are.equal("final", res.body)
        end
    end)

    it("defect 9: moongate.http.request refuses an unsolicited 101", function()
        local st, _, body = helpers.http(mg.port, "GET", "/lua/u101", { timeout = 10 })
        assert.are.equal(200, st, body)
        local r = json.decode(body)
        assert.is_false(r.got, body)
        assert.are.equal("unexpected 101 from upstream", r.err)
    end)
end)

describe("hostile upstream: body_timeout", function()
    local hostile, mg

    lazy_setup(function()
        hostile = start_hostile()
        mg = helpers.start_moongate({ name = "hostile-bt", routes = [[
return { { prefix = "/s", upstream = "s", strip_prefix = true } }
]], conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    s = { servers = { "http://127.0.0.1:$HPORT" }, response_timeout = 6, body_timeout = 1 },
  },
}
]], vars = { HPORT = hostile.port } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        stop_hostile(hostile)
        helpers.cleanup()
    end)

    it("defect 6: a response body that stalls is cut after body_timeout (the client is closed)", function()
        local c = assert(helpers.connect(mg.port))
        local t0 = helpers.now()
        assert(c:send(helpers.request("GET", "/s/stall")))
        local data, closed = helpers.read_all(c, 8)
        local took = helpers.now() - t0
        c:close()
        assert.truthy(data:find("^HTTP/1%.1 200"), data:sub(1, 60))
        assert.truthy(closed, "still open after 8 s")
        assert.truthy(took >= 0.8 and took < 4, "closed after " .. took .. " s")
        -- one response only: no 504 after the 200's head
        assert.is_nil(data:find("HTTP/1.1 504", 1, true))
    end)
end)
