#!/usr/bin/env python3
"""RSS per idle keep-alive HTTP connection: opens N connections to
127.0.0.1:PORT, sends one GET on each (so every one has served a request and
sits idle in keep-alive), waits, then sums VmRSS of the given PIDs and their
children. Usage: http_idle.py [--tls] PORT PATH N PID [PID...]  (bounded:
closes all connections and exits when done). --tls: the connections are
TLS (certificate not verified: a bench's own), so the figure is per idle TLS
connection (bench/tls.sh)."""
import os, resource, socket, ssl, sys, time

def rss_kib(pids):
    total = 0
    seen = set()
    for p in pids:
        kids = []
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids += f.read().split()
        except OSError:
            pass
        for q in [p] + kids:
            if q in seen:
                continue
            seen.add(q)
            try:
                with open(f"/proc/{q}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total

def main():
    args = sys.argv[1:]
    tls = None
    if args and args[0] == "--tls":
        args = args[1:]
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    port, path, n, pids = int(args[0]), args[1], int(args[2]), args[3:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pids)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    conns, failed = [], 0
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if tls:
                s = tls.wrap_socket(s, server_hostname="localhost")
            s.sendall(req)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed")
                data += chunk
            conns.append(s)
        except OSError:
            failed += 1
    time.sleep(2)
    after = rss_kib(pids)
    ok = len(conns)
    print(f"conns={n} established={ok} failed={failed} rss_before_kib={before} "
          f"rss_after_kib={after} kib_per_conn={(after - before) / max(ok, 1):.2f}")
    for s in conns:
        s.close()

main()
