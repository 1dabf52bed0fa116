#!/bin/sh
# make bench-plugins: issue 5's figure. moongate (bench/plugins.conf.lua on
# :19091, 2 workers) serves one upstream route plain (/plain), with a no-op
# access hook (/hook) and with jwt-auth + rate-limit (/api); nginx with an
# access_by_lua hook (the harness's nginx_lua) runs beside it. Round-robin, REPS x DURATION s each.
# Prints each run and the medians. Env: DURATION (5), REPS (3), CONNS (64).
set -eu
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench}
DURATION=${DURATION:-5}; REPS=${REPS:-3}; CONNS=${CONNS:-64}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
for p in nginx libnginx-mod-http-lua wrk openssl; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hdr=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
pay=$(printf '{"sub":"bench","exp":4102444800}' | b64url)
sig=$(printf '%s.%s' "$hdr" "$pay" | openssl dgst -sha256 -hmac bench-secret -binary | b64url)
TOKEN="$hdr.$pay.$sig"
ONLY="upstream nginx_lua" "$BENCH/start_peers.sh" >/dev/null
pidfile=$(mktemp -u /tmp/moongate-bench-XXXXXX.pid)
# a session of its own, as the peers (see run.sh)
setsid -f ./moongate -c bench/plugins.conf.lua -p "$pidfile" 2>/tmp/moongate-bench-plugins.log
i=0
while [ ! -s "$pidfile" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true; "$BENCH/stop_peers.sh" >/dev/null' EXIT INT TERM
mg=$(cat "$pidfile")
lua_pid=$(cat "${BENCH_STATE:-/tmp/moongate-bench}/run/nginx_lua.pid")
run() { # run NAME PORT PATH PID AUTH
  BENCH_PATH=$3 BENCH_AUTH=$5 CPU_PIDS=$4 WARMUP_S=${6:-0} "$BENCH/http.sh" "$2" "$DURATION" "$CONNS"
}
out=$(mktemp)
run plain 19091 /plain "$mg" "" 1 >/dev/null
run hook 19091 /hook "$mg" "" 1 >/dev/null
run api 19091 /api "$mg" "Authorization: Bearer $TOKEN" 1 >/dev/null
run nginx_lua 19081 /x "$lua_pid" "Authorization: Bearer bench-token" 1 >/dev/null
for r in $(seq 1 "$REPS"); do
  for t in plain hook api nginx_lua; do
    case $t in
      plain) l=$(run plain 19091 /plain "$mg" "") ;;
      hook) l=$(run hook 19091 /hook "$mg" "") ;;
      api) l=$(run api 19091 /api "$mg" "Authorization: Bearer $TOKEN") ;;
      nginx_lua) l=$(run nginx_lua 19081 /x "$lua_pid" "Authorization: Bearer bench-token") ;;
    esac
    echo "$t run$r: $l"; echo "$t $l" >>"$out"
  done
done
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1], ++n[$1, kv[1]]] = kv[2] } names[$1] = 1 }
  function med(t, k,   c, i, j, a, x) { c = n[t, k]; for (i = 1; i <= c; i++) a[i] = v[t, k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  END { for (t in names) printf "%-10s median rps=%.0f p99_ms=%s cpu_us=%s non2xx=%s\n", t, med(t, "rps"), med(t, "p99_ms"), med(t, "srv_cpu_us_per_op"), med(t, "non2xx")
    p = med("plain", "rps"); h = med("hook", "rps"); a = med("api", "rps"); l = med("nginx_lua", "rps")
    printf "hook/plain=%.2f api/plain=%.2f api/nginx_lua=%.2f\n", h / p, a / p, a / l }' "$out"
rm -f "$out"
