-- examples/scaling: 100 requests per second per client address for the
-- whole cluster, not per instance (policy = "redis"); /whoami says which
-- instance answered.
local moongate = require "moongate"

local instance = os.getenv("INSTANCE") or "?"

return {
  { path = "/whoami", handler = function(req)
      return 200, { instance = instance, worker = moongate.worker_id, client = req.remote_addr }
  end, plugins = { ["rate-limit"] = { rate = 100, burst = 10, policy = "redis" } } },
}
