-- jwt-auth: configuration checks, key loading (PEM, certificate, JWKS with
-- RSA n/e, EC x/y, x5c and pem members) at load time.
local helpers = require "spec.helpers"
local ph = require "spec.plugin_helpers"
local cjson = require "cjson"
ph.stub_moongate()

describe("jwt-auth schema", function()
    local dir, keys

    lazy_setup(function()
        dir = helpers.tmpdir("jwt-schema")
        keys = ph.make_keys(dir)
    end)

    local function jwks(list)
        local p = dir .. "/jwks-" .. math.random(1e9) .. ".json"
        helpers.write_file(p, cjson.encode({ keys = list }))
        return p
    end

    it("defaults to HS256 with a secret, exp required, token in Authorization", function()
        local conf = assert(ph.configure("jwt-auth", { secret = "k" }))
        assert.equal("HS256", conf.algorithm)
        assert.same({ "exp" }, conf.required_claims)
        assert.equal("authorization", conf._header)
        assert.equal(0, conf.leeway)
        assert.same({ { secret = "k" } }, conf._keys)
    end)

    it("takes a PEM public key, a key file, or a certificate", function()
        local conf = assert(ph.configure("jwt-auth", { algorithm = "RS256", public_key = keys.rsa_pub_pem }))
        assert.equal(keys.rsa_pub_pem, conf._keys[1].pem)
        conf = assert(ph.configure("jwt-auth", { algorithm = "ES256", public_key_file = keys.ec_pub }))
        assert.equal(keys.ec_pub_pem, conf._keys[1].pem)
        conf = assert(ph.configure("jwt-auth", { algorithm = "RS256", public_key = keys.cert_pem }))
        assert.equal(keys.rsa_pub_pem, conf._keys[1].pem) -- the certificate's key, as PEM
    end)

    it("converts JWKS entries: RSA n/e, EC x/y, x5c and pem", function()
        local p = jwks({
            { kty = "RSA", kid = "n-e", n = keys.rsa_n, e = keys.rsa_e, alg = "RS256", use = "sig" },
            { kty = "RSA", kid = "cert", x5c = { keys.cert_b64 } },
            { kty = "RSA", kid = "pem", pem = keys.rsa2_pub_pem },
            { kty = "EC", kid = "ec", crv = "P-256", x = keys.ec_x, y = keys.ec_y },
            { kty = "RSA", kid = "enc", n = keys.rsa_n, e = "AQAB", use = "enc" },
            { kty = "RSA", kid = "ps", n = keys.rsa_n, e = "AQAB", alg = "PS256" },
        })
        local conf = assert(ph.configure("jwt-auth", { algorithm = "RS256", jwks_file = p }))
        assert.equal(3, #conf._keys) -- EC, encryption and PS256 keys are skipped
        assert.equal(keys.rsa_pub_pem, conf._kids["n-e"].pem)
        assert.equal(keys.rsa_pub_pem, conf._kids["cert"].pem)
        assert.equal(keys.rsa2_pub_pem, conf._kids["pem"].pem)
        conf = assert(ph.configure("jwt-auth", { algorithm = "ES256", jwks_file = p }))
        assert.equal(1, #conf._keys)
        assert.equal(keys.ec_pub_pem, conf._kids.ec.pem)
    end)

    it("reads a JWKS file relative to the project root", function()
        local p = jwks({ { kty = "oct", kid = "h", k = ph.b64url("hmac-secret") } })
        local name = p:match("[^/]+$")
        local conf = assert(ph.configure("jwt-auth", { jwks_file = name }, { root = dir }))
        assert.equal("hmac-secret", conf._kids.h.secret)
    end)

    local bad = {
        { { algorithm = "none", secret = "k" },
          "field algorithm: expected one of 'HS256', 'RS256', 'ES256', got 'none'" },
        { { algorithm = "HS384", secret = "k" }, "field algorithm: expected one of" },
        { {}, "give secret or jwks_file" },
        { { algorithm = "RS256" }, "give public_key, public_key_file or jwks_file" },
        { { algorithm = "RS256", secret = "k" }, "field secret: a secret is for HS256" },
        { { secret = "" }, "field secret: must have at least 1 characters" },
        { { secret = "k", leeway = -1 }, "field leeway: must be at least 0" },
        { { secret = "k", issuers = "x" }, "field issuers: expected an array" },
        { { secret = "k", claims_to_headers = { sub = 1 } }, "field claims_to_headers.sub: expected a string" },
        { { algorithm = "RS256", public_key = "not a key" }, "field public_key: expected a PEM public key" },
        { { algorithm = "RS256", public_key_file = "/nonexistent.pem" }, "field public_key_file: cannot read" },
        { { algorithm = "RS256", jwks_file = "/nonexistent.json" }, "field jwks_file: cannot read" },
    }
    for _, c in ipairs(bad) do
        it("refuses " .. c[2], function()
            local conf, err = ph.configure("jwt-auth", c[1])
            assert.is_nil(conf)
            assert.matches(c[2], err, 1, true)
        end)
    end

    it("refuses a private key and a JWKS without a usable key", function()
        local helpers_ = require "spec.helpers"
        local _, err = ph.configure("jwt-auth", { algorithm = "RS256",
            public_key = helpers_.read_file(keys.rsa) })
        assert.matches("a private key", err, 1, true)
        local p = jwks({ { kty = "EC", crv = "P-256", x = keys.ec_x, y = keys.ec_y } })
        _, err = ph.configure("jwt-auth", { algorithm = "RS256", jwks_file = p })
        assert.matches("field jwks_file: no RS256 key in the JWKS", err, 1, true)
        p = jwks({ { kty = "EC", crv = "P-384", x = keys.ec_x, y = keys.ec_y } })
        _, err = ph.configure("jwt-auth", { algorithm = "ES256", jwks_file = p })
        assert.matches("field jwks_file: keys[1]: EC curve P-384 is not supported", err, 1, true)
    end)

    it("is refused by moongate -t at the conf entry for a global plugin", function()
        local proj = ph.project("jwt-t", [[
return {
  listen = "127.0.0.1:1",
  plugins = {
    ["jwt-auth"] = { algorithm = "RS256", secret = "x" },
  },
}]])
        local out, rc = ph.check_project(proj)
        assert.are_not.equal(0, rc)
        assert.matches("conf/moongate.lua:4: plugin jwt-auth: field secret: a secret is for HS256", out, 1, true)
    end)
end)
