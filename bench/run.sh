#!/bin/sh
# make bench: moongate (2 workers, bench/moongate.conf.lua on :19090) beside
# nginx and HAProxy, with ../shared/bench's harness, in one run. Prints the
# harness's table (ratios against nginx are read off it), then WebSocket
# medians against nginx. Bounded: the default run takes about 6 minutes.
# Env: DURATION, REPS, IDLE_N as for run_all.sh; WS_REPS (5) and WS_MSGS
# (5000 per connection, 64 connections) for the WebSocket medians.
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
# Round-robin runs (nginx, relay, tunnel) of WS_MSGS messages per
# connection, then the medians: this box's speed drifts by more than the
# difference being measured, so single runs decide nothing.
# CPU time (utime + stime, clock ticks) of a master and its workers, read
# here rather than from the harness's line, which rounds to 0.1 us.
ticks() {
  for p in $1 $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{ print $12 + $13 }'
  done | awk '{ t += $1 } END { print t + 0 }'
}
hz=$(getconf CLK_TCK)
n=${WS_MSGS:-5000}
out=$(mktemp /tmp/moongate-bench-ws-XXXXXX)
for r in $(seq 1 "${WS_REPS:-5}"); do
  for t in "nginx $ngx 19080 /ws" "moongate-relay $mg 19090 /relay" "moongate-tunnel $mg 19090 /ws"; do
    set -- $t
    t0=$(ticks "$2")
    line=$("$BENCH/ws_throughput.sh" "$3" "$4" 64 "$n")
    us=$(echo "$(ticks "$2") $t0" | awk -v hz="$hz" -v m=$((64 * n)) '{ printf "%.2f", ($1 - $2) * 1e6 / hz / m }')
    echo "ws $1 run$r: $line srv_cpu_us_per_msg=$us"
    echo "$1 $line srv_cpu_us_per_msg=$us" >>"$out"
  done
done
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "=");
         if (kv[1] == "msgs_per_s") rate[$1, ++n[$1]] = kv[2];
         if (kv[1] == "srv_cpu_us_per_msg") cpu[$1, n[$1]] = kv[2] } }
     function med(a, who, k,   v, i, j, t) {
       for (i = 1; i <= k; i++) v[i] = a[who, i]
       for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
       return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2 }
     END { nr = med(rate, "nginx", n["nginx"]); nc = med(cpu, "nginx", n["nginx"])
       printf "ws medians: nginx %.0f msgs/s %.2f us/msg\n", nr, nc
       split("moongate-relay moongate-tunnel", who, " ")
       for (w = 1; w <= 2; w++) { r = med(rate, who[w], n[who[w]]); c = med(cpu, who[w], n[who[w]])
         printf "ws medians: %s %.0f msgs/s (%.3fx nginx) %.2f us/msg (%.3fx nginx)\n", who[w], r, r / nr, c, c / nc } }' "$out"
rm -f "$out"
echo "idle moongate-handler: $("$BENCH/ws_idle.sh" 19090 /handler "${IDLE_N:-10000}" "$mg")"
