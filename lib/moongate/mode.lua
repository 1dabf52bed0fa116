-- moongate.mode: what the loader (lib/moongate/loader.lua) tells the
-- scripts it loads, and what they tell the operator back.
--
--  * mode.demo: the conf's `demo` (MOONGATE_DEMO=0|1 overrides it). The
--    embedded demo Runtime and the demo's static tokens are on only in demo
--    mode (`make run`); the container and `make install` defaults have it off.
--  * mode.note(level, fmt, ...): a line ("info" or "warn") the master logs
--    once per load (at start and on every reload), not once per worker.
--
-- The loader resets both at the start of every load.

local str_format = string.format

local _M = { _VERSION = "0.1.0", demo = false, notes = {} }

function _M.note(level, fmt, ...)
  local notes = _M.notes
  notes[#notes + 1] = { level == "warn" and "warn" or "info", str_format(fmt, ...) }
end

function _M.reset(demo)
  _M.demo = demo == true
  _M.notes = {}
  return _M.notes
end

return _M
