-- hello-header: configuration. Every field has a default, so
-- `plugins = { ["hello-header"] = {} }` is a complete config. The loader
-- checks an operator's config against this table when a generation loads
-- and fills in the defaults: the handler can trust conf.
return {
  fields = {
    -- the header that carries the greeting, to the upstream and back
    header = { type = "string", default = "X-Hello", match = "^[%w-]+$" },
    greeting = { type = "string", default = "hello", len_min = 1 },
    -- names (from ?name=) that are answered 403 at the edge
    blocked = { type = "array", items = { type = "string" }, default = {} },
  },
}
