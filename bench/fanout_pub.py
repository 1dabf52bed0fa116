"""bench/fanout.sh's publisher for nchan: POSTs the status message moongate
would send for change n (the same JSON, "seq": n, "changed_us": when it was
sent) every PERIOD seconds, on one keep-alive connection, until SIGTERM or
MAX_S seconds. Usage: fanout_pub.py PORT PATH [PERIOD] [MAX_S]"""
import http.client
import signal
import sys
import time

port, path = int(sys.argv[1]), sys.argv[2]
period = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
max_s = float(sys.argv[4]) if len(sys.argv) > 4 else 120
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
start = time.time()
seq = 0
while time.time() - start < max_s:
    at = start + seq * period
    wait = at - time.time()
    if wait > 0:
        time.sleep(wait)
    now = time.time()
    body = ('{"type":"status","execution_id":"bench-1","status":"running","data":'
            '{"execution_id":"bench-1","tenant_id":"t1","status":"running","seq":%d,'
            '"changed_us":"%.0f"}}' % (seq, now * 1e6))
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status >= 300:
        print("fanout_pub: POST answered %d" % resp.status, file=sys.stderr)
        sys.exit(1)
    seq += 1
