-- The HTTP/1.1 server: keep-alive, pipelining in order, chunked request
-- bodies, Expect: 100-continue, HEAD, HTTP/1.0 clients.
local helpers = require "spec.helpers"
local json = helpers.json

local ROUTES = [=[
local moongate = require "moongate"
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/pipe/{n}", handler = function(req)
      -- the first request sleeps longest: answers must still come in order
      local n = tonumber(req.params.n)
      moongate.sleep(math.max(0, 0.4 - 0.1 * n))
      return 200, "pipe-" .. n
  end },
  { path = "/len", method = "POST", handler = function(req)
      local b = req:body()
      return 200, { len = #b, body = b }
  end },
  { path = "/json", handler = function() return 200, { ok = true } end },
  { path = "/stream", handler = function(req, res)
      res:write("part1-")
      moongate.sleep(0.1)
      res:write("part2")
  end },
  { prefix = "/up", upstream = "up", strip_prefix = true, body_size = 0 },
}
]=]

describe("HTTP/1.1 server", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "http", upstream = up, routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("keeps a connection alive across requests", function()
        local c = assert(helpers.connect(mg.port))
        for i = 1, 5 do
            assert(c:send(helpers.request("GET", "/hello")))
            local r = assert(helpers.read_response(c))
            assert.equal(200, r.status, "request " .. i)
            assert.equal("hello\n", r.body)
        end
        -- proxy and handler on the same connection
        assert(c:send(helpers.request("GET", "/up/echo?k=1")))
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        assert.equal("/echo?k=1", json.decode(r.body).path)
        assert(c:send(helpers.request("GET", "/json")))
        r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        c:close()
    end)

    it("closes after Connection: close", function()
        local data, closed = helpers.raw(mg.port,
            helpers.request("GET", "/hello", { "Host: x", "Connection: close" }))
        assert.matches("^HTTP/1%.1 200", data)
        assert.truthy(closed)
    end)

    it("answers pipelined requests in order", function()
        local c = assert(helpers.connect(mg.port))
        local reqs = {}
        for n = 1, 4 do
            reqs[#reqs + 1] = helpers.request("GET", "/pipe/" .. n)
        end
        reqs[#reqs + 1] = helpers.request("GET", "/up/echo?pipelined")
        reqs[#reqs + 1] = helpers.request("POST", "/len", { "Host: x", "Content-Length: 3" }, "abc")
        reqs[#reqs + 1] = helpers.request("GET", "/hello", { "Host: x", "Connection: close" })
        assert(c:send(table.concat(reqs)))
        for n = 1, 4 do
            local r = assert(helpers.read_response(c))
            assert.equal(200, r.status)
            assert.equal("pipe-" .. n, r.body)
        end
        local r = assert(helpers.read_response(c))
        assert.equal("/echo?pipelined", json.decode(r.body).path)
        r = assert(helpers.read_response(c))
        assert.equal("abc", json.decode(r.body).body)
        r = assert(helpers.read_response(c))
        assert.equal("hello\n", r.body)
        local rest, closed = helpers.read_all(c, 3)
        assert.equal("", rest)
        assert.truthy(closed)
        c:close()
    end)

    it("keeps order when a slow proxied request is pipelined before fast ones", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/up/delay/300") .. helpers.request("GET", "/hello")
            .. helpers.request("GET", "/up/bytes/70000?chunked=1") .. helpers.request("GET", "/pipe/4")))
        local r = assert(helpers.read_response(c))
        assert.equal("/delay/300", json.decode(r.body).path)
        r = assert(helpers.read_response(c))
        assert.equal("hello\n", r.body)
        r = assert(helpers.read_response(c))
        assert.equal(70000, #r.body)
        r = assert(helpers.read_response(c))
        assert.equal("pipe-4", r.body)
        c:close()
    end)

    it("reads chunked request bodies, with extensions and trailers", function()
        local body = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("POST", "/len", { "Host: x", "Transfer-Encoding: chunked" }, body)))
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        assert.equal("hello world", json.decode(r.body).body)
        -- and the connection is still usable
        assert(c:send(helpers.request("GET", "/hello")))
        r = assert(helpers.read_response(c))
        assert.equal("hello\n", r.body)
        c:close()

        local st, _, b = helpers.http(mg.port, "POST", "/up/upload",
            { body = string.rep("0123456789", 20000), chunked = true })
        assert.equal(200, st)
        assert.equal(200000, json.decode(b).body_len)
    end)

    it("handles Expect: 100-continue", function()
        for _, path in ipairs({ "/len", "/up/upload" }) do
            local c = assert(helpers.connect(mg.port))
            assert(c:send(helpers.request("POST", path,
                { "Host: x", "Content-Length: 5", "Expect: 100-continue" })))
            local r = assert(helpers.read_response(c, { timeout = 2 }))
            assert.equal(100, r.status, path)
            assert(c:send("hello"))
            r = assert(helpers.read_response(c))
            assert.equal(200, r.status, path)
            local j = json.decode(r.body)
            assert.equal(5, j.len or j.body_len)
            c:close()
        end
        local st, _, b = helpers.http(mg.port, "POST", "/up/upload",
            { body = string.rep("x", 2000000), expect100 = true })
        assert.equal(200, st)
        assert.equal(2000000, json.decode(b).body_len)
    end)

    it("answers HEAD with the head only", function()
        for _, path in ipairs({ "/hello", "/json", "/up/bytes/1000" }) do
            local c = assert(helpers.connect(mg.port))
            assert(c:send(helpers.request("HEAD", path) .. helpers.request("GET", "/hello")))
            local r = assert(helpers.read_response(c, { head = true }))
            assert.equal(200, r.status, path)
            if path == "/up/bytes/1000" then
                assert.equal("1000", r.headers["content-length"])
            end
            -- the next response must start right after the head
            r = assert(helpers.read_response(c))
            assert.equal(200, r.status, path)
            assert.equal("hello\n", r.body, path)
            c:close()
        end
    end)

    it("serves HTTP/1.0 clients and closes after the response", function()
        local data, closed = helpers.raw(mg.port, "GET /hello HTTP/1.0\r\n\r\n")
        assert.matches("^HTTP/1%.[01] 200", data)
        assert.matches("\r\n\r\nhello\n$", data)
        assert.truthy(closed)

        -- a streamed (res:write) answer cannot be chunked for HTTP/1.0
        data, closed = helpers.raw(mg.port, "GET /stream HTTP/1.0\r\n\r\n")
        assert.matches("^HTTP/1%.[01] 200", data)
        assert.falsy(data:lower():find("transfer-encoding", 1, true), data)
        assert.matches("\r\n\r\npart1%-part2$", data)
        assert.truthy(closed)

        local st, _, body = helpers.http(mg.port, "GET", "/up/echo", { http10 = true })
        assert.equal(200, st)
        assert.equal("/echo", json.decode(body).path)
    end)

    it("answers an HTTP/1.0 keep-alive client with a length-delimited response", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        assert.equal("hello\n", r.body)
        assert.falsy(r.chunked)
        c:close()
    end)
end)
