-- The route table of the seed's gateway (seeds/000: one origin for REST and
-- WebSocket). First match in priority order wins; the default priority is
-- the length of the rule, so longer rules come first. Everything under /api
-- is one group: its auth hook (scripts/auth.lua) runs first on every route
-- in it, and a route added there cannot leave it out. Edit, then `kill
-- -HUP <master pid>`: new requests take the new table, open sockets keep
-- theirs. Reference: docs/configuration.md, docs/websocket.md.
local moongate = require "moongate"
local auth = require "auth"
local execution = require "execution"
local gateway = require "gateway"
local static = require "static"
local config = require "gateway_config"

local methods = moongate.methods

return {
  -- the auth hook runs first on every route of the group; rules inside are
  -- written in full and must lie under /api
  { prefix = "/api", access = auth.access, routes = {
    -- /api/execution: served by moongate, never routed to Runtime as such
    { path = "/api/execution/{execution_id}/status", handler = methods{ GET = execution.status } },
    { path = "/api/execution/{execution_id}/stream", access = execution.stream_access,
      websocket = { mode = "handler", heartbeat = { interval = config.stream.heartbeat } },
      handler = execution.stream },
    { path = "/api/execution/{execution_id}/artifacts", handler = methods{ GET = gateway.artifact_list } },
    { path = "/api/execution/{execution_id}/artifacts/{artifact_id}",
      handler = methods{ GET = gateway.artifact_resolve } },

    -- guide-agent chat (priority 20, above /api/runtime): relayed to
    -- Runtime's agent, the core's heartbeats to the client
    { path = "/api/runtime/agent", priority = 20, upstream = "runtime", access = gateway.agent_access,
      websocket = { mode = "relay", upstream_path = config.runtime.agent_path,
                    heartbeat = { interval = config.agent.heartbeat } } },

    -- moongate's own logic, calling Runtime
    { path = "/api/session", handler = methods{ POST = gateway.session_create } },
    { path = "/api/session/{session_id}", handler = methods{ GET = gateway.session_get } },
    { path = "/api/session/{session_id}/upgrade", handler = methods{ POST = gateway.session_upgrade } },
    { path = "/api/intent", handler = methods{ POST = gateway.intent_submit } },
    { path = "/api/intent/pending", handler = methods{ GET = gateway.intent_pending } },
    { path = "/api/auth/whoami", handler = methods{ GET = gateway.whoami } },
    { prefix = "/api/auth", handler = gateway.passthrough },
    { path = "/api/admin/status", access = auth.admin, handler = methods{ GET = gateway.admin_status } },
    { prefix = "/api/admin", access = auth.admin, handler = gateway.passthrough },
    -- REST and WebSocket under /api/ws: to Runtime after the auth hook
    { prefix = "/api/ws", upstream = "runtime", websocket = { mode = "tunnel" } },

    -- Runtime's own API (other than the agent), proxied in C after the auth hook
    { prefix = "/api/runtime", upstream = "runtime" },
    { prefix = "/api/realms/{tenant_id}", upstream = "runtime" },
    { path = "/api/realms", upstream = "runtime" },

    -- anything else under /api (the group's own prefix, as a route): a JSON
    -- 404 naming nothing behind the gateway
    { prefix = "/api", handler = gateway.not_found },
  } },

  -- the demo page (public/), through the same origin
  { path = "/", method = { "GET", "HEAD" }, handler = static.file("index.html") },
  { path = "/app.js", method = { "GET", "HEAD" }, handler = static.file("app.js") },
  { path = "/app.css", method = { "GET", "HEAD" }, handler = static.file("app.css") },
}
