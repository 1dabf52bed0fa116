-- Hostile probes of the shipped auth hook and of ip-restriction (issue 10,
-- defects 10 and 12): query tokens hidden from redaction by percent-encoding,
-- query tokens on REST requests that carry an Upgrade header, duplicate
-- tenant_id parameters, and X-Forwarded-For entries that do not parse.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api
local fmt = string.format

describe("hostile auth probes", function()
    local mg

    lazy_setup(function()
        mg = seed.start_gateway({ name = "hostile-auth", workers = 1 })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        seed.cleanup()
    end)

    -- the access log is flushed every 200 ms: wait for a line naming `marker`
    local function log_line(marker)
        local line
        helpers.wait_until(function()
            for l in mg:log():gmatch("[^\n]+") do
                if l:find(marker, 1, true) then
                    line = l
                    return true
                end
            end
        end, 5)
        return line
    end

    it("redacts a query token however its name is encoded", function()
        local names = { "%74oken", "tok%65n", "TOKEN", "%54%4F%4B%45%4E", "access%5Ftoken", "api+key" }
        for i, name in ipairs(names) do
            local secret = fmt("sekr1t-%d-x", i)
            local path = fmt("/api/auth/whoami?mark=m%d&%s=%s", i, name, secret)
            local st = api(mg.port, "GET", path, "t1")
            assert.equal(200, st, path)
            local line = log_line("mark=m" .. i)
            assert.truthy(line, "no access log line for " .. path)
            if name ~= "api+key" then -- "api key" (a space) is not a secret name
                assert.is_nil(line:find(secret, 1, true), "secret logged: " .. line)
                assert.truthy(line:find(name .. "=-", 1, true), line)
            else
                assert.truthy(line:find(secret, 1, true), line)
            end
        end
    end)

    it("takes no query token on a REST route, whatever the Upgrade header says", function()
        for _, h in ipairs({
            { Upgrade = "websocket" },
            { Upgrade = "websocket", Connection = "Upgrade" },
            { Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==",
              ["Sec-WebSocket-Version"] = "13" },
        }) do
            local st = api(mg.port, "GET", "/api/auth/whoami?token=demo-token", false, nil, h)
            assert.equal(401, st)
        end
    end)

    it("refuses a broken WebSocket handshake before the auth hook runs", function()
        -- no Sec-WebSocket-Key: 400 from the core, not the hook's 401
        local st = api(mg.port, "GET", seed.stream_path("ex-1", "t1"), false, nil,
            { Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Version"] = "13" })
        assert.equal(400, st)
        -- a valid one with a query token still opens
        local c, res = seed.ws_open(mg.port, seed.stream_path("ex-1", "t1"), "t1")
        assert.truthy(c, tostring(res))
        assert.equal(101, c.res.status)
        c:close()
    end)

    it("refuses a query that names tenant_id more than once", function()
        for _, q in ipairs({ "tenant_id=t2&tenant_id=t1", "tenant_id=t1&tenant_id=", "tenant_id=t1&tenant%5Fid=t2",
                             "tenant_id&tenant_id=t1" }) do
            local st, b = api(mg.port, "GET", "/api/execution/ex-1/status?" .. q, "t1")
            assert.equal(400, st, q)
            assert.equal("tenant_id", b and b.parameter, q)
        end
        local st = api(mg.port, "GET", "/api/execution/ex-1/status?tenant_id=t1", "t1")
        assert.is_not.equal(400, st)
    end)
end)

describe("hostile X-Forwarded-For", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "hostile-xff", upstream = up,
            conf = [[return { listen = "127.0.0.1:$PORT", workers = 1,
                upstreams = { up = { servers = { "$UPSTREAM" } } } }]],
            routes = [[return {
                { prefix = "/deny", upstream = "up", plugins = { ["ip-restriction"] = {
                    deny = { "10.6.6.6", "2001:db8::/32" }, trusted_proxies = { "127.0.0.1" } } } },
            }]] })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function get(xff)
        return (helpers.http(mg.port, "GET", "/deny/x", { headers = { "X-Forwarded-For: " .. xff } }))
    end

    it("refuses a rightmost entry that does not parse instead of judging the proxy", function()
        assert.equal(403, get("10.6.6.6"))
        assert.equal(200, get("192.0.2.1"))
        for _, xff in ipairs({ "10.6.6.6:1234", "010.006.006.006", "[2001:db8::1]:443", "192.0.2.1, nonsense",
                               "10.6.6.6, ", "192.0.2.1,,", "0x0a.6.6.6" }) do
            assert.equal(403, get(xff), xff)
        end
    end)
end)
