-- Bench configuration: the shared harness's upstreams (nginx on 19001, ws_echo on 19002).
return {
  listen = "127.0.0.1:19090",
  workers = 2,
  routes = "routes.lua",
  access_log = false,
  log_level = "warn",
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 },
    echo = { servers = { "http://127.0.0.1:19002" }, keepalive = 128 },
  },
}
