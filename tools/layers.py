#!/usr/bin/env python3
"""make layers: includes and calls in core/ go downward only.

Layers, top to bottom (a folder under core/ each):
    app > gateway > lua > http | upstream | ws > conf > net > loop > base
http, upstream and ws are siblings: none includes or calls another. A
file may include its own layer's headers, and those of layers below it,
but never another layer's internal header (*_int.h). Calls are read from
the objects (nm): every symbol a layer's object uses must be defined in
its own layer or one below. Exit status 1 on any violation.
"""
import os
import re
import subprocess
import sys

RANK = {"base": 0, "loop": 1, "net": 2, "conf": 3,
        "http": 4, "upstream": 4, "ws": 4,
        "lua": 5, "gateway": 6, "app": 7}
CORE = "core"


def verdict(src, dst):
    """None if layer src may use layer dst, else the reason."""
    if dst not in RANK:
        return "unknown layer '%s'" % dst
    if src == dst:
        return None
    if RANK[dst] > RANK[src]:
        return "upward (%s is above %s)" % (dst, src)
    if RANK[dst] == RANK[src]:
        return "sibling (%s and %s)" % (src, dst)
    return None


def check_includes(bad):
    for layer in sorted(os.listdir(CORE)):
        d = os.path.join(CORE, layer)
        if not os.path.isdir(d):
            bad.append("%s: not in a layer folder" % d)
            continue
        if layer not in RANK:
            bad.append("%s: unknown layer" % d)
            continue
        for f in sorted(os.listdir(d)):
            if not f.endswith((".c", ".h")):
                continue
            path = os.path.join(d, f)
            with open(path) as fh:
                for n, line in enumerate(fh, 1):
                    m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                    if not m:
                        continue
                    inc = m.group(1)
                    if "/" not in inc:
                        bad.append("%s:%d: includes \"%s\": say its layer folder" % (path, n, inc))
                        continue
                    dst = inc.split("/")[0]
                    why = verdict(layer, dst)
                    if why:
                        bad.append("%s:%d: includes %s: %s" % (path, n, inc, why))
                    elif dst != layer and inc.endswith("_int.h"):
                        bad.append("%s:%d: includes %s: another layer's inside" % (path, n, inc))
    for f in sorted(os.listdir(CORE)):
        if os.path.isfile(os.path.join(CORE, f)):
            bad.append("%s/%s: not in a layer folder" % (CORE, f))


def nm(obj, *flags):
    out = subprocess.run(["nm", *flags, obj], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def check_calls(build, bad):
    defined = {}  # symbol -> (layer, object)
    objs = []
    for layer in sorted(RANK):
        d = os.path.join(build, layer)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            # objects of sources that still exist (a renamed file leaves its old .o)
            if f.endswith(".o") and os.path.exists(os.path.join(CORE, layer, f[:-2] + ".c")):
                obj = os.path.join(d, f)
                objs.append((layer, obj))
                for line in nm(obj, "--defined-only", "-g"):
                    parts = line.split()
                    if len(parts) == 3:
                        defined[parts[2]] = (layer, obj)
    if not objs:
        bad.append("%s: no objects; build first" % build)
    for layer, obj in objs:
        for line in nm(obj, "-u"):
            sym = line.split()[-1]
            if sym not in defined:
                continue
            dst, where = defined[sym]
            why = verdict(layer, dst)
            if why:
                bad.append("%s: calls %s (%s): %s" % (obj, sym, where, why))


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    bad = []
    check_includes(bad)
    check_calls(build, bad)
    for b in bad:
        print(b)
    print("layers: %d violation%s" % (len(bad), "" if len(bad) == 1 else "s"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
