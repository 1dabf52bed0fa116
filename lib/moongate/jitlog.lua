-- moongate.jitlog: LuaJIT's trace events (what `luajit -jv` prints) into a
-- file, for checking that hooks and plugins compile. Started by init.lua
-- when MOONGATE_JIT_LOG=path is set (docs/performance.md). Each Lua state
-- (every worker, every generation) appends to the same file, one line per
-- event, prefixed with "w<worker id>":
--
--   w0 [TRACE   3 jwt-auth/handler.lua:262 return]
--   w0 [TRACE --- moongate/init.lua:40 -- NYI: bytecode 51 at moongate/init.lua:47]
--
-- The format after the prefix is jit.v's ("TRACE ---" is an abort), with
-- the last two parts of each file's path. Debug only: every event is a
-- write and a flush.
local jit = require "jit"
local jutil = require "jit.util"
local vmdef = require "jit.vmdef"

local format = string.format
local type = type
local io_open = io.open

local _M = {}

local funcinfo, traceinfo = jutil.funcinfo, jutil.traceinfo

-- "dir/file.lua:line": the last two parts of the chunk's path (jit.v gives
-- the file name alone, and every plugin is a handler.lua)
local function fmtfunc(func, pc)
  local fi = funcinfo(func, pc)
  if fi.loc then
    local src = fi.source and fi.source:gsub("^@", "")
    if src and fi.currentline then
      return (src:match("([^/]*/[^/]*)$") or src) .. ":" .. fi.currentline
    end
    return fi.loc
  elseif fi.ffid then
    return vmdef.ffnames[fi.ffid]
  elseif fi.addr then
    return format("C:%x", fi.addr)
  end
  return "(?)"
end

local function fmterr(err, info)
  if type(err) == "number" then
    if type(info) == "function" then info = fmtfunc(info) end
    err = format(vmdef.traceerr[err], info)
  end
  return err
end

--- start(path, who): who() names the writer (a worker id) at each event.
function _M.start(path, who)
  local out = io_open(path, "a")
  if not out then return nil, "cannot open " .. path end
  out:setvbuf("full")
  local startloc, startex = "?", ""
  local function put(s)
    out:write(who(), " ", s, "\n")
    out:flush()
  end
  jit.attach(function(what, tr, func, pc, otr, oex)
    if what == "start" then
      startloc = fmtfunc(func, pc)
      startex = otr and ("(" .. otr .. "/" .. (oex == -1 and "stitch" or oex) .. ") ") or ""
    elseif what == "abort" then
      local loc = fmtfunc(func, pc)
      put(format("[TRACE --- %s%s -- %s%s]", startex, startloc, fmterr(otr, oex),
        loc ~= startloc and (" at " .. loc) or ""))
    elseif what == "stop" then
      local info = traceinfo(tr)
      local link, ltype = info.link, info.linktype
      if ltype == "interpreter" then
        put(format("[TRACE %3s %s%s -- fallback to interpreter]", tr, startex, startloc))
      elseif ltype == "stitch" then
        put(format("[TRACE %3s %s%s %s %s]", tr, startex, startloc, ltype, fmtfunc(func, pc)))
      elseif link == tr or link == 0 then
        put(format("[TRACE %3s %s%s %s]", tr, startex, startloc, ltype))
      elseif ltype == "root" then
        put(format("[TRACE %3s %s%s -> %d]", tr, startex, startloc, link))
      else
        put(format("[TRACE %3s %s%s -> %d %s]", tr, startex, startloc, link, ltype))
      end
    else
      put(format("[TRACE %s]", what))
    end
  end, "trace")
  return true
end

return _M
