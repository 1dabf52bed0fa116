-- moongate.routes: checks and normalizes the routes file (docs/configuration.md,
-- docs/websocket.md): rules and their parameters, hosts, methods, targets,
-- hooks, per-route timeouts and the websocket table, described as
-- moongate.schema specs, then sorts the routes into match order. Errors
-- are raised with moongate.check and returned by moongate.loader as
-- "file:line: reason".

local type = type
local pairs = pairs
local ipairs = ipairs
local require = require
local debug_getinfo = debug.getinfo
local math_floor = math.floor
local str_byte = string.byte
local str_find = string.find
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub
local str_upper = string.upper
local str_format = string.format
local tbl_concat = table.concat
local tbl_sort = table.sort


local check = require "moongate.check"
local fail = check.fail
local quoted_positions = check.quoted_positions
local show_key = check.show_key
local read_source = check.read_source
local run_file = check.run_file
local return_line = check.return_line
local suggestion = check.suggestion
local sorted_keys = check.sorted_keys
local valid_hostname = check.valid_hostname
local MAX_SECONDS = check.MAX_SECONDS
local MAX_BYTES = check.MAX_BYTES
local MAX_INT = check.MAX_INT
local MAX_SEGMENTS = check.MAX_SEGMENTS

local _M = {}

local schema = require "moongate.schema"
local validate = schema.validate


-- The authentication plugins: enabling one protects a group (see groups).
local AUTH_PLUGINS = { ["jwt-auth"] = true, ["key-auth"] = true, ["forward-auth"] = true }
_M.AUTH_PLUGINS = AUTH_PLUGINS

-- RFC 9110 token characters, upper-case letters only.
local METHOD_PATTERN = "^[A-Z0-9!#$%%&'*+.^_`|~-]+$"

-- Whether rule:sub(a, b) is "{name}" with name an ASCII letter or '_'
-- then letters, digits or '_' (what "^{([%a_][%w_]*)}$" takes in the C
-- locale), by bytes: a pattern match per parameter is most of the cost.
local function param_name_ok(rule, a, b)
  if b - a < 2 or str_byte(rule, a) ~= 123 or str_byte(rule, b) ~= 125 then
    return false
  end
  for i = a + 1, b - 1 do
    local c = str_byte(rule, i)
    if not ((c >= 97 and c <= 122) or (c >= 65 and c <= 90) or c == 95
            or (i > a + 1 and c >= 48 and c <= 57)) then
      return false
    end
  end
  return true
end

-- Checks a path/prefix rule; returns its parameter names in order.
-- "/" and a trailing "/" are allowed, empty segments elsewhere are not.
-- Byte by byte (the loader checks every rule twice; 10 000 routes are
-- 20 000 calls), with the errors in the order of the checks: the first
-- byte, whitespace or '?' or '#' anywhere, the number of segments, then
-- each segment in turn.
local function parse_rule_checked(rule)
  if str_byte(rule, 1) ~= 47 then -- '/'
    return nil, "must start with '/'"
  end
  -- one pass over the bytes: %s and %c are 0-32 and 127
  local n, nsegs, braces = #rule, 1, false
  for i = 2, n do
    local b = str_byte(rule, i)
    if b <= 32 or b == 127 or b == 63 or b == 35 then -- '?', '#'
      return nil, "must not contain whitespace, '?' or '#'"
    elseif b == 47 then
      nsegs = nsegs + 1
    elseif b == 123 or b == 125 then -- '{', '}'
      braces = true
    end
  end
  if nsegs > MAX_SEGMENTS then
    return nil, "too many segments (at most " .. MAX_SEGMENTS .. ")"
  end
  -- the segments of rule:sub(2) .. "/", in order
  local params, seen, pos = {}, nil, 2
  while true do
    local e = str_find(rule, "/", pos, true)
    if e == pos then
      return nil, "empty segment ('//')"
    end
    local stop = (e or n + 1) - 1
    local has = false
    if braces then
      for i = pos, stop do
        local b = str_byte(rule, i)
        if b == 123 or b == 125 then
          has = true
          break
        end
      end
    end
    if has then
      local name
      if param_name_ok(rule, pos, stop) then
        name = str_sub(rule, pos + 1, stop - 1)
      else -- the pattern decides (and %a may take more than ASCII letters)
        name = str_match(str_sub(rule, pos, stop), "^{([%a_][%w_]*)}$")
      end
      if not name then
        return nil, "bad segment '" .. str_sub(rule, pos, stop) .. "': a parameter is a"
                    .. " whole segment '{name}', name made of letters, digits and '_'"
      end
      local np = #params
      if np > 0 then
        seen = seen or {}
        if np == 1 then seen[params[1]] = true end
        if seen[name] then
          return nil, "duplicate parameter '{" .. name .. "}'"
        end
        seen[name] = true
      end
      params[np + 1] = name
    end
    if not e then
      return params
    end
    pos = e + 1
  end
end


-- The same answer for a valid rule in one pass over its bytes: any byte,
-- segment or parameter it is not sure of sends the rule to
-- parse_rule_checked, which then finds the first error in its order.
local function parse_rule(rule)
  local n = #rule
  if str_byte(rule, 1) ~= 47 then
    return parse_rule_checked(rule)
  end
  local params, np, nsegs, seg, brace = {}, 0, 1, 2, false
  for i = 2, n + 1 do
    local b = i <= n and str_byte(rule, i) or 47
    if b == 47 then -- a segment ends (or the rule)
      if i == seg and i <= n then
        return parse_rule_checked(rule) -- empty segment
      end
      if brace then
        if not param_name_ok(rule, seg, i - 1) then
          return parse_rule_checked(rule)
        end
        local name = str_sub(rule, seg + 1, i - 2)
        for k = 1, np do
          if params[k] == name then return parse_rule_checked(rule) end
        end
        np = np + 1
        params[np] = name
        brace = false
      end
      if i <= n then
        nsegs = nsegs + 1
        seg = i + 1
      end
    elseif b <= 32 or b == 127 or b == 63 or b == 35 then -- '?', '#'
      return parse_rule_checked(rule)
    elseif b == 123 or b == 125 then -- '{', '}'
      brace = true
    end
  end
  if nsegs > MAX_SEGMENTS then
    return parse_rule_checked(rule)
  end
  return params
end
_M._parse_rule, _M._parse_rule_checked = parse_rule, parse_rule_checked


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


local KNOWN_METHODS = {
  GET = true, HEAD = true, POST = true, PUT = true, DELETE = true, PATCH = true,
  OPTIONS = true, CONNECT = true, TRACE = true,
}

-- `method`: a string or a list of strings -> list without duplicates. A
-- reason that starts with "method " names the field itself.
local function norm_methods(v)
  local list
  if type(v) == "string" then
    if KNOWN_METHODS[v] then return { v } end
    list = { v }
  elseif type(v) == "table" then
    list = v
    local n = #v
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or k ~= math_floor(k) then
        return nil, "expected a list, found key " .. show_key(k)
      end
    end
    if n == 0 then
      return nil, "empty list"
    end
  else
    return nil, "expected a string or a list of strings, got " .. type(v)
  end
  local out, seen = {}, {}
  for _, m in ipairs(list) do
    if type(m) ~= "string" then
      return nil, "expected a string, got " .. type(m)
    end
    if KNOWN_METHODS[m] then -- upper-case tokens: the checks below pass
      if not seen[m] then
        seen[m] = true
        out[#out + 1] = m
      end
    elseif str_upper(m) ~= m then
      return nil, "method '" .. m .. "' must be upper-case"
    elseif not str_find(m, METHOD_PATTERN) then
      return nil, "method '" .. m .. "' is not a valid method token"
    elseif not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
  return out
end


-- The file's quoted string literals that start with '/' (as every valid
-- rule does), read in one pass: for each quote character, the positions
-- of "s" by content s. A literal "s" whose s has no such quote ends at the
-- next quote after its opening one, so pairing every quote with the next
-- one finds them all (a gap between two literals may come along as a
-- content no rule asks for). Plus where each line starts. Tables of
-- 10 000 routes take one pass instead of one per route.
local function text_index(text)
  local quotes = {}
  for _, q in ipairs({ '"', "'" }) do
    local by = {}
    local p = str_find(text, q, 1, true)
    while p do
      local e = str_find(text, q, p + 1, true)
      if not e then break end
      if str_byte(text, p + 1) == 47 then -- '/'
        local s = str_sub(text, p + 1, e - 1)
        local l = by[s]
        if l then
          l[#l + 1] = p
        else
          by[s] = { p }
        end
      end
      p = e
    end
    quotes[q] = by
  end
  -- (a plain find: gmatch would try the pattern at every byte)
  local nl, n = {}, 0
  local p = str_find(text, "\n", 1, true)
  while p do
    n = n + 1
    nl[n] = p
    p = str_find(text, "\n", p + 1, true)
  end
  return { quotes = quotes, nl = nl }
end

local function ctx_index(ctx)
  local idx = ctx.text_index
  if not idx then
    idx = text_index(ctx.text)
    ctx.text_index = idx
  end
  return idx
end

-- line_of(ctx.text, pos), by binary search over the line starts
local function ctx_line_of(ctx, pos)
  local nl = ctx_index(ctx).nl
  local lo, hi = 1, #nl -- count the newlines before pos
  while lo <= hi do
    local mid = math_floor((lo + hi) / 2)
    if nl[mid] < pos then
      lo = mid + 1
    else
      hi = mid - 1
    end
  end
  return lo
end

-- quoted_positions(ctx.text, s), from the index
local function ctx_quoted(ctx, s)
  if str_byte(s, 1) ~= 47 or str_find(s, '"', 1, true) or str_find(s, "'", 1, true) then
    return quoted_positions(ctx.text, s) -- not in the index
  end
  local q = ctx_index(ctx).quotes
  local a, b = q['"'][s], q["'"][s]
  if not (a and b) then
    return a or b or {}
  end
  local found = {}
  for _, p in ipairs(a) do found[#found + 1] = p end
  for _, p in ipairs(b) do found[#found + 1] = p end
  tbl_sort(found)
  return found
end

-- Line of route #n: the nth quoted occurrence of its rule (two routes may
-- share a rule), else where its handler is defined, else the file's
-- `return`.
local function route_line(ctx, rule, nth, handler)
  if rule then
    local found = ctx_quoted(ctx, rule)
    local p = found[nth] or found[1]
    if p then
      return ctx_line_of(ctx, p)
    end
  end
  if type(handler) == "function" then
    local info = debug_getinfo(handler, "S")
    if info.source == "@" .. ctx.path and info.linedefined > 0 then
      return info.linedefined
    end
  end
  if not ctx.return_line then
    ctx.return_line = return_line(ctx.text)
  end
  return ctx.return_line
end


---------------------------------------------------------------------------
-- The shapes of a route and of its websocket table, as moongate.schema
-- specs (docs/configuration.md, docs/websocket.md). Every reason is the
-- one the hand-written checks gave; a failing `order` function with keys
-- {} reports a reason that names its fields itself.
---------------------------------------------------------------------------

local NONNEG = "expected a non-negative number, got {value}"
local BOOL = "expected a boolean, got {value}"
local BYTES = "expected a whole number of bytes from 0 to " .. MAX_BYTES .. " (1 GiB), got {value}"

local function seconds(default, msg)
  return { type = "number", min = 0, max = MAX_SECONDS, default = default, message = msg or NONNEG }
end

local function bytes(default)
  return { type = "integer", min = 0, max = MAX_BYTES, default = default, message = BYTES }
end

local function typed(t, default, msg)
  return { type = t, default = default, message = msg or ("expected a " .. t .. ", got {type}") }
end

-- The array part of a table (what ipairs walks), else the value itself.
local function array_part(v)
  if type(v) ~= "table" then return v end
  local list = {}
  for i, x in ipairs(v) do list[i] = x end
  return list
end

-- A hook field: a function or a list of functions, as a list.
local FUNCTION_LIST = {
  type = "array", message = "expected a function or a list of functions, got {type}",
  prepare = function(v)
    if type(v) == "function" then return { v } end
    return array_part(v)
  end,
  items = typed("function"),
}

-- A string or a list of strings, as a list ({} when absent).
local STRING_LIST = {
  type = "array", default = {}, message = "expected a list of strings, got {type}",
  prepare = function(v)
    if type(v) == "string" then return { v } end
    return array_part(v)
  end,
  items = typed("string"),
}

local function fail_at(reason) return nil, {}, reason end

local WEBSOCKET = {
  type = "table", optional = true, message = "expected a table, got {type}",
  order = {
    "mode",
    -- the mode's default and what it needs of the route (ctx.route)
    function(_, out, ctx)
      local raw = ctx.route
      out.mode = out.mode or (raw.handler and "handler" or "tunnel")
      if out.mode == "handler" and type(raw.handler) ~= "function" then
        return fail_at('websocket.mode "handler" needs a handler function')
      end
      if out.mode ~= "handler" and raw.upstream == nil then
        return fail_at('websocket.mode "' .. out.mode .. '" needs an upstream')
      end
      return true
    end,
    "heartbeat", "timeouts", "overflow", "on_message", "upstream_path",
    "max_message", "send_buffer", "deflate", "protocols", "origins", "ws_open", "ws_close",
    -- the core's shape: deflate by mode, timeouts.idle as idle
    function(_, out)
      if out.deflate == nil then out.deflate = out.mode ~= "tunnel" end
      out.idle = out.timeouts.idle
      out.timeouts = nil
      return true
    end,
  },
  fields = {
    mode = { type = "string", one_of = { "tunnel", "relay", "handler" },
             message = 'expected "tunnel", "relay" or "handler", got {value}' },
    heartbeat = {
      type = "table", message = "expected a table or false, got {type}",
      prepare = function(v)
        if v == false then return { interval = 0, message = false } end
        return v
      end,
      fields = {
        interval = seconds(30), timeout = seconds(0),
        message = typed("boolean", true, BOOL), ping_frames = typed("boolean", false, BOOL),
      },
    },
    max_message = bytes(1048576),
    send_buffer = bytes(1048576),
    overflow = { type = "string", one_of = { "close" }, default = "close",
                 message = 'expected "close", got {value}' },
    deflate = typed("boolean", nil, BOOL),
    protocols = STRING_LIST,
    origins = STRING_LIST,
    -- only idle is read; other keys are ignored, as they always were
    timeouts = { type = "table", open = true, message = "expected a table, got {type}",
                 prepare = function(v) return v or nil end,
                 fields = { idle = seconds(3600) } },
    upstream_path = { type = "string", match = "^/",
                      message = "expected a path starting with '/', got {value}" },
    on_message = typed("function"),
    ws_open = FUNCTION_LIST,
    ws_close = FUNCTION_LIST,
  },
}

local RULE = {
  type = "string", message = "expected a string, got {type}",
  convert = function(v)
    local params, err = parse_rule(v)
    if not params then return nil, err end
    return v
  end,
}

local function unknown_upstream(raw, _, ctx)
  if raw.upstream ~= nil and not ctx.upstreams[raw.upstream] then
    return fail_at("unknown upstream '" .. raw.upstream .. "'"
                   .. suggestion(raw.upstream, ctx.upstreams))
  end
  return true
end

-- A check that exactly one of the fields a and b is given.
local function one_of_fields(a, b)
  return function(raw)
    if raw[a] ~= nil and raw[b] ~= nil then
      return fail_at(str_format("both '%s' and '%s' given; use one", a, b))
    end
    if raw[a] == nil and raw[b] == nil then
      return fail_at(str_format("one of '%s' or '%s' is required", a, b))
    end
    return true
  end
end

local ROUTE = {
  order = {
    one_of_fields("path", "prefix"), "path", "prefix",
    one_of_fields("upstream", "handler"), "upstream", unknown_upstream,
    "handler", "method", "host", "priority", "strip_prefix",
    function(raw)
      if raw.strip_prefix and raw.path ~= nil then
        return fail_at("strip_prefix needs a 'prefix' rule")
      end
      if raw.strip_prefix and raw.upstream == nil then
        return fail_at("strip_prefix applies to upstream routes only")
      end
      return true
    end,
    "body_size", "name", "websocket", "access", "header_filter", "log",
    "plugins", "on_reload", "timeouts",
  },
  fields = {
    path = RULE, prefix = RULE,
    upstream = typed("string"),
    handler = typed("function"),
    method = { type = "any", as = "methods", convert = norm_methods },
    host = { type = "string", message = "expected a string, got {type}",
             convert = function(h)
               local host = norm_host(h)
               if not host then return nil, "bad host '" .. h .. "'" end
               return host
             end },
    priority = { type = "number", message = "expected a finite number, got {value}" },
    strip_prefix = typed("boolean", false, "expected a boolean, got {type}"),
    body_size = { type = "integer", min = 0, max = MAX_INT,
                  message = "expected a non-negative integer, got {value}" },
    name = typed("string"),
    websocket = WEBSOCKET,
    -- hooks: access runs first (as a coroutine) on any kind of route;
    -- header_filter edits the response head; log runs after the response
    access = FUNCTION_LIST, header_filter = FUNCTION_LIST, log = FUNCTION_LIST,
    -- plugin configs are checked by moongate.plugins: passed on as written
    plugins = { type = "table", message = "expected a table, got {type}",
                convert = function(_, raw) return raw.plugins end },
    on_reload = { type = "string", one_of = { "keep", "drain" },
                  message = 'expected "keep" or "drain", got {value}' },
    -- false: its requests and sessions are not in the access log
    access_log = typed("boolean", nil, "expected a boolean, got {type}"),
    timeouts = {
      type = "table", optional = true, message = "expected a table, got {type}",
      fields = {
        read = seconds(nil, "expected a non-negative number of seconds, got {value}"),
        write = seconds(nil, "expected a non-negative number of seconds, got {value}"),
        idle = seconds(nil, "expected a non-negative number of seconds, got {value}"),
      },
    },
  },
}
_M.ROUTE = ROUTE


-- "path: reason", or the reason alone when it names the field itself
-- ("method 'get' must be upper-case") or no field applies.
local function reason_text(fpath, reason)
  if not fpath or str_sub(reason, 1, #fpath + 1) == fpath .. " " then
    return reason
  end
  return fpath .. ": " .. reason
end


local inherit

-- The rule of a route or group as written, if it is a string.
local function rule_of(raw)
  if type(raw) == "table" then
    local p = raw.path ~= nil and raw.path or raw.prefix
    if type(p) == "string" then
      return p
    end
  end
  return nil
end


-- The next line `rule` is quoted on: the nth time for its nth route or
-- group.
local function next_line(ctx, rule, handler)
  local nth = 1
  if rule then
    nth = (ctx.rule_seen[rule] or 0) + 1
    ctx.rule_seen[rule] = nth
  end
  return route_line(ctx, rule, nth, handler)
end


-- The route checks' common case, without moongate.schema: a route whose
-- fields are all of the plain kinds and all valid gets here the table
-- validate(ROUTE, raw) would give, and its rule's parameters; anything
-- else (an unknown field, a websocket table, any value the schema would
-- refuse) answers nil and goes through validate(), which then gives the
-- reason. So every refusal still comes from the schema, with its message,
-- and this only has to agree with it on what it accepts.
local FAST_FIELDS = {
  path = true, prefix = true, upstream = true, handler = true, method = true, host = true,
  priority = true, strip_prefix = true, body_size = true, name = true, access = true,
  header_filter = true, log = true, plugins = true, on_reload = true, access_log = true,
  timeouts = true,
}
local FAST_HOOKS = { "access", "header_filter", "log" }
local TIMEOUT_KEYS = { read = true, write = true, idle = true }
local math_huge = math.huge

local function finite(v)
  return type(v) == "number" and v == v and v ~= math_huge and v ~= -math_huge
end

-- a FUNCTION_LIST field: a function or a list of functions, as a fresh list
local function fast_hooks(v)
  if type(v) == "function" then return { v } end
  if type(v) ~= "table" then return nil end
  local out = {}
  for i, f in ipairs(v) do
    if type(f) ~= "function" then return nil end
    out[i] = f
  end
  return out
end

local function fast_route(ctx, raw)
  for k in pairs(raw) do
    if not FAST_FIELDS[k] then return nil end
  end
  local path, prefix = raw.path, raw.prefix
  local rule = path
  if rule == nil then rule = prefix elseif prefix ~= nil then return nil end
  if type(rule) ~= "string" then return nil end
  local params = parse_rule(rule)
  if not params then return nil end
  local upstream, handler = raw.upstream, raw.handler
  if upstream ~= nil then
    if handler ~= nil or type(upstream) ~= "string" or not ctx.upstreams[upstream] then
      return nil
    end
  elseif type(handler) ~= "function" then
    return nil
  end
  local out = { path = path, prefix = prefix, upstream = upstream, handler = handler }
  local v = raw.method
  if v ~= nil then
    local m = norm_methods(v)
    if not m then return nil end
    out.methods = m
  end
  v = raw.host
  if v ~= nil then
    if type(v) ~= "string" then return nil end
    local h = norm_host(v)
    if not h then return nil end
    out.host = h
  end
  v = raw.priority
  if v ~= nil then
    if not finite(v) then return nil end
    out.priority = v
  end
  v = raw.strip_prefix
  if v == nil then
    out.strip_prefix = false
  elseif type(v) ~= "boolean" or (v and (path ~= nil or upstream == nil)) then
    return nil
  else
    out.strip_prefix = v
  end
  v = raw.body_size
  if v ~= nil then
    if not finite(v) or v ~= math_floor(v) or v < 0 or v > MAX_INT then return nil end
    out.body_size = v
  end
  v = raw.name
  if v ~= nil then
    if type(v) ~= "string" then return nil end
    out.name = v
  end
  for i = 1, 3 do
    local h = FAST_HOOKS[i]
    v = raw[h]
    if v ~= nil then
      local list = fast_hooks(v)
      if not list then return nil end
      out[h] = list
    end
  end
  v = raw.plugins
  if v ~= nil then
    if type(v) ~= "table" then return nil end
    out.plugins = v
  end
  v = raw.on_reload
  if v ~= nil then
    if v ~= "keep" and v ~= "drain" then return nil end
    out.on_reload = v
  end
  v = raw.access_log
  if v ~= nil then
    if type(v) ~= "boolean" then return nil end
    out.access_log = v
  end
  v = raw.timeouts
  if v ~= nil then
    if type(v) ~= "table" then return nil end
    local t = {}
    for k, x in pairs(v) do
      if not TIMEOUT_KEYS[k] or not finite(x) or x < 0 or x > MAX_SECONDS then return nil end
      t[k] = x
    end
    out.timeouts = t
  end
  return out, params
end
_M.fast_route = fast_route


local function bad_route(ctx, line, n, rule, fmt, ...)
  fail(ctx.path, line, "route #%d (%s): " .. fmt, n, rule or "?", ...)
end

-- raw: the route as written; grp: the group holding it, if any (see
-- groups below), whose settings it inherits.
local function norm_route(ctx, n, raw, grp)
  local rule = rule_of(raw)
  local line = next_line(ctx, rule, type(raw) == "table" and raw.handler or nil)

  if type(raw) ~= "table" then
    bad_route(ctx, line, n, rule, "expected a table, got %s", type(raw))
  end
  local ngroup = 0
  if grp then
    local r2, reason
    r2, reason, ngroup = inherit(grp, raw)
    if not r2 then
      bad_route(ctx, line, n, rule, "%s", reason)
    end
    raw = r2
  end
  ctx.route = raw
  local r, params = fast_route(ctx, raw)
  if not r then
    local fpath, reason
    r, fpath, reason = validate(ROUTE, raw, { ctx = ctx, named_unknown = true })
    if not r then
      bad_route(ctx, line, n, rule, "%s", reason_text(fpath, reason))
    end
    params = parse_rule(rule)
  end

  return {
    index = n,
    rule = rule,
    kind = raw.path ~= nil and "exact" or "prefix",
    params = params,
    upstream = r.upstream,
    handler = r.handler,
    strip_prefix = r.strip_prefix,
    body_size = r.body_size or ctx.body_size,
    file = ctx.path,
    line = line,
    methods = r.methods,
    host = r.host,
    -- Traefik's default: longer rules are more specific
    priority = r.priority or #rule,
    name = r.name,
    websocket = r.websocket,
    access = r.access,
    header_filter = r.header_filter,
    log = r.log,
    plugins = r.plugins,
    on_reload = r.on_reload,
    timeouts = r.timeouts,
    access_log = r.access_log,
    -- how many of the access hooks are the groups' (moongate.plugins runs
    -- them with authentication); removed by the loader
    group_access = ngroup > 0 and ngroup or nil,
  }
end


---------------------------------------------------------------------------
-- Groups (docs/configuration.md): an entry with a `routes` list shares a
-- prefix, hooks, plugins and defaults with the routes (and groups) it
-- holds. Rules inside are written in full and must lie under the group's
-- prefix (the prefix itself, or below it), so a route cannot escape it and
-- a route reads the same inside or outside a group. The group's hooks run before
-- a route's own and its plugins apply to every route: neither can be
-- dropped. A group must say how it is protected: access hooks, an
-- authentication plugin, or public = true.
---------------------------------------------------------------------------

local HOOKS = { "access", "header_filter", "log" }
-- defaults a route inherits unless it sets its own
local DEFAULTS = { "host", "method", "body_size", "on_reload" }


local GROUP = {
  order = {
    "prefix", "routes", "access", "header_filter", "log", "plugins", "public",
    "upstream", unknown_upstream,
    "method", "host", "strip_prefix", "body_size", "on_reload", "timeouts", "websocket",
  },
  fields = {
    prefix = {
      type = "string", message = "expected a string, got {type}",
      convert = function(v)
        local params, err = parse_rule(v)
        if not params then return nil, err end
        if v ~= "/" and str_sub(v, -1) == "/" then
          return nil, "must not end with '/' (routes inside add their own)"
        end
        return v
      end,
    },
    routes = { type = "table", message = "expected a list of routes and groups, got {type}" },
    public = typed("boolean", nil, "expected a boolean, got {type}"),
    access = FUNCTION_LIST, header_filter = FUNCTION_LIST, log = FUNCTION_LIST,
    plugins = ROUTE.fields.plugins,
    upstream = ROUTE.fields.upstream,
    method = ROUTE.fields.method,
    host = ROUTE.fields.host,
    strip_prefix = ROUTE.fields.strip_prefix,
    body_size = ROUTE.fields.body_size,
    on_reload = ROUTE.fields.on_reload,
    timeouts = ROUTE.fields.timeouts,
    -- defaults for the group's WebSocket routes: checked on each of them
    websocket = { type = "table", message = "expected a table, got {type}" },
  },
}
_M.GROUP = GROUP


local function as_list(v)
  if type(v) == "function" then return { v } end
  local out = {}
  for i, f in ipairs(v) do out[i] = f end
  return out
end


-- `under` with `over`'s keys on top, one level deep for tables in both.
local function merge_under(under, over)
  local out = {}
  for k, v in pairs(under) do out[k] = v end
  for k, v in pairs(over) do
    if type(v) == "table" and type(out[k]) == "table" then
      out[k] = merge_under(out[k], v)
    else
      out[k] = v
    end
  end
  return out
end


-- The table `raw` (a route or a group) completed by group `g`: rule
-- checked to lie under the prefix, g's hooks first, g's plugins added, g's
-- defaults where raw has none. Returns it and how many access hooks are
-- g's, or nil, reason.
inherit = function(g, raw)
  local r = {}
  for k, v in pairs(raw) do r[k] = v end
  for _, f in ipairs({ "path", "prefix" }) do
    local v = raw[f]
    if type(v) == "string" and not g.holds(v) then
      return nil, str_format("%s: '%s' is outside its group's prefix '%s'", f, v, g.prefix)
    end
  end
  local ngroup = 0
  for _, h in ipairs(HOOKS) do
    local own = raw[h]
    if g[h] and (own == nil or type(own) == "function" or type(own) == "table") then
      local list = as_list(g[h])
      if h == "access" then ngroup = #list end
      for _, f in ipairs(own ~= nil and as_list(own) or {}) do list[#list + 1] = f end
      r[h] = list
    end
  end
  if g.plugins and raw.plugins ~= nil then
    if type(raw.plugins) ~= "table" then
      return nil, "plugins: expected a table, got " .. type(raw.plugins)
    end
    for _, name in ipairs(sorted_keys(raw.plugins)) do
      if g.plugins[name] ~= nil then
        return nil, str_format("plugins: %s is set by %s; a route or group inside"
                               .. " cannot change or turn it off", show_key(name), g.label)
      end
    end
  end
  if g.plugins then
    r.plugins = merge_under(raw.plugins or {}, g.plugins)
  end
  for _, f in ipairs(DEFAULTS) do
    if r[f] == nil then r[f] = g[f] end
  end
  -- tables merged key by key: timeouts; websocket only where a route is a
  -- WebSocket route (or for a group, to pass on)
  for _, f in ipairs({ "timeouts", "websocket" }) do
    if g[f] and type(raw[f]) == "table" then
      r[f] = merge_under(g[f], raw[f])
    elseif raw[f] == nil and (f == "timeouts" or raw.routes ~= nil) then
      r[f] = g[f]
    end
  end
  if raw.routes == nil then
    -- a route: the upstream (and strip_prefix) of the group unless it has
    -- a target of its own
    if r.upstream == nil and r.handler == nil then
      r.upstream = g.upstream
      if r.strip_prefix == nil and raw.prefix ~= nil then r.strip_prefix = g.strip_prefix end
    end
  else
    if r.upstream == nil then r.upstream = g.upstream end
    if r.strip_prefix == nil then r.strip_prefix = g.strip_prefix end
  end
  return r, nil, ngroup
end


local function protected_by_plugin(plugins)
  for name, c in pairs(plugins or {}) do
    if AUTH_PLUGINS[name] and c ~= false then return true end
  end
  return false
end


-- Checks group `raw` (inside `parent`, or nil) and returns it as a group
-- for inherit(): its settings as written, completed by the parent's.
local function norm_group(ctx, k, raw, parent)
  local own_prefix = type(raw.prefix) == "string" and raw.prefix or nil
  local line = next_line(ctx, own_prefix)
  local prefix = own_prefix or (parent and parent.prefix) or "/"
  local label = own_prefix or prefix
  local function bad_group(fmt, ...)
    fail(ctx.path, line, "group #%d (%s): " .. fmt, k, label, ...)
  end

  local g = raw
  if parent then
    local reason
    g, reason = inherit(parent, raw)
    if not g then bad_group("%s", reason) end
  end
  local _, fpath, reason = validate(GROUP, g, { ctx = ctx, named_unknown = true })
  if fpath or reason then
    bad_group("%s", reason_text(fpath, reason))
  end

  local own = (raw.access ~= nil and #as_list(raw.access) > 0) or protected_by_plugin(raw.plugins)
  local protected = own or (parent and parent.protected)
  if raw.public == true and protected then
    bad_group("public = true, but the group is protected (by %s); remove one",
              own and "its access hooks or authentication plugin" or parent.label)
  end
  if not protected and raw.public ~= true then
    bad_group("no protection: give it access hooks, an authentication plugin (%s) or"
              .. " public = true", tbl_concat(sorted_keys(AUTH_PLUGINS), ", "))
  end

  local out = {}
  for key, v in pairs(g) do out[key] = v end
  out.routes, out.public = nil, nil
  out.prefix = prefix
  out.protected = protected
  out.label = "group #" .. k .. " (" .. label .. ")"
  out.line = line
  -- a rule under the prefix: the prefix itself or below it, whole segments
  out.holds = function(rule)
    return prefix == "/" or rule == prefix or str_sub(rule, 1, #prefix + 1) == prefix .. "/"
  end
  return out
end


-- Appends the routes of `list` (the file's, or a group's) to `routes`,
-- in file order, groups flattened.
local function add_routes(ctx, list, routes, parent)
  for i = 1, #list do
    local raw = list[i]
    if type(raw) == "table" and raw.routes ~= nil then
      ctx.groups = ctx.groups + 1
      local g = norm_group(ctx, ctx.groups, raw, parent)
      local inner = raw.routes
      for _, key in ipairs(sorted_keys(inner)) do
        if type(key) ~= "number" or key < 1 or key > #inner or key ~= math_floor(key) then
          fail(ctx.path, g.line, "%s: routes: expected a list, found key %s",
               g.label, show_key(key))
        end
      end
      add_routes(ctx, inner, routes, g)
    else
      routes[#routes + 1] = norm_route(ctx, #routes + 1, raw, parent)
    end
  end
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
    body_size = conf.limits.body_size, rule_seen = {}, groups = 0,
  }
  local routes = {}
  add_routes(ctx, list, routes, nil)

  -- match order: priority descending, ties in file order. By buckets: a
  -- table has few distinct priorities (explicit ones and rule lengths),
  -- and a comparator called n log n times is most of the cost of sorting
  -- 10 000 routes. routes is in file order (index ascending) here.
  local buckets, prios = {}, {}
  for _, r in ipairs(routes) do
    local b = buckets[r.priority]
    if not b then
      b = {}
      buckets[r.priority] = b
      prios[#prios + 1] = r.priority
    end
    b[#b + 1] = r
  end
  tbl_sort(prios, function(a, b) return a > b end)
  local sorted = {}
  for _, p in ipairs(prios) do
    for _, r in ipairs(buckets[p]) do
      sorted[#sorted + 1] = r
    end
  end
  return sorted
end



_M.load = load_routes
_M._text_index = text_index

return _M
