-- Who may call /api: read by scripts/auth.lua. Plain Lua; edit, then
-- `kill -HUP <master pid>` (new requests use the new table at once, open
-- sockets keep the caller they were opened with).
--
-- verifier:
--   "static"   - the `tokens` table below (the demo's choice)
--   "runtime"  - ask the Runtime: POST <introspect.path> {"token": "..."}
--                -> 200 {"active": true, "subject": "...", "tenant_id": "t1" | null}
--                (docs/runtime-contract.md); answers cached `cache_ttl` seconds per worker
--   a function - function(token, req) -> identity table, or nil, "reason" (a 401),
--                or nil, nil, err when it could not tell (an err of scripts/json_api.lua,
--                e.g. api.err(502, "idp_unavailable", "..."), answered as it is)
-- An identity is { subject = "...", tenant_id = "t1" | nil, admin = true | nil }.
-- A token with a tenant_id may only touch that tenant; one without is not
-- bound to a tenant (an operator's token).
--
-- The demo's tokens below work in demo mode only (`make run`: conf/moongate.lua
-- has `demo = true`; MOONGATE_DEMO=1). Outside it (the container and
-- `make install` defaults) the table is emptied and the Runtime's
-- introspection decides; a conf that puts demo-* tokens back outside demo
-- mode gets a warning in the log at every start and reload.
local mode = require "moongate.mode"

local config = {
  verifier = "static",

  tokens = {
    ["demo-token"] = { subject = "demo-user", tenant_id = "t1" },
    ["demo-token-t2"] = { subject = "demo-user-2", tenant_id = "t2" },
    ["demo-admin-token"] = { subject = "demo-admin", admin = true },
  },

  introspect = {
    path = "/v1/auth/introspect",
    cache_ttl = 30,
  },

  -- browsers cannot set Authorization on a WebSocket: accept ?token= there
  -- (and only there, so tokens stay out of REST access logs)
  query_token_for_websocket = true,
}

if not mode.demo then
  config.verifier = "runtime"
  config.tokens = {}
end

return config
