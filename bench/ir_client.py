"""The callgrind benches' client (bench/ir_common.sh): COUNT keep-alive GETs
of PATH on one connection to 127.0.0.1:PORT, each answer read whole; a %d in
PATH becomes the request's number; each HEADER is "Name: value". Exits 1 if
any answer was not 200.
Usage: ir_client.py PORT PATH COUNT [HEADER ...]"""
import http.client
import sys

port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
headers = dict(h.split(": ", 1) for h in sys.argv[4:])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
bad = 0
for i in range(count):
    c.request("GET", path.replace("%d", str(i)), headers=headers)
    r = c.getresponse()
    r.read()
    bad += r.status != 200
sys.exit(1 if bad else 0)
