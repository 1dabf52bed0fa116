-- jwt-auth: configuration. Keys: `secret` (HS256), `public_key` (PEM text:
-- a public key or a certificate; RS256, ES256), `public_key_file`, or
-- `jwks_file` (a JWKS document read at load time; see docs/plugins.md).
return {
  fields = {
    -- The one algorithm accepted. A token whose header names another one,
    -- "none" included, is refused.
    algorithm = { type = "string", default = "HS256", one_of = { "HS256", "RS256", "ES256" } },
    secret = { type = "string", len_min = 1 },
    public_key = { type = "string" },
    public_key_file = { type = "string" },
    jwks_file = { type = "string" },
    -- Where the token is read: this header ("Bearer <token>"; a header
    -- other than Authorization may also hold the bare token), then the
    -- query parameter, then the cookie, when given.
    header = { type = "string", default = "Authorization" },
    query = { type = "string" },
    cookie = { type = "string" },
    -- Seconds of clock skew allowed on exp and nbf.
    leeway = { type = "number", default = 0, min = 0 },
    -- Claims that must be present.
    required_claims = { type = "array", items = { type = "string" }, default = { "exp" } },
    -- Accepted "iss" values and "aud" values (the token's aud, a string or
    -- a list, must hold one of them). Empty: not checked.
    issuers = { type = "array", items = { type = "string" }, default = {} },
    audiences = { type = "array", items = { type = "string" }, default = {} },
    -- Claims copied to upstream request headers: { sub = "X-User" }.
    claims_to_headers = { type = "table", values = { type = "string" }, default = {} },
  },
}
