#!/bin/sh
# bench/cosocket.sh: issue 14's cosocket figure, one run. A Lua handler makes
# one upstream call per request to the harness's nginx upstream (:19001):
#   http  moongate.http.request (moongate, bench/cosocket.conf.lua, :19097)
#   sock  moongate.socket.tcp, keep-alive, HTTP/1.1 by hand (same moongate)
#   ngx   OpenResty's ngx.socket.tcp doing the same (Debian nginx +
#         libnginx-mod-http-lua, bench/cosocket.nginx.conf.in, :19098)
# 2 workers each, access logs off, wrk from the harness (../shared/bench).
# Prints each run (rps, latency, server CPU per request) and the ratios
# against ngx. Env: DURATION (8), CONNS (64), WARMUP (2); CHECK=1 only starts
# everything and checks the three answers (no load).
set -eu
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench}
DURATION=${DURATION:-8}; CONNS=${CONNS:-64}; WARMUP=${WARMUP:-2}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
[ -x ./moongate ] || { echo "bench: ./moongate not built (make)" >&2; exit 1; }
for p in nginx libnginx-mod-http-lua wrk; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
work=$(mktemp -d /tmp/moongate-bench-cosock.XXXXXX)
pidfile=$work/moongate.pid
cleanup() {
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  [ -s "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  "$BENCH/stop_peers.sh" upstream >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
ONLY="upstream" "$BENCH/start_peers.sh" >/dev/null
sed "s#@RUN@#$work#g" bench/cosocket.nginx.conf.in > "$work/nginx.conf"
nginx -q -p "$work/" -c "$work/nginx.conf" -e "$work/error.log"
# a session of its own, as the peers (see run.sh)
setsid -f ./moongate -c bench/cosocket.conf.lua -p "$pidfile" 2>"$work/moongate.log"
i=0
while [ $i -lt 50 ]; do
  [ -s "$pidfile" ] && [ -s "$work/nginx.pid" ] &&
    curl -s -o /dev/null http://127.0.0.1:19097/http && curl -s -o /dev/null http://127.0.0.1:19098/sock && break
  sleep 0.1; i=$((i + 1))
done
for u in 19097/http 19097/sock 19098/sock; do
  c=$(curl -s -o "$work/resp" -w '%{http_code}' "http://127.0.0.1:$u")
  [ "$c" = 200 ] && grep -q running "$work/resp" ||
    { echo "bench: :$u answers $c: $(cat "$work/resp")" >&2; tail -5 "$work/moongate.log" "$work/error.log" >&2; exit 1; }
done
[ "${CHECK:-0}" = 1 ] && { echo "bench: all three answer 200"; exit 0; }
mg=$(cat "$pidfile"); ngx=$(cat "$work/nginx.pid")
out=$work/runs
for t in http sock ngx; do
  case $t in
    http) port=19097; path=/http; pid=$mg ;;
    sock) port=19097; path=/sock; pid=$mg ;;
    ngx) port=19098; path=/sock; pid=$ngx ;;
  esac
  l=$(BENCH_PATH=$path BENCH_AUTH='' CPU_PIDS=$pid WARMUP_S=$WARMUP "$BENCH/http.sh" $port "$DURATION" "$CONNS")
  echo "$t: $l"; echo "$t $l" >>"$out"
done
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1]] = kv[2] } }
  END { printf "http/ngx rps=%.2fx cpu_per_req=%.2fx; sock/ngx rps=%.2fx cpu_per_req=%.2fx; sock/http rps=%.2fx\n",
    v["http", "rps"] / v["ngx", "rps"], v["http", "srv_cpu_us_per_op"] / v["ngx", "srv_cpu_us_per_op"],
    v["sock", "rps"] / v["ngx", "rps"], v["sock", "srv_cpu_us_per_op"] / v["ngx", "srv_cpu_us_per_op"],
    v["sock", "rps"] / v["http", "rps"] }' "$out"
