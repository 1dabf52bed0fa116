-- A real ACME server for specs: Debian's pebble on 127.0.0.1 with its own
-- TLS certificate (made here with openssl), no validation sleeps, a short
-- certificate lifetime, its validations pointed at moongate's listeners,
-- and pebble-challtestsrv as its DNS (the names given resolve to 127.0.0.1,
-- every other to 127.0.0.2, so nothing leaves the host), for the specs that
-- need an ACME certificate served (55, 94).
local helpers = require "spec.helpers"

local fmt = string.format
local shq = helpers.shq

local _M = {}

local function sh_ok(cmd)
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, cmd .. "\n" .. out)
    return out
end

-- test-only CA (ca.pem), pebble's server certificate, and a default
-- certificate for moongate's TLS listener (default.pem / default.key)
function _M.make_certs(d)
    sh_ok(fmt([[cd %s &&
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj '/CN=moongate spec test CA' -keyout ca.key -out ca.pem 2>&1 &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj '/CN=127.0.0.1' -keyout pebble.key -out pebble.csr 2>&1 &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext &&
      openssl x509 -req -in pebble.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile san.ext -out pebble.pem 2>&1 &&
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj '/CN=default.test' -addext 'subjectAltName=DNS:default.test' \
        -keyout default.key -out default.pem 2>&1]], shq(d)))
end

-- start(d, http_port, tls_port, hosts, lifetime) -> p: p.port (the ACME
-- directory is https://127.0.0.1:p.port/dir), p.root (the root it issues
-- under), p.log; stop(p) ends both processes (by PID)
function _M.start(d, http_port, tls_port, hosts, lifetime)
    local p = {}
    p.port, p.mgmt = helpers.free_port(), helpers.free_port()
    p.dns, p.dns_mgmt = helpers.free_port(), helpers.free_port()
    local cfg = d .. "/pebble.json"
    helpers.write_file(cfg, helpers.json.encode({
        pebble = {
            listenAddress = "127.0.0.1:" .. p.port,
            managementListenAddress = "127.0.0.1:" .. p.mgmt,
            certificate = d .. "/pebble.pem",
            privateKey = d .. "/pebble.key",
            httpPort = http_port,
            tlsPort = tls_port,
            ocspResponderURL = "",
            externalAccountBindingRequired = false,
            certificateValidityPeriod = lifetime,
        },
    }))
    p.log = d .. "/pebble.log"
    local pidfile = d .. "/pebble.pid"
    sh_ok(fmt("pebble-challtestsrv -defaultIPv4 127.0.0.2 -defaultIPv6 '' -dns01 127.0.0.1:%d "
        .. "-http01 '' -https01 '' -tlsalpn01 '' -management 127.0.0.1:%d > %s 2>&1 < /dev/null & "
        .. "echo $! > %s", p.dns, p.dns_mgmt, shq(d .. "/challtestsrv.log"),
        shq(d .. "/challtestsrv.pid")))
    p.cts_pid = tonumber(helpers.read_file(d .. "/challtestsrv.pid") or "")
    assert(helpers.wait_until(function() return helpers.port_open(p.dns_mgmt) end, 10),
        "pebble-challtestsrv did not start")
    for _, host in ipairs(hosts) do
        sh_ok(fmt("curl -sS --fail --max-time 5 -d %s http://127.0.0.1:%d/add-a",
            shq(fmt('{"host":"%s","addresses":["127.0.0.1"]}', host)), p.dns_mgmt))
    end
    sh_ok(fmt("cd %s && PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 sh -c %s > %s 2>&1 < /dev/null &",
        shq(d), shq("echo $$ > " .. pidfile .. "; exec pebble -config " .. cfg
            .. " -dnsserver 127.0.0.1:" .. p.dns),
        shq(p.log)))
    assert(helpers.wait_until(function()
        p.pid = tonumber(helpers.read_file(pidfile) or "")
        return p.pid and helpers.port_open(p.port) and helpers.port_open(p.mgmt)
    end, 15), "pebble did not start:\n" .. (helpers.read_file(p.log) or ""))
    p.root = d .. "/pebble-root.pem"
    sh_ok(fmt("curl -sS --fail --max-time 10 --cacert %s -o %s https://127.0.0.1:%d/roots/0",
        shq(d .. "/ca.pem"), shq(p.root), p.mgmt))
    return p
end

function _M.stop(p)
    for _, pid in ipairs({ p.pid, p.cts_pid }) do
        if helpers.alive(pid) then
            os.execute(fmt("kill -TERM %d 2>/dev/null", pid))
            helpers.wait_until(function() return not helpers.alive(pid) end, 5)
        end
    end
end

return _M
