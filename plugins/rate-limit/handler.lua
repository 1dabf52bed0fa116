-- rate-limit: a token bucket per key in a shared dictionary, so one limit
-- holds across every worker. The bucket arithmetic is one atomic
-- dict:take() in the core; this file only picks the key and answers.
local moongate = require "moongate"

local tostring = tostring
local type = type
local lower = string.lower
local format = string.format
local byte = string.byte
local math_ceil = math.ceil
local math_floor = math.floor

local _M = {
  name = "rate-limit",
  VERSION = "0.1.0",
  PRIORITY = 1001, -- after authentication (jwt_claim keys need ctx.jwt)
}

local PER = { second = 1, minute = 60, hour = 3600 }
local MAX_KEY = 96 -- longer keys (a long header value) are hashed

function _M.check(conf, env)
  if env.shared_dicts and env.shared_dicts[conf.dict] == nil then
    return nil, "no shared dictionary '" .. conf.dict .. "' (declare it in conf: shared_dicts = { "
                .. conf.dict .. " = 1048576 })", "dict"
  end
  conf._rate = conf.rate / PER[conf.per]                  -- tokens per second
  conf._burst = conf.burst or math.max(1, math_ceil(conf.rate))
  conf._header = conf.header and lower(conf.header)
  conf._limit = tostring(conf._burst)
  return true
end

local function hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

local function bucket_key(conf, req, ctx)
  local k = conf.key
  local v
  if k == "header" then
    v = req.headers[conf._header]
  elseif k == "jwt_claim" then
    local claims = ctx.jwt
    v = claims and claims[conf.claim]
    if v ~= nil and type(v) ~= "string" then v = tostring(v) end
  end
  if v == nil or v == "" then
    k, v = "ip", ctx.client_ip or req.remote_addr
  end
  if #v > MAX_KEY then v = hex(moongate.crypto.sha256(v)) end
  local scope = conf.scope == "global" and "*" or conf._route
  return "rl|" .. scope .. "|" .. k .. "|" .. v
end

function _M.access(conf, req, ctx)
  local dict = moongate.shared[conf.dict]
  local allowed, remaining, retry = dict:take(bucket_key(conf, req, ctx), conf._rate,
                                              conf._burst, 1)
  if allowed == nil then
    moongate.log.error("rate-limit: shared dict '", conf.dict, "': ", tostring(remaining))
    if conf.fail_open then return end
    return 500, { error = "rate limiter unavailable" }
  end
  remaining = math_floor(remaining)
  if not allowed then
    local after = tostring(math_ceil(retry))
    return conf.status, { error = "rate limit exceeded" }, {
      ["Retry-After"] = after,
      ["RateLimit-Limit"] = conf._limit,
      ["RateLimit-Remaining"] = "0",
      ["RateLimit-Reset"] = after,
    }
  end
  if conf.headers then
    -- seconds until the bucket is full again
    ctx.rate_limit = { remaining, math_ceil((conf._burst - remaining) / conf._rate) }
  end
end

function _M.header_filter(conf, res, ctx)
  local rl = ctx.rate_limit
  if rl then
    local h = res.headers
    h["ratelimit-limit"] = conf._limit
    h["ratelimit-remaining"] = tostring(rl[1])
    h["ratelimit-reset"] = tostring(rl[2])
  end
end

return _M
