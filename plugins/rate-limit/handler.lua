-- rate-limit: a token bucket per key in a shared dictionary, so one limit
-- holds across every worker. The bucket arithmetic is one atomic
-- dict:take() in the core; this file only picks the key and answers.
local moongate = require "moongate"

local tostring = tostring
local type = type
local lower = string.lower
local str_format = string.format
local str_rep = string.rep
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

-- "rl|<scope>|<key kind>|": made on first use, once the loader has given
-- the conf its route (conf._route)
local function prefixes(conf)
  local scope = conf.scope == "global" and "*" or conf._route
  conf._prefix = "rl|" .. scope .. "|" .. conf.key .. "|"
  conf._ip_prefix = "rl|" .. scope .. "|ip|"
  return conf._prefix
end

local function hex(s)
  return (str_format(str_rep("%02x", #s), byte(s, 1, -1)))
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
  local prefix = conf._prefix or prefixes(conf)
  if v == nil or v == "" then
    prefix, v = conf._ip_prefix, ctx.client_ip or req.remote_addr
  end
  if #v > MAX_KEY then v = hex(moongate.crypto.sha256(v)) end
  return prefix .. v
end

-- the dictionaries, opened once per worker
local dicts = setmetatable({}, { __index = function(t, name)
  local d = moongate.shared[name]
  t[name] = d
  return d
end })

function _M.access(conf, req, ctx)
  local dict = dicts[conf.dict]
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
    -- on the response the client gets; reset: seconds until the bucket is full
    req:set_response_header("RateLimit-Limit", conf._limit)
    req:set_response_header("RateLimit-Remaining", remaining)
    req:set_response_header("RateLimit-Reset", math_ceil((conf._burst - remaining) / conf._rate))
  end
end

return _M
