#!/usr/bin/env python3
"""Latency under load: round trips of a small exchange on one stream of a multiplexed session
while another stream of the same session saturates it (pushes into a sink as fast as it can),
while another stream is stalled (its destination reads nothing), and quiet. For mtt's mux,
wss+mux and grpc (HTTP/2 streams of one connection, each with its own flow control); for plain TLS tunnels through the same processes (each exchange in a connection of
its own: no shared queue, only the shared CPUs); and for the original's multiplexing (smux version 1, 16 KiB frames) as a Go peer on
xtaci/smux (tests/smux_peer) when Go and the packages are installed.

Every process runs on 127.0.0.1; the destination forks a process per connection, the bulk
sender is a process of its own, so no interpreter lock sits between them and the measured
round trips. Each kind is measured three times (`--rounds`), every kind in turn within a round,
200 round trips per case; a row holds the medians of the runs' p50 and p99. Called by
benches/harness.py; runs alone too:

    python3 benches/latency.py --mtt target/release/mtt
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tunnels import Tunnel, free_port, log, wait_listening  # noqa: E402

# The destination: the first byte of a connection says what it is. E echoes, S is a sink,
# T takes nothing (stalled).
DEST = r'''
import os, signal, socket, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1])))
l.listen(256)
while True:
    c, _ = l.accept()
    if os.fork():
        c.close()
        continue
    l.close()
    tag = c.recv(1)
    if tag == b"E":
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(64)
            if not d:
                break
            c.sendall(d)
    elif tag == b"S":
        while c.recv(1 << 20):
            pass
    elif tag == b"T":
        signal.pause()
    os._exit(0)
'''

# The bulk sender: tag, then as fast as it can until killed.
PUSH = r'''
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(sys.argv[2].encode())
buf = b"\x07" * (256 * 1024)
try:
    while True:
        s.sendall(buf)
except OSError:
    pass
'''

PINGS = 200
WARMUP = 20


def pings(port, count=PINGS, limit=2.0):
    """Round trips (ms) of 4-byte exchanges; None if one took longer than `limit` s."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"E")
    out = []
    try:
        for i in range(WARMUP + count):
            t0 = time.perf_counter()
            s.sendall(b"ping")
            got = b""
            while len(got) < 4:
                d = s.recv(4 - len(got))
                if not d:
                    return None
                got += d
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1000)
    except socket.timeout:
        return None
    finally:
        s.close()
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(port):
    """p50/p99 quiet, beside a saturating stream, beside a stalled stream."""
    row = {}
    for case, tag in [("quiet", None), ("saturated", "S"), ("stalled", "T")]:
        pusher = None
        if tag:
            pusher = subprocess.Popen([sys.executable, "-c", PUSH, str(port), tag])
            time.sleep(0.5)  # let the bulk stream fill what it can before measuring
        try:
            rtts = pings(port)
        finally:
            if pusher:
                pusher.kill()
                pusher.wait()
        row[case] = (statistics.median(rtts), pct(rtts, 99)) if rtts else None
    return row


class GoTunnel:
    """The Go smux peer as an original client and server pair (16 KiB frames, version 1)."""

    def __init__(self, peer, dest, ctx):
        self.procs = []
        sp, self.port = free_port(), free_port()
        self._start([peer, "server", "-b", f"127.0.0.1:{sp}", "-d", dest, "-cert", ctx.cert,
                     "-key", ctx.key], sp, "smux peer server")
        self._start([peer, "client", "-b", f"127.0.0.1:{self.port}", "-s", f"127.0.0.1:{sp}"],
                    self.port, "smux peer client")

    def _start(self, cmd, port, what):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_listening(port, p, what)

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()


def go_peer(tmp):
    """Builds tests/smux_peer; None (said) where Go or its packages are missing."""
    src = os.path.join(HERE, "..", "tests", "smux_peer", "main.go")
    out = os.path.join(tmp, "smux_peer")
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off",
               GOCACHE=os.path.join(tmp, "gocache"))
    try:
        done = subprocess.run(["/usr/bin/go", "build", "-o", out, src], env=env, capture_output=True,
                              text=True, timeout=300)
    except FileNotFoundError:
        log("latency: no Go here; the smux baseline row is left out")
        return None
    if done.returncode != 0:
        log(f"latency: the smux peer did not build; its row is left out: {done.stderr.strip()}")
        return None
    return out


ROUNDS = 3


def combine(runs):
    """One case over several runs: the median of the runs' p50s and of their p99s; None
    (stuck) if any run got stuck."""
    if not runs or any(r is None for r in runs):
        return None
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def latency_rows(ctx, rounds=ROUNDS):
    """One row per kind: mux, wss+mux, grpc, and the original's smux (Go) when it builds. Each
    kind is measured `rounds` times, every kind in turn within a round (a slow spell of the
    host falls on all alike); a row holds the medians over the rounds."""
    dport = free_port()
    dest = subprocess.Popen([sys.executable, "-c", DEST, str(dport)], start_new_session=True)
    wait_listening(dport, dest, "latency destination")
    rows = []
    try:
        # tls: the same exchange and the same bulk transfer, each in a connection of its own
        # through the same two processes: what the host's CPUs cost a round trip with no
        # queue shared, the floor for any multiplexing here.
        kinds = [("mux", lambda: Tunnel("mux", f"127.0.0.1:{dport}", ctx)),
                 ("wss+mux", lambda: Tunnel("wss+mux", f"127.0.0.1:{dport}", ctx)),
                 ("grpc (HTTP/2)", lambda: Tunnel("grpc", f"127.0.0.1:{dport}", ctx)),
                 ("tls, one connection each", lambda: Tunnel("tls", f"127.0.0.1:{dport}", ctx))]
        peer = go_peer(ctx.tmp)
        if peer:
            kinds.append(("original (smux, Go)",
                          lambda: GoTunnel(peer, f"127.0.0.1:{dport}", ctx)))
        runs = {name: [] for name, _ in kinds}
        for rnd in range(rounds):
            for name, make in kinds:
                t = make()
                try:
                    run = measure(t.port)
                finally:
                    t.stop()
                runs[name].append(run)
                log(f"latency {name} (round {rnd + 1}/{rounds}): " + ", ".join(
                    f"{k} " + (f"p50 {v[0]:.2f} ms p99 {v[1]:.2f} ms" if v else "stuck")
                    for k, v in run.items()))
        for name, _ in kinds:
            rows.append({"name": name, **{case: combine([r[case] for r in runs[name]])
                                          for case in ("quiet", "saturated", "stalled")}})
    finally:
        # The destination and every connection's process it forked.
        os.killpg(dest.pid, signal.SIGKILL)
        dest.wait()
    return rows


def table(rows):
    cell = lambda v: f"{v[0]:.2f} / {v[1]:.2f}" if v else "stuck (> 2 s)"
    lines = ["| sibling round trip, ms (p50 / p99) | quiet | beside a saturating stream | "
             "beside a stalled stream |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {cell(r['quiet'])} | {cell(r['saturated'])} | "
                     f"{cell(r['stalled'])} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtt", default="target/release/mtt")
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help="runs of every kind, taken in turn; the table shows their medians")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = argparse.Namespace(mtt=os.path.abspath(args.mtt), tmp=tmp)
        out = subprocess.run([ctx.mtt, "cert", "-n", "bench.local", "-out", tmp],
                             capture_output=True, text=True, check=True).stdout
        ctx.cert = os.path.join(tmp, "bench.local.crt")
        ctx.key = os.path.join(tmp, "bench.local.key")
        ctx.pin = out.split("SHA-256: ")[1].split()[0]
        print("\n".join(table(latency_rows(ctx, args.rounds))))


if __name__ == "__main__":
    main()
