-- The shipped scripts' modules (auth, execution, gateway, static) are strict
-- (moongate.module): `moongate -t` on the shipped project whose routes.lua
-- misspells a member fails at that line with a did-you-mean, instead of
-- loading a route without its hook or handler.
local helpers = require "spec.helpers"
local seed = require "spec.seed_helpers"

local shq = helpers.shq
local fmt = string.format

local SHIPPED_ROUTES = helpers.read_file(helpers.root .. "/scripts/routes.lua")

-- The shipped project (conf, scripts, public) with `routes` as its
-- scripts/routes.lua, checked by `moongate -t`: output, exit code.
local function check(routes)
  local dir = helpers.tmpdir("seed-modules")
  helpers.mkdir_p(dir .. "/conf")
  helpers.write_file(dir .. "/conf/moongate.lua", helpers.read_file(helpers.root .. "/conf/moongate.lua"))
  for name, data in pairs(seed.shipped_files()) do
    local path = dir .. "/scripts/" .. name
    helpers.mkdir_p(path:match("^(.*)/[^/]*$"))
    helpers.write_file(path, data)
  end
  helpers.write_file(dir .. "/scripts/routes.lua", routes)
  return helpers.sh(fmt("cd %s && timeout 20 %s -t -c %s", shq(dir), shq(helpers.bin),
    shq(dir .. "/conf/moongate.lua")))
end

-- The shipped routes with the first `from` (plain text) replaced by `to`,
-- and the line it is on.
local function edit(from, to)
  local at = assert(SHIPPED_ROUTES:find(from, 1, true), "not in the shipped routes.lua: " .. from)
  local line = select(2, SHIPPED_ROUTES:sub(1, at):gsub("\n", "")) + 1
  return SHIPPED_ROUTES:sub(1, at - 1) .. to .. SHIPPED_ROUTES:sub(at + #from), line
end

describe("the shipped scripts' modules", function()
  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("check clean as shipped", function()
    local out, rc = check(SHIPPED_ROUTES)
    assert.equal(0, rc, out)
  end)

  -- each: the shipped text, the typo, the message after "routes.lua:N: "
  local cases = {
    { "auth.access", "auth.acces", "module auth has no field 'acces' (did you mean 'access'?)" },
    { "auth.admin", "auth.admn", "module auth has no field 'admn' (did you mean 'admin'?)" },
    { "execution.status", "execution.satus", "module execution has no field 'satus' (did you mean 'status'?)" },
    { "execution.stream_access", "execution.stream_acess",
      "module execution has no field 'stream_acess' (did you mean 'stream_access'?)" },
    { "gateway.whoami", "gateway.whoam", "module gateway has no field 'whoam' (did you mean 'whoami'?)" },
    { "gateway.not_found", "gateway.no_such_function", "module gateway has no field 'no_such_function'\n" },
    { "static.file(", "static.files(", "module static has no field 'files' (did you mean 'file'?)" },
  }
  for _, c in ipairs(cases) do
    it("refuse " .. c[2] .. " at its line, with a hint", function()
      local routes, line = edit(c[1], c[2])
      local out, rc = check(routes)
      assert.not_equal(0, rc, out)
      local want = fmt("scripts/routes.lua:%d: %s", line, c[3])
      assert.truthy(out:find(want, 1, true), "expected '" .. want .. "' in: " .. out)
    end)
  end
end)
