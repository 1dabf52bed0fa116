-- moongate.plugins: finds plugin modules, checks their configs against their
-- schemas (moongate.schema), and composes a route's phase lists from the
-- plugins enabled on it.
--
-- Runs inside moongate.loader at generation load time (moongate -t, start,
-- SIGHUP) and in the unit specs. Nothing here runs per request: compose()
-- binds each plugin's conf into small closures that the core calls like a
-- route's own hooks, so a route without plugins pays nothing and one with
-- plugins pays one Lua call per phase per plugin.
--
-- A plugin (docs/plugins.md):
--   { name = "x", VERSION = "1.0.0", PRIORITY = 1000,   -- higher runs first
--     schema = { fields = { f = { type = "string", default = "v" } } },
--     check = function(conf, env) end,    -- optional, load time
--     rewrite = function(conf, req, ctx) end, access = function(conf, req, ctx) end,
--     header_filter = function(conf, res, ctx) end, log = function(conf, entry, ctx) end,
--     ws_open = function(conf, info, ctx) end, ws_message = function(conf, msg, ctx) end,
--     ws_close = function(conf, info, ctx) end }
--
-- Errors: functions return nil and a reason; the loader prefixes the
-- file:line of the route or conf entry. Errors raised while running a
-- plugin's own files keep that file's position. Misuse raises.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local pcall = pcall
local getmetatable = getmetatable
local setmetatable = setmetatable
local package = package
local io_open = io.open
local debug_getinfo = debug.getinfo
local str_find = string.find
local str_format = string.format
local str_gmatch = string.gmatch
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tbl_concat = table.concat
local tbl_sort = table.sort


local _M = { _VERSION = "0.1.0" }

local schema = require "moongate.schema"
local check = require "moongate.check"
local sorted_keys = check.sorted_keys
local deep_copy = schema.deep_copy
local show = schema.show
_M.check_schema = schema.check
_M.validate = schema.validate


-- The phases a plugin may define, in the order a request meets them.
_M.PHASES = { "rewrite", "access", "header_filter", "log", "ws_open", "ws_message", "ws_close" }
local PHASE_SET = {}
for _, p in ipairs(_M.PHASES) do PHASE_SET[p] = true end
local WS_PHASES = { ws_open = true, ws_message = true, ws_close = true }

-- The bundled plugins of a source checkout: <root>/plugins, found from this
-- file (lib/moongate/plugins.lua). An installed rock finds them on
-- package.path as moongate.plugins.<name> instead.
local BUNDLED_DIR
do
  local src = debug_getinfo(1, "S").source
  if str_sub(src, 1, 1) == "@" then
    local dir = str_match(str_sub(src, 2), "^(.*)/lib/moongate/[^/]*$")
    if dir then
      BUNDLED_DIR = dir .. "/plugins"
    elseif str_match(str_sub(src, 2), "^lib/moongate/[^/]*$") then
      BUNDLED_DIR = "plugins"
    end
  end
end
_M.BUNDLED_DIR = BUNDLED_DIR


---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

local function file_exists(path)
  local f = io_open(path, "rb")
  if f then
    f:close()
    return true
  end
  return false
end


local hints = require "moongate.hints"
local suggestion = hints.suggestion
_M.suggestion = suggestion


---------------------------------------------------------------------------
-- Finding and loading plugins
---------------------------------------------------------------------------

-- Runs a plugin file; errors keep the plugin file's own position
-- (moongate.check's file runner, as for the conf and routes files).
local run_plugin_file = check.run_file

-- LuaJIT 2.1 has package.searchpath (from Lua 5.2).
local function searchpath(name)
  return (package.searchpath(name, package.path))
end


-- Where plugin `name` lives: a list of { handler = path, schema = path|nil }
-- candidates in search order, and the places looked at (for the error).
local function candidates(name, root)
  local list, looked = {}, {}
  local function dir_candidates(dir, label)
    local single = dir .. "/" .. name .. ".lua"
    local handler = dir .. "/" .. name .. "/handler.lua"
    list[#list + 1] = { handler = single }
    list[#list + 1] = { handler = handler, schema = dir .. "/" .. name .. "/schema.lua" }
    looked[#looked + 1] = label
  end
  if root then
    dir_candidates((root == "." or root == "") and "plugins" or (root .. "/plugins"),
                   "plugins/" .. name .. ".lua, plugins/" .. name .. "/handler.lua")
  end
  local mod = "moongate.plugins." .. name
  local p = searchpath(mod)
  if p then
    list[#list + 1] = { handler = p, module = mod }
  end
  p = searchpath(mod .. ".handler")
  if p then
    list[#list + 1] = { handler = p, schema = searchpath(mod .. ".schema"), module = mod }
  end
  looked[#looked + 1] = "package.path (" .. mod .. ")"
  if BUNDLED_DIR and BUNDLED_DIR ~= ((root == "." or root == "") and "plugins"
                                     or (root or "") .. "/plugins") then
    dir_candidates(BUNDLED_DIR, "the bundled plugins")
  end
  return list, looked
end


local function check_module(name, m, path)
  if type(m) ~= "table" then
    return nil, str_format("%s: expected the plugin module (a table), got %s", path, type(m))
  end
  if m.name ~= nil and m.name ~= name then
    return nil, str_format("%s: plugin module says name = %s, expected '%s'", path,
                           show(m.name), name)
  end
  if type(m.PRIORITY) ~= "number" or m.PRIORITY ~= m.PRIORITY then
    return nil, str_format("%s: PRIORITY: expected a number, got %s", path, show(m.PRIORITY))
  end
  if type(m.VERSION) ~= "string" then
    return nil, str_format("%s: VERSION: expected a string, got %s", path, show(m.VERSION))
  end
  local any = false
  for _, ph in ipairs(_M.PHASES) do
    if m[ph] ~= nil then
      if type(m[ph]) ~= "function" then
        return nil, str_format("%s: %s: expected a function, got %s", path, ph, type(m[ph]))
      end
      any = true
    end
  end
  if not any then
    return nil, str_format("%s: defines no phase (one of %s)", path, tbl_concat(_M.PHASES, ", "))
  end
  if m.check ~= nil and type(m.check) ~= "function" then
    return nil, str_format("%s: check: expected a function, got %s", path, type(m.check))
  end
  local ok, err = _M.check_schema(m.schema)
  if not ok then
    return nil, path .. ": " .. err
  end
  return true
end


local Registry = {}
Registry.__index = Registry


--- A registry for one generation: plugins are loaded at most once.
-- opts.root: the project root (plugins/ is looked up under it).
function _M.new(opts)
  opts = opts or {}
  return setmetatable({ root = opts.root, loaded = {} }, Registry)
end


--- The plugin `name`: its module table (with .name and .schema set), or
-- nil, reason. A reason that starts with "path:line:" is an error inside
-- the plugin's own files.
function Registry:get(name)
  local cached = self.loaded[name]
  if cached then
    return cached.plugin, cached.err
  end
  local plugin, err
  if type(name) ~= "string" or not str_find(name, "^[%w][%w_%-]*$") then
    err = "bad plugin name " .. show(name) .. " (letters, digits, '_' and '-')"
  else
    local list, looked = candidates(name, self.root)
    for _, c in ipairs(list) do
      if file_exists(c.handler) then
        local ok, res = pcall(function()
          local m = run_plugin_file({ path = c.handler })
          if c.schema and type(m) == "table" and m.schema == nil and file_exists(c.schema) then
            m.schema = run_plugin_file({ path = c.schema })
          end
          return m
        end)
        if not ok then
          if not check.is_load_error(res) then error(res, 0) end
          err = res.msg
        else
          local ok2, err2 = check_module(name, res, c.handler)
          if ok2 then
            res.name = name
            res.file = c.handler
            plugin = res
            -- one instance per generation: a script that requires the
            -- plugin at run time shares its module state
            local mod = "moongate.plugins." .. name
            if package.loaded[mod] == nil then package.loaded[mod] = res end
          else
            err = err2
          end
        end
        break
      end
    end
    if not plugin and not err then
      err = "not found (looked in " .. tbl_concat(looked, ", ") .. ")"
    end
  end
  self.loaded[name] = { plugin = plugin, err = err }
  return plugin, err
end


--- Validates `conf` for `plugin` and runs the plugin's check(conf, env).
-- Returns the normalized conf, or nil, reason ("field <f>: reason").
function _M.configure(plugin, conf, env)
  if conf == true then conf = {} end
  local out, fpath, reason = _M.validate(plugin.schema, conf)
  if not out then
    if fpath then
      return nil, "field " .. fpath .. ": " .. reason
    end
    return nil, reason
  end
  if plugin.check then
    local ok, r2, f2 = plugin.check(out, env or {})
    if not ok then
      if f2 then
        return nil, "field " .. f2 .. ": " .. tostring(r2)
      end
      return nil, tostring(r2 or "invalid config")
    end
  end
  return out
end


---------------------------------------------------------------------------
-- Composition
---------------------------------------------------------------------------

--- Sorts bindings { plugin=, conf= } by PRIORITY, highest first; ties by
-- name so the order never depends on table iteration.
function _M.sort(bindings)
  tbl_sort(bindings, function(a, b)
    if a.plugin.PRIORITY ~= b.plugin.PRIORITY then
      return a.plugin.PRIORITY > b.plugin.PRIORITY
    end
    return a.plugin.name < b.plugin.name
  end)
  return bindings
end


local function bind_req(fn, conf)
  return function(req) return fn(conf, req, req.ctx) end
end

local function bind2(fn, conf)
  return function(x, ctx) return fn(conf, x, ctx) end
end


-- One on_message for the core from several hooks, run in order: a string
-- replaces the message for the next hook, true passes it unchanged, nil
-- drops it, false closes (with code and reason). The first drop or close
-- wins.
local function chain_messages(fns)
  local n = #fns
  if n == 1 then return fns[1] end
  return function(msg, ctx)
    local changed = false
    for i = 1, n do
      local r, code, reason = fns[i](msg, ctx)
      if r == nil then
        return nil
      elseif r == false then
        return false, code, reason
      elseif type(r) == "string" then
        if r ~= msg.data then
          msg.data = r
          changed = true
        end
      end
    end
    if changed then return msg.data end
    return true
  end
end


-- Plugins at or above this PRIORITY run their access phase before the
-- access hooks of the route's groups (which are how a group authenticates):
-- the authentication plugins (jwt-auth 2510, key-auth 2500, forward-auth
-- 2002) and those that must come before any authentication (request-id,
-- request-size-limit, cors preflights, ip-restriction). Plugins below it
-- (rate-limit, headers...) may rely on who the client is.
_M.AUTH_PRIORITY = 2000


--- Fills a normalized route's phase lists from `bindings` (sorted, see
-- sort()): access = rewrite phases, then the access phases of plugins with
-- PRIORITY >= AUTH_PRIORITY, then the access hooks of the route's groups
-- (the first route.group_access of route.access), then the other plugins'
-- access phases, then the route's own access hooks; header_filter, log,
-- websocket.ws_open and ws_close = the plugins' then the route's (groups'
-- first); websocket.on_message = one function that runs the plugins'
-- ws_message then the route's own on_message. With no bindings the route
-- is left as it is (its groups' hooks already come first).
function _M.compose(route, bindings)
  if #bindings == 0 then return route end
  local access, hf, log = {}, {}, {}
  local ws_open, ws_msg, ws_close = {}, {}, {}
  local own, ngroup = route.access or {}, route.group_access or 0
  for _, b in ipairs(bindings) do
    if b.plugin.rewrite then access[#access + 1] = bind_req(b.plugin.rewrite, b.conf) end
  end
  for _, b in ipairs(bindings) do
    if b.plugin.access and b.plugin.PRIORITY >= _M.AUTH_PRIORITY then
      access[#access + 1] = bind_req(b.plugin.access, b.conf)
    end
  end
  for i = 1, ngroup do access[#access + 1] = own[i] end
  for _, b in ipairs(bindings) do
    local p, conf = b.plugin, b.conf
    if p.access and p.PRIORITY < _M.AUTH_PRIORITY then
      access[#access + 1] = bind_req(p.access, conf)
    end
    if p.header_filter then hf[#hf + 1] = bind2(p.header_filter, conf) end
    if p.log then log[#log + 1] = bind2(p.log, conf) end
    if p.ws_open then ws_open[#ws_open + 1] = bind2(p.ws_open, conf) end
    if p.ws_message then ws_msg[#ws_msg + 1] = bind2(p.ws_message, conf) end
    if p.ws_close then ws_close[#ws_close + 1] = bind2(p.ws_close, conf) end
  end

  local function append(list, more)
    for _, f in ipairs(more or {}) do list[#list + 1] = f end
    return #list > 0 and list or nil
  end
  local rest = {}
  for i = ngroup + 1, #own do rest[#rest + 1] = own[i] end
  route.access = append(access, rest)
  route.header_filter = append(hf, route.header_filter)
  route.log = append(log, route.log)
  local ws = route.websocket
  if ws then
    ws.ws_open = append(ws_open, ws.ws_open)
    ws.ws_close = append(ws_close, ws.ws_close)
    if ws.on_message then ws_msg[#ws_msg + 1] = ws.on_message end
    ws.on_message = #ws_msg > 0 and chain_messages(ws_msg) or nil
  end
  return route
end


--- True when the plugin has only WebSocket phases.
function _M.ws_only(plugin)
  for _, ph in ipairs(_M.PHASES) do
    if plugin[ph] and not WS_PHASES[ph] then return false end
  end
  return true
end


---------------------------------------------------------------------------
-- Applying plugins to a generation
---------------------------------------------------------------------------

-- Line of `plugins = { ... name ... }` in the conf text: the first `name`
-- key after the first `plugins` key. A heuristic, like the loader's: right
-- about the file, close about the line. 1 when nothing is found.
local function conf_line(text, name)
  if not text then return 0 end
  local function line_of(pos)
    local n = 1
    for _ in str_gmatch(str_sub(text, 1, pos - 1), "\n") do n = n + 1 end
    return n
  end
  local p = str_find(text, "%f[%w_]plugins%s*=")
  if not p then return 1 end
  local e = str_gsub(name, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  local q = str_find(text, "%[%s*[\"']" .. e .. "[\"']%s*%]", p)
    or str_find(text, "%f[%w_]" .. e .. "%s*=", p)
  return line_of(q or p)
end


-- A stable label for a route, for plugins that keep state per route
-- (conf._route): the same route keeps it across reloads and workers.
local function route_label(server, r)
  local parts = { server or "main" }
  if r.name then
    parts[#parts + 1] = r.name
  else
    parts[#parts + 1] = r.methods and tbl_concat(r.methods, ",") or "*"
    parts[#parts + 1] = r.host or "*"
    parts[#parts + 1] = r.rule
  end
  return tbl_concat(parts, " ")
end


local ApplyFail = {}

local function apply_fail(msg)
  error(setmetatable({ msg = msg }, ApplyFail), 0)
end


-- "file:line: plugin <name>: reason", or for an error inside the plugin's
-- own files, that position first.
local function plugin_error(file, line, name, reason)
  if str_find(reason, "^[^\n]-:%d+: ") then
    apply_fail(str_format("%s (plugin %s, enabled at %s:%d)", reason, name, file, line))
  end
  apply_fail(str_format("%s:%d: plugin %s: %s", file, line, name, reason))
end


local function shallow_copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end


local function apply_routes(reg, routes, global, server, env)
  for _, r in ipairs(routes) do
    local own = r.plugins
    local bindings = {}
    local seen = {}
    if own ~= nil then
      for _, name in ipairs(sorted_keys(own)) do
        local c = own[name]
        if type(name) ~= "string" then
          plugin_error(r.file, r.line, tostring(name), "expected plugins = { [\"name\"] = conf }")
        end
        seen[name] = true
        if c ~= false then
          local plugin, err = reg:get(name)
          if not plugin then plugin_error(r.file, r.line, name, err) end
          local ws_ok = r.websocket and r.websocket.mode ~= "tunnel"
          if _M.ws_only(plugin) and not ws_ok then
            plugin_error(r.file, r.line, name,
                         "applies to WebSocket routes in relay or handler mode only")
          end
          local renv = shallow_copy(env)
          renv.route = r
          local conf, cerr = _M.configure(plugin, c, renv)
          if not conf then plugin_error(r.file, r.line, name, cerr) end
          conf._route = route_label(server, r)
          bindings[#bindings + 1] = { plugin = plugin, conf = conf }
        end
      end
    end
    for _, g in ipairs(global or {}) do
      if not seen[g.plugin.name] then
        local ws_ok = r.websocket and r.websocket.mode ~= "tunnel"
        if ws_ok or not _M.ws_only(g.plugin) then
          local conf = shallow_copy(g.conf)
          conf._route = route_label(server, r)
          bindings[#bindings + 1] = { plugin = g.plugin, conf = conf }
        end
      end
    end
    if #bindings > 0 then
      _M.sort(bindings)
      _M.compose(r, bindings)
      local names = {}
      for i, b in ipairs(bindings) do names[i] = b.plugin.name end
      r.plugin_names = names
    end
  end
end


--- Applies plugins to a generation loaded by moongate.loader: the global
-- ones (conf `plugins`) to every route of the main table, each route's own
-- (route `plugins`, overriding a global plugin of the same name; false
-- turns it off there) to that route.
-- opts: root (project root), conf_file, conf_text, global (conf `plugins`
-- as written), upstreams (name -> upstream), shared_dicts (name -> bytes),
-- redis (the conf's normalized redis section, or nil).
-- Returns true, or nil and "file:line: reason".
function _M.apply(gen, opts)
  local reg = _M.new({ root = opts.root })
  -- shared_dicts: the loader's list { { name =, size = } } or a map
  local dicts = {}
  for k, v in pairs(opts.shared_dicts or {}) do
    if type(v) == "table" and v.name then
      dicts[v.name] = v.size
    else
      dicts[k] = v
    end
  end
  local env = { root = opts.root, upstreams = opts.upstreams or {}, shared_dicts = dicts,
                redis = opts.redis }
  local ok, res = pcall(function()
    local global = {}
    local raw = opts.global
    if raw ~= nil then
      if type(raw) ~= "table" then
        apply_fail(str_format("%s:%d: plugins: expected a table, got %s", opts.conf_file,
                              conf_line(opts.conf_text, "plugins"), type(raw)))
      end
      for _, name in ipairs(sorted_keys(raw)) do
        local line = conf_line(opts.conf_text, tostring(name))
        if type(name) ~= "string" then
          plugin_error(opts.conf_file, line, tostring(name),
                       "expected plugins = { [\"name\"] = conf }")
        end
        if raw[name] ~= false then
          local plugin, err = reg:get(name)
          if not plugin then plugin_error(opts.conf_file, line, name, err) end
          local conf, cerr = _M.configure(plugin, raw[name], env)
          if not conf then plugin_error(opts.conf_file, line, name, cerr) end
          conf._route = "global"
          global[#global + 1] = { plugin = plugin, conf = conf }
        end
      end
    end
    apply_routes(reg, gen.routes or {}, global, nil, env)
    for _, srv in ipairs(gen.servers or {}) do
      apply_routes(reg, srv.routes or {}, nil, srv.name, env)
    end
    local names = {}
    for i, g in ipairs(global) do names[i] = g.plugin.name end
    return names
  end)
  if not ok then
    if getmetatable(res) == ApplyFail then return nil, res.msg end
    error(res, 0)
  end
  return true, res
end


_M.deep_copy = deep_copy
_M.phase_set = PHASE_SET

return _M
