-- Bench (bench/metrics.sh): one proxied route, the cost of metrics and the access log.
return {
  { prefix = "/plain", upstream = "runtime" },
}
