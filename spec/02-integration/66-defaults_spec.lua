-- Safe defaults and operator feedback (docs/operations.md, "Containers";
-- docs/configuration.md, "Environment"): --help names every option and
-- variable; MOONGATE_DEMO switches the demo Runtime and the demo's tokens;
-- the demo's tokens outside demo mode warn at every start and reload; an
-- unknown MOONGATE_* is a warning with a "did you mean"; the log says where
-- every listener and upstream came from, at start and on reload; a reload
-- that changes listen or workers says it needs a restart; `make run` writes
-- moongate.pid for the README's `kill -HUP $(cat moongate.pid)`; and the
-- compose file's edge (conf/compose.lua) serves the seed's topology.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"
local lfs = require "lfs"

local fmt = string.format
local shq = helpers.shq
local root = helpers.root
local bin = helpers.bin

-- `moongate -t` on a conf of the repo with only `env` (plus PATH) set
local function check(conf, env)
    local e = { "env", "-i", "PATH=/usr/bin:/bin" }
    if os.getenv("MOONGATE_ASAN") then -- the sanitizers' options of an ASan run
        e[#e + 1] = shq("ASAN_OPTIONS=" .. (os.getenv("ASAN_OPTIONS") or "detect_leaks=0"))
        e[#e + 1] = shq("UBSAN_OPTIONS=" .. (os.getenv("UBSAN_OPTIONS") or ""))
    end
    for k, v in pairs(env or {}) do
        e[#e + 1] = shq(k .. "=" .. v)
    end
    return helpers.sh(fmt("cd %s && %s %s -t -c %s", shq(root), table.concat(e, " "), shq(bin),
        shq(conf)))
end

local function line_of(path, pattern)
    local n = 0
    for line in (helpers.read_file(path) or ""):gmatch("([^\n]*)\n") do
        n = n + 1
        if line:find(pattern) then
            return n
        end
    end
end

local function count(s, needle)
    local n, i = 0, 1
    while true do
        local a, b = s:find(needle, i, true)
        if not a then return n end
        n, i = n + 1, b + 1
    end
end

-- a gateway from one of the shipped confs, with the shipped scripts
local function start_shipped(conf_file, env, extra)
    local port = helpers.free_port()
    local e = { MOONGATE_LISTEN = "127.0.0.1:" .. port, MOONGATE_WORKERS = "1" }
    for k, v in pairs(env or {}) do
        e[k] = v
    end
    return helpers.start_moongate({
        name = "defaults", port = port, env = e,
        conf = helpers.read_file(root .. "/" .. conf_file),
        routes = helpers.read_file(root .. "/scripts/routes.lua"),
        scripts = seed.shipped_files(nil, extra),
    })
end

local function whoami(port, token)
    return (helpers.http(port, "GET", "/api/auth/whoami",
        { headers = { Authorization = "Bearer " .. token } }))
end

describe("--help", function()
    it("prints usage with every option and every environment variable moongate reads", function()
        local out, rc = helpers.sh(shq(bin) .. " --help 2>/dev/null")
        assert.equal(0, rc)
        for _, opt in ipairs({ "-c FILE", "-t", "-v", "-p FILE", "--help" }) do
            assert.truthy(out:find(opt, 1, true), opt)
        end
        -- every MOONGATE_* the sources read (the spec harness's own aside)
        local seen = {}
        local function scan(dir)
            for name in lfs.dir(dir) do
                local p = dir .. "/" .. name
                if name:match("%.lua$") or name:match("%.c$") then
                    for v in (helpers.read_file(p) or ""):gmatch("MOONGATE_[%u_]*%u") do
                        seen[v] = true
                    end
                elseif not name:match("^%.") and lfs.attributes(p, "mode") == "directory" then
                    scan(p)
                end
            end
        end
        scan(root .. "/lib")
        scan(root .. "/core")
        local harness = { MOONGATE_BIN = 1, MOONGATE_ASAN = 1, MOONGATE_CTESTS = 1,
            MOONGATE_FUZZ_N = 1, MOONGATE_FUZZ_SECS = 1 }
        local n = 0
        for v in pairs(seen) do
            local shown = v:gsub("_UPSTREAM_%u+$", "_UPSTREAM_<NAME>")
            if v == "MOONGATE_UPSTREAM" or v == "MOONGATE_SERVER" then shown = nil end
            if shown and not harness[v] and not v:match("^MOONGATE_UPSTREAM_") then
                assert.truthy(out:find(shown, 1, true), shown .. " is read but not in --help")
                n = n + 1
            end
        end
        assert.truthy(n >= 8)
        assert.truthy(out:find("MOONGATE_UPSTREAM_<NAME>", 1, true))
        assert.truthy(out:find("MOONGATE_SERVER_<NAME>_LISTEN", 1, true))
        local h = helpers.sh(shq(bin) .. " -h 2>/dev/null")
        assert.equal(out, h)
        local bad, brc = helpers.sh(shq(bin) .. " -Z 2>&1 >/dev/null")
        assert.equal(2, brc)
        assert.truthy(bad:find("usage: moongate", 1, true))
    end)
end)

describe("the environment and the log", function()
    it("warns about an unknown MOONGATE_* variable, with the closest name", function()
        local out, rc = check("conf/default.lua", {
            MOONGATE_WORKRES = "2", MOONGATE_SERVER_DEMO_RUNTIME_LISTN = "127.0.0.1:1",
            MOONGATE_QQQQQQQQQQQQQQQQ = "x", MOONGATE_BIN = "/x", MOONGATE_UPSTREAM_RUNTIME =
            "http://127.0.0.1:1",
        })
        assert.equal(0, rc, out)
        assert.truthy(out:find("env: MOONGATE_WORKRES is not a moongate variable (ignored): did you "
            .. "mean MOONGATE_WORKERS?", 1, true), out)
        assert.truthy(out:find("MOONGATE_SERVER_DEMO_RUNTIME_LISTN is not a moongate variable "
            .. "(ignored): did you mean MOONGATE_SERVER_DEMO_RUNTIME_LISTEN?", 1, true), out)
        assert.truthy(out:find("MOONGATE_QQQQQQQQQQQQQQQQ is not a moongate variable (ignored); "
            .. "moongate --help lists them", 1, true), out)
        assert.falsy(out:find("MOONGATE_BIN", 1, true), out)
        assert.falsy(out:find("MOONGATE_UPSTREAM_RUNTIME is not", 1, true), out)
    end)

    it("says where each listener and upstream came from: environment, file line or default",
        function()
            local conf = root .. "/conf/default.lua"
            local out, rc = check("conf/default.lua", { MOONGATE_LISTEN = "127.0.0.1:18123" })
            assert.equal(0, rc, out)
            assert.truthy(out:find("listen 127.0.0.1:18123 (env MOONGATE_LISTEN)", 1, true), out)
            assert.truthy(out:find(fmt("upstream runtime: http://127.0.0.1:9001 (conf/default.lua:%d)",
                line_of(conf, "^    runtime = {")), 1, true), out)
            assert.truthy(out:find(fmt("demo mode off (conf/default.lua:%d)",
                line_of(conf, "^  demo = false")), 1, true), out)
            out = check("conf/default.lua", { MOONGATE_UPSTREAM_RUNTIME = "http://10.1.2.3:9001" })
            assert.truthy(out:find(fmt("listen 127.0.0.1:8080 (conf/default.lua:%d)",
                line_of(conf, "^  listen = ")), 1, true), out)
            assert.truthy(out:find("upstream runtime: http://10.1.2.3:9001 (env "
                .. "MOONGATE_UPSTREAM_RUNTIME)", 1, true), out)
        end)

    it("logs them again on reload, and says when a reload needs a restart", function()
        local mg = helpers.start_moongate({ name = "defaults-reload", workers = 1 })
        local l = mg:log()
        assert.equal(1, count(l, fmt("listen 127.0.0.1:%d (%s:2)", mg.port, mg.conf_path)), l)
        assert.equal(1, count(l, "workers 1 ("), l)
        local other = helpers.free_port()
        mg:write_conf(fmt('return {\n  listen = { "127.0.0.1:$PORT", "127.0.0.1:%d" },\n'
            .. "  workers = 2,\n}\n", other))
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload: generation 2 serving", 1, true)
        end, 10), mg:log())
        l = mg:log()
        assert.truthy(l:find(fmt("127.0.0.1:%d is not listened on: adding a listener needs a "
            .. "restart", other), 1, true), l)
        assert.truthy(l:find("workers = 2 needs a restart (1 workers keep serving)", 1, true), l)
        assert.equal(1, count(l, fmt("listen 127.0.0.1:%d, 127.0.0.1:%d (%s:2)", mg.port, other,
            mg.conf_path)), l)
        assert.equal(1, #mg:workers())
        assert.falsy(helpers.port_open(other))
        mg:stop()
    end)
end)

describe("MOONGATE_DEMO and the demo's tokens", function()
    local rt

    lazy_setup(function()
        rt = helpers.free_port()
    end)

    it("the installed default (conf/default.lua) has the demo off; MOONGATE_DEMO=1 turns it on",
        function()
            local env = { MOONGATE_SERVER_DEMO_RUNTIME_LISTEN = "127.0.0.1:" .. rt,
                MOONGATE_UPSTREAM_RUNTIME = "http://127.0.0.1:" .. rt }
            local mg = start_shipped("conf/default.lua", env)
            assert.falsy(helpers.port_open(rt), "the demo Runtime is off")
            assert.are_not.equal(200, whoami(mg.port, "demo-token"))
            assert.truthy(mg:log():find("servers.demo_runtime: off outside demo mode", 1, true))
            assert.falsy(mg:log():find("demo's static tokens", 1, true), mg:log())
            mg:stop()
            env.MOONGATE_DEMO = "1"
            mg = start_shipped("conf/default.lua", env)
            assert.truthy(helpers.wait_until(function() return helpers.port_open(rt) end, 5))
            assert.equal(200, whoami(mg.port, "demo-token"))
            assert.truthy(mg:log():find("demo mode on (env MOONGATE_DEMO)", 1, true), mg:log())
            assert.equal(0, mg:stop())
        end)

    it("make run's conf (conf/moongate.lua) is the demo; MOONGATE_DEMO=0 turns it off", function()
        local out = check("conf/moongate.lua", { MOONGATE_LISTEN = "127.0.0.1:1" })
        assert.truthy(out:find("demo mode on (conf/moongate.lua:", 1, true), out)
        local mg = start_shipped("conf/moongate.lua", { MOONGATE_DEMO = "0",
            MOONGATE_SERVER_DEMO_RUNTIME_LISTEN = "127.0.0.1:" .. rt,
            MOONGATE_UPSTREAM_RUNTIME = "http://127.0.0.1:" .. rt })
        assert.falsy(helpers.port_open(rt))
        assert.are_not.equal(200, whoami(mg.port, "demo-token"))
        assert.truthy(mg:log():find("demo mode off (env MOONGATE_DEMO)", 1, true), mg:log())
        mg:stop()
    end)

    it("refuses a MOONGATE_DEMO that is neither 0 nor 1", function()
        local out, rc = check("conf/default.lua", { MOONGATE_DEMO = "maybe" })
        assert.are_not.equal(0, rc)
        assert.truthy(out:find("MOONGATE_DEMO", 1, true) and out:find("expected 0 or 1", 1, true), out)
    end)

    it("warns at every start and reload when the demo's tokens are on outside demo mode", function()
        -- an operator's auth_config.lua without the shipped demo-mode gate
        local shipped = helpers.read_file(root .. "/scripts/auth_config.lua")
        local ungated, n = shipped:gsub("\nif not mode%.demo then.-\nend\n", "\n")
        assert.equal(1, n)
        local mg = start_shipped("conf/default.lua", {
            MOONGATE_SERVER_DEMO_RUNTIME_LISTEN = "127.0.0.1:" .. rt }, { ["auth_config.lua"] = ungated })
        local warn = "auth_config.lua: the demo's static tokens (demo-admin-token, demo-token, "
            .. "demo-token-t2) are on outside demo mode"
        assert.equal(1, count(mg:log(), warn), mg:log())
        assert.equal(200, whoami(mg.port, "demo-token")) -- on, as the operator wrote
        mg:signal("HUP")
        assert.truthy(helpers.wait_until(function()
            return mg:log():find("reload: generation 2 serving", 1, true)
        end, 10), mg:log())
        assert.equal(2, count(mg:log(), warn), mg:log())
        mg:stop()
        -- in demo mode the same tokens say nothing
        mg = start_shipped("conf/default.lua", { MOONGATE_DEMO = "1",
            MOONGATE_SERVER_DEMO_RUNTIME_LISTEN = "127.0.0.1:" .. rt }, { ["auth_config.lua"] = ungated })
        assert.equal(0, count(mg:log(), warn), mg:log())
        mg:stop()
    end)
end)

describe("make run", function()
    it("writes moongate.pid, so that the README's kill -HUP $(cat moongate.pid) reloads", function()
        local pidfile = root .. "/moongate.pid"
        assert.falsy(helpers.read_file(pidfile), "a moongate.pid is left in the tree")
        local dir = helpers.tmpdir("make-run")
        local port, rt = helpers.free_port(), helpers.free_port()
        local b = helpers.sh(fmt("realpath --relative-to=%s %s", shq(root), shq(bin))):gsub("%s+$", "")
        local cmd = fmt("cd %s && env MOONGATE_LISTEN=127.0.0.1:%d MOONGATE_WORKERS=1 "
            .. "MOONGATE_SERVER_DEMO_RUNTIME_LISTEN=127.0.0.1:%d MOONGATE_UPSTREAM_RUNTIME="
            .. "http://127.0.0.1:%d make -s -o %s run BIN=%s", shq(root), port, rt, rt, shq(b), shq(b))
        assert(os.execute(fmt("( sh -c %s > %s 2>&1; echo $? > %s ) < /dev/null > /dev/null 2>&1 &",
            shq(cmd), shq(dir .. "/log"), shq(dir .. "/rc"))))
        local pid = helpers.wait_until(function()
            return helpers.port_open(port) and tonumber(helpers.read_file(pidfile) or "")
        end, 10)
        local log = function() return helpers.read_file(dir .. "/log") or "" end
        assert.truthy(pid, log())
        local ok, err = pcall(function()
            -- the pid file and the listeners come before the master's line
            -- (slower under ASan): wait for it, bounded
            assert.truthy(helpers.wait_until(function()
                return log():find("master " .. pid, 1, true)
            end, 10), log())
            local out, rc = helpers.sh(fmt("cd %s && kill -HUP $(cat moongate.pid)", shq(root)))
            assert.equal(0, rc, out)
            assert.truthy(helpers.wait_until(function()
                return log():find("reload: generation 2 serving", 1, true)
            end, 10), log())
            assert.equal(200, whoami(port, "demo-token")) -- make run is the demo
        end)
        os.execute("kill -TERM " .. pid)
        local rc = helpers.wait_until(function()
            return tonumber(helpers.read_file(dir .. "/rc") or "")
        end, 15)
        assert(ok, err)
        assert.equal(0, rc, log())
        assert.falsy(helpers.read_file(pidfile), "moongate.pid is removed at exit")
    end)
end)

describe("docker-compose.yml's edge", function()
    it("serves the seed's topology: /api through the gateway to the runtime, / from the frontend",
        function()
            -- the compose file, parsed as YAML (python3-yaml)
            local out, prc = helpers.sh(fmt("%s -c %s %s", helpers.python, shq(
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"),
                shq(root .. "/docker-compose.yml")))
            assert.equal(0, prc, out)
            local compose = helpers.json.decode(out)
            local svc = compose.services
            assert.truthy(svc.moongate and svc.runtime and svc.frontend)
            local edge_env, rt_env = svc.moongate.environment, svc.runtime.environment
            assert.same({ "-c", "conf/compose.lua" }, svc.moongate.command)
            assert.same({ "80:8080" }, svc.moongate.ports)
            assert.equal("10s", svc.moongate.stop_grace_period)
            assert.equal("SIGTERM", svc.moongate.stop_signal)
            assert.equal("0", edge_env.MOONGATE_DEMO)
            assert.equal("1", rt_env.MOONGATE_DEMO)
            assert.is_nil(svc.runtime.ports, "the runtime is not published")
            -- the runtime service: the image's default conf in demo mode
            local rport = helpers.free_port()
            rt_env.MOONGATE_SERVER_DEMO_RUNTIME_LISTEN = assert(
                rt_env.MOONGATE_SERVER_DEMO_RUNTIME_LISTEN):gsub("^0%.0%.0%.0:%d+", "127.0.0.1:" .. rport)
            rt_env.MOONGATE_LISTEN = nil
            local runtime = start_shipped("conf/default.lua", rt_env)
            assert.truthy(helpers.wait_until(function() return helpers.port_open(rport) end, 5))
            local frontend = helpers.start_upstream()
            -- the edge, with the compose names moved to these ports
            assert.equal("http://runtime:9001", edge_env.MOONGATE_UPSTREAM_RUNTIME)
            assert.equal("http://frontend:8000", edge_env.MOONGATE_UPSTREAM_FRONTEND)
            edge_env.MOONGATE_UPSTREAM_RUNTIME = "http://127.0.0.1:" .. rport
            edge_env.MOONGATE_UPSTREAM_FRONTEND = frontend.url
            edge_env.MOONGATE_LISTEN = nil
            local mg = start_shipped("conf/compose.lua", edge_env)
            local st, _, body = helpers.http(mg.port, "GET", "/some/page.html")
            assert.equal(200, st)
            assert.equal("/some/page.html", helpers.json.decode(body).path)
            st = helpers.http(mg.port, "GET", "/")
            assert.equal(200, st)
            -- demo off at the edge: the token is checked by the Runtime's introspection
            assert.equal(200, whoami(mg.port, "demo-token"))
            assert.equal(401, whoami(mg.port, "not-a-token"))
            st = helpers.http(mg.port, "GET", "/api/runtime/info",
                { headers = { Authorization = "Bearer demo-token" } })
            assert.equal(200, st)
            local l = mg:log()
            assert.truthy(l:find("upstream frontend: " .. frontend.url .. " (env "
                .. "MOONGATE_UPSTREAM_FRONTEND)", 1, true), l)
            -- the seed's timeouts
            local conf = helpers.read_file(root .. "/conf/compose.lua")
            assert.truthy(conf:find("\n    read = 0,", 1, true) and conf:find("\n    write = 0,", 1, true)
                and conf:find("\n    idle = 3600,", 1, true) and conf:find("\n    drain = 8,", 1, true))
            mg:stop()
            runtime:stop()
            helpers.stop(frontend.pid)
        end)
end)
