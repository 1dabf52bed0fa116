-- ws-message-limit over real WebSockets (python3-websockets client), in
-- handler and relay modes: size limit (close 1009 or drop), rate per
-- socket (close 1008), and direction "both" counting the server's
-- messages too.
local helpers = require "spec.helpers"
local wsh = require "spec.ws_helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  upstreams = { wsup = { servers = { "$WSUP" } } } }
]]

local ROUTES = [[
local function echo(suffix)
  return function(ws)
    while true do
      local d = ws:recv()
      if not d then return end
      ws:send(d .. (suffix or ""))
    end
  end
end
local NOHB = { interval = 0, message = false }
return {
  { path = "/size", websocket = { mode = "handler", heartbeat = NOHB }, handler = echo(),
    plugins = { ["ws-message-limit"] = { max_bytes = 10 } } },
  { path = "/drop", websocket = { mode = "handler", heartbeat = NOHB }, handler = echo(),
    plugins = { ["ws-message-limit"] = { max_bytes = 10, action = "drop" } } },
  { path = "/rate", websocket = { mode = "handler", heartbeat = NOHB }, handler = echo(),
    plugins = { ["ws-message-limit"] = { rate = 0.5, burst = 3 } } },
  { path = "/both", websocket = { mode = "handler", heartbeat = NOHB }, handler = echo(string.rep("!", 10)),
    plugins = { ["ws-message-limit"] = { max_bytes = 12, direction = "both" } } },
  { path = "/relay/echo", upstream = "wsup", websocket = { mode = "relay", heartbeat = NOHB },
    plugins = { ["ws-message-limit"] = { max_bytes = 10, rate = 0.5, burst = 2 } } },
}
]]

describe("ws-message-limit", function()
    local wsup, mg

    lazy_setup(function()
        wsup = wsh.start_upstream()
        mg = helpers.start_moongate({ name = "wsml", conf = CONF, routes = ROUTES,
            vars = { WSUP = "http://127.0.0.1:" .. wsup.port } })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        wsh.stop(wsup and wsup.pid)
        wsh.cleanup()
        helpers.cleanup()
    end)

    -- all messages at once, then wait for the server to close
    local function run(path, sends, recv)
        local list = {}
        for i, s in ipairs(sends) do list[i] = { text = s } end
        return wsh.py_client({ url = "ws://127.0.0.1:" .. mg.port .. path, send = list,
            recv = recv, wait_close = true, timeout = 3, deflate = false })
    end

    local function texts(rep)
        local out = {}
        for i, m in ipairs(rep.messages) do out[i] = m.data end
        return out
    end

    -- One message at a time: send, read the echo, so a close never
    -- overtakes an echo still on its way (raw RFC 6455 client).
    local function echo_then_close(path, sends)
        local c = wsh.connect(mg.port, path)
        local got = {}
        for _, s in ipairs(sends) do
            c:text(s)
            local m, err = c:read_message(2)
            if not m then
                local code, info = c:expect_close(2)
                c:close()
                return got, code, info.close and info.close.reason, err
            end
            got[#got + 1] = m.data
        end
        c:close()
        return got
    end

    it("closes with 1009 on a message above max_bytes", function()
        local got, code, reason = echo_then_close("/size", { "short", string.rep("x", 11), "after" })
        assert.same({ "short" }, got)
        assert.equal(1009, code)
        assert.equal("message too big", reason)
    end)

    it("drops a big message and keeps the socket with action = drop", function()
        local rep = wsh.py_client({ url = "ws://127.0.0.1:" .. mg.port .. "/drop",
            send = { { text = "a" }, { text = string.rep("y", 50) }, { text = "b" } },
            recv = 2, timeout = 3, deflate = false })
        assert.same({ "a", "b" }, texts(rep))
        assert.equal(1000, rep.close_code)
    end)

    it("closes with 1008 beyond the rate, per socket", function()
        local got, code, reason = echo_then_close("/rate", { "1", "2", "3", "4", "5" })
        assert.same({ "1", "2", "3" }, got)
        assert.equal(1008, code)
        assert.equal("rate limit exceeded", reason)
        -- a new socket has its own bucket
        got = echo_then_close("/rate", { "x" })
        assert.same({ "x" }, got)
    end)

    it("counts the handler's own messages with direction = both", function()
        local got, code = echo_then_close("/both", { "ab", "abc" })
        assert.same({ "ab!!!!!!!!!!" }, got) -- 12 bytes pass; 13 close
        assert.equal(1009, code)
    end)

    it("limits a relay's client messages before they reach the upstream", function()
        -- the upstream fixture may take the close before it reads a queued
        -- message: count what it received
        local function last_received()
            local list = wsh.upstream_log(wsup)
            return list[#list] and list[#list].received
        end
        wsh.upstream_reset(wsup)
        local rep = run("/relay/echo", { "hello", string.rep("z", 11) }, 2)
        assert.equal(1009, rep.close_code)
        assert.equal(1, helpers.wait_until(last_received, 2))
        wsh.upstream_reset(wsup)
        rep = run("/relay/echo", { "1", "2", "3" }, 3)
        assert.equal(1008, rep.close_code)
        -- the third never passes (moongate sends the close after the second;
        -- the fixture may stop reading at the close)
        helpers.sleep(0.3)
        local n = last_received()
        assert.truthy(n and n >= 1 and n <= 2, "upstream received " .. tostring(n))
    end)
end)
