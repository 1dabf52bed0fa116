-- request-size-limit: configuration.
return {
  fields = {
    -- Largest request body accepted, in bytes (413 beyond).
    max_bytes = { type = "integer", required = true, min = 0 },
    -- Answer 411 to a body without Content-Length (chunked). Otherwise such
    -- a body is bounded by the route's body_size, enforced by the core as
    -- it streams.
    require_length = { type = "boolean", default = false },
  },
}
