-- Lua handlers: the req/res API, streaming both ways, the moongate module
-- (sleep, timers, the non-blocking HTTP client), and Lua errors.
local helpers = require "spec.helpers"
local json = helpers.json

local ROUTES = [=[
local moongate = require "moongate"
local json = moongate.json

local fired = "no"

return {
  { path = "/req/{id}", handler = function(req)
      return 200, {
        method = req.method, path = req.path, query_string = req.query_string,
        query = req.query, params = req.params, headers = req.headers,
        id = req.id, remote_addr = req.remote_addr, http_version = req.http_version,
      }
  end },

  { path = "/body", method = "POST", handler = function(req)
      local b = req:body()
      return 200, { len = #b, body = b }
  end },

  { path = "/read", body_size = 0, handler = function(req)
      local n, chunks, sum = 0, 0, 0
      while true do
        local c = req:read()
        if not c then break end
        chunks = chunks + 1
        -- sample every 4093rd byte of the whole body, wherever chunks split it
        local first = (4093 - n % 4093) % 4093 + 1
        for i = first, #c, 4093 do sum = (sum + c:byte(i) * (n + i)) % 1000000007 end
        n = n + #c
      end
      return 200, { len = n, chunks = chunks, sum = sum }
  end },

  { path = "/limited", body_size = 100, handler = function(req)
      local b = req:body()
      return 200, { len = #b }
  end },

  { path = "/stream", handler = function(req, res)
      res:status(201)
      res:header("X-Stream", "yes")
      res:write("first\n")
      moongate.sleep(1)
      res:write("second\n")
      res:write("third\n")
  end },

  { path = "/tuple", handler = function()
      return 202, "plain text", { ["X-Custom"] = "v1", ["Content-Type"] = "text/plain" }
  end },

  { path = "/json", handler = function()
      return 200, { a = 1, list = { 1, 2, 3 }, nested = { k = "v" } }
  end },

  { path = "/nobody", handler = function() return 204 end },

  { path = "/sleep", handler = function()
      moongate.sleep(0.5)
      return 200, "slept"
  end },

  { path = "/call", handler = function(req)
      local resp, err = moongate.http.request{
        method = "POST", upstream = "up", path = "/echo/x",
        query = { a = "1", b = "two words" },
        headers = { ["X-From"] = "lua" },
        body = { k = "v" },
      }
      if not resp then return 502, { err = err } end
      return 200, { status = resp.status, ctype = resp.headers["content-type"],
                    up = json.decode(resp.body) }
  end },

  { path = "/call-url", handler = function()
      local resp, err = moongate.http.request{ url = "$UPSTREAM", path = "/status/201" }
      if not resp then return 502, { err = err } end
      return 200, { status = resp.status }
  end },

  { path = "/call-slow", handler = function()
      local resp, err = moongate.http.request{ upstream = "up", path = "/delay/500" }
      if not resp then return 502, { err = err } end
      return 200, { status = resp.status }
  end },

  { path = "/call-dead", handler = function()
      local resp, err = moongate.http.request{ url = "http://127.0.0.1:$DEAD", path = "/" }
      return 200, { got = resp ~= nil, err = err and tostring(err) or nil }
  end },

  { path = "/call-timeout", handler = function()
      local t0 = moongate.now()
      local resp, err = moongate.http.request{ upstream = "up", path = "/delay/3000", timeout = 0.5 }
      return 200, { got = resp ~= nil, err = err and tostring(err) or nil,
                    took = moongate.now() - t0 }
  end },

  { path = "/boom", handler = function()
      local t = nil
      error("boom-marker-7781")
  end },

  { path = "/boom-after-yield", handler = function()
      moongate.sleep(0.05)
      local x = nil
      return x.field
  end },

  { path = "/unencodable", handler = function()
      return 200, { f = function() end }
  end },

  { path = "/timer", handler = function(req)
      fired = "armed"
      moongate.timer(0.2, function(v) fired = v end, req.query.v)
      return 200, { fired = fired }
  end },

  { path = "/timer-check", handler = function()
      return 200, { fired = fired }
  end },

  { path = "/misc", handler = function()
      moongate.log("warn", "log-marker-5531")
      -- docs/configuration.md lists worker_id as a field; accept a function too
      local wid = moongate.worker_id
      if type(wid) == "function" then wid = wid() end
      return 200, { now = moongate.now(), time = moongate.time(), worker_id = wid }
  end },

  { path = "/methods", handler = moongate.methods{
      POST = function() return 201, { via = "POST" } end,
      GET = function(req) return 200, { via = req.method } end,
      DELETE = function() return 204 end,
  } },
}
]=]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

describe("Lua handlers", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "handlers", upstream = up, conf = CONF, routes = ROUTES,
            vars = { DEAD = helpers.free_port() } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function get_json(method, path, opts)
        local st, h, body = helpers.http(mg.port, method, path, opts)
        local ok, j = pcall(json.decode, body)
        return st, ok and j or body, h
    end

    it("sees method, path, query, params, headers, id, remote_addr, version", function()
        local st, j = get_json("GET", "/req/42?a=1&b=x%20y&a=2&flag",
            { headers = { "X-Multi: one", "X-Multi: two", "X-Case: Yes" } })
        assert.equal(200, st)
        assert.equal("GET", j.method)
        assert.equal("/req/42", j.path)
        assert.equal("a=1&b=x%20y&a=2&flag", j.query_string)
        assert.equal("2", j.query.a)
        assert.equal("x y", j.query.b)
        assert.same({ id = "42" }, j.params)
        assert.equal("one, two", j.headers["x-multi"])
        assert.equal("Yes", j.headers["x-case"])
        assert.is_string(j.id)
        assert.truthy(#j.id > 0)
        assert.equal("127.0.0.1", j.remote_addr)
        assert.equal("1.1", j.http_version)

        st, j = get_json("GET", "/req/1", { http10 = true })
        assert.equal(200, st)
        assert.equal("1.0", j.http_version)
    end)

    it("reads the whole body with req:body()", function()
        local st, j = get_json("POST", "/body", { body = "hello\0world" })
        assert.equal(200, st)
        assert.equal(11, j.len)
        assert.equal("hello\0world", j.body)
        st, j = get_json("POST", "/body", { body = string.rep("z", 3000), chunked = true })
        assert.equal(200, st)
        assert.equal(3000, j.len)
    end)

    it("streams the body with req:read()", function()
        local n = 8 * 1024 * 1024
        local file = helpers.tmpdir("read") .. "/body"
        helpers.write_file(file, string.rep("abcdefgh", n / 8))
        finally(function() os.remove(file) end)
        local st, j = get_json("POST", "/read", { body_file = file })
        assert.equal(200, st, j)
        assert.equal(n, j.len)
        assert.truthy(j.chunks > 1, "one chunk for 8 MiB: the body was buffered whole")
        local st2, j2 = get_json("POST", "/read", { body_file = file, chunked = true })
        assert.equal(200, st2)
        assert.equal(n, j2.len)
        assert.equal(j.sum, j2.sum)
    end)

    it("answers 413 when req:body() exceeds the route's limit", function()
        local st = helpers.http(mg.port, "POST", "/limited", { body = string.rep("x", 1000) })
        assert.equal(413, st)
        st = helpers.http(mg.port, "POST", "/limited", { body = string.rep("x", 1000), chunked = true })
        assert.equal(413, st)
        local st2, j = get_json("POST", "/limited", { body = string.rep("x", 100) })
        assert.equal(200, st2)
        assert.equal(100, j.len)
    end)

    it("streams the response with res:write(), chunked, first bytes at once", function()
        local c = helpers.connect(mg.port)
        local t0 = helpers.now()
        c:send(helpers.request("GET", "/stream"))
        c:settimeout(3)
        local line = c:receive("*l")
        assert.equal("HTTP/1.1 201", line:sub(1, 12))
        local head = {}
        repeat
            local l = c:receive("*l")
            head[#head + 1] = l
        until l == "" or not l
        local hs = table.concat(head, "\n"):lower()
        assert.matches("transfer%-encoding: chunked", hs)
        assert.matches("x%-stream: yes", hs)
        local size = c:receive("*l")
        local first = c:receive(tonumber(size, 16))
        assert.equal("first\n", first)
        assert.truthy(helpers.now() - t0 < 0.8, "first chunk came only after the handler slept")
        c:close()

        local st, _, body = helpers.http(mg.port, "GET", "/stream")
        assert.equal(201, st)
        assert.equal("first\nsecond\nthird\n", body)
    end)

    it("returns status, string body and headers", function()
        local st, h, body = helpers.http(mg.port, "GET", "/tuple")
        assert.equal(202, st)
        assert.equal("plain text", body)
        assert.equal("v1", h["x-custom"])
        assert.equal("text/plain", h["content-type"])
    end)

    it("sends a table body as JSON", function()
        local st, j, h = get_json("GET", "/json")
        assert.equal(200, st)
        assert.matches("application/json", h["content-type"])
        assert.same({ a = 1, list = { 1, 2, 3 }, nested = { k = "v" } }, j)
    end)

    it("returns a status without a body", function()
        local st, _, body = helpers.http(mg.port, "GET", "/nobody")
        assert.equal(204, st)
        assert.equal("", body)
    end)

    it("moongate.sleep yields: 10 sleeps of 0.5 s on one worker overlap", function()
        local reqs = {}
        for i = 1, 10 do
            reqs[i] = { "GET", "/sleep" }
        end
        local res, elapsed = helpers.http_parallel(mg.port, reqs)
        for i = 1, 10 do
            assert.equal(200, res[i].status)
            assert.equal("slept", res[i].body)
        end
        assert.truthy(elapsed < 2.5, "10 x sleep(0.5) took " .. elapsed .. " s")
    end)

    it("moongate.http.request calls a named upstream", function()
        local st, j = get_json("GET", "/call")
        assert.equal(200, st, j)
        assert.equal(200, j.status)
        assert.matches("application/json", j.ctype)
        assert.equal("POST", j.up.method)
        assert.equal("/echo/x", j.up.path:match("^[^?]*"))
        local q = j.up.path:match("%?(.*)$") or ""
        assert.matches("a=1", q)
        assert.truthy(q:find("b=two%20words", 1, true) or q:find("b=two+words", 1, true), q)
        assert.equal("lua", j.up.headers["x-from"])
        assert.equal(#json.encode({ k = "v" }), j.up.body_len)
    end)

    it("moongate.http.request calls a URL", function()
        local st, j = get_json("GET", "/call-url")
        assert.equal(200, st, j)
        assert.equal(201, j.status)
    end)

    it("moongate.http.request yields: 10 calls to a 0.5 s upstream overlap", function()
        local reqs = {}
        for i = 1, 10 do
            reqs[i] = { "GET", "/call-slow" }
        end
        local res, elapsed = helpers.http_parallel(mg.port, reqs)
        for i = 1, 10 do
            assert.equal(200, res[i].status, res[i].body)
        end
        assert.truthy(elapsed < 2.5, "10 x 0.5 s upstream calls took " .. elapsed .. " s")
    end)

    it("moongate.http.request returns nil, err for a dead server and on timeout", function()
        local st, j = get_json("GET", "/call-dead")
        assert.equal(200, st, j)
        assert.is_false(j.got)
        assert.is_string(j.err)
        st, j = get_json("GET", "/call-timeout")
        assert.equal(200, st, j)
        assert.is_false(j.got)
        assert.is_string(j.err)
        assert.truthy(j.took < 2, "timeout 0.5 took " .. tostring(j.took))
    end)

    it("turns a Lua error into a JSON 500 and the worker lives on", function()
        local before = mg:workers()
        local st, h, body = helpers.http(mg.port, "GET", "/boom")
        assert.equal(500, st)
        assert.matches("application/json", h["content-type"] or "")
        local j = json.decode(body)
        assert.equal("internal error", j.error)
        assert.is_string(j.request_id)
        assert.truthy(#j.request_id > 0)
        assert.falsy(body:find("boom-marker", 1, true), "the error leaked to the client")

        st, h, body = helpers.http(mg.port, "GET", "/boom-after-yield")
        assert.equal(500, st)
        assert.matches("application/json", h["content-type"] or "")
        assert.equal("internal error", json.decode(body).error)

        assert.truthy(helpers.wait_until(function()
            return mg:log():find("boom-marker-7781", 1, true)
        end, 3), "the error is not in the log")
        assert.matches("traceback", mg:log():lower())
        assert.truthy(mg:log():find(j.request_id, 1, true), "the request id is not in the log")

        assert.equal(200, (helpers.http(mg.port, "GET", "/json")))
        assert.same(before, mg:workers())
    end)

    it("answers 500 when a table body cannot be encoded as JSON", function()
        local st, _, body = helpers.http(mg.port, "GET", "/unencodable")
        assert.equal(500, st, "got " .. st .. " with body '" .. body .. "'")
        assert.equal("internal error", json.decode(body).error)
    end)

    it("runs moongate.timer callbacks later", function()
        local st, j = get_json("GET", "/timer?v=fired-ok")
        assert.equal(200, st)
        assert.equal("armed", j.fired)
        assert.truthy(helpers.wait_until(function()
            local _, k = get_json("GET", "/timer-check")
            return k.fired == "fired-ok"
        end, 3), "the timer did not fire")
    end)

    it("has now, time, worker_id and log", function()
        local st, j = get_json("GET", "/misc")
        assert.equal(200, st)
        assert.truthy(math.abs(j.now - os.time()) < 5)
        assert.truthy(math.abs(j.time - os.time()) < 5)
        assert.equal(math.floor(j.time), j.time)
        assert.is_not_nil(j.worker_id)
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("log-marker-5531", 1, true)
        end, 3), "moongate.log output is not in the log")
    end)

    it("moongate.methods dispatches, and answers another method 405 with JSON and a sorted Allow", function()
        local st, j = get_json("GET", "/methods")
        assert.equal(200, st)
        assert.same({ via = "GET" }, j)
        st, j = get_json("POST", "/methods", { body = "" })
        assert.equal(201, st)
        assert.same({ via = "POST" }, j)
        local h
        st, j, h = get_json("PUT", "/methods", { body = "x" })
        assert.equal(405, st)
        assert.equal("DELETE, GET, POST", h["allow"])
        assert.matches("^application/json", h["content-type"])
        assert.equal("method_not_allowed", j.error)
        assert.equal("PUT is not allowed here", j.message)
        assert.equal("DELETE, GET, POST", j.allow)
        assert.is_string(j.request_id)
        -- HEAD is not served by GET unless listed (moongate.methods as before)
        st, h = helpers.http(mg.port, "HEAD", "/methods")
        assert.equal(405, st)
        assert.equal("DELETE, GET, POST", h["allow"])
    end)
end)
