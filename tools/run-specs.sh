#!/bin/sh
# Runs the C unit tests named in MOONGATE_CTESTS (binaries built from
# spec/c/, each ending with "ct: N passed, N failed"), then busted (under
# LuaJIT) on the given spec folders, and ends with the line
# "N passed, N failed" over both. Exits non-zero on any failure or error.
cd "$(dirname "$0")/.." || exit 1
mkdir -p spec/out
ct_ok=0
ct_fail=0
for t in $MOONGATE_CTESTS; do
  clog=spec/out/ctest-$$.log
  # bounded: a test that hangs or crashes counts as one failure
  timeout 60 "$t" >"$clog" 2>&1
  rc=$?
  cat "$clog"
  line=$(grep -E '^ct: [0-9]+ passed, [0-9]+ failed$' "$clog" | tail -n 1)
  rm -f "$clog"
  if [ -z "$line" ]; then
    echo "FAIL - $t: no summary (exit $rc)"
    ct_fail=$((ct_fail + 1))
    continue
  fi
  p=$(echo "$line" | sed -E 's/^ct: ([0-9]+) passed, ([0-9]+) failed$/\1/')
  f=$(echo "$line" | sed -E 's/^ct: ([0-9]+) passed, ([0-9]+) failed$/\2/')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL - $t: exit $rc"
    f=1
  fi
  ct_ok=$((ct_ok + p))
  ct_fail=$((ct_fail + f))
done
if [ -n "$MOONGATE_CTESTS" ]; then
  echo "C unit tests: $ct_ok passed, $ct_fail failed"
fi
if [ $# -eq 0 ]; then
  echo "$ct_ok passed, $ct_fail failed"
  [ "$ct_fail" -eq 0 ]
  exit
fi
log=spec/out/busted-$$.log
busted --lua=luajit -m "'lib/?.lua;lib/?/init.lua'" -o utfTerminal "$@" 2>&1 | tee "$log"
summary=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
rm -f "$log"
ok=$(echo "$summary" | grep -Eo '[0-9]+ success' | grep -Eo '[0-9]+')
fail=$(echo "$summary" | grep -Eo '[0-9]+ failure' | grep -Eo '[0-9]+')
err=$(echo "$summary" | grep -Eo '[0-9]+ error' | grep -Eo '[0-9]+')
if [ -z "$ok" ]; then
  echo "$ct_ok passed, $((ct_fail + 1)) failed"
  exit 1
fi
failed=$((fail + err + ct_fail))
echo "$((ok + ct_ok)) passed, $failed failed"
[ "$failed" -eq 0 ]
