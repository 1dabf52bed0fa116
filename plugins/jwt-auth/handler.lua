-- jwt-auth: verifies a JSON Web Token (RFC 7519) signed with HS256, RS256
-- or ES256, then leaves its claims in ctx.jwt (and its header in
-- ctx.jwt_header) for later plugins, the route's own access hooks (tenant
-- binding) and the handler.
--
-- The algorithm is the configured one, never the token's choice: a token
-- saying "none" or another algorithm is refused before any key is used
-- (the RS256-key-as-HS256-secret confusion cannot happen). Signatures are
-- checked with OpenSSL through moongate.crypto; HMACs are compared in
-- constant time.
--
-- Cost: a token whose signature has been verified is remembered (per conf,
-- up to CACHE_MAX tokens), so a client sending the same token again pays a
-- table lookup and the time-based checks, not a signature verification.
local moongate = require "moongate"
local cjson = require "cjson.safe"
local jwk = require "moongate.jwk"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local io_open = io.open
local gmatch = string.gmatch
local lower = string.lower
local match = string.match
local find = string.find
local byte = string.byte
local sub = string.sub
local json_decode = cjson.decode
local json_encode = cjson.encode

local _M = {
  name = "jwt-auth",
  VERSION = "0.1.0",
  PRIORITY = 2510,
}

local CACHE_MAX = 2048

local function read_file(root, path)
  if sub(path, 1, 1) ~= "/" and root and root ~= "" and root ~= "." then
    path = root .. "/" .. path
  end
  local f, err = io_open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- Builds conf._keys = { { kid =, secret = | pem = }, ... } and conf._kids.
function _M.check(conf, env)
  local alg = conf.algorithm
  local keys = {}
  if conf.secret then
    if alg ~= "HS256" then
      return nil, "a secret is for HS256; " .. alg .. " needs public_key or jwks_file", "secret"
    end
    keys[#keys + 1] = { secret = conf.secret }
  end
  local pem_text, pem_field = conf.public_key, "public_key"
  if conf.public_key_file then
    local text, err = read_file(env.root, conf.public_key_file)
    if not text then return nil, "cannot read: " .. tostring(err), "public_key_file" end
    pem_text, pem_field = text, "public_key_file"
  end
  if pem_text then
    if alg == "HS256" then
      return nil, "a public key is for RS256 or ES256; HS256 needs secret", pem_field
    end
    local pem, err = jwk.public_pem(pem_text)
    if not pem then return nil, err, pem_field end
    keys[#keys + 1] = { pem = pem }
  end
  if conf.jwks_file then
    local text, err = read_file(env.root, conf.jwks_file)
    if not text then return nil, "cannot read: " .. tostring(err), "jwks_file" end
    local doc = json_decode(text)
    if type(doc) ~= "table" then return nil, "not JSON", "jwks_file" end
    local list, jerr = jwk.from_jwks(doc)
    if not list then return nil, jerr, "jwks_file" end
    local want = alg == "HS256" and "oct" or (alg == "RS256" and "RSA" or "EC")
    for _, k in ipairs(list) do
      -- keys for another algorithm or for encryption are skipped, not errors:
      -- a JWKS endpoint usually publishes several
      local usable = (k.alg == nil or k.alg == alg) and k.use ~= "enc"
                     and (k.kty == want or (k.kty == nil and k.pem and alg ~= "HS256"))
      if usable then keys[#keys + 1] = k end
    end
    if #keys == 0 then
      return nil, "no " .. alg .. " key in the JWKS", "jwks_file"
    end
  end
  if #keys == 0 then
    return nil, alg == "HS256" and "give secret or jwks_file"
                or "give public_key, public_key_file or jwks_file"
  end
  local kids = {}
  for _, k in ipairs(keys) do
    if k.kid then kids[k.kid] = k end
  end
  conf._keys, conf._kids = keys, kids
  conf._header = lower(conf.header)
  return true
end

local function cookie_value(header, name)
  for pair in gmatch(header, "[^;]+") do
    local k, v = match(pair, "^%s*([^=]+)=(.*)$")
    if k == name then return (match(v, "^%s*(.-)%s*$")) end
  end
  return nil
end

-- "Bearer <token>" (any case): a plain prefix test first, since a token
-- is long and a pattern over it costs more than the rest of a cache hit
local function bearer(v)
  local b = byte(v, 7)
  if (b == 32) and lower(sub(v, 1, 6)) == "bearer" then
    local last = byte(v, -1)
    local t = sub(v, 8)
    if byte(t, 1) ~= 32 and byte(t, 1) ~= 9 and last ~= 32 and last ~= 9 and not find(t, " ", 1, true) then
      return t
    end
  end
  return match(v, "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
end

-- The token, and the cache key: the header value it was found in (a value
-- seen before then skips even the "Bearer" parsing), or the query or
-- cookie value under a prefix of its own.
local function token_of(conf, req)
  local v = req:header(conf._header)
  if v then
    local t = bearer(v)
    if t then return t, v end
    if conf._header ~= "authorization" and v ~= "" then return v, v end
  end
  if conf.query and req.query_string ~= "" then
    local q = req.query[conf.query]
    if q and q ~= "" then return q, "\0q" .. q end
  end
  local cookie = conf.cookie and req:header("cookie")
  if cookie then
    local c = cookie_value(cookie, conf.cookie)
    if c then return c, "\0c" .. c end
  end
  return nil
end

-- Verifies the signature and decodes; returns { header, claims } or nil, why.
local function decode_verify(conf, token)
  local h64, p64, s64 = match(token, "^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]*)$")
  if not h64 then return nil, "malformed token" end
  local crypto = moongate.crypto
  local header = json_decode(crypto.b64url_decode(h64) or "")
  if type(header) ~= "table" then return nil, "malformed token" end
  if header.alg ~= conf.algorithm then
    return nil, "algorithm not allowed"
  end
  if header.crit ~= nil then
    return nil, "unsupported critical header"
  end
  local sig = crypto.b64url_decode(s64)
  if not sig or sig == "" then return nil, "invalid signature" end
  local input = h64 .. "." .. p64

  local keys = conf._keys
  local kid = header.kid
  if type(kid) == "string" and next(conf._kids) ~= nil then
    local k = conf._kids[kid]
    if not k then return nil, "unknown key id" end
    keys = { k }
  end
  local ok = false
  if conf.algorithm == "HS256" then
    for _, k in ipairs(keys) do
      if crypto.equal(crypto.hmac_sha256(k.secret, input), sig) then ok = true end
    end
  else
    if conf.algorithm == "ES256" and #sig ~= 64 then
      return nil, "invalid signature"
    end
    for _, k in ipairs(keys) do
      if not ok and crypto.verify(conf.algorithm, k.pem, input, sig) then ok = true end
    end
  end
  if not ok then return nil, "invalid signature" end

  local claims = json_decode(crypto.b64url_decode(p64) or "")
  if type(claims) ~= "table" then return nil, "malformed claims" end
  return { header, claims }
end

local function one_of(v, list)
  for _, x in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- The checks that depend on the time: on every request.
local function check_time(conf, claims, now)
  local exp, nbf = claims.exp, claims.nbf
  if exp ~= nil and now >= exp + conf.leeway then return nil, "token expired" end
  if nbf ~= nil and now + conf.leeway < nbf then return nil, "token not yet valid" end
  return true
end

-- The checks that depend only on the token and conf: once per token.
local function check_static(conf, claims)
  for _, c in ipairs(conf.required_claims) do
    if claims[c] == nil then return nil, "missing claim '" .. c .. "'" end
  end
  if claims.exp ~= nil and type(claims.exp) ~= "number" then return nil, "malformed exp" end
  if claims.nbf ~= nil and type(claims.nbf) ~= "number" then return nil, "malformed nbf" end
  if #conf.issuers > 0 and not one_of(claims.iss, conf.issuers) then
    return nil, "issuer not allowed"
  end
  if #conf.audiences > 0 then
    local aud, found = claims.aud, false
    if type(aud) == "string" then
      found = one_of(aud, conf.audiences)
    elseif type(aud) == "table" then
      for _, a in ipairs(aud) do
        if one_of(a, conf.audiences) then found = true end
      end
    end
    if not found then return nil, "audience not allowed" end
  end
  return true
end

local function check_claims(conf, claims)
  local ok, why = check_static(conf, claims)
  if not ok then return nil, why end
  return check_time(conf, claims, moongate.now())
end

-- The upstream headers claims_to_headers makes of these claims, as a flat
-- list { name, value, ... }.
local function claim_headers(conf, claims)
  local out = {}
  for claim, header in pairs(conf.claims_to_headers) do
    local c = claims[claim]
    if c ~= nil then
      out[#out + 1] = header
      out[#out + 1] = type(c) == "table" and json_encode(c) or tostring(c)
    end
  end
  return out
end

-- verified tokens, per conf (conf._cache, made on first use: a field of
-- the conf, not a weak table keyed by it, so a request reads it by a
-- constant key): token -> { header, claims, upstream headers }; only
-- tokens that passed the static claim checks are kept

local function unauthorized(why)
  local www = why == "missing token" and 'Bearer realm="moongate"'
              or ('Bearer realm="moongate", error="invalid_token", error_description="' .. why .. '"')
  return 401, { error = why }, { ["WWW-Authenticate"] = www }
end

function _M.access(conf, req, ctx)
  local cache = conf._cache
  if not cache then
    cache = { n = 0, map = {} }
    conf._cache = cache
  end
  -- the usual case: the Authorization value of a token verified before
  local raw = req:header(conf._header)
  local v = raw and cache.map[raw]
  local token
  if not v then
    token, raw = token_of(conf, req)
    if not token then return unauthorized("missing token") end
    v = cache.map[raw]
  end
  if not v then
    local why
    v, why = decode_verify(conf, token)
    if not v then return unauthorized(why) end
    local ok, swhy = check_static(conf, v[2])
    if not ok then return unauthorized(swhy) end
    v[3] = claim_headers(conf, v[2])
    if cache.n >= CACHE_MAX then cache.n, cache.map = 0, {} end
    cache.map[raw] = v
    cache.n = cache.n + 1
  end
  local claims = v[2]
  local ok, why = check_time(conf, claims, moongate.now())
  if not ok then return unauthorized(why) end
  ctx.jwt, ctx.jwt_header = claims, v[1]
  ctx.authenticated = "jwt-auth"
  -- the first two headers unrolled: a loop of one or two rounds would be
  -- left to LuaJIT's interpreter ("leaving loop in root trace")
  local hs = v[3]
  local n = #hs
  if n >= 2 then req:set_header(hs[1], hs[2]) end
  if n >= 4 then req:set_header(hs[3], hs[4]) end
  for i = 5, n, 2 do req:set_header(hs[i], hs[i + 1]) end
end

-- for the specs
_M._decode_verify = decode_verify
_M._check_claims = check_claims

return _M
