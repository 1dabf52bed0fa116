-- moongate.redis (issue 15): the Redis client on cosockets, against real
-- redis-server processes this spec starts (spec/redis_helpers.lua): commands
-- as methods, replies and error replies, pipelining, EVALSHA with the EVAL
-- fallback after SCRIPT FLUSH, an ACL user and a db index, the RESP bounds,
-- timeouts on a paused Redis (SIGSTOP), a Redis that is down (fail fast),
-- reconnect after it returns, pub/sub restored after a restart, rediss://.
local helpers = require "spec.helpers"
local rh = require "spec.redis_helpers"
local tls = require "spec.tls_helpers"
local json = helpers.json
local shq = helpers.shq

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  redis = { url = "redis://127.0.0.1:$REDIS/0", timeout = 0.5, pool = 4,
            backoff = 0.2, backoff_max = 0.8 },
}
]]

local ROUTES = [=[
local moongate = require "moongate"
local redis = require "moongate.redis"
local json = moongate.json

local got = {} -- channel -> messages this worker's callbacks saw
local function keep(tag)
  return function(msg, ch)
    got[ch] = got[ch] or {}
    local list = got[ch]
    list[#list + 1] = tag .. ":" .. msg
  end
end

local function client(req)
  local q = req.query
  if q.url then
    return assert(redis.new({ url = q.url, timeout = 0.5, server_name = q.server_name,
                              backoff = 0.2, backoff_max = 0.8 }))
  end
  return assert(redis.new())
end

return {
  { path = "/basic", handler = function()
      local r = client({ query = {} })
      local o = {}
      o.set = r:set("k1", "v1")
      o.get = r:get("k1")
      o.missing = r:get("no-such-key") == redis.null
      r:del("n")
      o.incr = r:incr("n")
      o.incr_nil, o.incr_err = r:incr("k1")
      r:del("h")
      o.hset = r:hset("h", "a", "1", "b", 2)
      o.hash = redis.array_to_hash(r:hgetall("h"))
      o.call = r:call("strlen", "k1")
      local bin = "a\r\nb\0c$-1\r\n*3"
      r:set("bin", bin)
      o.bin = r:get("bin") == bin
      r:del("l")
      r:rpush("l", "x", "y", "z")
      o.list = r:lrange("l", 0, -1)
      o.typo_nil, o.typo_err = r:no_such_command("x")
      o.refused = select(2, pcall(function() return r:select(2) end))
      return 200, o
  end },
  { path = "/pipeline", handler = function()
      local r = client({ query = {} })
      r:del("p")
      r:init_pipeline()
      local queued = r:set("p", 1)
      r:incr("p")
      r:incr("k1") -- an error reply, in its place
      r:get("p")
      local res, err = r:commit_pipeline()
      local again, aerr = r:commit_pipeline()
      return 200, { queued = queued, res = res, err = err, again = again, aerr = aerr }
  end },
  { path = "/script", handler = function()
      local r = client({ query = {} })
      local s = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
      local v, err = r:run_script(s, 1, "scripted", 5)
      return 200, { v = v, err = err, sha = s.sha }
  end },
  { path = "/nested", handler = function()
      local r = client({ query = {} })
      local v, err = r:eval("return {{{{{{{{{{1}}}}}}}}}}", 0)
      local after = r:get("k1")
      return 200, { v = v, err = err, after = after }
  end },
  { path = "/big", handler = function()
      local r = client({ query = {} })
      local v = string.rep("0123456789abcdef", 1024 * 1024) -- 16 MiB, the bound
      local ok, err = r:set("big", v)
      local got, gerr = r:get("big")
      r:del("big")
      return 200, { ok = ok, err = err, same = got == v, len = type(got) == "string" and #got,
                    gerr = gerr }
  end },
  -- one command on another server: ?url=&args=["GET","k"]
  { path = "/other", handler = function(req)
      local r = client(req)
      local args = json.decode(req.query.args)
      local v, err = r:call(unpack(args))
      return 200, { v = v, err = err }
  end },
  -- n GETs in a row on the conf's redis: how each ended, and how long all took
  { path = "/many", handler = function(req)
      local r = client({ query = {} })
      local n = tonumber(req.query.n) or 1
      local t0 = moongate.now()
      local out = {}
      for i = 1, n do
        local v, err = r:get("k1")
        out[i] = v and ("ok:" .. tostring(v)) or err
      end
      return 200, { results = out, secs = moongate.now() - t0 }
  end },
  { path = "/sub", handler = function(req)
      local ch = req.query.ch
      assert(redis.subscribe(ch, keep("a")))
      assert(redis.subscribe(ch, keep("b")))
      return 200, { ok = true }
  end },
  { path = "/unsub", handler = function(req)
      return 200, { ok = redis.unsubscribe(req.query.ch) }
  end },
  { path = "/msgs", handler = function(req)
      local ch = req.query.ch
      return 200, { msgs = got[ch] or {}, confirmed = redis.subscribed(ch),
                    status = redis.status().subscriber }
  end },
  { path = "/pub", handler = function(req)
      local n, err = redis.publish(req.query.ch, req.query.msg)
      return 200, { n = n, err = err }
  end },
}
]=]

describe("the redis conf", function()
    -- moongate -t (and -T) in a fresh dir with this conf; env: a shell prefix
    local function check(conf, env, flag)
        local dir = helpers.tmpdir("redis-conf")
        helpers.mkdir_p(dir .. "/conf")
        helpers.mkdir_p(dir .. "/scripts")
        helpers.write_file(dir .. "/conf/moongate.lua", conf)
        helpers.write_file(dir .. "/scripts/routes.lua", "return {}\n")
        return helpers.sh(string.format("cd %s && env -u MOONGATE_REDIS_URL %s %s %s -c "
            .. "conf/moongate.lua", shq(dir), env or "", shq(helpers.bin), flag or "-t"))
    end

    it("is checked at load with file:line errors", function()
        local out, rc = check('return {\n  workers = 1,\n  redis = {\n    url = "http://x",\n  },\n}\n')
        assert.not_equal(0, rc)
        assert.matches("conf/moongate.lua:4: redis.url: expected a redis:// or rediss:// URL, got "
            .. "'http://x'", out, 1, true)
        out = check('return {\n  redis = { url = "redis://127.0.0.1", poool = 3 },\n}\n')
        assert.matches("conf/moongate.lua:2: redis.poool: unknown field 'poool'", out, 1, true)
        out = check('return {\n  redis = { url = "redis://127.0.0.1/x" },\n}\n')
        assert.matches("redis.url: bad database 'x'", out, 1, true)
        out = check('return {\n  redis = {\n    url = "redis://h", timeout = -1 },\n}\n')
        assert.matches("conf/moongate.lua:3: redis.timeout: expected a number from", out, 1, true)
        out = check('return {\n  redis = { pool = 3 },\n}\n')
        assert.matches("redis.url: missing", out, 1, true)
    end)

    it("takes MOONGATE_REDIS_URL, and keeps the password out of -T", function()
        local out, rc = check("return { workers = 1 }\n", "MOONGATE_REDIS_URL=redis://h:99999")
        assert.not_equal(0, rc)
        assert.matches("env:0: MOONGATE_REDIS_URL: bad port 99999 (1-65535)", out, 1, true)
        out, rc = check("return { workers = 1 }\n",
            "MOONGATE_REDIS_URL=" .. shq("rediss://u:pw-secret@h:7000/1"), "-T")
        assert.equal(0, rc, out)
        assert.not_matches("not a moongate variable", out, 1, true)
        assert.matches('"redis":"environment"', out, 1, true) -- sources
        assert.matches('"url":"rediss://u:***@h:7000/1"', out, 1, true)
        assert.not_matches("pw-secret", out, 1, true)
    end)
end)

describe("moongate.redis", function()
    local main, mg

    local function get(path, opts)
        local st, _, body = helpers.http(mg.port, "GET", path, opts)
        local ok, j = pcall(json.decode, body)
        assert.equal(200, st, body)
        assert(ok, body)
        return j
    end

    local function esc(s)
        return (s:gsub("[^%w%-_.~]", function(c) return string.format("%%%02X", c:byte()) end))
    end

    lazy_setup(function()
        assert(rh.installed(), "redis-server is not installed (make deps installs it)")
        main = rh.start({ name = "redis-main" })
        mg = helpers.start_moongate({
            name = "redis-client", conf = CONF, routes = ROUTES, vars = { REDIS = main.port },
        })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        rh.stop(main)
        helpers.cleanup()
    end)

    it("runs commands as methods: replies, nil, error replies, binary-safe values", function()
        local j = get("/basic")
        assert.equal("OK", j.set)
        assert.equal("v1", j.get)
        assert.is_true(j.missing)
        assert.equal(1, j.incr)
        assert.is_nil(j.incr_nil)
        assert.equal("ERR value is not an integer or out of range", j.incr_err)
        assert.equal(2, j.hset)
        assert.same({ a = "1", b = "2" }, j.hash)
        assert.equal(2, j.call)
        assert.is_true(j.bin)
        assert.same({ "x", "y", "z" }, j.list)
        assert.is_nil(j.typo_nil)
        assert.matches("^ERR unknown command", j.typo_err)
        assert.matches("SELECT: give the database in the URL", j.refused, 1, true)
        -- what moongate wrote is what redis-cli reads
        assert.equal("v1", rh.cli(main, "GET k1"))
    end)

    it("pipelines: one round trip, replies in order, an error reply in its place", function()
        local before = rh.cli(main, "INFO stats"):match("total_commands_processed:(%d+)")
        local j = get("/pipeline")
        assert.is_true(j.queued)
        assert.equal("OK", j.res[1])
        assert.equal(2, j.res[2])
        assert.same({ false, "ERR value is not an integer or out of range" }, j.res[3])
        assert.equal("2", j.res[4])
        assert.is_nil(j.again)
        assert.equal("no pipeline (init_pipeline first)", j.aerr)
        local after = rh.cli(main, "INFO stats"):match("total_commands_processed:(%d+)")
        -- DEL + the 4 queued (+ the INFO itself)
        assert.equal(tonumber(before) + 6, tonumber(after))
    end)

    it("runs a script by EVALSHA, and by EVAL when Redis answers NOSCRIPT", function()
        rh.cli(main, "DEL scripted")
        rh.cli(main, "CONFIG RESETSTAT")
        local j = get("/script")
        assert.equal(5, j.v)
        local stats = rh.cli(main, "INFO commandstats")
        assert.matches("cmdstat_evalsha:calls=1,", stats, 1, true)
        assert.matches("cmdstat_eval:calls=1,", stats, 1, true) -- the fallback
        j = get("/script")
        assert.equal(10, j.v)
        stats = rh.cli(main, "INFO commandstats")
        assert.matches("cmdstat_evalsha:calls=2,", stats, 1, true)
        assert.matches("cmdstat_eval:calls=1,", stats, 1, true) -- EVAL cached it
        assert.equal("OK", rh.cli(main, "SCRIPT FLUSH"))
        assert.equal("0", rh.cli(main, "SCRIPT EXISTS " .. j.sha))
        j = get("/script")
        assert.equal(15, j.v)
        stats = rh.cli(main, "INFO commandstats")
        assert.matches("cmdstat_eval:calls=2,", stats, 1, true)
        assert.equal("1", rh.cli(main, "SCRIPT EXISTS " .. j.sha))
    end)

    it("refuses replies nested deeper than 8 and closes that connection", function()
        local j = get("/nested")
        assert.is_nil(j.v)
        assert.equal("redis protocol error: arrays nested deeper than 8", j.err)
        assert.equal("v1", j.after) -- a new connection, not the broken one
    end)

    it("bounds what it reads: bulk length, array size, the reply's shape", function()
        local dir = helpers.tmpdir("redis-hostile")
        local portfile, pidfile = dir .. "/port", dir .. "/pid"
        assert(os.execute(string.format("%s %s --portfile %s --lifetime 120 > %s/out 2>&1 "
            .. "< /dev/null & echo $! > %s", helpers.python,
            shq(helpers.root .. "/spec/fixtures/resp_server.py"), shq(portfile), shq(dir),
            shq(pidfile))))
        local pid = helpers.track(helpers.wait_until(function()
            return tonumber(helpers.read_file(pidfile) or "")
        end, 5))
        finally(function() helpers.stop(pid) end)
        local port = helpers.wait_until(function()
            return tonumber(helpers.read_file(portfile) or "")
        end, 10)
        assert(port, "resp_server.py did not start")
        local url = esc(string.format("redis://127.0.0.1:%d/0", port))
        local function ask(name)
            return get("/other?url=" .. url .. "&args=" .. esc('["GET","' .. name .. '"]'))
        end
        local cases = {
            bigbulk = "redis protocol error: bulk string of 16777217 bytes (at most 16777216)",
            bigarray = "redis protocol error: array of 1048577 items (at most 1048576)",
            neglen = "redis protocol error: bad bulk length",
            badtype = "redis protocol error: unknown reply type 0x3f",
            nocrlf = "redis protocol error: bulk string without CR LF",
            badint = "redis protocol error: bad integer reply",
        }
        for name, want in pairs(cases) do
            local j = ask(name)
            assert.is_nil(j.v)
            assert.equal(want, j.err)
            -- the broken connection was closed, not pooled: the next call is fine
            assert.equal("OK", ask("fine").v)
        end
    end)

    it("reads a bulk string of 16 MiB, the bound", function()
        local j = get("/big")
        assert.equal("OK", j.ok, j.err)
        assert.equal(16 * 1024 * 1024, j.len, j.gerr)
        assert.is_true(j.same)
    end)

    it("authenticates as an ACL user and selects the URL's database", function()
        local acl = rh.start({ name = "redis-acl",
            args = "--user default off --user alice on " .. shq(">s3cret") .. " "
                .. shq("~*") .. " " .. shq("&*") .. " " .. shq("+@all") })
        finally(function() rh.stop(acl) end)
        local url = string.format("redis://alice:s3cret@127.0.0.1:%d/3", acl.port)
        local j = get("/other?url=" .. esc(url) .. "&args=" .. esc('["SET","acl-key","in-db-3"]'))
        assert.equal("OK", j.v)
        local auth = "--user alice --pass s3cret --no-auth-warning"
        assert.equal("in-db-3", rh.cli(acl, "-n 3 GET acl-key", auth))
        assert.equal("", rh.cli(acl, "-n 0 GET acl-key", auth))
        -- a wrong password is an error, not a hang
        local bad = string.format("redis://alice:wrong@127.0.0.1:%d/3", acl.port)
        j = get("/other?url=" .. esc(bad) .. "&args=" .. esc('["GET","acl-key"]'))
        assert.is_nil(j.v)
        assert.matches("^AUTH: WRONGPASS", j.err)
        -- without AUTH the default user is off
        local anon = string.format("redis://127.0.0.1:%d/0", acl.port)
        j = get("/other?url=" .. esc(anon) .. "&args=" .. esc('["GET","acl-key"]'))
        assert.matches("^NOAUTH", j.err)
    end)

    it("talks TLS to rediss:// and verifies the server's certificate", function()
        local d = helpers.tmpdir("redis-certs")
        local ca = tls.ca(d .. "/ca", "redis test CA")
        local c = tls.cert(ca, { names = { "localhost" } })
        local r = rh.start({ name = "redis-tls", tls = { cert = c.cert, key = c.key, ca = ca.cert } })
        finally(function() rh.stop(r) end)
        local m2 = helpers.start_moongate({
            name = "redis-tls-mg", conf = CONF, routes = ROUTES, vars = { REDIS = r.port },
            env = { SSL_CERT_FILE = ca.cert },
        })
        finally(function() m2:stop() end)
        local function other(url, name, args)
            local st, _, body = helpers.http(m2.port, "GET", "/other?url=" .. esc(url)
                .. (name and ("&server_name=" .. name) or "") .. "&args=" .. esc(args))
            assert.equal(200, st, body)
            return json.decode(body)
        end
        local url = string.format("rediss://127.0.0.1:%d/0", r.tls_port)
        local j = other(url, "localhost", '["SET","tls-key","over-tls"]')
        assert.equal("OK", j.v, j.err)
        assert.equal("over-tls", rh.cli(r, "GET tls-key"))
        -- the URL's address is checked against the certificate's IP names
        j = other(url, nil, '["GET","tls-key"]')
        assert.equal("over-tls", j.v, j.err)
        j = other(url, "other.example", '["GET","tls-key"]')
        assert.is_nil(j.v)
        assert.matches("^TLS handshake: ", j.err)
        -- plain RESP to the TLS port fails (bounded), it does not hang
        j = other(string.format("redis://127.0.0.1:%d/0", r.tls_port), nil, '["GET","tls-key"]')
        assert.is_nil(j.v)
    end)

    describe("when Redis fails", function()
        local r, m3

        lazy_setup(function()
            r = rh.start({ name = "redis-fail" })
            m3 = helpers.start_moongate({
                name = "redis-fail-mg", conf = CONF, routes = ROUTES, vars = { REDIS = r.port },
            })
            rh.cli(r, "SET k1 v1")
        end)

        lazy_teardown(function()
            if m3 then m3:stop() end
            rh.stop(r)
        end)

        local function many(n)
            local st, _, body = helpers.http(m3.port, "GET", "/many?n=" .. n, { timeout = 60 })
            assert.equal(200, st, body)
            return json.decode(body)
        end

        local function wait_ok()
            return helpers.wait_until(function()
                return many(1).results[1] == "ok:v1"
            end, 15, 0.1)
        end

        it("times out on a paused Redis, then fails fast instead of waiting each call", function()
            assert.equal("ok:v1", many(1).results[1])
            rh.pause(r)
            local j = many(40)
            rh.resume(r)
            assert.equal("timeout", j.results[1])
            local fast = 0
            for i = 2, 40 do
                if j.results[i]:match("^redis 127%.0%.0%.1:%d+/0 unavailable %(timeout%)") then
                    fast = fast + 1
                end
            end
            -- at most one probe per backoff period waited its timeout again;
            -- 40 timeouts would take 20 s
            assert.is_true(fast >= 30, json.encode(j.results))
            assert.is_true(j.secs < 10, "took " .. j.secs .. " s")
            assert(wait_ok(), "no recovery after SIGCONT")
        end)

        it("fails fast while Redis is down and reconnects after it returns", function()
            assert(wait_ok())
            rh.stop(r)
            local j = many(20)
            -- refused (or, if the pooled connection's close was not seen
            -- yet, "closed" on it); then no more connects until the backoff ends
            local first = j.results[1]
            assert.is_truthy(first == "connect: connection refused" or first == "closed", first)
            for i = 2, 20 do
                assert.matches("unavailable (" .. first .. "); next try in", j.results[i], 1, true)
            end
            assert.is_true(j.secs < 2, "took " .. j.secs .. " s")
            assert.matches("redis 127.0.0.1:" .. r.port .. "/0: " .. first .. "; failing fast",
                m3:log(), 1, true)
            rh.restart(r)
            rh.cli(r, "SET k1 v1")
            assert(wait_ok(), "no reconnect after redis-server came back")
            assert.matches("reachable again after", m3:log())
        end)
    end)

    it("subscribes once per worker and channel, and restores it after a restart", function()
        local r = rh.start({ name = "redis-pubsub" })
        local m4 = helpers.start_moongate({
            name = "redis-pubsub-mg", conf = CONF, routes = ROUTES, vars = { REDIS = r.port },
        })
        finally(function()
            m4:stop()
            rh.stop(r)
        end)
        local function msgs()
            local st, _, body = helpers.http(m4.port, "GET", "/msgs?ch=news")
            assert.equal(200, st, body)
            return json.decode(body)
        end
        local st = helpers.http(m4.port, "GET", "/sub?ch=news")
        assert.equal(200, st)
        assert(helpers.wait_until(function() return msgs().confirmed end, 10), "never confirmed")
        assert.equal("news\n1", rh.cli(r, "PUBSUB NUMSUB news")) -- one connection, two callbacks
        assert.equal("1", rh.cli(r, "PUBLISH news hello"))
        assert(helpers.wait_until(function() return #msgs().msgs == 2 end, 10))
        assert.same({ "a:hello", "b:hello" }, msgs().msgs)
        -- published through moongate.redis too
        local _, _, body = helpers.http(m4.port, "GET", "/pub?ch=news&msg=again")
        assert.equal(1, json.decode(body).n)
        assert(helpers.wait_until(function() return #msgs().msgs == 4 end, 10))

        rh.restart(r)
        assert(helpers.wait_until(function()
            return rh.cli(r, "PUBSUB NUMSUB news") == "news\n1"
        end, 15, 0.1), "the subscription was not restored: " .. m4:log())
        assert.is_true(msgs().confirmed)
        assert.equal("1", rh.cli(r, "PUBLISH news after-restart"))
        assert(helpers.wait_until(function() return #msgs().msgs == 6 end, 10))
        assert.same({ "a:after-restart", "b:after-restart" }, { msgs().msgs[5], msgs().msgs[6] })
        assert.is_true(msgs().status.connects >= 2)
        assert.matches("redis subscriber 127%.0%.0%.1:%d+/0: connected again, channels restored",
            m4:log())

        -- a reload: the old generation's subscriber ends, the new scripts
        -- subscribe again; Redis still sees one subscriber
        m4:reload()
        helpers.http(m4.port, "GET", "/sub?ch=news")
        assert(helpers.wait_until(function() return msgs().confirmed end, 10))
        assert(helpers.wait_until(function()
            return rh.cli(r, "PUBSUB NUMSUB news") == "news\n1"
        end, 10), rh.cli(r, "PUBSUB NUMSUB news"))
        assert.equal("1", rh.cli(r, "PUBLISH news after-reload"))
        assert(helpers.wait_until(function() return #msgs().msgs == 2 end, 10))
        assert.same({ "a:after-reload", "b:after-reload" }, msgs().msgs)

        -- the last unsubscribe ends the subscription
        helpers.http(m4.port, "GET", "/unsub?ch=news")
        assert(helpers.wait_until(function()
            return rh.cli(r, "PUBSUB NUMSUB news") == "news\n0"
        end, 10), "still subscribed")
    end)
end)
