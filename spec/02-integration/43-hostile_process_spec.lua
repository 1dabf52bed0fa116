-- Hostile conditions for the process machinery (issue 10): running out of
-- file descriptors under a connection flood (defect 2), and reloads raced
-- by edits of the files on disk (defect 5).
local helpers = require "spec.helpers"
local socket = require "socket"

local fmt = string.format

local ROUTES = [=[
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
}
]=]

-- A wrapper that starts the binary under a descriptor limit set by `ulimit`
-- (so it also works with a binary that knows no max_open_files setting).
local function limited_bin(ulimit_args)
    local dir = helpers.tmpdir("ulimit")
    local path = dir .. "/moongate-limited"
    helpers.write_file(path, fmt("#!/bin/sh\nulimit %s || exit 97\nexec %s \"$@\"\n",
        ulimit_args, helpers.shq(helpers.bin)))
    assert(os.execute("chmod +x " .. helpers.shq(path)))
    return path
end

local function with_bin(bin, fn)
    local real = helpers.bin
    helpers.bin = bin
    local ok, res = pcall(fn)
    helpers.bin = real
    if not ok then
        error(res, 0)
    end
    return res
end

-- utime + stime of pid, in seconds.
local function cpu_seconds(pid)
    local s = helpers.read_file("/proc/" .. pid .. "/stat")
    local rest = s and s:match("^%d+ %(.*%) (.*)$")
    assert(rest, "no /proc/" .. pid .. "/stat")
    local f = {}
    for w in rest:gmatch("%S+") do
        f[#f + 1] = w
    end
    -- fields after "(comm)": state is #1, utime is field 14 of stat = #12 here
    return (tonumber(f[12]) + tonumber(f[13])) / 100
end

local function soft_nofile(pid)
    local s = helpers.read_file("/proc/" .. pid .. "/limits") or ""
    return tonumber(s:match("Max open files%s+(%d+)"))
end

local function count(s, pat)
    local n = 0
    for _ in s:gmatch(pat) do
        n = n + 1
    end
    return n
end

local function get(c, path)
    assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    return helpers.read_response(c, { timeout = 3 })
end

describe("descriptor exhaustion (defect 2)", function()
    lazy_teardown(function()
        helpers.cleanup()
    end)

    it("pauses accepting under EMFILE: low CPU, few log lines, old connections served, "
        .. "new ones within 1 s after the flood", function()
        local mg = with_bin(limited_bin("-n 64"), function()
            return helpers.start_moongate({ name = "emfile", routes = ROUTES, workers = 1,
                conf = 'return { listen = "127.0.0.1:$PORT", workers = 1, access_log = false }\n' })
        end)
        finally(function() mg:stop() end)
        local worker = helpers.wait_until(function() return mg:workers()[1] end, 5)
        assert.truthy(worker)
        assert.equal(64, soft_nofile(worker))

        local ka = assert(helpers.connect(mg.port))
        local res = assert(get(ka, "/hello"))
        assert.equal(200, res.status)

        -- 150 idle connections: far more than 64 descriptors
        local flood = {}
        finally(function()
            for _, c in ipairs(flood) do c:close() end
        end)
        for _ = 1, 150 do
            local c = helpers.connect(mg.port, 2)
            if c then
                flood[#flood + 1] = c
            end
        end
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("Too many open files", 1, true)
        end, 5), "the worker never ran out of descriptors")

        -- the worker's CPU over a measured window while the flood holds
        local t0, c0 = socket.gettime(), cpu_seconds(worker)
        helpers.wait_until(function() return socket.gettime() - t0 >= 1.5 end, 3)
        -- an established keep-alive connection is still served
        res = assert(get(ka, "/hello"))
        assert.equal(200, res.status)
        local t1, c1 = socket.gettime(), cpu_seconds(worker)
        local cpu = (c1 - c0) / (t1 - t0)
        local lines = count(mg:log(), "accept: [^\n]*\n")
        assert.is_true(cpu < 0.2, fmt("worker CPU %.0f %% during the flood", cpu * 100))
        assert.is_true(lines <= 10, fmt("%d accept error lines in the log", lines))
        assert.truthy(mg:log():find("failed accepts since the last report", 1, true))

        -- the flood ends: a new connection is served within 1 s
        for _, c in ipairs(flood) do c:close() end
        flood = {}
        local start = socket.gettime()
        local served
        while not served and socket.gettime() - start < 1 do
            local c = helpers.connect(mg.port, 1)
            if c then
                c:settimeout(1)
                c:send("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                local r = helpers.read_response(c, { timeout = math.max(0.05, 1 - (socket.gettime() - start)) })
                served = r and r.status == 200
                c:close()
            end
        end
        assert.truthy(served, "no new connection served within 1 s of the flood's end")
        ka:close()
    end)

    it("raises the soft descriptor limit to the hard limit at start and logs it", function()
        local mg = with_bin(limited_bin("-S -n 100"), function()
            return helpers.start_moongate({ name = "nofile-raise", routes = ROUTES, workers = 1 })
        end)
        finally(function() mg:stop() end)
        local worker = helpers.wait_until(function() return mg:workers()[1] end, 5)
        local s = helpers.read_file("/proc/" .. worker .. "/limits") or ""
        local hard = s:match("Max open files%s+%d+%s+(%S+)")
        assert.truthy(hard)
        if hard ~= "unlimited" then
            assert.equal(tonumber(hard), soft_nofile(worker))
        end
        assert.truthy(mg:log():find("max open files: " .. soft_nofile(worker) .. " per process", 1, true),
            mg:log())
    end)

    it("max_open_files sets the soft limit", function()
        local mg = helpers.start_moongate({ name = "nofile-conf", routes = ROUTES, workers = 1,
            conf = 'return { listen = "127.0.0.1:$PORT", workers = 1, max_open_files = 300 }\n' })
        finally(function() mg:stop() end)
        local worker = helpers.wait_until(function() return mg:workers()[1] end, 5)
        assert.equal(300, soft_nofile(worker))
        assert.truthy(mg:log():find("max open files: 300 per process", 1, true))
    end)
end)


-- Defect 5 --------------------------------------------------------------------

-- A route table whose answer names its version and the worker's pid.
local function tagged_routes(tag)
    return fmt([=[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
return {
  { path = "/tag", handler = function() return 200, "%s " .. ffi.C.getpid() end },
}
]=], tag)
end

local BROKEN = "return {\n  { path = \"/tag\", handler = function() return 200 end,\n"

-- n requests on fresh connections: { [pid] = { [tag] = count } }, npids.
local function ask(mg, n)
    local by_pid, npids = {}, 0
    for _ = 1, n do
        local c = helpers.connect(mg.port, 2)
        if c then
            c:send("GET /tag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            local r = helpers.read_response(c, { timeout = 3 })
            c:close()
            local tag, pid = (r and r.body or ""):match("^(%S+) (%d+)$")
            if pid then
                if not by_pid[pid] then
                    by_pid[pid] = {}
                    npids = npids + 1
                end
                by_pid[pid][tag] = (by_pid[pid][tag] or 0) + 1
            end
        end
    end
    return by_pid, npids
end

local function show(by_pid)
    local t = {}
    for pid, tags in pairs(by_pid) do
        for tag, n in pairs(tags) do
            t[#t + 1] = fmt("pid %s: %s x%d", pid, tag, n)
        end
    end
    table.sort(t)
    return table.concat(t, "; ")
end

-- Waits (up to `timeout` s) until every one of `nworkers` workers answers
-- `want` and nothing else; returns true, or false and what was seen.
local function all_serve(mg, want, nworkers, timeout)
    local seen
    local ok = helpers.wait_until(function()
        local by_pid, npids = ask(mg, 12)
        seen = by_pid
        if npids < nworkers then
            return false
        end
        for _, tags in pairs(by_pid) do
            for tag in pairs(tags) do
                if tag ~= want then
                    return false
                end
            end
        end
        return true
    end, timeout or 2, 0.02)
    return ok ~= nil, show(seen or {})
end

-- The master's verdict on the reload whose log starts at offset `off`:
-- "serving" (or the old code's "loaded"), "refused", or nil (none yet).
local function verdict(mg, off)
    local log = mg:log():sub(off + 1)
    if log:find("reload refused, generation %d+ keeps serving") then
        return "refused", log
    end
    if log:find("generation %d+ serving") or log:find("generation %d+ loaded") then
        return "serving", log
    end
    return nil, log
end

local function restart_one(mg)
    local before = mg:workers()
    local victim = before[1]
    assert.truthy(helpers.kill(victim, "KILL"))
    assert.truthy(helpers.wait_until(function()
        local now = mg:workers()
        if #now ~= #before then
            return false
        end
        for _, p in ipairs(now) do
            if p == victim then
                return false
            end
        end
        return true
    end, 5), "the master did not replace the killed worker")
end

describe("reload as one snapshot (defect 5)", function()
    lazy_teardown(function()
        helpers.cleanup()
    end)

    -- Reloads raced by edits of one file (`files`: how to write version
    -- `tag` of it, and a broken one): odd rounds edit it to a broken
    -- version a few ms after SIGHUP, even rounds to another valid one.
    local function race(mg, files, delays)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        local ok, seen = all_serve(mg, "A", 2, 5)
        assert.truthy(ok, seen)
        local serving = "A"
        for round, d in ipairs(delays) do
            local tag = "R" .. round
            files.write(mg, tag)
            local off = #mg:log()
            assert.truthy(mg:signal("HUP"))
            if d > 0 then
                socket.sleep(d)
            end
            if round % 2 == 1 then
                files.broken(mg)
            else
                files.write(mg, "X" .. round)
            end
            helpers.wait_until(function() return verdict(mg, off) end, 15)
            local v, log = verdict(mg, off)
            assert.truthy(v, "no verdict from the master on reload " .. round .. ":\n" .. (log or ""))
            local want = serving
            if v == "serving" and round % 2 == 1 then
                want = tag
            elseif v == "serving" then
                -- the master read one of the two versions: all must serve it
                local tags = {}
                for _, t in pairs((ask(mg, 16))) do
                    for k in pairs(t) do tags[k] = true end
                end
                want = tags[tag] and tag or ("X" .. round)
            end
            ok, seen = all_serve(mg, want, 2)
            assert.truthy(ok, fmt("round %d: the master says %s (%s expected), workers: %s",
                round, v, want, seen))
            serving = want
            -- the file on disk differs from what serves: a restarted
            -- worker still serves the generation of the others
            if round % 2 == 0 or round == #delays - 1 then
                restart_one(mg)
                ok, seen = all_serve(mg, serving, 2)
                assert.truthy(ok, fmt("round %d, after a worker restart: %s expected, workers: %s",
                    round, serving, seen))
            end
        end
    end

    local CONF2 = 'return { listen = "127.0.0.1:$PORT", workers = 2, access_log = false }\n'

    it("an edit of routes.lua right after SIGHUP never leaves the master's claim and the "
        .. "workers apart, and a restarted worker serves the same generation", function()
        local mg = helpers.start_moongate({ name = "reload-race", workers = 2,
            routes = tagged_routes("A"), conf = CONF2 })
        finally(function() mg:stop() end)
        race(mg, {
            write = function(m, tag) m:write_routes(tagged_routes(tag)) end,
            broken = function(m) m:write_routes(BROKEN) end,
        }, { 0, 0.002, 0.005, 0.01, 0.02, 0.04 })
    end)

    it("the same for a module the routes require and a data file they read at load", function()
        local routes = [=[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local f = assert(io.open("$DIR/scripts/suffix.txt", "rb"))
local suffix = f:read("*a")
f:close()
assert(suffix:match("^%w*$"), "bad suffix file")
local tag = require("tagmod") .. suffix
-- a file read between the truncation and the write of an edit is empty
assert(tag ~= "", "empty tag")
return {
  { path = "/tag", handler = function() return 200, tag .. " " .. ffi.C.getpid() end },
}
]=]
        local mg = helpers.start_moongate({ name = "reload-race-mod", workers = 2,
            routes = routes, conf = CONF2,
            scripts = { ["tagmod.lua"] = 'return "A"\n', ["suffix.txt"] = "" } })
        finally(function() mg:stop() end)
        race(mg, {
            write = function(m, tag) m:write_script("tagmod.lua", fmt("return %q\n", tag)) end,
            broken = function(m) m:write_script("tagmod.lua", "return (\n") end,
        }, { 0, 0.005, 0.01, 0.03 })
        -- the data file, read with io.open ("!" is refused)
        local data = {
            write = function(m, tag)
                m:write_script("tagmod.lua", 'return ""\n')
                m:write_script("suffix.txt", tag)
            end,
            broken = function(m) m:write_script("suffix.txt", "!") end,
        }
        data.write(mg, "A")
        assert.truthy(mg:signal("HUP"))
        race(mg, data, { 0, 0.005, 0.01, 0.03 })
    end)

    it("a reload that a worker cannot load is refused everywhere, and the log says which", function()
        local routes = tagged_routes("$TAG"):gsub("^", [=[
local armed = os.rename("$DIR/armed", "$DIR/armed")
if armed and not os.remove("$DIR/token") then error("the token is gone: this load came second") end
]=])
        local mg = helpers.start_moongate({ name = "reload-refused", workers = 2,
            routes = routes, vars = { TAG = "A" },
            conf = 'return { listen = "127.0.0.1:$PORT", workers = 2, access_log = false }\n' })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        local ok, seen = all_serve(mg, "A", 2, 5)
        assert.truthy(ok, seen)

        -- the first load takes the token; any other load from the disk
        -- fails
        mg.vars.TAG = "B"
        mg:write_routes(routes)
        helpers.write_file(mg.dir .. "/armed", "")
        helpers.write_file(mg.dir .. "/token", "")
        local off = #mg:log()
        assert.truthy(mg:signal("HUP"))
        helpers.wait_until(function() return verdict(mg, off) end, 15)
        local v, log = verdict(mg, off)
        assert.truthy(v, log)
        ok, seen = all_serve(mg, "A", 2)
        assert.truthy(ok, "after the reload: " .. seen)
        if v == "refused" then
            -- the workers load in parallel with the master (their early
            -- load, kept if the snapshot confirms it): whichever came
            -- second says why, the master's own load or a worker's
            assert.truthy(log:find("worker %d+ %(pid %d+%) could not load it: .*this load came second")
                or log:find("reload refused, generation %d+ keeps serving: [^\n]*this load came second"), log)
        else
            -- the snapshot was loaded by every worker: they serve B
            error("the master claims a generation the workers do not serve:\n" .. log)
        end
    end)

    it("a reload refused by a worker leaves the log level as it was (sibling)", function()
        local conf = 'return { listen = "127.0.0.1:$PORT", workers = 2, log_level = "%s" }\n'
        local routes = tagged_routes("A"):gsub("^", [=[
local armed = os.rename("$DIR/armed", "$DIR/armed")
if armed and not os.remove("$DIR/token") then error("the token is gone: this load came second") end
]=])
        local mg = helpers.start_moongate({ name = "reload-level", workers = 2,
            routes = routes, conf = fmt(conf, "info") })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        -- the master loads it (log_level = "error"), the workers refuse it
        mg:write_conf(fmt(conf, "error"))
        helpers.write_file(mg.dir .. "/armed", "")
        helpers.write_file(mg.dir .. "/token", "")
        local off = #mg:log()
        assert.truthy(mg:signal("HUP"))
        helpers.wait_until(function() return verdict(mg, off) end, 15)
        assert.equal("refused", (verdict(mg, off)))
        -- still at "info": a restarted worker says that it started
        off = #mg:log()
        restart_one(mg)
        assert.truthy(helpers.wait_until(function()
            return mg:log():sub(off + 1):find("worker %d+ started %(generation 1%)")
        end, 5), "no info line after the refused reload:\n" .. mg:log():sub(off + 1))
    end)
end)


-- Defect 5, follow-up: a module required only at run time ---------------------

-- Routes whose handlers require modules lazily: /tag answers the bytes of
-- lazymod.lua, /slow waits for $DIR/go, then answers slowmod.lua (a request
-- in flight across a reload), /new answers newmod.lua or "missing", /read what io.open reads.
local LAZY_ROUTES = [=[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local moongate = require "moongate"
local function pid() return ffi.C.getpid() end
return {
  { path = "/tag", handler = function() return 200, require("lazymod") .. " " .. pid() end },
  { path = "/slow", handler = function()
      for _ = 1, 500 do
        local f = io.open("$DIR/go", "rb")
        if f then f:close() break end
        moongate.sleep(0.02)
      end
      return 200, require("slowmod") .. " " .. pid()
    end },
  { path = "/new", handler = function()
      local ok, m = pcall(require, "sub.newmod")
      return 200, (ok and m or "missing") .. " " .. pid()
    end },
  { path = "/read", handler = function()
      local f = assert(io.open("$DIR/scripts/lazymod.lua", "rb"))
      local s = f:read("*a")
      f:close()
      return 200, s:match('"(%w+)"') .. " " .. pid()
    end },
}
]=]

-- Asks `path` n times on fresh connections: the set of answers seen.
local function answers(mg, path, n)
    local seen = {}
    for _ = 1, n do
        local c = helpers.connect(mg.port, 2)
        if c then
            c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            local r = helpers.read_response(c, { timeout = 3 })
            c:close()
            local tag = (r and r.body or ""):match("^(%S+) %d+$")
            seen[tag or ("status " .. tostring(r and r.status))] = true
        end
    end
    local t = {}
    for k in pairs(seen) do t[#t + 1] = k end
    table.sort(t)
    return table.concat(t, ",")
end

-- Reloads and waits for the master's verdict, which must be "serving".
local function reload_serving(mg)
    local off = #mg:log()
    assert.truthy(mg:signal("HUP"))
    helpers.wait_until(function() return verdict(mg, off) end, 15)
    local v, log = verdict(mg, off)
    assert.equal("serving", v, log)
end

describe("reload snapshot: modules required at run time (defect 5)", function()
    lazy_teardown(function()
        helpers.cleanup()
    end)

    local CONF2 = 'return { listen = "127.0.0.1:$PORT", workers = 2, access_log = false }\n'

    it("a module first required after the reload runs the snapshot's bytes in every worker, "
        .. "a restarted one and an old generation's request in flight", function()
        local mg = helpers.start_moongate({ name = "lazy-require", workers = 2,
            routes = LAZY_ROUTES, conf = CONF2,
            scripts = { ["lazymod.lua"] = 'return "A"\n', ["slowmod.lua"] = 'return "A"\n' } })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        -- generation 1 loaded "A"; the disk changes before its first use
        mg:write_script("lazymod.lua", 'return "Z"\n')
        local ok, seen = all_serve(mg, "A", 2, 5)
        assert.truthy(ok, "generation 1, first use after an edit: " .. seen)

        -- a request of generation 1 in flight: it requires after the reload
        local slow = assert(helpers.connect(mg.port, 2))
        finally(function() slow:close() end)
        assert(slow:send("GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))

        mg:write_script("lazymod.lua", 'return "B"\n')
        mg:write_script("slowmod.lua", 'return "B"\n')
        reload_serving(mg)
        -- edited after the SIGHUP, before the first use in generation 2
        mg:write_script("lazymod.lua", 'return "C"\n')
        mg:write_script("slowmod.lua", 'return "C"\n')
        ok, seen = all_serve(mg, "B", 2)
        assert.truthy(ok, "generation 2, first use after an edit: " .. seen)
        -- io.open at run time still reads the disk, as documented
        assert.equal("C", answers(mg, "/read", 4))

        helpers.write_file(mg.dir .. "/go", "")
        local r = helpers.read_response(slow, { timeout = 5 })
        assert.truthy(r, "no answer to the request in flight")
        assert.equal("A", (r.body:match("^(%S+) %d+$")), "the request of generation 1: " .. r.body)

        restart_one(mg)
        ok, seen = all_serve(mg, "B", 2)
        assert.truthy(ok, "after a worker restart: " .. seen)
    end)

    it("a module added under a lua_path directory after the load is not found in any worker, "
        .. "until the next reload", function()
        local mg = helpers.start_moongate({ name = "lazy-new", workers = 2,
            routes = LAZY_ROUTES, conf = CONF2, scripts = { ["lazymod.lua"] = 'return "A"\n' } })
        finally(function() mg:stop() end)
        assert.truthy(helpers.wait_until(function() return #mg:workers() == 2 end, 5))
        helpers.sh("mkdir -p " .. helpers.shq(mg.dir .. "/scripts/sub"))
        mg:write_script("sub/newmod.lua", 'return "N"\n')
        assert.equal("missing", answers(mg, "/new", 12))
        restart_one(mg)
        assert.equal("missing", answers(mg, "/new", 12))
        reload_serving(mg)
        mg:write_script("sub/newmod.lua", 'return "M"\n')
        assert.equal("N", answers(mg, "/new", 12))
    end)

    it("more than 64 MiB of .lua files under lua_path: the load is refused with file: reason", function()
        local mg = helpers.start_moongate({ name = "lazy-big", workers = 1,
            routes = LAZY_ROUTES, conf = CONF2:gsub("workers = 2", "workers = 1"),
            scripts = { ["lazymod.lua"] = 'return "A"\n' } })
        finally(function() mg:stop() end)
        -- a sparse file: nothing is written, the size is what counts
        local f = assert(io.open(mg.dir .. "/scripts/big.lua", "wb"))
        assert(f:seek("set", 65 * 1024 * 1024))
        assert(f:write("\n"))
        f:close()
        local want = "scripts/big.lua: the generation's files exceed 64 MiB"
        local out, rc = helpers.sh(fmt("cd %s && env -u MOONGATE_LISTEN -u MOONGATE_WORKERS %s -t -c %s",
            helpers.shq(mg.dir), helpers.shq(helpers.bin), helpers.shq(mg.conf_path)))
        assert.are_not.equal(0, rc, out)
        assert.truthy(out:find(want, 1, true), out)
        local off = #mg:log()
        assert.truthy(mg:signal("HUP"))
        helpers.wait_until(function() return verdict(mg, off) end, 15)
        local v, log = verdict(mg, off)
        assert.equal("refused", v, log)
        assert.truthy(log:find(want, 1, true), log)
        assert.equal("A", answers(mg, "/tag", 4))
    end)

    it("a FIFO that the load opens does not hang the master (sibling)", function()
        local dir = helpers.tmpdir("lazy-fifo")
        helpers.sh("mkdir -p " .. helpers.shq(dir .. "/conf") .. " " .. helpers.shq(dir .. "/scripts"))
        assert(select(2, helpers.sh("mkfifo " .. helpers.shq(dir .. "/fifo"))) == 0)
        helpers.write_file(dir .. "/conf/moongate.lua", 'return { listen = "127.0.0.1:1", workers = 1 }\n')
        helpers.write_file(dir .. "/scripts/routes.lua", fmt([=[
local f = io.open(%q, "rb")
if f then f:close() end
return { { path = "/x", handler = function() return 200, "x" end } }
]=], dir .. "/fifo"))
        -- busted must not hang either: the check is bounded by timeout(1)
        local out, rc = helpers.sh(fmt("cd %s && timeout 10 %s -t -c conf/moongate.lua",
            helpers.shq(dir), helpers.shq(helpers.bin)))
        assert.equal(0, rc, "moongate -t: rc " .. tostring(rc) .. ": " .. out)
    end)
end)

describe("a worker whose master is killed", function()
    after_each(function()
        helpers.cleanup()
    end)

    it("finishes what it holds, then exits: no orphan keeps the ports", function()
        local up = helpers.start_upstream()
        local mg = helpers.start_moongate({
            workers = 2,
            upstream = up,
            conf = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  timeouts = { drain = 6 },
  upstreams = { app = { servers = { "$UPSTREAM" } } },
}
]],
            routes = [[return { { prefix = "/", upstream = "app" } }]],
        })
        local workers = mg:workers()
        assert.are.equal(2, #workers)
        local slow = helpers.http_async(mg.port, "GET", "/delay/1500")
        assert.truthy(helpers.wait_until(function()
            for _, h in ipairs(helpers.upstream_log(up).heads) do
                if h == "GET /delay/1500" then
                    return true
                end
            end
        end, 10), "the slow request did not reach the upstream")
        assert.truthy(helpers.kill(mg.pid, "KILL"))
        local st, body = slow:wait(15)
        assert.are.equal(200, st, body) -- the request in flight was answered
        local gone = helpers.wait_until(function()
            for _, w in ipairs(workers) do
                if helpers.alive(w) then
                    return false
                end
            end
            return true
        end, 12)
        for _, w in ipairs(workers) do -- ours (the killed master's); none left behind
            if helpers.alive(w) then
                os.execute("kill -KILL " .. w .. " 2>/dev/null")
            end
        end
        assert.truthy(gone, "a worker outlived its master")
        assert.truthy(mg:log():find("the master is gone, draining and exiting", 1, true), mg:log())
        -- the port is free again: a new master can take it
        assert.falsy(helpers.port_open(mg.port))
    end)
end)
