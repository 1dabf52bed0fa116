#!/bin/sh
# bench/fanout.sh: issue 15's fan-out round, one run. One execution, SUBS
# (10 000) WebSocket subscribers spread over three instances that share one
# redis-server, a status change every PERIOD (0.1 s); then the same fan-out
# through three nginx + nchan instances on their own Redis backend.
#   moongate  the shipped scripts (scripts/execution.lua, cluster mode):
#             bench/fanout.runtime.lua changes the status by itself every
#             PERIOD; the lease holder polls it every POLL (0.02 s), publishes
#             each change on Redis, every instance hands it to its sockets
#   nchan     bench/fanout_pub.py POSTs the same status JSON every PERIOD to
#             instance 1's /pub/bench-1; subscribers on /sub/bench-1
# One worker per instance on both sides. Everything listens on free
# 127.0.0.1 ports and is stopped by PID. bench/src/ws_fanout.c is the
# subscriber side (one thread, epoll). Prints, per side: delivered messages
# per second, the delay from a change to its last subscriber (p50/p99; for
# moongate also from the poll that first saw it: the poller's publish) and
# the CPU of all server processes (instances + Redis) per delivered message;
# then the ratios moongate/nchan. Env: SUBS (10000), DURATION (15), WARMUP
# (3), POLL (0.02), PERIOD (0.1), ONLY (moongate|nchan).
set -eu
cd "$(dirname "$0")/.."
SUBS=${SUBS:-10000}; DURATION=${DURATION:-15}; WARMUP=${WARMUP:-3}
POLL=${POLL:-0.02}; PERIOD=${PERIOD:-0.1}; ONLY=${ONLY:-}
[ -x ./moongate ] || { echo "bench: ./moongate not built (make)" >&2; exit 1; }
for p in redis-server nginx libnginx-mod-nchan python3; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
work=$(mktemp -d /tmp/moongate-bench-fanout.XXXXXX)
: >"$work/pids"
stop_all() {
  for p in $(cat "$work/pids"); do kill "$p" 2>/dev/null || true; done
  i=0
  for p in $(cat "$work/pids"); do
    while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$p" 2>/dev/null || true
  done
  : >"$work/pids"
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT INT TERM
track() { echo "$1" >>"$work/pids"; }
# waits (10 s at most) until $1 is not empty
wait_file() {
  i=0
  while [ ! -s "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -s "$1" ] || { echo "bench: $1 did not appear" >&2; exit 1; }
}
wait_port() {
  i=0
  while ! python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; do
    [ $i -lt 100 ] || { echo "bench: nothing listens on $1" >&2; exit 1; }
    sleep 0.1; i=$((i + 1))
  done
}
# the PIDs of a master and its workers, comma separated
family() { echo "$1$(ps -o pid= --ppid "$1" | tr -d ' ' | sed 's/^/,/' | tr -d '\n')"; }

cc -O2 -o "$work/ws_fanout" bench/src/ws_fanout.c
set -- $(python3 -c 'import socket
s = [socket.socket() for _ in range(8)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
RPORT=$1; RTPORT=$2; P1=$3; P2=$4; P3=$5; N1=$6; N2=$7; N3=$8

start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
    >"$work/redis.log" 2>&1 &
  REDIS_PID=$!; track $REDIS_PID
  i=0
  until [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ]; do
    [ $i -lt 100 ] || { echo "bench: redis-server did not start" >&2; exit 1; }
    sleep 0.1; i=$((i + 1))
  done
}

# delays per change: "<seq> changed first last count" lines (ws_fanout -o)
# and, for moongate, "<seq> served" (the Runtime's /ctl/served)
delays() {
  python3 - "$@" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
served = {}
if len(sys.argv) > 2:
    for l in open(sys.argv[2]):
        if l.strip():
            s, t = l.split()
            served[int(s)] = int(t)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))] / 1000.0 if v else 0
full = max(int(r[4]) for r in rows) if rows else 0
a = [int(r[3]) - int(r[1]) for r in rows if int(r[4]) == full]
b = [int(r[3]) - served[int(r[0])] for r in rows if int(r[4]) == full and int(r[0]) in served]
out = "change_to_last_p50_ms=%.1f change_to_last_p99_ms=%.1f" % (pct(a, 50), pct(a, 99))
if served:
    out += " publish_to_last_p50_ms=%.1f publish_to_last_p99_ms=%.1f" % (pct(b, 50), pct(b, 99))
print(out)
PY
}

run_moongate() {
  start_redis
  FANOUT_PERIOD=$PERIOD MOONGATE_LISTEN=127.0.0.1:$RTPORT \
    setsid -f ./moongate -c bench/fanout.runtime.conf.lua -p "$work/rt.pid" 2>"$work/rt.log"
  wait_file "$work/rt.pid"; track "$(cat "$work/rt.pid")"
  gw=$work/gw
  mkdir -p "$gw/conf"
  cp -r scripts public "$gw/"
  # the bench's only change to the shipped scripts: the poll interval
  sed -i "s/^\(    poll_interval = \)[0-9.]*/\1$POLL/" "$gw/scripts/gateway_config.lua"
  grep -q "poll_interval = $POLL," "$gw/scripts/gateway_config.lua" ||
    { echo "bench: cannot set stream.poll_interval" >&2; exit 1; }
  cat >"$gw/conf/moongate.lua" <<CONF
return {
  workers = 1,
  demo = true, -- the demo tokens of scripts/auth_config.lua
  servers = { demo_runtime = { enabled = false, listen = "127.0.0.1:0", routes = "scripts/demo_runtime/routes.lua" } },
  shared_dicts = { demo_runtime = 1048576 },
  routes = "scripts/routes.lua",
  lua_path = { "scripts", "$PWD/lib" },
  access_log = false,
  log_level = "warn",
}
CONF
  pids=$REDIS_PID
  for p in $P1 $P2 $P3; do
    MOONGATE_LISTEN=127.0.0.1:$p MOONGATE_UPSTREAM_RUNTIME=http://127.0.0.1:$RTPORT \
      MOONGATE_REDIS_URL=redis://127.0.0.1:$RPORT/0 \
      setsid -f ./moongate -c "$gw/conf/moongate.lua" -p "$work/mg$p.pid" 2>"$work/mg$p.log"
    wait_file "$work/mg$p.pid"; track "$(cat "$work/mg$p.pid")"
    wait_port "$p"
    pids=$pids,$(family "$(cat "$work/mg$p.pid")")
  done
  c=$(curl -s -o "$work/resp" -w '%{http_code}' -H 'Authorization: Bearer demo-token' \
    "http://127.0.0.1:$P1/api/execution/bench-1/status?tenant_id=t1")
  [ "$c" = 200 ] || { echo "bench: status answers $c: $(cat "$work/resp")" >&2; tail -n 5 "$work"/*.log >&2; exit 1; }
  l=$("$work/ws_fanout" -P "$P1,$P2,$P3" -u "/api/execution/bench-1/stream?tenant_id=t1&token=demo-token" \
    -n "$SUBS" -d "$DURATION" -w "$WARMUP" -p "$pids" -o "$work/mg.seq") || {
      echo "bench: moongate's subscribers saw a failure (dropped, failed, dup or partial below)" >&2
      tail -n 5 "$work"/mg*.log >&2; }
  curl -s "http://127.0.0.1:$RTPORT/ctl/served" >"$work/served"
  polls=$(curl -s "http://127.0.0.1:$RTPORT/ctl/polls" | awk '$2 > 0 { printf "%.1f", $1 / $2 }')
  echo "moongate: $l $(delays "$work/mg.seq" "$work/served") runtime_polls_per_s=$polls"
  echo "moongate $l" >>"$work/runs"
  stop_all
}

run_nchan() {
  start_redis
  pids=$REDIS_PID; first=
  for p in $N1 $N2 $N3; do
    mkdir -p "$work/ngx$p"
    sed -e "s#@RUN@#$work/ngx$p#g" -e "s#@PORT@#$p#g" -e "s#@REDIS@#$RPORT#g" \
      bench/fanout.nginx.conf.in >"$work/ngx$p/nginx.conf"
    nginx -q -p "$work/ngx$p/" -c "$work/ngx$p/nginx.conf" -e "$work/ngx$p/error.log"
    wait_file "$work/ngx$p/nginx.pid"; track "$(cat "$work/ngx$p/nginx.pid")"
    wait_port "$p"
    pids=$pids,$(family "$(cat "$work/ngx$p/nginx.pid")")
    first=${first:-$p}
  done
  python3 bench/fanout_pub.py "$first" /pub/bench-1 "$PERIOD" $((WARMUP + DURATION + 120)) \
    2>"$work/pub.log" &
  track $!
  l=$("$work/ws_fanout" -P "$N1,$N2,$N3" -u /sub/bench-1 -n "$SUBS" -d "$DURATION" -w "$WARMUP" \
    -p "$pids" -o "$work/nchan.seq") || {
      echo "bench: nchan's subscribers saw a failure (dropped, failed, dup or partial below)" >&2
      tail -n 5 "$work"/ngx*/error.log "$work/pub.log" >&2; }
  echo "nchan: $l $(delays "$work/nchan.seq")"
  echo "nchan $l" >>"$work/runs"
  stop_all
}

[ "$ONLY" = nchan ] || run_moongate
[ "$ONLY" = moongate ] || run_nchan
[ -z "$ONLY" ] && awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1]] = kv[2] } }
  END { printf "moongate/nchan msgs_per_s=%.2fx cpu_us_per_msg=%.2fx\n",
    v["moongate", "msgs_per_s"] / v["nchan", "msgs_per_s"],
    v["moongate", "cpu_us_per_msg"] / v["nchan", "cpu_us_per_msg"] }' "$work/runs"
exit 0
