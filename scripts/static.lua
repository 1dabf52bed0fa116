-- static: serves the files of public/ (the project's, next to scripts/).
-- Files are read when the routes load (at start and on every SIGHUP), so a
-- request never touches the disk; edit a file, reload, and it is served.
local moongate = require "moongate"
local api = require "json_api"

local io_open = io.open
local match = string.match

local _M = { _VERSION = "0.1.0" }

local TYPES = {
  html = "text/html; charset=utf-8",
  js = "text/javascript; charset=utf-8",
  css = "text/css; charset=utf-8",
  svg = "image/svg+xml",
  png = "image/png",
  ico = "image/x-icon",
  json = "application/json",
  txt = "text/plain; charset=utf-8",
}

-- scripts/static.lua -> <root>/public
local here = debug.getinfo(1, "S").source:gsub("^@", "")
local scripts_dir = match(here, "^(.*)/[^/]*$") or "."
_M.dir = (match(scripts_dir, "^(.*)/[^/]*$") or ".") .. "/public"
if scripts_dir == "." or scripts_dir == "scripts" then
  _M.dir = "public"
end

local function read(name)
  local f = io_open(_M.dir .. "/" .. name, "rb")
  if not f then
    return nil
  end
  local data = f:read("*a")
  f:close()
  return data
end

--- A handler serving public/<name> (read now). A missing file answers 404.
function _M.file(name)
  local data = read(name)
  local ctype = TYPES[match(name, "%.(%w+)$") or ""] or "application/octet-stream"
  return function()
    if not data then
      return api.answer(api.err(404, "not_found", "no such file"))
    end
    return 200, data, { ["Content-Type"] = ctype, ["Cache-Control"] = "no-cache" }
  end
end

return moongate.module("static", _M)
