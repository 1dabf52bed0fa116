-- jwt-auth over real HTTP: HS256, RS256 and ES256 tokens made with the
-- openssl CLI; the algorithm pinned by conf (alg none, another algorithm,
-- the RSA-key-as-HMAC-secret trick all refused); exp/nbf with leeway, iss,
-- aud; JWKS keys chosen by kid; claims passed upstream, to the route's own
-- access hook (tenant binding) and to the handler.
local helpers = require "spec.helpers"
local ph = require "spec.plugin_helpers"
local cjson = require "cjson"

local CONF = [[
return { listen = "127.0.0.1:$PORT", workers = 2,
  upstreams = { up = { servers = { "$UPSTREAM" } } } }
]]

local ROUTES = [[
local HS = { secret = "s3cret-key", issuers = { "https://issuer.test" }, audiences = { "api" },
             leeway = 5, claims_to_headers = { sub = "X-User", roles = "X-Roles" } }
local function tenant_bound(req)
  if req.ctx.jwt.tenant ~= req.params.tenant then
    return 403, { error = "wrong tenant" }
  end
end
return {
  { prefix = "/hs", upstream = "up", plugins = { ["jwt-auth"] = HS } },
  { prefix = "/rs", upstream = "up", plugins = { ["jwt-auth"] = {
      algorithm = "RS256", public_key_file = "$KEYS/rsa.pub" } } },
  { prefix = "/es", upstream = "up", plugins = { ["jwt-auth"] = {
      algorithm = "ES256", public_key_file = "$KEYS/ec.pub" } } },
  { prefix = "/jwks", upstream = "up", plugins = { ["jwt-auth"] = {
      algorithm = "RS256", jwks_file = "$KEYS/jwks.json" } } },
  { prefix = "/jwks-es", upstream = "up", plugins = { ["jwt-auth"] = {
      algorithm = "ES256", jwks_file = "$KEYS/jwks.json" } } },
  { path = "/tenant/{tenant}/me", access = tenant_bound,
    handler = function(req) return 200, { sub = req.ctx.jwt.sub, alg = req.ctx.jwt_header.alg } end,
    plugins = { ["jwt-auth"] = { secret = "s3cret-key", required_claims = { "exp", "tenant" } } } },
  { path = "/where", handler = function(req) return 200, { sub = req.ctx.jwt.sub } end,
    plugins = { ["jwt-auth"] = { secret = "s3cret-key", query = "token", cookie = "jwt",
                                 header = "X-Token" } } },
}
]]

describe("jwt-auth", function()
    local up, mg, dir, keys

    lazy_setup(function()
        dir = helpers.tmpdir("jwt-keys")
        keys = ph.make_keys(dir)
        helpers.write_file(dir .. "/jwks.json", cjson.encode({ keys = {
            { kty = "RSA", kid = "k1", n = keys.rsa_n, e = keys.rsa_e, alg = "RS256" },
            { kty = "RSA", kid = "k2", pem = keys.rsa2_pub_pem },
            { kty = "RSA", kid = "k3", x5c = { keys.cert_b64 } },
            { kty = "EC", kid = "e1", crv = "P-256", x = keys.ec_x, y = keys.ec_y },
        } }))
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "jwt", upstream = up, conf = CONF, routes = ROUTES,
            vars = { KEYS = dir } })
    end)

    lazy_teardown(function()
        if mg then mg:stop() end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function claims(extra)
        local c = { sub = "alice", iss = "https://issuer.test", aud = "api", exp = os.time() + 300 }
        for k, v in pairs(extra or {}) do c[k] = v end
        if c.exp == false then c.exp = nil end
        return c
    end

    local function get(path, token, more)
        local h = more or {}
        if token then h[#h + 1] = "Authorization: Bearer " .. token end
        local st, hd, body = helpers.http(mg.port, "GET", path, { headers = h })
        local ok, j = pcall(cjson.decode, body)
        return st, ok and j or body, hd
    end

    local function hs(c, header)
        return ph.jwt("HS256", "s3cret-key", c, dir, header)
    end

    it("passes a valid HS256 token, with claims as upstream headers", function()
        local st, j = get("/hs/x", hs(claims({ roles = { "admin", "dev" } })))
        assert.equal(200, st)
        assert.equal("alice", j.headers["x-user"])
        assert.equal('["admin","dev"]', j.headers["x-roles"])
    end)

    it("refuses a missing token with WWW-Authenticate", function()
        local st, j, h = get("/hs/x")
        assert.equal(401, st)
        assert.equal("missing token", j.error)
        assert.equal('Bearer realm="moongate"', h["www-authenticate"])
        st = get("/hs/x", nil, { "Authorization: Basic Zm9vOmJhcg==" })
        assert.equal(401, st)
    end)

    it("refuses a tampered payload and a wrong secret", function()
        local t = hs(claims())
        local h64, _, s64 = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        local forged = h64 .. "." .. ph.b64url(cjson.encode(claims({ sub = "root" }))) .. "." .. s64
        local st, j, h = get("/hs/x", forged)
        assert.equal(401, st)
        assert.equal("invalid signature", j.error)
        assert.matches('error="invalid_token"', h["www-authenticate"], 1, true)
        st, j = get("/hs/x", ph.jwt("HS256", "other-key", claims(), dir))
        assert.equal(401, st)
        assert.equal("invalid signature", j.error)
        st, j = get("/hs/x", "not.a-token")
        assert.equal(401, st)
        assert.equal("malformed token", j.error)
    end)

    it("pins the algorithm: alg none, HS512 and RS256 on an HS256 route are refused", function()
        local st, j = get("/hs/x", ph.jwt("none", nil, claims(), dir, { alg = "none" }))
        assert.equal(401, st)
        assert.equal("algorithm not allowed", j.error)
        st, j = get("/hs/x", hs(claims(), { alg = "HS512", typ = "JWT" }))
        assert.equal(401, st)
        assert.equal("algorithm not allowed", j.error)
        st, j = get("/hs/x", ph.jwt("RS256", keys.rsa, claims(), dir))
        assert.equal(401, st)
        assert.equal("algorithm not allowed", j.error)
    end)

    it("refuses an HS256 token keyed with the route's RSA public key (key confusion)", function()
        local t = ph.jwt("HS256", keys.rsa_pub_pem, claims(), dir)
        local st, j = get("/rs/x", t)
        assert.equal(401, st)
        assert.equal("algorithm not allowed", j.error)
    end)

    it("checks exp and nbf with leeway, and required claims", function()
        local now = os.time()
        local st, j = get("/hs/x", hs(claims({ exp = now - 60 })))
        assert.equal(401, st)
        assert.equal("token expired", j.error)
        st = get("/hs/x", hs(claims({ exp = now - 2 }))) -- within the 5 s leeway
        assert.equal(200, st)
        st, j = get("/hs/x", hs(claims({ nbf = now + 60 })))
        assert.equal(401, st)
        assert.equal("token not yet valid", j.error)
        st = get("/hs/x", hs(claims({ nbf = now + 2 })))
        assert.equal(200, st)
        st, j = get("/hs/x", hs(claims({ exp = false })))
        assert.equal(401, st)
        assert.equal("missing claim 'exp'", j.error)
        st, j = get("/hs/x", hs(claims({ exp = "tomorrow" })))
        assert.equal(401, st)
        assert.equal("malformed exp", j.error)
    end)

    it("re-checks exp on every request, even for a token it has seen", function()
        local t = hs(claims({ exp = os.time() - 3 })) -- valid for 1-2 s more (leeway 5)
        assert.equal(200, (get("/hs/x", t)))
        assert.equal(200, (get("/hs/x", t))) -- served from the verified-token cache
        helpers.sleep(2.2)
        local st, j = get("/hs/x", t)
        assert.equal(401, st)
        assert.equal("token expired", j.error)
    end)

    it("checks iss and aud (string or list)", function()
        local st, j = get("/hs/x", hs(claims({ iss = "https://evil.test" })))
        assert.equal(401, st)
        assert.equal("issuer not allowed", j.error)
        st, j = get("/hs/x", hs(claims({ aud = "other" })))
        assert.equal(401, st)
        assert.equal("audience not allowed", j.error)
        st = get("/hs/x", hs(claims({ aud = { "other", "api" } })))
        assert.equal(200, st)
    end)

    it("verifies RS256 with a PEM key file", function()
        assert.equal(200, (get("/rs/x", ph.jwt("RS256", keys.rsa, claims(), dir))))
        local st, j = get("/rs/x", ph.jwt("RS256", keys.rsa2, claims(), dir))
        assert.equal(401, st)
        assert.equal("invalid signature", j.error)
    end)

    it("verifies ES256 (raw r||s signatures)", function()
        local t = ph.jwt("ES256", keys.ec, claims(), dir)
        assert.equal(200, (get("/es/x", t)))
        -- flip a bit in the signature
        local h64, p64, s64 = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        local c = s64:sub(10, 10)
        local flipped = s64:sub(1, 9) .. (c == "A" and "B" or "A") .. s64:sub(11)
        local st, j = get("/es/x", h64 .. "." .. p64 .. "." .. flipped)
        assert.equal(401, st)
        assert.equal("invalid signature", j.error)
    end)

    it("picks JWKS keys by kid: n/e, pem and x5c entries; an unknown kid is refused", function()
        for kid, key in pairs({ k1 = keys.rsa, k2 = keys.rsa2, k3 = keys.rsa }) do
            local t = ph.jwt("RS256", key, claims(), dir, { alg = "RS256", kid = kid })
            assert.equal(200, (get("/jwks/x", t)), kid)
        end
        local t = ph.jwt("RS256", keys.rsa2, claims(), dir, { alg = "RS256", kid = "k1" })
        local st, j = get("/jwks/x", t)
        assert.equal(401, st)
        assert.equal("invalid signature", j.error)
        t = ph.jwt("RS256", keys.rsa, claims(), dir, { alg = "RS256", kid = "zz" })
        st, j = get("/jwks/x", t)
        assert.equal(401, st)
        assert.equal("unknown key id", j.error)
        -- no kid: every key of the algorithm is tried
        assert.equal(200, (get("/jwks/x", ph.jwt("RS256", keys.rsa2, claims(), dir))))
        -- the EC entry serves the ES256 route
        t = ph.jwt("ES256", keys.ec, claims(), dir, { alg = "ES256", kid = "e1" })
        assert.equal(200, (get("/jwks-es/x", t)))
    end)

    it("exposes verified claims to the route's access hook and handler (tenant binding)", function()
        local t = hs({ sub = "bob", tenant = "acme", exp = os.time() + 60 })
        local st, j = get("/tenant/acme/me", t)
        assert.equal(200, st)
        assert.same({ sub = "bob", alg = "HS256" }, j)
        st, j = get("/tenant/globex/me", t)
        assert.equal(403, st)
        assert.equal("wrong tenant", j.error)
        st, j = get("/tenant/acme/me", hs({ sub = "bob", exp = os.time() + 60 }))
        assert.equal(401, st)
        assert.equal("missing claim 'tenant'", j.error)
    end)

    it("reads the token from a custom header, the query or a cookie", function()
        local t = hs({ sub = "carol", exp = os.time() + 60 })
        local st, j = get("/where", nil, { "X-Token: " .. t })
        assert.equal(200, st)
        assert.equal("carol", j.sub)
        st, j = get("/where?token=" .. t)
        assert.equal(200, st)
        assert.equal("carol", j.sub)
        st, j = get("/where", nil, { "Cookie: a=1; jwt=" .. t .. "; b=2" })
        assert.equal(200, st)
        assert.equal("carol", j.sub)
    end)
end)
