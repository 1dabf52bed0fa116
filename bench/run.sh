#!/bin/sh
# make bench: moongate (2 workers, bench/moongate.conf.lua on :19090) beside
# nginx and HAProxy, with ../shared/bench's harness, in one run. Prints the
# harness's table (ratios against nginx are read off it), then WebSocket
# rounds against nginx. Bounded: the default run takes about 6 minutes.
# Env: DURATION, REPS, IDLE_N as for run_all.sh; WS_REPS (5 rounds) and
# WS_MSGS (5000 per connection, 64 connections) for the WebSocket rounds.
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
# WebSocket rounds against nginx: each round runs nginx, relay and tunnel
# back to back (in reverse order every other round, so a steady drift
# favours no one) with WS_MSGS messages per connection; the verdict is the
# median of the rounds' ratios. This box's speed drifts by more than the
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
  order="nginx:$ngx:19080:/ws moongate-relay:$mg:19090:/relay moongate-tunnel:$mg:19090:/ws"
  [ $((r % 2)) -eq 0 ] && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
  for t in $order; do
    set -- $(echo "$t" | tr ':' ' ')
    t0=$(ticks "$2")
    line=$("$BENCH/ws_throughput.sh" "$3" "$4" 64 "$n")
    us=$(echo "$(ticks "$2") $t0" | awk -v hz="$hz" -v m=$((64 * n)) '{ printf "%.2f", ($1 - $2) * 1e6 / hz / m }')
    echo "ws round$r $1: $line srv_cpu_us_per_msg=$us"
    echo "$r $1 $line srv_cpu_us_per_msg=$us" >>"$out"
  done
done
awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "=");
         if (kv[1] == "msgs_per_s") rate[$2, $1] = kv[2];
         if (kv[1] == "srv_cpu_us_per_msg") cpu[$2, $1] = kv[2] }
       if ($1 > rounds) rounds = $1 }
     function med(v, k,   i, j, t) {
       for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
       return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2 }
     END { split("moongate-relay moongate-tunnel", who, " ")
       for (w = 1; w <= 2; w++) {
         for (r = 1; r <= rounds; r++) {
           q[r] = rate[who[w], r] / rate["nginx", r]; c[r] = cpu[who[w], r] / cpu["nginx", r]
           a[r] = rate[who[w], r]; b[r] = cpu[who[w], r] }
         printf "ws %s against nginx, median of %d rounds: msgs/s %.3fx, CPU per msg %.3fx (%.0f msgs/s, %.2f us/msg)\n",
           who[w], rounds, med(q, rounds), med(c, rounds), med(a, rounds), med(b, rounds) }
       for (r = 1; r <= rounds; r++) { a[r] = rate["nginx", r]; b[r] = cpu["nginx", r] }
       printf "ws nginx, median of %d rounds: %.0f msgs/s, %.2f us/msg\n", rounds, med(a, rounds), med(b, rounds) }' "$out"
rm -f "$out"
echo "idle moongate-handler: $("$BENCH/ws_idle.sh" 19090 /handler "${IDLE_N:-10000}" "$mg")"
