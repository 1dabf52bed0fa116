-- rate-limit: a token bucket per key in a shared dictionary, so one limit
-- holds across every worker. The bucket arithmetic is one atomic
-- dict:take() in the core; this file only picks the key and answers.
-- With policy = "redis" the same bucket lives in the conf's Redis, taken
-- by one script (EVALSHA) on Redis's clock, so one limit holds across
-- every instance; while Redis fails, on_redis_error decides.
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

-- The token bucket of dict:take(), in Redis: KEYS[1] the bucket, ARGV rate
-- (tokens/s), burst, cost. Returns { allowed (0|1), tokens, retry } (as
-- strings: Redis turns Lua numbers into integers).
local SCRIPT = [[
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if not tokens or not ts then
  tokens, ts = burst, now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local allowed, retry = 0, (cost - tokens) / rate
if tokens >= cost then
  tokens, allowed, retry = tokens - cost, 1, 0
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate) * 1000) + 1000)
return { allowed, string.format('%.6f', tokens), string.format('%.6f', retry) }
]]

local redis_mod, script, client -- per worker, made on the first policy = "redis" request

function _M.check(conf, env)
  if conf.policy == "redis" then
    if env.shared_dicts and not env.redis then
      return nil, "policy = \"redis\" needs the conf's redis (redis = { url = ... } or "
                  .. "MOONGATE_REDIS_URL)", "policy"
    end
  end
  local needs_dict = conf.policy == "local" or conf.on_redis_error == "local"
  if needs_dict and env.shared_dicts and env.shared_dicts[conf.dict] == nil then
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

-- bucket keys made before, per conf (conf._kc) and prefix: value -> key,
-- so a client seen again costs a table lookup, not a concatenation (and a
-- hash, for a long value). Bounded: emptied when KEY_CACHE_MAX keys are in
-- it. Kept in the conf, not in a weak table keyed by it: a request reads
-- it by a constant key.
local KEY_CACHE_MAX = 4096

local function key_cache(conf)
  local kc = { n = 0, key = {}, ip = {} }
  conf._kc = kc
  return kc
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
  local kc = conf._kc or key_cache(conf)
  local map, prefix = kc.key, conf._prefix or prefixes(conf)
  if v == nil or v == "" then
    map, prefix, v = kc.ip, conf._ip_prefix, ctx.client_ip or req.remote_addr
  end
  local key = map[v]
  if key then return key end
  if kc.n >= KEY_CACHE_MAX then
    kc = key_cache(conf)
    map = prefix == conf._ip_prefix and kc.ip or kc.key
  end
  key = prefix .. (#v > MAX_KEY and hex(moongate.crypto.sha256(v)) or v)
  map[v] = key
  kc.n = kc.n + 1
  return key
end

-- the dictionaries, opened once per worker; a conf keeps its own (conf._dict)
local dicts = setmetatable({}, { __index = function(t, name)
  local d = moongate.shared[name]
  t[name] = d
  return d
end })

local function dict_of(conf)
  local d = dicts[conf.dict]
  conf._dict = d
  return d
end

-- per worker: is Redis failing (for the log line once per outage)
local redis_failing = false

-- the Redis bucket: allowed, remaining, retry; or nil, err
local function redis_take(conf, key)
  if client == nil then
    redis_mod = redis_mod or require "moongate.redis"
    script = script or redis_mod.script(SCRIPT)
    local err
    client, err = redis_mod.new()
    if not client then return nil, err end
  end
  local res, err = client:run_script(script, 1, key, conf._rate, conf._burst, 1)
  if type(res) ~= "table" then
    return nil, err or "unexpected reply from the script"
  end
  if redis_failing then
    redis_failing = false
    moongate.log.info("rate-limit: redis answers again; limits are cluster-wide again")
  end
  return res[1] == 1, tonumber(res[2]) or 0, tonumber(res[3]) or 0
end

-- The RateLimit-Remaining and -Reset values as strings, per conf, for one
-- remaining count (reset follows from it): a bucket with room to spare
-- (a busy client under a high limit, or many at their burst) gives the
-- same figures on every request, and a string is set without the
-- number's formatting in C. Made when a count comes twice in a row
-- (conf._rem_seen), so a count seen once costs no string; other counts
-- are passed as numbers, as before. Only integers below 1e14, which
-- tostring writes as the core writes numbers (the digits, no exponent).
local function num_str(x)
  if x == 0 then return "0" end -- never "-0"
  return tostring(x)
end

local function remember(conf, remaining, reset)
  if remaining >= 0 and remaining < 1e14 and reset >= 0 and reset < 1e14 then
    conf._rem, conf._rem_s, conf._reset_s = remaining, num_str(remaining), num_str(reset)
  end
end

function _M.access(conf, req, ctx)
  local key = bucket_key(conf, req, ctx)
  local allowed, remaining, retry
  if conf.policy == "redis" then
    allowed, remaining, retry = redis_take(conf, key)
    if allowed == nil then
      local mode = conf.on_redis_error
      if not redis_failing then
        redis_failing = true
        moongate.log.warn("rate-limit: redis failed (" .. tostring(remaining)
                          .. "); on_redis_error = " .. mode .. (mode == "local"
                          and ": this instance's own limit until it answers" or ""))
      end
      if mode == "allow" then return end
      if mode == "deny" then
        return 503, { error = "rate limiter unavailable" }, { ["Retry-After"] = "1" }
      end
    end
  end
  if allowed == nil then
    allowed, remaining, retry = (conf._dict or dict_of(conf)):take(key, conf._rate, conf._burst, 1)
  end
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
    if remaining == conf._rem then -- the figures made strings before
      req:set_response_header("RateLimit-Remaining", conf._rem_s)
      req:set_response_header("RateLimit-Reset", conf._reset_s)
      return
    end
    local reset = math_ceil((conf._burst - remaining) / conf._rate)
    if remaining == conf._rem_seen then remember(conf, remaining, reset) end
    conf._rem_seen = remaining
    req:set_response_header("RateLimit-Remaining", remaining)
    req:set_response_header("RateLimit-Reset", reset)
  end
end

return _M
