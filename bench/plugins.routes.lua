return {
  { prefix = "/plain", upstream = "runtime" },
  { prefix = "/hook", upstream = "runtime", access = function() end },
  { prefix = "/api", upstream = "runtime", plugins = {
      ["jwt-auth"] = { secret = "bench-secret", claims_to_headers = { sub = "X-Auth-User" } },
      ["rate-limit"] = { rate = 1000000, burst = 1000000, key = "jwt_claim", claim = "sub" },
  } },
}
