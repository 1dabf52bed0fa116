#!/bin/sh
# make bench (bench-metrics alone): issue 13's budget. The same proxied route
# (/plain -> the harness's upstream on 19001, 2 workers) served by a build
# without any metrics code (-DMG_METRICS_OFF, build-nometrics/) with the
# access log off (:19092), and by the normal build with the full access log
# on, written to a file (:19093). Interleaved, REPS x DURATION s each, wrk
# with CONNS keep-alive connections; prints each run, the medians and the
# ratios on/off (requests/s, server CPU per request). Budget: 3 %.
# Two statistics: the ratio of the two sides' medians (each side's runs
# pooled), and the median of the per-pair ratios (on_i/off_i of round i's
# interleaved pair): the box drifts from round to round by more than the
# budget, and a pair's two runs, back to back, see about the same drift, so
# the second is the more robust of the two. Both are printed.
# Env: DURATION (5), REPS (5), CONNS (64); ON_CONF=bench/metrics-only.conf.lua
# measures the metrics alone (the access log off on both sides).
set -eu
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench}
DURATION=${DURATION:-5}; REPS=${REPS:-5}; CONNS=${CONNS:-64}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
for p in nginx wrk; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
# both binaries from this tree, with the same flags but MG_METRICS_OFF (run
# by hand, the script would otherwise measure whatever ./moongate was last built)
make -s moongate
make -s BUILD=build-nometrics BIN=moongate-nometrics CFLAGS=-DMG_METRICS_OFF moongate-nometrics
ONLY="upstream" "$BENCH/start_peers.sh" >/dev/null
off_pid=$(mktemp -u /tmp/moongate-bench-off-XXXXXX.pid)
on_pid=$(mktemp -u /tmp/moongate-bench-on-XXXXXX.pid)
alog=$(mktemp /tmp/moongate-bench-alog-XXXXXX)
# sessions of their own, as the peers (see run.sh)
setsid -f ./moongate-nometrics -c bench/metrics-off.conf.lua -p "$off_pid" 2>/tmp/moongate-bench-off.log
setsid -f ./moongate -c "${ON_CONF:-bench/metrics-on.conf.lua}" -p "$on_pid" 2>"$alog"
i=0
while { [ ! -s "$off_pid" ] || [ ! -s "$on_pid" ]; } && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
trap 'kill "$(cat "$off_pid")" "$(cat "$on_pid")" 2>/dev/null || true; rm -f "$alog"; "$BENCH/stop_peers.sh" >/dev/null' EXIT INT TERM
off=$(cat "$off_pid"); on=$(cat "$on_pid")
run() { # run PORT PID [WARMUP]
  BENCH_PATH=/plain BENCH_AUTH= CPU_PIDS=$2 WARMUP_S=${3:-0} "$BENCH/http.sh" "$1" "$DURATION" "$CONNS"
}
out=$(mktemp)
run 19092 "$off" 1 >/dev/null
run 19093 "$on" 1 >/dev/null
for r in $(seq 1 "$REPS"); do
  order="off on"
  [ $((r % 2)) -eq 0 ] && order="on off"
  for t in $order; do
    if [ "$t" = off ]; then l=$(run 19092 "$off"); else l=$(run 19093 "$on"); fi
    echo "metrics-$t run$r: $l"; echo "$t $l" >>"$out"
    : >"$alog" # the access log's file stays small
  done
done
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1], ++n[$1, kv[1]]] = kv[2] } }
  function med(t, k,   c, i, j, a, x) { c = n[t, k]; for (i = 1; i <= c; i++) a[i] = v[t, k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  function pmed(k,   c, i, j, a, x) { c = n["on", k] < n["off", k] ? n["on", k] : n["off", k]
    for (i = 1; i <= c; i++) a[i] = v["on", k, i] / v["off", k, i]
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  END { for (t = 1; t <= 2; t++) { w = t == 1 ? "off" : "on"
      printf "metrics-%s median rps=%.0f cpu_us_per_req=%s p99_ms=%s non2xx=%s\n", w, med(w, "rps"), med(w, "srv_cpu_us_per_op"), med(w, "p99_ms"), med(w, "non2xx") }
    r = med("on", "rps") / med("off", "rps"); c = med("on", "srv_cpu_us_per_op") / med("off", "srv_cpu_us_per_op")
    printf "metrics+access log on/off: rps %.3fx (%.1f%% fewer), CPU per request %.3fx (%.1f%% more); budget 3%%\n", r, (1 - r) * 100, c, (c - 1) * 100
    r = pmed("rps"); c = pmed("srv_cpu_us_per_op")
    printf "metrics+access log on/off, median of the %d per-pair ratios: rps %.3fx (%.1f%% fewer), CPU per request %.3fx (%.1f%% more); budget 3%%\n", n["on", "rps"], r, (1 - r) * 100, c, (c - 1) * 100 }' "$out"
rm -f "$out"
