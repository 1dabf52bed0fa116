-- The C reverse proxy: path and query, strip_prefix, hop-by-hop headers,
-- X-Forwarded-* and X-Request-Id, round-robin, failover, passive health,
-- 502/504, pooled connections the upstream closes, HTTP/1.0 clients.
local helpers = require "spec.helpers"
local json = helpers.json

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  upstreams = {
    up = { servers = { "$UPSTREAM" } },
    rr = { servers = { "$UPSTREAM", "$UPSTREAM_B" } },
    failover = { servers = { "http://127.0.0.1:$DEAD1", "$UPSTREAM" }, max_fails = 100 },
    alldead = { servers = { "http://127.0.0.1:$DEAD1", "http://127.0.0.1:$DEAD2" } },
    slow = { servers = { "$UPSTREAM" }, response_timeout = 1 },
    health = { servers = { "http://127.0.0.1:$BLACKHOLE", "$UPSTREAM" },
               response_timeout = 1, max_fails = 1, fail_timeout = 2 },
  },
}
]]

local ROUTES = [[
return {
  { prefix = "/strip", upstream = "up", strip_prefix = true },
  { prefix = "/rr", upstream = "rr", strip_prefix = true },
  { prefix = "/fo", upstream = "failover", strip_prefix = true },
  { prefix = "/dead", upstream = "alldead", strip_prefix = true },
  { prefix = "/slow", upstream = "slow", strip_prefix = true },
  { prefix = "/health", upstream = "health", strip_prefix = true },
  { prefix = "/", upstream = "up" },
}
]]

describe("proxy", function()
    local a, b, bh, mg

    lazy_setup(function()
        a = helpers.start_upstream()
        b = helpers.start_upstream()
        bh = helpers.start_upstream({ blackhole = true })
        mg = helpers.start_moongate({
            name = "proxy", conf = CONF, routes = ROUTES, upstream = a,
            vars = { UPSTREAM_B = b.url, DEAD1 = helpers.free_port(), DEAD2 = helpers.free_port(),
                BLACKHOLE = bh.port },
        })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(a and a.pid)
        helpers.stop(b and b.pid)
        helpers.stop(bh and bh.pid)
        helpers.cleanup()
    end)

    local function echo(method, path, opts)
        local st, h, body, info = helpers.http(mg.port, method, path, opts)
        local ok, j = pcall(json.decode, body)
        return st, ok and j or body, h, info
    end

    it("passes path and query unchanged", function()
        local c = assert(helpers.connect(mg.port))
        for _, target in ipairs({
            "/a/b%20c//d?x=1&y=%2F&z",
            "/",
            "/q?",
            "/%7Euser/index.html?a=b&a=c&e=%E2%82%AC",
            "/semi;p=1/x?y",
        }) do
            assert(c:send(helpers.request("GET", target)))
            local r = assert(helpers.read_response(c))
            assert.equal(200, r.status, target)
            assert.equal(target, json.decode(r.body).path)
        end
        c:close()
    end)

    it("strips the matched prefix when asked", function()
        local st, j = echo("GET", "/strip/x/y?q=1")
        assert.equal(200, st)
        assert.equal("/x/y?q=1", j.path)
        for target, want in pairs({ ["/strip"] = "/", ["/strip?q=2"] = "/?q=2",
            ["/stripper"] = "/stripper" }) do -- /stripper is not the /strip route
            st, j = echo("GET", target)
            assert.equal(200, st, target)
            assert.equal(want, j.path)
        end
    end)

    it("forwards methods and bodies", function()
        local body = string.rep("body-", 2000)
        local sha = helpers.sh("printf %s " .. helpers.shq(body) .. " | sha256sum"):match("%x+")
        local st, j = echo("POST", "/p", { body = body })
        assert.equal(200, st)
        assert.equal("POST", j.method)
        assert.equal(#body, j.body_len)
        assert.equal(sha, j.body_sha256)
        st, j = echo("PUT", "/p", { body = body, chunked = true })
        assert.equal(200, st)
        assert.equal("PUT", j.method)
        assert.equal(#body, j.body_len)
        assert.equal(sha, j.body_sha256)
        st, j = echo("DELETE", "/p")
        assert.equal(200, st)
        assert.equal("DELETE", j.method)
        assert.equal(0, j.body_len)
    end)

    it("passes the upstream's status codes", function()
        assert.equal(418, (echo("GET", "/status/418")))
        assert.equal(404, (echo("GET", "/status/404")))
        local st, body = echo("GET", "/status/204")
        assert.equal(204, st)
        assert.equal("", body)
        assert.equal(503, (echo("POST", "/status/503", { body = "x" })))
    end)

    it("removes hop-by-hop request headers, also those named by Connection", function()
        local st, j = echo("GET", "/hop", { headers = {
            "Connection: keep-alive, X-Hop, X-Other-Hop",
            "X-Hop: secret",
            "X-Other-Hop: secret2",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Trailer: X-T",
            "Upgrade: h2c",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "Proxy-Connection: keep-alive",
            "X-Normal: yes",
        } })
        assert.equal(200, st)
        local h = j.headers
        for _, name in ipairs({ "x-hop", "x-other-hop", "keep-alive", "te", "trailer", "upgrade",
            "proxy-authorization", "proxy-connection", "transfer-encoding" }) do
            assert.is_nil(h[name], name .. " was forwarded")
        end
        local conn = type(h.connection) == "table" and table.concat(h.connection, ",") or (h.connection or "")
        assert.falsy(conn:lower():find("hop", 1, true), "Connection still names the hop headers: " .. conn)
        assert.equal("yes", h["x-normal"])
    end)

    it("removes hop-by-hop response headers, also those named by Connection", function()
        local st, h = helpers.http(mg.port, "GET", "/headers?set=Connection:X-Resp-Hop"
            .. "&set=X-Resp-Hop:1&set=Keep-Alive:timeout=99&set=Proxy-Thing:1&set=Trailer:X-T"
            .. "&set=Upgrade:foo&set=X-Kept:yes&set=Transfer-Encoding:chunked")
        assert.equal(200, st)
        assert.equal("yes", h["x-kept"])
        for _, name in ipairs({ "x-resp-hop", "proxy-thing", "trailer", "upgrade" }) do
            assert.is_nil(h[name], name .. " reached the client")
        end
        assert.falsy((h["keep-alive"] or ""):find("99", 1, true), "upstream Keep-Alive reached the client")
        assert.falsy((h.connection or ""):lower():find("x-resp-hop", 1, true))
    end)

    it("answers 502 for a response in a transfer coding other than chunked (RFC 9112 6.1)", function()
        -- the body is framed (chunked last), but it would reach the client
        -- still gzip-coded under headers that no longer say so
        local st, h, body = helpers.http(mg.port, "GET", "/headers?set=Transfer-Encoding:gzip,%20chunked")
        assert.equal(502, st)
        assert.matches("application/json", h["content-type"] or "")
        assert.matches("bad response from upstream", body, 1, true)
        -- chunked alone, in any case, is fine
        st = helpers.http(mg.port, "GET", "/headers?set=Transfer-Encoding:Chunked")
        assert.equal(200, st)
    end)

    it("reads several Transfer-Encoding lines of a response as one list: gzip then chunked is 502", function()
        local st, _, body = helpers.http(mg.port, "GET",
            "/headers?set=Transfer-Encoding:gzip&set=Transfer-Encoding:chunked")
        assert.equal(502, st)
        assert.matches("bad response from upstream", body, 1, true)
    end)

    it("adds X-Forwarded-For/Proto/Host and X-Request-Id", function()
        local st, j = echo("GET", "/xf", { headers = { "Host: front.example" } })
        assert.equal(200, st)
        local h = j.headers
        assert.equal("127.0.0.1", h["x-forwarded-for"])
        assert.equal("http", h["x-forwarded-proto"])
        assert.equal("front.example", h["x-forwarded-host"])
        assert.is_string(h["x-request-id"])
        assert.matches("^[%w%-%._]+$", h["x-request-id"])

        st, j = echo("GET", "/xf", { headers = { "X-Forwarded-For: 10.1.2.3" } })
        assert.equal(200, st)
        assert.equal("10.1.2.3, 127.0.0.1", j.headers["x-forwarded-for"])

        -- two requests get two ids
        local _, j2 = echo("GET", "/xf")
        assert.not_equal(h["x-request-id"], j2.headers["x-request-id"])
    end)

    it("keeps a valid incoming X-Request-Id and replaces an invalid one", function()
        local valid = "3f2a8c1e-6b1d-4c2e-9a7f-0123456789ab"
        local _, j = echo("GET", "/rid", { headers = { "X-Request-Id: " .. valid } })
        assert.equal(valid, j.headers["x-request-id"])
        for _, bad in ipairs({ "bad id with spaces", "quote\"and<angle>", string.rep("a", 200) }) do
            _, j = echo("GET", "/rid", { headers = { "X-Request-Id: " .. bad } })
            local got = j.headers["x-request-id"]
            assert.is_string(got)
            assert.not_equal(bad, got)
            assert.matches("^[%w%-%._]+$", got)
        end
    end)

    it("balances round-robin across servers", function()
        local seen = {}
        for _ = 1, 10 do
            local st, j = echo("GET", "/rr/x")
            assert.equal(200, st)
            seen[j.server_port] = (seen[j.server_port] or 0) + 1
        end
        local msg = string.format("a: %d, b: %d", seen[a.port] or 0, seen[b.port] or 0)
        assert.truthy((seen[a.port] or 0) >= 4, msg)
        assert.truthy((seen[b.port] or 0) >= 4, msg)
    end)

    it("fails over to the next server when one refuses connections", function()
        for i = 1, 10 do
            local st, j = echo("GET", "/fo/x?" .. i)
            assert.equal(200, st, "request " .. i)
            assert.equal(a.port, j.server_port)
        end
    end)

    it("answers 502 with a JSON error when all servers are down", function()
        local st, j, h = echo("GET", "/dead/x")
        assert.equal(502, st)
        assert.matches("application/json", h["content-type"] or "")
        assert.is_string(j.error)
        assert.is_string(j.request_id)
        assert.truthy(#j.request_id > 0)
    end)

    it("answers 504 with a JSON error when the response head is late", function()
        local t0 = helpers.now()
        local st, j, h = echo("GET", "/slow/delay/3000")
        local took = helpers.now() - t0
        assert.equal(504, st)
        assert.matches("application/json", h["content-type"] or "")
        assert.is_string(j.error)
        assert.is_string(j.request_id)
        assert.truthy(took < 2.5, "504 after " .. took .. " s with response_timeout = 1")
        -- and the upstream still works afterwards
        assert.equal(200, (echo("GET", "/slow/delay/10")))
    end)

    it("skips a failing server for fail_timeout (passive health)", function()
        -- servers: a blackhole (connects, never answers) and a good one;
        -- max_fails = 1: after one timeout the blackhole is skipped for 2 s
        local slow, codes = 0, {}
        for i = 1, 12 do
            local t0 = helpers.now()
            local st = echo("GET", "/health/x?" .. i)
            if helpers.now() - t0 > 0.8 then
                slow = slow + 1
            end
            codes[#codes + 1] = st
            assert.truthy(st == 200 or st == 504 or st == 502, "status " .. st)
        end
        assert.truthy(slow <= 1, slow .. " requests went to the failed server: " .. table.concat(codes, ","))
        -- after fail_timeout the server is tried again
        helpers.sleep(2.3)
        slow = 0
        for i = 1, 4 do
            local t0 = helpers.now()
            echo("GET", "/health/y?" .. i)
            if helpers.now() - t0 > 0.8 then
                slow = slow + 1
            end
        end
        assert.truthy(slow >= 1, "the failed server was never retried after fail_timeout")
    end)

    it("survives pooled connections that the upstream closes", function()
        for _, p in ipairs({ "/close", "/close?abrupt=1" }) do
            for i = 1, 3 do
                assert.equal(200, (echo("GET", p)), p)
                local st, j = echo("GET", "/after-close?" .. i)
                assert.equal(200, st, "after " .. p)
                assert.equal("/after-close?" .. i, j.path)
            end
        end
    end)

    it("answers HEAD through the proxy", function()
        local st, h, body = helpers.http(mg.port, "HEAD", "/bytes/12345")
        assert.equal(200, st)
        assert.equal("12345", h["content-length"])
        assert.equal("", body)
    end)

    it("streams a chunked upstream response to an HTTP/1.0 client unchunked", function()
        local direct = (select(3, helpers.http(a.port, "GET", "/bytes/300000")))
        assert.equal(300000, #direct)
        local data, closed = helpers.raw(mg.port, "GET /bytes/300000?chunked=1 HTTP/1.0\r\n\r\n", { timeout = 5 })
        assert.truthy(closed)
        local head, body = data:match("^(.-\r\n)\r\n(.*)$")
        assert.is_string(head)
        assert.matches("^HTTP/1%.[01] 200", head)
        assert.falsy(head:lower():find("transfer-encoding", 1, true), head)
        assert.equal(300000, #body)
        assert.truthy(body == direct, "body differs from the upstream's")

        local st, _, b2 = helpers.http(mg.port, "GET", "/bytes/300000?chunked=1", { http10 = true })
        assert.equal(200, st)
        assert.truthy(b2 == direct)
    end)

    it("sends a chunked upstream response to an HTTP/1.1 client intact", function()
        local direct = (select(3, helpers.http(a.port, "GET", "/bytes/300000")))
        local c = assert(helpers.connect(mg.port))
        assert(c:send(helpers.request("GET", "/bytes/300000?chunked=1")))
        local r = assert(helpers.read_response(c))
        assert.equal(200, r.status)
        assert.truthy(r.body == direct)
        -- keep-alive still works after a chunked body
        assert(c:send(helpers.request("GET", "/after")))
        r = assert(helpers.read_response(c))
        assert.equal("/after", json.decode(r.body).path)
        c:close()
    end)
end)
