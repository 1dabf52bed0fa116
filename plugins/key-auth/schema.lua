-- key-auth: configuration.
return {
  fields = {
    -- The accepted keys: a list { "k1", "k2" }, or a map of consumer name
    -- to key { alice = "k1" } (the name lands in ctx.consumer).
    keys = { type = "table", required = true, check = function(t)
      if next(t) == nil then return nil, "at least one key is required" end
      for k, v in pairs(t) do
        local label = type(k) == "string" and ("'" .. k .. "'") or tostring(k)
        if type(k) ~= "string" and (type(k) ~= "number" or k < 1 or k % 1 ~= 0) then
          return nil, "expected a list of keys or a map name -> key, found key " .. label
        end
        if type(v) ~= "string" or v == "" then
          return nil, "key " .. label .. ": expected a non-empty string"
        end
      end
      return true
    end },
    -- Where the key is looked for, in this order: each name as a request
    -- header, then as a query parameter.
    key_names = { type = "array", items = { type = "string", match = "^[%w_%-]+$" },
                  default = { "apikey" }, len_min = 1 },
    key_in_header = { type = "boolean", default = true },
    key_in_query = { type = "boolean", default = true },
    -- Blank the key header before the request goes upstream.
    hide_credentials = { type = "boolean", default = false },
  },
}
