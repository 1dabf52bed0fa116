-- moongate.acme: the ACME client (RFC 8555) that the ACME process runs
-- (core/app/acme.c forks it; this loop never returns). Sequential and
-- blocking on purpose: the process serves no connection, and each step of
-- the protocol waits for the last. For every configured name it keeps one
-- certificate in the storage folder (<name>.pem: the chain, then its key,
-- mode 0600), orders it when there is none, and renews it when `renew` of
-- its lifetime has passed (less a jitter of up to 1/30 of the lifetime, so
-- that many names or many gateways do not all ask at once); a failure
-- backs off from backoff.min, doubling up to backoff.max. http-01 tokens
-- go to the workers through the shared dict (c.dict); a stored
-- certificate is announced with c.notify(name).
--
-- c (the C helpers): https_init, https, key_new, key_load, csr, cert_info,
-- read_file, write_file, mkdir, now, sleep, notify, log, random, crypto
-- (sha256, b64url_encode), dict.

local type = type
local ipairs = ipairs
local pcall = pcall
local tonumber = tonumber
local tostring = tostring
local error = error
local math_min = math.min
local math_max = math.max
local math_random = math.random
local str_byte = string.byte
local str_format = string.format
local str_sub = string.sub

local cjson = require("cjson.safe").new()

local _M = { _VERSION = "0.1.0" }

local POLL_DEADLINE = 120 -- s an authorization or an order may stay pending
local TOKEN_TTL = 600     -- s a key authorization stays in the shared dict
local MAX_SLEEP = 3600    -- s between looks at the clock, whatever is due

function _M.run(conf, c)
  local b64 = c.crypto.b64url_encode
  local dict = c.dict
  local function log(level, fmt, ...)
    c.log(level, str_format(fmt, ...))
  end
  local function fatal_wait(fmt, ...)
    -- a setting this process cannot fix: say it, retry now and then
    log("error", fmt, ...)
    c.sleep(math_min(conf.backoff.max, 600))
  end

  do
    local r = c.random(4)
    math.randomseed(((str_byte(r, 1) * 256 + str_byte(r, 2)) * 256 + str_byte(r, 3)) * 256
                    + str_byte(r, 4))
  end
  if not dict then
    error("the shared dict moongate.acme is missing")
  end

  -- the storage folder and the account key -----------------------------
  local key, jwk, thumb
  while not key do
    local ok, err = c.https_init(conf.ca)
    if ok then
      ok, err = c.mkdir(conf.storage)
    end
    if ok then
      local path = conf.storage .. "/account.key"
      local pem = c.read_file(path)
      if pem then
        key, err = c.key_load(pem)
        if not key then
          err = path .. ": " .. err .. " (move it away to make a new account)"
        end
      else
        key = c.key_new()
        ok, err = c.write_file(path, key:pem())
        if ok then
          log("info", "new account key %s", path)
        else
          key = nil
        end
      end
    end
    if not key then
      fatal_wait("%s: retrying in %d s", err, math_min(conf.backoff.max, 600))
    end
  end
  do
    local x, y = key:point()
    jwk = { crv = "P-256", kty = "EC", x = b64(x), y = b64(y) }
    -- RFC 7638: the members in lexical order, no white space
    thumb = b64(c.crypto.sha256(str_format('{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}',
                                           jwk.x, jwk.y)))
  end

  -- the protocol ------------------------------------------------------------
  local dir, nonce, kid
  local want -- on_demand names the workers asked for (the schedule, below)

  local function request(method, url, body, ctype, accept)
    local st, h, b = c.https(method, url, body, ctype, accept)
    if not st then
      return nil, h
    end
    if h["replay-nonce"] then
      nonce = h["replay-nonce"]
    end
    return st, h, b
  end

  local function problem(what, st, b)
    local p = cjson.decode(b or "")
    if type(p) == "table" and p.type then
      return str_format("%s: HTTP %d %s: %s", what, st, tostring(p.type), tostring(p.detail))
    end
    return str_format("%s: HTTP %d", what, st)
  end

  local function directory()
    if dir then
      return dir
    end
    local st, h, b = request("GET", conf.directory)
    if not st then
      error(h, 0)
    end
    local d = cjson.decode(b)
    if st ~= 200 or type(d) ~= "table" or type(d.newNonce) ~= "string" or
       type(d.newAccount) ~= "string" or type(d.newOrder) ~= "string" then
      error(problem(conf.directory .. ": not an ACME directory", st, b), 0)
    end
    dir = d
    return d
  end

  -- A signed POST (payload nil: POST-as-GET); a bad nonce is retried with
  -- the fresh one the error carried (RFC 8555 6.5).
  local function post(url, payload, use_jwk, accept)
    for attempt = 1, 5 do
      if not nonce then
        local st, h = request("HEAD", directory().newNonce)
        if not st then
          error(h, 0)
        end
        if not nonce then
          error("newNonce: no Replay-Nonce header", 0)
        end
      end
      local prot = { alg = "ES256", nonce = nonce, url = url }
      if use_jwk then
        prot.jwk = jwk
      else
        prot.kid = kid
      end
      local p64 = b64(cjson.encode(prot))
      local pl64 = payload == nil and "" or b64(cjson.encode(payload))
      local body = cjson.encode({ protected = p64, payload = pl64,
                                  signature = b64(key:sign(p64 .. "." .. pl64)) })
      nonce = nil
      local st, h, b = request("POST", url, body, "application/jose+json", accept)
      if not st then
        error(h, 0)
      end
      if st < 400 then
        return st, h, b
      end
      local p = cjson.decode(b or "")
      if not (type(p) == "table" and p.type == "urn:ietf:params:acme:error:badNonce" and
              attempt < 5) then
        error(problem(url, st, b), 0)
      end
    end
  end

  local function post_json(url, payload, what)
    local st, h, b = post(url, payload)
    local t = cjson.decode(b)
    if type(t) ~= "table" then
      error(str_format("%s: HTTP %d, not a JSON object", what, st), 0)
    end
    return t, h, st
  end

  local function account()
    if kid then
      return
    end
    local payload = { termsOfServiceAgreed = true }
    if #conf.contact > 0 then
      payload.contact = conf.contact
    end
    local st, h, b = post(directory().newAccount, payload, true)
    if (st ~= 200 and st ~= 201) or not h.location then
      error(problem("newAccount", st, b), 0)
    end
    kid = h.location
    log("info", "account %s (%s)", kid, st == 201 and "new" or "existing")
  end

  -- Polls url (POST-as-GET) until done(obj) or the deadline.
  local function poll(url, what, done)
    local deadline, wait = c.now() + POLL_DEADLINE, 0.2
    while true do
      local t, h = post_json(url, nil, what)
      if done(t) then
        return t
      end
      if c.now() > deadline then
        error(str_format("%s: still %s after %d s", what, tostring(t.status), POLL_DEADLINE), 0)
      end
      local ra = tonumber(h["retry-after"] or "")
      want(c.sleep(ra and math_min(ra, 10) or wait))
      wait = math_min(wait * 2, 2)
    end
  end

  local function challenge_error(az)
    for _, ch in ipairs(az.challenges or {}) do
      if type(ch) == "table" and type(ch.error) == "table" then
        return str_format("%s: %s", tostring(ch.error.type), tostring(ch.error.detail))
      end
    end
    return "no reason given"
  end

  local function authorize(url, name)
    local az = post_json(url, nil, "authorization " .. name)
    if az.status == "valid" then
      return -- reused: validated earlier
    end
    if az.status ~= "pending" then
      error(str_format("authorization for %s is %s", name, tostring(az.status)), 0)
    end
    local kind = conf.challenge
    local ch
    for _, x in ipairs(az.challenges or {}) do
      if type(x) == "table" and x.type == kind then
        ch = x
      end
    end
    if not ch or type(ch.token) ~= "string" or not ch.token:find("^[%w_%-]+$") then
      error(str_format("authorization for %s offers no usable %s challenge", name, kind), 0)
    end
    local keyauth = ch.token .. "." .. thumb
    local alpn_path = conf.storage .. "/" .. name .. ".alpn.pem"
    if kind == "tls-alpn-01" then
      -- RFC 8737: a self-signed certificate for name with the digest of
      -- the key authorization, served to handshakes that offer acme-tls/1;
      -- the workers load it when told (through the master)
      local k = c.key_new()
      local ok, err = c.write_file(alpn_path, c.alpn_cert(k, name, c.crypto.sha256(keyauth))
                                   .. k:pem())
      if not ok then
        error(err, 0)
      end
      c.notify("alpn:" .. name)
      want(c.sleep(0.3)) -- the workers read a few KiB from the disk
    else
      local ok, err = dict:set(ch.token, keyauth, TOKEN_TTL)
      if not ok then
        error("shared dict moongate.acme: " .. tostring(err), 0)
      end
    end
    local done, res = pcall(function()
      post_json(ch.url, {}, "challenge " .. name)
      return poll(url, "authorization " .. name, function(t)
        return t.status ~= "pending" and t.status ~= "processing"
      end)
    end)
    if kind == "tls-alpn-01" then
      os.remove(alpn_path)
      c.notify("alpn:" .. name) -- the workers drop it
    else
      dict:delete(ch.token)
    end
    if not done then
      error(res, 0)
    end
    if res.status ~= "valid" then
      error(str_format("%s for %s failed (%s): %s", kind, name, tostring(res.status),
                       challenge_error(res)), 0)
    end
  end

  -- Orders a certificate for name; returns its PEM chain and key PEM.
  local function obtain(name)
    account()
    local order, h, st = post_json(directory().newOrder,
                                   { identifiers = { { type = "dns", value = name } } },
                                   "newOrder " .. name)
    local url = h.location
    if st ~= 201 or not url or type(order.authorizations) ~= "table" then
      error(str_format("newOrder %s: HTTP %d without an order", name, st), 0)
    end
    log("info", "%s: order %s", name, url)
    for _, az in ipairs(order.authorizations) do
      authorize(az, name)
    end
    order = poll(url, "order " .. name, function(t) return t.status ~= "pending" end)
    if order.status ~= "ready" and order.status ~= "valid" then
      error(str_format("order for %s is %s", name, tostring(order.status)), 0)
    end
    local certkey = c.key_new()
    if order.status == "ready" then
      local csr = c.csr(certkey, { name })
      post_json(order.finalize, { csr = b64(csr) }, "finalize " .. name)
      order = poll(url, "order " .. name, function(t)
        return t.status ~= "processing" and t.status ~= "ready"
      end)
    end
    if order.status ~= "valid" or type(order.certificate) ~= "string" then
      error(str_format("order for %s ended %s, without a certificate", name,
                       tostring(order.status)), 0)
    end
    local _, _, pem = post(order.certificate, nil, false, "application/pem-certificate-chain")
    local info, err = c.cert_info(pem or "")
    if not info then
      error(str_format("the certificate for %s: %s", name, err), 0)
    end
    if str_sub(pem, -1) ~= "\n" then
      pem = pem .. "\n"
    end
    return pem .. certkey:pem(), info
  end

  -- the schedule -----------------------------------------------------------
  local state = {}
  local function renew_at(info)
    local life = math_max(info.not_after - info.not_before, 0)
    return info.not_before + life * conf.renew - math_random() * life / 30
  end
  local function show_time(t)
    return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
  end

  local known, on_demand = {}, 0
  local od = conf.on_demand
  -- as core/app/acme.c's mg_acme_allowed: exact, or "*.rest" for one label
  local function allowed(name)
    for _, a in ipairs(od and od.allow or {}) do
      if a == name then
        return true
      end
      if str_sub(a, 1, 2) == "*." then
        local rest = str_sub(a, 2)
        local label = str_sub(name, 1, #name - #rest)
        if #name > #rest and str_sub(name, -#rest) == rest and label:find("^[%l%d%-]+$") then
          return true
        end
      end
    end
    return false
  end
  local function track(name, why)
    local s = { name = name, fails = 0, next = c.now() }
    local pem = c.read_file(conf.storage .. "/" .. name .. ".pem")
    local info = pem and c.cert_info(pem)
    if info then
      s.next = renew_at(info)
      log("info", "%s: stored certificate (serial %s, until %s), renewal at %s", name,
          info.serial, show_time(info.not_after), show_time(s.next))
    else
      log("info", "%s: %s: ordering one", name, why)
    end
    state[#state + 1] = s
    known[name] = s
  end

  for _, name in ipairs(conf.names) do
    track(name, "no stored certificate")
  end
  if od then
    -- the on_demand names of earlier runs: kept renewed
    for _, f in ipairs(c.list_dir(conf.storage) or {}) do
      local name = f:match("^(.+)%.pem$")
      if name and not known[name] and allowed(name) and on_demand < od.max then
        on_demand = on_demand + 1
        track(name, "stored before, unreadable now")
      end
    end
  end
  want = function(names)
    for _, name in ipairs(names or {}) do
      -- a known name is ordered already, or retried on its own schedule
      local fresh = od and not known[name]
      if fresh and not allowed(name) then
        log("warn", "%s: asked for, but on_demand.allow does not cover it", name)
      elseif fresh and on_demand >= od.max then
        log("warn", "%s: on_demand.max (%d) names reached: not ordering it", name, od.max)
      elseif fresh then
        on_demand = on_demand + 1
        track(name, "seen in SNI (on_demand)")
      end
    end
  end

  while true do
    local now, soonest = c.now(), nil
    for _, s in ipairs(state) do
      if s.next <= now then
        local ok, pem, info = pcall(obtain, s.name)
        local err = pem
        if ok then
          local path = conf.storage .. "/" .. s.name .. ".pem"
          ok, err = c.write_file(path, pem)
          if ok then
            s.fails = 0
            s.next = renew_at(info)
            log("info", "%s: certificate stored in %s (serial %s, issuer %s, until %s), "
                .. "renewal at %s", s.name, path, info.serial, info.issuer,
                show_time(info.not_after), show_time(s.next))
            c.notify(s.name)
          end
        end
        if not ok then
          s.fails = s.fails + 1
          dir, nonce = nil, nil -- the server may have moved on; ask afresh
          local delay = math_min(conf.backoff.max, conf.backoff.min * 2 ^ (s.fails - 1))
          s.next = c.now() + delay
          log("error", "%s: %s: retrying in %d s (failure %d)", s.name, tostring(err),
              delay, s.fails)
        end
      end
      if not soonest or s.next < soonest then
        soonest = s.next
      end
    end
    want(c.sleep(math_max(0.05, math_min((soonest or now + MAX_SLEEP) - c.now(), MAX_SLEEP))))
  end
end

return _M
