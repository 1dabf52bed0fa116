-- The route table (placeholder until the seed's gateway scripts land).
-- First match in priority order wins; the default priority is the length
-- of the rule, so longer rules come first. Reference: docs/configuration.md.
return {
  -- Runtime's own API, proxied in C
  { prefix = "/api/runtime", upstream = "runtime" },
  { prefix = "/api/realms", upstream = "runtime" },

  -- anything else under /api: a JSON 404 rather than the front page
  { prefix = "/api", handler = function(req)
      return 404, { error = "not found", path = req.path }
  end },

  { path = "/", handler = function()
      return 200, "moongate is running\n", { ["content-type"] = "text/plain" }
  end },
}
