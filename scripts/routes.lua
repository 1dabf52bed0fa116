-- The route table of the seed's gateway (seeds/000: one origin for REST and
-- WebSocket). First match in priority order wins; the default priority is
-- the length of the rule, so longer rules come first. Every /api route runs
-- the auth hook first (scripts/auth.lua). Edit, then `kill -HUP <master
-- pid>`: new requests take the new table, open sockets keep theirs.
-- Reference: docs/configuration.md, docs/websocket.md.
local moongate = require "moongate"
local auth = require "auth"
local execution = require "execution"
local gateway = require "gateway"
local static = require "static"
local config = require "gateway_config"

local methods = moongate.methods
local api = auth.access

return {
  -- /api/execution: served by moongate, never routed to Runtime as such
  { path = "/api/execution/{execution_id}/status", access = api,
    handler = methods{ GET = execution.status } },
  { path = "/api/execution/{execution_id}/stream", access = { api, execution.stream_access },
    websocket = { mode = "handler", heartbeat = { interval = config.stream.heartbeat } },
    handler = execution.stream },
  { path = "/api/execution/{execution_id}/artifacts", access = api,
    handler = methods{ GET = gateway.artifact_list } },
  { path = "/api/execution/{execution_id}/artifacts/{artifact_id}", access = api,
    handler = methods{ GET = gateway.artifact_resolve } },

  -- guide-agent chat (priority 20, above /api/runtime): relayed to
  -- Runtime's agent, the core's heartbeats to the client
  { path = "/api/runtime/agent", priority = 20, upstream = "runtime",
    access = { api, gateway.agent_access },
    websocket = { mode = "relay", upstream_path = config.runtime.agent_path,
                  heartbeat = { interval = config.agent.heartbeat } } },

  -- moongate's own logic, calling Runtime
  { path = "/api/session", access = api, handler = methods{ POST = gateway.session_create } },
  { path = "/api/session/{session_id}", access = api, handler = methods{ GET = gateway.session_get } },
  { path = "/api/session/{session_id}/upgrade", access = api,
    handler = methods{ POST = gateway.session_upgrade } },
  { path = "/api/intent", access = api, handler = methods{ POST = gateway.intent_submit } },
  { path = "/api/intent/pending", access = api, handler = methods{ GET = gateway.intent_pending } },
  { path = "/api/auth/whoami", access = api, handler = methods{ GET = gateway.whoami } },
  { prefix = "/api/auth", access = api, handler = gateway.passthrough },
  { path = "/api/admin/status", access = { api, auth.admin },
    handler = methods{ GET = gateway.admin_status } },
  { prefix = "/api/admin", access = { api, auth.admin }, handler = gateway.passthrough },
  -- REST and WebSocket under /api/ws: to Runtime after the auth hook
  { prefix = "/api/ws", upstream = "runtime", access = api, websocket = { mode = "tunnel" } },

  -- Runtime's own API (other than the agent), proxied in C after the auth hook
  { prefix = "/api/runtime", upstream = "runtime", access = api },
  { prefix = "/api/realms/{tenant_id}", upstream = "runtime", access = api },
  { path = "/api/realms", upstream = "runtime", access = api },

  -- anything else under /api: a JSON 404 naming nothing behind the gateway
  { prefix = "/api", access = api, handler = gateway.not_found },

  -- the demo page (public/), through the same origin
  { path = "/", method = { "GET", "HEAD" }, handler = static.file("index.html") },
  { path = "/app.js", method = { "GET", "HEAD" }, handler = static.file("app.js") },
  { path = "/app.css", method = { "GET", "HEAD" }, handler = static.file("app.css") },
}
