-- moongate's shipped configuration. Every field is optional; the values
-- here are the defaults unless noted. Reference: docs/configuration.md.
-- Environment overrides: MOONGATE_LISTEN, MOONGATE_WORKERS, MOONGATE_MAX_OPEN_FILES,
-- MOONGATE_UPSTREAM_<NAME> (e.g. MOONGATE_UPSTREAM_RUNTIME=http://runtime:9001),
-- MOONGATE_SERVER_<NAME>_LISTEN (e.g. MOONGATE_SERVER_DEMO_RUNTIME_LISTEN=127.0.0.1:9101),
-- MOONGATE_TLS_LISTEN + MOONGATE_TLS_CERT + MOONGATE_TLS_KEY (HTTPS beside `listen`, e.g.
-- MOONGATE_TLS_LISTEN=0.0.0.0:8443 MOONGATE_TLS_CERT=certs/site.pem MOONGATE_TLS_KEY=certs/site.key),
-- MOONGATE_DEMO=0|1 (the demo below). `moongate --help` lists them all.
-- This is `make run`'s conf: a demo. `make install` and the container ship
-- conf/default.lua instead (demo off).
return {
  listen = "127.0.0.1:8080",
  workers = "auto",                 -- one worker per core
  max_open_files = 0,               -- soft descriptor limit set at start (0 = the hard limit)
  -- demo mode (default false): the embedded demo Runtime below and the
  -- demo's static tokens (scripts/auth_config.lua) are on only with it
  demo = true,

  routes = "scripts/routes.lua",    -- relative to the project root (conf/'s parent)
  lua_path = { "scripts", "lib" },

  -- HTTPS and wss:// (docs/configuration.md, "TLS"): off unless given here
  -- or by the environment. Paths are relative to the project root.
  -- tls = {
  --   listen = "0.0.0.0:8443",
  --   certificates = {                    -- PEM (chain after the certificate); first = default;
  --     { cert = "certs/site.pem", key = "certs/site.key" },    -- SNI picks by SAN names
  --   },
  --   protocols = { "TLSv1.2", "TLSv1.3" },
  --   client_certificate = { ca = "certs/clients.pem", verify = "required" },  -- mTLS
  --   session_tickets = true,             -- keys shared by all workers ...
  --   ticket_rotate = 3600,               -- ... and rotated this often (seconds)
  --   hsts = "max-age=63072000",          -- Strict-Transport-Security on HTTPS responses
  --                                       -- (a certificates entry may add ocsp = "x.ocsp.der")
  -- },
  -- redirect_https = 308,                 -- plain listeners redirect to https (false, 301, 308)

  access_log = true,                -- JSON lines: true (stderr), false, "stdout" or a file
                                    -- (e.g. "/var/log/moongate/access.log", reopened on SIGUSR1)
  log_level = "info",

  -- Behind a balancer (docs/configuration.md, "Behind a balancer"): the
  -- peers whose X-Forwarded-For/-Proto/-Host are believed (CIDR blocks), and
  -- whether every listener expects a PROXY protocol v1/v2 header first.
  -- Each entry of `servers` has its own.
  trusted_proxies = {},             -- e.g. { "10.0.0.0/8", "fd00::/8" }
  proxy_protocol = false,

  -- WebSocket-safe timeouts (seconds, 0 = none): long-lived sockets and
  -- streams are never cut by a fixed read/write deadline, idle keep-alive
  -- connections (an agent chat left open) last an hour, a slow request
  -- head is still cut after 30 s, and a request body that stops for 60 s
  -- gets 408 (`body`: the gap between body bytes, applied even with read = 0).
  timeouts = {
    read = 0,
    write = 0,
    idle = 3600,
    header = 30,
    drain = 10,
    body = 60,
  },

  limits = {
    header_size = 16384,
    header_count = 100,
    body_size = 1048576,
  },

  -- The embedded demo Runtime (scripts/demo_runtime/, docs/runtime-contract.md):
  -- a second listener with its own route table, so that a first run works
  -- with nothing else installed. With a real Runtime, set `enabled = false`
  -- and point the `runtime` upstream at it.
  servers = {
    demo_runtime = {
      enabled = true,
      demo = true,                      -- served in demo mode only
      listen = "127.0.0.1:9001",
      routes = "scripts/demo_runtime/routes.lua",
      access_log = false, -- its own requests stay out of the access log (the gateway's are in it)
    },
  },

  -- shared-memory dictionaries (name = bytes), seen by every worker; the
  -- demo Runtime keeps its list of submitted intents in this one
  shared_dicts = {
    demo_runtime = 1048576,
  },

  upstreams = {
    -- the Runtime backend (the demo Runtime above by default); point it
    -- elsewhere with MOONGATE_UPSTREAM_RUNTIME=http://runtime:9001
    -- (https://runtime:9443 talks TLS, verified against the system store or
    -- `tls = { ca = "conf/ca.pem" }`; docs/configuration.md, "Upstreams over TLS")
    runtime = {
      servers = { "http://127.0.0.1:9001" },
      keepalive = 64,
      connect_timeout = 5,    -- seconds to connect
      response_timeout = 60,  -- request sent in full -> whole response head (a deadline)
      body_timeout = 60,      -- longest pause in body progress, either way (0 = none)
      max_fails = 3,
      fail_timeout = 10,
      -- active checks: a server that fails `fall` in a row gets no traffic
      -- until it passes `rise` (docs/configuration.md, "Active health checks")
      -- health_check = { path = "/healthz", interval = 5, timeout = 2, expect = 200, rise = 2, fall = 3 },
    },
  },

  -- The admin listener (docs/operations.md): /healthz, /readyz and /metrics
  -- for anyone who can reach it, the JSON API (/routes, /upstreams,
  -- /config, POST /reload, ...) and the dashboard (GET /) with
  -- `Authorization: Bearer <token>`. Off unless listen is set; keep it on
  -- 127.0.0.1 or a private network. MOONGATE_ADMIN_LISTEN and
  -- MOONGATE_ADMIN_TOKEN replace these (a token belongs in the environment).
  -- admin = { listen = "127.0.0.1:9901", token = "a-long-random-string" },
  -- health_path = "/ping", -- /readyz on the main listener too

  -- Automatic certificates (docs/configuration.md, "Automatic certificates
  -- (ACME)"): needs a TLS listener with a default certificate, and port 80
  -- reachable from the ACME server for the http-01 challenge.
  -- acme = {
  --   directory = "https://acme-v02.api.letsencrypt.org/directory",
  --   contact = "mailto:ops@example.com",
  --   names = { "example.com" },
  --   storage = "acme",
  -- },
}
