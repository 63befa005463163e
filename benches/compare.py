#!/usr/bin/env python3
"""Two builds of mtt side by side, in alternating rounds (A then B, then B then A, ...).

For each build and mode: iperf3 single-stream upload and download through `mtt client` ->
`mtt server` (separate processes on 127.0.0.1) with the CPU seconds of both processes per
GiB moved; new tunnels per second with wrk (`Connection: close`, a fresh tunnel per request)
to nginx, with the CPU each end spent per tunnel (its handshakes per CPU-second); and the
RSS of an idle client and server, and (`--idle N`) per idle plain-TLS tunnel, N held open. Prints a Markdown table: the median of each figure, its
range, and B/A. A round whose figure is under half of that build's median is reported as
failed, beside the median of the others, never averaged in.

    python3 benches/compare.py --a target/release/mtt --a-name ring --b other/mtt --b-name aws-lc-rs

Needs iperf3, wrk and nginx (benches/run installs them).
"""

import argparse
import os
import re
import shutil
import subprocess
import tempfile

import asyncio

from harness import EchoServer, hold_idle, iperf, settle_rss, wrk_rate  # noqa: E402
from tunnels import (  # noqa: E402
    FULL, GIB, RESUMED, Tunnel, cpu_seconds, free_port, log, nginx_site, original_build,
    summary, wait_listening,
)


def measure(ctx, modes, conn_modes, seconds, iport, hport, idle):
    """One round of one build: {figure name: value}. `idle`: (echo port, tunnels to hold)."""
    got = {}
    if idle and idle[1]:
        port, n = idle
        t = Tunnel("tls", f"127.0.0.1:{port}", ctx)
        try:
            before = settle_rss(t.pids)
            loaded = asyncio.run(hold_idle(t.port, n, t.pids))
            per = [(b - a) / n for a, b in zip(before, loaded)]
            got["per idle tls tunnel server KiB"], got["per idle tls tunnel client KiB"] = per
        finally:
            t.stop()
    for mode in modes:
        t = Tunnel(mode, f"127.0.0.1:{iport}", ctx)
        try:
            if mode == modes[0]:
                idle = settle_rss(t.pids)
                got["idle RSS server KiB"], got["idle RSS client KiB"] = idle
            moved, cpu = 0, 0.0
            for key, rev in (("up", False), ("down", True)):
                before = cpu_seconds(t.pids)
                nbytes, mibs = iperf(t.port, seconds, rev)
                cpu += cpu_seconds(t.pids) - before
                moved += nbytes
                got[f"{mode} {key} MiB/s"] = mibs
            got[f"{mode} CPU s/GiB"] = cpu / (moved / GIB)
        finally:
            t.stop()
    for mode in conn_modes:
        try:
            t = Tunnel(mode, f"127.0.0.1:{hport}", ctx)
        except SystemExit as e:
            log(f"  {mode}: not measured with {ctx.mtt} ({e})")
            continue
        try:
            got.update(tunnel_rate(t, mode, seconds))
        finally:
            t.stop()
    return got


def original_key(key):
    """The Go original's figure beside one of mtt's: its plain TLS beside tls (resumed or
    not: it never resumes), its wss beside wss, idle RSS beside idle RSS."""
    for mode, theirs in ((FULL, "original"), (RESUMED, "original"), ("tls", "original"),
                         ("wss", "original wss")):
        if key.startswith(mode + " "):
            return theirs + key[len(mode):]
    return key if key.startswith("idle RSS") else None


def tunnel_rate(t, name, seconds):
    """New tunnels per second through `t` (wrk) and per CPU-second of each of its ends."""
    before = [cpu_seconds([p]) for p in t.pids]
    rate, _p50, errors = wrk_rate(t.port, seconds)
    server_cpu, client_cpu = (cpu_seconds([p]) - b for p, b in zip(t.pids, before))
    if errors:
        log(f"  {name}: wrk socket errors: {errors}")
    n = rate * seconds
    return {f"{name} tunnels/s": rate,
            f"{name} server tunnels per CPU-s": n / max(server_cpu, 1e-9),
            f"{name} client tunnels per CPU-s": n / max(client_cpu, 1e-9)}


def measure_original(ctx, conn_modes, seconds, iport, hport):
    """One round of the Go original: new tunnels per second in its tls and wss modes (named
    `original …`, `original wss …`) and its idle RSS."""
    got = {}
    for kind, mode in (("original", "tls"), ("original wss", "wss")):
        if mode not in conn_modes:
            continue
        t = Tunnel(kind, f"127.0.0.1:{hport}", ctx)
        try:
            if kind == "original":
                got["idle RSS server KiB"], got["idle RSS client KiB"] = settle_rss(t.pids)
            got.update(tunnel_rate(t, kind, seconds))
        finally:
            t.stop()
    return got


def fmt(v):
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the first mtt binary")
    ap.add_argument("--b", required=True, help="the second mtt binary")
    ap.add_argument("--a-name", default="A")
    ap.add_argument("--b-name", default="B")
    ap.add_argument("--modes", default="tls,wss,mux,grpc", help="throughput modes")
    ap.add_argument("--conn-modes", default=f"tls,{RESUMED},{FULL},wss",
                    help="new-tunnel rate modes")
    ap.add_argument("--original", action="store_true",
                    help="the Go original's rows too (its tls and wss modes), in the same rounds")
    ap.add_argument("--original-src", metavar="DIR",
                    help="a checkout of mos-tls-tunnel (default: cloned from GitHub)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4, help="length of each iperf3/wrk run")
    ap.add_argument("--idle", type=int, default=0,
                    help="idle plain-TLS tunnels to hold open for the per-tunnel memory rows")
    args = ap.parse_args()
    modes, conn_modes = args.modes.split(","), args.conn_modes.split(",")
    tmp = tempfile.mkdtemp(prefix="mtt-compare-")
    builds = []
    bg = []
    try:
        out = subprocess.run([args.a, "cert", "-n", "bench.local", "-out", tmp],
                             capture_output=True, text=True, check=True).stdout
        for path, name in ((args.a, args.a_name), (args.b, args.b_name)):
            builds.append((name, argparse.Namespace(
                mtt=os.path.abspath(path), tmp=tmp,
                cert=os.path.join(tmp, "bench.local.crt"),
                key=os.path.join(tmp, "bench.local.key"),
                pin=re.search(r"SHA-256: ([0-9a-f]{64})", out).group(1))))
        if args.original:
            ctx = argparse.Namespace(**vars(builds[0][1]))
            ctx.original = original_build(tmp, args.original_src)
            if ctx.original:
                builds.append(("original", ctx))
        iport = free_port()
        iperf_srv = subprocess.Popen(["iperf3", "-s", "-p", str(iport)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bg.append(iperf_srv)
        wait_listening(iport, iperf_srv, "iperf3 -s")
        nginx, hport = nginx_site(tmp)
        bg.append(nginx)
        idle = (EchoServer().port, args.idle) if args.idle else None
        samples = {name: {} for name, _ in builds}
        for rnd in range(args.rounds):
            order = builds if rnd % 2 == 0 else builds[::-1]
            for name, ctx in order:
                if name == "original":
                    got = measure_original(ctx, conn_modes, args.seconds, iport, hport)
                else:
                    got = measure(ctx, modes, conn_modes, args.seconds, iport, hport, idle)
                for k, v in got.items():
                    samples[name].setdefault(k, []).append(v)
                log(f"round {rnd + 1}/{args.rounds} {name}: "
                    + ", ".join(f"{k} {fmt(v)}" for k, v in got.items()))
    finally:
        for p in bg:
            if p.poll() is None:
                p.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    (a, _), (b, _) = builds[:2]
    orig = samples.get("original", {})
    print(f"{args.rounds} alternating rounds, {args.seconds} s each run; median (min–max) "
          "of each build; a round under half of the median is flagged, not counted.\n")
    head = f"| | {a} | {b} | {b} / {a} |"
    if orig:
        head += f" Go original | {b} / original |"
    print(head)
    print("|---|---:|---:|---:|" + ("---:|---:|" if orig else ""))

    def cell(values):
        if not values:
            return None, "–", []
        med, lo, hi, failed = summary(values)
        return med, f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})", failed

    for key in dict.fromkeys(list(samples[a]) + list(samples[b])):
        (ma, ca, fa), (mb, cb, fb) = cell(samples[a].get(key)), cell(samples[b].get(key))
        flag = "".join(f" (FAILED round {r} of {n})" for n, f in ((a, fa), (b, fb)) for r in f)
        ratio = f"{mb / ma:.2f}" if ma and mb else "–"
        line = f"| {key}{flag} | {ca} | {cb} | {ratio} |"
        if orig:
            mo, co, _ = cell(orig.get(original_key(key)))
            line += f" {co} | " + (f"{mb / mo:.2f}" if mo and mb else "–") + " |"
        print(line)


if __name__ == "__main__":
    main()
