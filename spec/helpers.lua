-- Integration harness for moongate's busted specs (run under LuaJIT).
--
-- It starts the real binary and real upstream processes on 127.0.0.1 and
-- talks to them with curl (io.popen) and raw sockets (lua-socket). Every
-- process it starts is remembered by pid, and only those pids are signalled:
-- helpers.cleanup() stops whatever a failed spec left running.
--
-- Work dirs, logs and big test files live under spec/out/ (gitignored).

local socket = require "socket"
local lfs = require "lfs"
local cjson = require "cjson"

local fmt = string.format
local concat = table.concat

local _M = { _VERSION = "0.1.0", json = cjson }

-- spec/helpers.lua -> repo root
local here = debug.getinfo(1, "S").source:gsub("^@", "")
local function dirname(p)
    return (p:match("^(.*)/[^/]*$") or ".")
end
local function abspath(p)
    if p:sub(1, 1) == "/" then
        return p
    end
    return lfs.currentdir() .. "/" .. p
end
_M.root = dirname(dirname(abspath(here)))
_M.out = _M.root .. "/spec/out"
_M.bin = os.getenv("MOONGATE_BIN") or (_M.root .. "/moongate")
_M.python = "/usr/bin/python3"
_M.upstream_py = _M.root .. "/spec/fixtures/upstream.py"

local started = {} -- pid -> description; what cleanup() may signal

-- basics ---------------------------------------------------------------------

function _M.sleep(s)
    socket.sleep(s)
end

function _M.now()
    return socket.gettime()
end

-- Quote for /bin/sh: the only shell-safe quoting is '...' with ' spelled '\''.
local function shq(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.shq = shq

local function exec_ok(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

-- Runs cmd in sh; returns its stdout+stderr and exit code.
function _M.sh(cmd)
    local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"__RC=$?\""))
    local out = p:read("*a")
    p:close()
    local rc = tonumber(out:match("__RC=(%d+)%s*$"))
    out = out:gsub("__RC=%d+%s*$", "")
    return out, rc
end

function _M.read_file(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end

function _M.write_file(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

local function mkdir_p(path)
    local acc = ""
    for part in path:gmatch("[^/]+") do
        acc = acc .. "/" .. part
        if not lfs.attributes(acc) then
            lfs.mkdir(acc)
        end
    end
    return path
end
_M.mkdir_p = mkdir_p

local seq = 0
-- A fresh directory spec/out/<name>-<unique>.
function _M.tmpdir(name)
    seq = seq + 1
    local unique = fmt("%s-%d-%d-%d", name or "tmp", os.time(),
        math.floor(socket.gettime() * 1000) % 100000, seq)
    return mkdir_p(_M.out .. "/" .. unique)
end

-- Polls fn() every interval seconds until it returns a true value or
-- timeout seconds pass; returns that value (or nil).
function _M.wait_until(fn, timeout, interval)
    local deadline = socket.gettime() + (timeout or 5)
    repeat
        local v = fn()
        if v then
            return v
        end
        socket.sleep(interval or 0.05)
    until socket.gettime() > deadline
    return nil
end

-- A port nothing listens on right now (bind 0, read it, close).
function _M.free_port()
    local s = assert(socket.tcp())
    assert(s:bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

function _M.port_open(port)
    local c = socket.tcp()
    c:settimeout(0.5)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok ~= nil
end

-- processes ------------------------------------------------------------------

local function proc_stat(pid)
    local s = _M.read_file("/proc/" .. pid .. "/stat")
    if not s then
        return nil
    end
    -- "pid (comm) state ppid ..."; comm may hold spaces and parens
    local rest = s:match("^%d+ %(.*%) (.*)$")
    if not rest then
        return nil
    end
    local state, ppid = rest:match("^(%S+) (%d+)")
    return state, tonumber(ppid)
end

function _M.alive(pid)
    if not pid then
        return false
    end
    local state = proc_stat(pid)
    return state ~= nil and state ~= "Z" and state ~= "X"
end

-- Signals pid: one this harness started, or a child of one (a worker).
function _M.kill(pid, sig)
    local _, ppid = proc_stat(pid)
    assert(started[pid] or (ppid and started[ppid]),
        "refusing to signal a pid this harness did not start")
    return exec_ok(fmt("kill -%s %d 2>/dev/null", sig or "TERM", pid))
end

-- Direct children of pid (e.g. moongate's workers), from /proc.
function _M.children(pid)
    local out = {}
    for name in lfs.dir("/proc") do
        local p = tonumber(name)
        if p then
            local state, ppid = proc_stat(p)
            if ppid == pid and state ~= "Z" then
                out[#out + 1] = p
            end
        end
    end
    table.sort(out)
    return out
end

-- VmRSS of pid in KiB (nil if gone).
function _M.rss_kb(pid)
    local s = _M.read_file("/proc/" .. pid .. "/status")
    return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Registers a pid a spec started itself (a daemon that wrote a pidfile), so
-- that kill, stop and cleanup may signal it.
function _M.track(pid, what)
    if pid then
        started[pid] = what or "process"
    end
    return pid
end

-- TERM, then KILL after `wait` seconds (default 5). Only pids we started.
function _M.stop(pid, wait)
    if not pid or not started[pid] then
        return
    end
    if _M.alive(pid) then
        exec_ok(fmt("kill -TERM %d 2>/dev/null", pid))
        if not _M.wait_until(function() return not _M.alive(pid) end, wait or 5) then
            exec_ok(fmt("kill -KILL %d 2>/dev/null", pid))
            _M.wait_until(function() return not _M.alive(pid) end, 2)
        end
    end
    started[pid] = nil
end

-- upstream fixture -----------------------------------------------------------

-- Starts spec/fixtures/upstream.py; returns {port, pid, url, dir}.
-- opts.blackhole: a listener that never accepts (connects succeed, no answer).
-- opts.script: another fixture taking --port and --pidfile and printing
-- "PORT n" (e.g. tls_upstream.py), with opts.args (shell-quoted already).
function _M.start_upstream(opts)
    opts = opts or {}
    local dir = _M.tmpdir(opts.blackhole and "blackhole" or "upstream")
    local pidfile, outfile = dir .. "/pid", dir .. "/out.log"
    local script = opts.script or _M.upstream_py
    local cmd = fmt("%s %s --port %d --pidfile %s%s%s > %s 2>&1 < /dev/null &",
        _M.python, shq(script), opts.port or 0, shq(pidfile),
        opts.blackhole and " --blackhole" or "", opts.args and (" " .. opts.args) or "",
        shq(outfile))
    assert(exec_ok(cmd), "cannot spawn " .. script)
    local port = _M.wait_until(function()
        local s = _M.read_file(outfile)
        return s and tonumber(s:match("PORT (%d+)"))
    end, 10)
    local pid = tonumber(_M.read_file(pidfile) or "")
    if pid then
        started[pid] = "upstream"
    end
    if not port then
        _M.stop(pid)
        error(script .. " did not start: " .. (_M.read_file(outfile) or ""))
    end
    return { port = port, pid = pid, dir = dir, url = "http://127.0.0.1:" .. port }
end

-- Asks an upstream fixture for the requests it has seen:
-- {heads = {"GET /x", ...}, complete = {...}}.
function _M.upstream_log(up)
    local st, _, body = _M.http(up.port, "GET", "/__log")
    assert(st == 200, "upstream /__log failed")
    return cjson.decode(body)
end

function _M.upstream_reset(up)
    local st = _M.http(up.port, "GET", "/__reset")
    assert(st == 200, "upstream /__reset failed")
end

-- moongate -------------------------------------------------------------------

local DEFAULT_ROUTES = [[
return {
  { path = "/hello", handler = function(req, res) return 200, "hello\n" end },
}
]]

local function default_conf(opts)
    local t = {
        "return {",
        '  listen = "127.0.0.1:$PORT",',
        "  workers = $WORKERS,",
    }
    if opts.upstream then
        t[#t + 1] = '  upstreams = { up = { servers = { "$UPSTREAM" } } },'
    end
    t[#t + 1] = "}"
    return concat(t, "\n") .. "\n"
end

local function expand(src, vars)
    return (src:gsub("%$([%u_][%u%d_]*)", function(name)
        local v = vars[name]
        if v == nil then
            return nil -- leave unknown $NAMES alone
        end
        return tostring(v)
    end))
end
_M.expand = expand

local Moongate = {}
Moongate.__index = Moongate

-- opts:
--   conf     Lua source of conf/moongate.lua (default: listen $PORT, workers
--            $WORKERS, upstream "up" = $UPSTREAM when opts.upstream is given)
--   routes   Lua source of scripts/routes.lua
--   scripts  { ["name.lua"] = src } more files under scripts/
--   env      { NAME = value } extra environment for the binary
--   workers  number (default 2), substituted for $WORKERS
--   upstream an upstream object ({port=}) or URL, substituted for $UPSTREAM
--   vars     more $NAME substitutions
--   port     listen port (default: a free one), substituted for $PORT
--   wait_port  port to wait for (default: port)
--   args     extra command-line arguments (list)
--   name     label for the work dir
-- Placeholders $PORT, $UPSTREAM, $WORKERS, $DIR and opts.vars are expanded
-- in conf, routes and scripts.
function _M.start_moongate(opts)
    opts = opts or {}
    local dir = _M.tmpdir(opts.name or "moongate")
    mkdir_p(dir .. "/conf")
    mkdir_p(dir .. "/scripts")
    local self = setmetatable({
        dir = dir,
        port = opts.port or _M.free_port(),
        conf_path = dir .. "/conf/moongate.lua",
        routes_path = dir .. "/scripts/routes.lua",
        pidfile = dir .. "/moongate.pid",
        log_path = dir .. "/moongate.log",
        status_path = dir .. "/exit_status",
    }, Moongate)
    local up = opts.upstream
    local vars = {
        PORT = self.port,
        WORKERS = opts.workers or 2,
        DIR = dir,
        UPSTREAM = type(up) == "table" and ("http://127.0.0.1:" .. up.port) or up,
    }
    for k, v in pairs(opts.vars or {}) do
        vars[k] = v
    end
    self.vars = vars
    _M.write_file(self.conf_path, expand(opts.conf or default_conf(opts), vars))
    _M.write_file(self.routes_path, expand(opts.routes or DEFAULT_ROUTES, vars))
    for name, src in pairs(opts.scripts or {}) do
        local p = dir .. "/scripts/" .. name
        mkdir_p(dirname(p))
        _M.write_file(p, expand(src, vars))
    end

    -- The wrapper shell stays as the master's parent so that the master's
    -- exit status lands in exit_status; signals go to the pidfile's pid.
    local env = { "env", "-u", "MOONGATE_LISTEN", "-u", "MOONGATE_WORKERS" }
    for k, v in pairs(opts.env or {}) do
        env[#env + 1] = shq(k .. "=" .. v)
    end
    local args = { shq(_M.bin), "-c", shq(self.conf_path), "-p", shq(self.pidfile) }
    for _, a in ipairs(opts.args or {}) do
        args[#args + 1] = shq(a)
    end
    local inner = fmt("%s 2>%s >>%s; echo $? > %s", concat(args, " "),
        shq(self.log_path), shq(self.log_path), shq(self.status_path))
    local cmd = fmt("cd %s && %s sh -c %s < /dev/null > /dev/null 2>&1 &",
        shq(dir), concat(env, " "), shq(inner))
    assert(exec_ok(cmd), "cannot spawn moongate")

    local wait_port = opts.wait_port or self.port
    local ok = _M.wait_until(function()
        if _M.read_file(self.status_path) then
            return "exited"
        end
        if not self.pid then
            local pid = tonumber(_M.read_file(self.pidfile) or "")
            if pid then
                self.pid = pid
                started[pid] = "moongate"
            end
        end
        return self.pid and _M.port_open(wait_port) and "up"
    end, opts.start_timeout or 10, 0.05)
    if ok ~= "up" then
        local log = self:log()
        self:stop()
        error(fmt("moongate did not start (%s; pid %s, port %d):\n%s",
            ok or "timeout", tostring(self.pid), wait_port, log), 2)
    end
    -- The master listens before it forks its workers: a spec that reads
    -- the worker pids right after the start must find them all. With the
    -- default conf their number is known; with another, at least one.
    local want = (opts.conf == nil and not (opts.env or {}).MOONGATE_WORKERS)
        and (opts.workers or 2) or 1
    if want == 0 then want = 1 end
    _M.wait_until(function() return #_M.children(self.pid) >= want end,
        opts.start_timeout or 10, 0.02)
    return self
end

function Moongate:log()
    return _M.read_file(self.log_path) or ""
end

-- Worker pids (the master's children).
function Moongate:workers()
    return _M.children(self.pid)
end

function Moongate:signal(sig)
    assert(self.pid, "moongate has no pid")
    return exec_ok(fmt("kill -%s %d 2>/dev/null", sig, self.pid))
end

function Moongate:write_routes(src)
    _M.write_file(self.routes_path, expand(src, self.vars))
end

function Moongate:write_conf(src)
    _M.write_file(self.conf_path, expand(src, self.vars))
end

function Moongate:write_script(name, src)
    _M.write_file(self.dir .. "/scripts/" .. name, expand(src, self.vars))
end

-- SIGHUP, then give the workers `wait` seconds (default 0.5) to swap.
function Moongate:reload(wait)
    self:signal("HUP")
    socket.sleep(wait or 0.5)
end

-- The master's exit status once it has exited (nil while it runs).
function Moongate:exit_code()
    local s = _M.read_file(self.status_path)
    return s and tonumber(s:match("%d+"))
end

-- Waits up to `wait` seconds for the master to exit; returns its status.
function Moongate:wait_exit(wait)
    _M.wait_until(function() return self:exit_code() end, wait or 10)
    return self:exit_code()
end

-- SIGTERM, wait, then SIGKILL the master and any worker left behind.
function Moongate:stop(wait)
    if self.stopped then
        return self:exit_code()
    end
    self.stopped = true
    if not self.pid then
        return nil
    end
    local workers = _M.children(self.pid)
    if _M.alive(self.pid) then
        self:signal("TERM")
        if not _M.wait_until(function() return not _M.alive(self.pid) end, wait or 5) then
            self:signal("KILL")
        end
    end
    for _, w in ipairs(workers) do
        if _M.alive(w) then
            exec_ok(fmt("kill -KILL %d 2>/dev/null", w))
        end
    end
    started[self.pid] = nil
    return self:wait_exit(2)
end

-- Stops whatever this harness started and is still running.
function _M.cleanup()
    for pid in pairs(started) do
        _M.stop(pid, 3)
    end
end

-- curl -----------------------------------------------------------------------

local function parse_head_block(block)
    local headers, list = {}, {}
    local status, version
    for line in block:gmatch("[^\n]+") do
        line = line:gsub("\r$", "")
        if not status then
            version, status = line:match("^HTTP/(%S+) (%d%d%d)")
            status = tonumber(status)
        else
            local name, value = line:match("^([^:]+):%s*(.-)%s*$")
            if name then
                name = name:lower()
                list[#list + 1] = { name, value }
                if headers[name] then
                    headers[name] = headers[name] .. ", " .. value
                else
                    headers[name] = value
                end
            end
        end
    end
    return status, headers, list, version
end

local function header_args(hs, out)
    if not hs then
        return
    end
    for k, v in pairs(hs) do
        if type(k) == "number" then
            out[#out + 1] = "-H " .. shq(v) -- "Name: value" strings
        else
            out[#out + 1] = "-H " .. shq(k .. ": " .. v)
        end
    end
end

local function curl_args(port, method, path, opts, files)
    local a = { "curl", "-sS", "--path-as-is", "-o", shq(files.body), "-D", shq(files.head),
        "-w", shq("%{http_code} %{time_total}"), "--max-time", tostring(opts.timeout or 10) }
    if method == "HEAD" then
        a[#a + 1] = "--head"
    elseif method ~= "GET" or opts.body or opts.body_file then
        a[#a + 1] = "-X " .. shq(method)
    end
    if opts.http10 then
        a[#a + 1] = "--http1.0"
    end
    if not opts.expect100 then
        a[#a + 1] = "-H 'Expect:'"
    else
        a[#a + 1] = "-H 'Expect: 100-continue'"
    end
    header_args(opts.headers, a)
    if opts.chunked then
        a[#a + 1] = "-H 'Transfer-Encoding: chunked'"
    end
    if opts.body then
        _M.write_file(files.req, opts.body)
        a[#a + 1] = "--data-binary @" .. shq(files.req)
    elseif opts.body_file then
        a[#a + 1] = "--data-binary @" .. shq(opts.body_file)
    end
    for _, x in ipairs(opts.curl_args or {}) do
        a[#a + 1] = shq(x)
    end
    -- scheme "https": TLS listeners (give --cacert, --resolve in curl_args)
    a[#a + 1] = shq(fmt("%s://%s:%d%s", opts.scheme or "http", opts.ip or "127.0.0.1", port, path))
    return concat(a, " ")
end

local tmpseq = 0
local function tmpfiles()
    tmpseq = tmpseq + 1
    local d = mkdir_p(_M.out .. "/curl")
    local base = fmt("%s/%d-%d", d, math.floor(socket.gettime() * 1000) % 10000000, tmpseq)
    return { body = base .. ".body", head = base .. ".head", req = base .. ".req" }
end

local function rm_files(files)
    for _, p in pairs(files) do
        os.remove(p)
    end
end

local function collect(files, out, rc)
    local code, t = (out or ""):match("(%d%d%d) ([%d%.]+)")
    local head = _M.read_file(files.head) or ""
    -- keep the last head (after any 100 Continue)
    local last = head
    for blk in head:gmatch("HTTP/[^\n]*\n.-\r?\n\r?\n") do
        last = blk
    end
    local status, headers, list, version = parse_head_block(last)
    local body = _M.read_file(files.body) or ""
    local info = { time = tonumber(t), headers_list = list, version = version,
        raw_head = head, exit = rc, err = (rc ~= 0) and out or nil }
    local st = code and code ~= "000" and tonumber(code) or status or 0
    if rc ~= 0 and st < 200 then
        st = 0 -- only an interim 100 came back: no answer
    end
    return st, headers, body, info
end

-- One request with curl. opts: headers (list of "N: v" or map), body,
-- body_file, chunked, http10, expect100, timeout (s, default 10), curl_args,
-- scheme ("http" or "https"), ip (the URL's host, default 127.0.0.1).
-- Returns status (0 when no answer), headers (lower-case; repeats joined
-- ", "), body, info {time, headers_list, version, exit, err}.
function _M.http(port, method, path, opts)
    opts = opts or {}
    local files = tmpfiles()
    local cmd = curl_args(port, method or "GET", path or "/", opts, files)
    local out, rc = _M.sh(cmd)
    local st, h, b, info = collect(files, out, rc)
    rm_files(files)
    if method == "HEAD" then
        b = "" -- curl --head writes the head where the body would go
    end
    return st, h, b, info
end

-- Many curl requests at once (one curl process each). reqs: list of
-- {method, path, opts}. Returns a list of {status, headers, body, info} in
-- the same order, and the wall time of the whole batch.
function _M.http_parallel(port, reqs)
    local jobs, cmds = {}, {}
    for i, r in ipairs(reqs) do
        local files = tmpfiles()
        files.out = files.body .. ".out"
        jobs[i] = files
        cmds[#cmds + 1] = fmt("( %s > %s 2>&1; echo \" $?\" >> %s ) &",
            curl_args(port, r[1] or "GET", r[2] or "/", r[3] or {}, files),
            shq(files.out), shq(files.out))
    end
    local t0 = socket.gettime()
    _M.sh(concat(cmds, "\n") .. "\nwait")
    local elapsed = socket.gettime() - t0
    local res = {}
    for i, files in ipairs(jobs) do
        local out = _M.read_file(files.out) or ""
        local rc = tonumber(out:match("(%d+)%s*$"))
        local st, h, b, info = collect(files, out, rc)
        res[i] = { status = st, headers = h, body = b, info = info }
        rm_files(files)
    end
    return res, elapsed
end

-- Starts a shell command in the background; returns a handle whose
-- :wait(timeout) gives (output, exit code) once it has finished.
function _M.spawn(cmd)
    local files = tmpfiles()
    local out, rcf = files.body .. ".spawn", files.body .. ".rc"
    assert(exec_ok(fmt("( ( %s ) > %s 2>&1; echo $? > %s ) < /dev/null > /dev/null 2>&1 &",
        cmd, shq(out), shq(rcf))))
    local h = {}
    function h.done()
        return _M.read_file(rcf) ~= nil and (_M.read_file(rcf) or ""):match("%d") ~= nil
    end
    function h.wait(_, timeout)
        _M.wait_until(h.done, timeout or 30)
        local o = _M.read_file(out) or ""
        local rc = tonumber((_M.read_file(rcf) or ""):match("%d+"))
        if rc then
            os.remove(out)
            os.remove(rcf)
        end
        return o, rc
    end
    return h
end

-- A curl command line (string) for use with spawn(); the response body
-- goes to stdout after a first line "<status> <time>".
function _M.curl_cmd(port, method, path, opts)
    opts = opts or {}
    local files = tmpfiles()
    local cmd = curl_args(port, method or "GET", path or "/", opts, files)
    return fmt("%s; echo; cat %s; rm -f %s %s", cmd, shq(files.body), shq(files.body),
        shq(files.head))
end

-- Background curl: returns a handle; handle:wait() -> status, body, time.
function _M.http_async(port, method, path, opts)
    local h = _M.spawn(_M.curl_cmd(port, method, path, opts))
    local w = {}
    function w.done()
        return h.done()
    end
    function w.wait(_, timeout)
        local out = h:wait(timeout)
        local code, t, body = out:match("^(%d%d%d) ([%d%.]+)\n(.*)$")
        return tonumber(code) or 0, body or out, tonumber(t)
    end
    return w
end

-- raw sockets ----------------------------------------------------------------

function _M.connect(port, timeout)
    local c = assert(socket.tcp())
    c:settimeout(timeout or 5)
    local ok, err = c:connect("127.0.0.1", port)
    if not ok then
        c:close()
        return nil, err
    end
    return c
end

-- Reads from c until the peer closes or `timeout` seconds pass.
-- Returns data, closed (true when the peer closed or reset), why.
function _M.read_all(c, timeout)
    local deadline = socket.gettime() + (timeout or 3)
    local buf = {}
    while true do
        local left = deadline - socket.gettime()
        if left <= 0 then
            return concat(buf), false, "timeout"
        end
        c:settimeout(math.min(left, 0.25))
        local data, err, partial = c:receive(8192)
        local got = data or partial
        if got and #got > 0 then
            buf[#buf + 1] = got
        end
        if err == "closed" or (err and err ~= "timeout") then
            return concat(buf), true, err
        end
    end
end

-- Sends bytes on a new connection and reads everything until the server
-- closes or opts.timeout (default 3 s) passes.
-- Returns data, closed, why.
function _M.raw(port, bytes, opts)
    opts = opts or {}
    local c, err = _M.connect(port)
    if not c then
        return nil, true, err
    end
    local ok, serr = c:send(bytes)
    if not ok and serr ~= "closed" then
        -- the server may already have answered and closed; keep reading
        c:close()
        return "", true, serr
    end
    if opts.shutdown then
        c:shutdown("send")
    end
    local data, closed, why = _M.read_all(c, opts.timeout or 3)
    c:close()
    return data, closed, why
end

-- Reads one HTTP response from socket c. opts.head: the request was HEAD.
-- Returns {status, version, headers (lower-case, repeats joined ", "),
-- headers_list, body, chunked} or nil, err.
function _M.read_response(c, opts)
    opts = opts or {}
    c:settimeout(opts.timeout or 5)
    local line, err = c:receive("*l")
    if not line then
        return nil, err
    end
    local version, status = line:match("^HTTP/(%d%.%d) (%d%d%d)")
    if not status then
        return nil, "bad status line: " .. line
    end
    local res = { status = tonumber(status), version = version, headers = {},
        headers_list = {}, status_line = line }
    while true do
        local l, e = c:receive("*l")
        if not l then
            return nil, e
        end
        if l == "" then
            break
        end
        local name, value = l:match("^([^:]+):%s*(.-)%s*$")
        if not name then
            return nil, "bad header line: " .. l
        end
        name = name:lower()
        res.headers_list[#res.headers_list + 1] = { name, value }
        res.headers[name] = res.headers[name] and (res.headers[name] .. ", " .. value) or value
    end
    local st = res.status
    if opts.head or (st >= 100 and st < 200) or st == 204 or st == 304 then
        res.body = ""
        return res
    end
    local te = (res.headers["transfer-encoding"] or ""):lower()
    if te:find("chunked", 1, true) then
        res.chunked = true
        local parts = {}
        while true do
            local sz, e = c:receive("*l")
            if not sz then
                return nil, "chunk size: " .. tostring(e)
            end
            local n = tonumber(sz:match("^%x+"), 16)
            if not n then
                return nil, "bad chunk size: " .. sz
            end
            if n == 0 then
                repeat
                    local t = c:receive("*l")
                until not t or t == ""
                break
            end
            local d, e2 = c:receive(n)
            if not d then
                return nil, "chunk: " .. tostring(e2)
            end
            parts[#parts + 1] = d
            c:receive("*l")
        end
        res.body = concat(parts)
    elseif res.headers["content-length"] then
        local n = tonumber(res.headers["content-length"])
        local d, e = c:receive(n)
        if not d then
            return nil, "body: " .. tostring(e)
        end
        res.body = d
    else
        local d = _M.read_all(c, opts.timeout or 5)
        res.body = d
        res.close_delimited = true
    end
    return res
end

-- Builds a request string. headers: list of "Name: value" strings.
function _M.request(method, target, headers, body, version)
    local t = { fmt("%s %s HTTP/%s", method, target, version or "1.1") }
    for _, h in ipairs(headers or { "Host: localhost" }) do
        t[#t + 1] = h
    end
    return concat(t, "\r\n") .. "\r\n\r\n" .. (body or "")
end

return _M
