-- The embedded demo Runtime's route table (servers.demo_runtime in
-- conf/moongate.lua, 127.0.0.1:9001). It implements docs/runtime-contract.md:
-- the private /v1 API the gateway calls, the guide agent's WebSocket, and a
-- little of Runtime's public API (/api/runtime, /api/realms). No auth here:
-- it listens on loopback behind the gateway.
local app = require "demo_runtime.app"
local agent = require "demo_runtime.agent"

return {
  { path = "/v1/health", method = "GET", handler = app.health },
  { path = "/v1/sessions", method = "POST", handler = app.session_create },
  { path = "/v1/sessions/{session_id}", method = "GET", handler = app.session_get },
  { path = "/v1/sessions/{session_id}/upgrade", method = "POST", handler = app.session_upgrade },
  { path = "/v1/intents", method = "POST", handler = app.intent_submit },
  { path = "/v1/intents/pending", method = "GET", handler = app.intent_pending },
  { path = "/v1/executions/{execution_id}/status", method = "GET", handler = app.execution_status },
  { path = "/v1/executions/{execution_id}/artifacts", method = "GET", handler = app.artifact_list },
  { path = "/v1/artifacts/{artifact_id}", method = "GET", handler = app.artifact_resolve },
  { path = "/v1/auth/introspect", method = "POST", handler = app.introspect },

  { path = "/agent", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = agent.handler },

  { path = "/api/runtime/info", method = "GET", handler = app.info },
  { path = "/api/realms", method = "GET", handler = app.realms },
  { path = "/api/realms/{tenant_id}", method = "GET", handler = app.realm },

  { prefix = "/", handler = app.not_found },
}
