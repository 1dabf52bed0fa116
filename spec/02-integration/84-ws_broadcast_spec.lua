-- moongate.ws_broadcast(set, data): one message to every handler socket of a
-- set in one C loop (issue 15's fan-out). One worker, so every socket is in
-- the same room: plain sockets get the message as sent, sockets of a route
-- with an on_message hook get it through the hook (rewritten, or dropped and
-- not counted), keys that are not sockets are skipped, sockets that left are
-- not sent to, and the count returned is the sockets that got it.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"

local ROUTES = [=[
local moongate = require "moongate"
local room = { junk = true, [42] = "not a socket" }
local function member(ws)
  room[ws] = true
  ws:send("joined")
  while true do
    local data = ws:recv()
    if not data then break end
    local what = data:match("^all:(.*)$")
    if what then
      local n = moongate.ws_broadcast(room, what)
      ws:send("sent:" .. n)
    end
  end
  room[ws] = nil
end
return {
  { path = "/room", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = member },
  { path = "/hooked", websocket = { mode = "handler", heartbeat = { interval = 0 },
      on_message = function(msg)
        if msg.direction ~= "server" then return true end
        if msg.data == "drop" then return nil end
        return "hooked:" .. msg.data
      end }, handler = member },
}
]=]

describe("moongate.ws_broadcast", function()
    local mg

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "ws-broadcast", routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        ws.cleanup()
        helpers.cleanup()
    end)

    local function next_text(c)
        local m, err = c:read_message(5, { skip_heartbeats = true })
        assert.truthy(m, "no message: " .. tostring(err))
        return m.data
    end

    it("sends to every socket of the set, through hooks, skipping what is not a socket", function()
        local plain, hooked = {}, {}
        for i = 1, 5 do
            plain[i] = assert(ws.handshake(mg.port, "/room"))
            assert.equal("joined", next_text(plain[i]))
        end
        for i = 1, 2 do
            hooked[i] = assert(ws.handshake(mg.port, "/hooked"))
            assert.equal("hooked:joined", next_text(hooked[i]))
        end

        -- the sender gets it too, then the count: 7, the junk keys skipped
        plain[1]:text("all:hi")
        assert.equal("hi", next_text(plain[1]))
        assert.equal("sent:7", next_text(plain[1]))
        for i = 2, 5 do
            assert.equal("hi", next_text(plain[i]))
        end
        for _, c in ipairs(hooked) do
            assert.equal("hooked:hi", next_text(c))
        end

        -- two leave (their handler clears their key when the close is done);
        -- a message the hook drops is not counted for the hooked ones
        plain[4]:finish(1000)
        plain[5]:finish(1000)
        plain[1]:text("all:drop")
        assert.equal("drop", next_text(plain[1]))
        assert.equal("sent:3", next_text(plain[1]))
        plain[1]:text("all:last")
        assert.equal("last", next_text(plain[1]))
        assert.equal("sent:5", next_text(plain[1]))
        for i = 2, 3 do
            assert.equal("drop", next_text(plain[i]))
            assert.equal("last", next_text(plain[i]))
        end
        -- the hooked sockets never saw "drop": their next is the next broadcast
        for _, c in ipairs(hooked) do
            assert.equal("hooked:last", next_text(c))
        end
        for i = 1, 3 do plain[i]:finish(1000) end
        for _, c in ipairs(hooked) do c:finish(1000) end
    end)
end)
