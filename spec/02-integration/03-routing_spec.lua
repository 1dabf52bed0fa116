-- Route matching: exact, prefix on segment boundaries, templates with
-- parameters, method and host, priority (explicit, else the longer rule),
-- file order on ties, and the 404 for no match.
local helpers = require "spec.helpers"
local json = helpers.json

local ROUTES = [[
local function h(name)
  return function(req)
    return 200, { route = name, params = req.params, path = req.path }
  end
end
return {
  { path = "/exact", handler = h("exact") },
  { prefix = "/pfx", handler = h("pfx") },
  { path = "/api/execution/{execution_id}/status", handler = h("status") },
  { path = "/users/{uid}/posts/{pid}", handler = h("post") },
  { prefix = "/t/{tenant}", handler = h("tenant") },

  -- the shorter rule comes first in the file; the longer must still win
  { prefix = "/api/runtime", handler = h("runtime") },
  { prefix = "/api/runtime/agent", handler = h("agent") },

  -- an explicit priority beats a longer rule
  { prefix = "/prio/this/is/a/long/rule", handler = h("long") },
  { prefix = "/prio", priority = 100, handler = h("explicit") },

  -- same priority (same rule length): file order
  { path = "/tie/{x}", handler = h("tie-param") },
  { path = "/tie/abc", handler = h("tie-static") },

  { path = "/m", method = "GET", handler = h("m-get") },
  { path = "/m", method = { "POST", "PUT" }, handler = h("m-post-put") },

  { path = "/h", host = "a.example", handler = h("host-a") },
  { path = "/h", handler = h("host-any") },

  { prefix = "/up", upstream = "up" },
}
]]

describe("routing", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "routing", upstream = up, routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    -- returns the matched route name (or the status when it is not 200)
    local function route(method, path, headers)
        local st, _, body = helpers.http(mg.port, method, path, { headers = headers })
        if st ~= 200 then
            return st, body
        end
        local j = json.decode(body)
        return j.route, j
    end

    it("matches an exact path, ignoring the query", function()
        assert.equal("exact", route("GET", "/exact"))
        assert.equal("exact", route("GET", "/exact?x=1&y=2"))
        assert.equal(404, route("GET", "/exactly"))
        assert.equal(404, route("GET", "/exact/more"))
    end)

    it("matches a prefix on whole segments only", function()
        assert.equal("pfx", route("GET", "/pfx"))
        assert.equal("pfx", route("GET", "/pfx/"))
        assert.equal("pfx", route("GET", "/pfx/a/b/c?q=1"))
        assert.equal(404, route("GET", "/pfxa"))
        assert.equal(404, route("GET", "/pf"))
    end)

    it("binds template parameters", function()
        local name, j = route("GET", "/api/execution/exec-42/status?tenant_id=t")
        assert.equal("status", name)
        assert.same({ execution_id = "exec-42" }, j.params)
        name, j = route("GET", "/users/7/posts/99")
        assert.equal("post", name)
        assert.same({ uid = "7", pid = "99" }, j.params)
        -- a parameter is one whole segment
        assert.equal(404, route("GET", "/api/execution/a/b/status"))
        assert.equal(404, route("GET", "/api/execution/exec-42/status/more"))
    end)

    it("binds parameters in a prefix template", function()
        local name, j = route("GET", "/t/acme/x/y")
        assert.equal("tenant", name)
        assert.same({ tenant = "acme" }, j.params)
        name, j = route("GET", "/t/acme")
        assert.equal("tenant", name)
        assert.same({ tenant = "acme" }, j.params)
    end)

    it("prefers the longer rule when no priority is given", function()
        assert.equal("agent", route("GET", "/api/runtime/agent"))
        assert.equal("agent", route("GET", "/api/runtime/agent/chat"))
        assert.equal("runtime", route("GET", "/api/runtime/other"))
        assert.equal("runtime", route("GET", "/api/runtime"))
    end)

    it("lets an explicit priority beat a longer rule", function()
        assert.equal("explicit", route("GET", "/prio/this/is/a/long/rule/x"))
        assert.equal("explicit", route("GET", "/prio"))
    end)

    it("keeps file order on equal priority", function()
        assert.equal("tie-param", route("GET", "/tie/abc"))
        assert.equal("tie-param", route("GET", "/tie/zzz"))
    end)

    it("matches on method", function()
        assert.equal("m-get", route("GET", "/m"))
        assert.equal("m-post-put", route("POST", "/m"))
        assert.equal("m-post-put", route("PUT", "/m"))
        local st = route("DELETE", "/m")
        assert.truthy(st == 404 or st == 405, "DELETE /m gave " .. tostring(st))
    end)

    it("matches on host, case-insensitive, port ignored", function()
        assert.equal("host-a", route("GET", "/h", { "Host: a.example" }))
        assert.equal("host-a", route("GET", "/h", { "Host: A.Example:8080" }))
        assert.equal("host-any", route("GET", "/h", { "Host: b.example" }))
        assert.equal("host-any", route("GET", "/h"))
    end)

    it("routes an absolute-form target by its authority, not Host, and sends it on (RFC 9112 3.2.2)", function()
        local function body_of(raw)
            assert.matches("^HTTP/1%.1 200", raw)
            return json.decode(raw:match("\r\n\r\n(.*)$"))
        end
        local data = helpers.raw(mg.port,
            "GET http://a.example/h HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n")
        assert.equal("host-a", body_of(data).route)
        data = helpers.raw(mg.port,
            "GET http://b.example/h HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        assert.equal("host-any", body_of(data).route)
        data = helpers.raw(mg.port,
            "GET http://a.example:8080/up/abs?q=1 HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n")
        local seen = body_of(data)
        assert.equal("/up/abs?q=1", seen.path)
        assert.equal("a.example:8080", seen.headers.host)
        -- userinfo in the authority is refused (RFC 9110 4.2.4)
        data = helpers.raw(mg.port,
            "GET http://u@a.example/h HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        assert.matches("^HTTP/1%.1 400", data)
    end)

    it("answers 404 with a JSON error when nothing matches", function()
        local st, h, body = helpers.http(mg.port, "GET", "/no/such/route")
        assert.equal(404, st)
        assert.matches("application/json", h["content-type"] or "")
        local j = json.decode(body)
        assert.is_string(j.error)
        assert.is_string(j.request_id)
    end)

    it("routes to an upstream", function()
        local st, _, body = helpers.http(mg.port, "GET", "/up/x?y=1")
        assert.equal(200, st)
        local j = json.decode(body)
        assert.equal("/up/x?y=1", j.path)
        assert.equal(up.port, j.server_port)
        assert.equal(404, route("GET", "/upx"))
    end)
end)
