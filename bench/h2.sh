#!/usr/bin/env bash
# make bench, the HTTP/2 round: h2load (nghttp2-client) against moongate
# (2 workers, `http2 = true`), nginx (2 workers, `listen ... ssl http2`) and
# h2o (2 threads), in one run, all three with the same ECDSA P-256
# certificate, TLS 1.3, ALPN h2, each proxying to the harness's upstream
# (../shared/bench: nginx on 19001) over keep-alive HTTP/1.1. Each rep runs
# h2load -c CONNS -m STREAMS (64 x 16) for DURATION s against each server
# (the order rotates per rep) and reads the server's CPU (master and
# workers, /proc) around it; it prints requests/s, CPU per request
# (server CPU over the run / requests done) and the medians' ratios against
# nginx and h2o. Bounded: about REPS x 3 x (DURATION + 2) s.
# Env: DURATION (10), REPS (3), CONNS (64), STREAMS (16), POOL (CONNS x
# STREAMS), LOAD_CPUS (1, as the harness), BENCH (../shared/bench), BPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=${BENCH:-../shared/bench}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
. "$BENCH/common.sh"
DURATION=${DURATION:-10}; REPS=${REPS:-3}; CONNS=${CONNS:-64}; STREAMS=${STREAMS:-16}
# idle upstream connections each nginx and moongate worker keeps: room for
# every stream in flight (CONNS x STREAMS), so neither opens and closes
# upstream connections as the load wavers (h2o's pool has no such bound)
POOL=${POOL:-$((CONNS * STREAMS))}
UP=19001; NGX=19445; MG=19446; H2O=19447; MG_PLAIN=19094
BPATH=${BPATH:-/api/execution/123/status?tenant_id=t1}
for p in nginx h2o openssl curl; do
  command -v "$p" >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
command -v h2load >/dev/null 2>&1 ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
[ -x ./moongate ] || { echo "bench: ./moongate not built (make)" >&2; exit 1; }
. bench/tls_common.sh
tls_state h2
tls_nginx_conf "the HTTP/2 round's nginx: the harness's nginx_proxy on an h2 TLS listener" \
  "$NGX ssl http2 reuseport backlog=4096" "$POOL"
cat >"$S/h2o.conf" <<EOF
# the HTTP/2 round's h2o: 2 threads, a reverse proxy to the upstream
num-threads: 2
user: $(id -un)
pid-file: $S/h2o.pid
error-log: $S/h2o.error.log
max-connections: 19000
http2-max-concurrent-requests-per-connection: 128
listen:
  host: 127.0.0.1
  port: $H2O
  ssl:
    certificate-file: $S/cert.pem
    key-file: $S/key.pem
    ocsp-update-interval: 0
proxy.timeout.keepalive: 300000
hosts:
  default:
    paths:
      /:
        proxy.reverse.url: http://127.0.0.1:$UP/
        proxy.preserve-host: ON
EOF
cat >"$S/moongate.conf.lua" <<EOF
-- the HTTP/2 round's moongate: bench/moongate.conf.lua with an h2 TLS listener
return {
  listen = "127.0.0.1:$MG_PLAIN",
  workers = 2,
  http2 = true,
  routes = "$ROOT/bench/routes.lua",
  access_log = false,
  log_level = "warn",
  limits = { h2_streams = 128 },
  tls = {
    listen = "127.0.0.1:$MG",
    certificates = { { cert = "$S/cert.pem", key = "$S/key.pem" } },
    protocols = { "TLSv1.3" },
  },
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:$UP" }, keepalive = $POOL },
    echo = { servers = { "http://127.0.0.1:19002" }, keepalive = 128 },
  },
}
EOF

ONLY="upstream" "$BENCH/start_peers.sh" "$UP" >/dev/null
mgpid=""; h2opid=""
cleanup() {
  [ -n "$mgpid" ] && kill "$mgpid" 2>/dev/null || true
  [ -n "$h2opid" ] && kill "$h2opid" 2>/dev/null || true
  [ -s "$S/nginx.pid" ] && kill "$(cat "$S/nginx.pid")" 2>/dev/null || true
  "$BENCH/stop_peers.sh" upstream >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
nginx -q -t -p "$S/" -c "$S/nginx.conf" -e "$S/nginx.error.log"
nginx -p "$S/" -c "$S/nginx.conf" -e "$S/nginx.error.log"
# sessions of their own, as the peers (see run.sh); h2o writes its pid file
setsid -f h2o -c "$S/h2o.conf" >"$S/h2o.log" 2>&1 </dev/null
setsid -f ./moongate -c "$S/moongate.conf.lua" -p "$S/moongate.pid" 2>"$S/moongate.log"
for _ in $(seq 1 50); do
  [ -s "$S/moongate.pid" ] && [ -s "$S/nginx.pid" ] && [ -s "$S/h2o.pid" ] && break
  sleep 0.1
done
mgpid=$(cat "$S/moongate.pid"); ngxpid=$(cat "$S/nginx.pid"); h2opid=$(cat "$S/h2o.pid")
wait_port "$NGX" && wait_port "$MG" && wait_port "$H2O" ||
  { echo "bench: a TLS listener did not come up" >&2; cat "$S/moongate.log" "$S/h2o.log" >&2; exit 1; }
for p in "$NGX" "$MG" "$H2O"; do # each answers over h2, through the upstream
  v=$(curl -fsS --http2 --cacert "$S/cert.pem" -H "$BENCH_AUTH" -o /dev/null -w '%{http_version}' \
    "https://localhost:$p$BPATH")
  [ "$v" = 2 ] || { echo "bench: :$p answered over HTTP/$v, not h2" >&2; exit 1; }
done
out="$S/results.txt"
: >"$out"
hz=$(getconf CLK_TCK)
per_op() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) * 1e6 / hz / n : 0) }'; }

# run PORT PID SECS -> rps=.. requests=.. ok=.. failed=.. srv_cpu_us_per_op=..
run() {
  local t0 t1 f l rps done ok failed proto
  f=$(mktemp "$S/h2load.XXXXXX")
  t0=$(cpu_ticks "$2")
  pin "$LOAD_CPUS" h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$3" -H "$BENCH_AUTH" \
    "https://127.0.0.1:$1$BPATH" >"$f" 2>&1 || true
  t1=$(cpu_ticks "$2")
  proto=$(awk '/^Application protocol:/ { print $3; exit }' "$f")
  rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4; exit }' "$f")
  l=$(grep -E '^requests: ' "$f" || true)
  [ -n "$rps" ] && [ -n "$l" ] && [ "$proto" = h2 ] ||
    { echo "bench: h2load failed on :$1: $(head -c 800 "$f")" >&2; rm -f "$f"; exit 1; }
  done=$(sed -E 's/.* ([0-9]+) done.*/\1/' <<<"$l")
  ok=$(grep -E '^status codes: ' "$f" | sed -E 's/^status codes: ([0-9]+) 2xx.*/\1/')
  failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$l")
  rm -f "$f"
  echo "rps=$rps requests=$done ok2xx=$ok failed=$failed srv_cpu_us_per_op=$(per_op "$t0" "$t1" "$done")"
}
run "$NGX" "$ngxpid" 2 >/dev/null # warm-up
run "$MG" "$mgpid" 2 >/dev/null
run "$H2O" "$h2opid" 2 >/dev/null
for r in $(seq 1 "$REPS"); do
  case $((r % 3)) in
  1) order="nginx:$NGX:$ngxpid moongate:$MG:$mgpid h2o:$H2O:$h2opid" ;;
  2) order="moongate:$MG:$mgpid h2o:$H2O:$h2opid nginx:$NGX:$ngxpid" ;;
  *) order="h2o:$H2O:$h2opid nginx:$NGX:$ngxpid moongate:$MG:$mgpid" ;;
  esac
  for t in $order; do
    set -- $(tr ':' ' ' <<<"$t")
    l=$(run "$2" "$3" "$DURATION"); echo "h2 round$r $1: $l"; echo "h2 $1 $l" >>"$out"
  done
done

echo "h2 load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: ratios within this run, not absolute figures)"
awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[2] != "") v[$2, kv[1], ++n[$2, kv[1]]] = kv[2] } }
  function med(w, k,   c, i, j, a, x) { c = n[w, k]; if (c == 0) return 0
    for (i = 1; i <= c; i++) a[i] = v[w, k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  function ratio(a, b) { return b > 0 ? a / b : 0 }
  END {
    printf "h2 (median, -c %s -m %s): nginx %.0f rps %.1f us/req, h2o %.0f rps %.1f us/req, moongate %.0f rps %.1f us/req\n", C, M,
      med("nginx", "rps"), med("nginx", "srv_cpu_us_per_op"), med("h2o", "rps"), med("h2o", "srv_cpu_us_per_op"),
      med("moongate", "rps"), med("moongate", "srv_cpu_us_per_op")
    for (p = 1; p <= 2; p++) { w = p == 1 ? "nginx" : "h2o"
      printf "h2 moongate / %s: rps %.3fx, CPU per request %.3fx (failed: moongate %d, %s %d)\n", w,
        ratio(med("moongate", "rps"), med(w, "rps")), ratio(med("moongate", "srv_cpu_us_per_op"), med(w, "srv_cpu_us_per_op")),
        med("moongate", "failed"), w, med(w, "failed") } }' C="$CONNS" M="$STREAMS" "$out"
