-- Bench (bench/metrics.sh), the baseline: run by the -DMG_METRICS_OFF build, access log off.
return {
  listen = "127.0.0.1:19092",
  workers = 2,
  routes = "metrics.routes.lua",
  access_log = false,
  log_level = "warn",
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
