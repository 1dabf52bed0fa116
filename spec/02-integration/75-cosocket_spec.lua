-- Cosockets (issue 14): moongate.socket.tcp() as OpenResty's ngx.socket.tcp.
-- connect (an address or a name), send (a string or a table), receive (a
-- size, "*l", "*a"), receiveany, receiveuntil, settimeout(s) in ms,
-- setkeepalive's per-worker pool and getreusedtimes, close, sslhandshake;
-- errors as nil, err (and the partial data of a receive); the sockets a
-- coroutine forgot closed when it ends; handlers, access hooks and
-- WebSocket handlers.
--
-- Real processes: spec/fixtures/cosock_server.py (a line protocol, one
-- thread per connection, and a listener whose accept queue is full),
-- `openssl s_server -rev` (TLS; reverses each line), redis-server when the
-- machine has it (make deps installs it), python3-websockets.
local helpers = require "spec.helpers"
local tls = require "spec.tls_helpers"
local ws = require "spec.ws_helpers"
local json = helpers.json
local shq = helpers.shq
local fmt = string.format

local SERVER_PY = helpers.root .. "/spec/fixtures/cosock_server.py"

local ROUTES = [=[
local moongate = require "moongate"
local json = moongate.json

local ECHO, FULL = $ECHO, $FULL
local forgotten, timer_result

local function open(timeout, pool)
  local sock = moongate.socket.tcp()
  sock:settimeout(timeout or 3000)
  local ok, err = sock:connect("127.0.0.1", ECHO, pool and { pool = pool } or nil)
  if not ok then return nil, err end
  return sock
end

-- one command line, one answer line
local function ask(sock, line)
  local n, err = sock:send(line .. "\n")
  if not n then return nil, err end
  return sock:receive("*l")
end

-- an access hook asking an auth server
local function auth(req)
  local sock = assert(open())
  local verdict = ask(sock, "AUTH " .. (req.headers["x-token"] or "-"))
  sock:setkeepalive()
  if verdict ~= "OK" then return 403, { error = "denied by the auth server" } end
end

return {
  { path = "/mark", handler = function() return 200, "$MARK" end },

  { path = "/id", handler = function()
      local sock, err = open()
      if not sock then return 502, { err = err } end
      local reused = sock:getreusedtimes()
      local id, rerr = ask(sock, "ID")
      local ok, kerr = sock:setkeepalive(10000, 4)
      local _, cerr = sock:close()
      return 200, { id = id, rerr = rerr, reused = reused, keep = ok, kerr = kerr, cerr = cerr }
  end },

  { path = "/exchange", handler = function()
      local sock, err = open()
      if not sock then return 502, { err = err } end
      local sent = sock:send({ "EC", { "HO ", 11 }, "\n", "hello", " world" })
      local echoed = sock:receive(11)
      local crlf = sock:send("CRLF\n")
      local l1 = sock:receive()
      local l2 = sock:receive("*l")
      local zero = sock:receive(0)
      sock:send("SEND 5\n")
      local any = sock:receiveany(100)
      local pong = ask(sock, "PING")
      sock:close()
      return 200, { sent = sent, echoed = echoed, crlf = crlf, l1 = l1, l2 = l2, zero = zero,
                    any = any, pong = pong }
  end },

  { path = "/unread", handler = function()
      local sock = assert(open(nil, "unread"))
      sock:send("SEND 3\n")
      local x = sock:receive(1) -- "xx" stays in the buffer
      local ok, err = sock:setkeepalive()
      local again = assert(open(nil, "unread"))
      local reused = again:getreusedtimes()
      again:close()
      return 200, { x = x, ok = ok, err = err, reused = reused }
  end },

  { path = "/idle", handler = function()
      local sock = assert(open(nil, "idle"))
      ask(sock, "PING")
      return 200, { keep = sock:setkeepalive(100) }
  end },

  -- pooled before the server's late answer comes
  { path = "/late", handler = function()
      local sock = assert(open(nil, "late"))
      sock:send("SLOW 100 late\n")
      return 200, { keep = sock:setkeepalive(60000) }
  end },

  { path = "/eof", handler = function()
      local sock = assert(open())
      sock:send("CLOSE_AFTER abc\n")
      local data, err, partial = sock:receive(10)
      local d2, err2 = sock:receive()
      local ok, kerr = sock:setkeepalive()
      local s2 = assert(open())
      s2:send("CLOSE_AFTER no newline\n")
      local l, lerr, lpartial = s2:receive("*l")
      s2:close()
      return 200, { data = data, err = err, partial = partial, d2 = d2, err2 = err2, keep = ok,
                    kerr = kerr, l = l, lerr = lerr, lpartial = lpartial }
  end },

  { path = "/all", handler = function(req)
      local sock = assert(open())
      sock:send("BIG " .. req.query.n .. "\n")
      local data, err = sock:receive("*a")
      local again, aerr = sock:receive("*a")
      sock:close()
      local sum = 0
      for i = 1, #data, 997 do sum = (sum + data:byte(i) * i) % 1000000007 end
      return 200, { len = #data, sum = sum, err = err, again = again, aerr = aerr }
  end },

  -- 4 MiB each way: the send waits for the socket to drain
  { path = "/bigsend", handler = function()
      local sock = assert(open())
      local data = string.rep("abcdefg\n", 512 * 1024)
      local n1 = sock:send("ECHO " .. #data .. "\n")
      local n2, err = sock:send(data)
      local back, rerr = sock:receive(#data)
      local ok = sock:setkeepalive()
      local s2 = assert(open())
      s2:settimeouts(1000, 300, 1000)
      s2:send("STALL\n")
      local n3, serr = s2:send(string.rep("x", 16 * 1024 * 1024))
      local _, kerr = s2:setkeepalive()
      return 200, { n1 = n1, n2 = n2, err = err, same = back == data, rerr = rerr, keep = ok,
                    n3 = n3, serr = serr, kerr = kerr }
  end },

  { path = "/unix", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(2000)
      local ok, err = sock:connect("unix:$UNIX")
      if not ok then return 502, { err = err } end
      local pong = ask(sock, "PING")
      sock:setkeepalive()
      local s2 = moongate.socket.tcp()
      local ok2 = s2:connect("unix:$UNIX")
      local reused = s2:getreusedtimes()
      s2:close()
      local _, nerr = moongate.socket.tcp():connect("unix:$UNIX.none")
      return 200, { ok = ok, pong = pong, ok2 = ok2, reused = reused, nerr = nerr }
  end },

  { path = "/bounds", handler = function()
      local sock = assert(open())
      sock:send("SEND 1100000\n")
      local l, lerr, lpartial = sock:receive("*l")
      sock:close()
      local s2 = assert(open())
      s2:send("SEND 17000000\n")
      local a, aerr, apartial = s2:receive("*a")
      local _, kerr = s2:setkeepalive()
      return 200, { l = l, lerr = lerr, lpartial = #lpartial, a = a, aerr = aerr,
                    apartial = #apartial, kerr = kerr,
                    raises = not pcall(s2.receive, s2, 16 * 1024 * 1024 + 1) }
  end },

  { path = "/until", handler = function()
      local sock = assert(open())
      sock:send("PARTS\n")
      local reader = sock:receiveuntil("--sep--")
      local a, aerr = reader()
      local chunks = {}
      while true do
        local c, cerr = reader(2)
        if not c then chunks[#chunks + 1] = cerr or "END" break end
        chunks[#chunks + 1] = c
      end
      local rest, rerr, partial = reader()
      sock:close()
      local s2 = assert(open())
      s2:send("PARTS\n")
      local incl = s2:receiveuntil("--sep--", { inclusive = true })
      local i1 = incl()
      s2:close()
      return 200, { a = a, aerr = aerr, chunks = chunks, rest = rest, rerr = rerr,
                    partial = partial, i1 = i1 }
  end },

  { path = "/read-timeout", handler = function()
      local sock = assert(open())
      sock:settimeouts(1000, 1000, 300)
      sock:send("SEND 4\nSILENT\n")
      local data, err, partial = sock:receive(10)
      local d2, err2, p2 = sock:receive("*l")
      local ok, kerr = sock:setkeepalive()
      return 200, { data = data, err = err, partial = partial, d2 = d2, err2 = err2, p2 = p2,
                    keep = ok, kerr = kerr }
  end },

  { path = "/connect-timeout", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(300)
      local ok, err = sock:connect("127.0.0.1", FULL)
      local _, cerr = sock:close()
      return 200, { ok = ok, err = err, cerr = cerr }
  end },

  { path = "/errors", handler = function()
      local r = {}
      local sock = moongate.socket.tcp()
      r.refused = select(2, sock:connect("127.0.0.1", $DEAD))
      r.recv_closed = select(2, sock:receive())
      r.send_closed = select(2, sock:send("x"))
      r.close_closed = select(2, sock:close())
      r.keep_closed = select(2, sock:setkeepalive())
      r.reused_closed = select(2, sock:getreusedtimes())
      r.badport = select(2, sock:connect("127.0.0.1", 70000))
      r.raises = not pcall(sock.receive, sock, "*x")
      r.wrong_self = select(2, pcall(sock.close, {}))
      local s2 = assert(open())
      s2:send("RESET\n")
      local d, rerr = s2:receive()
      r.reset = rerr
      r.reset_data = d
      local s3 = moongate.socket.tcp()
      r.name = s3:connect("localhost", ECHO)
      r.name_id = ask(s3, "PING")
      s3:close()
      return 200, r
  end },

  -- kept reachable after the request (so the GC cannot be what closes them)
  { path = "/forget", handler = function()
      local sock = assert(open(nil, "forget"))
      ask(sock, "PING")
      local s2 = assert(open(nil, "forget"))
      s2:send("SILENT\n")
      forgotten = { sock, s2 }
      return 200, "left open"
  end },
  { path = "/forgotten", handler = function()
      local _, err = forgotten[1]:send("PING\n")
      local _, err2 = forgotten[2]:receive()
      return 200, { err = err, err2 = err2 }
  end },

  -- dropped sockets: the GC closes them before the request ends
  { path = "/gc", handler = function()
      local function server_open()
        local s = assert(open(nil, "gcstats"))
        local n = json.decode(ask(s, "STATS")).open
        s:setkeepalive()
        return n
      end
      local before = server_open()
      for _ = 1, 20 do
        local sock = assert(open(nil, "gc"))
        ask(sock, "PING")
      end
      collectgarbage("collect")
      collectgarbage("collect")
      local now = server_open()
      for _ = 1, 100 do -- the server notices the closes in its own time
        if now <= before then break end
        moongate.sleep(0.02)
        now = server_open()
      end
      return 200, { before = before, now = now }
  end },

  -- a timer's coroutine
  { path = "/timer", handler = function()
      timer_result = "armed"
      moongate.timer(0, function()
        local sock = assert(open())
        timer_result = ask(sock, "PING")
        sock:setkeepalive()
      end)
      return 200, timer_result
  end },
  { path = "/timer-result", handler = function() return 200, timer_result end },

  { path = "/stats", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(2000)
      assert(sock:connect("127.0.0.1", ECHO, { pool = "stats" }))
      local line = ask(sock, "STATS")
      sock:close()
      return 200, json.decode(line)
  end },

  { path = "/slow", handler = function(req)
      local sock, err = open(10000)
      if not sock then return 502, { err = err } end
      local line, rerr = ask(sock, "SLOW 200 " .. req.query.i)
      if not line then return 502, { err = rerr } end
      local ok, kerr = sock:setkeepalive(10000, 50)
      if not ok then return 502, { err = kerr } end
      return 200, line
  end },

  { path = "/guarded", access = auth, handler = function() return 200, "allowed" end },
  { prefix = "/up", upstream = "up", access = auth },

  { path = "/ws/sock", websocket = { mode = "handler", heartbeat = { interval = 0 } },
    handler = function(ws)
      while true do
        local data = ws:recv()
        if not data then break end
        local sock = assert(open())
        local n = sock:send("ECHO " .. #data .. "\n" .. data)
        local back, err = sock:receive(#data)
        sock:setkeepalive()
        ws:send((back or err) .. "/" .. tostring(n))
      end
  end },

  { path = "/tls", handler = function(req)
      local q = req.query
      local sock = moongate.socket.tcp()
      sock:settimeout(3000)
      local ok, err = sock:connect("127.0.0.1", tonumber(q.port))
      if not ok then return 502, { err = err } end
      local reuse = nil
      if q.nosess then reuse = false end
      local sess, herr = sock:sslhandshake(reuse, q.sni, q.verify == "1")
      if not sess then
        sock:close()
        return 200, { herr = herr }
      end
      local n = sock:send("hello tls\n")
      local line, rerr = sock:receive("*l")
      sock:close()
      return 200, { sess = type(sess), n = n, line = line, rerr = rerr }
  end },

  -- README.md's example, as written there (the port aside)
  { path = "/api/hits", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(1000)                        -- ms
      local ok, err = sock:connect("127.0.0.1", $REDIS)
      if not ok then return 502, { error = err } end
      sock:send("INCR hits\r\n")                  -- a Redis inline command
      local line, rerr = sock:receive()            -- ":42"
      if not line then return 502, { error = rerr } end
      sock:setkeepalive(10000, 32)                 -- back to the worker's pool
      return 200, { hits = tonumber(line:sub(2)) }
  end },

  -- docs/plugins.md's example
  { path = "/docs-incr", handler = function()
      local function redis_incr(key)
        local sock = moongate.socket.tcp()
        sock:settimeout(1000)                        -- milliseconds, as OpenResty
        local ok, err = sock:connect("127.0.0.1", $REDIS)
        if not ok then return nil, err end
        local _, serr = sock:send({ "INCR ", key, "\r\n" })   -- a string or a (nested) table
        if serr then return nil, serr end
        local line, rerr = sock:receive()            -- "*l": ":42" (the CR LF dropped)
        if not line then return nil, rerr end
        sock:setkeepalive(10000, 32)                 -- back to this worker's pool
        return tonumber(line:sub(2))
      end
      return 200, { n = redis_incr("docs") }
  end },

  -- TLS 1.2: the session comes with the handshake; the next one resumes it
  { path = "/tls-resume", handler = function(req)
      local port = tonumber(req.query.port)
      local r = {}
      local sess
      for i = 1, 2 do
        local sock = moongate.socket.tcp()
        sock:settimeout(3000)
        assert(sock:connect("127.0.0.1", port))
        local s, herr = sock:sslhandshake(sess, "localhost", true)
        r[i] = { kind = type(s), herr = herr, n = sock:send("round " .. i .. "\n"),
                 line = sock:receive() }
        sess = s
        sock:close()
      end
      return 200, r
  end },

  { path = "/redis", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(2000)
      local ok, err = sock:connect("127.0.0.1", $REDIS)
      if not ok then return 502, { err = err } end
      local function cmd(...)
        local args = { ... }
        local t = { "*", #args, "\r\n" }
        for _, a in ipairs(args) do
          t[#t + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
        end
        assert(sock:send(t))
        local line = assert(sock:receive())
        local kind = line:sub(1, 1)
        if kind == "$" then
          local n = tonumber(line:sub(2))
          if n < 0 then return nil end
          local v = assert(sock:receive(n + 2))
          return v:sub(1, n)
        end
        return line
      end
      local r = { ping = cmd("PING"), set = cmd("SET", "cosock:k", "v\r\nwith crlf"),
                  get = cmd("GET", "cosock:k"), missing = cmd("GET", "cosock:none"),
                  reused = sock:getreusedtimes() }
      sock:setkeepalive()
      return 200, r
  end },
}
]=]

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

local procs = {}

local function track(pid)
    if pid then
        procs[#procs + 1] = helpers.track(pid) -- so that helpers.stop will stop it
    end
end

local function stop_all()
    for _, pid in ipairs(procs) do
        helpers.stop(pid, 3)
    end
    procs = {}
end

local function start_server()
    local dir = helpers.tmpdir("cosock-srv")
    local pidfile, out = dir .. "/pid", dir .. "/out"
    local unix = dir .. "/line.sock"
    assert(os.execute(fmt("%s %s --pidfile %s --unix %s > %s 2>&1 < /dev/null &", helpers.python,
        shq(SERVER_PY), shq(pidfile), shq(unix), shq(out))))
    local ports = helpers.wait_until(function()
        local s = helpers.read_file(out) or ""
        local p, f = s:match("PORT (%d+)\nFULL (%d+)")
        return p and { port = tonumber(p), full = tonumber(f), unix = unix }
    end, 10)
    track(helpers.wait_until(function() return tonumber(helpers.read_file(pidfile) or "") end, 5))
    assert(ports, "cosock_server.py did not start: " .. (helpers.read_file(out) or ""))
    return ports
end

-- redis-server on a free port, no persistence; nil when it is not installed
local function start_redis()
    if not helpers.sh("command -v redis-server"):match("redis") then
        return nil
    end
    local dir = helpers.tmpdir("cosock-redis")
    local port = helpers.free_port()
    local pidfile = dir .. "/redis.pid"
    assert(os.execute(fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
        .. "--dir %s --pidfile %s --daemonize yes > %s/out 2>&1", port, shq(dir), shq(pidfile),
        shq(dir))))
    assert(helpers.wait_until(function() return helpers.port_open(port) end, 10),
        "redis-server did not start")
    track(helpers.wait_until(function() return tonumber(helpers.read_file(pidfile) or "") end, 5))
    return port
end

-- openssl s_server -rev with cert c on a free port
local function start_s_server(c, extra)
    local port = helpers.free_port()
    local dir = helpers.tmpdir("cosock-tls")
    local pidfile = dir .. "/pid"
    assert(os.execute(fmt("openssl s_server -quiet -rev -accept 127.0.0.1:%d -cert %s -key %s %s "
        .. "> %s/out 2>&1 < /dev/null & echo $! > %s", port, shq(c.cert), shq(c.key),
        extra or "", shq(dir), shq(pidfile))))
    track(helpers.wait_until(function() return tonumber(helpers.read_file(pidfile) or "") end, 5))
    assert(helpers.wait_until(function() return helpers.port_open(port) end, 10),
        "openssl s_server did not start: " .. (helpers.read_file(dir .. "/out") or ""))
    return { port = port, dir = dir }
end

describe("cosockets (moongate.socket.tcp)", function()
    local srv, up, mg, redis, certs

    lazy_setup(function()
        srv = start_server()
        up = helpers.start_upstream()
        redis = start_redis()
        local d = helpers.tmpdir("cosock-certs")
        local ca = tls.ca(d .. "/ca", "cosock test CA")
        local other = tls.ca(d .. "/other", "cosock other CA")
        certs = { ca = ca, srv = tls.cert(ca, { names = { "localhost" } }),
                  unknown = tls.cert(other, { names = { "localhost" } }) }
        mg = helpers.start_moongate({
            name = "cosock", conf = CONF, routes = ROUTES, upstream = up,
            vars = { MARK = "1", ECHO = srv.port, FULL = srv.full, DEAD = helpers.free_port(),
                     UNIX = srv.unix,
                     REDIS = redis or 1 },
            env = { SSL_CERT_FILE = ca.cert },
        })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        stop_all()
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function get_json(path, opts)
        local st, _, body = helpers.http(mg.port, "GET", path, opts)
        local ok, j = pcall(json.decode, body)
        return st, ok and j or body
    end

    it("sends strings and nested tables, receives a size, lines, receiveany", function()
        local st, j = get_json("/exchange")
        assert.equal(200, st)
        assert.same({ sent = 19, echoed = "hello world", crlf = 5, l1 = "one", l2 = "two",
                      zero = "", any = "xxxxx", pong = "PONG" }, j)
    end)

    it("pools connections per worker: getreusedtimes counts, the same connection answers", function()
        local _, first = get_json("/id")
        assert.equal(1, first.keep)
        assert.equal("closed", first.cerr) -- setkeepalive closed the object
        local _, second = get_json("/id")
        local _, third = get_json("/id")
        assert.equal(first.reused + 1, second.reused)
        assert.equal(first.reused + 2, third.reused)
        assert.equal(first.id, second.id)
        assert.equal(first.id, third.id)
    end)

    it("does not pool a connection with unread data", function()
        local st, j = get_json("/unread")
        assert.equal(200, st)
        assert.equal("x", j.x)
        assert.is_nil(j.ok)
        assert.equal("unread data in buffer", j.err)
        assert.equal(0, j.reused) -- the next connect made a new connection
    end)

    it("closes a pooled connection idle past setkeepalive's timeout", function()
        local _, before = get_json("/stats")
        local _, j = get_json("/idle")
        assert.equal(1, j.keep)
        assert.truthy(helpers.wait_until(function()
            local _, s = get_json("/stats")
            return s.open <= before.open
        end, 5), "the idle connection stayed open")
    end)

    it("closes an idle pooled connection when its server sends anything", function()
        local _, before = get_json("/stats")
        local _, j = get_json("/late")
        assert.equal(1, j.keep)
        assert.truthy(helpers.wait_until(function()
            local _, s = get_json("/stats")
            return s.open <= before.open
        end, 5), "the pooled connection stayed open after unasked-for data")
    end)

    it("returns nil, \"closed\" and the partial data on EOF mid-receive", function()
        local st, j = get_json("/eof")
        assert.equal(200, st)
        assert.same({ err = "closed", partial = "abc", err2 = "closed", kerr = "closed",
                      lerr = "closed", lpartial = "no newline" }, j)
    end)

    it("reads to the end with \"*a\" (1 MiB, byte for byte)", function()
        local n = 1024 * 1024 + 7
        local st, j = get_json("/all?n=" .. n)
        assert.equal(200, st)
        local sum = 0
        for i = 1, n, 997 do
            sum = (sum + bit.band((i - 1) * 7 + 3, 0xFF) * i) % 1000000007
        end
        assert.equal(n, j.len)
        assert.equal(sum, j.sum)
        assert.is_nil(j.err)
        assert.is_nil(j.again)
        assert.equal("closed", j.aerr)
    end)

    it("sends 4 MiB through a socket that fills, times a stalled send out", function()
        local st, j = get_json("/bigsend")
        assert.equal(200, st)
        assert.same({ n1 = 13, n2 = 4194304, same = true, keep = 1, serr = "timeout",
                      kerr = "closed" }, j)
    end)

    it("connects to a unix socket (\"unix:/path\"), pooled like TCP", function()
        local st, j = get_json("/unix")
        assert.equal(200, st)
        assert.same({ ok = 1, pong = "PONG", ok2 = 1, reused = 1,
                      nerr = "no such file or directory" }, j)
    end)

    it("bounds every read: 1 MiB for a line, 16 MiB for \"*a\" and a size", function()
        local st, j = get_json("/bounds")
        assert.equal(200, st)
        assert.equal("line too long", j.lerr)
        assert.truthy(j.lpartial > 1024 * 1024 and j.lpartial <= 1024 * 1024 + 65536, j.lpartial)
        assert.equal("too large", j.aerr)
        assert.truthy(j.apartial > 16 * 1024 * 1024 and j.apartial <= 16 * 1024 * 1024 + 65536)
        assert.equal("closed", j.kerr)
        assert.is_true(j.raises)
    end)

    it("reads up to a pattern with receiveuntil, whole or in sized chunks", function()
        local st, j = get_json("/until")
        assert.equal(200, st)
        assert.equal("alpha", j.a)
        assert.same({ "be", "ta", "END" }, j.chunks)
        assert.is_nil(j.rest)
        assert.equal("closed", j.rerr)
        assert.equal("gamma", j.partial)
        assert.equal("alpha--sep--", j.i1)
    end)

    it("times a read out (nil, \"timeout\", partial), keeps the socket, never pools it", function()
        local st, j = get_json("/read-timeout")
        assert.equal(200, st)
        assert.same({ err = "timeout", partial = "xxxx", err2 = "timeout", p2 = "",
                      kerr = "closed" }, j)
    end)

    it("times a connect to a listener with a full backlog out", function()
        local st, j = get_json("/connect-timeout")
        assert.equal(200, st)
        assert.same({ err = "timeout", cerr = "closed" }, j)
    end)

    it("reports errors as nil, err; resolves names without blocking", function()
        local st, j = get_json("/errors")
        assert.equal(200, st)
        assert.equal("connection refused", j.refused)
        assert.equal("closed", j.recv_closed)
        assert.equal("closed", j.send_closed)
        assert.equal("closed", j.close_closed)
        assert.equal("closed", j.keep_closed)
        assert.equal("closed", j.reused_closed)
        assert.equal("bad port number: 70000", j.badport)
        assert.is_true(j.raises)
        assert.matches("moongate.socket.tcp expected", j.wrong_self)
        assert.equal("connection reset by peer", j.reset)
        assert.equal(1, j.name)
        assert.equal("PONG", j.name_id)
    end)

    it("closes the sockets a handler forgot when its request ends", function()
        local _, before = get_json("/stats")
        local st, _, body = helpers.http(mg.port, "GET", "/forget")
        assert.equal(200, st)
        assert.equal("left open", body)
        -- the server sees both connections closed: open falls back (the
        -- stats connection itself counts in both)
        local after = helpers.wait_until(function()
            local _, s = get_json("/stats")
            return s.open <= before.open and s
        end, 5)
        assert.truthy(after, "the forgotten sockets stayed open")
        assert.truthy(after.accepted >= before.accepted + 2)
        local _, j = get_json("/forgotten")
        assert.same({ err = "closed", err2 = "closed" }, j)
    end)

    it("lets the GC close sockets dropped while the request runs", function()
        local st, j = get_json("/gc")
        assert.equal(200, st)
        assert.truthy(j.now <= j.before, json.encode(j))
    end)

    it("works in a timer", function()
        local _, _, body = helpers.http(mg.port, "GET", "/timer")
        assert.equal("armed", body)
        assert.truthy(helpers.wait_until(function()
            local _, _, b = helpers.http(mg.port, "GET", "/timer-result")
            return b == "PONG"
        end, 5))
    end)

    it("serves 200 concurrent requests each doing a socket exchange", function()
        local _, before = get_json("/stats")
        local out, rc = tls.py([[
import asyncio, sys
port = int(sys.argv[1])
async def one(i):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /slow?i=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b" ")[1] == b"200" and body.strip() == b"%d" % i
async def main():
    res = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 60)
    print("OK", sum(1 for x in res if x))
asyncio.run(main())
]], { tostring(mg.port) }, 90)
        assert.equal(0, rc, out)
        assert.equal("OK 200", out:match("OK %d+"), out)
        -- the pool (size 50) keeps at most 50 of those connections open
        local settled = helpers.wait_until(function()
            local _, s = get_json("/stats")
            return s.open <= before.open + 50 and s
        end, 5)
        assert.truthy(settled, "more than 50 connections stayed pooled")
    end)

    it("works in an access hook", function()
        assert.equal(200, (helpers.http(mg.port, "GET", "/guarded",
            { headers = { "X-Token: good" } })))
        local st, _, body = helpers.http(mg.port, "GET", "/guarded",
            { headers = { "X-Token: bad" } })
        assert.equal(403, st)
        assert.equal("denied by the auth server", json.decode(body).error)
        -- a proxied route: the hooks run in a coroutine of their own
        assert.equal(200, (helpers.http(mg.port, "GET", "/up/x", { headers = { "X-Token: good" } })))
        assert.equal(403, (helpers.http(mg.port, "GET", "/up/x", { headers = { "X-Token: no" } })))
    end)

    it("works in a WebSocket handler", function()
        local rep = ws.py_client({ url = fmt("ws://127.0.0.1:%d/ws/sock", mg.port),
            send = { { text = "one" }, { text = "two words" } }, recv = 2 })
        assert.is_nil(rep.error, rep.raw_output)
        assert.equal("one/10", rep.messages[1].data)
        assert.equal("two words/16", rep.messages[2].data)
    end)

    describe("sslhandshake against openssl s_server", function()
        it("talks TLS without verification", function()
            local s = start_s_server(certs.unknown)
            local st, j = get_json("/tls?port=" .. s.port)
            assert.equal(200, st)
            assert.same({ sess = j.sess, n = 10, line = "slt olleh" }, j)
            assert.truthy(j.sess == "userdata" or j.sess == "boolean")
        end)

        it("verifies the server against SSL_CERT_FILE and the name", function()
            local s = start_s_server(certs.srv)
            local st, j = get_json("/tls?verify=1&nosess=1&sni=localhost&port=" .. s.port)
            assert.equal(200, st)
            assert.same({ sess = "boolean", n = 10, line = "slt olleh" }, j)
            local _, bad = get_json("/tls?verify=1&sni=wrong.example&port=" .. s.port)
            assert.matches("^%d+: ", bad.herr)
        end)

        it("hands out a TLS 1.2 session and resumes with it", function()
            local s = start_s_server(certs.srv, "-tls1_2")
            local st, j = get_json("/tls-resume?port=" .. s.port)
            assert.equal(200, st)
            assert.same({ { kind = "userdata", n = 8, line = "1 dnuor" },
                          { kind = "userdata", n = 8, line = "2 dnuor" } }, j)
            -- s_server prints the client's signature algorithms on a full
            -- handshake only: a resumed one skips the certificate exchange
            local out = helpers.wait_until(function()
                local o = helpers.read_file(s.dir .. "/out") or ""
                return select(2, o:gsub("CONNECTION CLOSED", "")) >= 2 and o
            end, 5) or ""
            local _, established = out:gsub("CONNECTION ESTABLISHED", "")
            local _, full = out:gsub("Signature Algorithms:", "")
            assert.equal(2, established, out)
            assert.equal(1, full, out)
        end)

        it("refuses a certificate from an unknown CA when verifying", function()
            local s = start_s_server(certs.unknown)
            local _, j = get_json("/tls?verify=1&sni=localhost&port=" .. s.port)
            assert.equal("20: unable to get local issuer certificate", j.herr)
        end)
    end)

    it("speaks Redis by hand (PING, SET, GET) over a pooled connection", function()
        if not redis then
            pending("redis-server is not installed (make deps installs it)")
            return
        end
        local _, j = get_json("/redis")
        assert.same({ ping = "+PONG", set = "+OK", get = "v\r\nwith crlf", reused = 0 }, j)
        local _, j2 = get_json("/redis")
        assert.equal(1, j2.reused)
        -- the examples of README.md and docs/plugins.md
        assert.same({ hits = 1 }, select(2, get_json("/api/hits")))
        assert.same({ hits = 2 }, select(2, get_json("/api/hits")))
        assert.same({ n = 1 }, select(2, get_json("/docs-incr")))
        assert.same({ n = 2 }, select(2, get_json("/docs-incr")))
    end)

    it("keeps the worker's pool across a reload", function()
        local _, a = get_json("/id")
        local _, b = get_json("/id")
        assert.equal(a.id, b.id)
        mg.vars.MARK = "2"
        mg:write_routes(ROUTES)
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            local _, _, body = helpers.http(mg.port, "GET", "/mark")
            return body == "2"
        end, 10), "the reload did not take")
        local _, c = get_json("/id")
        assert.equal(b.id, c.id)
        assert.equal(b.reused + 1, c.reused)
    end)
end)
