-- hello-header: the worked example of docs/plugins.md.
--
-- access:        greets ?name= (default "world"), refuses blocked names
--                with 403, and tells the upstream about the greeting
-- header_filter: echoes the greeting in the response head
-- log:           counts greetings per worker
local lower = string.lower

local _M = {
  name = "hello-header",
  VERSION = "1.0.0",
  PRIORITY = 500, -- after authentication (2500) and rate limits (1001)
}

local greeted = 0 -- per worker: each worker has its own Lua state

-- Load time, once per config: derive what every request would otherwise
-- recompute. Return nil, reason, field to refuse the config.
function _M.check(conf)
  for _, name in ipairs(conf.blocked) do
    if name == "" then
      return nil, "names must not be empty", "blocked"
    end
  end
  conf._header = lower(conf.header) -- response heads use lower-case names
  local set = {}
  for _, name in ipairs(conf.blocked) do set[name] = true end
  conf._blocked = set
  return true
end

function _M.access(conf, req, ctx)
  local name = req.query.name or "world"
  if conf._blocked[name] then
    return 403, { error = "not welcome", name = name }
  end
  ctx.hello = conf.greeting .. ", " .. name
  req:set_header(conf.header, ctx.hello)
end

function _M.header_filter(conf, res, ctx)
  if ctx.hello then
    res.headers[conf._header] = ctx.hello
  end
end

function _M.log(_, entry, ctx)
  if ctx.hello and entry.status < 400 then
    greeted = greeted + 1
  end
end

-- for specs and debugging
function _M.count()
  return greeted
end

return _M
