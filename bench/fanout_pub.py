"""bench/fanout.sh's publisher for nchan: POSTs the status message moongate
would send for change n (the same JSON, "seq": n, "changed_us": when it was
sent) every PERIOD seconds on one keep-alive connection, pipelined: a POST
goes out on time even while nginx has not answered the one before (as
moongate's poller does not wait for its subscribers either), and nginx
answers them in order. A reader thread checks every answer is 2xx. Ends at
SIGTERM or after MAX_S seconds; exits 1 when an answer is not 2xx or the
connection fails. Usage: fanout_pub.py PORT PATH [PERIOD] [MAX_S]"""
import re
import signal
import socket
import sys
import threading
import time

port, path = int(sys.argv[1]), sys.argv[2]
period = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
max_s = float(sys.argv[4]) if len(sys.argv) > 4 else 120
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
failed = []


def reader():
    buf = b""
    status = re.compile(rb"HTTP/1\.1 (\d{3}) ")
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError as e:
            failed.append(str(e))
            return
        if not data:
            failed.append("connection closed")
            return
        buf += data
        for m in status.finditer(buf):
            if not m.group(1).startswith(b"2"):
                failed.append("POST answered " + m.group(1).decode())
        buf = buf[-64:]  # a status line cut in two is found with the next read


threading.Thread(target=reader, daemon=True).start()
start = time.time()
seq = 0
while time.time() - start < max_s and not failed:
    wait = start + seq * period - time.time()
    if wait > 0:
        time.sleep(wait)
    body = ('{"type":"status","execution_id":"bench-1","status":"running","data":'
            '{"execution_id":"bench-1","tenant_id":"t1","status":"running","seq":%d,'
            '"changed_us":"%.0f"}}' % (seq, time.time() * 1e6)).encode()
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (path, port, len(body))).encode()
    sock.sendall(head + body)
    seq += 1
if failed:
    print("fanout_pub: " + failed[0], file=sys.stderr)
    sys.exit(1)
