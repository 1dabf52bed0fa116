-- ws-message-limit: configuration. Give max_bytes, rate, or both.
return {
  fields = {
    -- Largest message, in bytes (the route's websocket.max_message still
    -- applies first, in the core).
    max_bytes = { type = "integer", min = 1 },
    -- Messages per second per socket (a token bucket of `burst` messages,
    -- default: rate rounded up).
    rate = { type = "number", min = 0.001 },
    burst = { type = "integer", min = 1 },
    -- Whose messages count: "client" (received from the client) or "both"
    -- (also those from the upstream, or sent by a handler).
    direction = { type = "string", default = "client", one_of = { "client", "both" } },
    -- Over a limit: "close" the socket, or "drop" the message.
    action = { type = "string", default = "close", one_of = { "close", "drop" } },
    size_close_code = { type = "integer", default = 1009, min = 1000, max = 4999 },
    rate_close_code = { type = "integer", default = 1008, min = 1000, max = 4999 },
  },
  check = function(conf)
    if conf.max_bytes == nil and conf.rate == nil then
      return nil, "give max_bytes, rate, or both"
    end
    if conf.burst ~= nil and conf.rate == nil then
      return nil, "burst needs rate", "burst"
    end
    return true
  end,
}
