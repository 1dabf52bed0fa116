-- forward-auth over real HTTP: a sub-request to an auth service (here an
-- extra moongate server) before the route runs; 2xx lets through with the
-- chosen headers, anything else goes back to the client; the sub-request
-- does not block the worker.
local helpers = require "spec.helpers"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 1,
  servers = { auth = { listen = "127.0.0.1:$AUTH", routes = "scripts/auth.lua" } },
  upstreams = { up = { servers = { "$UPSTREAM" } }, auth = { servers = { "http://127.0.0.1:$AUTH" } } } }
]]

local AUTH = [[
local moongate = require "moongate"
return {
  { path = "/check", handler = function(req)
      local a = req.headers.authorization
      if a == "Bearer slow" then moongate.sleep(1) ; a = "Bearer good" end
      if a == "Bearer good" then
        return 204, nil, { ["X-Auth-User"] = "alice", ["X-Other"] = "nope",
                           ["X-Seen-Uri"] = req.headers["x-forwarded-uri"],
                           ["X-Seen-Method"] = req.headers["x-forwarded-method"],
                           ["X-Seen-Cookie"] = req.headers.cookie or "-",
                           ["X-Seen-Secret"] = req.headers["x-secret"] or "-" }
      end
      if a == "Bearer login" then
        return 302, nil, { Location = "https://login.test/?next=" .. req.headers["x-forwarded-uri"] }
      end
      return 401, { error = "bad credentials" }, { ["WWW-Authenticate"] = 'Bearer realm="auth"',
                                                  ["X-Internal"] = "secret" }
  end },
}
]]

local ROUTES = [[
local COPY = { "X-Auth-User", "X-Seen-Uri", "X-Seen-Method", "X-Seen-Cookie", "X-Seen-Secret" }
return {
  { prefix = "/fa", upstream = "up", plugins = { ["forward-auth"] = {
      upstream = "auth", path = "/check", upstream_headers = COPY, timeout = 3 } } },
  { prefix = "/url", upstream = "up", plugins = { ["forward-auth"] = {
      url = "http://127.0.0.1:$AUTH/check", upstream_headers = { "X-Auth-User" } } } },
  { prefix = "/down", upstream = "up", plugins = { ["forward-auth"] = {
      url = "http://127.0.0.1:$DEAD/check", timeout = 1 } } },
  { prefix = "/short", upstream = "up", plugins = { ["forward-auth"] = {
      url = "http://127.0.0.1:$AUTH/check", timeout = 0.3, status_on_error = 504 } } },
  { path = "/fast", handler = function() return 200, "fast" end },
}
]]

describe("forward-auth", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "fwdauth", upstream = up, conf = CONF, routes = ROUTES,
            scripts = { ["auth.lua"] = AUTH },
            vars = { AUTH = helpers.free_port(), DEAD = helpers.free_port() } })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function get(path, auth, more)
        local h = more or {}
        if auth then h[#h + 1] = "Authorization: Bearer " .. auth end
        return helpers.http(mg.port, "GET", path, { headers = h })
    end

    it("lets a 2xx through, copying only the chosen headers upstream", function()
        local st, _, body = get("/fa/items?page=2", "good", { "Cookie: s=1", "X-Secret: no" })
        assert.equal(200, st)
        local h = helpers.json.decode(body).headers
        assert.equal("alice", h["x-auth-user"])
        assert.equal("/fa/items?page=2", h["x-seen-uri"])
        assert.equal("GET", h["x-seen-method"])
        assert.equal("s=1", h["x-seen-cookie"])     -- a default request header
        assert.equal("-", h["x-seen-secret"])       -- not in request_headers
        assert.is_nil(h["x-other"])
    end)

    it("returns anything else to the client with its status, body and chosen headers", function()
        helpers.upstream_reset(up)
        local st, h, body = get("/fa/x", "bad")
        assert.equal(401, st)
        assert.equal("bad credentials", helpers.json.decode(body).error)
        assert.equal('Bearer realm="auth"', h["www-authenticate"])
        assert.matches("application/json", h["content-type"])
        assert.is_nil(h["x-internal"])
        st, h = get("/fa/next", "login")
        assert.equal(302, st)
        assert.equal("https://login.test/?next=/fa/next", h["location"])
        assert.same({}, helpers.upstream_log(up).heads)
    end)

    it("works with a url", function()
        local st, _, body = get("/url/x", "good")
        assert.equal(200, st)
        assert.equal("alice", helpers.json.decode(body).headers["x-auth-user"])
        assert.equal(401, (get("/url/x")))
    end)

    it("answers status_on_error when the auth service is down or slow", function()
        local st, _, body = get("/down/x", "good")
        assert.equal(503, st)
        assert.equal("authentication service unavailable", helpers.json.decode(body).error)
        assert.equal(504, (get("/short/x", "slow")))
    end)

    it("does not block the worker while waiting for the auth service", function()
        local slow = helpers.http_async(mg.port, "GET", "/fa/slow",
            { headers = { "Authorization: Bearer slow" } })
        helpers.sleep(0.2)
        local t0 = helpers.now()
        local st = helpers.http(mg.port, "GET", "/fast")
        assert.equal(200, st)
        assert.truthy(helpers.now() - t0 < 0.5, "the one worker was blocked")
        local st2 = slow:wait(5)
        assert.equal(200, st2)
    end)
end)
