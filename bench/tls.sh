#!/usr/bin/env bash
# make bench, the TLS round: moongate (2 workers, a TLS listener) beside
# nginx (2 workers, `ssl_session_tickets on`), both with the same ECDSA
# P-256 certificate, TLS 1.3 only, both proxying to the harness's upstream
# (../shared/bench: nginx on 19001), in one run. For both it measures:
#   idle   RSS per idle TLS connection at IDLE_N (10 000) keep-alive
#          connections that each served one request (freshly started
#          servers, first; workers' + master's RSS delta / connections)
#   ka     proxied requests/s and server CPU per request on keep-alive HTTPS
#          connections (wrk, CONNS 64, REPS x DURATION s, round-robin)
#   full   full handshakes/s (a new connection per request, openssl s_time
#          -new, HS_PAR in parallel) and server CPU per handshake
#   resume resumed handshakes/s (s_time -reuse: TLS 1.3 session tickets)
# and prints ratios against nginx (moongate / nginx; CPU and memory: lower is
# better). Then it checks for kernel TLS (SSL_OP_ENABLE_KTLS needs the tls
# module: /proc/net/tls_stat) and says whether it could be measured.
# Bounded: about 3 minutes with the defaults. Env: DURATION (10), REPS (3),
# CONNS (64), HS_SECS (5), HS_PAR (4), IDLE_N (10000), LOAD_CPUS (1, as the
# harness), BENCH (../shared/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=${BENCH:-../shared/bench}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
. "$BENCH/common.sh"
DURATION=${DURATION:-10}; REPS=${REPS:-3}; CONNS=${CONNS:-64}
HS_SECS=${HS_SECS:-5}; HS_PAR=${HS_PAR:-4}; IDLE_N=${IDLE_N:-10000}
UP=19001; NGX=19443; MG=19444; MG_PLAIN=19093
BPATH=/api/execution/123/status?tenant_id=t1
for p in nginx wrk openssl python3; do
  command -v "$p" >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
[ -x ./moongate ] || { echo "bench: ./moongate not built (make)" >&2; exit 1; }
. bench/tls_common.sh
tls_state tls
tls_nginx_conf "the TLS round's nginx: the harness's nginx_proxy with a TLS listener" \
  "$NGX ssl reuseport backlog=4096" 128 "        ssl_session_tickets on;"
cat >"$S/moongate.conf.lua" <<EOF
-- the TLS round's moongate: bench/moongate.conf.lua with a TLS listener
return {
  listen = "127.0.0.1:$MG_PLAIN",
  workers = 2,
  routes = "$ROOT/bench/routes.lua",
  access_log = false,
  log_level = "warn",
  tls = {
    listen = "127.0.0.1:$MG",
    certificates = { { cert = "$S/cert.pem", key = "$S/key.pem" } },
    protocols = { "TLSv1.3" },
    session_tickets = true,
  },
  upstreams = {
    runtime = { servers = { "http://127.0.0.1:$UP" }, keepalive = 128 },
    echo = { servers = { "http://127.0.0.1:19002" }, keepalive = 128 },
  },
}
EOF

ONLY="upstream" "$BENCH/start_peers.sh" "$UP" >/dev/null
mgpid=""
cleanup() {
  [ -n "$mgpid" ] && kill "$mgpid" 2>/dev/null || true
  [ -s "$S/nginx.pid" ] && kill "$(cat "$S/nginx.pid")" 2>/dev/null || true
  "$BENCH/stop_peers.sh" upstream >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
nginx -q -t -p "$S/" -c "$S/nginx.conf" -e "$S/nginx.error.log"
nginx -p "$S/" -c "$S/nginx.conf" -e "$S/nginx.error.log"
# a session of its own, as the peers (see run.sh)
setsid -f ./moongate -c "$S/moongate.conf.lua" -p "$S/moongate.pid" 2>"$S/moongate.log"
for _ in $(seq 1 50); do [ -s "$S/moongate.pid" ] && [ -s "$S/nginx.pid" ] && break; sleep 0.1; done
mgpid=$(cat "$S/moongate.pid"); ngxpid=$(cat "$S/nginx.pid")
wait_port "$NGX" && wait_port "$MG" || { echo "bench: a TLS listener did not come up" >&2; cat "$S/moongate.log" >&2; exit 1; }
curl -fsS --cacert "$S/cert.pem" "https://localhost:$MG$BPATH" >/dev/null
curl -fsS --cacert "$S/cert.pem" "https://localhost:$NGX$BPATH" >/dev/null
out="$S/results.txt"
: >"$out"
hz=$(getconf CLK_TCK)
# us of CPU per op of PIDs (children included) between two tick readings
per_op() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) * 1e6 / hz / n : 0) }'; }

# 1. idle memory, on the freshly started servers
for t in "nginx $NGX $ngxpid" "moongate $MG $mgpid"; do
  set -- $t
  line=$(pin "$LOAD_CPUS" python3 bench/http_idle.py --tls "$2" "$BPATH" "$IDLE_N" "$3")
  echo "tls idle $1: $line"
  echo "idle $1 $line" >>"$out"
done

# 2. keep-alive HTTPS requests, round-robin; 3. and 4. handshakes
ka() { # ka PORT PID [SECS] -> wrk's line + srv_cpu_us_per_op
  local t0 t1 l
  t0=$(cpu_ticks "$2")
  l=$(pin "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${3:-$DURATION}s" --timeout 5s -s "$BENCH_DIR/src/report.lua" \
    -H "$BENCH_AUTH" "https://127.0.0.1:$1$BPATH" | grep '^rps=')
  t1=$(cpu_ticks "$2")
  echo "$l srv_cpu_us_per_op=$(per_op "$t0" "$t1" "$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$l")")"
}
hs() { # hs PORT PID -new|-reuse -> handshakes/s, reused count, server CPU per handshake
  local t0 t1 w0 w1 i n r f c
  f=$(mktemp "$S/stime.XXXXXX")
  t0=$(cpu_ticks "$2"); w0=$(date +%s.%N)
  for i in $(seq 1 "$HS_PAR"); do
    pin "$LOAD_CPUS" openssl s_time -connect "127.0.0.1:$1" "$3" -time "$HS_SECS" -www "$BPATH" \
      >"$f.$i" 2>&1 &
  done
  wait
  w1=$(date +%s.%N); t1=$(cpu_ticks "$2")
  n=0; r=0
  for i in $(seq 1 "$HS_PAR"); do
    c=$(awk '/connections in [0-9.]+s;/ { print $1; exit }' "$f.$i")
    [ -n "$c" ] || { echo "bench: openssl s_time failed: $(head -c 500 "$f.$i")" >&2; exit 1; }
    n=$((n + c))
    # s_time prints one character per connection: '*' new, 'r' reused
    r=$((r + $(grep -oE '^[*r]+$' "$f.$i" | tr -cd 'r' | wc -c)))
    rm -f "$f.$i"
  done
  rm -f "$f"
  awk -v n="$n" -v r="$r" -v a="$w0" -v b="$w1" -v c="$(per_op "$t0" "$t1" "$n")" \
    'BEGIN { printf "hs_per_s=%.0f conns=%d reused=%d srv_cpu_us_per_op=%s\n", n / (b - a), n, r, c }'
}
ka "$NGX" "$ngxpid" 2 >/dev/null # warm-up
ka "$MG" "$mgpid" 2 >/dev/null
for r in $(seq 1 "$REPS"); do
  order="nginx:$NGX:$ngxpid moongate:$MG:$mgpid"
  [ $((r % 2)) -eq 0 ] && order="moongate:$MG:$mgpid nginx:$NGX:$ngxpid"
  for t in $order; do
    set -- $(tr ':' ' ' <<<"$t")
    l=$(ka "$2" "$3"); echo "tls ka round$r $1: $l"; echo "ka $1 $l" >>"$out"
    l=$(hs "$2" "$3" -new); echo "tls full round$r $1: $l"; echo "full $1 $l" >>"$out"
    l=$(hs "$2" "$3" -reuse); echo "tls resume round$r $1: $l"; echo "resume $1 $l" >>"$out"
  done
done

echo "tls load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg) (a quiet box: under 1.5 with the load generator's core busy)"
# medians and ratios against nginx
awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[2] != "") v[$1, $2, kv[1], ++n[$1, $2, kv[1]]] = kv[2] } }
  function med(r, w, k,   c, i, j, a, x) { c = n[r, w, k]; if (c == 0) return 0
    for (i = 1; i <= c; i++) a[i] = v[r, w, k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  function ratio(a, b) { return b > 0 ? a / b : 0 }
  END {
    printf "tls ka (median): nginx %.0f rps %.1f us/req, moongate %.0f rps %.1f us/req: rps %.3fx, CPU per request %.3fx (non2xx %d/%d)\n",
      med("ka", "nginx", "rps"), med("ka", "nginx", "srv_cpu_us_per_op"), med("ka", "moongate", "rps"), med("ka", "moongate", "srv_cpu_us_per_op"),
      ratio(med("ka", "moongate", "rps"), med("ka", "nginx", "rps")), ratio(med("ka", "moongate", "srv_cpu_us_per_op"), med("ka", "nginx", "srv_cpu_us_per_op")),
      med("ka", "nginx", "non2xx"), med("ka", "moongate", "non2xx")
    for (m = 1; m <= 2; m++) { k = m == 1 ? "full" : "resume"
      printf "tls %s handshakes (median): nginx %.0f/s %.1f us each (reused %d), moongate %.0f/s %.1f us each (reused %d): %.3fx, CPU per handshake %.3fx\n", k,
        med(k, "nginx", "hs_per_s"), med(k, "nginx", "srv_cpu_us_per_op"), med(k, "nginx", "reused"),
        med(k, "moongate", "hs_per_s"), med(k, "moongate", "srv_cpu_us_per_op"), med(k, "moongate", "reused"),
        ratio(med(k, "moongate", "hs_per_s"), med(k, "nginx", "hs_per_s")), ratio(med(k, "moongate", "srv_cpu_us_per_op"), med(k, "nginx", "srv_cpu_us_per_op")) }
    printf "tls idle: nginx %.2f KiB/conn, moongate %.2f KiB/conn: %.3fx\n", med("idle", "nginx", "kib_per_conn"),
      med("idle", "moongate", "kib_per_conn"), ratio(med("idle", "moongate", "kib_per_conn"), med("idle", "nginx", "kib_per_conn")) }' "$out"

# kernel TLS: OpenSSL 3 offloads the record layer to the kernel with
# SSL_OP_ENABLE_KTLS when the tls module is loaded (/proc/net/tls_stat)
if [ ! -e /proc/net/tls_stat ]; then
  modprobe tls 2>/dev/null || true
fi
if [ -e /proc/net/tls_stat ]; then
  echo "tls ktls: the kernel has TLS offload (/proc/net/tls_stat): $(tr -s ' \n' ' ' </proc/net/tls_stat)"
else
  kconf=$(zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_TLS[ =]' || echo "no /proc/config.gz")
  ossl=$(grep -q OPENSSL_NO_KTLS /usr/include/*/openssl/configuration.h /usr/include/openssl/configuration.h 2>/dev/null &&
    echo "OpenSSL built without kTLS" || echo "OpenSSL $(openssl version | cut -d' ' -f2) built with kTLS")
  echo "tls ktls: not available here: kernel $(uname -r) ($kconf), no /proc/net/tls_stat, 'modprobe tls' fails; $ossl; not measured"
fi
