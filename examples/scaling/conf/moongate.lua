-- examples/scaling: one of three moongate instances behind haproxy, sharing
-- their rate limits through Redis (docs/scaling.md). docker-compose.yml
-- beside this directory runs the three with MOONGATE_REDIS_URL set; this
-- file's url is the one used without it.
return {
  listen = "0.0.0.0:8080",
  workers = "auto",
  -- the shared dictionary: rate-limit's fallback while Redis is down
  shared_dicts = { rate_limit = 1048576 },
  redis = { url = "redis://redis:6379/0", timeout = 0.5, pool = 32 },
  -- haproxy sends a PROXY header, so the rate limit keys on the real client
  proxy_protocol = true,
}
