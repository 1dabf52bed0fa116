-- SIGHUP reload as generations: a changed routes.lua serves the next
-- request, a broken one is refused (old table keeps serving, the reason is
-- logged as routes.lua:<line>:), reloads under load lose no request, and a
-- request in flight finishes on the generation it started on.
local helpers = require "spec.helpers"
local json = helpers.json

-- get(path): status and body of GET path on a new connection to the
-- moongate cur() returns; all_say(path, want, n): every one of n such
-- requests (new connections: both workers) answers want
local function client(cur)
    local function get(path)
        local st, _, body = helpers.http(cur().port, "GET", path,
            { headers = { "Connection: close" } })
        return st, body
    end

    local function all_say(path, want, n)
        for _ = 1, n or 10 do
            local st, body = get(path)
            if st ~= 200 or body ~= want then
                return false, st .. " " .. tostring(body)
            end
        end
        return true
    end

    return get, all_say
end

local function routes(gen)
    return ([=[
local moongate = require "moongate"
return {
  { path = "/gen", handler = function() return 200, "GEN" end },
  { path = "/slow", handler = function()
      moongate.sleep(1)
      return 200, "slow-GEN"
  end },
  { path = "/only-GEN", handler = function() return 200, "only" end },
  { prefix = "/up", upstream = "up", strip_prefix = true },
}
]=]):gsub("GEN", gen)
end

describe("reload", function()
    local a, b, mg

    lazy_setup(function()
        a = helpers.start_upstream()
        b = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "reload", upstream = a, routes = routes("v1"), workers = 2,
            vars = { UPSTREAM_B = b.url } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(a and a.pid)
        helpers.stop(b and b.pid)
        helpers.cleanup()
    end)

    local get, all_say = client(function() return mg end)

    local function set_gen(gen)
        mg:write_routes(routes(gen))
        mg:reload()
        assert.truthy(helpers.wait_until(function()
            return all_say("/gen", gen, 6)
        end, 5), "generation " .. gen .. " never served")
    end

    it("applies a changed routes.lua on the next requests", function()
        assert.truthy(all_say("/gen", "v1"))
        mg:write_routes(routes("v2"))
        mg:reload()
        assert.truthy(helpers.wait_until(function()
            return all_say("/gen", "v2", 10)
        end, 3), "v2 not served by every worker after SIGHUP")
        assert.equal(200, (get("/only-v2")))
        assert.equal(404, (get("/only-v1")))
    end)

    it("keeps the old table when routes.lua has a syntax error", function()
        set_gen("v3")
        mg:write_routes("return {\n  { path = \"/gen\", handler = function() return 200, 'broken' end },\n"
            .. "  { path = = \"/x\" },\n}\n")
        mg:reload(1)
        assert.truthy(all_say("/gen", "v3", 10))
        assert.truthy(helpers.wait_until(function()
            return mg:log():match("routes%.lua:3:")
        end, 3), "no routes.lua:3: in the log:\n" .. mg:log():sub(-2000))
        -- the fixed file takes effect on the next request
        mg:write_routes(routes("v4"))
        mg:reload()
        assert.truthy(helpers.wait_until(function()
            return all_say("/gen", "v4", 10)
        end, 3), "the fixed routes.lua was not applied")
    end)

    it("keeps the old table when routes.lua raises while loading", function()
        set_gen("v5")
        mg:write_routes("local x = 1\nlocal y = 2\nerror('load-failure-9241')\nreturn {}\n")
        mg:reload(1)
        assert.truthy(all_say("/gen", "v5", 10))
        assert.truthy(helpers.wait_until(function()
            return mg:log():match("routes%.lua:3:[^\n]*load%-failure%-9241")
        end, 3), "no routes.lua:3: load-failure in the log:\n" .. mg:log():sub(-2000))
    end)

    it("keeps the old table when a route is invalid", function()
        set_gen("v6")
        mg:write_routes("return {\n  { path = \"/gen\", handler = function() return 200, 'bad' end },\n"
            .. "  { prefix = \"/z\", upstream = \"no-such-upstream\" },\n}\n")
        mg:reload(1)
        assert.truthy(all_say("/gen", "v6", 10))
        assert.truthy(helpers.wait_until(function()
            return mg:log():match("routes%.lua:%d+:[^\n]*no%-such%-upstream")
        end, 3), "the refused route is not in the log:\n" .. mg:log():sub(-2000))
    end)

    it("loses no request under load while reloading", function()
        set_gen("v1")
        local jobs = {}
        local base = "http://127.0.0.1:" .. mg.port
        local function curl_loop(path, n, extra)
            -- one curl, n sequential requests (keep-alive unless extra says so)
            return helpers.spawn(string.format("curl -s -o /dev/null -w '%%{http_code}\\n' %s %s",
                extra or "", helpers.shq(base .. path .. "?[1-" .. n .. "]")))
        end
        for _ = 1, 3 do
            jobs[#jobs + 1] = curl_loop("/gen", 400)
        end
        jobs[#jobs + 1] = curl_loop("/gen", 200, "-H 'Connection: close'")
        jobs[#jobs + 1] = curl_loop("/up/echo", 300)
        jobs[#jobs + 1] = curl_loop("/up/echo", 150, "-H 'Connection: close'")

        local reloads, i = 0, 0
        local t0 = helpers.now()
        local function running()
            for _, j in ipairs(jobs) do
                if not j.done() then
                    return true
                end
            end
        end
        while running() and helpers.now() - t0 < 60 do
            i = i + 1
            mg:write_routes(routes(i % 2 == 0 and "v1" or "v2"))
            mg:reload(0.1)
            reloads = reloads + 1
        end
        local total, bad = 0, {}
        for _, j in ipairs(jobs) do
            local out = j:wait(10)
            for code in out:gmatch("%d+") do
                total = total + 1
                if code ~= "200" then
                    bad[#bad + 1] = code
                end
            end
        end
        print(string.format("\n  %d requests, %d reloads in %.1f s", total, reloads, helpers.now() - t0))
        assert.equal(1850, total)
        assert.truthy(reloads >= 3, "the load ended before " .. reloads .. " reloads")
        assert.equal(0, #bad, #bad .. " failures: " .. table.concat(bad, ","))
        assert.truthy(helpers.alive(mg.pid))
    end)

    it("finishes a request in flight on the generation it started on", function()
        set_gen("v7")
        local slow = helpers.http_async(mg.port, "GET", "/slow")
        helpers.sleep(0.3)
        mg:write_routes(routes("v8"))
        mg:reload(0.3)
        assert.truthy(helpers.wait_until(function()
            return all_say("/gen", "v8", 4)
        end, 3))
        local st, body = slow:wait(5)
        assert.equal(200, st)
        assert.equal("slow-v7", body)
        assert.equal("slow-v8", select(2, get("/slow")))
    end)

    it("re-reads the conf file on SIGHUP (upstream servers)", function()
        set_gen("v9")
        local st, body = get("/up/who")
        assert.equal(200, st)
        assert.equal(a.port, json.decode(body).server_port)
        mg:write_conf('return { listen = "127.0.0.1:$PORT", workers = 2,\n'
            .. '  upstreams = { up = { servers = { "$UPSTREAM_B" } } } }\n')
        mg:reload()
        assert.truthy(helpers.wait_until(function()
            for _ = 1, 6 do
                local s, bd = get("/up/who")
                if s ~= 200 or json.decode(bd).server_port ~= b.port then
                    return false
                end
            end
            return true
        end, 3), "the new upstream server was not used after SIGHUP")
    end)

    it("never stops on SIGHUP", function()
        assert.truthy(helpers.alive(mg.pid))
        assert.is_nil(mg:exit_code())
        assert.equal(2, #mg:workers())
        assert.equal(200, (get("/gen")))
    end)
end)

-- A worker loads a reload's generation beside its event loop (a helper
-- thread, in parallel with the master's load): while a routes file takes
-- seconds to load, every request is still answered at once by the old
-- table, then by the new one. A worker that loaded on its loop would hold
-- every request for the whole load.
describe("reload of a table that is slow to load", function()
    local mg
    local SPIN = 4 -- seconds of load time (3 to 4 by os.time)

    local function slow_routes(gen, spin)
        return ([=[
local stop = os.time() + SPIN
while os.time() < stop do end -- load time only
return {
  { path = "/gen", handler = function() return 200, "GEN" end },
}
]=]):gsub("SPIN", tostring(spin)):gsub("GEN", gen)
    end

    lazy_setup(function()
        mg = helpers.start_moongate({ name = "reload-slow", routes = slow_routes("v1", 0), workers = 2 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("goes on answering while every process loads it", function()
        mg:write_routes(slow_routes("v2", SPIN))
        local t0 = helpers.now()
        mg:reload()
        local n, slowest, seen_v1, v2_in_row = 0, 0, 0, 0
        -- until both workers answer v2 (4 in a row on new connections)
        while v2_in_row < 4 do
            assert.truthy(helpers.now() - t0 < 30, "v2 never served by both workers")
            local s = helpers.now()
            local st, _, body = helpers.http(mg.port, "GET", "/gen",
                { headers = { "Connection: close" }, timeout = 10 })
            local took = helpers.now() - s
            n = n + 1
            slowest = math.max(slowest, took)
            assert.equal(200, st)
            assert.truthy(body == "v1" or body == "v2", body)
            if body == "v1" then
                seen_v1 = seen_v1 + 1
                v2_in_row = 0
            else
                v2_in_row = v2_in_row + 1
            end
            assert.truthy(took < 1.5, string.format("a request took %.2f s during the reload", took))
        end
        -- the old table answered during the load (it takes 3 s at least)
        assert.truthy(seen_v1 >= 3, "only " .. seen_v1 .. " answers from the old table")
        print(string.format("\n  %d requests during a %d s load, the slowest %.0f ms", n, SPIN,
            slowest * 1000))
    end)
end)

-- The workers' snapshot (core/app/main.c): at SIGHUP every worker loads
-- from the disk and the first to succeed makes the generation's snapshot;
-- the master loads nothing until every worker serves. On any refusal or
-- doubt the master loads from the disk itself and judges, as before.
describe("reload from a worker's snapshot", function()
    local mg, admin
    local TOKEN = "test-only-admin-token-1234"
    local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  log_level = "debug",
  admin = { listen = "127.0.0.1:$ADMIN", token = "$TOKEN" },
}
]]

    local function plain(gen)
        return ([=[
return {
  { path = "/gen", handler = function() return 200, "GEN" end },
  { path = "/only-GEN", handler = function() return 200, "only" end },
}
]=]):gsub("GEN", gen)
    end

    local _, all_say = client(function() return mg end)

    -- SIGHUP, then the log after it once the reload ended (served or refused)
    local function reload_log()
        local off = #mg:log()
        assert.truthy(mg:signal("HUP"))
        local ended = helpers.wait_until(function()
            local l = mg:log():sub(off + 1)
            return l:find("reload: generation %d+ serving on %d+ workers")
                or l:find("reload refused, generation %d+ keeps serving")
        end, 20)
        local l = mg:log():sub(off + 1)
        assert.truthy(ended, "the reload did not end:\n" .. l)
        return l
    end

    local function set_gen(gen)
        mg:write_routes(plain(gen))
        local l = reload_log()
        assert.truthy(l:find("serving on 2 workers", 1, true), l)
        assert.truthy(helpers.wait_until(function() return all_say("/gen", gen, 6) end, 5),
            "generation " .. gen .. " never served")
    end

    lazy_setup(function()
        admin = helpers.free_port()
        mg = helpers.start_moongate({ name = "reload-wsnap", conf = CONF, routes = plain("w1"),
            workers = 2, vars = { ADMIN = admin, TOKEN = TOKEN } })
        assert(helpers.wait_until(function() return helpers.port_open(admin) end, 5),
            "the admin port did not open")
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.cleanup()
    end)

    it("serves a worker's snapshot, the master loading it after the switch", function()
        mg:write_routes(plain("w2"))
        local l = reload_log()
        assert.truthy(l:find("reload: worker %d+ %(pid %d+%) loaded it: its snapshot makes generation %d+"), l)
        assert.truthy(l:find("serving on 2 workers", 1, true), l)
        assert.falsy(l:find("the master loads", 1, true), l)
        -- the master's load (its debug line) comes after every worker is active
        local g = l:match("its snapshot makes generation (%d+)")
        local last_active = 0
        for pos in l:gmatch("()worker %d+: generation " .. g .. " active") do
            last_active = pos
        end
        local master_load = l:find("load of generation " .. g .. ":", 1, true)
        assert.truthy(last_active > 0 and master_load and master_load > last_active, l)
        assert.truthy(all_say("/gen", "w2", 10))
    end)

    it("refuses a broken table with file:line: reason, the old generation serving", function()
        set_gen("w3")
        mg:write_routes("return {\n  { path = \"/gen\", handler = function() return 200, 'broken' end },\n"
            .. "  { path = = \"/x\" },\n}\n")
        local l = reload_log()
        -- the workers' loads failed: the master loaded it and is the judge
        assert.truthy(l:find("could not load it (", 1, true), l)
        assert.truthy(l:find("the master loads", 1, true), l)
        assert.truthy(l:find("reload refused, generation %d+ keeps serving: [^\n]*routes%.lua:3:"), l)
        assert.truthy(all_say("/gen", "w3", 10))
        assert.equal(2, #mg:workers())
    end)

    it("converges to one generation when the files change while the workers load them", function()
        set_gen("w4")
        -- the first load to take the token reads the tag (T1) and changes
        -- it; any other load waits, then reads the file: T2 from the disk,
        -- or T1 from the generation's snapshot
        helpers.write_file(mg.dir .. "/tag", "T1")
        helpers.write_file(mg.dir .. "/token", "")
        helpers.write_file(mg.dir .. "/armed", "")
        mg:write_routes([=[
local function read(p)
  local f = io.open(p)
  if not f then return "none" end
  local s = f:read("*a")
  f:close()
  return s
end
local tag
if os.rename("$DIR/token", "$DIR/token.taken") then
  tag = read("$DIR/tag")
  local f = io.open("$DIR/tag", "w")
  f:write("T2")
  f:close()
else
  if os.rename("$DIR/armed", "$DIR/armed") then
    local t = os.clock() + 0.5
    while os.clock() < t do end
  end
  tag = read("$DIR/tag")
end
return {
  { path = "/gen", handler = function() return 200, tag end },
}
]=])
        local l = reload_log()
        assert.truthy(l:find("serving on 2 workers", 1, true), l)
        assert.truthy(l:find("early load not used", 1, true), l)
        assert.truthy(all_say("/gen", "T1", 12))
        os.remove(mg.dir .. "/armed")
    end)

    it("a worker killed during a reload: the master loads it, every worker serves it", function()
        set_gen("w5")
        helpers.write_file(mg.dir .. "/armed", "")
        mg:write_routes([=[
if os.rename("$DIR/armed", "$DIR/armed") then
  local t = os.clock() + 1
  while os.clock() < t do end
end
return {
  { path = "/gen", handler = function() return 200, "w6" end },
}
]=])
        local off = #mg:log()
        local victim = mg:workers()[1]
        assert.truthy(mg:signal("HUP"))
        helpers.sleep(0.3)
        assert.truthy(os.execute("kill -KILL " .. victim .. " 2>/dev/null"))
        assert.truthy(helpers.wait_until(function()
            return mg:log():sub(off + 1):find("reload: generation %d+ serving on 2 workers")
        end, 20), mg:log():sub(off + 1))
        local l = mg:log():sub(off + 1)
        assert.truthy(l:find("died while the reload ran: the master loads", 1, true), l)
        os.remove(mg.dir .. "/armed")
        assert.truthy(helpers.wait_until(function() return all_say("/gen", "w6", 10) end, 5))
        assert.equal(2, #mg:workers())
    end)

    it("POST /reload still answers the route diff, or 422 with file:line: reason", function()
        set_gen("w7")
        local auth = { "Connection: close", "Authorization: Bearer " .. TOKEN }
        mg:write_routes(plain("w7"):gsub("return {\n", 'return {\n  { path = "/new", handler = '
            .. 'function() return 200, "new" end },\n', 1))
        local st, _, body = helpers.http(admin, "POST", "/reload", { headers = auth, timeout = 20 })
        assert.equal(200, st, body)
        local doc = json.decode(body)
        assert.equal("ok", doc.result)
        assert.equal("number", type(doc.generation))
        assert.matches("/new", table.concat(doc.added, "\n"))
        assert.same({}, doc.removed)
        assert.same({}, doc.restart_needed)
        assert.truthy(all_say("/new", "new", 6))
        local gen = doc.generation

        mg:write_routes("return {\n  { path = '/x', handler = 42 },\n}\n")
        st, _, body = helpers.http(admin, "POST", "/reload", { headers = auth, timeout = 20 })
        assert.equal(422, st, body)
        doc = json.decode(body)
        assert.equal("refused", doc.result)
        assert.equal(gen, doc.generation)
        assert.matches("routes%.lua:2:", doc.error)
        assert.truthy(all_say("/new", "new", 6))
    end)
end)
