return {
  { prefix = "/api", upstream = "runtime" },
  { prefix = "/ws", upstream = "echo" },
  { path = "/lua", handler = function() return 200, '{"status":"running"}' end },
}
