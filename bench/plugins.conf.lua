-- Bench: the same upstream route plain, with a no-op access hook, and with
-- jwt-auth + rate-limit (issue 5's figure). Token: bench/jwt.sh prints one.
return {
  listen = "127.0.0.1:19091",
  workers = 2,
  routes = "plugins.routes.lua",
  access_log = false,
  log_level = "warn",
  shared_dicts = { rate_limit = 4194304 },
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
