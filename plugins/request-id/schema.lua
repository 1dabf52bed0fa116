-- request-id: configuration (defaults live here; the handler trusts conf).
return {
  fields = {
    -- The header that carries the id, in both directions. With the default
    -- the core's own id is used (kept from the client when valid, else 32
    -- random hex digits) and the core already sends it upstream: then
    -- keep_incoming, max_length and generator do not apply.
    header_name = { type = "string", default = "X-Request-Id",
                    match = "^[%w!#$%%&'*+.^_`|~-]+$" },
    -- Keep a valid id the client sent (letters, digits, '-', '_', '.',
    -- at most max_length); otherwise generate one.
    keep_incoming = { type = "boolean", default = true },
    max_length = { type = "integer", default = 64, min = 1, max = 200 },
    -- How a new id looks: "uuid" (8-4-4-4-12, version 4) or "hex" (32 digits).
    generator = { type = "string", default = "uuid", one_of = { "uuid", "hex" } },
    -- Echo the id in the response head.
    echo_downstream = { type = "boolean", default = true },
  },
}
