-- moongate: the module handlers and plugins use (`local moongate = require "moongate"`).
-- The C core provides `moongate.core`; this file gives it a friendly shape and
-- registers the coroutine entry point the core starts every Lua handler with.
local core = require "moongate.core"
local cjson = require "cjson.safe"
local new_tab = require "table.new" -- LuaJIT: a table with its hash part sized
local cjson_strict = require "cjson" -- raises: an unencodable response is a 500

local type = type
local pairs = pairs
local tostring = tostring
local concat = table.concat
local char = string.char
local tonumber = tonumber
local gsub = string.gsub
local gmatch = string.gmatch
local find = string.find
local sub = string.sub
local setmetatable = setmetatable
local select = select
local next = next
local lower = string.lower
local ipairs = ipairs

local _M = { _VERSION = core.version, core = core, json = cjson }

local function unescape(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function escape(s)
    return (gsub(tostring(s), "[^%w%-%._~]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end

--- Decodes "a=1&b=2" into { a = "1", b = "2" } (a repeated key keeps the last value).
function _M.decode_query(qs)
    local t = {}
    if not qs or qs == "" then return t end
    for pair in gmatch(qs, "[^&]+") do
        local eq = find(pair, "=", 1, true)
        if eq then
            t[unescape(sub(pair, 1, eq - 1))] = unescape(sub(pair, eq + 1))
        else
            t[unescape(pair)] = ""
        end
    end
    return t
end

--- How many times the query string `qs` names `name` (names decoded as
--- decode_query decodes them, so "tenant%5Fid" is "tenant_id").
function _M.query_count(qs, name)
    local n = 0
    if not qs or qs == "" then return 0 end
    for pair in gmatch(qs, "[^&]+") do
        local eq = find(pair, "=", 1, true)
        if unescape(eq and sub(pair, 1, eq - 1) or pair) == name then
            n = n + 1
        end
    end
    return n
end

function _M.encode_query(t)
    if type(t) == "string" then return t end
    local out = {}
    for k, v in pairs(t) do
        out[#out + 1] = escape(k) .. "=" .. escape(v)
    end
    table.sort(out)
    return concat(out, "&")
end

-- request objects: tables built by the core with method and path; the
-- fields below are made on first read.
local req_mt = {}
local LAZY = { headers = true, params = true, id = true, http_version = true,
               remote_addr = true, query_string = true, websocket = true }
req_mt.__index = function(req, k)
    local m = req_mt[k]
    if m ~= nil then return m end
    if LAZY[k] then return core.req_fill(req, k) end
    if k == "query" then
        local q = _M.decode_query(req.query_string)
        req.query = q
        return q
    end
end
--- The client's header `name` (any case) as received, repeated ones joined
--- with ", "; nil when absent. Cheaper than req.headers for one header.
req_mt.header = core.req_header
function req_mt.body() return core.req_body() end
function req_mt.read() return core.req_read() end
--- Sets a header for the upstream (proxy, and WebSocket relay/tunnel
--- handshakes), replacing the client's; a nil value removes the client's.
req_mt.set_header = core.req_set_header
--- Sets a header on the response the client gets (from an access hook:
--- proxied and handler responses, and a later hook's refusal), replacing
--- the upstream's of that name; header_filter hooks still see it.
req_mt.set_response_header = core.req_set_response_header

-- header_filter hooks: res = { status, headers } edited in place.
local HOP = {
    connection = true, ["keep-alive"] = true, te = true, trailer = true,
    ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
}

-- res.headers is a proxy: reading a name (any case) sees the response's
-- header, writing records a change (nil removes). Nothing is copied unless a
-- hook asks, so a filter that only adds a header stays cheap.
local function header_proxy(lookup)
    local changes = {}
    return setmetatable({}, {
        __index = function(_, k)
            k = lower(k)
            local v = changes[k]
            if v ~= nil then return v or nil end
            return lookup(k)
        end,
        __newindex = function(_, k, v)
            if v == nil then v = false end -- false marks a removal
            changes[lower(k)] = v
        end,
    }), changes
end

-- Handler responses: headers is a table (lower-case names), edited in place.
local function filter_head(list, status, headers, ctx)
    headers = headers or {}
    local proxy, changes = header_proxy(function(k) return headers[k] end)
    local res = { status = status, headers = proxy }
    for i = 1, #list do list[i](res, ctx) end
    for k, v in pairs(changes) do headers[k] = v or nil end
    return res.status, headers
end

local function lower_keys(h)
    local out = {}
    for k, v in pairs(h or {}) do out[tostring(k):lower()] = v end
    return out
end

local res_mt = {}
res_mt.__index = res_mt
function res_mt:status(n) self._status = n; return self end
function res_mt:header(name, value)
    self._headers = self._headers or {}
    self._headers[name] = value
    return self
end
function res_mt:write(chunk)
    if not self.started and self._filter then
        -- req:set_response_header()'s headers, for the filters to see
        local h = core.resp_headers_into(lower_keys(self._headers))
        self._status, self._headers = filter_head(self._filter, self._status or 200, h, self._ctx)
    end
    self.started = true
    return core.res_write(self._status or 200, self._headers, tostring(chunk))
end

local function encode_body(body)
    if type(body) == "table" then
        return cjson_strict.encode(body), "application/json"
    elseif body == nil then
        return "", nil
    end
    return tostring(body), "text/plain; charset=utf-8"
end

-- The core starts every handler coroutine here: handler(req, res), then the
-- response from its return values (status, body, headers) unless it streamed.
local function respond(status, body, headers, res)
    local data, ctype = encode_body(body)
    if type(status) ~= "number" then
        status = res and res._status or 200
    end
    if res and res._headers then
        headers = headers or {}
        for k, v in pairs(res._headers) do
            if headers[k] == nil then headers[k] = v end
        end
    end
    if res and res._filter then
        headers = core.resp_headers_into(lower_keys(headers))
        if ctype and headers["content-type"] == nil then headers["content-type"] = ctype end
        status, headers = filter_head(res._filter, status, headers, res._ctx)
    end
    core.res_send(status, data, headers, ctype)
end

-- Access hooks in order; the first to return a status answers (through
-- the route's header_filter hooks, so a refusal gets CORS headers too).
local function check_access(access, req, header_filter)
    for i = 1, #access do
        local status, body, headers = access[i](req)
        if status ~= nil then
            respond(status, body, headers,
                    header_filter and { _filter = header_filter, _ctx = req.ctx } or nil)
            return false
        end
    end
    return true
end

-- Upstream and WebSocket routes: the hooks run in a coroutine of their own.
debug.getregistry()["moongate.run_access"] = function(access, req, header_filter)
    -- req comes with its metatable (req_mt); ctx sized for a few plugins' keys
    if rawget(req, "ctx") == nil then req.ctx = new_tab(0, 4) end
    if check_access(access, req, header_filter) then
        core.access_done()
    end
end

-- For proxied responses: the edited head as "Name: value\r\n" text.
-- Proxied responses: `lines` is the head as "Name: value\r\n" text. Returns
-- the status, the names to drop ("\nname\n..."; every changed name) and
-- the lines to add.
debug.getregistry()["moongate.run_header_filter"] = function(list, status, lines, ctx)
    local lowered
    local proxy, changes = header_proxy(function(k)
        lowered = lowered or "\n" .. lower(lines)
        local at = find(lowered, "\n" .. k .. ": ", 1, true)
        if not at then return nil end
        local from = at + #k + 2 -- in `lines`, shifted by the leading "\n"
        return sub(lines, from, (find(lines, "\r", from, true) or #lines + 1) - 1)
    end)
    local res = { status = status, headers = proxy }
    for i = 1, #list do list[i](res, ctx) end
    if next(changes) == nil then return res.status, "", "" end
    local drop, add = { "\n" }, {}
    for name, v in pairs(changes) do
        drop[#drop + 1] = name .. "\n"
        if v and not HOP[name] and not find(name, "^proxy%-") and name ~= "date" then
            local vals = type(v) == "table" and v or { v }
            for _, one in ipairs(vals) do
                one = tostring(one)
                -- a token name; no control character but HTAB in a value (RFC 9110 5.5)
                if not find(name, "^[%w!#$%%&'*+.^_`|~-]+$") or find(one, "[%z\1-\8\10-\31\127]") then
                    error("header_filter: bad header " .. name, 0)
                end
                add[#add + 1] = name .. ": " .. one .. "\r\n"
            end
        end
    end
    return res.status, concat(drop), concat(add)
end

debug.getregistry()["moongate.run_hooks"] = function(list, info, ctx)
    for i = 1, #list do list[i](info, ctx) end
end

local function run(handler, req, access, header_filter)
    req.ctx = new_tab(0, 4)
    if access and not check_access(access, req, header_filter) then return end
    local res = setmetatable({ _filter = header_filter, _ctx = req.ctx }, res_mt)
    local status, body, headers = handler(req, res)
    if res.started then return end
    respond(status, body, headers, res)
end
debug.getregistry()["moongate.run"] = run
debug.getregistry()["moongate.req_mt"] = req_mt

-- moongate.http: a non-blocking client; the calling coroutine yields until
-- the response (or an error) arrives.
local http = {}
_M.http = http

-- A streamed response (stream = true): resp:read() -> the next chunk, nil at
-- the end (or nil, err); resp:close() drops the rest.
local stream_mt = { __index = {
    read = function(self) return core.http_read(self._stream) end,
    close = function(self) return core.http_close(self._stream) end,
} }

--- opts: method, upstream (name) or url ("http://host:port"), path, query
--- (table or string), headers, body (string, or table sent as JSON), timeout (s),
--- max_body (bytes, buffered responses; default 16 MiB), stream (boolean).
--- Returns resp { status, headers, body } or nil, err.
function http.request(opts)
    local method = opts.method or "GET"
    local target = opts.path or "/"
    if opts.query then
        local q = _M.encode_query(opts.query)
        if q ~= "" then target = target .. (find(target, "?", 1, true) and "&" or "?") .. q end
    end
    local body, headers = opts.body, opts.headers
    if type(body) == "table" then
        body = cjson.encode(body)
        headers = headers or {}
        local has = false
        for k in pairs(headers) do
            if k:lower() == "content-type" then has = true end
        end
        if not has then headers["Content-Type"] = "application/json" end
    end
    local url = opts.url
    if url then
        local base, path = url:match("^(http://[^/]+)(/.*)$")
        if base then
            url = base
            if not opts.path then target = path end
        end
    end
    if opts.stream then
        local resp, err = core.http_request(method, opts.upstream, url, target, headers, body,
            opts.timeout, opts.max_body, true)
        if not resp then return nil, err end
        return setmetatable(resp, stream_mt)
    end
    return core.http_request(method, opts.upstream, url, target, headers, body, opts.timeout,
        opts.max_body)
end

function http.get(upstream, path, opts)
    opts = opts or {}
    opts.method = "GET"
    if find(upstream, "^http://") then opts.url = upstream else opts.upstream = upstream end
    opts.path = path
    return http.request(opts)
end

--- Decodes a response body as JSON: returns value or nil, err.
function http.json(resp)
    if not resp then return nil, "no response" end
    return cjson.decode(resp.body)
end

_M.crypto = core.crypto

-- moongate.shared.<name>: the conf's shared_dicts, opened on first use
_M.shared = setmetatable({}, { __index = function(t, name)
    local d = core.shdict(name)
    if d then rawset(t, name, d) end
    return d
end })

_M.sleep = core.sleep
_M.timer = core.timer
_M.now = core.now
_M.time = core.time
-- moongate.worker_id: this worker's index (0-based), read when asked since
-- the module loads before the workers fork
setmetatable(_M, { __index = function(_, k)
    if k == "worker_id" then return core.worker_id() end
end })

local log_mt = {
    __call = function(_, level, ...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do parts[i] = tostring((select(i, ...))) end
        core.log(level, concat(parts, " "))
    end,
}
_M.log = setmetatable({}, log_mt)
for _, lvl in pairs({ "debug", "info", "warn", "error" }) do
    _M.log[lvl] = function(...) _M.log(lvl, ...) end
end

return _M
