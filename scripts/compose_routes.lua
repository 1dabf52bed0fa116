-- The route table of docker-compose.yml's edge (conf/compose.lua): the
-- seed's (scripts/routes.lua), with the page served by the `frontend`
-- service instead of public/ through moongate. One origin: REST and
-- WebSocket under /api as in routes.lua, everything else to the frontend.
local routes = require "routes"

local out = {}
for _, r in ipairs(routes) do
  -- the static page's routes (scripts/static.lua handlers) give way
  if not (r.path and r.handler and not r.routes and r.path:match("^/[%w%.]*$")) then
    out[#out + 1] = r
  end
end
out[#out + 1] = { prefix = "/", upstream = "frontend" }
return out
