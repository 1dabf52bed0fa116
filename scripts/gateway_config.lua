-- Settings of the seed's gateway scripts (routes.lua, execution.lua,
-- runtime_client.lua, gateway.lua). Plain Lua: edit, then `kill -HUP
-- <master pid>`; the new values apply to new requests and new streams.
-- Durations are in seconds.
return {
  runtime = {
    upstream = "runtime",        -- the conf's upstream (MOONGATE_UPSTREAM_RUNTIME moves it)
    timeout = 10,                -- a Runtime call slower than this answers 504
    agent_path = "/agent",       -- the Runtime's guide-agent WebSocket
  },

  stream = {
    poll_interval = 1,           -- one status poll per execution per worker per interval
    max_backoff = 30,            -- while Runtime fails: interval x 2^n, capped here
    poll_timeout = 5,            -- one poll slower than this counts as a failure (504)
    heartbeat = 30,              -- the seed's {"type":"ping","ts":...} every N seconds
    include_artifacts = true,    -- what the poller asks Runtime for
    include_visuals = false,
    terminal = { "completed", "failed", "cancelled", "canceled" },
  },

  agent = {
    heartbeat = 30,              -- pings to the chat client (the core's heartbeats)
  },
}
