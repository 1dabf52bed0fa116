#!/bin/sh
# make bench-metrics-ir: issue 13's budget counted in instructions, which a
# busy machine does not change (bench/metrics.sh's CPU time does, by +-5 %).
# One worker of each build runs under valgrind's callgrind: the build without
# metrics code (-DMG_METRICS_OFF, the access log off) and the normal build with
# the full access log on, written to a file. The worker's instructions in a
# run of WARM + N proxied keep-alive requests (/plain -> an upstream.py on
# 127.0.0.1) less those of a run of WARM requests (start and exit cancel
# out): the ratio on/off of instructions per request. What this does not
# see: the kernel's side of the access log's write() (one per 64 KiB of
# lines) and cache misses; bench/metrics.sh measures those, on a quiet machine.
# The generation's load (mg_load_gen: the conf's Lua, run once by every
# worker) is not counted: it is the same work in both runs, but its count
# moved by up to ~1M instructions from one run to the next (the JIT, the
# GC), i.e. by ~500 per request at N=2000, more than the budget's margin.
# Env: N (2000), WARM (200); LOG=false: the metrics alone (the access log
# off on both sides); KEEP=1 keeps the callgrind files; IR_TOGGLE: the
# callgrind options that choose what is counted (IR_TOGGLE= counts all,
# the load too, as before).
set -eu
cd "$(dirname "$0")/.."
N=${N:-2000}; WARM=${WARM:-200}
IR_TOGGLE=${IR_TOGGLE-"--toggle-collect=mg_load_gen --collect-atstart=yes"}
make -s moongate
make -s BUILD=build-nometrics BIN=moongate-nometrics CFLAGS=-DMG_METRICS_OFF moongate-nometrics
work=$(mktemp -d /tmp/moongate-ir-XXXXXX)
up_pid=""; mg_pid=""
cleanup() {
  [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
/usr/bin/python3 spec/fixtures/upstream.py --port 0 --pidfile "$work/up.pid" >"$work/up.out" 2>&1 &
up_pid=$!
i=0
while ! grep -q '^PORT ' "$work/up.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
up_port=$(sed -n 's/^PORT //p' "$work/up.out")
[ -n "$up_port" ] || { echo "metrics-ir: upstream.py did not start" >&2; exit 1; }

# the client: COUNT keep-alive GETs on one connection, each answer read whole
cat >"$work/client.py" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
bad = 0
for i in range(int(sys.argv[2])):
    c.request("GET", "/plain/x?i=%d" % i, headers={"User-Agent": "metrics-ir/1"})
    r = c.getresponse()
    r.read()
    bad += r.status != 200
sys.exit(1 if bad else 0)
PY

# run BIN ACCESS_LOG COUNT: the worker's instructions over its whole life
# (start, COUNT requests, exit)
run() {
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/site/conf"
  cp bench/metrics.routes.lua "$work/site/conf/metrics.routes.lua"
  log=false
  [ "$2" = false ] || log="\"$work/access.log\""
  cat >"$work/site/conf/moongate.lua" <<CONF
return {
  listen = "127.0.0.1:$port",
  workers = 1,
  routes = "conf/metrics.routes.lua",
  access_log = $log,
  log_level = "warn",
  upstreams = { runtime = { servers = { "http://127.0.0.1:$up_port" }, keepalive = 16 } },
}
CONF
  cg="$work/$(basename "$1").$3.cg"
  (cd "$work/site" && exec valgrind -q --tool=callgrind --callgrind-out-file="$cg.%p" $IR_TOGGLE \
     "$OLDPWD/$1" -c conf/moongate.lua) >"$work/mg.log" 2>&1 &
  mg_pid=$!
  i=0
  # the master listens before it forks: wait for the worker too
  until [ -n "$(ss -Hltn "sport = :$port")" ] && pgrep -P "$mg_pid" >/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "metrics-ir: $1 did not start" >&2; cat "$work/mg.log" >&2; exit 1; }
    sleep 0.2
  done
  worker=$(pgrep -P "$mg_pid" | head -n 1)
  /usr/bin/python3 "$work/client.py" "$port" "$3" || { echo "metrics-ir: non-200 answers" >&2; exit 1; }
  kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""
  sed -n 's/^summary: *//p' "$cg.$worker" | head -n 1
}

# measure BIN ACCESS_LOG: instructions per request
measure() {
  a=$(run "$1" "$2" "$WARM")
  b=$(run "$1" "$2" $((WARM + N)))
  echo "$a $b" | awk -v n="$N" '{ printf "%.0f", ($2 - $1) / n }'
}

off=$(measure ./moongate-nometrics false)
on=$(measure ./moongate "${LOG:-true}")
echo "metrics-off (no metrics code, access log off): $off instructions per request"
echo "metrics-on  (metrics, access log ${LOG:-true}): $on instructions per request"
echo "$off $on" | awk '{ printf "metrics+access log on/off: instructions per request %.3fx (%.1f%% more); budget 3%%\n", $2 / $1, ($2 / $1 - 1) * 100 }'
