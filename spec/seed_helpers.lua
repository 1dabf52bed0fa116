-- Helpers for the seed specs (spec/02-integration/3*_seed_*_spec.lua).
--
-- Every gateway these specs start runs the SHIPPED scripts: the repo's
-- scripts/ (routes.lua, auth.lua, execution.lua, ..., demo_runtime/) and
-- public/ are copied into the instance's work dir; only timing settings in
-- gateway_config.lua are changed (shorter poll interval and heartbeats) so
-- that each spec stays short.
local helpers = require "spec.helpers"
local ws = require "spec.ws_helpers"
local lfs = require "lfs"
local json = require "cjson"

local fmt = string.format

local _M = { _VERSION = "0.1.0", json = json }

local TOKEN = { t1 = "demo-token", t2 = "demo-token-t2", admin = "demo-admin-token" }
_M.TOKEN = TOKEN

-- files -----------------------------------------------------------------------

-- { ["rel/path"] = contents } of every file under root/dir
local function read_tree(root, dir, out)
    out = out or {}
    for name in lfs.dir(root .. "/" .. dir) do
        if name ~= "." and name ~= ".." then
            local rel = dir .. "/" .. name
            local attr = lfs.attributes(root .. "/" .. rel)
            if attr.mode == "directory" then
                read_tree(root, rel, out)
            elseif attr.mode == "file" then
                out[rel] = helpers.read_file(root .. "/" .. rel)
            end
        end
    end
    return out
end

--- The repo's gateway_config.lua with `overrides` applied:
--- { ["stream.poll_interval"] = 0.2, ["runtime.timeout"] = 1, ... }
function _M.gateway_config(overrides)
    local src = helpers.read_file(helpers.root .. "/scripts/gateway_config.lua")
    for key, value in pairs(overrides or {}) do
        local section, field = key:match("^(%w+)%.([%w_]+)$")
        local n
        src, n = src:gsub("(\n  " .. section .. " = {.-\n  },)", function(block)
            local b, m = block:gsub("(\n%s+" .. field .. " = )[^,\n]+,", "%1" .. tostring(value) .. ",", 1)
            assert(m == 1, "no field " .. key .. " in gateway_config.lua")
            return b
        end, 1)
        assert(n == 1, "no section " .. section .. " in gateway_config.lua")
    end
    return src
end

--- The `scripts` table for helpers.start_moongate: the shipped scripts and
--- public/ (as ../public/...), with gateway_config.lua overridden.
--- routes.lua is passed separately (start_moongate's `routes`).
function _M.shipped_files(config_overrides, extra)
    local files = {}
    for rel, data in pairs(read_tree(helpers.root, "scripts")) do
        local name = rel:gsub("^scripts/", "")
        if name ~= "routes.lua" then
            files[name] = data
        end
    end
    for rel, data in pairs(read_tree(helpers.root, "public")) do
        files["../" .. rel] = data
    end
    files["gateway_config.lua"] = _M.gateway_config(config_overrides)
    for k, v in pairs(extra or {}) do
        files[k] = v
    end
    return files
end

-- gateways --------------------------------------------------------------------

local CONF = [[
return {
  listen = "127.0.0.1:$PORT",
  workers = $WORKERS,
  log_level = "info",
  demo = true, -- the shipped auth_config.lua's demo tokens
  servers = {
    demo_runtime = { enabled = $DEMO, listen = "127.0.0.1:$RTPORT", routes = "scripts/demo_runtime/routes.lua" },
  },
  shared_dicts = { demo_runtime = 1048576 },
  upstreams = {
    runtime = { servers = { "$RUNTIME" }, max_fails = 0, connect_timeout = 2 },
  },
}
]]

--- Starts moongate with the shipped scripts. opts:
---   workers (2), config (gateway_config overrides), runtime (URL of another
---   Runtime: the demo Runtime is then disabled), scripts (extra files), name,
---   routes (the text of routes.lua instead of the shipped one)
--- Returns the moongate object with .rt_port (the demo Runtime's port).
function _M.start_gateway(opts)
    opts = opts or {}
    local rt_port = helpers.free_port()
    local runtime = opts.runtime or ("http://127.0.0.1:" .. rt_port)
    local mg = helpers.start_moongate({
        name = opts.name or "seed",
        conf = CONF,
        routes = opts.routes or helpers.read_file(helpers.root .. "/scripts/routes.lua"),
        scripts = _M.shipped_files(opts.config, opts.scripts),
        workers = opts.workers or 2,
        vars = { RTPORT = rt_port, RUNTIME = runtime, DEMO = opts.runtime and "false" or "true" },
        env = opts.env,
    })
    mg.rt_port = rt_port
    if not opts.runtime then
        assert(helpers.wait_until(function() return helpers.port_open(rt_port) end, 5),
            "the demo Runtime did not listen on " .. rt_port)
    end
    return mg
end

-- A test Runtime (moongate, one worker, so that its counts are exact): the
-- contract's status endpoint, with outcomes chosen by the execution id, and
-- control endpoints.
--   /v1/executions/<id>/status   200 {"status": <set status or "running">, ...}
--       missing-*  404    other-*  403    teapot-*  418 (a fixed JSON body)
--       slow-*     sleeps 3 s first       broken-*  200 with a non-JSON body
--       unavail-*  503
--   POST /ctl/set/<id> {"status": ..., "progress": ...}
--   GET  /ctl/polls/<id> -> {"count": n, "times": [...]}
local TEST_RUNTIME = [=[
local moongate = require "moongate"
local json = moongate.json
local polls, set = {}, {}
local TEAPOT = '{"error":"teapot","list":[],"nested":{"a":[1,2,3]},"n":1.5}'
return {
  { path = "/v1/executions/{id}/status", handler = function(req)
      local id = req.params.id
      local p = polls[id] or { count = 0, times = {}, queries = {} }
      polls[id] = p
      p.count = p.count + 1
      p.times[#p.times + 1] = moongate.now()
      p.queries[#p.queries + 1] = req.query_string
      if id:match("^missing") then return 404, { error = "not_found", message = "unknown execution" } end
      if id:match("^other") then return 403, { error = "tenant_mismatch" } end
      if id:match("^teapot") then return 418, TEAPOT, { ["Content-Type"] = "application/json" } end
      if id:match("^unavail") then return 503, { error = "busy" } end
      if id:match("^broken") then return 200, "<html>oops</html>", { ["Content-Type"] = "text/html" } end
      if id:match("^slow") then moongate.sleep(3) end
      local s = set[id] or { status = "running", progress = 0 }
      return 200, { execution_id = id, tenant_id = req.query.tenant_id, status = s.status,
                    progress = s.progress, artifacts = {} }
  end },
  { path = "/ctl/set/{id}", method = "POST", handler = function(req)
      set[req.params.id] = json.decode(req:body())
      return 200, { ok = true }
  end },
  { path = "/ctl/polls/{id}", handler = function(req)
      return 200, polls[req.params.id] or { count = 0, times = {}, queries = {} }
  end },
  { path = "/agent", websocket = { mode = "handler", heartbeat = { interval = 0 } }, handler = function(ws, req)
      ws:send(json.encode({ type = "headers", headers = req.headers }))
      while true do
        local d = ws:recv()
        if not d then break end
        ws:send("echo:" .. d)
      end
  end },
}
]=]

--- Starts the test Runtime (opts.port to reuse a port after a stop).
function _M.start_test_runtime(opts)
    opts = opts or {}
    return helpers.start_moongate({ name = "seed-test-runtime", routes = TEST_RUNTIME, workers = 1,
                                    port = opts.port })
end

function _M.runtime_set(rt, id, status, progress)
    local st = helpers.http(rt.port, "POST", "/ctl/set/" .. id,
        { body = json.encode({ status = status, progress = progress or 0 }) })
    assert(st == 200, "cannot set status at the test Runtime")
end

function _M.runtime_polls(rt, id)
    local st, _, body = helpers.http(rt.port, "GET", "/ctl/polls/" .. id)
    assert(st == 200, "cannot read polls from the test Runtime")
    return json.decode(body)
end

-- HTTP and WebSocket clients ------------------------------------------------------

--- A request with a bearer token (who: "t1", "t2", "admin", a raw token, or
--- false for none). body: a table (sent as JSON) or a string.
--- Returns status, decoded JSON (or nil), headers, raw body.
function _M.api(port, method, path, who, body, headers)
    local h = {}
    for k, v in pairs(headers or {}) do
        h[k] = v
    end
    if who ~= false then
        h.Authorization = "Bearer " .. (TOKEN[who or "t1"] or who)
    end
    local b = body
    if type(body) == "table" then
        b = json.encode(body)
        h["Content-Type"] = "application/json"
    end
    local st, hs, raw = helpers.http(port, method, path, { headers = h, body = b })
    local ok, decoded = pcall(json.decode, raw)
    return st, ok and decoded or nil, hs, raw
end

--- Session + intent through the gateway: returns the execution id.
--- params: the intent's params (e.g. { duration = 2 }).
function _M.run_intent(port, who, tenant, params)
    local st, s = _M.api(port, "POST", "/api/session", who, { tenant_id = tenant })
    assert(st == 201, "session create answered " .. tostring(st))
    local st2, i = _M.api(port, "POST", "/api/intent", who,
        { tenant_id = tenant, session_id = s.session_id, intent = "spec intent", params = params })
    assert(st2 == 202, "intent submit answered " .. tostring(st2))
    return i.execution_id, s.session_id, i
end

--- Opens a WebSocket (raw client); who as in api() (token in the query).
function _M.ws_open(port, path, who)
    if who ~= false then
        path = path .. (path:find("?", 1, true) and "&" or "?") .. "token=" .. (TOKEN[who or "t1"] or who)
    end
    return ws.handshake(port, path)
end

function _M.stream_path(id, tenant)
    return fmt("/api/execution/%s/stream?tenant_id=%s", id, tenant or "t1")
end

--- Next JSON message (heartbeats kept unless skip); nil, err at close/timeout.
function _M.next_json(c, timeout, skip_heartbeats)
    local m, err, frame = c:read_message(timeout or 3, { skip_heartbeats = skip_heartbeats })
    if not m then
        return nil, err, frame
    end
    return json.decode(m.data), m
end

--- Reads messages until the close; returns the list of decoded messages
--- (heartbeats dropped unless keep_pings) and the close code.
function _M.read_until_close(c, timeout, keep_pings)
    local deadline = helpers.now() + (timeout or 10)
    local msgs = {}
    while helpers.now() < deadline do
        local m, err, frame = c:read_message(deadline - helpers.now())
        if not m then
            if err == "close" then
                pcall(c.send_close, c, frame.code)
                return msgs, frame.code, frame.reason
            end
            return msgs, nil, err
        end
        local t = json.decode(m.data)
        if keep_pings or t.type ~= "ping" then
            msgs[#msgs + 1] = t
        end
    end
    return msgs, nil, "timeout"
end

-- A cluster for the Redis specs (82, 83): one redis-server, one counting
-- test Runtime and n gateways of the shipped scripts with 2 workers each and
-- MOONGATE_REDIS_URL, filled into c as they start (c.redis, c.rt, c.gws), so
-- that stop_cluster(c) also ends a set-up that failed half-way.
function _M.start_cluster(c, name, n, config)
    local rh = require "spec.redis_helpers"
    assert(rh.installed(), "redis-server is not installed (make deps installs it)")
    c.gws = c.gws or {}
    c.redis = rh.start({ name = name })
    c.rt = _M.start_test_runtime()
    for i = 1, n do
        c.gws[i] = _M.start_gateway({ name = name .. "-" .. i, config = config,
            runtime = "http://127.0.0.1:" .. c.rt.port, workers = 2,
            env = { MOONGATE_REDIS_URL = "redis://127.0.0.1:" .. c.redis.port .. "/0" } })
    end
    return c
end

function _M.stop_cluster(c)
    for _, g in ipairs(c.gws or {}) do g:stop() end
    if c.rt then c.rt:stop() end
    require("spec.redis_helpers").stop(c.redis)
    _M.cleanup()
end

function _M.cleanup()
    ws.cleanup()
    helpers.cleanup()
end

return _M
