-- request-id: every request carries an id, kept from the client or
-- generated, passed on to the upstream (and WebSocket relay handshakes),
-- echoed in the response, and left in ctx.request_id for later phases and
-- log hooks.
local moongate = require "moongate"

local type = type
local tostring = tostring
local tonumber = tonumber
local find = string.find
local format = string.format
local lower = string.lower
local sub = string.sub
local byte = string.byte

local _M = {
  name = "request-id",
  VERSION = "0.1.0",
  PRIORITY = 22100, -- first: every later phase and answer can name the id
}

local VALID = "^[%w%-_%.]+$"
local seq = 0

local function hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

-- 32 hex digits. The core's id for this request is 128 random bits: reuse
-- it when it is one of the core's own, else derive a fresh one.
local function random_hex(req)
  local id = req.id
  if type(id) == "string" and #id == 32 and not find(id, "[^0-9a-f]") then
    return id
  end
  seq = seq + 1
  local crypto = moongate.crypto
  local seed = tostring(id) .. ":" .. moongate.now() .. ":" .. seq .. ":"
               .. tostring(moongate.worker_id)
  return sub(hex(crypto.sha256(seed)), 1, 32)
end

local function uuid(h)
  -- version 4, variant 10xx
  local variant = format("%x", 8 + tonumber(sub(h, 17, 17), 16) % 4)
  return sub(h, 1, 8) .. "-" .. sub(h, 9, 12) .. "-4" .. sub(h, 14, 16) .. "-"
         .. variant .. sub(h, 18, 20) .. "-" .. sub(h, 21, 32)
end

function _M.check(conf)
  conf._lower = lower(conf.header_name)
  return true
end

function _M.access(conf, req, ctx)
  local name = conf._lower
  local id
  if name == "x-request-id" then
    -- the core keeps a valid client id (at most 36 characters) or makes
    -- one, and sends it upstream itself: a second header would duplicate it
    -- (keep_incoming and generator apply to other header names)
    id = req.id
  else
    local incoming = conf.keep_incoming and req.headers[name]
    if incoming and #incoming <= conf.max_length and find(incoming, VALID) then
      id = incoming
    else
      local h = random_hex(req)
      id = conf.generator == "uuid" and uuid(h) or h
    end
    req:set_header(conf.header_name, id)
  end
  ctx.request_id = id
end

function _M.header_filter(conf, res, ctx)
  if conf.echo_downstream and ctx.request_id then
    res.headers[conf._lower] = ctx.request_id
  end
end

return _M
