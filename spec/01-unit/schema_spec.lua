-- Unit specs for the keys lib/moongate/schema.lua has for moongate's own conf
-- and route schemas (message, prepare, convert, as, open, optional, keys,
-- order, validate()'s opts and its keys/hint on error). Plugin schemas are
-- covered by spec/01-unit/plugins_spec.lua and spec/03-plugins/*/01-schema_spec.lua.
--
-- Run: busted --lua=luajit -m 'lib/?.lua;lib/?/init.lua' spec/01-unit/schema_spec.lua

local schema = require "moongate.schema"

-- The error of validate() as path, reason, hint (and keys, when asked).
local function fail(s, conf, opts, with_keys)
  local out, path, reason, hint, keys = schema.validate(s, conf, opts)
  assert.is_nil(out)
  if with_keys then return path, reason, hint, keys end
  return path, reason, hint
end


describe("moongate.schema for moongate's own files", function()

  it("accepts the extra spec keys in check() and still refuses typos", function()
    assert.is_true(schema.check({ order = { "a" }, fields = {
      a = { type = "any", message = "m {type}", prepare = print, convert = print, as = "b" },
      t = { type = "table", open = true, optional = true, fields = {} },
      m = { type = "table", keys = print, values = { type = "string" } },
    } }))
    local ok, err = schema.check({ fields = { a = { type = "string", mesage = "x" } } })
    assert.is_nil(ok)
    assert.equal("schema: field a: unknown schema key 'mesage' (did you mean 'message'?)", err)
    assert.is_nil((schema.check({ fields = { a = { type = "string", convert = 1 } } })))
    assert.is_nil((schema.check({ fields = { a = { type = "string", message = 1 } } })))
  end)

  it("reports every built-in failure with the spec's message", function()
    local s = { fields = {
      n = { type = "number", min = 0, max = 10, message = "expected a small number, got {value}" },
      t = { type = "table", message = "expected a table, got {type}" },
    } }
    assert.same({ "n", "expected a small number, got -1" }, { fail(s, { n = -1 }) })
    assert.same({ "n", "expected a small number, got 11" }, { fail(s, { n = 11 }) })
    local path, reason, hint = fail(s, { n = "x" })
    assert.same({ "n", "expected a small number, got 'x'", "x" }, { path, reason, hint })
    assert.same({ "t", "expected a table, got boolean" }, { fail(s, { t = true }) })
  end)

  it("rewrites with prepare, normalizes with convert (defaults too), renames with as", function()
    local s = { fields = {
      list = { type = "array", prepare = function(v) return type(v) == "string" and { v } or v end,
               items = { type = "string" } },
      up = { type = "string", as = "upper", default = "d",
             convert = function(v)
               if v == "bad" then return nil, "no good", v end
               return v:upper()
             end },
    } }
    assert.same({ list = { "a" }, upper = "D" }, schema.validate(s, { list = "a" }))
    assert.same({ upper = "X" }, schema.validate(s, { up = "x" }))
    assert.same({ "up", "no good", "bad" }, { fail(s, { up = "bad" }) })
  end)

  it("keeps an optional record absent, ignores unknown keys of an open one", function()
    local s = { fields = {
      opt = { type = "table", optional = true, fields = { a = { type = "number", default = 1 } } },
      dflt = { type = "table", fields = { a = { type = "number", default = 1 } } },
      open = { type = "table", open = true, fields = { a = { type = "number", default = 2 } } },
    } }
    assert.same({ dflt = { a = 1 }, open = { a = 2 } }, schema.validate(s, {}))
    assert.same({ opt = { a = 1 }, dflt = { a = 1 }, open = { a = 5 } },
                schema.validate(s, { opt = {}, open = { a = 5, other = true } }))
  end)

  it("names an unknown key at its record with named_unknown, with the key as the hint", function()
    local s = { fields = { t = { type = "table", fields = { read = { type = "number" } } } } }
    assert.same({ "t.reed", "unknown field (did you mean 'read'?)" }, { fail(s, { t = { reed = 1 } }) })
    local path, reason, hint, keys = fail(s, { t = { reed = 1 } }, { named_unknown = true }, true)
    assert.same({ "t", "unknown field 'reed' (did you mean 'read'?)", { unknown = "reed" }, { "t" } },
                { path, reason, hint, keys })
    assert.same({ nil, "unknown field [1]", { unknown = 1 } }, { fail(s, { 1 }, { named_unknown = true }) })
  end)

  it("checks map keys, at the key or at the map", function()
    local function keys_at(at_map)
      return { fields = { m = { type = "table", values = { type = "number" },
        keys = function(k)
          if k == "ok" then return true end
          return nil, "bad name " .. tostring(k), at_map
        end } } }
    end
    assert.same({ 'm["x-y"]', "bad name x-y" }, { fail(keys_at(false), { m = { ["x-y"] = 1 } }) })
    local path, reason, hint = fail(keys_at(true), { m = { ["x-y"] = 1 } })
    assert.same({ "m", "bad name x-y", "x-y" }, { path, reason, hint })
    assert.same({ m = { ok = 1 } }, schema.validate(keys_at(true), { m = { ok = 1 } }))
  end)

  it("runs fields and order functions in the given order, with ctx", function()
    local seen = {}
    local s = {
      order = {
        "b",
        function(raw, out, ctx)
          seen[#seen + 1] = "fn:" .. tostring(out.b) .. ":" .. ctx.tag
          if raw.stop then return nil, {}, "stopped here" end
          out.extra = true
          return true
        end,
        "a",
      },
      fields = {
        a = { type = "any", convert = function(v) seen[#seen + 1] = "a"; return v end },
        b = { type = "any", convert = function(v) seen[#seen + 1] = "b"; return v end },
        c = { type = "any", convert = function(v) seen[#seen + 1] = "c"; return v end },
        stop = { type = "boolean" },
      },
    }
    assert.same({ a = 1, b = 2, c = 3, extra = true },
                schema.validate(s, { a = 1, b = 2, c = 3 }, { ctx = { tag = "T" } }))
    assert.same({ "b", "fn:2:T", "a", "c" }, seen)
    seen = {}
    assert.same({ nil, "stopped here" }, { fail(s, { b = 1, stop = true }, { ctx = { tag = "T" } }) })
    assert.same({ "b", "fn:1:T" }, seen)
  end)
end)
