-- A short run of fuzz/http_fuzz.py (make fuzz runs the long one): mutated
-- HTTP requests and WebSocket frame sequences must never take a worker
-- down; the master would restart it, so its pids must stay the same.
local helpers = require "spec.helpers"

local ROUTES = [[
return {
  { prefix = "/up", upstream = "up" },
  { path = "/ws", websocket = { mode = "handler" }, handler = function(ws)
      while true do
        local d, kind = ws:recv()
        if not d then return end
        ws:send(d, kind)
      end
  end },
}
]]

describe("fuzz (short)", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "fuzz", upstream = up, routes = ROUTES, workers = 2 })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    -- make fuzz: MOONGATE_FUZZ_N=50000 MOONGATE_FUZZ_SECS=600
    local n = tonumber(os.getenv("MOONGATE_FUZZ_N")) or 1500
    local secs = tonumber(os.getenv("MOONGATE_FUZZ_SECS")) or 60

    it("survives mutated requests and frame sequences", function()
        local before = table.concat(mg:workers(), ",")
        local out, rc = helpers.sh("/usr/bin/python3 " .. helpers.root .. "/fuzz/http_fuzz.py "
            .. mg.port .. " " .. n .. " " .. secs .. " 7")
        assert.matches("server alive", out)
        assert.equal(0, rc, out)
        assert.equal(before, table.concat(mg:workers(), ","), "a worker died and was restarted")
    end)
end)
