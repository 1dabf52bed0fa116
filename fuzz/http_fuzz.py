#!/usr/bin/env python3
"""Mutation fuzzer for moongate's HTTP/1.1 parser and WebSocket framing.

Starts nothing itself: give it a running moongate (PORT) whose routes include
a proxy route under /up/ and a handler WebSocket echo at /ws (the spec and
`make fuzz` start one). Sends N mutated requests and frame sequences, each on
its own connection, bounded by N and SECONDS, and checks after every batch
that the server still answers a well-formed request. Exits non-zero if it
stops answering. Usage: http_fuzz.py PORT N SECONDS [SEED]
"""
import base64, os, random, socket, struct, sys, time

SEEDS = [
    b"GET /up/a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /up/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /up/d HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /up/e HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /up/f HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /up/g HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\xff", b"0", b"-1",
          b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: b\r\n",
          b"ffffffffffffffff", b"%2e%2e/", b"/../", b"HTTP/1.1", b"\r\n\r\n", b";ext=1"]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            del data[pos % len(data)]
        elif op == 1:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and data:
            data[pos % len(data)] = rng.randrange(256)
        elif op == 3:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        else:
            data = data[:pos]
    return bytes(data)


def ws_frames(rng):
    out = b""
    for _ in range(rng.randint(1, 5)):
        op = rng.choice([0, 1, 2, 8, 9, 10, 3, 11])
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 10, 125, 126, 300])))
        b0 = (0x80 if rng.random() < 0.8 else 0) | (rng.randrange(8) << 4 if rng.random() < 0.1 else 0) | op
        n = len(payload)
        mask = rng.random() < 0.95
        h = bytes([b0])
        mb = 0x80 if mask else 0
        if n < 126:
            h += bytes([mb | n])
        elif n < 65536:
            h += bytes([mb | 126]) + struct.pack("!H", n)
        else:
            h += bytes([mb | 127]) + struct.pack("!Q", n)
        if mask:
            k = os.urandom(4)
            h += k
            payload = bytes(c ^ k[i % 4] for i, c in enumerate(payload))
        out += h + payload
    if rng.random() < 0.3:
        out = mutate(rng, out)
    return out


def send(port, data, timeout=0.05):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()
    except OSError:
        pass


def alive(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /up/alive HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.startswith(b"HTTP/1.1 ")
    except OSError:
        return False


def main():
    port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    key = base64.b64encode(b"0123456789abcdef")
    hs = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    t0, done = time.time(), 0
    while done < n and time.time() - t0 < secs:
        if rng.random() < 0.7:
            send(port, mutate(rng, rng.choice(SEEDS)))
        else:
            send(port, hs + ws_frames(rng))
        done += 1
        if done % 200 == 0 and not alive(port):
            print(f"server stopped answering after {done} cases")
            return 1
    ok = alive(port)
    print(f"fuzz: {done} cases in {time.time() - t0:.1f}s, server {'alive' if ok else 'DEAD'}")
    return 0 if ok else 1


sys.exit(main())
