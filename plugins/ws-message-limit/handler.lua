-- ws-message-limit: message size and rate per WebSocket, in relay and
-- handler modes. Per-socket state lives in ctx (one per socket), so a limit
-- costs a table lookup and a little arithmetic per message.
local moongate = require "moongate"

local math_ceil = math.ceil

local _M = {
  name = "ws-message-limit",
  VERSION = "0.1.0",
  PRIORITY = 1000,
}

function _M.check(conf)
  if conf.rate then
    conf._burst = conf.burst or math_ceil(conf.rate)
  end
  return true
end

local function over(conf, code, reason)
  if conf.action == "drop" then return nil end
  return false, code, reason
end

function _M.ws_message(conf, msg, ctx)
  if conf.direction == "client" and msg.direction ~= "client" then
    return true
  end
  if conf.max_bytes and #msg.data > conf.max_bytes then
    return over(conf, conf.size_close_code, "message too big")
  end
  local rate = conf.rate
  if rate then
    -- token bucket: `burst` messages, refilled at `rate` per second
    local st = ctx.ws_message_limit
    local now = moongate.now()
    if not st then
      st = { tokens = conf._burst, t = now }
      ctx.ws_message_limit = st
    else
      local tokens = st.tokens + (now - st.t) * rate
      st.tokens = tokens < conf._burst and tokens or conf._burst
      st.t = now
    end
    if st.tokens < 1 then
      return over(conf, conf.rate_close_code, "rate limit exceeded")
    end
    st.tokens = st.tokens - 1
  end
  return true
end

return _M
