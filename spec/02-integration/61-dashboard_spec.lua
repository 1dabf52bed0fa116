-- The admin dashboard (GET / on the admin listener) in headless Chromium,
-- driven over the DevTools protocol (spec/fixtures/cdp_page.js), while
-- curl loads the gateway: the page shows the routes, upstream health and a
-- reload's diff, and its request counts and route hits lie between two
-- scrapes of /metrics taken before and after it; a WebSocket opened before
-- the reload shows its generation draining and its socket by route and
-- generation, as /metrics has it. Screenshot: spec/out/dashboard.png.
local helpers = require "spec.helpers"
local wsh = require "spec.ws_helpers"
local json = helpers.json

local CDP = helpers.root .. "/spec/fixtures/cdp_page.js"
local TOKEN = "test-only-dashboard-token-5678"

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  admin = { listen = "127.0.0.1:$ADMIN", token = "$TOKEN" },
  upstreams = { up = { servers = { "$UPSTREAM" } } },
}
]]

local ROUTES = wsh.ECHO_HANDLER_SRC .. [[
return {
  { path = "/ws", name = "ws", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = echo },
  { path = "/hello", name = "hello", handler = function() return 200, "hello\n" end },
  { path = "/boom", name = "boom", handler = function() return 503, "boom\n" end },
  { prefix = "/up", name = "up", upstream = "up", strip_prefix = true },
}
]]

-- moongate_http_requests_total summed by route: all, and 5xx
local function scrape(admin)
    local st, _, body = helpers.http(admin, "GET", "/metrics", { headers = { "Connection: close" } })
    assert.equal(200, st)
    local req, err, any = {}, {}, false
    for labels, v in body:gmatch("moongate_http_requests_total{([^}]*)} (%d+)") do
        any = true
        local route = labels:match('route="([^"]*)"') or "-"
        req[route] = (req[route] or 0) + tonumber(v)
        if labels:find('status="5', 1, true) then
            err[route] = (err[route] or 0) + tonumber(v)
        end
    end
    return req, err, any
end

local RESULT = [[({
  routes: [...document.querySelectorAll('#routes tr')].slice(1).map((r) => r.cells[1].textContent),
  health: [...document.querySelectorAll('#upstreams tr')].slice(1).map((r) => r.cells[2].textContent),
  reloads: [...document.querySelectorAll('#reloads tr')].slice(1).map((r) => r.cells[2].textContent),
  status: document.getElementById('status').textContent,
  requests: window.mgDashboard.requests,
  errors: window.mgDashboard.errors,
  hits: window.mgDashboard.hits,
  wsgen: window.mgDashboard.wsgen,
  generations: window.mgDashboard.generations,
})]]

-- the value of one series in a scrape, or nil
local function series_value(admin, series)
    local _, _, body = helpers.http(admin, "GET", "/metrics", { headers = { "Connection: close" } })
    for line in (body or ""):gmatch("[^\n]+") do
        if line:sub(1, #series + 1) == series .. " " then
            return tonumber(line:sub(#series + 2))
        end
    end
end

describe("admin dashboard in headless chromium", function()
    local up, mg, admin, loadgen

    lazy_setup(function()
        up = helpers.start_upstream()
        admin = helpers.free_port()
        mg = helpers.start_moongate({ name = "dashboard", conf = CONF, routes = ROUTES, upstream = up,
            vars = { ADMIN = admin, TOKEN = TOKEN } })
        assert(helpers.wait_until(function() return helpers.port_open(admin) end, 5))
    end)

    lazy_teardown(function()
        if loadgen then loadgen:wait(30) end
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    it("has chromium and node installed", function()
        local _, rc = helpers.sh("command -v chromium && command -v node")
        assert.equal(0, rc, "chromium and node are needed (Debian packages chromium, nodejs, node-ws)")
    end)

    it("shows routes, health, rates and reloads that agree with /metrics", function()
        -- a WebSocket on the first generation, held across the reload
        local gen = series_value(admin, "moongate_generation")
        local ws = wsh.connect(mg.port, "/ws")
        finally(function() ws:close() end)
        local wsseries = string.format(
            'moongate_websocket_open_sockets{route="ws",mode="handler",generation="%d"}', gen)
        assert(helpers.wait_until(function() return series_value(admin, wsseries) == 1 end, 10))
        -- a reload first, so that the page has one to show
        helpers.write_file(mg.routes_path, ROUTES:gsub("return {\n", 'return {\n  { path = "/new", ' ..
            'handler = function() return 200, "new\\n" end },\n', 1))
        local st, _, body = helpers.http(admin, "POST", "/reload", { headers = {
            "Authorization: Bearer " .. TOKEN, "Connection: close" } })
        assert.equal(200, st, body)

        -- load for the whole page run: bounded in count and time
        loadgen = helpers.spawn("for i in $(seq 1 200); do curl -s -o /dev/null -m 5 " ..
            "http://127.0.0.1:" .. mg.port .. "/hello; curl -s -o /dev/null -m 5 " ..
            "http://127.0.0.1:" .. mg.port .. "/boom; done")
        local before = scrape(admin)
        local png = helpers.out .. "/dashboard.png"
        os.remove(png)
        local job = {
            url = "http://127.0.0.1:" .. admin .. "/#token=" .. TOKEN,
            -- two refreshes: the second has rates
            ["until"] = "window.mgDashboard && window.mgDashboard.ticks >= 2 && " ..
                "document.querySelectorAll('#routes tr').length > 1 && " ..
                "document.querySelectorAll('#reloads tr').length > 1",
            result = RESULT,
            timeout = 30,
            screenshot = png,
            user_data_dir = helpers.tmpdir("chromium-dash"),
        }
        local out = helpers.sh("timeout -s KILL 60 node " .. helpers.shq(CDP) .. " "
            .. helpers.shq(json.encode(job)))
        local after, after_err, any = scrape(admin)
        local line = out:match("(%b{})%s*$")
        assert(line, "no report from cdp_page.js:\n" .. out)
        local r = json.decode(line)
        assert.truthy(r.ok, "the page did not finish: " .. tostring(r.error) .. "\n" .. out)
        local v = r.value
        table.sort(v.routes)
        assert.same({ "/boom", "/hello", "/new", "/up", "/ws" }, v.routes)
        assert.same({ "up" }, v.health)
        assert.matches("%+.*/new", v.reloads[1])
        assert.matches("^updated", v.status)
        -- the page's counts come from a scrape between ours
        if any then
            for _, route in ipairs({ "hello", "boom" }) do
                local shown = v.requests[route]
                assert.truthy(shown, "no requests shown for " .. route .. ": " .. json.encode(v))
                assert.truthy(shown >= (before[route] or 0) and shown <= after[route],
                    route .. ": shown " .. shown .. ", /metrics " .. tostring(before[route]) ..
                    " .. " .. after[route])
            end
            assert.truthy(v.errors.boom > 0 and v.errors.boom <= after_err.boom)
            assert.equal(0, v.errors.hello)
            -- the routes' hits: the same counters, every worker's
            for _, route in ipairs({ "hello", "boom" }) do
                local hits = v.hits[route]
                assert.truthy(hits and hits >= (before[route] or 0) and hits <= after[route],
                    route .. ": hits " .. tostring(hits) .. ", /metrics " .. tostring(before[route])
                    .. " .. " .. after[route])
            end
            -- the socket still on the old generation, which drains
            assert.equal(1, v.wsgen["ws@" .. gen], json.encode(v.wsgen))
            assert.equal(series_value(admin, wsseries), v.wsgen["ws@" .. gen])
            local g = v.generations[tostring(gen)]
            assert.truthy(g, json.encode(v.generations))
            assert.equal("draining", g.state)
            assert.equal(1, g.websockets)
        else
            -- without the metrics module the page says it has no series
            assert.same({}, v.requests)
        end
        local f = io.open(png, "rb")
        assert.truthy(f, "no screenshot")
        assert.truthy(#f:read("*a") > 1000)
        f:close()
    end)
end)
