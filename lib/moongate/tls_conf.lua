-- moongate.tls_conf: the `tls` table of the conf file and of each entry
-- of `servers` (docs/configuration.md, "TLS"), checked and normalized for
-- core/app/tls_ctx.c, and the environment's MOONGATE_TLS_LISTEN,
-- MOONGATE_TLS_CERT and MOONGATE_TLS_KEY (main conf only).
--
-- The certificate, key and CA files are read here, through io.open, which
-- during a load reads the generation's snapshot (core/app/snap.c): the
-- workers build their contexts from exactly the bytes the master read. What
-- OpenSSL alone can judge (a key that does not match, an expired
-- certificate, an unknown cipher) is checked by tls_ctx.c, which prefixes
-- its reason with the `at` strings written here ("file:line: label").
--
-- Errors are raised as moongate.check LoadErrors ("file:line: reason").
-- Pure Lua, no moongate APIs.

local type = type
local pairs = pairs
local ipairs = ipairs
local io_open = io.open
local math_floor = math.floor
local str_format = string.format

local check = require "moongate.check"
local tls_extras = require "moongate.tls_extras"
local fail = check.fail
local bad = check.bad
local at = check.at
local locate = check.locate
local join = check.join
local show_key = check.show_key
local sorted_keys = check.sorted_keys
local string_list_reason = check.string_list_reason

local _M = { _VERSION = "0.1.0" }

-- The defaults (docs/configuration.md says why): forward secrecy (ECDHE)
-- and AEAD ciphers only, AES-GCM first (hardware AES on servers and most
-- clients), ChaCha20-Poly1305 for clients without it; the TLS 1.3 suites
-- with AES-128 first (as fast as it gets, and no weaker in practice).
_M.CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
  .. "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
  .. "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
_M.CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_M.PROTOCOLS = { "TLSv1.2", "TLSv1.3" }
-- seconds between rotations of the session-ticket keys; a ticket is good
-- for two periods (the two previous keys still decrypt)
_M.TICKET_ROTATE = 3600
local MAX_ROTATE = 604800

local FIELDS = {
  listen = true, certificates = true, protocols = true, ciphers = true, ciphersuites = true,
  client_certificate = true, session_tickets = true, ticket_rotate = true, hsts = true,
  http2 = true,
}
local CERT_FIELDS = { cert = true, key = true, ocsp = true }
local CLIENT_FIELDS = { ca = true, verify = true }


-- "file:line: label", the prefix tls_ctx.c puts before its reasons.
local function at_text(w, value)
  if w.env then
    return "env: " .. w.label
  end
  return str_format("%s:%d: %s", w.path, locate(w.text, w.keys, value), w.label)
end


local function env_where(var)
  return { path = "env", keys = {}, label = var, env = true }
end


-- The bytes of path, or a LoadError at w: "label: path: reason".
local function read_bytes(w, path)
  local f, err = io_open(path, "rb")
  if not f then
    bad(w, path, "%s", err or (path .. ": cannot open"))
  end
  local data = f:read("*a")
  f:close()
  if type(data) ~= "string" then
    bad(w, path, "%s: cannot read", path)
  end
  return data
end


local function unknown_keys(w, t, known)
  for _, k in ipairs(sorted_keys(t)) do
    if not known[k] then
      bad(w, type(k) == "string" and k or nil, "unknown field %s", show_key(k))
    end
  end
end


local function opt_string(w, t, k)
  local v = t[k]
  if v ~= nil and type(v) ~= "string" then
    bad(at(w, k), nil, "expected a string, got %s", type(v))
  end
  if v == "" then
    bad(at(w, k), nil, "must not be empty")
  end
  return v
end


local function norm_protocols(w, v)
  if v == nil then
    return { _M.PROTOCOLS[1], _M.PROTOCOLS[2] }
  end
  local list, err = string_list_reason(v)
  if not list then
    bad(w, nil, "%s", err)
  end
  if #list == 0 then
    bad(w, nil, "at least one of \"TLSv1.2\", \"TLSv1.3\" is required")
  end
  local seen = {}
  for _, p in ipairs(list) do
    if p ~= "TLSv1.2" and p ~= "TLSv1.3" then
      bad(w, p, "'%s' is not supported (only \"TLSv1.2\" and \"TLSv1.3\")", p)
    end
    if seen[p] then
      bad(w, p, "'%s' is listed twice", p)
    end
    seen[p] = true
  end
  return list
end


local function norm_certificates(w, v, root)
  if type(v) ~= "table" then
    bad(w, nil, "expected a list of { cert = \"file.pem\", key = \"file.key\" }, got %s", type(v))
  end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      bad(w, nil, "expected a list, found key %s", show_key(k))
    end
  end
  if n == 0 then
    bad(w, nil, "at least one certificate is required")
  end
  local out = {}
  for i = 1, n do
    local e = v[i]
    local ew = { path = w.path, text = w.text, keys = w.keys, label = w.label .. "[" .. i .. "]" }
    if type(e) ~= "table" then
      bad(ew, nil, "expected a table { cert = \"file.pem\", key = \"file.key\" }, got %s", type(e))
    end
    unknown_keys(ew, e, CERT_FIELDS)
    for _, k in ipairs({ "cert", "key" }) do
      if type(e[k]) ~= "string" or e[k] == "" then
        bad(ew, nil, "%s: expected the path of a PEM file, got %s", k,
            e[k] == "" and "an empty string" or type(e[k]))
      end
    end
    local ocsp = opt_string(ew, e, "ocsp")
    local c = {
      cert = join(root, e.cert), key = join(root, e.key), at = at_text(ew, e.cert),
    }
    local fw = { path = ew.path, text = ew.text, keys = ew.keys, label = ew.label .. ".cert" }
    c.cert_pem = read_bytes(fw, c.cert)
    fw.label = ew.label .. ".key"
    c.key_pem = read_bytes(fw, c.key)
    if ocsp then
      c.ocsp = join(root, ocsp)
      fw.label = ew.label .. ".ocsp"
      c.ocsp_der = read_bytes(fw, c.ocsp)
    end
    out[i] = c
  end
  return out
end


local function norm_client(w, v, root)
  if v == nil or v == false then
    return nil
  end
  if type(v) ~= "table" then
    bad(w, nil, "expected a table { ca = \"ca.pem\", verify = \"required\" }, got %s", type(v))
  end
  unknown_keys(w, v, CLIENT_FIELDS)
  if type(v.ca) ~= "string" or v.ca == "" then
    bad(at(w, "ca"), nil, "expected the path of a PEM file of CA certificates, got %s",
        v.ca == "" and "an empty string" or type(v.ca))
  end
  local verify = v.verify == nil and "required" or v.verify
  if verify ~= "required" and verify ~= "optional" then
    bad(at(w, "verify"), type(verify) == "string" and verify or nil,
        "expected \"required\" or \"optional\", got %s", check.show_value(verify))
  end
  local ca = join(root, v.ca)
  return { ca = ca, verify = verify, ca_pem = read_bytes(at(w, "ca"), ca) }
end


--- Checks and normalizes one tls table.
-- @param raw the table as written (nil: none)
-- @param w where it is (moongate.check: { path, text, keys, label })
-- @param opts root (the project root), norm_listen and split_list (the
--   loader's), main (the main conf: ticket_rotate and the environment
--   apply), env (variables), ticket_rotate (the main conf's, for servers),
--   http2 (the conf's `http2`: the default of tls.http2)
-- @return the normalized table, or nil when there is no TLS
function _M.norm(raw, w, opts)
  local env = opts.main and opts.env or {}
  local function env_set(var)
    local v = env[var]
    return type(v) == "string" and v ~= "" and v or nil
  end
  local ev_listen = env_set("MOONGATE_TLS_LISTEN")
  local ev_cert, ev_key = env_set("MOONGATE_TLS_CERT"), env_set("MOONGATE_TLS_KEY")

  if raw ~= nil and type(raw) ~= "table" then
    bad(w, nil, "expected a table, got %s", type(raw))
  end
  raw = raw or {}
  unknown_keys(w, raw, FIELDS)

  local rotate = opts.ticket_rotate or _M.TICKET_ROTATE
  if raw.ticket_rotate ~= nil then
    local rv = raw.ticket_rotate
    if not opts.main then
      bad(at(w, "ticket_rotate"), nil,
          "the ticket keys are shared by all listeners: set it in the main conf's tls")
    end
    if type(rv) ~= "number" or rv ~= math_floor(rv) or rv < 1 or rv > MAX_ROTATE then
      bad(at(w, "ticket_rotate"), nil, "expected whole seconds from 1 to %d, got %s",
          MAX_ROTATE, check.show_value(rv))
    end
    rotate = rv
  end

  local out = {
    at = at_text(w),
    sid = w.label, -- "tls", "servers.<name>.tls": the session id context (tls_ctx.c)
    protocols = norm_protocols(at(w, "protocols"), raw.protocols),
    ciphers = opt_string(w, raw, "ciphers") or _M.CIPHERS,
    ciphersuites = opt_string(w, raw, "ciphersuites") or _M.CIPHERSUITES,
    hsts = tls_extras.norm_hsts(at(w, "hsts"), raw.hsts),
    ticket_rotate = rotate,
    ticket_lifetime = 2 * rotate,
  }
  local st = raw.session_tickets
  if st ~= nil and type(st) ~= "boolean" then
    bad(at(w, "session_tickets"), nil, "expected a boolean, got %s", type(st))
  end
  out.session_tickets = st ~= false
  -- ALPN "h2" before "http/1.1" (tls_ctx.c); the conf's `http2` by default
  local h2 = raw.http2
  if h2 ~= nil and type(h2) ~= "boolean" then
    bad(at(w, "http2"), nil, "expected a boolean, got %s", type(h2))
  end
  if h2 == nil then
    h2 = opts.http2 or false
  end
  out.http2 = h2

  -- listen: the file's, or MOONGATE_TLS_LISTEN's
  if ev_listen then
    local list, reason = opts.norm_listen(opts.split_list(ev_listen))
    if not list then
      fail("env", 0, "MOONGATE_TLS_LISTEN: %s", reason)
    end
    out.listen = list
  elseif raw.listen ~= nil then
    local list, reason, hint = opts.norm_listen(raw.listen)
    if not list then
      bad(at(w, "listen"), hint, "%s", reason)
    end
    out.listen = list
  end

  -- certificates: the file's, or the one of MOONGATE_TLS_CERT + _KEY
  if ev_cert or ev_key then
    if not (ev_cert and ev_key) then
      fail("env", 0, "%s is set but %s is not: both are needed",
           ev_cert and "MOONGATE_TLS_CERT" or "MOONGATE_TLS_KEY",
           ev_cert and "MOONGATE_TLS_KEY" or "MOONGATE_TLS_CERT")
    end
    out.certificates = { {
      cert = ev_cert, key = ev_key, at = "env: MOONGATE_TLS_CERT",
      cert_pem = read_bytes(env_where("MOONGATE_TLS_CERT"), ev_cert),
      key_pem = read_bytes(env_where("MOONGATE_TLS_KEY"), ev_key),
    } }
  elseif raw.certificates ~= nil then
    out.certificates = norm_certificates(at(w, "certificates"), raw.certificates, opts.root)
  end
  out.client_certificate = norm_client(at(w, "client_certificate"), raw.client_certificate,
                                       opts.root)

  if out.listen and not out.certificates then
    if ev_listen then
      fail("env", 0, "MOONGATE_TLS_LISTEN: no certificate: give tls.certificates in %s, or "
           .. "MOONGATE_TLS_CERT and MOONGATE_TLS_KEY", w.path)
    end
    bad(at(w, "certificates"), nil, "at least one certificate is required with tls.listen")
  end
  if out.certificates and not out.listen then
    if ev_cert then
      fail("env", 0, "MOONGATE_TLS_CERT: no TLS listener: set MOONGATE_TLS_LISTEN (e.g. "
           .. "0.0.0.0:443) or tls.listen in %s", w.path)
    end
    bad(at(w, "listen"), nil, "a TLS listen address is required with tls.certificates")
  end
  if not out.listen then
    -- settings only (e.g. the main conf's ticket_rotate): no listener
    out.certificates, out.client_certificate = nil, nil
  end
  return out
end


--- Refuses a TLS listen address already taken (taken: "host:port" ->
-- the owner's label); records this table's. w: where the tls table is.
function _M.claim(tls, w, taken, owner)
  for _, a in ipairs(tls and tls.listen or {}) do
    local key = a.host .. ":" .. a.port
    if taken[key] then
      bad(at(w, "listen"), nil, "%s is already used by %s", key, taken[key])
    end
    taken[key] = owner
  end
end


return _M
