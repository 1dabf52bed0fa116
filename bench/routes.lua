-- Routes for ../shared/bench: the HTTP proxy path, the WebSocket tunnel and
-- relay to the harness's ws_echo, and a handler-mode echo for idle tests.
return {
  { prefix = "/api", upstream = "runtime" },
  { prefix = "/ws", upstream = "echo", websocket = { mode = "tunnel" } },
  { prefix = "/relay", upstream = "echo", websocket = {
      mode = "relay", upstream_path = "/ws", deflate = false, heartbeat = { interval = 30 } } },
  { path = "/handler", websocket = { mode = "handler", deflate = false }, handler = function(ws)
      while true do
        local data, kind = ws:recv()
        if not data then return end
        ws:send(data, kind)
      end
  end },
  { path = "/lua", handler = function() return 200, '{"status":"running"}' end },
}
