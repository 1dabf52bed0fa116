-- redis-server for the specs (spec/02-integration/8x-redis_*): each spec
-- starts its own on a free loopback port, no persistence, and stops it by
-- PID (helpers.track: helpers.cleanup() stops what is left).
local helpers = require "spec.helpers"
local shq = helpers.shq
local fmt = string.format

local _M = {}

function _M.installed()
    return helpers.sh("command -v redis-server"):match("redis") ~= nil
end

-- opts: port (default a free one; give the old one to restart), args (more
-- redis-server arguments, a string), tls = { cert =, key =, ca = } (a
-- --tls-port beside the plain one: r.tls_port), name.
-- Returns { port, pid, dir, tls_port }.
function _M.start(opts)
    opts = opts or {}
    local dir = opts.dir or helpers.tmpdir(opts.name or "redis")
    local port = opts.port or helpers.free_port()
    local pidfile = dir .. "/redis.pid"
    os.remove(pidfile)
    local tls = ""
    local tls_port = opts.tls_port
    if opts.tls then
        tls_port = tls_port or helpers.free_port()
        tls = fmt("--tls-port %d --tls-cert-file %s --tls-key-file %s --tls-ca-cert-file %s "
            .. "--tls-auth-clients no", tls_port, shq(opts.tls.cert), shq(opts.tls.key),
            shq(opts.tls.ca))
    end
    assert(os.execute(fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
        .. "--dir %s --pidfile %s --logfile %s --daemonize yes %s %s >> %s/out 2>&1", port,
        shq(dir), shq(pidfile), shq(dir .. "/redis.log"), tls, opts.args or "", shq(dir))))
    local pid = helpers.wait_until(function() return tonumber(helpers.read_file(pidfile) or "") end, 5)
    helpers.track(pid, "redis-server")
    assert(helpers.wait_until(function() return helpers.port_open(port) end, 10),
        "redis-server did not start: " .. (helpers.read_file(dir .. "/out") or "")
        .. (helpers.read_file(dir .. "/redis.log") or ""))
    return { port = port, pid = pid, dir = dir, tls_port = tls_port, opts = opts }
end

-- Stops it (TERM, then KILL) and waits until its port is closed.
function _M.stop(r)
    if r and r.pid then
        helpers.kill(r.pid, "CONT") -- a paused one cannot act on TERM
        helpers.stop(r.pid, 5)
        r.pid = nil
        assert(helpers.wait_until(function() return not helpers.port_open(r.port) end, 5),
            "redis-server still listens on " .. r.port)
    end
end

-- The same server again, on the same ports.
function _M.restart(r)
    _M.stop(r)
    local opts = {}
    for k, v in pairs(r.opts) do opts[k] = v end
    opts.port, opts.tls_port, opts.dir = r.port, r.tls_port, r.dir
    local again = _M.start(opts)
    r.pid = again.pid
    return r
end

function _M.pause(r)
    assert(helpers.kill(r.pid, "STOP"))
end

function _M.resume(r)
    assert(helpers.kill(r.pid, "CONT"))
end

-- redis-cli against it: the output without its last newline. `args` is a
-- string of shell words (quote them with helpers.shq).
function _M.cli(r, args, auth)
    local out = helpers.sh(fmt("timeout 10 redis-cli -p %d %s %s 2>&1", r.port, auth or "", args))
    return (out:gsub("\n$", ""))
end

return _M
