-- luacheck configuration: `luacheck lib scripts conf spec`
std = "luajit"

exclude_files = {
  "spec/out",     -- scratch trees written by the integration specs (gitignored)
  "lua_modules",  -- locally installed rocks, not our code
  ".luarocks",
}

files["spec"] = {
  std = "+busted",
}
