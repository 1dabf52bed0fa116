-- Settings of the embedded demo Runtime (scripts/demo_runtime/).
return {
  -- how long an intent's execution takes, unless the intent's
  -- params.duration says otherwise (seconds, 0.5 .. 600)
  duration = 10,
  -- the tenants (realms) the demo knows; any well-formed tenant id works
  realms = {
    { realm_id = "t1", name = "Demo tenant one" },
    { realm_id = "t2", name = "Demo tenant two" },
  },
  -- tokens its introspection endpoint knows (auth_config verifier = "runtime")
  tokens = {
    ["demo-token"] = { subject = "demo-user", tenant_id = "t1" },
    ["demo-token-t2"] = { subject = "demo-user-2", tenant_id = "t2" },
    ["demo-admin-token"] = { subject = "demo-admin", admin = true },
  },
  -- the guide agent's pause before it answers (seconds)
  agent_delay = 0.3,
}
