#!/usr/bin/env python3
"""A mu-server user's throughput, beside the same WebSocket tunnel without users, in the same
run: iperf3 through `mtt client -wss` to (a) `mtt server -wss` (the baseline), (b) `mtt
mu-server` with a user without limits (what the per-user counting costs), (c) the same user
with a rate limit (whether the rate holds). Alternating rounds, up and down; the median of
the good rounds, a round under half the median is reported as failed.

    python3 benches/mu.py --mtt target/release/mtt [--seconds 5] [--rounds 3] [--rate 100M]
        [--compare OTHER/mtt]

`--compare` adds a row: the same user on a mu-server of another build (an earlier commit's).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import iperf  # noqa: E402
from tunnels import free_port, log, summary, wait_listening  # noqa: E402

TOKEN = "bench-token"


def put(control, path, body):
    s = socket.create_connection(("127.0.0.1", control), timeout=10)
    data = json.dumps(body).encode()
    s.sendall((f"PUT /v1/users{path} HTTP/1.1\r\nHost: 127.0.0.1:{control}\r\n"
               f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    answer = s.recv(4096)
    s.close()
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise SystemExit(f"PUT {path}: {answer!r}")


def start(cmd, port, what):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, p, what)
    return p


def mu_server(mtt, tmp, name, procs):
    """A mu-server of `mtt` with a users file in `tmp`: (data port, controller port)."""
    mp, cp = free_port(), free_port()
    mu = subprocess.Popen([mtt, "mu-server", "-b", f"127.0.0.1:{mp}", "-c", f"127.0.0.1:{cp}",
                           "-c-token", TOKEN, "-n", "127.0.0.1",
                           "-users-file", os.path.join(tmp, f"users-{name}.json")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(mu)
    for line in mu.stderr:
        if "mu-server listening" in line:
            break
    # The rest of its log is read and dropped, so that it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in mu.stderr], daemon=True).start()
    wait_listening(cp, mu, "mu-server controller")
    return mp, cp


def bytes_of(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtt", default="target/release/mtt")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", default="100M", help="the limited user's rate, bytes/s")
    ap.add_argument("--compare", help="another build's mtt: its mu-server gets a row too")
    args = ap.parse_args()
    rate = bytes_of(args.rate)
    tmp = tempfile.mkdtemp(prefix="mtt-mu-bench-")
    iport = free_port()
    procs = [start(["iperf3", "-s", "-p", str(iport)], iport, "iperf3 -s")]
    dest = f"127.0.0.1:{iport}"
    ports = {}
    try:
        sp = free_port()
        procs.append(start([args.mtt, "server", "-b", f"127.0.0.1:{sp}", "-d", dest, "-wss",
                            "-wss-path", "/bench", "-n", "127.0.0.1"], sp, "mtt server"))
        mp, cp = mu_server(args.mtt, tmp, "new", procs)
        put(cp, "/free", {"dst": dest})
        put(cp, "/limited", {"dst": dest, "rate": rate})
        rows = [("server -wss", sp, "/bench"), ("mu-server user", mp, "/free"),
                (f"mu-server user, rate {args.rate}", mp, "/limited")]
        if args.compare:
            op, oc = mu_server(args.compare, tmp, "compared", procs)
            put(oc, "/free", {"dst": dest})
            rows.insert(2, ("mu-server user, --compare build", op, "/free"))
        # Every client skips verification (-sv), the same for every row.
        for name, server, path in rows:
            port = free_port()
            procs.append(start([args.mtt, "client", "-b", f"127.0.0.1:{port}", "-s",
                                f"127.0.0.1:{server}", "-wss", "-wss-path", path, "-n",
                                "127.0.0.1", "-sv"], port, f"client of {name}"))
            ports[name] = port
        results = {name: {"up": [], "down": []} for name in ports}
        for r in range(args.rounds):
            for name, port in ports.items():
                for way in ("up", "down"):
                    _, mibs = iperf(port, args.seconds, reverse=(way == "down"))
                    results[name][way].append(mibs)
            log(f"round {r + 1} done")
        base = {w: summary(results["server -wss"][w])[0] for w in ("up", "down")}
        print("| tunnel | up MiB/s | down MiB/s | × server -wss | failed rounds |")
        print("|---|---|---|---|---|")
        for name in ports:
            cells = []
            ratios = []
            failed = []
            for way in ("up", "down"):
                med, lo, hi, bad = summary(results[name][way])
                cells.append(f"{med:.0f} ({lo:.0f}–{hi:.0f})")
                ratios.append(f"{med / base[way]:.2f}")
                failed += [f"{way} {i}" for i in bad]
            print(f"| {name} | {cells[0]} | {cells[1]} | {' / '.join(ratios)} | "
                  f"{', '.join(failed) or 'none'} |")
        print(f"\nrate limit {rate / (1 << 20):.1f} MiB/s; {args.rounds} rounds of "
              f"{args.seconds} s each way, alternating; iperf3 -c through each client")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
