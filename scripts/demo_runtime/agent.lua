-- The demo Runtime's guide agent: a WebSocket (handler mode) that answers
-- chat messages. The gateway relays /api/runtime/agent here and attaches
-- the connection's tenant and session to the handshake (X-Tenant-Id,
-- X-Session-Id); the agent greets with them.
--
-- In:  {"type":"message","text":"...","id":"c1"} (or a bare text)
--      {"type":"pong"} / {"type":"ping",...} are ignored
-- Out: {"type":"hello","agent":"guide","tenant_id":...,"session_id":...,"text":...}
--      {"type":"typing"} then {"type":"message","role":"agent","text":...,"in_reply_to":"c1"}
local moongate = require "moongate"
local config = require "demo_runtime.config"

local json = moongate.json
local type = type
local lower = string.lower
local find = string.find

local _M = { _VERSION = "0.1.0" }

local ANSWERS = {
  { "help", "Ask me about sessions, intents, executions, artifacts or heartbeats." },
  { "session", "A session is created with POST /api/session; intents belong to a session." },
  { "intent", "Submit one with POST /api/intent {session_id, intent}; it starts an execution." },
  { "execution", "Follow an execution live on WebSocket /api/execution/{id}/stream?tenant_id=..." },
  { "status", "GET /api/execution/{id}/status?tenant_id=... answers with the current status." },
  { "artifact", "A completed execution has an artifact: GET /api/execution/{id}/artifacts." },
  { "heartbeat", "The gateway sends {\"type\":\"ping\",\"ts\":...} every 30 s on open sockets." },
  { "hello", "Hello! I am the demo guide agent." },
}

local function answer(text)
  local t = lower(text)
  for _, a in ipairs(ANSWERS) do
    if find(t, a[1], 1, true) then
      return a[2]
    end
  end
  return "You said: " .. text .. " (try 'help')"
end

function _M.handler(ws, req)
  local tenant = req.headers["x-tenant-id"]
  local session = req.headers["x-session-id"]
  if session == "" then
    session = nil
  end
  ws:send(json.encode({
    type = "hello", agent = "guide", tenant_id = tenant or json.null, session_id = session or json.null,
    text = "Hi! I am the demo guide agent" .. (tenant and (" for tenant " .. tenant) or "")
        .. ". Ask me anything ('help' lists topics).",
  }))
  while true do
    local data = ws:recv()
    if not data then
      break
    end
    local msg = json.decode(data)
    local text, id
    if type(msg) == "table" then
      if msg.type == "message" and type(msg.text) == "string" then
        text, id = msg.text, msg.id
      end
      -- ping/pong and anything else: ignored
    else
      text = data
    end
    if text then
      ws:send('{"type":"typing"}')
      moongate.sleep(config.agent_delay)
      if not ws:send(json.encode({ type = "message", role = "agent", text = answer(text),
                                   in_reply_to = id })) then
        break
      end
    end
  end
end

return moongate.module("demo_runtime.agent", _M)
