-- bench/fanout.sh's Runtime: one worker (its counts are one process's),
-- MOONGATE_LISTEN gives the port.
return {
  listen = "127.0.0.1:19301",
  workers = 1,
  routes = "fanout.runtime.lua",
  access_log = false,
  log_level = "warn",
}
