-- The request API through the FFI (core/lua/lua_ffi.c, lib/moongate/init.lua):
-- hooks compile. moongate runs with MOONGATE_JIT_LOG (LuaJIT's trace events,
-- as -jv prints them, docs/performance.md) and the shipped auth hook
-- (scripts/auth.lua, on the seed's status route), jwt-auth + rate-limit and
-- key-auth are driven until hot; then the log must show compiled traces
-- and no trace abort in those access phases, and no abort anywhere on an
-- FFI call (a conversion LuaJIT cannot compile).
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"
local ph = require "spec.plugin_helpers"

local fmt = string.format

local N = 400 -- requests per route: far past LuaJIT's hot counters (56)

local ROUTES = [[
local moongate = require "moongate"
local auth = require "auth"
local execution = require "execution"
local methods = moongate.methods
return {
  { prefix = "/api", access = auth.access, routes = {
    { path = "/api/execution/{execution_id}/status", handler = methods{ GET = execution.status } },
  } },
  { prefix = "/jwt", plugins = {
      ["jwt-auth"] = { secret = "jit-secret", claims_to_headers = { sub = "X-Auth-User" } },
      ["rate-limit"] = { rate = 1000000, burst = 1000000, key = "jwt_claim", claim = "sub",
                         dict = "demo_runtime" },
    }, handler = function(req) return 200, { sub = req.ctx.jwt.sub } end },
  { prefix = "/key", plugins = { ["key-auth"] = { keys = { bench = "jit-key" } } },
    handler = function(req) return 200, { consumer = req.ctx.consumer } end },
  { prefix = "/hook", access = function() end, handler = function(req)
      return 200, { q = req.query.a, ua = req:header("user-agent") ~= nil }
  end },
  -- the FFI versions raise what the classic functions raised
  { path = "/errors", handler = function(req)
      local d = moongate.shared.demo_runtime
      local function err(f, ...)
        local ok, e = pcall(f, ...)
        return ok and "no error" or tostring(e):gsub("^[^:]*:%d+: ", "")
      end
      req:set_response_header("X-Int", 123456789012345)
      req:set_response_header("X-Frac", 0.25)
      local ok, left = d:take("jit-bucket", 1, 5)
      local big = string.rep("a \255/", 30000) -- past the cached escape buffer
      local esc = moongate.escape(big)
      return 200, {
        escape = { #esc, moongate.unescape(esc) == big, moongate.escape("a-Z_0.~"),
                   moongate.unescape("a+b%41%zz"), (moongate.decode_query("x=1&y=%20&x=2&z")).x },
        take = { ok, left },
        key = err(d.take, d, "", 1, 1),
        rate = err(d.take, d, "k", 0, 1),
        self = err(d.take, {}, "k", 1, 1),
        header = err(req.header, req),
        name = err(req.set_header, req, "X A", "1"),
        value = err(req.set_header, req, "X-A", {}),
      }
  end },
}
]]

-- the access phases that must compile without an abort (key-auth is driven
-- too, but its loops over the configured names and keys, one round each
-- here, may abort as "leaving loop in root trace" while traces form: it
-- compares the key with every key by design), and the seed's status
-- handler's calls to Runtime (runtime_client.lua: its path segments are
-- escaped by moongate.escape, no gsub with a function)
local WATCHED = { "scripts/auth.lua", "jwt-auth/handler.lua", "rate-limit/handler.lua",
                  "scripts/runtime_client.lua" }
-- Aborts we know of that are not in an access phase, though a trace
-- started in one may run into them: none left
local KNOWN = {}

local function has_any(s, list)
    for _, f in ipairs(list) do
        if s:find(f, 1, true) then return true end
    end
    return false
end

-- An abort line "[TRACE --- (p/e) START -- REASON[ at WHERE]]": its start
-- and where it stopped (the start when not said).
local function abort_where(line)
    local start, reason = line:match("%[TRACE %-%-%- [^%s]*%s?([^%s]+) %-%- (.*)%]$")
    if not start then return nil end
    if not start:find(":", 1, true) then -- no "(p/e)" part: the first word was the start
        start, reason = line:match("%[TRACE %-%-%- ([^%s]+) %-%- (.*)%]$")
    end
    return start, reason:match(" at ([^%s]+)$") or start
end

-- N requests on one connection (one curl), each status counted
local function drive(port, path, header)
    local dir = helpers.tmpdir("jit-urls")
    local lines = {}
    for _ = 1, N do
        lines[#lines + 1] = fmt('url = "http://127.0.0.1:%d%s"', port, path)
        lines[#lines + 1] = 'output = "/dev/null"'
    end
    helpers.write_file(dir .. "/urls", table.concat(lines, "\n") .. "\n")
    local out = helpers.sh(fmt("curl -s --max-time 60 -w '%%{http_code}\\n' -H %s -K %s",
        helpers.shq(header), helpers.shq(dir .. "/urls")))
    local counts = {}
    for code in out:gmatch("(%d%d%d)\n") do counts[code] = (counts[code] or 0) + 1 end
    return counts
end

describe("FFI request API under the JIT", function()
    local mg, rt, log_path, token

    lazy_setup(function()
        local dir = helpers.tmpdir("jit")
        log_path = dir .. "/jit.log"
        rt = seed.start_test_runtime() -- any execution id is "running" there
        mg = seed.start_gateway({ name = "jit", workers = 1, routes = ROUTES,
            runtime = "http://127.0.0.1:" .. rt.port, env = { MOONGATE_JIT_LOG = log_path } })
        token = ph.jwt("HS256", "jit-secret", { sub = "jit", exp = 4102444800 }, dir)
    end)

    lazy_teardown(function()
        for _, m in ipairs({ mg, rt }) do m:stop() end
        seed.cleanup()
    end)

    it("serves the hot routes", function()
        assert.same({ ["200"] = N }, drive(mg.port, "/api/execution/e1/status?tenant_id=t1",
            "Authorization: Bearer " .. seed.TOKEN.t1))
        assert.same({ ["200"] = N }, drive(mg.port, "/jwt/x", "Authorization: Bearer " .. token))
        assert.same({ ["200"] = N }, drive(mg.port, "/key/x", "apikey: jit-key"))
        assert.same({ ["200"] = N }, drive(mg.port, "/hook/x?a=1%202&b=%zz", "X-A: 1"))
    end)

    it("raises the classic API's errors", function()
        local st, h, body = helpers.http(mg.port, "GET", "/errors")
        assert.equal(200, st)
        local j = require("cjson").decode(body)
        assert.same({ true, 4 }, j.take)
        assert.same({ 30000 * 10, true, "a-Z_0.~", "a bA%zz", "2" }, j.escape)
        assert.equal("shared dict: key length must be 1 to 200 bytes", j.key)
        assert.equal("shared dict take: rate and burst must be positive", j.rate)
        assert.matches("bad argument #1 to 'take'", j.self, 1, true)
        assert.matches("bad argument #2 to 'header' (string expected, got no value)", j.header, 1, true)
        assert.equal("bad header X A", j.name)
        assert.matches("bad argument #3 to ':set_header()' (string expected, got table)", j.value, 1, true)
        assert.equal("123456789012345", h["x-int"])
        assert.equal("0.25", h["x-frac"])
    end)

    it("compiles the access phases: no trace aborts in them, none on an FFI call", function()
        local log = helpers.wait_until(function()
            local s = helpers.read_file(log_path)
            return s and s:find("key-auth/handler.lua", 1, true) and s
        end, 5)
        assert.truthy(log, "no trace events of the last routes in " .. log_path)
        local compiled, bad, seen, loop_aborts = 0, {}, {}, {}
        for line in log:gmatch("[^\n]+") do
            if line:find("^w%d+ %[TRACE +%d+ ") then
                compiled = compiled + 1
                -- compiled traces of the access phases: the hook's own, and
                -- the plugins' (their bindings, the plugins' code inlined)
                if line:find("scripts/auth.lua", 1, true) then seen.hook = true end
                if has_any(line, { "moongate/plugins.lua", "/handler.lua" }) then
                    seen.plugins = true
                end
            end
            if line:find("[TRACE ---", 1, true) then
                local start, at = abort_where(line)
                assert.truthy(start, line)
                if (has_any(start, WATCHED) or has_any(at, WATCHED)) and not has_any(at, KNOWN) then
                    -- A loop-shape abort once or twice is how traces form, and
                    -- LuaJIT's hot counters are shared by PC hash (a cold loop
                    -- can look hot once); a loop that keeps aborting is real.
                    local loopy = line:find("loop in root trace", 1, true)
                    loop_aborts[line] = (loop_aborts[line] or 0) + 1
                    if not loopy or loop_aborts[line] == 3 then bad[#bad + 1] = line end
                end
                -- what the FFI calls must never cost: a conversion or an
                -- FFI builtin LuaJIT cannot compile
                if line:find("NYI", 1, true) and (line:find("C type conversion", 1, true)
                    or (at and at:find("^ffi%."))) then
                    bad[#bad + 1] = line
                end
            end
        end
        assert.same({ hook = true, plugins = true }, seen)
        assert.is_true(compiled > 10, "only " .. compiled .. " traces compiled")
        assert.same({}, bad)
    end)
end)
