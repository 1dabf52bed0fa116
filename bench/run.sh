#!/bin/sh
# make bench: moongate (2 workers, bench/moongate.conf.lua on :19090) beside
# nginx and HAProxy, with ../shared/bench's harness, in one run. Prints the
# harness's table (ratios against nginx are read off it). Bounded: the default
# run takes about 4 minutes. Env: DURATION, REPS, IDLE_N as for run_all.sh.
set -eu
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench}
[ -x "$BENCH/run_all.sh" ] || { echo "bench: $BENCH/run_all.sh not found" >&2; exit 1; }
for p in nginx libnginx-mod-http-lua haproxy wrk; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
pidfile=$(mktemp -u /tmp/moongate-bench-XXXXXX.pid)
# In a session of its own, as the peers are (nginx and HAProxy daemonize,
# ws_echo runs under setsid): with the kernel's autogroup scheduling on, a
# process sharing this shell's session shares one CPU share with the load
# generators started from it.
setsid -f ./moongate -c bench/moongate.conf.lua -p "$pidfile" 2>/tmp/moongate-bench.log
i=0
while [ ! -s "$pidfile" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true; "$BENCH/stop_peers.sh" >/dev/null' EXIT INT TERM
KEEP=1 EXTRA="moongate=19090:$pidfile" "$BENCH/run_all.sh" 19001 19080 19081 19082 19002
# What the harness does not run: moongate's relay mode (its own WebSocket to
# ws_echo, frames parsed both ways) against nginx's WebSocket proxying, and
# idle handler-mode sockets with heartbeats on.
mg=$(cat "$pidfile")
ngx=$(cat "${BENCH_STATE:-/tmp/moongate-bench}/run/nginx_proxy.pid")
for r in $(seq 1 "${REPS:-3}"); do
  echo "ws nginx run$r: $(CPU_PIDS=$ngx "$BENCH/ws_throughput.sh" 19080 /ws 64 1500)"
  echo "ws moongate-relay run$r: $(CPU_PIDS=$mg "$BENCH/ws_throughput.sh" 19090 /relay 64 1500)"
done
echo "idle moongate-handler: $("$BENCH/ws_idle.sh" 19090 /handler "${IDLE_N:-10000}" "$mg")"
