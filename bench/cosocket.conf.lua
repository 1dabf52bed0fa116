-- bench/cosocket.sh: moongate on :19097, 2 workers, no access log; the
-- harness's nginx upstream (19001) as "runtime" (moongate.http.request) and
-- as the cosocket's server.
return {
  listen = "127.0.0.1:19097",
  workers = 2,
  routes = "cosocket.routes.lua",
  access_log = false,
  log_level = "warn",
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
