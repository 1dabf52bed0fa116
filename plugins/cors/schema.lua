-- cors: configuration.
local function patterns_ok(t)
  for i, p in ipairs(t) do
    if not pcall(string.find, "", p) then
      return nil, "item " .. i .. ": malformed Lua pattern '" .. p .. "'"
    end
  end
  return true
end

local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$"

return {
  fields = {
    -- Allowed origins, exactly as browsers send them ("https://app.example.com"),
    -- or "*" for any.
    origins = { type = "array", items = { type = "string" }, default = { "*" } },
    -- Allowed origins as Lua patterns, matched against the whole Origin
    -- ("^https://[%w-]+%.example%.com$"; ^ and $ are added when missing).
    origin_patterns = { type = "array", items = { type = "string" }, default = {},
                        check = patterns_ok },
    methods = { type = "array", items = { type = "string", match = "^[A-Z]+$" },
                default = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS" } },
    -- Request headers a preflight may ask for; absent: whatever it asks.
    headers = { type = "array", items = { type = "string", match = TOKEN } },
    -- Response headers scripts may read.
    exposed_headers = { type = "array", items = { type = "string", match = TOKEN }, default = {} },
    -- Allow cookies and HTTP auth; "*" origins are then answered with the
    -- request's own Origin, as browsers refuse "*" with credentials.
    credentials = { type = "boolean", default = false },
    -- Seconds a browser may cache a preflight answer.
    max_age = { type = "integer", default = 3600, min = 0 },
    -- Send preflights on to the route instead of answering them here.
    preflight_continue = { type = "boolean", default = false },
  },
}
