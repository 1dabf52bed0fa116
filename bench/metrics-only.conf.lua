-- Bench (bench/metrics.sh): the normal build (metrics on), the access log off (ON_CONF for the metrics-only figure).
return {
  listen = "127.0.0.1:19093",
  workers = 2,
  routes = "metrics.routes.lua",
  access_log = false,
  log_level = "warn",
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
