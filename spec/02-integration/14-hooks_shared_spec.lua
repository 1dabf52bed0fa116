-- The core under the plugin system: header_filter and log hooks, WebSocket
-- message hooks in handler mode, shared dictionaries across workers, and
-- moongate.crypto.
local helpers = require "spec.helpers"
local json = helpers.json

local CONF = [[
return {
  listen = "127.0.0.1:$PORT", workers = 2,
  shared_dicts = { counters = 1048576 },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

local ROUTES = [[
local moongate = require "moongate"
local function stamp(req) req.ctx.who = "ctx-ok" end
return {
  { prefix = "/up", upstream = "up", access = stamp,
    header_filter = function(res, ctx)
      res.headers["x-filtered"] = ctx.who
      res.headers["server"] = nil
      res.status = 203
    end,
    log = function(e, ctx) moongate.log("info", "LOGHOOK", e.method, e.path, e.status, ctx.who) end },
  { path = "/lua", handler = function() return 200, "x", { ["X-A"] = "1" } end,
    header_filter = function(res) res.headers["x-b"] = res.headers["x-a"] .. "2" end },
  { path = "/incr", handler = function()
      return 200, { v = moongate.shared.counters:incr("hits", 1), worker = moongate.worker_id }
  end },
  { path = "/take", handler = function()
      local ok, remaining, retry = moongate.shared.counters:take("bucket", 1, 3)
      return ok and 200 or 429, { remaining = remaining, retry_after = retry }
  end },
  { path = "/kv", handler = function()
      local d = moongate.shared.counters
      local r = {}
      r.set = d:set("k", "v", 0.2)
      r.get = d:get("k")
      r.add_exists = select(2, d:add("k", "w"))
      moongate.sleep(0.3)
      r.expired = d:get("k") == nil
      r.add_after = d:add("k", "w")
      r.big = select(2, d:set("big", string.rep("x", 1000)))
      r.none = moongate.shared.nope == nil
      return 200, r
  end },
  { path = "/crypto", handler = function()
      local c = moongate.crypto
      return 200, {
        hmac = c.b64url_encode(c.hmac_sha256("key", "data")),
        sha = c.b64url_encode(c.sha256("abc")),
        rt = c.b64url_decode(c.b64url_encode("\0\1\2hello")) == "\0\1\2hello",
        eq = c.equal("secret", "secret"), ne = c.equal("secret", "secreT"),
        short = c.equal("secret", "sec"),
      }
  end },
  { path = "/ws", websocket = { mode = "handler",
      on_message = function(msg, ctx)
        if msg.data == "drop" then return nil end
        if msg.data == "bye" then return false, 4001, "hook says bye" end
        return msg.direction .. ":" .. msg.data
      end },
    handler = function(ws)
      while true do
        local d = ws:recv()
        if not d then return end
        ws:send(d)
      end
  end },
}
]]

describe("core hooks and shared state", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "hooks", upstream = up, conf = CONF, routes = ROUTES })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("lets header_filter edit a proxied head, with the request's ctx", function()
        local st, h = helpers.http(mg.port, "GET", "/up/x")
        assert.equal(203, st)
        assert.equal("ctx-ok", h["x-filtered"])
        assert.is_nil(h["server"])
    end)

    it("runs log hooks after the response", function()
        helpers.http(mg.port, "GET", "/up/logged")
        local found
        for _ = 1, 20 do
            found = (mg:log() or ""):find("LOGHOOK GET /up/logged 203 ctx-ok", 1, true)
            if found then break end
            helpers.sleep(0.1)
        end
        assert.truthy(found, "no log hook line")
    end)

    it("lets header_filter edit a Lua handler's head", function()
        local st, h = helpers.http(mg.port, "GET", "/lua")
        assert.equal(200, st)
        assert.equal("12", h["x-b"])
    end)

    it("counts across workers in a shared dict", function()
        local workers, last = {}, 0
        for _ = 1, 40 do
            local _, _, b = helpers.http(mg.port, "GET", "/incr")
            local j = json.decode(b)
            assert.equal(last + 1, j.v)
            last = j.v
            workers[j.worker] = true
        end
        assert.truthy(workers[0] and workers[1], "one worker served everything")
    end)

    it("keeps a token bucket across workers", function()
        local codes = {}
        for i = 1, 5 do
            codes[i] = (helpers.http(mg.port, "GET", "/take"))
        end
        assert.same({ 200, 200, 200, 429, 429 }, codes)
        local _, _, b = helpers.http(mg.port, "GET", "/take")
        assert.truthy(json.decode(b).retry_after > 0)
    end)

    it("expires keys, refuses duplicates and oversize values", function()
        local _, _, b = helpers.http(mg.port, "GET", "/kv")
        local j = json.decode(b)
        assert.is_true(j.set)
        assert.equal("v", j.get)
        assert.equal("exists", j.add_exists)
        assert.is_true(j.expired)
        assert.is_true(j.add_after)
        assert.equal("too large", j.big)
        assert.is_true(j.none)
    end)

    it("computes HMAC-SHA256 and SHA-256 like openssl", function()
        local _, _, b = helpers.http(mg.port, "GET", "/crypto")
        local j = json.decode(b)
        local want = helpers.sh("printf data | openssl dgst -sha256 -hmac key -binary"
            .. " | base64 | tr '+/' '-_' | tr -d '=\\n'")
        assert.equal(want, j.hmac)
        assert.equal("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0", j.sha)
        assert.is_true(j.rt)
        assert.is_true(j.eq)
        assert.is_false(j.ne)
        assert.is_false(j.short)
    end)

    it("runs on_message hooks both ways in handler mode", function()
        local out = helpers.sh("/usr/bin/python3 -c \"" ..
            "import asyncio, websockets\n" ..
            "async def m():\n" ..
            "    async with websockets.connect('ws://127.0.0.1:" .. mg.port .. "/ws') as ws:\n" ..
            "        await ws.send('a'); print(await ws.recv())\n" ..
            "        await ws.send('drop'); await ws.send('b'); print(await ws.recv())\n" ..
            "        await ws.send('bye')\n" ..
            "        try:\n" ..
            "            await ws.recv()\n" ..
            "        except websockets.ConnectionClosed as e: print('closed', e.code, e.reason)\n" ..
            "asyncio.run(m())\"")
        assert.matches("server:client:a", out, 1, true)
        assert.matches("server:client:b", out, 1, true)
        assert.matches("closed 4001 hook says bye", out, 1, true)
    end)
end)
