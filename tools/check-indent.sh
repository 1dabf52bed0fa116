#!/bin/sh
# Lua is indented by 2 spaces (docs: STYLE). Fails, naming the file, on a tab
# in a line's indentation, or on an indented file in which no line is 2
# spaces deeper than the line before it (written in steps of 4).
# Run by `make lint`. Usage: sh tools/check-indent.sh DIR...
status=0
for f in $(find "$@" -name '*.lua' -type f | sort); do
  why=$(awk '
    /^[ ]*\t/ { print FILENAME ":" FNR ": tab in indentation"; bad = 1; exit }
    /^ *[^ ]/ {
      n = match($0, /[^ ]/) - 1
      if (n > 0) indented = 1
      if (n == last + 2) step2 = 1
      last = n
    }
    END { if (!bad && indented && !step2)
            print FILENAME ": indented in steps of 4 spaces (use 2)" }
  ' "$f")
  if [ -n "$why" ]; then
    echo "$why"
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "indentation: clean"
exit "$status"
