-- TLS helpers for moongate's integration specs (LuaJIT).
--
--  * A test CA and certificates made with the `openssl` command into a
--    spec/out/ folder (nothing is committed): EC P-256 or RSA keys, SAN
--    names, any validity window (`openssl ca` takes start and end dates, so
--    expired and not-yet-valid certificates are real ones).
--  * https(): helpers.http over TLS (curl --cacert, --resolve for SNI).
--  * s_client(): `openssl s_client` with a request on stdin, bounded, and
--    what it printed parsed: the protocol, cipher, ALPN, "Reused", the
--    leaf's serial and names.
--  * py(): a python3 `ssl` script run with a deadline (raw TLS cases: a
--    truncated ClientHello, keep-alive across a reload).
local helpers = require "spec.helpers"

local fmt = string.format
local shq = helpers.shq

local _M = { _VERSION = "0.1.0" }

local function run(cmd)
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, "failed (" .. tostring(rc) .. "): " .. cmd .. "\n" .. out)
    return out
end

local function new_key(path, kind)
    if kind == "rsa" then
        run(fmt("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s", shq(path)))
    else
        run(fmt("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s",
            shq(path)))
    end
    return path
end
_M.new_key = new_key

--- A CA in dir (made once per dir and base): { dir, cert, key, cnf }.
--- base (default "ca") names its files: base.pem, base.key, base.cnf and
--- its database, so two CAs can share a folder.
function _M.ca(dir, name, base)
    base = base or "ca"
    local p = dir .. "/" .. base
    local ca = { dir = dir, cert = p .. ".pem", key = p .. ".key", cnf = p .. ".cnf" }
    helpers.mkdir_p(dir .. "/newcerts")
    if helpers.read_file(ca.cert) then
        return ca
    end
    new_key(ca.key, "ec")
    run(fmt("openssl req -x509 -new -key %s -subj %s -days 30 -out %s", shq(ca.key),
        shq("/CN=" .. (name or "moongate test CA")), shq(ca.cert)))
    helpers.write_file(p .. ".index.txt", "")
    helpers.write_file(p .. ".serial", "1000\n")
    helpers.write_file(ca.cnf, table.concat({
        "[ ca ]", "default_ca = test",
        "[ test ]",
        "dir = " .. dir,
        "database = " .. p .. ".index.txt",
        "new_certs_dir = " .. dir .. "/newcerts",
        "serial = " .. p .. ".serial",
        "default_md = sha256", "policy = any", "copy_extensions = copy",
        "unique_subject = no", "default_days = 30", "email_in_dn = no",
        "[ any ]", "commonName = supplied", "",
    }, "\n"))
    return ca
end

local seq = 0

--- A certificate from ca: opts.cn (default the first name), opts.names
--- (SAN DNS names; {} for none), opts.ip (SAN IP, default 127.0.0.1;
--- false: none), opts.key ("ec" or "rsa"), opts.start / opts.finish
--- (YYYYMMDDHHMMSSZ; default now - 1 day .. now + 30 days), opts.key_file
--- (reuse a key), opts.eku (extendedKeyUsage: "serverAuth", "clientAuth"),
--- opts.out (the files' path without .pem/.key; default a fresh name in the
--- CA's folder). Returns { cert, key, serial (hex, upper-case) }.
function _M.cert(ca, opts)
    opts = opts or {}
    seq = seq + 1
    local base = opts.out
        or fmt("%s/c%d-%s", ca.dir, seq, (opts.names and opts.names[1] or "x"):gsub("[^%w]", "_"))
    local key = opts.key_file or new_key(base .. ".key", opts.key)
    local san = {}
    for _, n in ipairs(opts.names or { "localhost" }) do
        san[#san + 1] = "DNS:" .. n
    end
    if opts.ip ~= false then
        san[#san + 1] = "IP:" .. (opts.ip or "127.0.0.1")
    end
    local cn = opts.cn or (opts.names and opts.names[1]) or "localhost"
    local csr = base .. ".csr"
    run(fmt("openssl req -new -key %s -subj %s %s %s -out %s", shq(key), shq("/CN=" .. cn),
        #san > 0 and ("-addext " .. shq("subjectAltName=" .. table.concat(san, ","))) or "",
        opts.eku and ("-addext " .. shq("extendedKeyUsage=" .. opts.eku)) or "", shq(csr)))
    local now = os.time()
    local start = opts.start or os.date("!%Y%m%d%H%M%SZ", now - 86400)
    local finish = opts.finish or os.date("!%Y%m%d%H%M%SZ", now + 30 * 86400)
    local cert = base .. ".pem"
    run(fmt("openssl ca -batch -notext -config %s -cert %s -keyfile %s -in %s -out %s "
        .. "-startdate %s -enddate %s", shq(ca.cnf), shq(ca.cert), shq(ca.key), shq(csr),
        shq(cert), start, finish))
    local serial = run(fmt("openssl x509 -noout -serial -in %s", shq(cert))):match("serial=(%x+)")
    return { cert = cert, key = key, serial = serial }
end

--- The certificate file with the CA appended (a chain).
function _M.chain(c, ca)
    local p = c.cert:gsub("%.pem$", "") .. ".chain.pem"
    helpers.write_file(p, helpers.read_file(c.cert) .. helpers.read_file(ca.cert))
    return p
end

--- helpers.http over TLS: the CA to trust, name (SNI and Host; resolved to
--- 127.0.0.1), and opts as helpers.http takes them (curl_args appended).
function _M.https(port, method, path, ca, name, opts)
    opts = opts or {}
    local o = {}
    for k, v in pairs(opts) do
        o[k] = v
    end
    o.scheme = "https"
    o.ip = name or "localhost"
    local args = { "--cacert", ca.cert, "--resolve", fmt("%s:%d:127.0.0.1", o.ip, port) }
    for _, a in ipairs(opts.curl_args or {}) do
        args[#args + 1] = a
    end
    o.curl_args = args
    return helpers.http(port, method, path, o)
end

--- openssl s_client against 127.0.0.1:port. opts: servername, alpn,
--- proto ("-tls1_2"...), args (list), request (bytes sent; default a
--- GET / with Connection: close), sess_out / sess_in (files), ca (a CA table:
--- verify against it), timeout (s, default 5). Returns a table: out (all of
--- it), version, cipher, alpn, reused, serial (the leaf's), verified, ok
--- (a handshake happened), body (what came after the handshake).
function _M.s_client(port, opts)
    opts = opts or {}
    local a = { "openssl s_client -connect", "127.0.0.1:" .. port, "-ign_eof" }
    if opts.servername then
        a[#a + 1] = "-servername " .. shq(opts.servername)
    else
        a[#a + 1] = "-noservername"
    end
    if opts.alpn then a[#a + 1] = "-alpn " .. shq(opts.alpn) end
    if opts.proto then a[#a + 1] = opts.proto end
    if opts.sess_out then a[#a + 1] = "-sess_out " .. shq(opts.sess_out) end
    if opts.sess_in then a[#a + 1] = "-sess_in " .. shq(opts.sess_in) end
    if opts.ca then a[#a + 1] = "-CAfile " .. shq(opts.ca.cert) .. " -verify_return_error" end
    for _, x in ipairs(opts.args or {}) do a[#a + 1] = x end
    local req = opts.request or "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    local reqf = os.tmpname()
    helpers.write_file(reqf, req)
    local out = helpers.sh(fmt("timeout -s KILL %d %s < %s 2>&1", opts.timeout or 5,
        table.concat(a, " "), shq(reqf)))
    os.remove(reqf)
    local r = { out = out }
    r.version, r.cipher = out:match("New, (TLSv[%d%.]+), Cipher is (%S+)")
    if not r.version then
        r.version, r.cipher = out:match("Reused, (TLSv[%d%.]+), Cipher is (%S+)")
        r.reused = r.version ~= nil
    else
        r.reused = false
    end
    r.ok = r.version ~= nil
    r.alpn = out:match("ALPN protocol: (%S+)")
    r.verified = out:match("Verify return code: 0 %(ok%)") ~= nil
    local pem = out:match("(%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-)")
    if pem then
        local f = os.tmpname()
        helpers.write_file(f, pem .. "\n")
        local info = helpers.sh(fmt("openssl x509 -noout -serial -subject -ext subjectAltName "
            .. "-text -in %s", shq(f)))
        os.remove(f)
        r.serial = info:match("serial=(%x+)")
        r.subject = info:match("subject=([^\n]*)")
        r.key_type = info:match("Public Key Algorithm: (%S+)")
    end
    r.body = out:match("\r\n\r\n(.*)$")
    return r
end

--- Runs a python3 script (source) with a deadline; returns output, code.
function _M.py(src, args, timeout)
    local base = os.tmpname() -- made by os.tmpname: removed below with the .py
    local f = base .. ".py"
    helpers.write_file(f, src)
    local a = {}
    for _, x in ipairs(args or {}) do a[#a + 1] = shq(x) end
    local out, rc = helpers.sh(fmt("timeout -s KILL %d %s %s %s", timeout or 20, helpers.python,
        shq(f), table.concat(a, " ")))
    os.remove(f)
    os.remove(base)
    return out, rc
end

return _M
