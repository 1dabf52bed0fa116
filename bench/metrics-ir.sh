#!/bin/sh
# make bench-metrics-ir: issue 13's budget counted in instructions, which a
# busy machine does not change (bench/metrics.sh's CPU time does, by +-5 %).
# One worker of each build runs under valgrind's callgrind: the build without
# metrics code (-DMG_METRICS_OFF, the access log off) and the normal build with
# the full access log on, written to a file. The worker's instructions in a
# run of WARM + N proxied keep-alive requests (/plain -> an upstream.py on
# 127.0.0.1) less those of a run of WARM requests (start and exit cancel
# out): the ratio on/off of instructions per request. What this does not
# see: the kernel's side of the access log's write() (one per 256 KiB of
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
. bench/ir_common.sh
ir_init metrics-ir
IR_VG_OPTS=$IR_TOGGLE

# run BIN ACCESS_LOG COUNT: the worker's instructions over its whole life
# (start, COUNT requests, exit)
run() {
  port=$(ir_free_port)
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
  ir_run "$work/site" "$port" "$work/$(basename "$1").$3.cg" "$3" "/plain/x?i=%d" \
    "User-Agent: metrics-ir/1" -- "$PWD/$1" -c conf/moongate.lua
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
