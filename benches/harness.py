#!/usr/bin/env python3
"""Side-by-side benchmark of mtt against direct loopback and stunnel, in one run.

Separate processes on 127.0.0.1: iperf3 through `mtt client` -> `mtt server` (tls, wss, mux,
wss+mux), beside iperf3 direct and through stunnel; connection rate with wrk (a new
connection per request) through each tunnel to nginx; CPU seconds per GiB of the two tunnel
processes; RSS of an idle process and per idle tunnelled connection; UDP (`-udp`): iperf3 -u
throughput at < 1 % loss with 1,400-byte datagrams and 64-byte datagrams per second, beside
direct UDP and shadowsocks-rust's own UDP relay (sslocal tunnel -> ssserver, no plugin), with
CPU per datagram of the relaying processes. Writes a Markdown table and an SVG chart. Started
by benches/run, which installs the tools and builds mtt.
"""

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time

from tunnels import (  # noqa: E402
    CONN_ONLY, CORE_MODES, FULL, GIB, MIXED, MODES, ORIGINAL, UDP_MODES, V2RAY, Tunnel, cpu_seconds,
    free_port, original_build, summary,
    V2RAY_BIN, linkage, log, nginx_site, rss_kib, wait_listening,
)
from latency import latency_rows  # noqa: E402
from fleet import fleet_rows  # noqa: E402


def iperf(port, seconds, reverse=False, parallel=1):
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J",
           "-P", str(parallel)]
    if reverse:
        cmd.append("-R")
    for _ in range(20):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        data = json.loads(out.stdout)
        # iperf3 -s runs one test at a time and may still be ending the previous one.
        if "busy" not in data.get("error", ""):
            break
        time.sleep(0.5)
    if "error" in data:
        raise SystemExit(f"iperf3 through port {port}: {data['error']}")
    recv = data["end"]["sum_received"]
    return recv["bytes"], recv["bits_per_second"] / 8 / (1 << 20)


def iperf_udp(port, seconds, rate, length, reverse=False):
    """iperf3 -u at `rate` with `length`-byte datagrams, towards the destination or with
    `reverse` from it (-R: a download): (delivered datagrams, lost percent, delivered Mbit/s). Both iperf3 ends get 4 MiB socket buffers (every row alike): with the
    default 208 KiB, about 1 ms at 1.5 Gbit/s, the receiving iperf3 loses datagrams whenever
    it is off the CPU, and on a 2-core machine shared by four busy processes that measures
    the scheduler, not the path."""
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", rate, "-l", str(length),
           "-w", "4M", "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    for _ in range(20):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        data = json.loads(out.stdout)
        if "busy" not in data.get("error", ""):
            break
        time.sleep(0.5)
    if "error" in data:
        # A rate the path cannot carry can starve iperf3's own control connection.
        log(f"iperf3 -u at {rate} through port {port}: {data['error']}")
        return 0, 100.0, 0.0
    s = data["end"]["sum"]
    delivered = s["packets"] - s["lost_packets"]
    return delivered, s["lost_percent"], delivered * length * 8 / seconds / 1e6


UDP_LADDER = ["4G", "3G", "2G", "1750M", "1500M", "1250M", "1G", "750M", "500M", "250M", "100M"]


def udp_best(port, seconds, reverse):
    """The highest rung of the ladder delivered at < 1 % loss: (rate, Mbit/s, loss %) or None."""
    for rate in UDP_LADDER:
        _, loss, mbits = iperf_udp(port, seconds, rate, 1400, reverse)
        if loss < 1.0:
            return rate, mbits, loss
    return None


def udp_rows(ctx, args, kinds):
    """UDP: for each row, the highest of a ladder of rates delivered at < 1 % loss each way
    (towards the destination, and from it: iperf3 -R), and 64-byte datagrams per second
    unlimited; CPU per datagram of the relaying processes."""
    iport = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-p", str(iport)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(iport, srv, "iperf3 -s")
    rows = []
    try:
        for name in ["direct"] + kinds:
            t = None if name == "direct" else Tunnel(name, f"127.0.0.1:{iport}", ctx, udp=True)
            port = iport if t is None else t.port
            best = udp_best(port, args.seconds, False)
            down = udp_best(port, args.seconds, True)
            before = cpu_seconds(t.pids) if t else 0
            pps_n, pps_loss, _ = iperf_udp(port, args.seconds, "0", 64)
            cpu = (cpu_seconds(t.pids) - before) if t else None
            row = {"name": name, "rate": best[0] if best else "–",
                   "mbits": best[1] if best else 0.0, "loss": best[2] if best else 100.0,
                   "down_mbits": down[1] if down else 0.0, "down_loss": down[2] if down else 100.0,
                   "pps": pps_n / args.seconds, "pps_loss": pps_loss,
                   "us_per_dgram": cpu / max(pps_n, 1) * 1e6 if cpu is not None else None}
            rows.append(row)
            log(f"udp {name}: {row['mbits']:.0f} Mbit/s at {row['loss']:.2f}% loss, down "
                f"{row['down_mbits']:.0f} at {row['down_loss']:.2f}%; "
                f"64 B: {row['pps']:.0f} datagrams/s ({pps_loss:.1f}% lost)")
            if t:
                t.stop()
    finally:
        srv.terminate()
    return rows


def wrk_rate(port, seconds):
    cmd = ["wrk", "-t", "2", "-c", "32", "-d", f"{seconds}s", "--latency",
           "-H", "Connection: close", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    p50_ms = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"wrk through port {port}: {non2xx.group(1)} failed requests\n{out}")
    return rate, p50_ms, errors.group(1) if errors else ""


class EchoServer:
    """An asyncio echo server in a thread: the destination that holds idle connections."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        ready = threading.Event()

        async def handle(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        async def main():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, backlog=4096)
            ready.set()
            await self.server.serve_forever()

        threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True).start()
        if not ready.wait(10):
            raise SystemExit("echo server did not start")


async def hold_idle(port, n, pids):
    """Opens n connections, each proven end to end by one echoed byte, and returns the RSS of
    `pids` while they are all open and idle; then closes them."""
    writers = await open_idle(port, n)
    loaded = settle_rss(pids)
    for w in writers:
        w.close()
    return loaded


async def open_idle(port, n):
    """Opens n connections, each proven end to end by one echoed byte; returns the writers."""
    sem = asyncio.Semaphore(64)

    async def one(i):
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            b = bytes([i % 251])
            w.write(b)
            await w.drain()
            got = await asyncio.wait_for(r.readexactly(1), 10)
            if got != b:
                raise SystemExit(f"connection {i}: echo {got!r} != {b!r}")
            return w

    return await asyncio.gather(*(one(i) for i in range(n)))


def settle_rss(pids):
    """RSS of each pid once it has stopped changing (checked every 100 ms, at most 3 s)."""
    last = None
    for _ in range(30):
        now = [rss_kib(p) for p in pids]
        if now == last:
            break
        last = now
        time.sleep(0.1)
    return last


def svg_chart(rows, conn_rows, path):
    """Horizontal bars: throughput up/down (MiB/s) and connection rate (conn/s)."""
    width, bar, gap, left = 760, 14, 6, 110
    colors = {"up": "#3b7dd8", "down": "#8cb6ee", "rate": "#d8843b"}
    parts = []
    y = 30

    def section(title, entries, unit):
        nonlocal y
        top = max(v for _, vals in entries for _, v in vals) or 1
        parts.append(f'<text x="10" y="{y}" font-weight="bold">{title}</text>')
        y += 12
        for label, vals in entries:
            parts.append(f'<text x="10" y="{y + bar * len(vals) / 2 + 4}">{label}</text>')
            for key, v in vals:
                w = (width - left - 120) * v / top
                parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" '
                             f'fill="{colors[key]}"/>')
                parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 3}">{v:.0f} {unit}'
                             f'{" " + key if key != "rate" else ""}</text>')
                y += bar
            y += gap
        y += 24

    section("Single-stream throughput (iperf3), MiB/s",
            [(r["name"], [("up", r["up"]), ("down", r["down"])]) for r in rows], "MiB/s")
    section("New connections per second (wrk, Connection: close)",
            [(r["name"], [("rate", r["rate"])]) for r in conn_rows], "/s")
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="white"/>')
    with open(path, "w") as f:
        f.write(head + "".join(parts) + "</svg>\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtt", default="target/release/mtt", help="the mtt binary measured")
    ap.add_argument("--mtt-also", metavar="PATH",
                    help="a second mtt build (e.g. the dynamic one) whose memory is measured too")
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3/wrk run")
    ap.add_argument("--idle", type=int, default=2000, help="idle tunnelled connections")
    ap.add_argument("--rounds", type=int, default=3,
                    help="throughput rounds; each round measures every tunnel in turn, and "
                         "the median is reported, so a slow spell of the machine hits all alike")
    ap.add_argument("--out", default="benches", help="where results.md and results.svg go")
    ap.add_argument("--original-src", metavar="DIR",
                    help="a checkout of mos-tls-tunnel (default: cloned from GitHub)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = argparse.Namespace(mtt=os.path.abspath(args.mtt), tmp=tempfile.mkdtemp(prefix="mtt-bench-"))
    out = subprocess.run([ctx.mtt, "cert", "-n", "bench.local", "-out", ctx.tmp],
                         capture_output=True, text=True, check=True).stdout
    ctx.cert = os.path.join(ctx.tmp, "bench.local.crt")
    ctx.key = os.path.join(ctx.tmp, "bench.local.key")
    ctx.pin = re.search(r"SHA-256: ([0-9a-f]{64})", out).group(1)
    def version(cmd):
        done = subprocess.run(cmd, capture_output=True, text=True)
        return done.stdout + done.stderr

    env = {
        "mtt": f"{version([ctx.mtt, '--version']).strip()} ({linkage(ctx.mtt)})",
        "stunnel": re.search(r"stunnel [\d.]+", version(["stunnel", "-version"])).group(0),
        "iperf3": version(["iperf3", "--version"]).splitlines()[0].strip(),
        "wrk": version(["wrk", "-v"]).splitlines()[0].split(" [")[0].strip(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
    }
    log(f"bench: {env}")
    v2ray = list(V2RAY) if shutil.which(V2RAY_BIN) else []
    ctx.original = original_build(ctx.tmp, args.original_src)
    original = list(ORIGINAL) if ctx.original else []
    kinds = ["stunnel"] + v2ray + original + [m for m in MODES if m not in CONN_ONLY]
    bg = []
    try:
        # Throughput and CPU per GiB.
        iport = free_port()
        iperf_srv = subprocess.Popen(["iperf3", "-s", "-p", str(iport)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bg.append(iperf_srv)
        wait_listening(iport, iperf_srv, "iperf3 -s")
        mixed = list(MIXED) if v2ray else []
        names = ["direct"] + kinds + mixed
        tunnels = {}
        try:
            for name in kinds + mixed:
                tunnels[name] = Tunnel(name, f"127.0.0.1:{iport}", ctx)
            samples = {n: {"up": [], "down": [], "p16": [], "cpu": 0.0, "cpu_server": 0.0,
                           "moved": 0} for n in names}
            for rnd in range(args.rounds):
                for name in names:
                    t = tunnels.get(name)
                    port = iport if t is None else t.port
                    got = samples[name]
                    for key, rev, par in [("up", False, 1), ("down", True, 1), ("p16", False, 16)]:
                        before = cpu_seconds(t.pids) if t else 0
                        before_server = cpu_seconds(t.pids[:1]) if t else 0
                        try:
                            nbytes, mibs = iperf(port, args.seconds, rev, par)
                        except SystemExit as e:
                            # A run that fails is a failed round (flagged under the table),
                            # not the end of the whole benchmark.
                            log(f"throughput {name} {key}: {e}")
                            nbytes, mibs = 0, 0.0
                        if t:
                            got["cpu"] += cpu_seconds(t.pids) - before
                            got["cpu_server"] += cpu_seconds(t.pids[:1]) - before_server
                        got["moved"] += nbytes
                        got[key].append(mibs)
                    log(f"throughput {name} (round {rnd + 1}/{args.rounds}): up "
                        f"{got['up'][-1]:.0f} down {got['down'][-1]:.0f} "
                        f"16 streams {got['p16'][-1]:.0f} MiB/s")
        finally:
            for t in tunnels.values():
                t.stop()
        rows = []
        for name in names:
            got = samples[name]
            row = {"name": name}
            # A round that moved under half of the median is a failure (a stall): flagged,
            # and left out of the median and the range.
            row["failed"] = []
            for key in ("up", "down", "p16"):
                med, lo, hi, failed = summary(got[key])
                row[key], row[key + "_range"] = med, (lo, hi)
                row["failed"] += [f"{key} round {r}: {got[key][r - 1]:.0f} MiB/s" for r in failed]
            measured = name != "direct" and got["moved"] > 0
            row["cpu_per_gib"] = got["cpu"] / (got["moved"] / GIB) if measured else None
            row["server_cpu_per_gib"] = (got["cpu_server"] / (got["moved"] / GIB)
                                         if measured else None)
            rows.append(row)
        iperf_srv.terminate()

        # Connection rate: a new connection (and tunnel) per request.
        nginx, hport = nginx_site(ctx.tmp)
        bg.append(nginx)
        conn_rows = []
        for name in ["direct"] + kinds + CONN_ONLY:
            t = None if name == "direct" else Tunnel(name, f"127.0.0.1:{hport}", ctx)
            rate, p50, errors = wrk_rate(hport if t is None else t.port, args.seconds)
            conn_rows.append({"name": name, "rate": rate, "p50": p50, "errors": errors})
            log(f"connections {name}: {rate:.0f}/s, p50 {p50:.2f} ms {errors}")
            if t:
                t.stop()
        nginx.terminate()

        # UDP, when the measured mtt carries it.
        udp, lat = [], []
        if "-udp" in version([ctx.mtt, "client", "-h"]):
            udp_kinds = UDP_MODES + (["ss-rust"] if shutil.which("sslocal") else [])
            udp = udp_rows(ctx, args, udp_kinds)

        # Latency of a small exchange beside a saturating and a stalled stream of its session.
        lat = latency_rows(ctx)

        # The mu-server fleet on Redis at scale.
        fleet = fleet_rows(ctx)

        # Memory: idle processes, then `idle` idle tunnelled connections.
        echo = EchoServer()
        mem_rows = []
        runs = [(name, name, ctx) for name in kinds]
        if args.mtt_also:
            also = argparse.Namespace(**vars(ctx))
            also.mtt = os.path.abspath(args.mtt_also)
            runs += [(f"{name}, {linkage(also.mtt)} build", name, also) for name in CORE_MODES]
        for name, kind, c in runs:
            t = Tunnel(kind, f"127.0.0.1:{echo.port}", c)
            idle = settle_rss(t.pids)
            loaded = asyncio.run(hold_idle(t.port, args.idle, t.pids))
            per = [(b - a) / max(args.idle, 1) for a, b in zip(idle, loaded)]
            mem_rows.append({"name": name, "idle_client": idle[1], "idle_server": idle[0],
                             "per_client": per[1], "per_server": per[0], "main": c is ctx})
            log(f"memory {name}: idle client {idle[1]} KiB, server {idle[0]} KiB; per "
                f"connection client {per[1]:.1f} KiB, server {per[0]:.1f} KiB")
            t.stop()
    finally:
        for p in bg:
            if p.poll() is None:
                p.terminate()
        shutil.rmtree(ctx.tmp, ignore_errors=True)

    report(rows, conn_rows, mem_rows, udp, lat, fleet, env, args)


def report(rows, conn_rows, mem_rows, udp, lat, fleet, env, args):
    by = {r["name"]: r for r in rows}
    cby = {r["name"]: r for r in conn_rows}
    tls, stunnel = by["tls"], by["stunnel"]
    single = lambda r: (r["up"] + r["down"]) / 2
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {env['cpus']} CPUs, Linux {env['kernel']}: "
        f"{env['mtt']}, {env['stunnel']}, {env['iperf3']}, {env['wrk']}.",
        f"Command: `benches/run` (`--seconds {args.seconds} --idle {args.idle} "
        f"--rounds {args.rounds}`). Throughput: the median of {args.rounds} rounds, each "
        f"measuring every row in turn; single-stream ranges (min–max of up and down) in the "
        f"last column.",
        "",
        "| | up MiB/s | down MiB/s | 16 streams MiB/s | × mtt tls | tunnel CPU s/GiB "
        "| new conn/s | conn p50 ms | × stunnel conn/s | single-stream range MiB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # Rows of new connections only.
    listed = rows + [{"name": c["name"], "conn_only": True} for c in conn_rows
                     if c["name"] not in {r["name"] for r in rows}]
    for r in listed:
        c = cby.get(r["name"])
        if r.get("conn_only"):
            lines.append(f"| {r['name']} | – | – | – | – | – | {c['rate']:.0f} | {c['p50']:.2f} "
                         f"| {c['rate'] / cby['stunnel']['rate']:.2f} | – |")
            continue
        cpu = f"{r['cpu_per_gib']:.2f}" if r["cpu_per_gib"] is not None else "–"
        lo = min(r["up_range"][0], r["down_range"][0])
        hi = max(r["up_range"][1], r["down_range"][1])
        # The rows with one end swapped are measured for throughput only.
        conn = (f"{c['rate']:.0f} | {c['p50']:.2f} | {c['rate'] / cby['stunnel']['rate']:.2f}"
                if c else "– | – | –")
        lines.append(
            f"| {r['name']} | {r['up']:.0f} | {r['down']:.0f} | {r['p16']:.0f} "
            f"| {single(r) / single(tls):.2f} | {cpu} | {conn} | {lo:.0f}–{hi:.0f} |")
    failed = [f"{r['name']} ({'; '.join(r['failed'])})" for r in rows if r.get("failed")]
    if failed:
        lines += ["", "**Failed rounds** (under half of the median: a stall, left out of the "
                  "figures above): " + ", ".join(failed) + "."]
    lines += [
        "",
        f"| memory ({args.idle} idle tunnelled connections) | idle client KiB | idle server KiB "
        "| client KiB/conn | server KiB/conn |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in mem_rows:
        lines.append(f"| {m['name']} | {m['idle_client']} | {m['idle_server']} "
                     f"| {m['per_client']:.1f} | {m['per_server']:.1f} |")
    mem = {m["name"]: m for m in mem_rows}
    mtt_mem = [m for n, m in mem.items()
               if n != "stunnel" and n not in V2RAY and n not in ORIGINAL and m["main"]]
    also_mem = [m for m in mem_rows if not m["main"]]
    targets = [
        ("mtt tls throughput ≥ 1.5× stunnel", single(tls) / single(stunnel), 1.5),
        ("wss ≥ 0.9× mtt tls", single(by["wss"]) / single(tls), 0.9),
        ("mux ≥ 0.9× mtt tls", single(by["mux"]) / single(tls), 0.9),
        ("mtt tls connection rate ≥ 2× stunnel", cby["tls"]["rate"] / cby["stunnel"]["rate"], 2.0),
    ]
    if "original" in cby:
        targets += [
            ("mtt tls connection rate, full handshakes, ≥ 3× the Go original",
             cby[FULL]["rate"] / cby["original"]["rate"], 3.0),
            ("mtt tls connection rate, resumed, ≥ 3× the Go original",
             cby["tls"]["rate"] / cby["original"]["rate"], 3.0),
        ]
    if "v2ray-plugin" in by:
        targets += [
            ("mtt wss throughput ≥ 1× v2ray-plugin", single(by["wss"]) / single(by["v2ray-plugin"]),
             1.0),
            ("mtt wss+mux throughput ≥ 1× v2ray-plugin (mux=1)",
             single(by["wss+mux"]) / single(by["v2ray-plugin+mux"]), 1.0),
            ("mtt wss connection rate ≥ 1× v2ray-plugin",
             cby["wss"]["rate"] / cby["v2ray-plugin"]["rate"], 1.0),
        ]
    if "v2ray-plugin+mux → mtt" in by and by["v2ray-plugin+mux → mtt"]["server_cpu_per_gib"]:
        swapped, theirs = by["v2ray-plugin+mux → mtt"], by["v2ray-plugin+mux"]
        targets += [
            ("mtt server under v2ray-plugin clients ≥ 2× v2ray-plugin's server (throughput)",
             single(swapped) / single(theirs), 2.0),
            ("… at ≤ ½ its server CPU per GiB (inverse ratio ≥ 2)",
             theirs["server_cpu_per_gib"] / swapped["server_cpu_per_gib"], 2.0),
        ]
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for name, value, goal in targets:
        lines.append(f"| {name} | {value:.2f}× | {'yes' if value >= goal else 'no'} |")
    worst_per = max(max(m["per_client"], m["per_server"]) for m in mtt_mem)
    worst_idle = max(max(m["idle_client"], m["idle_server"]) for m in mtt_mem)
    lines.append(f"| ≤ 16 KiB RSS per idle connection per process (worst mode) "
                 f"| {worst_per:.1f} KiB | {'yes' if worst_per <= 16 else 'no'} |")
    lines.append(f"| idle process RSS ≤ 4 MiB (worst) | {worst_idle / 1024:.2f} MiB "
                 f"| {'yes' if worst_idle <= 4096 else 'no'} |")
    if lat:
        from latency import table
        at = lines.index("| target | measured | met |") - 1
        lines[at:at] = [""] + table(lat)
        # The worst median and the worst p99 each, whichever modes they come from.
        mine = [r for r in lat if r["name"] in MODES]
        stuck = [r["name"] for r in mine if not r["saturated"]]
        if stuck:
            shown, met = f"stuck ({', '.join(stuck)})", False
        else:
            w50 = max(mine, key=lambda r: r["saturated"][0])
            w99 = max(mine, key=lambda r: r["saturated"][1])
            shown = (f"{w50['saturated'][0]:.2f} ({w50['name']}) / "
                     f"{w99['saturated'][1]:.2f} ms ({w99['name']})")
            met = w50["saturated"][0] <= 0.5 and w99["saturated"][1] <= 3.0
        lines.append(f"| mux sibling round trip beside a saturating stream ≤ 0.5 ms p50, ≤ 3 ms "
                     f"p99, worst of each | {shown} | {'yes' if met else 'no'} |")
    if fleet:
        from fleet import table as fleet_table
        at = lines.index("| target | measured | met |") - 1
        lines[at:at] = [""] + fleet_table(fleet)
        lines.append(f"| fleet: 10,000 users acknowledged < 2 s, resync of 100,000 < 1 s CPU "
                     f"| {fleet['batch_ack_s']:.2f} s, {fleet['resync_cpu_s']:.2f} s "
                     f"| {'yes' if fleet['batch_ack_s'] < 2 and fleet['resync_cpu_s'] < 1 else 'no'} |")
    if udp:
        uby = {r["name"]: r for r in udp}
        ss = uby.get("ss-rust")
        lines[lines.index("| target | measured | met |") - 1:lines.index("| target | measured | met |") - 1] = [
            "",
            "| UDP (iperf3 -u) | up Mbit/s at < 1 % loss (1,400 B) | loss % "
            "| down Mbit/s at < 1 % loss | loss % | 64 B datagrams/s "
            "| CPU µs/datagram | × ss-rust datagrams/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ] + [
            f"| {r['name']} | {r['mbits']:.0f} | {r['loss']:.2f} "
            f"| {r['down_mbits']:.0f} | {r['down_loss']:.2f} | {r['pps']:.0f} "
            f"| {'–' if r['us_per_dgram'] is None else format(r['us_per_dgram'], '.1f')} "
            f"| {'–' if not ss else format(r['pps'] / max(ss['pps'], 1), '.2f')} |"
            for r in udp
        ]
        ways = [(r["name"], way, r[key]) for r in udp if r["name"] in UDP_MODES
                for way, key in (("up", "mbits"), ("down", "down_mbits"))]
        wname, wway, wmbits = min(ways, key=lambda w: w[2])
        lines.append(f"| UDP ≥ 1.5 Gbit/s at < 1 % loss in every mode, both ways (worst: {wname} "
                     f"{wway}) | {wmbits:.0f} Mbit/s | {'yes' if wmbits >= 1500 else 'no'} |")
        if ss and ss["us_per_dgram"]:
            cpu_worst = max((r for r in udp if r["name"] in UDP_MODES), key=lambda r: r["us_per_dgram"])
            ratio = cpu_worst["us_per_dgram"] / ss["us_per_dgram"]
            lines.append(f"| UDP CPU per datagram ≤ shadowsocks-rust's relay (worst: "
                         f"{cpu_worst['name']}) | {ratio:.2f}× | {'yes' if ratio <= 1.0 else 'no'} |")
    lines += ["", f"Targets are for the measured build: {env['mtt']}."]
    if also_mem:
        worst_also = max(max(m["idle_client"], m["idle_server"]) for m in also_mem)
        lines[-1] += (f" The other build's idle process RSS (worst): "
                      f"{worst_also / 1024:.2f} MiB.")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    svg_chart(rows, conn_rows, os.path.join(args.out, "results.svg"))
    print(text)


if __name__ == "__main__":
    main()
