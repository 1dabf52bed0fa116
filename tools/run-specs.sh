#!/bin/sh
# Runs busted (under LuaJIT) on the given spec folders and ends with the line
# "N passed, N failed". Exits non-zero on any failure or error.
cd "$(dirname "$0")/.." || exit 1
mkdir -p spec/out
log=spec/out/busted-$$.log
busted --lua=luajit -m "'lib/?.lua;lib/?/init.lua'" -o utfTerminal "$@" 2>&1 | tee "$log"
summary=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
rm -f "$log"
ok=$(echo "$summary" | sed -E 's/^.*[^0-9]?([0-9]+) success.*/\1/' | grep -Eo '[0-9]+' | head -1)
ok=$(echo "$summary" | grep -Eo '[0-9]+ success' | grep -Eo '[0-9]+')
fail=$(echo "$summary" | grep -Eo '[0-9]+ failure' | grep -Eo '[0-9]+')
err=$(echo "$summary" | grep -Eo '[0-9]+ error' | grep -Eo '[0-9]+')
if [ -z "$ok" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
failed=$((fail + err))
echo "$ok passed, $failed failed"
[ "$failed" -eq 0 ]
