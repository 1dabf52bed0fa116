-- moongate.jwk: public keys for JWT verification, as the PEM text
-- moongate.crypto.verify() takes. Runs at load time only (jwt-auth's
-- check), so it is plain Lua: base64, a little DER, no OpenSSL.
--
--   * JWK RSA { kty = "RSA", n, e } -> SubjectPublicKeyInfo PEM
--   * JWK EC  { kty = "EC", crv = "P-256", x, y } -> SubjectPublicKeyInfo PEM
--   * JWK with x5c (base64 DER certificates): the first certificate's key
--   * JWK with a `pem` member (moongate's extension): used as is
--   * JWK oct { kty = "oct", k } -> the raw HMAC secret
--   * a PEM certificate ("BEGIN CERTIFICATE") -> its public key PEM
--
-- DER lengths and the X.509 walk follow RFC 5280 / X.690; only what a
-- certificate's tbsCertificate needs is parsed.

local type = type
local ipairs = ipairs
local str_byte = string.byte
local str_char = string.char
local str_find = string.find
local str_format = string.format
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local str_rep = string.rep
local tbl_concat = table.concat
local tbl_insert = table.insert
local tostring = tostring
local math_floor = math.floor


local _M = { _VERSION = "0.1.0" }


---------------------------------------------------------------------------
-- base64 (RFC 4648): standard and URL-safe alphabets
---------------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC = {}
for i = 1, 64 do DEC[str_byte(B64, i)] = i - 1 end
DEC[str_byte("-")] = 62
DEC[str_byte("_")] = 63


--- Decodes standard or URL-safe base64, padded or not; whitespace is
-- ignored. nil for anything else.
function _M.b64_decode(s)
  if type(s) ~= "string" then return nil end
  s = str_gsub(s, "%s", "")
  s = str_gsub(s, "=+$", "")
  if #s % 4 == 1 then return nil end
  local out = {}
  local acc, nbits = 0, 0
  for i = 1, #s do
    local v = DEC[str_byte(s, i)]
    if not v then return nil end
    acc = acc * 64 + v
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local b = math_floor(acc / 2 ^ nbits)
      out[#out + 1] = str_char(b)
      acc = acc - b * 2 ^ nbits
    end
  end
  return tbl_concat(out)
end


--- Standard base64 with padding.
function _M.b64_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = str_byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math_floor(n / 262144) % 64 + 1
    local c2 = math_floor(n / 4096) % 64 + 1
    local c3 = math_floor(n / 64) % 64 + 1
    local c4 = n % 64 + 1
    out[#out + 1] = str_sub(B64, c1, c1) .. str_sub(B64, c2, c2)
      .. (b and str_sub(B64, c3, c3) or "=") .. (c and str_sub(B64, c4, c4) or "=")
  end
  return tbl_concat(out)
end


---------------------------------------------------------------------------
-- DER
---------------------------------------------------------------------------

local function der_len(n)
  if n < 128 then return str_char(n) end
  local bytes = {}
  while n > 0 do
    tbl_insert(bytes, 1, str_char(n % 256))
    n = math_floor(n / 256)
  end
  return str_char(128 + #bytes) .. tbl_concat(bytes)
end


local function tlv(tag, value)
  return str_char(tag) .. der_len(#value) .. value
end


-- An unsigned big-endian integer as a DER INTEGER: leading zeros dropped,
-- one 0x00 added when the high bit is set (it would read as negative).
local function der_uint(bytes)
  bytes = str_gsub(bytes, "^%z+", "")
  if bytes == "" then bytes = "\0" end
  if str_byte(bytes, 1) >= 128 then bytes = "\0" .. bytes end
  return tlv(0x02, bytes)
end


-- Reads the TLV at `pos`: tag, start of value, end of value (inclusive).
local function read_tlv(der, pos)
  local tag, l = str_byte(der, pos, pos + 1)
  if not l then return nil end
  local start = pos + 2
  if l >= 128 then
    local n = l - 128
    if n < 1 or n > 4 then return nil end
    l = 0
    for i = 1, n do
      local b = str_byte(der, pos + 1 + i)
      if not b then return nil end
      l = l * 256 + b
    end
    start = pos + 2 + n
  end
  local last = start + l - 1
  if last > #der then return nil end
  return tag, start, last
end


local OID_RSA = "\6\9\42\134\72\134\247\13\1\1\1"       -- 1.2.840.113549.1.1.1
local OID_EC = "\6\7\42\134\72\206\61\2\1"               -- 1.2.840.10045.2.1
local OID_P256 = "\6\8\42\134\72\206\61\3\1\7"           -- 1.2.840.10045.3.1.7


local function pem(der, label)
  local b64 = _M.b64_encode(der)
  local lines = { "-----BEGIN " .. label .. "-----" }
  for i = 1, #b64, 64 do lines[#lines + 1] = str_sub(b64, i, i + 63) end
  lines[#lines + 1] = "-----END " .. label .. "-----"
  return tbl_concat(lines, "\n") .. "\n"
end
_M.pem = pem


--- RSA public key PEM from the raw modulus and exponent bytes.
function _M.rsa_pem(n, e)
  local rsakey = tlv(0x30, der_uint(n) .. der_uint(e))
  local alg = tlv(0x30, OID_RSA .. "\5\0")
  return pem(tlv(0x30, alg .. tlv(0x03, "\0" .. rsakey)), "PUBLIC KEY")
end


--- P-256 public key PEM from the raw 32-byte x and y coordinates.
function _M.ec_pem(x, y)
  if #x > 32 or #y > 32 then return nil, "P-256 coordinates are 32 bytes" end
  x = str_rep("\0", 32 - #x) .. x
  y = str_rep("\0", 32 - #y) .. y
  local alg = tlv(0x30, OID_EC .. OID_P256)
  return pem(tlv(0x30, alg .. tlv(0x03, "\0\4" .. x .. y)), "PUBLIC KEY")
end


--- The SubjectPublicKeyInfo of a DER certificate, as PEM.
function _M.cert_key_pem(der)
  local tag, s = read_tlv(der, 1)                -- Certificate
  if tag ~= 0x30 then return nil, "not a DER certificate" end
  local e
  tag, s, e = read_tlv(der, s)                    -- tbsCertificate
  if tag ~= 0x30 then return nil, "not a DER certificate" end
  local pos, idx = s, 0
  while pos <= e do
    local t, _, ve = read_tlv(der, pos)
    if not t then return nil, "truncated certificate" end
    if t ~= 0xa0 then
      idx = idx + 1
      -- serial, signature, issuer, validity, subject, subjectPublicKeyInfo
      if idx == 6 then
        if t ~= 0x30 then return nil, "no public key in certificate" end
        return pem(str_sub(der, pos, ve), "PUBLIC KEY")
      end
    end
    pos = ve + 1
  end
  return nil, "no public key in certificate"
end


--- The DER body of the first PEM block labelled `label` in `text`.
function _M.pem_der(text, label)
  local b = str_match(text, "%-%-%-%-%-BEGIN " .. label .. "%-%-%-%-%-(.-)%-%-%-%-%-END "
                      .. label .. "%-%-%-%-%-")
  return b and _M.b64_decode(b)
end


--- A key PEM moongate.crypto.verify() accepts, from PEM text holding a
-- public key or a certificate. nil, reason otherwise.
function _M.public_pem(text)
  if type(text) ~= "string" then return nil, "expected PEM text" end
  if str_find(text, "-----BEGIN PUBLIC KEY-----", 1, true) then
    return text
  end
  if str_find(text, "-----BEGIN CERTIFICATE-----", 1, true) then
    local der = _M.pem_der(text, "CERTIFICATE")
    if not der then return nil, "bad certificate PEM" end
    return _M.cert_key_pem(der)
  end
  if str_find(text, "PRIVATE KEY-----", 1, true) then
    return nil, "a private key: give the public key (openssl pkey -pubout)"
  end
  return nil, "expected a PEM public key (-----BEGIN PUBLIC KEY-----) or certificate"
end


--- A key from one JWK (a decoded JSON object). Returns { kid =, alg =,
-- kty =, pem = } or { kid =, alg =, kty = "oct", secret = }, or nil, reason.
function _M.from_jwk(jwk)
  if type(jwk) ~= "table" then return nil, "a JWK must be an object" end
  local key = { kid = type(jwk.kid) == "string" and jwk.kid or nil,
                alg = type(jwk.alg) == "string" and jwk.alg or nil, kty = jwk.kty }
  if type(jwk.pem) == "string" then
    local p, err = _M.public_pem(jwk.pem)
    if not p then return nil, "pem: " .. err end
    key.pem = p
    return key
  end
  if type(jwk.x5c) == "table" and type(jwk.x5c[1]) == "string" then
    local der = _M.b64_decode(jwk.x5c[1])
    if not der then return nil, "x5c: bad base64" end
    local p, err = _M.cert_key_pem(der)
    if not p then return nil, "x5c: " .. err end
    key.pem = p
    return key
  end
  if jwk.kty == "RSA" then
    local n, e = _M.b64_decode(jwk.n), _M.b64_decode(jwk.e)
    if not n or not e or n == "" or e == "" then return nil, "RSA key needs n and e" end
    key.pem = _M.rsa_pem(n, e)
    return key
  end
  if jwk.kty == "EC" then
    if jwk.crv ~= "P-256" then
      return nil, str_format("EC curve %s is not supported (P-256 only)", tostring(jwk.crv))
    end
    local x, y = _M.b64_decode(jwk.x), _M.b64_decode(jwk.y)
    if not x or not y then return nil, "EC key needs x and y" end
    local p, err = _M.ec_pem(x, y)
    if not p then return nil, err end
    key.pem = p
    return key
  end
  if jwk.kty == "oct" then
    local k = _M.b64_decode(jwk.k)
    if not k or k == "" then return nil, "oct key needs k" end
    key.secret = k
    return key
  end
  return nil, "unsupported key type " .. tostring(jwk.kty)
end


--- Keys from a JWKS document { keys = [ ... ] }. Returns a list, or nil,
-- reason naming the bad entry.
function _M.from_jwks(doc)
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then
    return nil, "expected a JWKS object with a 'keys' array"
  end
  local out = {}
  for i, jwk in ipairs(doc.keys) do
    local key, err = _M.from_jwk(jwk)
    if not key then return nil, str_format("keys[%d]: %s", i, err) end
    key.use = type(jwk) == "table" and jwk.use or nil
    out[#out + 1] = key
  end
  return out
end


return _M
