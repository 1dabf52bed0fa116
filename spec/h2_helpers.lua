-- HTTP/2 helpers for moongate's integration specs (LuaJIT): curl over h2
-- (prior knowledge on plain listeners, ALPN on TLS ones), nghttp
-- (nghttp2-client) for many streams on one connection and small windows,
-- and spec/fixtures/h2_client.py (python3-h2) for exact frames and the
-- attack cases. Everything talks to 127.0.0.1 and has a deadline.
local helpers = require "spec.helpers"
local tls = require "spec.tls_helpers"

local fmt = string.format
local shq = helpers.shq

local _M = { _VERSION = "0.1.0" }

_M.client_py = helpers.root .. "/spec/fixtures/h2_client.py"

local function with_args(opts, extra)
    local o = {}
    for k, v in pairs(opts or {}) do
        o[k] = v
    end
    local a = {}
    for _, x in ipairs(extra) do
        a[#a + 1] = x
    end
    for _, x in ipairs(o.curl_args or {}) do
        a[#a + 1] = x
    end
    o.curl_args = a
    return o
end

--- helpers.http with prior-knowledge HTTP/2 (h2c) on a plain listener.
function _M.h2c(port, method, path, opts)
    return helpers.http(port, method, path, with_args(opts, { "--http2-prior-knowledge" }))
end

--- tls_helpers.https offering h2 by ALPN (curl's --http2: h2, then http/1.1).
function _M.h2(port, method, path, ca, opts)
    return tls.https(port, method, path, ca, "localhost", with_args(opts, { "--http2" }))
end

--- nghttp against url(s): returns its output (stdout and stderr) and exit code.
--- args: a list of options (e.g. {"-n", "-w", "12"}), urls: a list.
function _M.nghttp(args, urls, timeout)
    local a = { "timeout -s KILL", tostring(timeout or 20), "nghttp" }
    for _, x in ipairs(args or {}) do
        a[#a + 1] = shq(x)
    end
    for _, u in ipairs(urls) do
        a[#a + 1] = shq(u)
    end
    return helpers.sh(table.concat(a, " ") .. " 2>&1")
end

--- spec/fixtures/h2_client.py MODE against port; opts: tls, path, count,
--- size, window, read_body (false: never open the window), timeout (the
--- script's deadline, s). Returns the decoded JSON result and the raw output.
function _M.py(port, mode, opts)
    opts = opts or {}
    local a = { helpers.python, shq(_M.client_py), "--port", tostring(port),
        "--timeout", tostring(opts.timeout or 10) }
    if opts.tls then a[#a + 1] = "--tls" end
    if opts.path then a[#a + 1] = "--path " .. shq(opts.path) end
    if opts.count then a[#a + 1] = "--count " .. opts.count end
    if opts.size then a[#a + 1] = "--size " .. opts.size end
    if opts.window then a[#a + 1] = "--window " .. opts.window end
    if opts.read_body == false then a[#a + 1] = "--read-body 0" end
    a[#a + 1] = shq(mode)
    local cmd = fmt("timeout -s KILL %d %s 2>&1", (opts.timeout or 10) + 10, table.concat(a, " "))
    local out = helpers.sh(cmd)
    local ok, t = pcall(helpers.json.decode, out:match("(%b{})%s*$") or "")
    return ok and t or nil, out
end

--- The same, in the background: a handle whose :wait(timeout) returns
--- (result, raw output) once the script ended.
function _M.py_async(port, mode, opts)
    opts = opts or {}
    local a = { helpers.python, shq(_M.client_py), "--port", tostring(port),
        "--timeout", tostring(opts.timeout or 10) }
    if opts.tls then a[#a + 1] = "--tls" end
    if opts.path then a[#a + 1] = "--path " .. shq(opts.path) end
    if opts.count then a[#a + 1] = "--count " .. opts.count end
    a[#a + 1] = shq(mode)
    local h = helpers.spawn(fmt("timeout -s KILL %d %s", (opts.timeout or 10) + 10,
        table.concat(a, " ")))
    local w = {}
    function w.wait(_, timeout)
        local out = h:wait(timeout or ((opts.timeout or 10) + 15))
        local ok, t = pcall(helpers.json.decode, (out or ""):match("(%b{})%s*$") or "")
        return ok and t or nil, out
    end
    return w
end

--- The access lines (type "access") of a log text, decoded.
function _M.access_lines(text)
    local out = {}
    for line in (text or ""):gmatch("[^\n]+") do
        if line:find('"type":"access"', 1, true) then
            local ok, t = pcall(helpers.json.decode, line)
            if ok then
                out[#out + 1] = t
            end
        end
    end
    return out
end

return _M
