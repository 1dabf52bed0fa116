-- moongate's Lua side as a rock: the `moongate` modules the binary loads
-- (lib/moongate) and the bundled plugins as moongate.plugins.<name>.handler
-- and .schema, where the plugin loader finds them on package.path.
-- The C core (the `moongate` binary, which provides moongate.core and
-- lua-cjson in its embedded LuaJIT) is built with `make`, not by LuaRocks.
--
--   luarocks lint moongate-0.1.0-1.rockspec
--   luarocks make --tree /usr/local moongate-0.1.0-1.rockspec
package = "moongate"
version = "0.1.0-1"

source = {
  url = "git+https://github.com/moongate-gw/moongate.git",
  tag = "v0.1.0",
}

description = {
  summary = "Lua side of moongate, a Lua-scriptable HTTP/WebSocket edge gateway",
  detailed = [[
moongate is an edge gateway (C11 core + LuaJIT): path routing, a streaming
reverse proxy, WebSockets in tunnel, relay and handler modes, and routes,
hooks and plugins written in Lua that reload on SIGHUP. This rock installs
its Lua modules (the moongate API wrapper, the conf and routes loader, the
plugin loader) and the bundled plugins: cors, jwt-auth, key-auth,
rate-limit, request-id, headers, ip-restriction, forward-auth,
request-size-limit and ws-message-limit.
]],
  homepage = "https://github.com/moongate-gw/moongate",
  maintainer = "moongate developers",
  license = "MIT", -- placeholder until the project states its license (no LICENSE file yet)
}

dependencies = {
  "lua >= 5.1, < 5.2", -- LuaJIT 2.1
}

-- rockspecs run without the standard library: every module spelled out
build = {
  type = "builtin",
  modules = {
    ["moongate"] = "lib/moongate/init.lua",
    ["moongate.loader"] = "lib/moongate/loader.lua",
    ["moongate.check"] = "lib/moongate/check.lua",
    ["moongate.routes"] = "lib/moongate/routes.lua",
    ["moongate.plugins"] = "lib/moongate/plugins.lua",
    ["moongate.schema"] = "lib/moongate/schema.lua",
    ["moongate.cidr"] = "lib/moongate/cidr.lua",
    ["moongate.jwk"] = "lib/moongate/jwk.lua",
    ["moongate.hints"] = "lib/moongate/hints.lua",
    ["moongate.tls_extras"] = "lib/moongate/tls_extras.lua",
    ["moongate.tls_conf"] = "lib/moongate/tls_conf.lua",
    ["moongate.acme_conf"] = "lib/moongate/acme_conf.lua",
    ["moongate.acme"] = "lib/moongate/acme.lua",
    ["moongate.mode"] = "lib/moongate/mode.lua",
    ["moongate.jitlog"] = "lib/moongate/jitlog.lua",
    ["moongate.redis"] = "lib/moongate/redis.lua",
    ["moongate.redis_conf"] = "lib/moongate/redis_conf.lua",
    ["moongate.plugins.cors.handler"] = "plugins/cors/handler.lua",
    ["moongate.plugins.cors.schema"] = "plugins/cors/schema.lua",
    ["moongate.plugins.jwt-auth.handler"] = "plugins/jwt-auth/handler.lua",
    ["moongate.plugins.jwt-auth.schema"] = "plugins/jwt-auth/schema.lua",
    ["moongate.plugins.key-auth.handler"] = "plugins/key-auth/handler.lua",
    ["moongate.plugins.key-auth.schema"] = "plugins/key-auth/schema.lua",
    ["moongate.plugins.rate-limit.handler"] = "plugins/rate-limit/handler.lua",
    ["moongate.plugins.rate-limit.schema"] = "plugins/rate-limit/schema.lua",
    ["moongate.plugins.request-id.handler"] = "plugins/request-id/handler.lua",
    ["moongate.plugins.request-id.schema"] = "plugins/request-id/schema.lua",
    ["moongate.plugins.headers.handler"] = "plugins/headers/handler.lua",
    ["moongate.plugins.headers.schema"] = "plugins/headers/schema.lua",
    ["moongate.plugins.ip-restriction.handler"] = "plugins/ip-restriction/handler.lua",
    ["moongate.plugins.ip-restriction.schema"] = "plugins/ip-restriction/schema.lua",
    ["moongate.plugins.forward-auth.handler"] = "plugins/forward-auth/handler.lua",
    ["moongate.plugins.forward-auth.schema"] = "plugins/forward-auth/schema.lua",
    ["moongate.plugins.request-size-limit.handler"] = "plugins/request-size-limit/handler.lua",
    ["moongate.plugins.request-size-limit.schema"] = "plugins/request-size-limit/schema.lua",
    ["moongate.plugins.ws-message-limit.handler"] = "plugins/ws-message-limit/handler.lua",
    ["moongate.plugins.ws-message-limit.schema"] = "plugins/ws-message-limit/schema.lua",
  },
  copy_directories = { "docs" },
}
