-- Bench (bench/metrics.sh): the normal build (metrics on), the full access log on.
return {
  listen = "127.0.0.1:19093",
  workers = 2,
  routes = "metrics.routes.lua",
  access_log = true,
  log_level = "warn",
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
