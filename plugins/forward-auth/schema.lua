-- forward-auth: configuration. Give `url` or `upstream` (+ `path`).
local function lower_names(t)
  for i, n in ipairs(t) do
    if not string.find(n, "^[%w!#$%%&'*+.^_`|~-]+$") then
      return nil, "item " .. i .. ": bad header name '" .. n .. "'"
    end
  end
  return true
end

return {
  fields = {
    -- The auth service: "http://host:port/path" ...
    url = { type = "string", match = "^http://[^/]+" },
    -- ... or an upstream of conf (pooled, with its failover) and a path.
    upstream = { type = "string" },
    path = { type = "string", match = "^/" },
    method = { type = "string", default = "GET", one_of = { "GET", "POST", "HEAD" } },
    -- Client request headers copied to the auth request. The auth request
    -- also carries X-Forwarded-Method, -Proto, -Host, -Uri and -For.
    request_headers = { type = "array", items = { type = "string" }, check = lower_names,
                        default = { "authorization", "cookie" } },
    -- Auth response headers (on 2xx) copied to the upstream request.
    upstream_headers = { type = "array", items = { type = "string" }, check = lower_names,
                         default = {} },
    -- Auth response headers (on anything else) copied to the client, with
    -- its status and body.
    client_headers = { type = "array", items = { type = "string" }, check = lower_names,
                       default = { "www-authenticate", "location", "set-cookie",
                                   "content-type" } },
    -- Seconds to wait for the auth service.
    timeout = { type = "number", default = 5, min = 0.001 },
    -- Status when the auth service cannot be reached or times out.
    status_on_error = { type = "integer", default = 503, min = 400, max = 599 },
  },
}
