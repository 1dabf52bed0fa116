-- rate-limit: configuration.
return {
  fields = {
    -- Requests allowed per `per`, refilled continuously (a token bucket).
    rate = { type = "number", required = true, min = 0.001 },
    per = { type = "string", default = "second", one_of = { "second", "minute", "hour" } },
    -- Bucket size: requests that may come at once (default: rate, at least 1).
    burst = { type = "integer", min = 1 },
    -- Whose bucket: "ip" (the client address; ctx.client_ip when
    -- ip-restriction found one behind trusted proxies), "header" (the
    -- value of `header`), or "jwt_claim" (claim `claim` of the token
    -- jwt-auth verified). A request without that header or claim falls
    -- back to its client address.
    key = { type = "string", default = "ip", one_of = { "ip", "header", "jwt_claim" } },
    header = { type = "string", match = "^[%w!#$%%&'*+.^_`|~-]+$" },
    claim = { type = "string" },
    -- "route": a bucket per route and key; "global": one per key across
    -- every route that has this plugin.
    scope = { type = "string", default = "route", one_of = { "route", "global" } },
    -- The shared dictionary (conf shared_dicts) holding the buckets.
    dict = { type = "string", default = "rate_limit" },
    -- RateLimit-Limit/-Remaining/-Reset on responses that were let through.
    headers = { type = "boolean", default = true },
    status = { type = "integer", default = 429, min = 400, max = 599 },
    -- When the dictionary fails (full): let the request through (true) or
    -- answer 500 (false).
    fail_open = { type = "boolean", default = true },
    -- Where the buckets are: "local" (the shared dictionary: per instance)
    -- or "redis" (the conf's redis: one bucket per key across every
    -- instance, computed atomically in one Redis script).
    policy = { type = "string", default = "local", one_of = { "local", "redis" } },
    -- With policy "redis", while Redis fails: "local" (this instance's
    -- shared-dictionary limit, logged once), "allow" or "deny" (503).
    on_redis_error = { type = "string", default = "local", one_of = { "local", "allow", "deny" } },
  },
  check = function(conf)
    if conf.key == "header" and not conf.header then
      return nil, "required when key = \"header\"", "header"
    end
    if conf.key == "jwt_claim" and not conf.claim then
      return nil, "required when key = \"jwt_claim\"", "claim"
    end
    return true
  end,
}
