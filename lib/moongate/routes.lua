-- moongate.routes: checks and normalizes the routes file (docs/routing.md,
-- docs/configuration.md): rules and their parameters, hosts, methods,
-- targets, hooks, per-route timeouts and the websocket table, then sorts
-- the routes into match order. Errors are raised with moongate.check and
-- returned by moongate.loader as "file:line: reason".

local type = type
local pairs = pairs
local ipairs = ipairs
local require = require
local debug_getinfo = debug.getinfo
local math_floor = math.floor
local math_huge = math.huge
local str_find = string.find
local str_gmatch = string.gmatch
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub
local str_upper = string.upper
local tbl_sort = table.sort


local check = require "moongate.check"
local fail = check.fail
local quoted_positions = check.quoted_positions
local show_key = check.show_key
local show_value = check.show_value
local read_source = check.read_source
local run_file = check.run_file
local return_line = check.return_line
local is_nonneg = check.is_nonneg
local suggestion = check.suggestion
local valid_hostname = check.valid_hostname
local sorted_keys = check.sorted_keys
local line_of = check.line_of
local MAX_SECONDS = check.MAX_SECONDS
local MAX_BYTES = check.MAX_BYTES
local MAX_INT = check.MAX_INT
local MAX_SEGMENTS = check.MAX_SEGMENTS

local _M = {}

local ROUTE_FIELDS = {
  path = true, prefix = true, method = true, host = true, priority = true,
  upstream = true, handler = true, strip_prefix = true, body_size = true,
  name = true, access = true, header_filter = true, log = true,
  -- reserved for later work: checked for type only, passed through as is
  websocket = true, plugins = true, on_reload = true, timeouts = true,
}

local ROUTE_TIMEOUT_FIELDS = { read = true, write = true, idle = true }

local ON_RELOAD = { keep = true, drain = true }

-- RFC 9110 token characters, upper-case letters only.
local METHOD_PATTERN = "^[A-Z0-9!#$%%&'*+.^_`|~-]+$"

-- Checks a path/prefix rule; returns its parameter names in order.
-- "/" and a trailing "/" are allowed, empty segments elsewhere are not.
local function parse_rule(rule)
  if str_sub(rule, 1, 1) ~= "/" then
    return nil, "must start with '/'"
  end
  if str_find(rule, "[%s%c?#]") then
    return nil, "must not contain whitespace, '?' or '#'"
  end
  local params, seen, segs = {}, {}, {}
  for seg in str_gmatch(str_sub(rule, 2) .. "/", "([^/]*)/") do
    segs[#segs + 1] = seg
  end
  if #segs > MAX_SEGMENTS then
    return nil, "too many segments (at most " .. MAX_SEGMENTS .. ")"
  end
  for i, seg in ipairs(segs) do
    if seg == "" and i < #segs then
      return nil, "empty segment ('//')"
    end
    if str_find(seg, "[{}]") then
      local name = str_match(seg, "^{([%a_][%w_]*)}$")
      if not name then
        return nil, "bad segment '" .. seg .. "': a parameter is a whole segment"
                    .. " '{name}', name made of letters, digits and '_'"
      end
      if seen[name] then
        return nil, "duplicate parameter '{" .. name .. "}'"
      end
      seen[name] = true
      params[#params + 1] = name
    end
  end
  return params
end


-- "Example.COM:8080" -> "example.com"; "[::1]:80" -> "[::1]" (the core
-- compares IPv6 literals with their brackets, as in the Host header).
local function norm_host(h)
  local host, rest
  if str_sub(h, 1, 1) == "[" then
    host, rest = str_match(h, "^(%[[%x:%.]+%])(.*)$")
  else
    host, rest = str_match(h, "^([^:]*)(.*)$")
    if not valid_hostname(host) then
      host = nil
    end
  end
  if not host or not (rest == "" or str_find(rest, "^:%d+$")) then
    return nil
  end
  return str_lower(host)
end


local function norm_methods(v, bad_route)
  local list
  if type(v) == "string" then
    list = { v }
  elseif type(v) == "table" then
    list = v
    local n = #v
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
        bad_route("method: expected a list, found key %s", show_key(k))
      end
    end
    if n == 0 then
      bad_route("method: empty list")
    end
  else
    bad_route("method: expected a string or a list of strings, got %s", type(v))
  end
  local out, seen = {}, {}
  for _, m in ipairs(list) do
    if type(m) ~= "string" then
      bad_route("method: expected a string, got %s", type(m))
    end
    if str_upper(m) ~= m then
      bad_route("method '%s' must be upper-case", m)
    end
    if not str_find(m, METHOD_PATTERN) then
      bad_route("method '%s' is not a valid method token", m)
    end
    if not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
  return out
end


-- Line of route #n: the nth quoted occurrence of its rule (two routes may
-- share a rule), else where its handler is defined, else the file's
-- `return`. Scans the file once per route: O(routes x file size), fine for
-- hand-written tables.
local function route_line(ctx, rule, nth, handler)
  if rule then
    local found = quoted_positions(ctx.text, rule)
    local p = found[nth] or found[1]
    if p then
      return line_of(ctx.text, p)
    end
  end
  if type(handler) == "function" then
    local info = debug_getinfo(handler, "S")
    if info.source == "@" .. ctx.path and info.linedefined > 0 then
      return info.linedefined
    end
  end
  return return_line(ctx.text)
end


-- The `websocket` table of a route, with defaults (docs/websocket.md).
local WS_FIELDS = {
  mode = true, heartbeat = true, max_message = true, send_buffer = true, overflow = true,
  deflate = true, protocols = true, origins = true, timeouts = true, upstream_path = true,
  on_message = true, ws_open = true, ws_close = true,
}

-- A hook field: a function or a list of functions, as a list.
local function function_list(v, name, bad_route)
  if type(v) == "function" then
    return { v }
  end
  if type(v) ~= "table" then
    bad_route("%s: expected a function or a list of functions, got %s", name, type(v))
  end
  local list = {}
  for i, f in ipairs(v) do
    if type(f) ~= "function" then
      bad_route("%s[%d]: expected a function, got %s", name, i, type(f))
    end
    list[i] = f
  end
  return list
end
local WS_HB_FIELDS = { interval = true, message = true, ping_frames = true, timeout = true }
local WS_MODES = { tunnel = true, relay = true, handler = true }

local function normalize_websocket(raw, bad_route)
  local w = raw.websocket
  if type(w) ~= "table" then
    bad_route("websocket: expected a table, got %s", type(w))
  end
  for _, k in ipairs(sorted_keys(w)) do
    if not WS_FIELDS[k] then
      bad_route("websocket: unknown field %s%s", show_key(k), suggestion(k, WS_FIELDS))
    end
  end
  local mode = w.mode or (raw.handler and "handler" or "tunnel")
  if not WS_MODES[mode] then
    bad_route("websocket.mode: expected \"tunnel\", \"relay\" or \"handler\", got %s",
              show_value(mode))
  end
  if mode == "handler" and type(raw.handler) ~= "function" then
    bad_route("websocket.mode \"handler\" needs a handler function")
  end
  if mode ~= "handler" and raw.upstream == nil then
    bad_route("websocket.mode \"%s\" needs an upstream", mode)
  end
  local hb = w.heartbeat
  if hb == nil then hb = {} end
  if hb == false then hb = { interval = 0, message = false } end
  if type(hb) ~= "table" then
    bad_route("websocket.heartbeat: expected a table or false, got %s", type(hb))
  end
  for _, k in ipairs(sorted_keys(hb)) do
    if not WS_HB_FIELDS[k] then
      bad_route("websocket.heartbeat: unknown field %s%s", show_key(k), suggestion(k, WS_HB_FIELDS))
    end
  end
  local function num(v, dflt, name)
    if v == nil then return dflt end
    if not is_nonneg(v) or v > MAX_SECONDS then
      bad_route("websocket.%s: expected a non-negative number, got %s", name, show_value(v))
    end
    return v
  end
  -- a byte count: an integer up to MAX_BYTES (1 GiB), not a duration
  local function bytes(v, dflt, name)
    if v == nil then return dflt end
    if not is_nonneg(v, true) or v > MAX_BYTES then
      bad_route("websocket.%s: expected a whole number of bytes from 0 to %d (1 GiB), got %s",
                name, MAX_BYTES, show_value(v))
    end
    return v
  end
  local function bool(v, dflt, name)
    if v == nil then return dflt end
    if type(v) ~= "boolean" then
      bad_route("websocket.%s: expected a boolean, got %s", name, show_value(v))
    end
    return v
  end
  local function list(v, name)
    if v == nil then return {} end
    if type(v) == "string" then return { v } end
    if type(v) ~= "table" then
      bad_route("websocket.%s: expected a list of strings, got %s", name, type(v))
    end
    for i, s in ipairs(v) do
      if type(s) ~= "string" then
        bad_route("websocket.%s[%d]: expected a string, got %s", name, i, type(s))
      end
    end
    return v
  end
  local t = w.timeouts or {}
  if type(t) ~= "table" then
    bad_route("websocket.timeouts: expected a table, got %s", type(t))
  end
  if w.overflow ~= nil and w.overflow ~= "close" then
    bad_route("websocket.overflow: expected \"close\", got %s", show_value(w.overflow))
  end
  if w.on_message ~= nil and type(w.on_message) ~= "function" then
    bad_route("websocket.on_message: expected a function, got %s", type(w.on_message))
  end
  if w.upstream_path ~= nil and (type(w.upstream_path) ~= "string" or w.upstream_path:sub(1, 1) ~= "/") then
    bad_route("websocket.upstream_path: expected a path starting with '/', got %s",
              show_value(w.upstream_path))
  end
  return {
    mode = mode,
    heartbeat = {
      interval = num(hb.interval, 30, "heartbeat.interval"),
      message = bool(hb.message, true, "heartbeat.message"),
      ping_frames = bool(hb.ping_frames, false, "heartbeat.ping_frames"),
      timeout = num(hb.timeout, 0, "heartbeat.timeout"),
    },
    max_message = bytes(w.max_message, 1048576, "max_message"),
    send_buffer = bytes(w.send_buffer, 1048576, "send_buffer"),
    overflow = "close",
    deflate = bool(w.deflate, mode ~= "tunnel", "deflate"),
    protocols = list(w.protocols, "protocols"),
    origins = list(w.origins, "origins"),
    idle = num(t.idle, 3600, "timeouts.idle"),
    upstream_path = w.upstream_path,
    on_message = w.on_message,
    ws_open = w.ws_open ~= nil and function_list(w.ws_open, "websocket.ws_open", bad_route) or nil,
    ws_close = w.ws_close ~= nil and function_list(w.ws_close, "websocket.ws_close", bad_route) or nil,
  }
end

local function norm_route(ctx, n, raw)
  local rule
  if type(raw) == "table" then
    local p = raw.path ~= nil and raw.path or raw.prefix
    if type(p) == "string" then
      rule = p
    end
  end

  local nth = 1
  if rule then
    nth = (ctx.rule_seen[rule] or 0) + 1
    ctx.rule_seen[rule] = nth
  end
  local line = route_line(ctx, rule, nth, type(raw) == "table" and raw.handler or nil)

  local function bad_route(fmt, ...)
    fail(ctx.path, line, "route #%d (%s): " .. fmt, n, rule or "?", ...)
  end

  if type(raw) ~= "table" then
    bad_route("expected a table, got %s", type(raw))
  end
  for _, k in ipairs(sorted_keys(raw)) do
    if not ROUTE_FIELDS[k] then
      bad_route("unknown field %s%s", show_key(k), suggestion(k, ROUTE_FIELDS))
    end
  end

  -- rule
  if raw.path ~= nil and raw.prefix ~= nil then
    bad_route("both 'path' and 'prefix' given; use one")
  end
  if raw.path == nil and raw.prefix == nil then
    bad_route("one of 'path' or 'prefix' is required")
  end
  local kind = raw.path ~= nil and "exact" or "prefix"
  local field = raw.path ~= nil and "path" or "prefix"
  if not rule then
    bad_route("%s: expected a string, got %s", field, type(raw[field]))
  end
  local params, err = parse_rule(rule)
  if not params then
    bad_route("%s: %s", field, err)
  end

  -- target
  if raw.upstream ~= nil and raw.handler ~= nil then
    bad_route("both 'upstream' and 'handler' given; use one")
  end
  if raw.upstream == nil and raw.handler == nil then
    bad_route("one of 'upstream' or 'handler' is required")
  end
  if raw.upstream ~= nil then
    if type(raw.upstream) ~= "string" then
      bad_route("upstream: expected a string, got %s", type(raw.upstream))
    end
    if not ctx.upstreams[raw.upstream] then
      bad_route("unknown upstream '%s'%s", raw.upstream,
                suggestion(raw.upstream, ctx.upstreams))
    end
  elseif type(raw.handler) ~= "function" then
    bad_route("handler: expected a function, got %s", type(raw.handler))
  end

  local route = {
    index = n,
    rule = rule,
    kind = kind,
    params = params,
    upstream = raw.upstream,
    handler = raw.handler,
    strip_prefix = false,
    body_size = ctx.body_size,
    file = ctx.path,
    line = line,
  }

  if raw.method ~= nil then
    route.methods = norm_methods(raw.method, bad_route)
  end

  if raw.host ~= nil then
    if type(raw.host) ~= "string" then
      bad_route("host: expected a string, got %s", type(raw.host))
    end
    route.host = norm_host(raw.host)
    if not route.host then
      bad_route("host: bad host '%s'", raw.host)
    end
  end

  if raw.priority ~= nil then
    local p = raw.priority
    if type(p) ~= "number" or p ~= p or p == math_huge or p == -math_huge then
      bad_route("priority: expected a finite number, got %s", show_value(p))
    end
    route.priority = p
  else
    -- Traefik's default: longer rules are more specific
    route.priority = #rule
  end

  if raw.strip_prefix ~= nil then
    if type(raw.strip_prefix) ~= "boolean" then
      bad_route("strip_prefix: expected a boolean, got %s", type(raw.strip_prefix))
    end
    if raw.strip_prefix and kind ~= "prefix" then
      bad_route("strip_prefix needs a 'prefix' rule")
    end
    if raw.strip_prefix and raw.upstream == nil then
      bad_route("strip_prefix applies to upstream routes only")
    end
    route.strip_prefix = raw.strip_prefix
  end

  if raw.body_size ~= nil then
    local b = raw.body_size
    if not is_nonneg(b, true) or b > MAX_INT then
      bad_route("body_size: expected a non-negative integer, got %s", show_value(b))
    end
    route.body_size = b
  end

  if raw.name ~= nil then
    if type(raw.name) ~= "string" then
      bad_route("name: expected a string, got %s", type(raw.name))
    end
    route.name = raw.name
  end

  if raw.websocket ~= nil then
    route.websocket = normalize_websocket(raw, bad_route)
  end

  -- hooks: access runs first (as a coroutine) on any kind of route;
  -- header_filter edits the response head; log runs after the response
  for _, f in ipairs({ "access", "header_filter", "log" }) do
    if raw[f] ~= nil then
      route[f] = function_list(raw[f], f, bad_route)
    end
  end

  -- reserved fields: type-checked, passed through unchanged
  for _, f in ipairs({ "plugins" }) do
    if raw[f] ~= nil and type(raw[f]) ~= "table" then
      bad_route("%s: expected a table, got %s", f, type(raw[f]))
    end
    route[f] = raw[f]
  end
  if raw.on_reload ~= nil and not ON_RELOAD[raw.on_reload] then
    bad_route("on_reload: expected \"keep\" or \"drain\", got %s", show_value(raw.on_reload))
  end
  route.on_reload = raw.on_reload
  if raw.timeouts ~= nil then
    local t = raw.timeouts
    if type(t) ~= "table" then
      bad_route("timeouts: expected a table, got %s", type(t))
    end
    for _, k in ipairs(sorted_keys(t)) do
      local tv = t[k]
      if not ROUTE_TIMEOUT_FIELDS[k] then
        bad_route("timeouts: unknown field %s%s", show_key(k),
                  suggestion(k, ROUTE_TIMEOUT_FIELDS))
      end
      if not is_nonneg(tv) or tv > MAX_SECONDS then
        bad_route("timeouts.%s: expected a non-negative number of seconds, got %s",
                  k, show_value(tv))
      end
    end
    route.timeouts = t
  end

  return route
end


local function load_routes(conf, upstreams)
  local src = read_source(conf.routes_file)
  local list = run_file(src)
  if type(list) ~= "table" then
    fail(src.path, return_line(src.text),
         "routes file must return a list of routes, got %s", type(list))
  end

  local n = #list
  for k in pairs(list) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
      fail(src.path, return_line(src.text),
           "routes file must return a list of routes, found key %s", show_key(k))
    end
  end

  local ctx = {
    path = src.path, text = src.text, upstreams = upstreams,
    body_size = conf.limits.body_size, rule_seen = {},
  }
  local routes = {}
  for i = 1, n do
    routes[i] = norm_route(ctx, i, list[i])
  end

  -- table.sort is not stable: ties fall back to file order explicitly
  tbl_sort(routes, function(a, b)
    if a.priority ~= b.priority then
      return a.priority > b.priority
    end
    return a.index < b.index
  end)
  return routes
end



_M.load = load_routes

return _M
