-- moongate.proxy (issue 14, "Proxy from Lua"): a handler or an access hook
-- decides, then hands the request to the C proxy, which streams both bodies
-- in C. Proved against the real upstream fixture: the target, query and
-- headers the script chose; 50 MiB both ways byte for byte, also with body
-- bytes that arrived while the handler waited; a slow reader with the
-- worker's memory bounded; the upstream down (502), too slow (504), an
-- answer of another content type, each as JSON or as the script's on_error;
-- the route's header_filter and log plugins; the access log's upstream
-- fields; and the calls that must be refused (an unknown upstream, a body
-- the script read, bad arguments), as 500 JSON naming the reason.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json

local fmt = string.format
local shq = helpers.shq

local MiB = 1024 * 1024
local BIG = 50 * MiB
local RSS_LIMIT_KB = 64 * 1024
-- ASan quarantines freed memory: RSS says nothing about buffering there
local CHECK_RSS = not os.getenv("MOONGATE_ASAN")

local CONF = [[
return {
  listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = {
    up = { servers = { "$UPSTREAM" } },
    up2 = { servers = { "http://127.0.0.1:$UP2" } },
    down = { servers = { "http://127.0.0.1:$DOWN" }, connect_timeout = 2 },
  },
}
]]

-- a project plugin with a header_filter and a log phase
local PLUGIN = [[
local _M = { name = "lp-mark", VERSION = "1.0.0", PRIORITY = 500 }
local seen = {}
function _M.header_filter(conf, res)
  res.headers["x-lp-mark"] = conf.value .. ":" .. res.status
end
function _M.log(_, entry)
  seen[entry.path] = (seen[entry.path] or 0) + 1
end
function _M.seen(path) return seen[path] or 0 end
return _M
]]
local PLUGIN_SCHEMA = [[
return { fields = { value = { type = "string", default = "mark" } } }
]]

local ROUTES = [[
local moongate = require "moongate"
local mark = { ["lp-mark"] = { value = "m" } }
local resumed = {} -- /late: handlers that woke up from their wait, by ?tag=

local function custom(status, reason, req)
  return status, { error = "custom", status = status, reason = reason, id = req.id },
    { ["X-Err"] = "on_error" }
end

return {
  -- a handler decides, then hands over: its path, query and headers
  { prefix = "/h", plugins = mark, handler = function(req)
      if req.query.answer then return 200, { lua = true } end
      return moongate.proxy{ upstream = "up", path = "/echo" .. req.path, query = { a = "1 2", b = "x" },
        headers = { ["X-Lp"] = "yes", ["X-Num"] = 42, ["X-Drop"] = false } }
  end },
  -- the client's path and query go on as they came
  { prefix = "/keep", handler = function() return moongate.proxy{ upstream = "up" } end },
  -- streaming: /s/<fixture path>
  { prefix = "/s", body_size = 0, handler = function(req)
      return moongate.proxy{ upstream = "up", path = req.path:sub(3) }
  end },
  -- the handler waits before it decides: the body arrives meanwhile
  { prefix = "/late", body_size = 0, handler = function(req)
      moongate.sleep(tonumber(req.query.wait) or 0.3)
      resumed[req.query.tag or ""] = true
      return moongate.proxy{ upstream = "up", path = "/upload", query = false }
  end },
  { path = "/resumed", handler = function(req) return 200, { resumed = resumed[req.query.tag] == true } end },
  -- an access hook of an upstream route: to another upstream
  { prefix = "/acc", upstream = "up", plugins = mark, access = function(req)
      if req.query.to then
        return moongate.proxy{ upstream = "up2", path = "/status/" .. req.query.to, query = false }
      end
  end },
  -- access hooks of a handler route: the first one hands over, the rest
  -- and the handler do not run
  { prefix = "/ah", plugins = mark,
    access = {
      function(req) if req.query.p then return moongate.proxy{ upstream = "up", path = "/echo/ah" } end end,
      function() return 403, { error = "the second hook ran" } end,
    },
    handler = function() return 200, { error = "the handler ran" } end },
  -- failures
  { path = "/down", handler = function() return moongate.proxy{ upstream = "down" } end },
  { path = "/down/custom", handler = function()
      return moongate.proxy{ upstream = "down", on_error = custom }
  end },
  { path = "/down/raises", handler = function()
      return moongate.proxy{ upstream = "down", on_error = function() error("on_error broke") end }
  end },
  { path = "/slow", handler = function()
      return moongate.proxy{ upstream = "up", path = "/delay/3000", timeout = 0.5 }
  end },
  { path = "/slow/custom", handler = function()
      return moongate.proxy{ upstream = "up", path = "/delay/3000", timeout = 0.5, on_error = custom }
  end },
  { path = "/ctype", handler = function(req)
      return moongate.proxy{ upstream = "up", path = "/bytes/100", query = false, content_type = "json",
        on_error = req.query.custom and custom or nil }
  end },
  { path = "/ctype/ok", handler = function()
      return moongate.proxy{ upstream = "up", path = "/echo", content_type = "JSON" }
  end },
  -- calls refused at once
  { path = "/unknown", handler = function() return moongate.proxy{ upstream = "nope" } end },
  { path = "/read", handler = function(req)
      req:body()
      return moongate.proxy{ upstream = "up" }
  end },
  { path = "/read/empty", handler = function(req)
      req:body() -- a GET: nothing was read, nothing is lost
      return moongate.proxy{ upstream = "up", path = "/echo" }
  end },
  { path = "/badpath", handler = function() return moongate.proxy{ upstream = "up", path = "echo" } end },
  { path = "/badheader", handler = function()
      return moongate.proxy{ upstream = "up", headers = { ["X-Bad"] = "a\r\nb" } }
  end },
  -- a coroutine the script made is not the request's: the call raises there
  { path = "/nested", handler = function()
      local ok, err = pcall(coroutine.wrap(function()
        return moongate.proxy{ upstream = "up", headers = { Accept = "application/json" } }
      end))
      return 200, { ok = ok, err = tostring(err) }
  end },
  { path = "/twice", handler = function()
      moongate.proxy{ upstream = "up" }
      return 200, "an answer of its own"
  end },
  -- a WebSocket route: plain HTTP may be handed over, an upgrade may not
  { path = "/wsr", upstream = "up", websocket = { mode = "tunnel" }, access = function()
      return moongate.proxy{ upstream = "up", path = "/echo/wsr" }
  end },
  { path = "/count", handler = function(req)
      return 200, { n = require("moongate.plugins.lp-mark").seen(req.query.path) }
  end },
}
]]

describe("moongate.proxy", function()
    local up, up2, mg, dir

    lazy_setup(function()
        up = helpers.start_upstream()
        up2 = helpers.start_upstream()
        dir = helpers.tmpdir("lua-proxy-files")
        mg = helpers.start_moongate({ name = "lua-proxy", upstream = up, conf = CONF, routes = ROUTES,
            vars = { UP2 = up2.port, DOWN = helpers.free_port() },
            scripts = {
                ["../plugins/lp-mark/handler.lua"] = PLUGIN,
                ["../plugins/lp-mark/schema.lua"] = PLUGIN_SCHEMA,
            } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.stop(up2 and up2.pid)
        if dir then
            os.remove(dir .. "/big")
        end
        helpers.cleanup()
        ws.cleanup()
    end)

    local function get_json(path, opts)
        local st, h, body = helpers.http(mg.port, (opts or {}).method or "GET", path, opts)
        local ok, j = pcall(json.decode, body)
        return st, ok and j or nil, h, body
    end

    local function url(path)
        return shq("http://127.0.0.1:" .. mg.port .. path)
    end

    local function plugin_count(path)
        local _, j = get_json("/count?path=" .. path)
        return j and j.n
    end

    it("sends the path, query and headers the handler chose", function()
        local st, j, h = get_json("/h/x?client=1", { headers = { ["X-Drop"] = "no", ["X-Keep"] = "k",
            ["X-Lp"] = "client's" } })
        assert.equal(200, st)
        assert.equal("/echo/h/x?a=1%202&b=x", j.path)
        assert.equal("yes", j.headers["x-lp"])
        assert.equal("42", j.headers["x-num"])
        assert.is_nil(j.headers["x-drop"])
        assert.equal("k", j.headers["x-keep"])
        assert.equal("127.0.0.1", j.headers["x-forwarded-for"])
        assert.equal(up.port, j.server_port)
        -- the upstream's answer, through the route's header_filter plugin
        assert.equal("moongate-test-upstream", h["server"])
        assert.equal("m:200", h["x-lp-mark"])
        -- the same route answering from Lua still works
        local st2, j2 = get_json("/h/x?answer=1")
        assert.equal(200, st2)
        assert.same({ lua = true }, j2)
    end)

    it("keeps the client's method, target and body when not told otherwise", function()
        local st, j = get_json("/keep/y?z=1&z=2", { method = "PUT", body = "hello" })
        assert.equal(200, st)
        assert.equal("PUT", j.method)
        assert.equal("/keep/y?z=1&z=2", j.path)
        assert.equal(5, j.body_len)
        -- two requests on one keep-alive connection, both handed over
        local out = helpers.sh("curl -sS --max-time 10 " .. url("/keep/a") .. " " .. url("/keep/b"))
        assert.truthy(out:find('"path": "/keep/a"', 1, true), out)
        assert.truthy(out:find('"path": "/keep/b"', 1, true), out)
    end)

    it("answers pipelined requests in order, each handed over", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/keep/p1", { "Host: x" })
            .. helpers.request("POST", "/late/p2?wait=0.1", { "Host: x", "Content-Length: 5" }, "hello")
            .. helpers.request("GET", "/keep/p3", { "Host: x" })))
        local paths = {}
        for i = 1, 3 do
            local res = assert(helpers.read_response(c, { timeout = 5 }))
            assert.equal(200, res.status, "response " .. i)
            local j = json.decode(res.body)
            paths[i] = j.path or ("upload " .. tostring(j.body_len)) -- /upload: {body_len, body_sha256}
        end
        c:close()
        assert.same({ "/keep/p1", "upload 5", "/keep/p3" }, paths)
    end)

    it("answers HEAD with the upstream's head and no body", function()
        local st, h, body = helpers.http(mg.port, "HEAD", "/s/bytes/1000")
        assert.equal(200, st)
        assert.equal("1000", h["content-length"])
        assert.equal("", body)
        assert.equal(200, (get_json("/keep/after-head"))) -- the connection's framing held
    end)

    it("hands plain HTTP on a WebSocket route over, refuses an upgrade with 500 JSON before any 101", function()
        local st, j = get_json("/wsr")
        assert.equal(200, st)
        assert.equal("/echo/wsr", j.path)
        local c, res = ws.handshake(mg.port, "/wsr")
        assert.truthy(c, tostring(res))
        assert.equal(500, res.status)
        assert.truthy(json.decode(res.body).error:find("not for a WebSocket upgrade", 1, true), res.body)
        c:close()
    end)

    it("streams 50 MiB downloads byte for byte (Content-Length and chunked)", function()
        local want = json.decode((select(3, helpers.http(up.port, "GET", "/bytes/" .. BIG .. "?sha=1")))).sha256
        for _, q in ipairs({ "", "?chunked=1" }) do
            local out = helpers.sh("curl -sS --max-time 30 " .. url("/s/bytes/" .. BIG .. q) .. " | sha256sum")
            assert.equal(want, out:match("^(%x+)  %-"), q .. ": " .. out)
        end
    end)

    it("streams 50 MiB uploads byte for byte, also with bytes that came while the handler waited", function()
        local file = dir .. "/big"
        assert.equal(0, select(2, helpers.sh(fmt("head -c %d /dev/urandom > %s", BIG, shq(file)))))
        local sha = helpers.sh("sha256sum " .. shq(file)):match("^(%x+)")
        for _, path in ipairs({ "/s/upload", "/late/x?wait=0.3" }) do
            -- Content-Length
            local out, rc = helpers.sh("curl -sS --max-time 60 -X POST -H 'Expect:' --data-binary @"
                .. shq(file) .. " " .. url(path))
            assert.equal(0, rc, out)
            local j = json.decode(out)
            assert.equal(BIG, j.body_len, path)
            assert.equal(sha, j.body_sha256, path)
            -- chunked
            out, rc = helpers.sh("cat " .. shq(file) .. " | curl -sS --max-time 60 -X POST -H 'Expect:' -T - "
                .. url(path))
            assert.equal(0, rc, out)
            j = json.decode(out)
            assert.equal(BIG, j.body_len, path .. " chunked")
            assert.equal(sha, j.body_sha256, path .. " chunked")
        end
        os.remove(file)
        -- a small body complete before the handler decides
        for _, chunked in ipairs({ false, true }) do
            local st, j = get_json("/late/small?wait=0.2", { method = "POST", body = "0123456789", chunked = chunked })
            assert.equal(200, st)
            assert.equal(10, j.body_len)
            assert.equal("84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882", j.body_sha256)
        end
    end)

    it("keeps the worker's memory bounded for a slow reader (128 MiB at 32 MiB/s)", function()
        local n = 128 * MiB
        local pid = mg:workers()[1]
        local base = helpers.rss_kb(pid) or 0
        local job = helpers.spawn("curl -sS --max-time 30 --limit-rate 32M -o /dev/null "
            .. "-w '%{http_code} %{size_download}' " .. url("/s/bytes/" .. n))
        local max, t0 = 0, helpers.now()
        while not job.done() and helpers.now() - t0 < 40 do
            max = math.max(max, helpers.rss_kb(pid) or 0)
            helpers.sleep(0.05)
        end
        local out, rc = job:wait(5)
        assert.equal(0, rc, out)
        assert.equal("200 " .. n, out:match("%d+ %d+"))
        print(fmt("\n  slow reader through moongate.proxy: %.1f s, worker RSS %d -> max %d KiB",
            helpers.now() - t0, base, max))
        assert.truthy(max > 0, "no worker RSS sampled")
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB,
            "worker RSS reached " .. max .. " KiB: the upstream was not paused")
    end)

    it("hands over from an access hook: to the hook's upstream, the handler and later hooks skipped", function()
        local st, j, h = get_json("/acc/x?to=201")
        assert.equal(201, st)
        assert.equal("/status/201", j.path)
        assert.equal(up2.port, j.server_port)
        assert.equal("m:201", h["x-lp-mark"])
        -- without a decision the route's own upstream serves it
        local st2, j2 = get_json("/acc/x")
        assert.equal(200, st2)
        assert.equal(up.port, j2.server_port)
        -- a handler route: the first hook hands over
        local st3, j3, h3 = get_json("/ah/x?p=1")
        assert.equal(200, st3)
        assert.equal("/echo/ah?p=1", j3.path)
        assert.equal("m:200", h3["x-lp-mark"])
        assert.equal(403, (get_json("/ah/x")))
    end)

    it("runs the route's log plugins after a handed-over request", function()
        local before = plugin_count("/h/logged")
        assert.equal(200, (get_json("/h/logged")))
        assert.equal(201, (get_json("/acc/logged?to=201")))
        assert.truthy(helpers.wait_until(function() return plugin_count("/h/logged") == before + 1 end, 5))
        assert.truthy(helpers.wait_until(function() return plugin_count("/acc/logged") == 1 end, 5))
    end)

    it("shows the upstream's address, status and time in the access log", function()
        assert.equal(200, (get_json("/h/alog")))
        local line = helpers.wait_until(function()
            for l in mg:log():gmatch("[^\n]+") do
                if l:find('"type":"access"', 1, true) and l:find('"path":"/h/alog"', 1, true) then
                    return json.decode(l)
                end
            end
        end, 5)
        assert.truthy(line, "no access line for /h/alog")
        assert.equal("127.0.0.1:" .. up.port, line.upstream_addr)
        assert.equal(200, line.upstream_status)
        assert.is_number(line.upstream_ms)
        assert.equal(200, line.status)
    end)

    it("answers 502 JSON when the upstream is down, 504 JSON when it is too slow", function()
        local st, j, h = get_json("/down")
        assert.equal(502, st)
        assert.matches("application/json", h["content-type"], 1, true)
        assert.is_string(j.error)
        assert.is_string(j.request_id)
        -- the upstream answers after 3 s: a 504 is the 0.5 s timeout's
        local st2, j2, h2 = get_json("/slow")
        assert.equal(504, st2)
        assert.matches("application/json", h2["content-type"], 1, true)
        assert.is_string(j2.request_id)
    end)

    it("answers the upstream's failures with the script's on_error", function()
        local st, j, h = get_json("/down/custom")
        assert.equal(502, st)
        assert.equal("custom", j.error)
        assert.equal(502, j.status)
        assert.is_string(j.reason)
        assert.equal(h["x-request-id"], j.id)
        assert.equal("on_error", h["x-err"])
        assert.equal("application/json", h["content-type"])
        local st2, j2 = get_json("/slow/custom")
        assert.equal(504, st2)
        assert.equal("custom", j2.error)
        -- an on_error that raises: the proxy's own JSON
        local st3, j3 = get_json("/down/raises")
        assert.equal(502, st3)
        assert.is_string(j3.error)
        assert.truthy(helpers.wait_until(function() return mg:log():find("on_error broke", 1, true) end, 5))
    end)

    it("refuses an answer of another content type (content_type)", function()
        local st, j = get_json("/ctype")
        assert.equal(502, st)
        assert.truthy(j.error:find("content type", 1, true), j.error)
        local st2, j2 = get_json("/ctype?custom=1")
        assert.equal(502, st2)
        assert.equal("custom", j2.error)
        assert.truthy(j2.reason:find("content type", 1, true))
        -- application/json contains "JSON" in any case
        assert.equal(200, (get_json("/ctype/ok")))
    end)

    it("refuses what it cannot honour with 500 JSON naming the reason", function()
        local st, j = get_json("/unknown")
        assert.equal(500, st)
        assert.truthy(j.error:find("no upstream named 'nope'", 1, true), j.error)
        assert.is_string(j.request_id)
        helpers.upstream_reset(up)
        local st2, j2 = get_json("/read", { method = "POST", body = "consumed" })
        assert.equal(500, st2)
        assert.truthy(j2.error:find("already read", 1, true), j2.error)
        assert.same({}, helpers.upstream_log(up).heads)
        assert.equal(200, (get_json("/read/empty")))
        local st3, j3 = get_json("/badpath")
        assert.equal(500, st3)
        assert.truthy(j3.error:find("bad path", 1, true), j3.error)
        local st4, j4 = get_json("/badheader")
        assert.equal(500, st4)
        assert.truthy(j4.error:find("bad header X-Bad", 1, true), j4.error)
        local st6, j6 = get_json("/nested")
        assert.equal(200, st6)
        assert.is_false(j6.ok)
        assert.truthy(j6.err:find("moongate.proxy: only inside a handler or timer "
            .. "(not at load time or in a nested coroutine)", 1, true), j6.err)
        -- an answer of the script's own after the call goes out instead, logged
        local st5, _, body5 = helpers.http(mg.port, "GET", "/twice")
        assert.equal(200, st5)
        assert.equal("an answer of its own", body5)
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("then the script answered itself", 1, true)
        end, 5))
    end)

    it("hands nothing over when the client left while the handler waited", function()
        helpers.upstream_reset(up)
        local c = assert(helpers.connect(mg.port))
        c:send("POST /late/gone?wait=0.3&tag=gone HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        c:close()
        assert.truthy(helpers.wait_until(function()
            local _, j = get_json("/resumed?tag=gone")
            return j and j.resumed
        end, 5), "the handler never woke up")
        -- it woke up and decided after the client left: nothing went upstream
        assert.same({}, helpers.upstream_log(up).heads)
        assert.equal(200, (get_json("/keep/after")))
        assert.truthy(helpers.alive(mg:workers()[1]))
    end)
end)
