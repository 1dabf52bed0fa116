-- HTTP/2 with the clients people use: Node's http2 module (several
-- parallel streams on one session, a streamed upload under HTTP/2 flow
-- control, through the C proxy to spec/fixtures/upstream.py), and headless
-- Chromium loading the shipped demo page (public/, the seed's scripts and
-- the embedded demo Runtime) over HTTPS with `http2 = true`: the page, and
-- its REST calls, came over h2 (the page's own Navigation and Resource
-- Timing say so), and so does moongate's access log ("protocol":"HTTP/2.0").
-- The page's execution stream WebSocket goes over the same h2 connection
-- too (RFC 8441, on by default with http2): logged as CONNECT, HTTP/2.0.
local helpers = require "spec.helpers"
local tls = require "spec.tls_helpers"
local seed = require "spec.seed_helpers"

local fmt = string.format
local shq = helpers.shq
local json = helpers.json

local NODE = helpers.root .. "/spec/fixtures/h2_node.js"
local CDP = helpers.root .. "/spec/fixtures/cdp_page.js"

local function node(job)
    local out = helpers.sh("timeout -s KILL 40 node " .. shq(NODE) .. " " .. shq(json.encode(job)))
    local line = out:match("(%b{})%s*$")
    assert(line, "no report from h2_node.js:\n" .. out)
    return json.decode(line), out
end

-- the SPKI hash Chromium's --ignore-certificate-errors-spki-list takes
local function spki(cert)
    local out, rc = helpers.sh(fmt("openssl x509 -in %s -pubkey -noout | openssl pkey -pubin "
        .. "-outform der | openssl dgst -sha256 -binary | openssl enc -base64", shq(cert)))
    assert(rc == 0, out)
    return (out:gsub("%s+", ""))
end

describe("node's http2 client", function()
    local up, mg, ca, certs, tport

    local ROUTES = [[
local moongate = require "moongate"
return {
  { path = "/slow", handler = function(req)
      moongate.sleep(0.5)
      return 200, "slow " .. tostring(req.query.i) .. " " .. req.http_version
  end },
  { prefix = "/up", upstream = "up", strip_prefix = true, body_size = 16777216 },
}
]]

    lazy_setup(function()
        local dir = helpers.tmpdir("h2-node")
        ca = tls.ca(dir)
        certs = tls.cert(ca, { names = { "localhost" } })
        up = helpers.start_upstream()
        tport = helpers.free_port()
        mg = helpers.start_moongate({ name = "h2-node", routes = ROUTES, upstream = up, workers = 1,
            conf = fmt([[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  http2 = true,
  upstreams = { up = { servers = { "$UPSTREAM" } } },
  tls = { listen = "127.0.0.1:$TLSPORT", certificates = { { cert = %q, key = %q } } },
}
]], certs.cert, certs.key), vars = { TLSPORT = tport } })
        assert(helpers.wait_until(function() return helpers.port_open(tport) end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        if up then helpers.stop(up.pid) end
        helpers.cleanup()
    end)

    it("runs 20 parallel requests on one session, each answered on its own stream", function()
        local r, raw = node({ port = tport, ca = ca.cert, mode = "parallel", n = 20, path = "/slow" })
        assert.truthy(r.ok, raw)
        assert.equal("h2", r.alpn)
        assert.equal(1, r.sockets)
        assert.equal(20, #r.answers)
        for i, a in ipairs(r.answers) do
            assert.equal(200, a.status)
            assert.equal(fmt("slow %d 2.0", i - 1), a.body)
        end
        -- each handler sleeps 0.5 s: one after another would take 10 s
        assert.truthy(r.elapsed < 5, "the streams did not run side by side: " .. r.elapsed .. " s")
    end)

    it("streams a 4 MiB upload through the proxy under flow control", function()
        local size = 4 * 1024 * 1024
        local r, raw = node({ port = tport, ca = ca.cert, mode = "upload", path = "/up/upload",
            size = size, chunk = 16384, timeout = 30 })
        assert.truthy(r.ok, raw)
        assert.equal(200, r.status, raw)
        local t = json.decode(r.body)
        assert.equal(size, r.sent)
        assert.equal(size, t.body_len)
        assert.equal(r.sha256, t.body_sha256)
        -- the stream's window is far below the body: it went only as fast as
        -- moongate's WINDOW_UPDATEs let it, and node waited for them
        assert.truthy(r.initial_window < size / 16, raw)
        assert.truthy(r.drains > 0, raw)
        assert.equal(1, r.sockets)
    end)
end)

local RESULT = [[({
  state: document.body.dataset.state,
  protocol: location.protocol,
  nav: performance.getEntriesByType('navigation')[0].nextHopProtocol,
  fetches: performance.getEntriesByType('resource').filter((e) => e.initiatorType === 'fetch')
    .map((e) => [new URL(e.name).pathname, e.nextHopProtocol]),
  assets: performance.getEntriesByType('resource').filter((e) => e.initiatorType !== 'fetch')
    .map((e) => [new URL(e.name).pathname, e.nextHopProtocol]),
  statuses: [...document.querySelectorAll('#timeline li.status')].map((l) => l.dataset.status),
})]]

local SEED_CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 2,
  log_level = "info",
  http2 = true,
  access_log = "$LOGDIR/access.log",
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = "$CERT", key = "$KEY" } },
  },
  servers = {
    demo_runtime = { listen = "127.0.0.1:$RTPORT", routes = "scripts/demo_runtime/routes.lua",
                     access_log = false },
  },
  shared_dicts = { demo_runtime = 1048576 },
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:$RTPORT" }, max_fails = 0, connect_timeout = 2 },
  },
}
]]

describe("the demo page over h2 in headless chromium", function()
    local mg, certs, tport, logdir

    lazy_setup(function()
        local dir = helpers.tmpdir("h2-browser")
        local ca = tls.ca(dir)
        certs = tls.cert(ca, { names = { "localhost" } })
        tport = helpers.free_port()
        logdir = helpers.tmpdir("h2-browser-log")
        local rt_port = helpers.free_port()
        mg = helpers.start_moongate({ name = "h2-browser", conf = SEED_CONF,
            routes = helpers.read_file(helpers.root .. "/scripts/routes.lua"),
            scripts = seed.shipped_files({ ["stream.heartbeat"] = 1, ["stream.poll_interval"] = 0.25,
                ["agent.heartbeat"] = 1 }),
            vars = { TLSPORT = tport, RTPORT = rt_port, CERT = certs.cert, KEY = certs.key,
                     LOGDIR = logdir } })
        assert(helpers.wait_until(function()
            return helpers.port_open(tport) and helpers.port_open(rt_port)
        end, 5))
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.cleanup()
    end)

    it("loads the page and makes its REST calls over h2, as the access log says too", function()
        local png = helpers.out .. "/h2-browser.png"
        os.remove(png)
        local job = {
            url = fmt("https://127.0.0.1:%d/?auto=1&duration=2", tport),
            ["until"] = "document.body.dataset.state && document.body.dataset.state !== 'running'",
            result = RESULT,
            timeout = 30,
            screenshot = png,
            args = { "--ignore-certificate-errors-spki-list=" .. spki(certs.cert) },
            user_data_dir = helpers.tmpdir("chromium-h2"),
        }
        local out = helpers.sh("timeout -s KILL 60 node " .. shq(CDP) .. " " .. shq(json.encode(job)))
        local line = out:match("(%b{})%s*$")
        assert(line, "no report from cdp_page.js:\n" .. out)
        local r = json.decode(line)
        assert.truthy(r.ok, "the page did not finish: " .. tostring(r.error) .. " " .. json.encode(r.value))
        local v = r.value
        assert.equal("https:", v.protocol)
        assert.equal("done", v.state, json.encode(v))
        assert.equal("h2", v.nav, json.encode(v))
        -- the page's REST calls (whoami, session, intent, ...) and its assets
        local paths = {}
        assert.truthy(#v.fetches >= 3, json.encode(v.fetches))
        for _, f in ipairs(v.fetches) do
            assert.equal("h2", f[2], json.encode(v.fetches))
            paths[f[1]] = true
        end
        assert.truthy(paths["/api/auth/whoami"] and paths["/api/session"] and paths["/api/intent"],
            json.encode(v.fetches))
        assert.truthy(#v.assets >= 2, json.encode(v.assets))
        for _, a in ipairs(v.assets) do
            assert.equal("h2", a[2], json.encode(v.assets))
        end
        -- moongate's side: the same requests logged as HTTP/2.0
        local want = { ["/"] = "GET", ["/app.js"] = "GET", ["/api/auth/whoami"] = "GET",
                       ["/api/session"] = "POST", ["/api/intent"] = "POST" }
        local seen = {}
        assert.truthy(helpers.wait_until(function()
            local log = helpers.read_file(logdir .. "/access.log") or ""
            for l in log:gmatch("[^\n]+") do
                local ok, e = pcall(json.decode, l)
                local path = ok and type(e) == "table" and e.path and e.path:match("^[^?]*")
                if path and want[path] == e.method then
                    seen[path] = e.protocol
                end
            end
            for p in pairs(want) do
                if not seen[p] then return false end
            end
            return true
        end, 5), json.encode(seen))
        for p in pairs(want) do
            assert.equal("HTTP/2.0", seen[p], p .. ": " .. json.encode(seen))
        end
        -- the page's statuses came over its stream WebSocket, an extended
        -- CONNECT on the page's h2 connection (logged when it closed)
        assert.truthy(#v.statuses >= 1, json.encode(v))
        local ws
        assert.truthy(helpers.wait_until(function()
            local log = helpers.read_file(logdir .. "/access.log") or ""
            for l in log:gmatch("[^\n]+") do
                local ok, e = pcall(json.decode, l)
                if ok and type(e) == "table" and e.path
                    and e.path:match("^/api/execution/[^/?]+/stream") then
                    ws = e
                end
            end
            return ws
        end, 10), "no access line for the page's stream WebSocket")
        assert.equal("CONNECT", ws.method, json.encode(ws))
        assert.equal("HTTP/2.0", ws.protocol, json.encode(ws))
        assert.equal(200, ws.status, json.encode(ws))
        local data = helpers.read_file(png)
        assert.truthy(data and data:sub(1, 8) == "\137PNG\r\n\26\n", "no screenshot at " .. png)
    end)
end)
