-- WebSocket helpers for moongate's integration specs (LuaJIT).
--
--  * start_upstream(): spec/fixtures/ws_upstream.py (python3-websockets) on
--    127.0.0.1, with its /__log of connections.
--  * A raw RFC 6455 client over luasocket for frame-level tests: any opcode,
--    RSV bits, masked or not, fragments, arbitrary payload and declared
--    length; frames read back and parsed; close code and reason; the 101
--    head of the handshake. Bit operations use LuaJIT's `bit`.
--  * permessage-deflate (RFC 7692) through LuaJIT's ffi to zlib: raw deflate
--    and inflate with any window size, context kept or not.
--  * py_client()/node_client(): the scripted real clients in spec/fixtures
--    (python3-websockets, node ws); they return the decoded JSON report.
--
-- Every process started here is remembered by pid and only those pids are
-- signalled (cleanup()).
local helpers = require "spec.helpers"
local socket = require "socket"
local bit = require "bit"
local ffi = require "ffi"
local cjson = require "cjson"

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local lshift, rshift, rol = bit.lshift, bit.rshift, bit.rol
local byte, char, sub, fmt, rep = string.byte, string.char, string.sub, string.format, string.rep
local concat = table.concat

local _M = { _VERSION = "0.1.0", json = cjson }

_M.upstream_py = helpers.root .. "/spec/fixtures/ws_upstream.py"
_M.client_py = helpers.root .. "/spec/fixtures/ws_client.py"
_M.client_js = helpers.root .. "/spec/fixtures/ws_client.js"

_M.OP = { cont = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }

-- Lua source for a routes script: a local `echo` WebSocket handler that
-- sends every message back as it came, until the socket ends
_M.ECHO_HANDLER_SRC = [[
local function echo(ws)
  while true do
    local data, kind = ws:recv()
    if not data then break end
    ws:send(data, kind)
  end
end
]]

-- sha1 / base64 ---------------------------------------------------------------

local function u32be(n)
    return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255),
        band(rshift(n, 8), 255), band(n, 255))
end

-- SHA-1 of a string (raw 20 bytes). Small inputs only (handshake keys).
function _M.sha1(msg)
    local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    local ml = #msg * 8
    msg = msg .. "\128" .. rep("\0", (55 - #msg) % 64) .. u32be(0) .. u32be(ml)
    assert(#msg % 64 == 0)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 0, 15 do
            local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
            w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
        end
        for i = 16, 79 do
            w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
        end
        local a, b, c, d, e = h0, h1, h2, h3, h4
        for i = 0, 79 do
            local f, k
            if i < 20 then
                f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
            elseif i < 40 then
                f, k = bxor(b, c, d), 0x6ED9EBA1
            elseif i < 60 then
                f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
            else
                f, k = bxor(b, c, d), 0xCA62C1D6
            end
            local temp = bit.tobit(rol(a, 5) + f + e + k + w[i])
            e, d, c, b, a = d, c, rol(b, 30), a, temp
        end
        h0, h1, h2, h3, h4 = bit.tobit(h0 + a), bit.tobit(h1 + b), bit.tobit(h2 + c),
            bit.tobit(h3 + d), bit.tobit(h4 + e)
    end
    return u32be(h0) .. u32be(h1) .. u32be(h2) .. u32be(h3) .. u32be(h4)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function _M.base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local n = lshift(a, 16) + lshift(b or 0, 8) + (c or 0)
        local c1 = band(rshift(n, 18), 63) + 1
        local c2 = band(rshift(n, 12), 63) + 1
        local c3 = band(rshift(n, 6), 63) + 1
        local c4 = band(n, 63) + 1
        out[#out + 1] = sub(B64, c1, c1) .. sub(B64, c2, c2)
            .. (b and sub(B64, c3, c3) or "=") .. (c and sub(B64, c4, c4) or "=")
    end
    return concat(out)
end

function _M.hex(s)
    return (s:gsub(".", function(c) return fmt("%02x", byte(c)) end))
end

function _M.unhex(h)
    return (h:gsub("%x%x", function(x) return char(tonumber(x, 16)) end))
end

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

function _M.accept_for(key)
    return _M.base64(_M.sha1(key .. GUID))
end

math.randomseed(os.time() + math.floor(socket.gettime() * 1000) % 100000)

function _M.random_bytes(n)
    local t = {}
    for i = 1, n do
        t[i] = char(math.random(0, 255))
    end
    return concat(t)
end

function _M.new_key()
    return _M.base64(_M.random_bytes(16))
end

-- A deterministic binary pattern of n bytes (all 256 byte values).
function _M.pattern(n, seed)
    local buf = ffi.new("uint8_t[?]", n)
    local s = seed or 7
    for i = 0, n - 1 do
        buf[i] = band(i * 31 + s + rshift(i, 8), 255)
    end
    return ffi.string(buf, n)
end

-- processes ------------------------------------------------------------------

local started = {}
local shq = helpers.shq

local function exec_ok(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

-- Starts spec/fixtures/ws_upstream.py; returns {port, pid, url, ws, dir}.
function _M.start_upstream()
    local dir = helpers.tmpdir("ws-upstream")
    local pidfile, outfile = dir .. "/pid", dir .. "/out.log"
    assert(exec_ok(fmt("%s %s --port 0 --pidfile %s > %s 2>&1 < /dev/null &",
        helpers.python, shq(_M.upstream_py), shq(pidfile), shq(outfile))), "cannot spawn ws_upstream.py")
    local port = helpers.wait_until(function()
        local s = helpers.read_file(outfile)
        return s and tonumber(s:match("PORT (%d+)"))
    end, 10)
    local pid = tonumber(helpers.read_file(pidfile) or "")
    if pid then
        started[pid] = true
    end
    if not port then
        _M.stop(pid)
        error("ws_upstream.py did not start: " .. (helpers.read_file(outfile) or ""))
    end
    return { port = port, pid = pid, dir = dir, url = "http://127.0.0.1:" .. port,
        ws = "ws://127.0.0.1:" .. port }
end

function _M.stop(pid)
    if not pid or not started[pid] then
        return
    end
    if helpers.alive(pid) then
        exec_ok(fmt("kill -TERM %d 2>/dev/null", pid))
        if not helpers.wait_until(function() return not helpers.alive(pid) end, 3) then
            exec_ok(fmt("kill -KILL %d 2>/dev/null", pid))
        end
    end
    started[pid] = nil
end

function _M.cleanup()
    for pid in pairs(started) do
        _M.stop(pid)
    end
end

-- The upstream's list of WebSocket connections seen (see ws_upstream.py).
function _M.upstream_log(up)
    local st, _, body = helpers.http(up.port, "GET", "/__log")
    assert(st == 200, "ws_upstream /__log failed: " .. tostring(st))
    return cjson.decode(body)
end

function _M.upstream_reset(up)
    assert(helpers.http(up.port, "GET", "/__reset") == 200)
end

-- The value of header `name` (case-insensitive) in a [[Name, value], ...] list:
-- every value, in order.
function _M.raw_header_values(raw, name)
    local out = {}
    for _, kv in ipairs(raw or {}) do
        if kv[1]:lower() == name:lower() then
            out[#out + 1] = kv[2]
        end
    end
    return out
end

-- CPU time (user + system) of pid, in seconds.
function _M.cpu_seconds(pid)
    local s = helpers.read_file("/proc/" .. pid .. "/stat")
    if not s then
        return nil
    end
    local rest = s:match("^%d+ %(.*%) (.*)$")
    local f = {}
    for x in rest:gmatch("%S+") do
        f[#f + 1] = x
    end
    -- rest starts at field 3 (state): utime is field 14, stime 15
    return (tonumber(f[12]) + tonumber(f[13])) / 100
end

-- real clients (fixtures) ------------------------------------------------------

local function client_cmd(kind, job)
    local prog = kind == "node" and ("node " .. shq(_M.client_js))
        or (helpers.python .. " " .. shq(_M.client_py))
    local t = (job.timeout or 5) + 3
    return fmt("timeout -s KILL %d %s %s", t, prog, shq(cjson.encode(job)))
end

local function decode_report(out)
    local line = out:match("(%b{})%s*$")
    local ok, rep_ = pcall(cjson.decode, line or "")
    if not ok or type(rep_) ~= "table" then
        return { error = "no report: " .. out, messages = {} }
    end
    rep_.raw_output = out
    return rep_
end

-- Runs the python3-websockets client on job (see ws_client.py); returns its report.
function _M.py_client(job)
    local out = helpers.sh(client_cmd("python", job))
    return decode_report(out)
end

function _M.node_client(job)
    local out = helpers.sh(client_cmd("node", job))
    return decode_report(out)
end

-- Starts a client in the background; returns a handle with :wait() -> report.
function _M.client_async(kind, job)
    local h = helpers.spawn(client_cmd(kind, job))
    return {
        done = h.done,
        wait = function(_, timeout)
            local out = h:wait(timeout or (job.timeout or 5) + 5)
            return decode_report(out or "")
        end,
    }
end

-- zlib (permessage-deflate) ------------------------------------------------------

pcall(ffi.cdef, [[
typedef struct mg_spec_z_stream_s {
    const unsigned char *next_in; unsigned avail_in; unsigned long total_in;
    unsigned char *next_out; unsigned avail_out; unsigned long total_out;
    const char *msg; void *state;
    void *zalloc; void *zfree; void *opaque;
    int data_type; unsigned long adler; unsigned long reserved;
} mg_spec_z_stream;
int deflateInit2_(mg_spec_z_stream *strm, int level, int method, int windowBits, int memLevel,
                  int strategy, const char *version, int stream_size);
int deflate(mg_spec_z_stream *strm, int flush);
int deflateEnd(mg_spec_z_stream *strm);
int inflateInit2_(mg_spec_z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(mg_spec_z_stream *strm, int flush);
int inflateEnd(mg_spec_z_stream *strm);
const char *zlibVersion(void);
]])

local zlib
local function z()
    if not zlib then
        local ok, lib = pcall(ffi.load, "z")
        zlib = ok and lib or ffi.load("libz.so.1")
    end
    return zlib
end

local Z_OK, Z_STREAM_END, Z_BUF_ERROR, Z_SYNC_FLUSH = 0, 1, -5, 2
local TAIL = "\0\0\255\255"

local function z_run(fn, strm_arr, input, flush)
    local strm = strm_arr[0]
    local inbuf = ffi.new("uint8_t[?]", #input + 1)
    ffi.copy(inbuf, input, #input)
    strm.next_in = inbuf
    strm.avail_in = #input
    local out = {}
    local CH = 65536
    local obuf = ffi.new("uint8_t[?]", CH)
    while true do
        strm.next_out = obuf
        strm.avail_out = CH
        local rc = fn(strm_arr, flush)
        local produced = CH - strm.avail_out
        if produced > 0 then
            out[#out + 1] = ffi.string(obuf, produced)
        end
        if rc == Z_STREAM_END then
            break
        end
        if rc ~= Z_OK and rc ~= Z_BUF_ERROR then
            local msg = strm.msg ~= nil and ffi.string(strm.msg) or ("zlib error " .. rc)
            return nil, msg
        end
        if strm.avail_in == 0 and strm.avail_out ~= 0 then
            break
        end
        if rc == Z_BUF_ERROR and produced == 0 then
            break
        end
    end
    return concat(out)
end

-- A raw-deflate compressor per RFC 7692 (window_bits 9..15, default 15).
-- :compress(msg) -> payload without the trailing 00 00 ff ff.
-- keep_context = false resets the window after every message.
function _M.deflater(window_bits, keep_context)
    local L = z()
    local self = { bits = window_bits or 15, keep = keep_context ~= false }
    local function init()
        local s = ffi.new("mg_spec_z_stream[1]")
        local rc = L.deflateInit2_(s, -1, 8, -self.bits, 8, 0, L.zlibVersion(),
            ffi.sizeof("mg_spec_z_stream"))
        assert(rc == Z_OK, "deflateInit2 failed: " .. rc)
        ffi.gc(s, function(p) L.deflateEnd(p) end)
        self.strm = s
    end
    init()
    function self.compress(_, msg)
        local out = assert(z_run(L.deflate, self.strm, msg, Z_SYNC_FLUSH))
        if out == "" then
            -- nothing new to flush (an empty message right after a flush):
            -- RFC 7692 7.2.3.6, an empty stored block is the single byte 0x00
            out = "\0"
        else
            assert(out:sub(-4) == TAIL, "sync flush tail missing")
            out = out:sub(1, -5)
        end
        if not self.keep then
            init()
        end
        return out
    end
    return self
end

-- A raw-deflate decompressor (window_bits 8..15). :decompress(payload) -> msg
-- or nil, err. The context is kept between messages (works for a sender
-- with or without context takeover) unless keep_context == false.
function _M.inflater(window_bits, keep_context)
    local L = z()
    local self = { bits = window_bits or 15, keep = keep_context ~= false }
    local function init()
        local s = ffi.new("mg_spec_z_stream[1]")
        local rc = L.inflateInit2_(s, -self.bits, L.zlibVersion(), ffi.sizeof("mg_spec_z_stream"))
        assert(rc == Z_OK, "inflateInit2 failed: " .. rc)
        ffi.gc(s, function(p) L.inflateEnd(p) end)
        self.strm = s
    end
    init()
    function self.decompress(_, payload)
        local out, err = z_run(L.inflate, self.strm, payload .. TAIL, Z_SYNC_FLUSH)
        if not self.keep then
            init()
        end
        return out, err
    end
    return self
end

-- Parses a Sec-WebSocket-Extensions value into
-- { {name = "permessage-deflate", params = {k = "v" | true}, raw = "..."}, ... }.
function _M.parse_extensions(value)
    local out = {}
    if not value then
        return out
    end
    for item in value:gmatch("[^,]+") do
        local parts = {}
        for p in item:gmatch("[^;]+") do
            parts[#parts + 1] = p:match("^%s*(.-)%s*$")
        end
        local e = { name = (parts[1] or ""):lower(), params = {}, raw = item:match("^%s*(.-)%s*$") }
        for i = 2, #parts do
            local k, v = parts[i]:match("^([^=]+)=(.*)$")
            if k then
                v = v:match('^"(.*)"$') or v
                e.params[k:match("^%s*(.-)%s*$"):lower()] = v
            else
                e.params[parts[i]:lower()] = true
            end
        end
        out[#out + 1] = e
    end
    return out
end

-- frames -----------------------------------------------------------------------

local function mask_bytes(payload, key)
    local n = #payload
    if n == 0 then
        return payload
    end
    local src = ffi.cast("const uint8_t *", payload)
    local dst = ffi.new("uint8_t[?]", n)
    local k = { byte(key, 1, 4) }
    for i = 0, n - 1 do
        dst[i] = bxor(src[i], k[band(i, 3) + 1])
    end
    return ffi.string(dst, n)
end
_M.mask_bytes = mask_bytes

local function len_bytes(n, form)
    if form == 7 or (not form and n < 126) then
        return n, ""
    elseif form == 16 or (not form and n < 65536) then
        return 126, char(band(rshift(n, 8), 255), band(n, 255))
    else
        local hi = math.floor(n / 4294967296)
        return 127, u32be(hi) .. u32be(n % 4294967296)
    end
end

-- Encodes one frame. f: opcode (number, default 1), payload (""), fin
-- (default true), rsv1/rsv2/rsv3 (booleans), mask (default true; false sends
-- it unmasked), mask_key (4 bytes, default random), length (the declared
-- payload length, default #payload), len_form (7|16|64: force that length
-- encoding).
function _M.frame(f)
    local payload = f.payload or ""
    local b1 = band(f.opcode or 1, 15)
    if f.fin ~= false then
        b1 = bor(b1, 0x80)
    end
    if f.rsv1 then
        b1 = bor(b1, 0x40)
    end
    if f.rsv2 then
        b1 = bor(b1, 0x20)
    end
    if f.rsv3 then
        b1 = bor(b1, 0x10)
    end
    local masked = f.mask ~= false
    local l7, ext = len_bytes(f.length or #payload, f.len_form)
    local b2 = l7
    if masked then
        b2 = bor(b2, 0x80)
    end
    local head = char(b1, b2) .. ext
    if masked then
        local key = f.mask_key or _M.random_bytes(4)
        return head .. key .. mask_bytes(payload, key)
    end
    return head .. payload
end

-- Payload of a close frame: code (number or nil) and reason.
function _M.close_payload(code, reason)
    if not code then
        return reason or ""
    end
    return char(band(rshift(code, 8), 255), band(code, 255)) .. (reason or "")
end

function _M.is_heartbeat(data)
    if type(data) ~= "string" or data:sub(1, 1) ~= "{" then
        return false
    end
    local ok, t = pcall(cjson.decode, data)
    return ok and type(t) == "table" and t.type == "ping"
end

-- client ------------------------------------------------------------------------

local Client = {}
Client.__index = Client

-- Sends a handshake on a new connection and reads the response head.
-- opts: host, key, version ("13"; false omits it), upgrade ("websocket";
--   false omits it), connection ("Upgrade"; false omits it), method ("GET"),
--   http_version ("1.1"), protocols (list or string), extensions (string),
--   origin, headers (list of "Name: value"), request (a complete raw request
--   to send instead), extra (bytes sent right after the head, in the same
--   write), timeout.
-- Returns client, res (helpers.read_response's table; res.status 101 on
-- success) or nil, err.
function _M.handshake(port, path, opts)
    opts = opts or {}
    local c, err = helpers.connect(port, opts.timeout or 5)
    if not c then
        return nil, err
    end
    local key = opts.key
    if key == nil then
        key = _M.new_key()
    end
    local req = opts.request
    if not req then
        local h = { fmt("%s %s HTTP/%s", opts.method or "GET", path or "/", opts.http_version or "1.1") }
        h[#h + 1] = "Host: " .. (opts.host or ("127.0.0.1:" .. port))
        if opts.upgrade ~= false then
            h[#h + 1] = "Upgrade: " .. (opts.upgrade or "websocket")
        end
        if opts.connection ~= false then
            h[#h + 1] = "Connection: " .. (opts.connection or "Upgrade")
        end
        if key ~= false then
            h[#h + 1] = "Sec-WebSocket-Key: " .. key
        end
        if opts.version ~= false then
            h[#h + 1] = "Sec-WebSocket-Version: " .. (opts.version or "13")
        end
        if opts.protocols then
            local p = opts.protocols
            h[#h + 1] = "Sec-WebSocket-Protocol: " .. (type(p) == "table" and concat(p, ", ") or p)
        end
        if opts.extensions then
            h[#h + 1] = "Sec-WebSocket-Extensions: " .. opts.extensions
        end
        if opts.origin then
            h[#h + 1] = "Origin: " .. opts.origin
        end
        for _, x in ipairs(opts.headers or {}) do
            h[#h + 1] = x
        end
        req = concat(h, "\r\n") .. "\r\n\r\n"
    end
    local ok, serr = c:send(req .. (opts.extra or ""))
    if not ok then
        c:close()
        return nil, "send: " .. tostring(serr)
    end
    local res, rerr = helpers.read_response(c, { timeout = opts.timeout or 5 })
    if not res then
        c:close()
        return nil, "response: " .. tostring(rerr)
    end
    res.key = key
    local self = setmetatable({ sock = c, buf = "", res = res, key = key, controls = {},
        port = port, path = path }, Client)
    if res.status == 101 then
        for _, e in ipairs(_M.parse_extensions(res.headers["sec-websocket-extensions"])) do
            if e.name == "permessage-deflate" then
                self.pmd = e.params
            end
        end
        if self.pmd then
            local cbits = tonumber(self.pmd.client_max_window_bits) or 15
            self.deflater = _M.deflater(math.max(cbits, 9), not self.pmd.client_no_context_takeover)
            self.inflater = _M.inflater(opts.inflate_bits or 15)
        end
    end
    return self, res
end

-- handshake() that must succeed: errors unless the answer is 101.
function _M.connect(port, path, opts)
    local c, res = _M.handshake(port, path, opts)
    if not c then
        error("handshake failed: " .. tostring(res), 2)
    end
    if res.status ~= 101 then
        c:close()
        error(fmt("handshake to %s answered %d: %s", path, res.status, tostring(res.body)), 2)
    end
    return c, res
end

function Client:close()
    if self.sock then
        self.sock:close()
        self.sock = nil
    end
end

function Client:send_raw(bytes)
    local ok, err, last = self.sock:send(bytes)
    if not ok then
        return nil, err, last
    end
    return true
end

function Client:send_frame(f)
    return self:send_raw(_M.frame(f))
end

function Client:text(s, fin)
    return self:send_frame({ opcode = 1, payload = s, fin = fin })
end

function Client:binary(s, fin)
    return self:send_frame({ opcode = 2, payload = s, fin = fin })
end

function Client:cont(s, fin)
    return self:send_frame({ opcode = 0, payload = s, fin = fin })
end

function Client:ping(s)
    return self:send_frame({ opcode = 9, payload = s or "" })
end

function Client:pong(s)
    return self:send_frame({ opcode = 10, payload = s or "" })
end

-- Sends a close frame (code may be nil for an empty payload).
function Client:send_close(code, reason)
    return self:send_frame({ opcode = 8, payload = _M.close_payload(code, reason) })
end

-- Sends one compressed (RSV1) message, in `fragments` frames (default 1).
function Client:send_compressed(data, kind, fragments)
    assert(self.deflater, "permessage-deflate was not negotiated")
    local payload = self.deflater:compress(data)
    local op = kind == "binary" and 2 or 1
    fragments = fragments or 1
    if fragments == 1 then
        return self:send_frame({ opcode = op, payload = payload, rsv1 = true })
    end
    local step = math.max(1, math.ceil(#payload / fragments))
    local i, first = 1, true
    while true do
        local part = payload:sub(i, i + step - 1)
        i = i + step
        local last = i > #payload
        self:send_frame({ opcode = first and op or 0, payload = part, rsv1 = first, fin = last })
        first = false
        if last then
            return true
        end
    end
end

-- Ensures n bytes in the read buffer before the deadline.
function Client:need(n, deadline)
    while #self.buf < n do
        if not self.sock then
            return nil, "closed"
        end
        local left = deadline - socket.gettime()
        if left <= 0 then
            return nil, "timeout"
        end
        self.sock:settimeout(math.min(left, 0.5))
        local d, err, partial = self.sock:receive(math.max(n - #self.buf, 1))
        local got = d or partial
        if got and #got > 0 then
            self.buf = self.buf .. got
        end
        if err == "closed" or (err and err ~= "timeout") then
            if #self.buf < n then
                self.eof = true
                return nil, "closed"
            end
        end
    end
    return true
end

local function take(self, n)
    local s = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return s
end

-- Reads one frame: {fin, rsv1, rsv2, rsv3, opcode, masked, payload, len,
-- code, reason (close frames)} or nil, "timeout" | "closed".
function Client:read_frame(timeout)
    local deadline = socket.gettime() + (timeout or 3)
    local ok, err = self:need(2, deadline)
    if not ok then
        return nil, err
    end
    local b1, b2 = byte(self.buf, 1, 2)
    local len = band(b2, 127)
    local hl = 2
    if len == 126 then
        hl = 4
    elseif len == 127 then
        hl = 10
    end
    local masked = band(b2, 0x80) ~= 0
    if masked then
        hl = hl + 4
    end
    ok, err = self:need(hl, deadline)
    if not ok then
        return nil, err
    end
    if len == 126 then
        local x, y = byte(self.buf, 3, 4)
        len = x * 256 + y
    elseif len == 127 then
        len = 0
        for i = 3, 10 do
            len = len * 256 + byte(self.buf, i)
        end
    end
    ok, err = self:need(hl + len, deadline)
    if not ok then
        return nil, err
    end
    local head = take(self, hl)
    local payload = take(self, len)
    if masked then
        payload = mask_bytes(payload, head:sub(-4))
    end
    local f = {
        fin = band(b1, 0x80) ~= 0,
        rsv1 = band(b1, 0x40) ~= 0,
        rsv2 = band(b1, 0x20) ~= 0,
        rsv3 = band(b1, 0x10) ~= 0,
        opcode = band(b1, 15),
        masked = masked,
        payload = payload,
        len = len,
    }
    if f.opcode == 8 then
        if #payload >= 2 then
            f.code = byte(payload, 1) * 256 + byte(payload, 2)
            f.reason = payload:sub(3)
        end
    end
    return f
end

-- Reads one whole message. Control frames met on the way are kept in
-- self.controls (pings are NOT answered unless opts.auto_pong). Heartbeat
-- texts ({"type":"ping"...}) are skipped when opts.skip_heartbeats.
-- Returns {kind = "text"|"binary", data, frames = n, compressed} or
-- nil, "close", close_frame | nil, "timeout"|"closed"|"protocol: ...".
function Client:read_message(timeout, opts)
    opts = opts or {}
    local deadline = socket.gettime() + (timeout or 3)
    local parts, kind, compressed, nframes = {}, nil, false, 0
    while true do
        local f, err = self:read_frame(deadline - socket.gettime())
        if not f then
            return nil, err
        end
        if f.opcode >= 8 then
            self.controls[#self.controls + 1] = f
            if f.opcode == 8 then
                self.close_frame = f
                return nil, "close", f
            end
            if f.opcode == 9 and opts.auto_pong then
                self:pong(f.payload)
            end
        else
            nframes = nframes + 1
            if f.opcode ~= 0 then
                if kind then
                    return nil, "protocol: new data frame inside a fragmented message"
                end
                kind = f.opcode == 1 and "text" or f.opcode == 2 and "binary" or ("op" .. f.opcode)
                compressed = f.rsv1
            elseif not kind then
                return nil, "protocol: continuation without a start"
            end
            parts[#parts + 1] = f.payload
            if f.fin then
                local data = concat(parts)
                if compressed then
                    local out, zerr = self.inflater:decompress(data)
                    if not out then
                        return nil, "inflate: " .. tostring(zerr)
                    end
                    data = out
                end
                if not (opts.skip_heartbeats and kind == "text" and _M.is_heartbeat(data)) then
                    return { kind = kind, data = data, frames = nframes, compressed = compressed }
                end
                parts, kind, compressed, nframes = {}, nil, false, 0
            end
        end
    end
end

-- Reads frames until a close frame arrives (or EOF / timeout). Then, by
-- default, answers with a close frame echoing the code, and waits (up to
-- 2 s) for the server to close the TCP connection.
-- Returns code (nil when the close payload was empty or none came),
-- info {close = frame | nil, frames = {frames before it}, eof = bool
-- (TCP closed by the server), err}.
function Client:expect_close(timeout, opts)
    opts = opts or {}
    local deadline = socket.gettime() + (timeout or 3)
    local frames = {}
    local info = { frames = frames }
    if self.close_frame then
        info.close = self.close_frame
    end
    while not info.close do
        local f, err = self:read_frame(deadline - socket.gettime())
        if not f then
            info.err = err
            info.eof = err == "closed"
            return nil, info
        end
        if f.opcode == 8 then
            info.close = f
            self.close_frame = f
        else
            frames[#frames + 1] = f
        end
    end
    if opts.reply ~= false then
        local code = info.close.code
        pcall(self.send_close, self, code, nil)
    end
    info.eof = self:wait_eof(opts.eof_timeout or 2)
    return info.close.code, info
end

-- True when the server closes the TCP connection within t seconds (data
-- arriving meanwhile is read and dropped into self.after_close).
function Client:wait_eof(t)
    if not self.sock then
        return true
    end
    if self.eof then
        return true
    end
    local deadline = socket.gettime() + (t or 2)
    self.after_close = self.after_close or {}
    while socket.gettime() < deadline do
        self.sock:settimeout(math.min(0.25, math.max(deadline - socket.gettime(), 0.01)))
        local d, err, partial = self.sock:receive(8192)
        local got = d or partial
        if got and #got > 0 then
            self.after_close[#self.after_close + 1] = got
        end
        if err == "closed" or (err and err ~= "timeout") then
            self.eof = true
            return true
        end
    end
    return false
end

-- Sends a message and returns the next message (heartbeats skipped).
function Client:echo(data, kind, timeout)
    if kind == "binary" then
        self:binary(data)
    else
        self:text(data)
    end
    return self:read_message(timeout or 3, { skip_heartbeats = true })
end

-- Closes cleanly (1000): sends close, reads until the server's close, waits
-- for EOF, closes the socket. Returns the server's close code.
function Client:finish(code)
    pcall(self.send_close, self, code or 1000, "")
    local rcode = self:expect_close(2, { reply = false })
    self:close()
    return rcode
end

_M.Client = Client

-- moongate conf with the ws upstream and optional extras.
-- opts: workers (default 1), ws_upstream (table from start_upstream),
-- extra (Lua source appended inside the table).
function _M.conf(opts)
    opts = opts or {}
    local t = {
        "return {",
        '  listen = "127.0.0.1:$PORT",',
        "  workers = " .. tostring(opts.workers or 1) .. ",",
        '  log_level = "' .. (opts.log_level or "info") .. '",',
    }
    if opts.ws_upstream then
        t[#t + 1] = fmt('  upstreams = { wsup = { servers = { "http://127.0.0.1:%d" } } },',
            opts.ws_upstream.port)
    end
    if opts.extra then
        t[#t + 1] = opts.extra
    end
    t[#t + 1] = "}"
    return concat(t, "\n") .. "\n"
end

return _M
