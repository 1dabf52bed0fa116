#!/usr/bin/python3
"""moongate's bounded hostile suite (`make chaos`; `--short` runs in make test).

Starts the real binary (and spec/fixtures/chaos_upstream.py) on 127.0.0.1,
attacks it in six parts, prints the counts of each part and one summary
block, and exits 1 when any part fails (2 on a usage or setup error):

  oneshot    one-shot clients by the thousand against the shipped timeouts
             (idle 3600), on a Lua route and a proxied one: half send one
             request and shutdown(SHUT_WR), half send and reset (SO_LINGER 0). Afterwards no server socket of
             moongate's port may be left in CLOSE_WAIT, no socket descriptor
             may be left in a worker, and every half-closed client must have
             had its response (RFC 9112 9.6).
  flood      a descriptor flood under `ulimit -n 256` (soft and hard, so that
             raising the soft limit at start cannot help): connections are
             opened and held; worker CPU (/proc/<pid>/stat) and the log lines
             written are measured; a connection opened before the flood must
             still be served; after the release a new request must be served
             within 1 s.
  slowbody   POST bodies sent one byte a second for 3 s, then stalled, to a
             Lua handler and to a proxied route, with `timeouts.body` set (2 s
             short, 5 s full) and read = 0: each must be cut with 408 in time.
  upstreams  misbehaving upstreams (spec/fixtures/chaos_upstream.py):
             close-delimited bodies (HTTP/1.1 and 1.0 clients), a drip-fed
             head, resets mid-body (Content-Length and chunked), an
             unsolicited 101, a 1 MiB header. Each request gets a 502/504 JSON
             or its full body, or (reset after the head) a prompt close that
             does not look complete; nothing hangs past its timeout. The same
             cases through moongate.http.request in a Lua handler (a 502/504
             JSON or the full body, never a truncated body as a success).
  ws         WebSocket tunnel and relay routes to an upstream whose last
             message, close frame (or none) and FIN arrive in one edge: the
             client must get the message, a close frame (relay; in a tunnel
             the upstream's own) and, once it has answered, the end.
  reload     SIGHUP the master every 50-100 ms while routes.lua is saved in
             place a few ms after each signal and clients run keep-alive and
             new-connection requests: no request may fail and no worker may
             refuse a reload the master took; then a worker is killed and, once
             replaced, every worker must serve one generation (the same route
             table and the same generation number as the master's last
             "generation N loaded" or "generation N serving").

Everything is bounded in count and time; waits are deadlines on conditions.
Only the processes this tool started are signalled, by pid. Work dirs go to
spec/out/chaos-*/ (removed unless --keep).

Usage: chaos.py [--short] [--bin PATH] [--parts oneshot,flood,...] [--keep]
                [--slack X] [--seed N]
--slack multiplies every time margin (MOONGATE_ASAN=1 implies 3).
"""

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "spec", "fixtures", "chaos_upstream.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTS = ["oneshot", "flood", "slowbody", "upstreams", "ws", "reload"]

# sizes per mode: (short, full)
SIZES = {
    "oneshot_clients": (300, 3000),
    "oneshot_concurrency": (50, 200),
    "flood_conns": (800, 3000),
    "flood_hold": (2.5, 5.0),
    "slow_clients": (20, 100),
    "slow_body_timeout": (2, 5),
    "up_rounds": (2, 10),
    "ws_clients": (10, 100),
    "reload_secs": (3.0, 8.0),
    "reload_clients": (3, 8),
}

# thresholds (with margin: the fixed code sits far below them)
FLOOD_MAX_CPU = 30.0  # % of one core per worker while the flood is held
FLOOD_MAX_LOG_LINES = 100  # lines written while the flood is held
FLOOD_RECOVER_S = 1.0  # a new request served this soon after the release
UP_RESPONSE_TIMEOUT = 2  # the chaos upstream's response_timeout (s)


def log(msg):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# processes -------------------------------------------------------------------


def proc_stat(pid):
    """(state, ppid, utime+stime ticks, start time) of pid, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19])


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[1] == pid and st[0] != "Z":
                out.append(int(name))
    return sorted(out)


def socket_fds(pid, skip=()):
    """Number of socket descriptors pid holds, less those whose inode is in skip."""
    n = 0
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] not in skip:
                n += 1
    except OSError:
        pass
    return n


def tcp_inodes(remote_port):
    """Inodes of the TCP sockets connected to remote_port (a pool's connections)."""
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if int(p[2].rsplit(":", 1)[1], 16) == remote_port:
                        out.add(p[9])
        except OSError:
            pass
    return out


def tcp_states(port):
    """{state hex: count} of sockets whose local port is port (IPv4 and 6)."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if int(p[1].rsplit(":", 1)[1], 16) == port:
                        out[p[3]] = out.get(p[3], 0) + 1
        except OSError:
            pass
    return out


CLOSE_WAIT = "08"


def close_wait_peers(port):
    """Remote ports of the CLOSE_WAIT sockets whose local port is port."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] == CLOSE_WAIT and int(p[1].rsplit(":", 1)[1], 16) == port:
                        out.append(int(p[2].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return out


def wait_until(fn, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Proc:
    """A process this tool started; only its pid (and its children) are signalled."""

    def __init__(self, argv, logpath, nofile=None, cwd=None):
        if nofile:
            argv = ["sh", "-c", 'ulimit -Sn %d && ulimit -Hn %d && exec "$@"' % (nofile, nofile),
                    "sh"] + argv
        self.logpath = logpath
        self.logf = open(logpath, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=self.logf, cwd=cwd, start_new_session=True)
        self.pid = self.p.pid

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def exited(self):
        return self.p.poll() is not None

    def stop(self):
        # the workers, with their start times: a pid is only signalled while it
        # is still the same process
        kids = [(k, (proc_stat(k) or (0, 0, 0, None))[3]) for k in children(self.pid)]
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(5)
        for k, started in kids:
            st = proc_stat(k)
            if st and st[0] not in ("Z", "X") and st[3] == started:
                os.kill(k, signal.SIGKILL)
        self.logf.close()


def start_upstream(workdir):
    d = os.path.join(workdir, "chaos-upstream")
    os.makedirs(d, exist_ok=True)
    p = Proc([PYTHON, FIXTURE, "--port", "0", "--hold", "30"], os.path.join(d, "out.log"))
    m = wait_until(lambda: re.search(r"PORT (\d+)", p.log()) or p.exited(), 10)
    if not m or m is True:
        p.stop()
        raise RuntimeError("chaos_upstream.py did not start: " + p.log())
    p.port = int(m.group(1))
    return p


CONF = """return {
  listen = "127.0.0.1:%(port)d",
  workers = 2,
  access_log = true,
  log_level = "info",
  timeouts = { read = 0, write = 0, idle = 3600, header = 30, drain = 2%(extra_timeouts)s },
  limits = { header_size = 16384, header_count = 100, body_size = 1048576 },
  upstreams = {
    chaos = { servers = { "http://127.0.0.1:%(up_port)d" }, keepalive = 64,
              connect_timeout = 5, response_timeout = %(response_timeout)s,
              max_fails = 0, fail_timeout = 10 },
  },
}
"""

ROUTES = """local moongate = require "moongate"
return {
  { path = "/", handler = function() return 200, "hello\\n" end },
  { path = "/post", handler = function(req)
      local body = req:body()
      return 200, "got " .. #(body or "") .. "\\n"
  end },
  -- the Lua HTTP client against the misbehaving upstream (upstreams part)
  { path = "/lua/{what}", handler = function(req)
      local paths = { ["close-delimited"] = "/close-delimited?n=100000",
        ["drip-head"] = "/drip-head?gap=0.5", ["reset-cl"] = "/reset-mid-body?mode=cl",
        ["reset-chunked"] = "/reset-mid-body?mode=chunked", ["upgrade-101"] = "/upgrade-101",
        ["huge-header"] = "/huge-header?kb=1024" }
      local p = paths[req.params.what]
      if not p then return 404, "no such case\\n" end
      local res, err = moongate.http.request({ url = "http://127.0.0.1:%(up_port)d", path = p,
                                               timeout = 2 })
      if not res then return 502, { error = tostring(err) } end
      if res.status ~= 200 then return 502, { error = "status " .. res.status } end
      return 200, res.body
  end },
  { path = "/gen", handler = function()
      return 200, "%(version)s:" .. moongate.worker_id
  end },
  { prefix = "/up", upstream = "chaos", strip_prefix = true },
  { prefix = "/wst", upstream = "chaos", websocket = { mode = "tunnel" } },
  { prefix = "/wsr", upstream = "chaos", websocket = { mode = "relay" } },
}
"""


class Moongate(Proc):
    def __init__(self, binary, workdir, name, up_port, nofile=None, extra_timeouts="",
                 response_timeout=30, slack=1.0):
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "conf"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "scripts"), exist_ok=True)
        self.port = free_port()
        self.up_port = up_port
        self.conf_path = os.path.join(self.dir, "conf", "moongate.lua")
        self.routes_path = os.path.join(self.dir, "scripts", "routes.lua")
        with open(self.conf_path, "w") as f:
            f.write(CONF % {"port": self.port, "up_port": up_port,
                            "extra_timeouts": extra_timeouts,
                            "response_timeout": response_timeout})
        self.write_routes("v0")
        super().__init__([binary, "-c", self.conf_path], os.path.join(self.dir, "moongate.log"),
                         nofile=nofile, cwd=self.dir)
        up = wait_until(lambda: self.exited() or (len(children(self.pid)) >= 2
                                                  and port_open(self.port)), 10 * slack)
        if up is not True or self.exited():
            self.stop()
            raise RuntimeError("moongate did not start:\n" + self.log()[-2000:])

    def stop(self):
        super().stop()
        # a sanitizer build (make asan) reports into the log: any report fails
        g = subprocess.run(["grep", "-c", "-E", "AddressSanitizer|LeakSanitizer|runtime error:",
                            self.logpath], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.sanitizer = int(g.stdout.strip() or b"0")

    def write_routes(self, version):
        tmp = self.routes_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(ROUTES % {"version": version, "up_port": self.up_port})
        os.rename(tmp, self.routes_path)  # atomic, as an editor's save

    def workers(self):
        return children(self.pid)

    def log_size(self):
        try:
            return os.path.getsize(self.logpath)
        except OSError:
            return 0


def count_lines(path, start, end):
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            b = f.read(min(left, 1 << 20))
            if not b:
                break
            n += b.count(b"\n")
            left -= len(b)
    return n


# HTTP over asyncio streams -----------------------------------------------------


async def read_response(reader):
    """Reads one response; returns dict(status, headers, body, complete, closed)."""
    res = {"status": 0, "headers": {}, "body": b"", "complete": False, "closed": False}
    head = b""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            res["closed"] = True
            res["partial_head"] = e.partial
            return res
        except (asyncio.LimitOverrunError, ConnectionError, OSError):
            res["closed"] = True
            return res
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
        if not m:
            res["bad"] = lines[0][:80]
            return res
        res["status"] = int(m.group(1))
        res["headers"] = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                res["headers"][k.strip().lower()] = v.strip()
        if res["status"] not in (100, 103):
            break
    st, h = res["status"], res["headers"]
    if st < 200 or st in (204, 304):
        res["complete"] = True
        return res
    body = bytearray()
    try:
        if "chunked" in h.get("transfer-encoding", "").lower():
            while True:
                line = await reader.readuntil(b"\r\n")
                n = int(line.split(b";")[0].strip() or b"x", 16)
                if n == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    res["complete"] = True
                    break
                body += await reader.readexactly(n)
                await reader.readexactly(2)
        elif "content-length" in h:
            body += await reader.readexactly(int(h["content-length"]))
            res["complete"] = True
        else:  # close-delimited: complete at EOF
            while True:
                b = await reader.read(65536)
                if not b:
                    break
                body += b
            res["complete"] = True
            res["closed"] = True
    except asyncio.IncompleteReadError as e:
        body += e.partial
        res["closed"] = True
    except (ConnectionError, OSError, ValueError):
        res["closed"] = True
    res["body"] = bytes(body)
    return res


def reset_writer(writer):
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


async def request(port, target, timeout, version="1.1"):
    """One request on a new connection; returns (response dict, seconds until
    the response was read)."""
    t0, t1 = time.monotonic(), None
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, limit=4 << 20), timeout)
        writer.write(("GET %s HTTP/%s\r\nHost: chaos\r\n\r\n" % (target, version)).encode())
        await writer.drain()
        res = await asyncio.wait_for(read_response(reader), timeout - (time.monotonic() - t0))
        t1 = time.monotonic()
    except asyncio.TimeoutError:
        res = {"status": 0, "headers": {}, "body": b"", "complete": False, "closed": False,
               "timeout": True}
    except (ConnectionError, OSError) as e:
        res = {"status": 0, "headers": {}, "body": b"", "complete": False, "closed": True,
               "error": str(e)}
    finally:
        if writer is not None:
            writer.transport.abort()
    return res, (t1 or time.monotonic()) - t0


# part 1: one-shot clients ------------------------------------------------------

ONESHOT_KINDS = [
    ("lua", b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n", b"hello\n"),
    ("proxy", b"GET /up/plain HTTP/1.1\r\nHost: chaos\r\n\r\n", b"ok\n"),
    ("lua-body", b"POST /post HTTP/1.1\r\nHost: chaos\r\nContent-Length: 5\r\n\r\nhello",
     b"got 5\n"),
]


def part_oneshot(ctx):
    n, conc = ctx.size("oneshot_clients"), ctx.size("oneshot_concurrency")
    mg = ctx.moongate("oneshot")
    r = {"clients": n}
    try:
        # warm both workers, then take the baseline of their socket descriptors
        # (pooled upstream connections do not count: the pool may grow)
        for i in range(16):
            asyncio.run(request(mg.port, "/" if i % 2 else "/up/plain", 5 * ctx.slack))
        workers = mg.workers()
        up_port = ctx.up.port
        base = {w: socket_fds(w, tcp_inodes(up_port)) for w in workers}
        missing = [0]
        errors = [0]
        kind_of = {}  # client port -> kind, to say which kind left a socket

        async def client(i, sem):
            async with sem:
                writer = None
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, mg.port), 5 * ctx.slack)
                    # a Lua handler, a proxied route (the upstream side too), and a
                    # Lua handler reading a body that the FIN follows at once
                    kind = (i // 2) % len(ONESHOT_KINDS)
                    req, want = ONESHOT_KINDS[kind][1:]
                    kind_of[writer.get_extra_info("sockname")[1]] = ONESHOT_KINDS[kind][0]
                    writer.write(req)
                    await writer.drain()
                    if i % 2 == 0:
                        writer.write_eof()  # shutdown(SHUT_WR): the FIN rides with the data
                        res = await asyncio.wait_for(read_response(reader), 10 * ctx.slack)
                        if not (res["status"] == 200 and res["complete"] and res["body"] == want):
                            missing[0] += 1
                        writer.close()
                    else:
                        reset_writer(writer)  # the RST rides with the data
                    writer = None
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    errors[0] += 1
                    if i % 2 == 0:
                        missing[0] += 1
                finally:
                    if writer is not None:
                        writer.transport.abort()

        async def run():
            sem = asyncio.Semaphore(conc)
            await asyncio.gather(*(client(i, sem) for i in range(n)))

        t0 = time.monotonic()
        asyncio.run(run())
        r["secs"] = round(time.monotonic() - t0, 1)

        def leaks():
            cw = tcp_states(mg.port).get(CLOSE_WAIT, 0)
            pool = tcp_inodes(up_port)
            fds = sum(max(0, socket_fds(w, pool) - base[w]) for w in workers)
            return cw, fds

        # a short grace period: a fixed server closes at once
        wait_until(lambda: leaks() == (0, 0), 5 * ctx.slack, 0.1)
        r["close_wait"], r["fd_growth"] = leaks()
        by_kind = {}
        for rport in close_wait_peers(mg.port):
            k = kind_of.get(rport, "?")
            by_kind[k] = by_kind.get(k, 0) + 1
        r["close_wait_by_kind"] = ",".join("%s:%d" % kv for kv in sorted(by_kind.items())) or "-"
        r["no_response"] = missing[0]
        r["client_errors"] = errors[0]
        r["pass"] = r["close_wait"] == 0 and r["fd_growth"] == 0 and missing[0] == 0
    finally:
        mg.stop()
    return r


# part 2: descriptor flood ------------------------------------------------------


def part_flood(ctx):
    nofile = 256
    n, hold = ctx.size("flood_conns"), ctx.size("flood_hold")
    mg = ctx.moongate("flood", nofile=nofile)
    r = {"nofile": nofile, "target": n}
    try:
        workers = mg.workers()
        with open("/proc/%d/limits" % workers[0]) as f:
            lim = re.search(r"Max open files\s+(\d+)\s+(\d+)", f.read())
        r["worker_nofile"] = "%s/%s" % (lim.group(1), lim.group(2)) if lim else "?"

        async def run():
            # a keep-alive connection from before the flood must still be served
            kr, kw = await asyncio.open_connection(HOST, mg.port)
            kw.write(b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n")
            await kw.drain()
            pre = await asyncio.wait_for(read_response(kr), 5 * ctx.slack)
            held, refused = [], [0]
            log0 = mg.log_size()
            t_flood = time.monotonic()
            sem = asyncio.Semaphore(200)

            async def opener():
                async with sem:
                    try:
                        _, w = await asyncio.wait_for(asyncio.open_connection(HOST, mg.port), 1.0)
                        held.append(w)
                    except (asyncio.TimeoutError, ConnectionError, OSError):
                        refused[0] += 1

            await asyncio.gather(*(opener() for _ in range(n)))
            r["opened"], r["refused"] = len(held), refused[0]
            r["open_secs"] = round(time.monotonic() - t_flood, 2)
            # hold: worker CPU over the window
            cpu0 = {w: (proc_stat(w) or (0, 0, 0, 0))[2] for w in workers}
            t0 = time.monotonic()
            await asyncio.sleep(hold / 2)
            kw.write(b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n")
            await kw.drain()
            try:
                during = await asyncio.wait_for(read_response(kr), hold / 2 + 1)
            except asyncio.TimeoutError:
                during = {"status": 0}
            left = hold - (time.monotonic() - t0)
            if left > 0:
                await asyncio.sleep(left)
            wall = time.monotonic() - t0
            cpu = [100.0 * ((proc_stat(w) or (0, 0, cpu0[w], 0))[2] - cpu0[w]) / CLK_TCK / wall
                   for w in workers]
            r["max_worker_cpu"] = round(max(cpu), 1)
            log1 = mg.log_size()
            r["log_lines"] = count_lines(mg.logpath, log0, log1)
            r["log_bytes"] = log1 - log0
            r["held_conn_served"] = pre["status"] == 200 and during["status"] == 200
            # release; then a new request must be served within FLOOD_RECOVER_S
            for w in held:
                w.transport.abort()
            kw.transport.abort()
            t_rel = time.monotonic()
            r["recover_s"] = None
            while time.monotonic() - t_rel < 5 * ctx.slack:
                res, _ = await request(mg.port, "/", 1.0)
                if res["status"] == 200:
                    r["recover_s"] = round(time.monotonic() - t_rel, 3)
                    break
                await asyncio.sleep(0.05)

        asyncio.run(run())
        r["pass"] = (r["max_worker_cpu"] <= FLOOD_MAX_CPU
                     and r["log_lines"] <= FLOOD_MAX_LOG_LINES
                     and r["held_conn_served"]
                     and r["recover_s"] is not None
                     and r["recover_s"] <= FLOOD_RECOVER_S * ctx.slack)
    finally:
        mg.stop()
        # today's code can write hundreds of MB here: keep the log's head only
        if mg.log_size() > (8 << 20):
            with open(mg.logpath, "r+b") as f:
                f.truncate(1 << 20)
    return r


# part 3: slow request bodies ---------------------------------------------------


def part_slowbody(ctx):
    n, bt = ctx.size("slow_clients"), ctx.size("slow_body_timeout")
    r = {"clients": n, "body_timeout": bt}
    try:
        mg = ctx.moongate("slowbody", extra_timeouts=", body = %d" % bt)
    except RuntimeError as e:
        # today's loader refuses the key: measure without it, and say so
        r["conf"] = "timeouts.body refused: " + (str(e).strip().splitlines() or ["?"])[-1][:120]
        mg = ctx.moongate("slowbody-nobody")
    # One byte a second for DRIP seconds, then nothing: cut at bt if the
    # timeout bounds the whole body, at DRIP + bt if it bounds the gap between
    # bytes (the wording); the deadline allows either, with margin.
    drip = 3
    deadline = drip + bt + 4 * ctx.slack
    try:
        got = {"/post": [], "/up/upload": []}

        async def client(target):
            t0 = time.monotonic()
            writer = None
            status = 0
            try:
                reader, writer = await asyncio.open_connection(HOST, mg.port)
                writer.write(("POST %s HTTP/1.1\r\nHost: chaos\r\nContent-Length: 1000\r\n\r\n"
                              % target).encode())
                await writer.drain()
                resp = asyncio.ensure_future(read_response(reader))
                sent = 0
                while not resp.done() and time.monotonic() - t0 < drip:
                    try:
                        writer.write(b"x")
                        await writer.drain()
                    except (ConnectionError, OSError):
                        break
                    sent += 1
                    await asyncio.wait([resp], timeout=1.0)  # one byte a second
                left = deadline - (time.monotonic() - t0)
                if not resp.done() and left > 0:
                    await asyncio.wait([resp], timeout=left)
                if resp.done():
                    status = resp.result()["status"]
                else:
                    resp.cancel()
            except (ConnectionError, OSError):
                pass
            finally:
                if writer is not None:
                    writer.transport.abort()
            got[target].append((status, time.monotonic() - t0))

        async def run():
            await asyncio.gather(*(client("/post" if i % 2 == 0 else "/up/upload")
                                   for i in range(n)))

        asyncio.run(run())
        for target, res in got.items():
            key = "lua" if target == "/post" else "proxy"
            r[key + "_408"] = sum(1 for st, _ in res if st == 408)
            r[key + "_other"] = ",".join(sorted({str(st) for st, _ in res if st != 408})) or "-"
        r["cut_while_dripping"] = sum(1 for res in got.values() for st, t in res
                                      if st == 408 and t < drip)
        r["max_s"] = round(max(t for res in got.values() for _, t in res), 1)
        r["failed"] = sum(1 for res in got.values() for st, t in res if st != 408 or t > deadline)
        r["pass"] = r["failed"] == 0 and "conf" not in r
    finally:
        mg.stop()
    return r


# part 4: misbehaving upstreams -------------------------------------------------

BIG = 100000


def judge_upstream(case, res, secs, limit):
    """'' when the response is acceptable, else why not."""
    st = res["status"]
    if res.get("timeout") or secs > limit:
        return "hung %.1fs (status %d)" % (secs, st)
    error_json = st in (502, 504) and res["body"][:1] == b"{"
    if case.startswith("close-delimited") or case == "lua-close-delimited":
        exp = bytes((i * 7 + 3) & 0xFF for i in range(65536))
        want = (exp * 2)[:BIG]
        if st == 200 and res["complete"] and res["body"] == want:
            return ""
        return "status %d, %d bytes, complete=%s" % (st, len(res["body"]), res["complete"])
    if case.startswith("lua-"):
        # a buffered client has no head to forward early: an error, never a
        # truncated body as a success
        return "" if error_json else "status %d, %d bytes" % (st, len(res["body"]))
    if case.startswith("reset-mid-body"):
        if error_json:
            return ""
        if st == 200 and not res["complete"] and res["closed"]:
            return ""  # the head had gone: a prompt close that is not a complete body
        return "status %d, complete=%s, closed=%s" % (st, res["complete"], res["closed"])
    if error_json:
        return ""
    return "status %d" % st


def part_upstreams(ctx):
    rounds = ctx.size("up_rounds")
    mg = ctx.moongate("upstreams", response_timeout=UP_RESPONSE_TIMEOUT)
    limit = UP_RESPONSE_TIMEOUT + 4 * ctx.slack
    cases = [
        ("close-delimited", "/up/close-delimited?n=%d" % BIG, "1.1"),
        ("close-delimited-1.0", "/up/close-delimited?n=%d" % BIG, "1.0"),
        ("drip-head", "/up/drip-head?gap=0.5", "1.1"),
        ("reset-mid-body-cl", "/up/reset-mid-body?mode=cl", "1.1"),
        ("reset-mid-body-chunked", "/up/reset-mid-body?mode=chunked", "1.1"),
        ("unsolicited-101", "/up/upgrade-101", "1.1"),
        ("huge-header", "/up/huge-header?kb=1024", "1.1"),
    ] + [("lua-" + w, "/lua/" + w, "1.1") for w in
         ("close-delimited", "drip-head", "reset-cl", "reset-chunked", "upgrade-101",
          "huge-header")]
    r = {"requests": rounds * len(cases), "failed": 0}
    try:
        async def one(case, target, version):
            res, secs = await request(mg.port, target, limit + 2, version)
            return case, judge_upstream(case, res, secs, limit)

        async def run():
            return await asyncio.gather(*(one(*c) for _ in range(rounds) for c in cases))

        fails = {}
        for case, why in asyncio.run(run()):
            if why:
                r["failed"] += 1
                fails.setdefault(case, []).append(why)
        r["bad"] = {c: "%d/%d: %s" % (len(w), rounds, w[0]) for c, w in fails.items()}
        r["pass"] = r["failed"] == 0
    finally:
        mg.stop()
    return r


# part 6: the WebSocket upstream's last frame and its FIN in one edge ----------

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def ws_session(port, target, timeout):
    """A WebSocket client that reads until EOF, answering a close frame;
    returns (101 seen, text messages, close code or None, EOF seen, seconds)."""
    t0 = time.monotonic()
    texts, code, eof, ok101 = [], None, False, False
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(("GET %s HTTP/1.1\r\nHost: chaos\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n" % (target, WS_KEY)).encode())
        await writer.drain()

        async def frames():
            nonlocal code, eof, ok101
            head = await reader.readuntil(b"\r\n\r\n")
            ok101 = head.startswith(b"HTTP/1.1 101")
            if not ok101:
                return
            while True:
                try:
                    b0, b1 = await reader.readexactly(2)
                except asyncio.IncompleteReadError:
                    eof = True
                    return
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await reader.readexactly(8))[0]
                mask = await reader.readexactly(4) if b1 & 0x80 else None
                data = await reader.readexactly(n)
                if mask:
                    data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
                op = b0 & 0x0F
                if op == 1:
                    texts.append(data.decode("utf-8", "replace"))
                elif op == 8 and code is None:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    # answer the close as a client does, then wait for the end
                    writer.write(b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", code
                                                                      if code != 1005 else 1000))
                    await writer.drain()

        await asyncio.wait_for(frames(), timeout - (time.monotonic() - t0))
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        if writer is not None:
            writer.transport.abort()
    return ok101, texts, code, eof, time.monotonic() - t0


def part_ws(ctx):
    n = ctx.size("ws_clients")
    mg = ctx.moongate("ws")
    limit = 5 * ctx.slack
    # tunnel: the bytes, close frame included, then EOF; relay: the message,
    # then a close frame (the upstream's code, or 1011 when it just dropped),
    # then EOF once the client has answered it
    cases = [
        ("tunnel-close", "/wst/ws-last", lambda t, c, e: t == ["last"] and c == 1000 and e),
        ("tunnel-drop", "/wst/ws-last?drop=1", lambda t, c, e: t == ["last"] and e),
        ("relay-close", "/wsr/ws-last", lambda t, c, e: t == ["last"] and c is not None and e),
        ("relay-drop", "/wsr/ws-last?drop=1",
         lambda t, c, e: t == ["last"] and c is not None and e),
    ]
    r = {"sessions": n * len(cases), "failed": 0}
    try:
        async def one(case, target, good, sem):
            async with sem:
                ok101, texts, code, eof, secs = await ws_session(mg.port, target, limit)
            if ok101 and good(texts, code, eof) and secs <= limit:
                return case, ""
            return case, "101=%s texts=%s close=%s eof=%s %.1fs" % (ok101, texts, code, eof, secs)

        async def run():
            sem = asyncio.Semaphore(50)
            return await asyncio.gather(*(one(*c, sem) for _ in range(n) for c in cases))

        bad = {}
        for case, why in asyncio.run(run()):
            if why:
                r["failed"] += 1
                bad.setdefault(case, []).append(why)
        r["bad"] = {c: "%d/%d: %s" % (len(w), n, w[0]) for c, w in bad.items()}
        r["pass"] = r["failed"] == 0
    finally:
        mg.stop()
    return r


# part 5: reload storm ------------------------------------------------------------


def part_reload(ctx):
    secs, k = ctx.size("reload_secs"), ctx.size("reload_clients")
    mg = ctx.moongate("reload")
    rng = random.Random(ctx.seed)
    r = {"clients": 2 * k, "requests": 0, "failed": 0, "sighups": 0}
    fail_why = {}
    try:
        def failed(why):
            r["failed"] += 1
            fail_why[why] = fail_why.get(why, 0) + 1

        cap = 50000  # requests per client: bounded in count as well as in time

        async def keepalive_client(stop):
            reader, writer = await asyncio.open_connection(HOST, mg.port)
            try:
                for _ in range(cap):
                    if stop.is_set():
                        break
                    writer.write(b"GET /gen HTTP/1.1\r\nHost: chaos\r\n\r\n")
                    await writer.drain()
                    res = await asyncio.wait_for(read_response(reader), 5 * ctx.slack)
                    r["requests"] += 1
                    if res["status"] != 200 or not res["complete"]:
                        failed("keep-alive %d" % res["status"])
                        writer.transport.abort()
                        reader, writer = await asyncio.open_connection(HOST, mg.port)
            except (asyncio.TimeoutError, ConnectionError, OSError) as e:
                r["requests"] += 1
                failed("keep-alive " + type(e).__name__)
            finally:
                writer.transport.abort()

        async def newconn_client(stop):
            for i in range(1, cap + 1):
                if stop.is_set():
                    break
                path = "/gen" if i % 2 else "/up/plain"
                res, _ = await request(mg.port, path, 5 * ctx.slack)
                r["requests"] += 1
                if res["status"] != 200:
                    failed("new-conn %d" % res["status"])

        async def storm(stop):
            t_end = time.monotonic() + secs
            ver = 0
            while time.monotonic() < t_end:
                os.kill(mg.pid, signal.SIGHUP)
                r["sighups"] += 1
                # an edit lands a few ms after the SIGHUP, saved in place (truncate,
                # then write, as many editors do): whoever reads the file in that
                # window sees it empty or changed under the reload
                await asyncio.sleep(rng.uniform(0.0, 0.006))
                ver += 1
                with open(mg.routes_path, "w") as f:
                    await asyncio.sleep(0.003)
                    f.write(ROUTES % {"version": "v%d" % ver, "up_port": mg.up_port})
                await asyncio.sleep(rng.uniform(0.04, 0.09))
            stop.set()

        async def run():
            stop = asyncio.Event()
            await asyncio.gather(storm(stop), *(keepalive_client(stop) for _ in range(k)),
                                 *(newconn_client(stop) for _ in range(k)))

        asyncio.run(run())
        r["why"] = fail_why

        # settle: the master's last "generation N loaded" stops changing
        def master_gen():
            # "generation N loaded" (one reading per process) or "generation N
            # serving on K workers" (a master that waits for its workers)
            m = re.findall(r"\] %d: .*generation (\d+) (?:loaded|serving)" % mg.pid, mg.log())
            return int(m[-1]) if m else None

        last = [master_gen(), time.monotonic()]

        def settled():
            g = master_gen()
            if g != last[0]:
                last[0], last[1] = g, time.monotonic()
            return time.monotonic() - last[1] > 0.5

        wait_until(settled, 5 * ctx.slack, 0.1)
        # a worker restarted now must load the same generation as the others
        old = mg.workers()
        victim = old[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(lambda: len(mg.workers()) == 2 and victim not in mg.workers(),
                              5 * ctx.slack)
        r["worker_replaced"] = bool(replaced)
        wait_until(lambda: port_open(mg.port), 2)

        async def probes():
            return await asyncio.gather(*(request(mg.port, "/gen?probe=%d" % i, 5 * ctx.slack)
                                          for i in range(40)))

        answers = asyncio.run(probes())
        seen = {}
        for i, (res, _) in enumerate(answers):
            if res["status"] == 200:
                seen[i] = res["body"].decode("latin-1")
        wait_until(lambda: all('probe=%d"' % i in mg.log() for i in seen), 3 * ctx.slack)
        gens = {}
        for line in mg.log().splitlines():
            m = re.search(r'"path":"/gen\?probe=(\d+)".*"generation":(\d+)', line)
            if m and int(m.group(1)) in seen:
                gens[int(m.group(1))] = int(m.group(2))
        tables = {}
        for i, body in seen.items():
            ver, _, wid = body.partition(":")
            tables.setdefault(wid, set()).add((ver, gens.get(i)))
        r["master_gen"] = master_gen()
        r["workers_seen"] = len(tables)
        r["worker_tables"] = {w: sorted("%s/gen%s" % t for t in v) for w, v in tables.items()}
        distinct = {t for v in tables.values() for t in v}
        # a reload the master took but a worker refused splits the generation
        r["master_refused"] = len(re.findall(r"\] %d: reload refused" % mg.pid, mg.log()))
        r["worker_refused"] = len(re.findall(r"\] \d+: reload refused", mg.log())) \
            - r["master_refused"]
        # (no "generation N loaded" from the master: every reload was refused)
        r["gens_agree"] = (len(seen) == 40 and len(distinct) == 1
                           and next(iter(distinct))[1] == (r["master_gen"] or 1))
        r["pass"] = (r["failed"] == 0 and r["gens_agree"] and r["worker_replaced"]
                     and r["worker_refused"] == 0)
    finally:
        mg.stop()
    return r


# driver --------------------------------------------------------------------------


class Ctx:
    def __init__(self, args):
        self.short = args.short
        self.bin = args.bin
        self.slack = args.slack
        self.seed = args.seed
        self.workdir = os.path.join(ROOT, "spec", "out", "chaos-%d-%d" % (int(time.time()),
                                                                         os.getpid()))
        os.makedirs(self.workdir)
        self.up = None
        self.instances = []  # the moongate instances of the current part

    def size(self, name):
        return SIZES[name][0 if self.short else 1]

    def moongate(self, name, **kw):
        if self.up is None or self.up.exited():
            self.up = start_upstream(self.workdir)
        mg = Moongate(self.bin, self.workdir, name, self.up.port, slack=self.slack, **kw)
        self.instances.append(mg)
        return mg


def fmt_part(name, r):
    skip = {"pass", "why", "bad", "worker_tables"}
    items = " ".join("%s=%s" % (k, v) for k, v in r.items() if k not in skip)
    return "%-9s %s  %s" % (name, "PASS" if r.get("pass") else "FAIL", items)


SUMMARY_KEYS = [
    ("oneshot", "close_wait", "sockets left in CLOSE_WAIT"),
    ("oneshot", "fd_growth", "socket fds left in workers"),
    ("oneshot", "no_response", "half-closed clients without a response"),
    ("flood", "max_worker_cpu", "max worker CPU % during the flood"),
    ("flood", "log_lines", "log lines during the flood"),
    ("flood", "recover_s", "seconds to the first request served after it"),
    ("slowbody", "failed", "slow bodies not cut with 408 in time"),
    ("upstreams", "failed", "misbehaving-upstream requests failed"),
    ("ws", "failed", "WebSocket sessions without their last frame/close"),
    ("reload", "failed", "requests failed during the reload storm"),
    ("reload", "gens_agree", "workers agree on the generation"),
]


def main():
    ap = argparse.ArgumentParser(description="moongate's bounded hostile suite")
    ap.add_argument("--short", action="store_true", help="the short version (make test)")
    ap.add_argument("--bin", default=os.environ.get("MOONGATE_BIN",
                                                    os.path.join(ROOT, "moongate")))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--keep", action="store_true", help="keep spec/out/chaos-*/")
    ap.add_argument("--slack", type=float,
                    default=3.0 if os.environ.get("MOONGATE_ASAN") else 1.0)
    ap.add_argument("--seed", type=int, default=10)
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            ap.error("unknown part %r (parts: %s)" % (p, ",".join(PARTS)))
    if not os.access(args.bin, os.X_OK):
        ap.error("no moongate binary at %s (make first, or --bin)" % args.bin)
    ctx = Ctx(args)
    log("chaos: %s mode, binary %s, work dir %s" % ("short" if args.short else "full",
                                                     args.bin, ctx.workdir))
    results = {}
    try:
        for p in parts:
            t0 = time.monotonic()
            ctx.instances = []
            try:
                res = globals()["part_" + p](ctx)
            except Exception as e:  # a part that cannot run has failed
                res = {"pass": False, "error": ("%s: %s" % (type(e).__name__, e))[:300]}
            san = sum(getattr(mg, "sanitizer", 0) for mg in ctx.instances)
            if san:
                res["sanitizer_reports"] = san
                res["pass"] = False
            res["secs"] = round(time.monotonic() - t0, 1)
            results[p] = res
            log(fmt_part(p, res))
            for k in ("why", "bad", "worker_tables"):
                if res.get(k):
                    log("          %s: %s" % (k, json.dumps(res[k], sort_keys=True)))
    finally:
        if ctx.up is not None:
            ctx.up.stop()
        if not args.keep:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    log("")
    log("== chaos summary (%s) ==" % ("short" if args.short else "full"))
    for part, key, label in SUMMARY_KEYS:
        if part in results:
            log("  %-50s %s" % (label, results[part].get(key, "n/a")))
    nfail = 0
    for p in parts:
        ok = results[p].get("pass")
        nfail += 0 if ok else 1
        log("  part %-10s %s" % (p, "PASS" if ok else "FAIL"))
    log("chaos: %s (%d of %d parts failed)" % ("PASS" if nfail == 0 else "FAIL", nfail, len(parts)))
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
