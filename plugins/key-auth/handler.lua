-- key-auth: API keys from a header or a query parameter.
--
-- Keys are compared as SHA-256 digests with moongate.crypto.equal, and the
-- presented key is compared with every configured key: the time taken says
-- nothing about how much of a key matched, its length, or which key it was.
local moongate = require "moongate"

local pairs = pairs
local ipairs = ipairs
local type = type
local lower = string.lower
local setmetatable = setmetatable

local _M = {
  name = "key-auth",
  VERSION = "0.1.0",
  PRIORITY = 2500,
}

-- conf -> { { digest, consumer }, ... }, filled on first use (the crypto API
-- exists in the workers, not necessarily where the schema is checked).
local digests = setmetatable({}, { __mode = "k" })

local function keys_of(conf)
  local list = digests[conf]
  if not list then
    local sha256 = moongate.crypto.sha256
    list = {}
    for name, key in pairs(conf.keys) do
      list[#list + 1] = { sha256(key), type(name) == "string" and name or nil }
    end
    digests[conf] = list
  end
  return list
end

function _M.check(conf)
  local names = {}
  for i, n in ipairs(conf.key_names) do names[i] = lower(n) end
  conf._names = names
  return true
end

local function find_key(conf, req)
  if conf.key_in_header then
    for i, name in ipairs(conf._names) do
      local v = req:header(name) -- one header: req.headers is not built
      if v and v ~= "" then return v, conf.key_names[i] end
    end
  end
  if conf.key_in_query and req.query_string ~= "" then
    local q = req.query
    for _, name in ipairs(conf.key_names) do
      local v = q[name]
      if v and v ~= "" then return v end
    end
  end
  return nil
end

function _M.access(conf, req, ctx)
  local key, header = find_key(conf, req)
  if not key then
    return 401, { error = "missing API key" }, { ["WWW-Authenticate"] = 'Key realm="moongate"' }
  end
  local crypto = moongate.crypto
  local d = crypto.sha256(key)
  local found, consumer = false, nil
  for _, k in ipairs(keys_of(conf)) do
    if crypto.equal(d, k[1]) and not found then
      found, consumer = true, k[2]
    end
  end
  if not found then
    return 401, { error = "invalid API key" }, { ["WWW-Authenticate"] = 'Key realm="moongate"' }
  end
  ctx.consumer = consumer
  ctx.authenticated = "key-auth"
  if conf.hide_credentials and header then
    req:set_header(header, nil)
  end
end

return _M
