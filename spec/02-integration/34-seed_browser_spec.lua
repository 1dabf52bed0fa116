-- The shipped page (public/) in a real browser: headless Chromium, driven
-- over the DevTools protocol (spec/fixtures/cdp_page.js), loads / from the
-- gateway with the embedded demo Runtime, creates a session, submits an
-- intent and follows its stream to completion, and chats with the agent, all
-- through the one origin. The heartbeat interval is shortened to 1 s so the
-- page shows heartbeats within the run. Screenshot: spec/out/seed-browser.png.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local CDP = helpers.root .. "/spec/fixtures/cdp_page.js"

local RESULT = [[({
  state: document.body.dataset.state,
  statuses: [...document.querySelectorAll('#timeline li.status')].map((l) => l.dataset.status),
  heartbeats: Number(document.getElementById('heartbeats').textContent),
  heartbeat_rows: document.querySelectorAll('#timeline li.heartbeat').length,
  closed: [...document.querySelectorAll('#timeline li.msg-close')].map((l) => l.textContent),
  artifact: document.getElementById('artifact-content').textContent,
  agent: [...document.querySelectorAll('#messages .bubble.agent')].map((b) => b.textContent),
  session: document.getElementById('session-id').textContent,
  execution: document.getElementById('execution-id').textContent,
})]]

local function run_page(url, screenshot, timeout)
    local job = {
        url = url,
        ["until"] = "document.body.dataset.state && document.body.dataset.state !== 'running'",
        result = RESULT,
        timeout = timeout or 30,
        screenshot = screenshot,
        user_data_dir = helpers.tmpdir("chromium"),
    }
    local out = helpers.sh("timeout -s KILL 60 node " .. helpers.shq(CDP) .. " "
        .. helpers.shq(helpers.json.encode(job)))
    local line = out:match("(%b{})%s*$")
    assert(line, "no report from cdp_page.js:\n" .. out)
    return helpers.json.decode(line)
end

describe("seed page in headless chromium", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "seed-browser", config = {
            ["stream.heartbeat"] = 1, ["stream.poll_interval"] = 0.25, ["agent.heartbeat"] = 1 } })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        seed.cleanup()
    end)

    it("has chromium and node installed", function()
        local _, rc = helpers.sh("command -v chromium && command -v node")
        assert.equal(0, rc, "chromium and node are needed (Debian packages chromium, nodejs, node-ws)")
    end)

    it("runs an intent to completion and shows each status and the heartbeats", function()
        local png = helpers.out .. "/seed-browser.png"
        os.remove(png)
        local r = run_page("http://127.0.0.1:" .. mg.port .. "/?auto=1&duration=4", png)
        assert.truthy(r.ok, "the page did not finish: " .. tostring(r.error))
        local v = r.value
        assert.equal("done", v.state, helpers.json.encode(v))
        -- each status, in order
        local order, seen = {}, {}
        for _, s in ipairs(v.statuses) do
            if not seen[s] then
                seen[s] = true
                order[#order + 1] = s
            end
        end
        assert.same({ "pending", "running", "completed" }, order)
        assert.truthy(v.heartbeats >= 1, "no heartbeat shown: " .. helpers.json.encode(v))
        assert.equal(v.heartbeats, v.heartbeat_rows)
        assert.truthy(v.closed[#v.closed]:find("1000", 1, true))
        assert.truthy(v.artifact:find(v.execution, 1, true), "artifact not shown")
        assert.matches("^se%-", v.session)
        -- the agent greeted and answered
        assert.truthy(#v.agent >= 2, helpers.json.encode(v.agent))
        assert.truthy(v.agent[1]:find("tenant t1", 1, true))
        local data = helpers.read_file(png)
        assert.truthy(data and data:sub(1, 8) == "\137PNG\r\n\26\n", "no screenshot at " .. png)
    end)

    it("shows a refused token on the page", function()
        local r = run_page("http://127.0.0.1:" .. mg.port .. "/?auto=1&token=wrong", nil, 10)
        assert.truthy(r.ok, tostring(r.error))
        assert.matches("^failed: 401", r.value.state)
        assert.truthy(r.dom:find("token refused: 401", 1, true))
    end)
end)
