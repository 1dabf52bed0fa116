-- bench/fanout.sh's Runtime (a moongate of one worker): the contract's status
-- endpoint for one running execution whose status changes every
-- FANOUT_PERIOD seconds (0.1) by itself: change n happens at start + n *
-- period (start: the first poll), so the data names it ("seq": n) and says
-- when it happened ("changed_us": unix microseconds, a string so that no
-- digit is lost). GET /ctl/served lists, per change, when a poll first
-- answered it ("<seq> <unix us>" lines): the poller's publish follows that
-- answer, so the bench can tell the polling delay from the fan-out.
-- GET /ctl/polls: "<polls> <seconds since the first>" (one poller for the
-- cluster: 1 / stream.poll_interval per second).
local moongate = require "moongate"

local floor = math.floor
local format = string.format
local concat = table.concat

local PERIOD = tonumber(os.getenv("FANOUT_PERIOD") or "") or 0.1
local MAX = 100000 -- changes remembered (10 000 s at 0.1 s)
local start
local served = {} -- seq -> unix time of the first answer that carried it
local last_served = -1
local polls = 0

return {
  { path = "/v1/executions/{id}/status", handler = function(req)
      local now = moongate.now()
      start = start or now
      polls = polls + 1
      local seq = floor((now - start) / PERIOD)
      if seq > last_served and seq < MAX then
        served[seq], last_served = now, seq
      end
      return 200, format('{"execution_id":"%s","tenant_id":"%s","status":"running","seq":%d,'
        .. '"changed_us":"%.0f"}', req.params.id, req.query.tenant_id or "", seq,
        (start + seq * PERIOD) * 1e6), { ["Content-Type"] = "application/json" }
  end },
  { path = "/ctl/polls", handler = function()
      return 200, format("%d %.3f\n", polls, start and moongate.now() - start or 0),
        { ["Content-Type"] = "text/plain" }
  end },
  { path = "/ctl/served", handler = function()
      local out = {}
      for s = 0, last_served do
        if served[s] then
          out[#out + 1] = format("%d %.0f", s, served[s] * 1e6)
        end
      end
      return 200, concat(out, "\n") .. "\n", { ["Content-Type"] = "text/plain" }
  end },
}
