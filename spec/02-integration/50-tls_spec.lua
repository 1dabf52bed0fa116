-- TLS listeners (docs/configuration.md, "TLS"): HTTPS with the real binary
-- against curl, openssl s_client and python3 ssl; certificates made by
-- `openssl` into spec/out/ (spec/tls_helpers.lua). SNI (exact, wildcard,
-- default), ECDSA and RSA side by side, TLS 1.2/1.3 only, ALPN, req.scheme
-- and req.tls, X-Forwarded-Proto, the access log's tls object, what works on
-- a plain listener (keep-alive, pipelining, bodies, limits, timeouts), bad
-- ClientHellos, reloads that swap or refuse certificates, the environment
-- overrides with the shipped routes, client certificates, and session
-- resumption across workers with rotated ticket keys.
local helpers = require "spec.helpers"
local tls = require "spec.tls_helpers"

-- Python (after `import ssl`): `hello`, the bytes of a real ClientHello for
-- a.test, made in memory (no connection), for the raw-TLS cases below.
local CLIENT_HELLO_PY = [[
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, outb, server_hostname="a.test")
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outb.read()
]]
local cjson = require "cjson"

local fmt = string.format

local ROUTES = [[
local moongate = require "moongate"
return {
  { path = "/info", handler = function(req)
      return 200, { scheme = req.scheme, tls = req.tls or false, worker = moongate.worker_id }
  end },
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { path = "/echo", method = "POST", body_size = 4194304,
    handler = function(req) return 200, req:body() end },
  { prefix = "/up", upstream = "up", strip_prefix = true },
  { path = "/keyed", plugins = { ["key-auth"] = { keys = { alice = "k-123" } } },
    handler = function(req, res) return 200, "keyed\n" end },
}
]]

-- The certificates of the main describe: the default (localhost, a.test,
-- 127.0.0.1), a wildcard, and b.test twice (ECDSA and RSA).
local function make_certs(dir)
    local ca = tls.ca(dir)
    return {
        ca = ca,
        a = tls.cert(ca, { names = { "localhost", "a.test" } }),
        wild = tls.cert(ca, { names = { "*.w.test" } }),
        b_ec = tls.cert(ca, { names = { "b.test" }, ip = false }),
        b_rsa = tls.cert(ca, { names = { "b.test" }, ip = false, key = "rsa" }),
    }
end

local function tls_conf(c, extra)
    return fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  timeouts = { header = 2, idle = 3 },
  limits = { header_size = 4096 },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = {
      { cert = %q, key = %q },
      { cert = %q, key = %q },
      { cert = %q, key = %q },
      { cert = %q, key = %q },
    },%s
  },
}
]], c.a.cert, c.a.key, c.wild.cert, c.wild.key, c.b_rsa.cert, c.b_rsa.key, c.b_ec.cert,
        c.b_ec.key, extra or "")
end

local function access_lines(mg)
    local out = {}
    for line in mg:log():gmatch("[^\n]+") do
        if line:find('"type":"access"', 1, true) then
            local ok, t = pcall(cjson.decode, line)
            if ok then
                out[#out + 1] = t
            end
        end
    end
    return out
end

describe("TLS listeners", function()
    local mg, up, certs, tport

    lazy_setup(function()
        certs = make_certs(helpers.tmpdir("tls-certs"))
        up = helpers.start_upstream()
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls", conf = tls_conf(certs), routes = ROUTES,
            upstream = up, vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    it("serves routes over HTTPS with req.scheme, req.tls and the access log's tls", function()
        local st, _, body = tls.https(tport, "GET", "/info", certs.ca, "a.test")
        assert.equal(200, st)
        local info = cjson.decode(body)
        assert.equal("https", info.scheme)
        assert.equal("TLSv1.3", info.tls.version)
        assert.truthy(info.tls.cipher:match("^TLS_"))
        assert.equal("a.test", info.tls.sni)
        assert.is_nil(info.tls.client_subject)
        -- the plain listener of the same conf: http, no tls
        local st2, _, body2 = helpers.http(mg.port, "GET", "/info")
        assert.equal(200, st2)
        local plain = cjson.decode(body2)
        assert.equal("http", plain.scheme)
        assert.equal(false, plain.tls)
        -- the access log: a tls object on the TLS line only
        local line = helpers.wait_until(function()
            for _, l in ipairs(access_lines(mg)) do
                if l.tls and l.tls.sni == "a.test" then return l end
            end
        end, 3)
        assert.truthy(line, mg:log():sub(-2000))
        assert.equal("TLSv1.3", line.tls.version)
        assert.equal(info.tls.cipher, line.tls.cipher)
        assert.truthy(helpers.wait_until(function()
            for _, l in ipairs(access_lines(mg)) do
                if l.path == "/info" and l.tls == nil then return true end
            end
        end, 3), "no plain /info line without tls")
    end)

    it("sets X-Forwarded-Proto https through the proxy (http on the plain listener)", function()
        local st, _, body = tls.https(tport, "GET", "/up/echo", certs.ca, "localhost",
            { headers = { ["X-Forwarded-Proto"] = "http" } })
        assert.equal(200, st)
        assert.equal("https", cjson.decode(body).headers["x-forwarded-proto"])
        local st2, _, body2 = helpers.http(mg.port, "GET", "/up/echo",
            { headers = { ["X-Forwarded-Proto"] = "https" } })
        assert.equal(200, st2)
        assert.equal("http", cjson.decode(body2).headers["x-forwarded-proto"])
    end)

    it("picks the certificate by SNI: exact, wildcard, the default otherwise", function()
        local cases = {
            { "a.test", certs.a.serial }, { "LOCALHOST", certs.a.serial },
            { "x.w.test", certs.wild.serial }, { "deep.x.w.test", certs.a.serial },
            { "w.test", certs.a.serial }, { "unknown.example", certs.a.serial },
        }
        for _, c in ipairs(cases) do
            local r = tls.s_client(tport, { servername = c[1] })
            assert.is_true(r.ok, r.out)
            assert.equal(c[2], r.serial, c[1])
        end
        local r = tls.s_client(tport, {}) -- no SNI at all
        assert.equal(certs.a.serial, r.serial)
        -- and curl verifies the wildcard against the CA
        local st, _, body = tls.https(tport, "GET", "/info", certs.ca, "x.w.test")
        assert.equal(200, st)
        assert.equal("x.w.test", cjson.decode(body).tls.sni)
    end)

    it("serves an ECDSA and an RSA certificate for one name side by side", function()
        local ec = tls.s_client(tport, { servername = "b.test", proto = "-tls1_2",
            args = { "-cipher ECDHE-ECDSA-AES128-GCM-SHA256" } })
        assert.is_true(ec.ok, ec.out)
        assert.equal(certs.b_ec.serial, ec.serial)
        local rsa = tls.s_client(tport, { servername = "b.test", proto = "-tls1_2",
            args = { "-cipher ECDHE-RSA-AES128-GCM-SHA256" } })
        assert.is_true(rsa.ok, rsa.out)
        assert.equal(certs.b_rsa.serial, rsa.serial)
        -- TLS 1.3: the client's signature algorithms choose
        local rsa13 = tls.s_client(tport, { servername = "b.test",
            args = { "-sigalgs rsa_pss_rsae_sha256" } })
        assert.equal(certs.b_rsa.serial, rsa13.serial)
        local ec13 = tls.s_client(tport, { servername = "b.test",
            args = { "-sigalgs ecdsa_secp256r1_sha256" } })
        assert.equal(certs.b_ec.serial, ec13.serial)
    end)

    it("speaks TLS 1.2 and 1.3 only and offers http/1.1 by ALPN", function()
        assert.equal("TLSv1.2", tls.s_client(tport, { proto = "-tls1_2" }).version)
        assert.equal("TLSv1.3", tls.s_client(tport, { proto = "-tls1_3" }).version)
        local old = tls.s_client(tport, { proto = "-tls1_1", args = { "-cipher DEFAULT@SECLEVEL=0" } })
        assert.is_false(old.ok, old.out)
        local r = tls.s_client(tport, { alpn = "h2,http/1.1" })
        assert.equal("http/1.1", r.alpn)
        local none = tls.s_client(tport, { alpn = "h2" })
        assert.is_true(none.ok)
        assert.is_nil(none.alpn)
        assert.truthy(none.out:match("No ALPN negotiated"))
    end)

    it("keeps alive, pipelines, takes bodies and streams big responses", function()
        local out, rc = tls.py([[
import hashlib, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="a.test")
def read_response(f):
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = b""
        while True:
            n = int(f.readline().strip(), 16)
            chunk = f.read(n + 2)
            if n == 0:
                break
            body += chunk[:-2]
    return status.split()[1], body
f = s.makefile("rb")
# three pipelined requests in one write, answered in order
s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
for i in range(3):
    st, body = read_response(f)
    assert st == b"200" and body == b"hello\n", (st, body)
# a 3 MiB body each way on the same connection
data = bytes(range(256)) * 12288
s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
st, body = read_response(f)
assert st == b"200" and body == data, (st, len(body))
s.sendall(b"GET /up/bytes/5000000 HTTP/1.1\r\nHost: a\r\n\r\n")
st, body = read_response(f)
assert st == b"200" and len(body) == 5000000, (st, len(body))
print("ok", hashlib.sha256(body).hexdigest())
]], { tostring(tport), certs.ca.cert }, 30)
        assert.equal(0, rc, out)
        local sha = out:match("ok (%x+)")
        local st, _, body = helpers.http(up.port, "GET", "/bytes/5000000?sha=1")
        assert.equal(200, st)
        assert.equal(cjson.decode(body).sha256, sha)
    end)

    it("applies the limits over TLS (431, 413)", function()
        local st = tls.https(tport, "GET", "/hello", certs.ca, "a.test",
            { headers = { ["X-Big"] = string.rep("x", 5000) } })
        assert.equal(431, st)
        local st2 = tls.https(tport, "POST", "/hello", certs.ca, "a.test",
            { body = string.rep("x", 2 * 1048576) })
        assert.equal(413, st2)
    end)

    it("runs plugins over TLS (key-auth)", function()
        assert.equal(401, (tls.https(tport, "GET", "/keyed", certs.ca, "a.test")))
        local st, _, body = tls.https(tport, "GET", "/keyed", certs.ca, "a.test",
            { headers = { apikey = "k-123" } })
        assert.equal(200, st)
        assert.equal("keyed\n", body)
    end)

    it("closes an idle keep-alive TLS connection at the idle timeout (3 s)", function()
        local out, rc = tls.py([[
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="a.test")
s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
got = b""
while not got.endswith(b"hello\n"):
    got += s.recv(4096)
t0 = time.time()
try:
    d = s.recv(100)
except (ConnectionResetError, ssl.SSLError):
    d = b""
print("closed after %.2f (%r)" % (time.time() - t0, d))
]], { tostring(tport), certs.ca.cert }, 20)
        assert.equal(0, rc, out)
        local t = tonumber(out:match("closed after ([%d%.]+)"))
        assert.truthy(t and t >= 2.5 and t < 6, out)
    end)

    it("cuts a client that stalls mid-handshake at the header timeout (2 s)", function()
        local out, rc = tls.py([[
import socket, ssl, sys, time
port = int(sys.argv[1])
]] .. CLIENT_HELLO_PY .. [[
s = socket.create_connection(("127.0.0.1", port))
s.sendall(hello[:len(hello) // 2])   # half a ClientHello, then nothing
t0 = time.time()
s.settimeout(10)
try:
    data = s.recv(100)
except ConnectionResetError:
    data = b""
print("closed after %.2f with %d bytes" % (time.time() - t0, len(data)))
]], { tostring(tport) }, 20)
        assert.equal(0, rc, out)
        local t = tonumber(out:match("closed after ([%d%.]+)"))
        assert.truthy(t, out)
        assert.truthy(t >= 1.5 and t < 5, out)
    end)

    it("closes and counts garbage and truncated ClientHellos, and goes on serving", function()
        local workers = mg:workers()
        local out, rc = tls.py([[
import os, socket, ssl, sys
port = int(sys.argv[1])
]] .. CLIENT_HELLO_PY .. [[
cases = {
    "plain http": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "garbage": os.urandom(600),
    "truncated": hello[:60],
    "bad length": hello[:3] + b"\xff\xff" + hello[5:],
    "bad body": hello[:5] + b"\x01\x00\xff\xff" + os.urandom(300),
}
for name, data in sorted(cases.items()):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # closed already
    got, how = b"", "closed"
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except ConnectionResetError:
        how = "closed"
    except socket.timeout:
        how = "timeout"
    print(name, how, len(got), got[:1].hex())
    s.close()
]], { tostring(tport) }, 30)
        assert.equal(0, rc, out)
        local n = 0
        for _ in out:gmatch("closed") do n = n + 1 end
        assert.equal(5, n, out)
        assert.falsy(out:match("timeout"), out)
        -- counted and logged (rate-limited: at least one line)
        assert.truthy(helpers.wait_until(function()
            return mg:log():match("tls: %d+ failed handshakes")
        end, 3), mg:log():sub(-2000))
        -- no worker died, and both listeners serve
        assert.same(workers, mg:workers())
        assert.equal(200, (tls.https(tport, "GET", "/hello", certs.ca, "a.test")))
        assert.equal(200, (helpers.http(mg.port, "GET", "/hello")))
        assert.falsy(mg:log():match("killed by signal"))
    end)

    it("-t reports the TLS listeners", function()
        local out, rc = helpers.sh(fmt("%s -t -c %s", helpers.shq(helpers.bin),
            helpers.shq(mg.conf_path)))
        assert.equal(0, rc, out)
        assert.truthy(out:match("2 listeners %(1 TLS%)"), out)
        assert.truthy(out:match("TLS listener 127%.0%.0%.1:" .. tport), out)
    end)
end)

describe("TLS certificates on reload", function()
    local mg, ca, dir, tport, cur

    local function conf(c)
        return fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  tls = { listen = "127.0.0.1:$TLSPORT", certificates = { { cert = %q, key = %q } } },
}
]], c.cert, c.key)
    end

    local function served()
        return tls.s_client(tport, { servername = "localhost" }).serial
    end

    -- SIGHUP with conf(c); returns the log line that ended the reload
    local function reload_to(c)
        local log0 = #mg:log()
        mg:write_conf(conf(c))
        mg:signal("HUP")
        local line = helpers.wait_until(function()
            local tail = mg:log():sub(log0 + 1)
            return tail:match("reload refused[^\n]*") or tail:match("[^\n]*serving on %d+ workers")
        end, 10)
        assert(line, "the reload did not end:\n" .. mg:log():sub(-2000))
        return line
    end

    lazy_setup(function()
        dir = helpers.tmpdir("tls-reload")
        ca = tls.ca(dir)
        cur = tls.cert(ca)
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-reload", conf = conf(cur),
            vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    it("serves a certificate swapped on SIGHUP at the next handshake; an open connection "
        .. "keeps working", function()
        assert.equal(cur.serial, served())
        -- a keep-alive connection across the reload (python, in the background)
        local h = helpers.spawn(fmt("timeout -s KILL 20 %s -c %s %d %s %s %s", helpers.python,
            helpers.shq([[
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
f = s.makefile("rb")
def get():
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    st = f.readline()
    n = 0
    while True:
        l = f.readline()
        if l == b"\r\n":
            break
        if l.lower().startswith(b"content-length"):
            n = int(l.split(b":")[1])
    f.read(n)
    return st.split()[1].decode()
print("before", get(), s.getpeercert()["serialNumber"], flush=True)
open(sys.argv[4], "w").close()  # connected and answered: the spec reloads now
while not __import__("os").path.exists(sys.argv[3]):
    time.sleep(0.05)
print("after", get(), flush=True)
]]), tport, helpers.shq(ca.cert), helpers.shq(dir .. "/reloaded"),
            helpers.shq(dir .. "/connected")))
        -- the connection is made before the reload, or the test proves nothing
        assert.truthy(helpers.wait_until(function() return helpers.read_file(dir .. "/connected") end, 15),
            "the keep-alive client did not connect")
        local new = tls.cert(ca)
        local line = reload_to(new)
        assert.truthy(line:match("serving on 2 workers"), line)
        assert.equal(new.serial, served())
        helpers.write_file(dir .. "/reloaded", "1")
        local out = h:wait(15)
        assert.truthy(out:match("before 200 " .. cur.serial), out)
        assert.truthy(out:match("after 200"), out)
        cur = new
    end)

    it("says that a reload cannot add a TLS listener, nor take one's certificates", function()
        local other = helpers.free_port()
        local log0 = #mg:log()
        mg:write_conf(conf(cur):gsub("%$TLSPORT", tostring(other)))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            local tail = mg:log():sub(log0 + 1)
            return tail:match("127%.0%.0%.1:" .. other .. " %(TLS%) is not listened on")
                and tail:match("TLS listener 127%.0%.0%.1:" .. tport .. " has no certificates")
                and tail:match("serving on 2 workers")
        end, 10), mg:log():sub(log0 + 1))
        -- its new connections are closed; a reload back serves again
        local r = tls.s_client(tport, { servername = "localhost" })
        assert.is_false(r.ok, r.out)
        assert.truthy(reload_to(cur):match("serving on 2 workers"))
        assert.equal(cur.serial, served())
    end)

    it("refuses a broken certificate with file: reason and keeps the old one", function()
        local other = tls.cert(ca)
        local cases = {
            { { cert = dir .. "/missing.pem", key = cur.key }, "missing%.pem: No such file" },
            { { cert = cur.cert, key = other.key }, "the key does not match the certificate" },
            { tls.cert(ca, { start = "20200101000000Z", finish = "20200201000000Z" }),
              "the certificate expired on" },
            { tls.cert(ca, { start = "20990101000000Z", finish = "20990201000000Z" }),
              "the certificate is not valid before" },
        }
        local garbage = dir .. "/garbage.pem"
        helpers.write_file(garbage, "not a certificate\n")
        cases[#cases + 1] = { { cert = garbage, key = cur.key }, "garbage%.pem: no PEM certificate" }
        for _, c in ipairs(cases) do
            local line = reload_to(c[1])
            assert.truthy(line:match("reload refused[^\n]*" .. c[2]), c[2] .. "\n" .. line)
            assert.equal(cur.serial, served())
        end
        -- and a good one after them still goes in
        local good = tls.cert(ca)
        assert.truthy(reload_to(good):match("serving on 2 workers"))
        assert.equal(good.serial, served())
    end)
end)

describe("TLS conf errors", function()
    local dir, ca, c

    lazy_setup(function()
        dir = helpers.tmpdir("tls-conf")
        ca = tls.ca(dir)
        c = tls.cert(ca)
        helpers.mkdir_p(dir .. "/conf")
        helpers.write_file(dir .. "/scripts.lua", "return {}\n")
    end)

    local function check(tls_src, env)
        helpers.write_file(dir .. "/conf/moongate.lua", fmt([[
return {
  listen = "127.0.0.1:18080",
  routes = "scripts.lua",
  tls = %s,
}
]], tls_src))
        local e = {}
        for k, v in pairs(env or {}) do e[#e + 1] = helpers.shq(k .. "=" .. v) end
        return helpers.sh(fmt("cd %s && env -u MOONGATE_TLS_LISTEN %s %s -t -c conf/moongate.lua",
            helpers.shq(dir), table.concat(e, " "), helpers.shq(helpers.bin)))
    end

    it("says which field is wrong, at its line", function()
        local cases = {
            { fmt('{ listen = "127.0.0.1:18443", certificates = { { cert = %q } } }', c.cert),
              "conf/moongate%.lua:4: tls%.certificates%[1%]: key: expected the path of a PEM file" },
            { fmt('{ certificates = { { cert = %q, key = %q } } }', c.cert, c.key),
              "tls%.listen: a TLS listen address is required" },
            { '{ listen = "127.0.0.1:18443" }', "tls%.certificates: at least one certificate" },
            { fmt('{ listen = "127.0.0.1:18443", protocols = { "TLSv1.1" }, '
                .. 'certificates = { { cert = %q, key = %q } } }', c.cert, c.key),
              "tls%.protocols: 'TLSv1%.1' is not supported" },
            { fmt('{ listen = "127.0.0.1:18080", certificates = { { cert = %q, key = %q } } }',
                c.cert, c.key), "tls%.listen: 127%.0%.0%.1:18080 is already used by listen" },
            { fmt('{ listen = "127.0.0.1:18443", sni = true, certificates = { { cert = %q, key = %q } } }',
                c.cert, c.key), "tls: unknown field 'sni'" },
            { fmt('{ listen = "127.0.0.1:18443", ciphers = "NOPE", certificates = { { cert = %q, key = %q } } }',
                c.cert, c.key), "tls%.ciphers: no cipher of 'NOPE'" },
            { fmt('{ listen = "127.0.0.1:18443", client_certificate = { ca = %q, verify = "maybe" }, '
                .. 'certificates = { { cert = %q, key = %q } } }', ca.cert, c.cert, c.key),
              "tls%.client_certificate%.verify: expected \"required\" or \"optional\"" },
            { fmt('{ listen = "127.0.0.1:18443", certificates = { { cert = "nope.pem", key = %q } } }',
                c.key), "tls%.certificates%[1%]%.cert: nope%.pem: No such file or directory" },
        }
        for _, k in ipairs(cases) do
            local out, rc = check(k[1])
            assert.equal(1, rc, out)
            assert.truthy(out:match(k[2]), k[2] .. "\n" .. out)
        end
        local out, rc = check(fmt('{ listen = "127.0.0.1:18443", certificates = { { cert = %q, key = %q } } }',
            c.cert, c.key))
        assert.equal(0, rc, out)
        assert.truthy(out:match("%(1 TLS%)"), out)
    end)

    it("checks the environment overrides", function()
        local out, rc = check("nil", { MOONGATE_TLS_CERT = c.cert })
        assert.equal(1, rc, out)
        assert.truthy(out:match("MOONGATE_TLS_CERT is set but MOONGATE_TLS_KEY is not"), out)
        out, rc = check("nil", { MOONGATE_TLS_CERT = c.cert, MOONGATE_TLS_KEY = c.key })
        assert.equal(1, rc, out)
        assert.truthy(out:match("no TLS listener: set MOONGATE_TLS_LISTEN"), out)
        out, rc = check("nil", { MOONGATE_TLS_LISTEN = "127.0.0.1:18443" })
        assert.equal(1, rc, out)
        assert.truthy(out:match("MOONGATE_TLS_LISTEN: no certificate"), out)
        out, rc = check("nil", { MOONGATE_TLS_LISTEN = "127.0.0.1:x", MOONGATE_TLS_CERT = c.cert,
            MOONGATE_TLS_KEY = c.key })
        assert.equal(1, rc, out)
        assert.truthy(out:match("env:0: MOONGATE_TLS_LISTEN: "), out)
        out, rc = check("nil", { MOONGATE_TLS_LISTEN = "127.0.0.1:18443", MOONGATE_TLS_CERT = c.cert,
            MOONGATE_TLS_KEY = c.key })
        assert.equal(0, rc, out)
        assert.truthy(out:match("TLS listener 127%.0%.0%.1:18443"), out)
    end)
end)

describe("MOONGATE_TLS_LISTEN, _CERT and _KEY", function()
    it("serve the shipped routes over HTTPS", function()
        local seed = require "spec.seed_helpers"
        local dir = helpers.tmpdir("tls-env")
        local ca = tls.ca(dir)
        local c = tls.cert(ca)
        local tport = helpers.free_port()
        local mg = seed.start_gateway({ name = "tls-env", env = {
            MOONGATE_TLS_LISTEN = "127.0.0.1:" .. tport, MOONGATE_TLS_CERT = c.cert,
            MOONGATE_TLS_KEY = c.key } })
        finally(function() mg:stop() seed.cleanup() helpers.cleanup() end)
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
        local st, h, body = tls.https(tport, "GET", "/", ca, "localhost")
        assert.equal(200, st)
        assert.truthy(h["content-type"]:match("text/html"))
        local st2, _, plain = helpers.http(mg.port, "GET", "/")
        assert.equal(200, st2)
        assert.equal(plain, body)
        -- the API behind its auth: the same JSON refusal as on the plain listener
        local st3, _, b3 = tls.https(tport, "GET", "/api/auth/whoami", ca, "localhost")
        local st4, _, b4 = helpers.http(mg.port, "GET", "/api/auth/whoami")
        assert.equal(st4, st3)
        assert.equal(cjson.decode(b4).error, cjson.decode(b3).error)
        assert.truthy(mg:log():match("listening on 127%.0%.0%.1:" .. tport .. " %(TLS%)"))
    end)
end)

describe("TLS client certificates (mTLS)", function()
    local mg, ca, alice, mallory, treq, topt

    lazy_setup(function()
        local dir = helpers.tmpdir("tls-mtls")
        ca = tls.ca(dir .. "/ca")
        local server = tls.cert(ca)
        alice = tls.cert(ca, { cn = "alice", names = {}, ip = false })
        local other = tls.ca(dir .. "/other", "another CA")
        mallory = tls.cert(other, { cn = "mallory", names = {}, ip = false })
        treq, topt = helpers.free_port(), helpers.free_port()
        local function t(port, verify)
            return fmt('{ listen = "127.0.0.1:%d", certificates = { { cert = %q, key = %q } }, '
                .. 'client_certificate = { ca = %q, verify = %q } }', port, server.cert, server.key,
                ca.cert, verify)
        end
        mg = helpers.start_moongate({ name = "tls-mtls", routes = ROUTES, conf = fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = { up = { servers = { "http://127.0.0.1:9" } } },
  tls = %s,
  servers = { opt = { listen = "127.0.0.1:$OPTPLAIN", routes = "scripts/routes.lua", tls = %s } },
}
]], t(treq, "required"), t(topt, "optional")), vars = { OPTPLAIN = helpers.free_port() } })
        assert(helpers.wait_until(function() return helpers.port_open(topt) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    local function get(port, who)
        local args = who and { "--cert", who.cert, "--key", who.key } or nil
        local st, _, body = tls.https(port, "GET", "/info", ca, "localhost", { curl_args = args })
        return st, st == 200 and cjson.decode(body).tls or nil
    end

    it("required: verified clients only, their subject in req.tls", function()
        local st, t = get(treq, alice)
        assert.equal(200, st)
        assert.equal("CN=alice", t.client_subject)
        assert.equal(0, (get(treq, nil)))
        assert.equal(0, (get(treq, mallory)))
    end)

    it("optional: no certificate is fine, a bad one is not", function()
        local st, t = get(topt, nil)
        assert.equal(200, st)
        assert.is_nil(t.client_subject)
        st, t = get(topt, alice)
        assert.equal(200, st)
        assert.equal("CN=alice", t.client_subject)
        assert.equal(0, (get(topt, mallory)))
        assert.truthy(helpers.wait_until(function()
            return mg:log():match("tls: %d+ failed handshakes[^\n]*certificate")
        end, 3), mg:log():sub(-2000))
    end)
end)

describe("TLS session resumption", function()
    local mg, ca, dir, tport, ntport

    lazy_setup(function()
        dir = helpers.tmpdir("tls-resume")
        ca = tls.ca(dir)
        local c = tls.cert(ca)
        tport, ntport = helpers.free_port(), helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-resume", routes = ROUTES, workers = 2, conf = fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  upstreams = { up = { servers = { "http://127.0.0.1:9" } } },
  tls = { listen = "127.0.0.1:$TLSPORT", certificates = { { cert = %q, key = %q } },
          ticket_rotate = 2 },
  servers = { nt = { listen = "127.0.0.1:$NTPLAIN", routes = "scripts/routes.lua",
    tls = { listen = "127.0.0.1:$NTPORT", certificates = { { cert = %q, key = %q } },
            session_tickets = false } } },
}
]], c.cert, c.key, c.cert, c.key), vars = { TLSPORT = tport, NTPORT = ntport,
            NTPLAIN = helpers.free_port() } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    local REQ = "GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    local function worker_of(r)
        local ok, t = pcall(cjson.decode, (r.body or ""):match("%b{}") or "")
        return ok and t.worker or nil
    end

    local function rotations()
        return select(2, mg:log():gsub("session%-ticket keys rotated", ""))
    end

    it("resumes a session on the other worker", function()
        local sess = dir .. "/s1"
        local first = tls.s_client(tport, { servername = "localhost", sess_out = sess, request = REQ })
        assert.is_true(first.ok, first.out)
        assert.is_false(first.reused)
        local w0 = worker_of(first)
        assert.truthy(w0, first.out)
        local other
        for _ = 1, 40 do
            local r = tls.s_client(tport, { servername = "localhost", sess_in = sess, request = REQ })
            assert.is_true(r.reused, r.out)
            if worker_of(r) ~= w0 then
                other = worker_of(r)
                break
            end
        end
        assert.truthy(other, "no resumed connection reached the other worker in 40 tries")
    end)

    it("issues no tickets with session_tickets = false", function()
        local sess = dir .. "/nt"
        local first = tls.s_client(ntport, { servername = "localhost", sess_out = sess, request = REQ })
        assert.is_true(first.ok, first.out)
        -- s_client writes -sess_out when a ticket arrives: none did
        assert.is_nil(helpers.read_file(sess))
        -- the same certificate with tickets on (the main listener): one, and it resumes
        local t1 = tls.s_client(tport, { servername = "localhost", sess_out = sess .. "2", request = REQ })
        assert.is_true(t1.ok)
        assert.truthy(helpers.read_file(sess .. "2"))
        assert.is_true(tls.s_client(tport, { servername = "localhost", sess_in = sess .. "2",
            request = REQ }).reused)
    end)

    it("still resumes after a key rotation, not after three", function()
        local sess = dir .. "/s2"
        local first = tls.s_client(tport, { servername = "localhost", sess_out = sess, request = REQ })
        assert.is_true(first.ok, first.out)
        local n0 = rotations()
        assert(helpers.wait_until(function() return rotations() >= n0 + 1 end, 6))
        local again = tls.s_client(tport, { servername = "localhost", sess_in = sess, request = REQ })
        assert.is_true(again.reused, again.out)
        -- a ticket of a key three rotations old is not taken: a full handshake
        local sess3 = dir .. "/s3"
        local t3 = tls.s_client(tport, { servername = "localhost", sess_out = sess3, request = REQ })
        assert.is_true(t3.ok)
        local n1 = rotations()
        assert(helpers.wait_until(function() return rotations() >= n1 + 3 end, 12))
        local late = tls.s_client(tport, { servername = "localhost", sess_in = sess3, request = REQ })
        assert.is_true(late.ok, late.out)
        assert.is_false(late.reused, late.out)
    end)
end)

describe("TLS handshake writes that must wait", function()
    local mg, tport
    local ffi = require "ffi"
    local socket = require "socket"

    pcall(ffi.cdef, [[
typedef struct ssl_ctx_st SSL_CTX; typedef struct ssl_st SSL; typedef struct ssl_method_st SSL_METHOD;
const SSL_METHOD *TLS_client_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *m);
void SSL_CTX_free(SSL_CTX *ctx);
long SSL_CTX_ctrl(SSL_CTX *ctx, int cmd, long larg, void *parg);
SSL *SSL_new(SSL_CTX *ctx);
void SSL_free(SSL *s);
int SSL_set_fd(SSL *s, int fd);
int SSL_connect(SSL *s);
int SSL_write(SSL *s, const void *buf, int num);
int SSL_read(SSL *s, void *buf, int num);
int SSL_get_error(const SSL *s, int ret);
int setsockopt(int fd, int level, int name, const void *val, unsigned int len);
]])

    lazy_setup(function()
        local dir = helpers.tmpdir("tls-bigchain-certs")
        local ca = tls.ca(dir)
        local c = tls.cert(ca, { key = "rsa" })
        -- a ~12 MB certificate flight: more than the server's socket takes
        -- at once even on loopback (its send buffer grows to megabytes
        -- there), so the handshake's write inside SSL_read must wait for
        -- the socket to be writable
        local pem = helpers.read_file(c.cert)
        local chain = dir .. "/big-chain.pem"
        helpers.write_file(chain, pem .. string.rep(pem, 16000))
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "tls-bigchain", routes = ROUTES, conf = fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  timeouts = { header = 40 },
  upstreams = { up = { servers = { "http://127.0.0.1:9" } } },
  tls = { listen = "127.0.0.1:$TLSPORT", certificates = { { cert = %q, key = %q } } },
}
]], chain, c.key), vars = { TLSPORT = tport },
            -- reading 16 001 certificates takes ~4 s here, ~12 s under ASan
            start_timeout = 40 })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    it("completes the handshake once the socket drains (not at the header timeout)", function()
        -- libssl through the FFI: a client that takes a chain this long
        -- (SSL_CTRL_SET_MAX_CERT_LIST; python and s_client stop at 100 KiB)
        local ssl = ffi.load("ssl")
        local ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
        ssl.SSL_CTX_ctrl(ctx, 51, 16 * 1024 * 1024, nil)
        -- TLS 1.2: the client sends nothing until the server's flight is in
        -- (a TLS 1.3 client's compatibility CCS would wake a read event)
        ssl.SSL_CTX_ctrl(ctx, 124, 0x0303, nil) -- SSL_CTRL_SET_MAX_PROTO_VERSION
        -- a small receive window: the flight waits in the server's socket
        local sock = assert((socket.tcp4 or socket.tcp)()) -- tcp4: the fd exists now
        local rcvbuf = ffi.new("int[1]", 4096)
        assert(ffi.C.setsockopt(sock:getfd(), 1, 8, rcvbuf, 4) == 0) -- SOL_SOCKET, SO_RCVBUF
        sock:settimeout(5)
        assert(sock:connect("127.0.0.1", tport))
        local s = ssl.SSL_new(ctx)
        ssl.SSL_set_fd(s, sock:getfd())
        local t0, deadline = helpers.now(), helpers.now() + 30
        local function drive(f)
            while helpers.now() < deadline do
                local rc = f()
                if rc > 0 then return rc end
                local e = ssl.SSL_get_error(s, rc)
                if e ~= 2 and e ~= 3 then return nil, "ssl error " .. e end -- WANT_READ/WRITE
                socket.select({ sock }, e == 3 and { sock } or nil, 0.1)
            end
            return nil, "deadline"
        end
        local ok, err = drive(function() return ssl.SSL_connect(s) end)
        local took = helpers.now() - t0
        local req = "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        local got = ""
        if ok then
            drive(function() return ssl.SSL_write(s, req, #req) end)
            local buf = ffi.new("char[4096]")
            while not got:find("hello\n", 1, true) do
                local n = drive(function() return ssl.SSL_read(s, buf, 4096) end)
                if not n then break end
                got = got .. ffi.string(buf, n)
            end
        end
        ssl.SSL_free(s)
        ssl.SSL_CTX_free(ctx)
        sock:close()
        assert.truthy(ok, err)
        -- without the writable wait it hangs to the deadline (the header
        -- timeout is 40 s); with it, it takes what moving the bytes takes
        assert.truthy(took < 20, "the handshake took " .. took .. " s")
        assert.truthy(got:match("^HTTP/1.1 200"), got)
    end)
end)
