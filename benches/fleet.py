#!/usr/bin/env python3
"""The mu-server fleet at scale (`-users-redis`): a batch of 10,000 users added through the
compatible API (time until acknowledged, and until a second server carries the last one), a
table of 100,000 users taken whole by a server (the CPU it costs), and the round trips of a
tunnel during that resync. redis-server runs on 127.0.0.1 with a temporary directory.

Called by benches/harness.py; runs alone too:

    python3 benches/fleet.py --mtt target/release/mtt
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tunnels import free_port, log, wait_listening  # noqa: E402

TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def request(addr, method, path, body=b""):
    s = socket.create_connection(addr, timeout=60)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    s.sendall(head + body)
    raw = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    s.close()
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[1]


class MuServer:
    """An mtt mu-server on the shared Redis, with its stderr followed line by line."""

    def __init__(self, mtt, url, tmp, name):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [mtt, "mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-c-token", TOKEN,
             "-n", "127.0.0.1", "-users-redis", url, "-verbose"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp)
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait(r"listening on ([\d.:]+), controller on ([\d.:]+)")
        data, control = line.group(1), line.group(2)
        self.data = (data.rsplit(":", 1)[0], int(data.rsplit(":", 1)[1]))
        self.control = (control.rsplit(":", 1)[0], int(control.rsplit(":", 1)[1]))
        self.pin = self.wait(r"cert-sha256 ([0-9a-f]{64})").group(1)
        self.name = name

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait(self, pattern, after=0, timeout=120):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0:
                    raise RuntimeError(f"no line matching {pattern!r}: {self.lines[-5:]}")
                self.cond.wait(left)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def fleet_rows(ctx):
    """Runs the fleet measurements; a dict of figures, or None without redis-server."""
    if not shutil.which("redis-server"):
        log("fleet: no redis-server; skipped")
        return None
    tmp = tempfile.mkdtemp(prefix="mtt-fleet-")
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = []
    try:
        wait_listening(port, redis, "redis-server")
        url = f"redis://127.0.0.1:{port}/0"
        a = MuServer(ctx.mtt, url, tmp, "A")
        b = MuServer(ctx.mtt, url, tmp, "B")
        servers += [a, b]
        out = {}
        # 10,000 users in one compatible-API request, timed to its acknowledgement, then
        # until server B lists the last of them.
        batch = [{"path": f"/u{i:06d}", "dst": "127.0.0.1:9"} for i in range(10_000)]
        body = json.dumps({"opt": 1, "args_bunch": batch}).encode()
        start = time.perf_counter()
        status, reply = request(a.control, "POST", "/", body)
        out["batch_ack_s"] = time.perf_counter() - start
        assert status == 200 and json.loads(reply)["res"] == 1, reply
        while True:
            status, text = request(b.control, "GET", "/v1/status")
            if json.loads(text)["users"] == 10_000:
                break
            time.sleep(0.01)
        out["batch_seen_s"] = time.perf_counter() - start
        log(f"fleet: 10,000 users acknowledged in {out['batch_ack_s']:.3f} s, "
            f"on the second server after {out['batch_seen_s']:.3f} s")
        # Up to 100,000 users.
        for k in range(1, 10):
            batch = [{"path": f"/u{i:06d}", "dst": "127.0.0.1:9"}
                     for i in range(k * 10_000, (k + 1) * 10_000)]
            status, reply = request(a.control, "POST", "/",
                                    json.dumps({"opt": 1, "args_bunch": batch}).encode())
            assert status == 200, reply
        # A full resync of 100,000 users (SIGHUP asks for one): CPU of the server, the time it
        # reports, and the round trips of a tunnel of the same server meanwhile.
        echo = socket.socket()
        echo.bind(("127.0.0.1", 0))
        echo.listen(8)
        status, _ = request(b.control, "PUT", "/v1/users/bench",
                            json.dumps({"dst": f"127.0.0.1:{echo.getsockname()[1]}"}).encode())
        assert status == 200
        while json.loads(request(b.control, "GET", "/v1/status")[1])["users"] < 100_001:
            time.sleep(0.05)
        client_port = free_port()
        client = subprocess.Popen(
            [ctx.mtt, "client", "-b", f"127.0.0.1:{client_port}", "-s",
             f"{b.data[0]}:{b.data[1]}", "-n", "127.0.0.1", "-cert-sha256", b.pin, "-wss",
             "-wss-path", "/bench"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(argparse.Namespace(stop=lambda: (client.terminate(), client.wait())))
        wait_listening(client_port, client, "mtt client")
        c = socket.create_connection(("127.0.0.1", client_port))
        d, _ = echo.accept()
        rtts, stop = [], threading.Event()

        def pinger():
            while not stop.is_set():
                t0 = time.perf_counter()
                c.sendall(b"p")
                d.recv(1)
                d.sendall(b"q")
                c.recv(1)
                rtts.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.001)
        th = threading.Thread(target=pinger, daemon=True)
        th.start()
        time.sleep(0.5)
        # The first exchanges include the tunnel's set-up.
        quiet = list(rtts)[10:]
        mark = len(b.lines)
        cpu0 = cpu_seconds(b.proc.pid)
        b.proc.send_signal(1)  # SIGHUP
        m = b.wait(r"users: (\d+) user\(s\) from Redis \(version \d+\) in (\d+) ms", after=mark)
        cpu1 = cpu_seconds(b.proc.pid)
        time.sleep(0.2)
        stop.set()
        th.join()
        during = rtts[len(quiet) + 10:]
        out.update({
            "resync_users": int(m.group(1)),
            "resync_ms": int(m.group(2)),
            "resync_cpu_s": cpu1 - cpu0,
            "rtt_quiet_p50": statistics.median(quiet),
            "rtt_during_max": max(during) if during else float("nan"),
            "rtt_quiet_max": max(quiet),
        })
        log(f"fleet: resync of {out['resync_users']} users in {out['resync_ms']} ms, "
            f"{out['resync_cpu_s']:.2f} s CPU; tunnel round trip p50 "
            f"{out['rtt_quiet_p50']:.2f} ms, max {out['rtt_quiet_max']:.2f} ms quiet, "
            f"max {out['rtt_during_max']:.2f} ms during the resync")
        c.close()
        d.close()
        return out
    finally:
        for s in servers:
            s.stop()
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def table(f):
    """The report's lines."""
    return [
        "| Fleet (`-users-redis`, redis-server on loopback) | measured | target |",
        "|---|---:|---:|",
        f"| 10,000 users in one compatible-API request: acknowledged | {f['batch_ack_s']:.3f} s | < 2 s |",
        f"| … and carried by the second server | {f['batch_seen_s']:.3f} s | < 1 s after |",
        f"| full resync of {f['resync_users']:,} users: wall time the server reports | {f['resync_ms']} ms | |",
        f"| … CPU of the server | {f['resync_cpu_s']:.2f} s | < 1 s |",
        f"| tunnel round trip of the same server: quiet p50 / max | {f['rtt_quiet_p50']:.2f} / {f['rtt_quiet_max']:.2f} ms | |",
        f"| … max during the resync | {f['rtt_during_max']:.2f} ms | no stall |",
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtt", default="target/release/mtt")
    args = ap.parse_args()
    ctx = argparse.Namespace(mtt=os.path.abspath(args.mtt))
    figures = fleet_rows(ctx)
    if figures:
        print("\n".join(table(figures)))
