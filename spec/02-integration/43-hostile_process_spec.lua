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
