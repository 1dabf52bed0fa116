-- The short version of the bounded hostile suite (make chaos runs the full
-- one): tools/chaos/chaos.py --short starts the real binary and
-- spec/fixtures/chaos_upstream.py on 127.0.0.1 and runs six parts, each
-- bounded in count and time (about 50 s in all). One case per part reads
-- that part's PASS/FAIL line and shows its counts when it fails.
local helpers = require "spec.helpers"

local TOOL = helpers.root .. "/tools/chaos/chaos.py"

describe("hostile suite (chaos --short)", function()
    local out, rc

    lazy_setup(function()
        local h = helpers.spawn(string.format("%s %s --short --bin %s", helpers.python,
            helpers.shq(TOOL), helpers.shq(helpers.bin)))
        -- the tool bounds itself (~40 s; x3 under ASan); this is a backstop
        out, rc = h:wait(os.getenv("MOONGATE_ASAN") and 400 or 180)
    end)

    local function part(name)
        assert.is_not_nil(rc, "chaos.py did not finish:\n" .. tostring(out))
        local line = out:match("\n(" .. name .. "%s+%u%u%u%u[^\n]*)")
        assert.is_not_nil(line, "no result line for " .. name .. ":\n" .. out)
        local detail = out:match("\n" .. name .. "%s+%u%u%u%u[^\n]*\n( +[^\n]*)") or ""
        assert.truthy(line:match("^" .. name .. "%s+PASS"), line .. "\n" .. detail)
    end

    it("one-shot clients that half-close or reset leave no socket behind", function()
        part("oneshot")
    end)

    it("a descriptor flood under ulimit -n 256 neither spins nor floods the log", function()
        part("flood")
    end)

    it("slow request bodies are cut with 408 by timeouts.body", function()
        part("slowbody")
    end)

    it("misbehaving upstreams get a full body or a 502/504, never a hang", function()
        part("upstreams")
    end)

    it("a WebSocket upstream's last frame and FIN in one edge reach the client", function()
        part("ws")
    end)

    it("a reload storm under load fails no request and leaves one generation", function()
        part("reload")
    end)

    it("prints the summary block and exits non-zero exactly when a part failed", function()
        assert.is_not_nil(rc, "chaos.py did not finish")
        assert.truthy(out:find("== chaos summary (short) ==", 1, true), out)
        local verdict, nfail = out:match("chaos: (%u+) %((%d+) of 6 parts failed%)")
        assert.is_not_nil(verdict, out)
        assert.equal(tonumber(nfail) == 0 and "PASS" or "FAIL", verdict)
        assert.equal(tonumber(nfail) == 0 and 0 or 1, rc)
    end)
end)
