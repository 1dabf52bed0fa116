-- The error answers of the shipped scripts, to the letter: status, content
-- type, challenge and the whole JSON body, for every refusal of the auth hook
-- (scripts/auth.lua), the gateway's handlers (gateway.lua, execution.lua)
-- and the demo Runtime (demo_runtime/app.lua). They all go through one
-- helper (scripts/json_api.lua); this pins what clients see of it.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local api = seed.api

-- status, body and headers as the client gets them; the body's request_id
-- (a string on the gateway's answers, absent on the demo Runtime's) is
-- checked and dropped so the rest compares whole.
local function check(expected, st, body, h, raw, what)
  assert.equal(expected.status, st, what .. ": " .. tostring(raw))
  assert.equal("application/json", h["content-type"], what)
  assert.is_table(body, what .. ": " .. tostring(raw))
  if expected.request_id == false then
    assert.is_nil(body.request_id, what)
  else
    assert.is_string(body.request_id, what)
    assert.truthy(#body.request_id > 0, what)
  end
  body.request_id = nil
  assert.same(expected.body, body, what)
  assert.equal(expected.www, h["www-authenticate"], what)
end

-- each case: { what, { method, path, who, body, headers } (seed.api's), expected }
local function check_all(port, cases)
  for _, c in ipairs(cases) do
    local st, body, h, raw = api(port, unpack(c[2]))
    check(c[3], st, body, h, raw, c[1])
  end
end

describe("seed error answers", function()
  local mg

  lazy_setup(function()
    mg = seed.start_gateway({ name = "seed-errors" })
  end)

  lazy_teardown(function()
    if mg then
      mg:stop()
    end
    seed.cleanup()
  end)

  it("the auth hook: 401 with the challenge, 403, 400", function()
    local bearer = 'Bearer realm="moongate"'
    local cases = {
      { "no token", { "GET", "/api/intent/pending", false },
        { status = 401, www = bearer, body = { error = "unauthorized",
          message = "missing bearer token (Authorization: Bearer <token>)" } } },
      { "malformed header", { "GET", "/api/intent/pending", false, nil, { Authorization = "Basic abc" } },
        { status = 401, www = bearer, body = { error = "unauthorized",
          message = "malformed Authorization header (expected: Bearer <token>)" } } },
      { "unknown token", { "GET", "/api/intent/pending", "no-such-token" },
        { status = 401, www = bearer .. ', error="invalid_token"', body = { error = "unauthorized",
          message = "invalid token: unknown token" } } },
      { "another tenant", { "GET", "/api/intent/pending?tenant_id=t2", "t1" },
        { status = 403, body = { error = "forbidden", message = "this token may not access tenant 't2'",
          tenant_id = "t2" } } },
      { "another tenant in the path", { "GET", "/api/realms/t2", "t1" },
        { status = 403, body = { error = "forbidden", message = "this token may not access tenant 't2'",
          tenant_id = "t2" } } },
      { "tenant_id twice", { "GET", "/api/intent/pending?tenant_id=t1&tenant_id=t1", "t1" },
        { status = 400, body = { error = "invalid_parameter", message = "tenant_id given more than once",
          parameter = "tenant_id" } } },
      { "admin only", { "GET", "/api/admin/status", "t1" },
        { status = 403, body = { error = "forbidden", message = "this endpoint needs an admin token" } } },
    }
    check_all(mg.port, cases)
  end)

  it("the gateway's handlers: bodies, fields, tenants, the JSON 404", function()
    local st, s = api(mg.port, "POST", "/api/session", "t1", {})
    assert.equal(201, st)
    local sid = s.session_id
    local function missing(name)
      return { status = 400, body = { error = "missing_parameter", message = name .. " is required",
        parameter = name } }
    end
    local function invalid(name, message)
      return { status = 400, body = { error = "invalid_parameter", message = message, parameter = name } }
    end
    local cases = {
      { "no body", { "POST", "/api/intent", "t1" },
        { status = 400, body = { error = "invalid_body", message = "a JSON object body is required" } } },
      { "a blank body", { "POST", "/api/session/" .. sid .. "/upgrade", "t1", "  \n" },
        { status = 400, body = { error = "invalid_body", message = "a JSON object body is required" } } },
      { "not an object", { "POST", "/api/intent", "t1", "42" },
        { status = 400, body = { error = "invalid_body", message = "the body is not a JSON object" } } },
      { "not JSON", { "POST", "/api/session", "t1", "{nope" },
        { status = 400, body = { error = "invalid_body", message = "the body is not a JSON object" } } },
      { "tenant_id not a string", { "POST", "/api/intent", "t1", { tenant_id = 5 } },
        invalid("tenant_id", "tenant_id must be a string") },
      { "no tenant at all", { "POST", "/api/intent", "admin", { session_id = sid, intent = "x" } },
        missing("tenant_id") },
      { "no tenant for a query", { "GET", "/api/execution/x/artifacts", "admin" }, missing("tenant_id") },
      { "a body's tenant not the token's", { "POST", "/api/intent", "t1", { tenant_id = "t2" } },
        { status = 403, body = { error = "forbidden", message = "this token may not access tenant 't2'",
          tenant_id = "t2" } } },
      { "no session_id", { "POST", "/api/intent", "t1", { intent = "x" } }, missing("session_id") },
      { "session_id not a string", { "POST", "/api/intent", "t1", { session_id = 1, intent = "x" } },
        invalid("session_id", "session_id must be a string") },
      { "no intent", { "POST", "/api/intent", "t1", { session_id = sid, intent = "" } }, missing("intent") },
      { "params not an object", { "POST", "/api/intent", "t1", { session_id = sid, intent = "x", params = "p" } },
        invalid("params", "params must be an object") },
      { "user_id not a string", { "POST", "/api/session", "t1", { user_id = true } },
        invalid("user_id", "user_id must be a string") },
      { "upgrade without user_id", { "POST", "/api/session/" .. sid .. "/upgrade", "t1", {} },
        missing("user_id") },
      { "status without tenant_id", { "GET", "/api/execution/x/status", "t1" }, missing("tenant_id") },
      { "a boolean that is not one", { "GET", "/api/execution/x/status?tenant_id=t1&include_visuals=yes", "t1" },
        invalid("include_visuals", "include_visuals must be true or false") },
      { "the JSON 404", { "GET", "/api/nope/x", "t1" },
        { status = 404, body = { error = "not_found", message = "no such API endpoint", path = "/api/nope/x" } } },
    }
    check_all(mg.port, cases)
  end)

  it("an artifact of another execution is the gateway's 404", function()
    local id = seed.run_intent(mg.port, "t1", "t1", { duration = 0.5 })
    local other = seed.run_intent(mg.port, "t1", "t1", { duration = 0.5 })
    local artifact = "ar-" .. id:match("^ex%-(.*)$")
    -- the demo Runtime has the artifact once the execution completed
    local st
    assert.truthy(helpers.wait_until(function()
      st = api(mg.port, "GET", "/api/execution/" .. id .. "/artifacts/" .. artifact .. "?tenant_id=t1", "t1")
      return st == 200
    end, 10), "the artifact did not appear (last status " .. tostring(st) .. ")")
    local st2, body, h, raw = api(mg.port, "GET", "/api/execution/" .. other .. "/artifacts/" .. artifact
      .. "?tenant_id=t1", "t1")
    check({ status = 404, body = { error = "not_found", message = "no such artifact in this execution" } },
      st2, body, h, raw, "artifact of another execution")
  end)

  it("the demo Runtime: the same shape, without request_id", function()
    local function refused(status, code, message)
      return { status = status, request_id = false, body = { error = code, message = message } }
    end
    local st, s = api(mg.rt_port, "POST", "/v1/sessions", false, { tenant_id = "t1" })
    assert.equal(201, st)
    local cases = {
      { "no tenant", { "POST", "/v1/sessions", false, {} },
        refused(400, "invalid_parameter", "tenant_id is required (letters, digits, '-', '_')") },
      { "no tenant in the query", { "GET", "/v1/sessions/" .. s.session_id, false },
        refused(400, "invalid_parameter", "tenant_id is required") },
      { "unknown session", { "GET", "/v1/sessions/se-nope?tenant_id=t1", false },
        refused(404, "not_found", "unknown session") },
      { "another tenant's session", { "GET", "/v1/sessions/" .. s.session_id .. "?tenant_id=t2", false },
        refused(403, "tenant_mismatch", "session belongs to another tenant") },
      { "upgrade without user_id", { "POST", "/v1/sessions/" .. s.session_id .. "/upgrade", false,
        { tenant_id = "t1" } }, refused(400, "invalid_parameter", "user_id is required") },
      { "intent without a body", { "POST", "/v1/intents", false },
        refused(400, "invalid_body", "a JSON object body is required") },
      { "intent with a non-object body", { "POST", "/v1/intents", false, "[" },
        refused(400, "invalid_body", "a JSON object body is required") },
      { "intent without intent", { "POST", "/v1/intents", false, { tenant_id = "t1", session_id = s.session_id } },
        refused(400, "invalid_parameter", "intent is required") },
      { "intent of an unknown session", { "POST", "/v1/intents", false,
        { tenant_id = "t1", session_id = "se-nope", intent = "x" } }, refused(404, "not_found", "unknown session") },
      { "a duration out of range", { "POST", "/v1/intents", false,
        { tenant_id = "t1", session_id = s.session_id, intent = "x", params = { duration = 0.1 } } },
        refused(400, "invalid_parameter", "params.duration must be between 0.5 and 600 seconds") },
      { "unknown execution", { "GET", "/v1/executions/ex-nope/status?tenant_id=t1", false },
        refused(404, "not_found", "unknown execution") },
      { "unknown artifact", { "GET", "/v1/artifacts/ar-nope?tenant_id=t1", false },
        refused(404, "not_found", "unknown artifact") },
      { "pending of an unknown session", { "GET", "/v1/intents/pending?tenant_id=t1&session_id=x", false },
        refused(404, "not_found", "unknown session") },
      { "unknown realm", { "GET", "/api/realms/t9", false }, refused(404, "not_found", "unknown realm") },
      { "no such endpoint", { "GET", "/v2/x", false }, refused(404, "not_found", "no such endpoint: GET /v2/x") },
    }
    check_all(mg.rt_port, cases)
  end)
end)

describe("seed error answers of a verifier function", function()
  local mg

  lazy_setup(function()
    mg = seed.start_gateway({ name = "seed-errors-verifier", scripts = { ["auth_config.lua"] = [[
local api = require "json_api"
return {
  verifier = function(token)
    if token == "down" then
      return nil, nil, api.err(502, "idp_unavailable", "the identity provider is down")
    elseif token == "revoked" then
      return nil, "revoked"
    end
    return { subject = "u", tenant_id = "t1" }
  end,
}
]] } })
  end)

  lazy_teardown(function()
    if mg then
      mg:stop()
    end
    seed.cleanup()
  end)

  it("answers the verifier's err as it is, and its reason as a 401", function()
    check_all(mg.port, {
      { "could not tell", { "GET", "/api/auth/whoami", "down" },
        { status = 502, body = { error = "idp_unavailable", message = "the identity provider is down" } } },
      { "refused", { "GET", "/api/auth/whoami", "revoked" },
        { status = 401, www = 'Bearer realm="moongate", error="invalid_token"',
          body = { error = "unauthorized", message = "invalid token: revoked" } } },
    })
    local st, body = api(mg.port, "GET", "/api/auth/whoami", "anything")
    assert.equal(200, st)
    assert.equal("u", body.subject)
  end)
end)
