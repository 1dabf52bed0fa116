-- Helpers for the plugin specs (spec/01-unit/plugins_spec.lua and
-- spec/03-plugins/): a `moongate` stub for pure-Lua specs, the bundled
-- plugins through moongate.plugins, `moongate -t` on a project, and JWT
-- keys and tokens made with the openssl CLI.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local fmt = string.format
local byte, char = string.byte, string.char
local concat = table.concat
local shq = helpers.shq

local _M = { _VERSION = "0.1.0" }


-- moongate stub -------------------------------------------------------------

--- Installs a minimal `moongate` module (json, now, time, log, worker_id)
-- when the real one cannot load (no moongate.core outside the binary), so
-- plugin modules can be loaded and their schemas checked in busted. Busted
-- insulates each spec file: package.loaded is restored afterwards.
function _M.stub_moongate(extra)
    local ok = pcall(require, "moongate.core")
    if ok then return require "moongate" end
    local log = setmetatable({}, { __call = function() end })
    for _, l in ipairs({ "debug", "info", "warn", "error" }) do log[l] = function() end end
    local m = {
        json = require "cjson.safe",
        now = function() return os.time() end,
        time = function() return os.time() end,
        log = log,
        worker_id = 0,
        shared = {},
        crypto = {},
    }
    for k, v in pairs(extra or {}) do m[k] = v end
    package.loaded["moongate"] = m
    return m
end


-- plugins ---------------------------------------------------------------------

--- A bundled plugin module, loaded as the loader does.
function _M.plugin(name, root)
    local plugins = require "moongate.plugins"
    local reg = plugins.new({ root = root or helpers.root })
    return assert(reg:get(name))
end

--- Validates conf for a bundled plugin: the normalized conf, or nil and
-- "field <f>: reason".
function _M.configure(name, conf, env)
    local plugins = require "moongate.plugins"
    return plugins.configure(_M.plugin(name), conf, env or {})
end


-- projects ------------------------------------------------------------------------

--- Writes a project (conf/moongate.lua, scripts/routes.lua, more files
-- { ["plugins/x.lua"] = src }) under spec/out and returns its directory.
function _M.project(name, conf, routes, files)
    local dir = helpers.tmpdir(name or "plugproj")
    helpers.mkdir_p(dir .. "/conf")
    helpers.mkdir_p(dir .. "/scripts")
    helpers.write_file(dir .. "/conf/moongate.lua", conf or "return {}\n")
    helpers.write_file(dir .. "/scripts/routes.lua", routes or "return {}\n")
    for path, src in pairs(files or {}) do
        local p = dir .. "/" .. path
        helpers.mkdir_p(p:match("^(.*)/[^/]*$"))
        helpers.write_file(p, src)
    end
    return dir
end

--- `moongate -t` on a project: output and exit code.
function _M.check_project(dir)
    return helpers.sh(fmt("cd %s && %s -t -c conf/moongate.lua", shq(dir), shq(helpers.bin)))
end


-- base64url / JWT -------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function _M.b64url(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local idx = { math.floor(n / 262144) % 64, math.floor(n / 4096) % 64,
            math.floor(n / 64) % 64, n % 64 }
        local k = b == nil and 2 or (c == nil and 3 or 4)
        for j = 1, k do
            out[#out + 1] = B64:sub(idx[j] + 1, idx[j] + 1)
        end
    end
    return concat(out)
end

local function hex(s)
    return (s:gsub(".", function(c) return fmt("%02x", byte(c)) end))
end
_M.hex = hex

--- Creates an RSA 2048 and a P-256 key pair (and a self-signed RSA
-- certificate) in dir with the openssl CLI. Returns paths and PEM texts.
function _M.make_keys(dir)
    local k = {
        rsa = dir .. "/rsa.pem", rsa_pub = dir .. "/rsa.pub",
        ec = dir .. "/ec.pem", ec_pub = dir .. "/ec.pub",
        rsa2 = dir .. "/rsa2.pem", rsa2_pub = dir .. "/rsa2.pub",
        cert = dir .. "/cert.pem", cert_der = dir .. "/cert.der",
    }
    local cmds = {
        fmt("openssl genrsa -out %s 2048", shq(k.rsa)),
        fmt("openssl rsa -in %s -pubout -out %s", shq(k.rsa), shq(k.rsa_pub)),
        fmt("openssl genrsa -out %s 2048", shq(k.rsa2)),
        fmt("openssl rsa -in %s -pubout -out %s", shq(k.rsa2), shq(k.rsa2_pub)),
        fmt("openssl ecparam -name prime256v1 -genkey -noout -out %s", shq(k.ec)),
        fmt("openssl ec -in %s -pubout -out %s", shq(k.ec), shq(k.ec_pub)),
        fmt("openssl req -x509 -new -key %s -subj /CN=moongate-test -days 2 -out %s",
            shq(k.rsa), shq(k.cert)),
        fmt("openssl x509 -in %s -outform DER -out %s", shq(k.cert), shq(k.cert_der)),
    }
    for _, c in ipairs(cmds) do
        local out, rc = helpers.sh(c)
        assert(rc == 0, c .. ": " .. out)
    end
    k.rsa_pub_pem = helpers.read_file(k.rsa_pub)
    k.rsa2_pub_pem = helpers.read_file(k.rsa2_pub)
    k.ec_pub_pem = helpers.read_file(k.ec_pub)
    k.cert_pem = helpers.read_file(k.cert)
    -- JWK members
    local mod = helpers.sh(fmt("openssl rsa -in %s -noout -modulus", shq(k.rsa)))
    mod = assert(mod:match("Modulus=(%x+)"))
    k.rsa_n = _M.b64url((mod:gsub("%x%x", function(x) return char(tonumber(x, 16)) end)))
    k.rsa_e = "AQAB"
    local der = helpers.sh(fmt("openssl ec -in %s -pubout -outform DER 2>/dev/null | od -An -v -tx1",
        shq(k.ec)))
    der = der:gsub("%s", "")
    local point = der:sub(-130) -- 04 || x || y
    local raw = point:gsub("%x%x", function(x) return char(tonumber(x, 16)) end)
    k.ec_x = _M.b64url(raw:sub(2, 33))
    k.ec_y = _M.b64url(raw:sub(34, 65))
    local cder = helpers.read_file(k.cert_der)
    k.cert_b64 = require("moongate.jwk").b64_encode(cder)
    return k
end

-- ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) -> 64-byte r || s.
local function der_to_raw(der)
    local pos = 3
    if byte(der, 2) >= 128 then pos = 3 + (byte(der, 2) - 128) end
    local function int()
        assert(byte(der, pos) == 2, "bad ECDSA signature")
        local len = byte(der, pos + 1)
        local v = der:sub(pos + 2, pos + 1 + len)
        pos = pos + 2 + len
        v = v:gsub("^%z+", "")
        return string.rep("\0", 32 - #v) .. v
    end
    local r = int()
    local s = int()
    return r .. s
end

local seq = 0

--- Signs with the openssl CLI. alg: HS256 (key = secret), RS256 or ES256
-- (key = private key path). Returns raw signature bytes.
function _M.sign(alg, key, input, dir)
    seq = seq + 1
    local inp = fmt("%s/in-%d", dir, seq)
    local sig = fmt("%s/sig-%d", dir, seq)
    helpers.write_file(inp, input)
    local cmd
    if alg == "HS256" then
        cmd = fmt("openssl dgst -sha256 -mac HMAC -macopt hexkey:%s -binary -out %s %s",
            hex(key), shq(sig), shq(inp))
    else
        cmd = fmt("openssl dgst -sha256 -sign %s -binary -out %s %s", shq(key), shq(sig), shq(inp))
    end
    local out, rc = helpers.sh(cmd)
    assert(rc == 0, cmd .. ": " .. out)
    local s = helpers.read_file(sig)
    os.remove(inp)
    os.remove(sig)
    if alg == "ES256" then s = der_to_raw(s) end
    return s
end

--- A compact JWT. header defaults to { alg = alg, typ = "JWT" }.
function _M.jwt(alg, key, claims, dir, header)
    header = header or { alg = alg, typ = "JWT" }
    local input = _M.b64url(cjson.encode(header)) .. "." .. _M.b64url(cjson.encode(claims))
    if alg == "none" then return input .. "." end
    return input .. "." .. _M.b64url(_M.sign(alg, key, input, dir))
end

return _M
