-- Access hooks on every kind of route (upstream proxy, Lua handler,
-- WebSocket), req:set_header() to the upstream, req.ctx shared with the
-- handler, and extra servers (listeners with their own route table).
local helpers = require "spec.helpers"
local json = helpers.json

local CONF = [[
return {
  listen = "127.0.0.1:$PORT", workers = $WORKERS,
  servers = { side = { listen = "127.0.0.1:$SIDE", routes = "scripts/side.lua" } },
  upstreams = { up = { servers = { "$UPSTREAM" } }, side = { servers = { "http://127.0.0.1:$SIDE" } } },
}
]]

local SIDE = [[
return {
  { prefix = "/", handler = function(req)
      return 200, { server = "side", path = req.path, user = req.headers["x-user"] }
  end },
}
]]

local ROUTES = [[
local moongate = require "moongate"
local function auth(req)
  local tok = req.headers.authorization or ("Bearer " .. (req.query.token or ""))
  if tok ~= "Bearer good" then
    return 401, { error = "unauthorized" }, { ["WWW-Authenticate"] = "Bearer" }
  end
  moongate.sleep(0.01) -- hooks may yield
  req:set_header("X-User", "alice")
  req.ctx.user = "alice"
end
local function second(req)
  if req.headers["x-block"] then return 403, { error = "blocked" } end
end
return {
  { prefix = "/p", upstream = "up", access = { auth, second } },
  { prefix = "/s", upstream = "side", access = auth },
  { path = "/h", access = auth, handler = function(req) return 200, { user = req.ctx.user } end },
  { path = "/ws", websocket = { mode = "handler" }, access = auth,
    handler = function(ws, req) ws:send("hi " .. tostring(req.ctx.user)); ws:close() end },
  { path = "/boom", upstream = "up", access = function() error("hook failed") end },
  { prefix = "/headers", upstream = "up", access = function(req)
      req:set_response_header("Server", "edge")
      req:set_response_header("X-Edge", 1)
      req:set_response_header("X-Gone", "x")
      req:set_response_header("X-Gone", nil)
  end },
  { path = "/rh", access = { function(req) req:set_response_header("X-Edge", "h") end,
                             function(req) if req.query.deny then return 403, { error = "no" } end end },
    handler = function() return 200, "ok", { ["X-Own"] = "1" } end },
  { path = "/rhf", access = function(req)
      req:set_response_header("X-Edge", "f")
      req:set_header("X-Up", "1")
      req:set_header("x-up", "2") -- any case: replaces
    end,
    header_filter = function(res) res.headers["x-seen"] = res.headers["x-edge"] end,
    handler = function() return 200, "ok" end },
  { prefix = "/echo-up", upstream = "up", access = function(req)
      req:set_header("X-Up", "1")
      req:set_header("x-up", "2")
  end },
  { path = "/items/{item}", access = function(req)
      -- req.headers is left unread: the timer below finds it gone
      req.ctx.seen = { item = req.params.item, id = req.id, v = req.http_version,
                       addr = req.remote_addr }
    end,
    handler = function(req)
      moongate.timer(0.05, function()
        local ok, err = pcall(function() return req.headers end)
        moongate.log("warn", "LATE", tostring(ok), tostring(err))
      end)
      return 200, { seen = req.ctx.seen, id = req.id }
  end },
  { prefix = "/strip", upstream = "up", access = function(req)
      if req.headers.authorization ~= "Bearer good" then return 401 end
      req:set_header("Authorization", nil) -- the credential stays at the edge
  end },
}
]]

describe("access hooks and servers", function()
    local up, mg, side

    lazy_setup(function()
        up = helpers.start_upstream()
        side = helpers.free_port()
        mg = helpers.start_moongate({ name = "access", upstream = up, conf = CONF, routes = ROUTES,
            scripts = { ["side.lua"] = SIDE }, vars = { SIDE = side }, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("refuses a proxied request before it reaches the upstream", function()
        helpers.upstream_reset(up)
        local st, h, body = helpers.http(mg.port, "GET", "/p/x")
        assert.equal(401, st)
        assert.equal("unauthorized", json.decode(body).error)
        assert.equal("Bearer", h["www-authenticate"])
        local st2 = helpers.http(mg.port, "GET", "/p/x", { headers = { "Authorization: Bearer good", "X-Block: 1" } })
        assert.equal(403, st2)
        helpers.sleep(0.2)
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("passes an allowed request with the hook's headers, body streamed after", function()
        local body = string.rep("b", 300000)
        local st, _, out = helpers.http(mg.port, "POST", "/p/upload",
            { headers = { "Authorization: Bearer good", "X-User: mallory" }, body = body })
        assert.equal(200, st)
        local j = json.decode(out)
        assert.equal(300000, j.body_len)
        assert.equal("alice", j.headers["x-user"]) -- replaced, not appended
    end)

    it("keeps the connection alive across refused and allowed requests", function()
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/p/a", { "Host: x" })))
        local r = assert(helpers.read_response(c))
        assert.equal(401, r.status)
        assert(c:send(helpers.request("GET", "/p/b", { "Host: x", "Authorization: Bearer good" })))
        r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        c:close()
    end)

    it("shares req.ctx with a Lua handler", function()
        local st, _, body = helpers.http(mg.port, "GET", "/h", { headers = { "Authorization: Bearer good" } })
        assert.equal(200, st)
        assert.equal("alice", json.decode(body).user)
        assert.equal(401, (helpers.http(mg.port, "GET", "/h")))
    end)

    it("runs before a WebSocket handshake and shares req.ctx with the handler", function()
        local out = helpers.sh("/usr/bin/python3 -c \"" ..
            "import asyncio, websockets\n" ..
            "async def m():\n" ..
            "    async with websockets.connect('ws://127.0.0.1:" .. mg.port .. "/ws?token=good') as ws:\n" ..
            "        print(await ws.recv())\n" ..
            "    try:\n" ..
            "        async with websockets.connect('ws://127.0.0.1:" .. mg.port .. "/ws') as ws: print('open')\n" ..
            "    except Exception as e: print('refused', e)\n" ..
            "asyncio.run(m())\"")
        assert.matches("hi alice", out)
        assert.matches("refused.-401", out)
    end)

    it("answers 500 when a hook raises, and the worker lives on", function()
        assert.equal(500, (helpers.http(mg.port, "GET", "/boom")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/h", { headers = { "Authorization: Bearer good" } })))
    end)

    it("sets response headers from an access hook over the upstream's", function()
        local st, h = helpers.http(mg.port, "GET", "/headers?set=Server:upstream&set=X-Other:2")
        assert.equal(200, st)
        assert.equal("edge", h["server"]) -- replaced: one Server header
        assert.equal("1", h["x-edge"])
        assert.equal("2", h["x-other"])
        assert.is_nil(h["x-gone"])
    end)

    it("adds response headers from access to handler answers and later refusals", function()
        local st, h = helpers.http(mg.port, "GET", "/rh")
        assert.equal(200, st)
        assert.equal("h", h["x-edge"])
        assert.equal("1", h["x-own"])
        st, h = helpers.http(mg.port, "GET", "/rh?deny=1")
        assert.equal(403, st)
        assert.equal("h", h["x-edge"])
    end)

    it("shows response headers from access to header_filter; set_header replaces in any case", function()
        local st, h = helpers.http(mg.port, "GET", "/rhf")
        assert.equal(200, st)
        assert.equal("f", h["x-edge"])
        assert.equal("f", h["x-seen"])
        local st2, _, body = helpers.http(mg.port, "GET", "/echo-up")
        assert.equal(200, st2)
        assert.equal("2", json.decode(body).headers["x-up"])
    end)

    it("fills req.headers, params, id and http_version on first read, while the request lives", function()
        local st, h, body = helpers.http(mg.port, "GET", "/items/42")
        assert.equal(200, st)
        local j = json.decode(body)
        assert.same({ item = "42", id = h["x-request-id"], v = "1.1", addr = "127.0.0.1" }, j.seen)
        assert.equal(h["x-request-id"], j.id)
        local found
        for _ = 1, 20 do
            found = (mg:log() or ""):match("LATE false ([^\n]*)")
            if found then break end
            helpers.sleep(0.1)
        end
        assert.truthy(found, "the timer did not log")
        assert.matches("req.headers: the request is over", found, 1, true)
    end)

    it("removes a client header with set_header(name, nil)", function()
        local st, _, body = helpers.http(mg.port, "GET", "/strip/x",
            { headers = { "Authorization: Bearer good" } })
        assert.equal(200, st)
        assert.is_nil(json.decode(body).headers.authorization)
    end)

    it("keeps credentials in the query out of the access log", function()
        helpers.http(mg.port, "GET", "/h?token=good&x=1", {})
        local line
        for _ = 1, 20 do
            line = (mg:log() or ""):match('[^\n]*"path":"/h%?token=[^\n]*')
            if line then break end
            helpers.sleep(0.1)
        end
        assert.truthy(line, "no access log line")
        assert.matches('"path":"/h%?token=%-&x=1"', line)
    end)

    it("serves an extra server's own route table on its listener", function()
        local st, _, body = helpers.http(side, "GET", "/anything")
        assert.equal(200, st)
        assert.equal("side", json.decode(body).server)
        -- the main table is not served there, nor the side table on the main port
        local st2, _, b2 = helpers.http(mg.port, "GET", "/anything")
        assert.equal(404, st2)
        assert.is_nil(json.decode(b2).server)
        -- the main server proxies to it, with the hook's header
        local st3, _, b3 = helpers.http(mg.port, "GET", "/s/q", { headers = { "Authorization: Bearer good" } })
        assert.equal(200, st3)
        assert.equal("alice", json.decode(b3).user)
    end)
end)
