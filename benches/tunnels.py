"""The tunnels every benchmark runs: the modes of mtt and the baselines beside them
(stunnel, shadowsocks-rust, v2ray-plugin), each a client and a server process on 127.0.0.1,
and the small helpers they share (free ports, waiting for a listener, CPU and RSS of a
process). Imported by harness.py, latency.py and fleet.py; imports none of them."""

import os
import statistics
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MODES = {
    "tls": [],
    "wss": ["-wss", "-wss-path", "/bench"],
    "mux": ["-mux"],
    "wss+mux": ["-wss", "-wss-path", "/bench", "-mux"],
    "smux": ["-mux"],
    "wss+smux": ["-wss", "-wss-path", "/bench", "-mux"],
    "grpc": ["-grpc"],
}
# Flags of the client only: the smux rows multiplex as the original does (the server tells
# by the first bytes or the subprotocol).
CLIENT_ONLY = {
    "smux": ["-mux-proto", "smux"],
    "wss+smux": ["-mux-proto", "smux"],
    "tls (full handshakes)": ["-no-resume"],
    "tls (resumed without 0-RTT)": ["-early-data", "off"],
}
# New-connection rows only: a full TLS handshake for every tunnel (mtt ends resume by default,
# with the first bytes as 0-RTT early data: the `tls` row), and a resumed one without 0-RTT.
FULL = "tls (full handshakes)"
MODES[FULL] = []
RESUMED = "tls (resumed without 0-RTT)"
MODES[RESUMED] = []
CONN_ONLY = [FULL, RESUMED]
# The de-facto SIP003 WebSocket plugin (Debian's shadowsocks-v2ray-plugin), run standalone
# with SS_* variables, WebSocket over TLS, without and with its multiplexing: the baseline of
# mtt's wss and wss+mux rows.
V2RAY = {"v2ray-plugin": "mux=0", "v2ray-plugin+mux": "mux=1"}
V2RAY_BIN = "ss-v2ray-plugin"
# One end swapped: v2ray-plugin's default client (Mux.Cool, mux=1) at an mtt server, and an
# mtt client given v2ray-plugin's option string at its server (throughput rows only).
MIXED = {"v2ray-plugin+mux → mtt": "v2ray client", "mtt → v2ray-plugin+mux": "v2ray server"}
# The Go original (mos-tls-tunnel, built from its source by original_build), plain TLS and
# WebSocket, as its users run it: the client skips verification (-sv) as mtt's pins do.
ORIGINAL = {"original": [], "original wss": ["-wss", "-wss-path", "/bench"]}
ORIGINAL_REPO = "https://github.com/IrineSistiana/mos-tls-tunnel"
# Its last commit: the release mtt succeeds.
ORIGINAL_COMMIT = "64318c2"
# The modes of mtt's own multiplexing (and none); smux carries TCP only.
CORE_MODES = [m for m in MODES if m not in CLIENT_ONLY]
UDP_MODES = CORE_MODES


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=10.0):
    """Waits until something listens on 127.0.0.1:port (read from ss, no connection made)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.02)
    raise SystemExit(f"{what} is not listening on {port} after {timeout} s")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def linkage(path):
    """"static" or "dynamic": whether the executable names a program interpreter."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True)
    return "dynamic" if "program interpreter" in out.stdout else "static"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def summary(values):
    """(median of the good rounds, min, max, failed rounds): a round under half of the
    median of all rounds failed."""
    med = statistics.median(values)
    good = [v for v in values if v >= med / 2]
    failed = [i + 1 for i, v in enumerate(values) if v < med / 2]
    return statistics.median(good), min(good), max(good), failed


def nginx_site(tmp):
    """nginx on 127.0.0.1 answering every request with a short 200: (process, port)."""
    site = os.path.join(tmp, "nginx")
    os.makedirs(os.path.join(site, "logs"))
    port = free_port()
    with open(os.path.join(site, "nginx.conf"), "w") as f:
        f.write(f"worker_processes 1; daemon off; pid {site}/nginx.pid; "
                f"error_log {site}/error.log; events {{ worker_connections 8192; }}\n"
                f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; "
                f"location / {{ return 200 'ok\\n'; }} }} }}\n")
    proc = subprocess.Popen(["nginx", "-p", site, "-c", os.path.join(site, "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc, "nginx")
    return proc, port


class Tunnel:
    """A client and a server process carrying 127.0.0.1:<port> to `dest` (with `udp`, UDP to
    the same port too)."""

    def __init__(self, kind, dest, ctx, udp=False):
        self.kind = kind
        self.procs = []
        sp, self.port = free_port(), free_port()
        if kind == "stunnel":
            self._stunnel(sp, dest, ctx)
        elif kind == "ss-rust":
            self._ss_rust(sp, dest)
        elif kind in V2RAY:
            self._v2ray(sp, dest, ctx, V2RAY[kind])
        elif kind in MIXED:
            self._mixed(sp, dest, ctx, MIXED[kind])
        elif kind in ORIGINAL:
            o = ctx.original
            self._start([os.path.join(o, "mtt-server"), "-b", f"127.0.0.1:{sp}", "-d", dest,
                         "-cert", ctx.cert, "-key", ctx.key] + ORIGINAL[kind], sp,
                        "original server")
            self._start([os.path.join(o, "mtt-client"), "-b", f"127.0.0.1:{self.port}",
                         "-s", f"127.0.0.1:{sp}", "-n", "bench.local", "-sv"] + ORIGINAL[kind],
                        self.port, "original client")
        else:
            flags = MODES[kind] + (["-udp"] if udp else [])
            server = [ctx.mtt, "server", "-b", f"127.0.0.1:{sp}", "-d", dest,
                      "-cert", ctx.cert, "-key", ctx.key] + flags
            client = [ctx.mtt, "client", "-b", f"127.0.0.1:{self.port}", "-s", f"127.0.0.1:{sp}",
                      "-n", "bench.local", "-cert-sha256", ctx.pin] + flags + CLIENT_ONLY.get(kind, [])
            self._start(server, sp, "mtt server")
            self._start(client, self.port, "mtt client")

    def _stunnel(self, sp, dest, ctx):
        common = "foreground = yes\nsyslog = no\ndebug = 3\n"
        sconf = os.path.join(ctx.tmp, f"stunnel-server-{sp}.conf")
        with open(sconf, "w") as f:
            f.write(common + f"pid = {ctx.tmp}/stunnel-s-{sp}.pid\n[s]\naccept = 127.0.0.1:{sp}\n"
                    f"connect = {dest}\ncert = {ctx.cert}\nkey = {ctx.key}\n")
        cconf = os.path.join(ctx.tmp, f"stunnel-client-{sp}.conf")
        with open(cconf, "w") as f:
            f.write(common + f"pid = {ctx.tmp}/stunnel-c-{sp}.pid\nclient = yes\n[c]\n"
                    f"accept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{sp}\nsni = bench.local\n")
        self._start(["stunnel", sconf], sp, "stunnel server")
        self._start(["stunnel", cconf], self.port, "stunnel client")

    def _ss_rust(self, sp, dest):
        common = ["-k", "mtt-bench", "-m", "chacha20-ietf-poly1305", "-U"]
        self._start(["ssserver", "-s", f"127.0.0.1:{sp}"] + common, sp, "ssserver")
        self._start(["sslocal", "-b", f"127.0.0.1:{self.port}", "-s", f"127.0.0.1:{sp}",
                     "--protocol", "tunnel", "-f", dest] + common, self.port, "sslocal")

    def _v2ray(self, sp, dest, ctx, mux):
        host, port = dest.rsplit(":", 1)
        tls = f"tls;host=bench.local;cert={ctx.cert}"
        server = {"SS_REMOTE_HOST": "127.0.0.1", "SS_REMOTE_PORT": str(sp), "SS_LOCAL_HOST": host,
                  "SS_LOCAL_PORT": port, "SS_PLUGIN_OPTIONS": f"server;{tls};key={ctx.key};{mux}"}
        client = {"SS_LOCAL_HOST": "127.0.0.1", "SS_LOCAL_PORT": str(self.port),
                  "SS_REMOTE_HOST": "127.0.0.1", "SS_REMOTE_PORT": str(sp),
                  "SS_PLUGIN_OPTIONS": f"{tls};{mux}"}
        self._start([V2RAY_BIN], sp, "v2ray-plugin server", server)
        self._start([V2RAY_BIN], self.port, "v2ray-plugin client", client)

    def _mixed(self, sp, dest, ctx, which):
        """The server first (its CPU is measured on its own): mtt's or v2ray-plugin's, each
        started by a v2ray-plugin option string as a shadowsocks host would."""
        host, port = dest.rsplit(":", 1)
        tls = f"tls;host=bench.local;cert={ctx.cert}"
        server_env = {"SS_REMOTE_HOST": "127.0.0.1", "SS_REMOTE_PORT": str(sp),
                      "SS_LOCAL_HOST": host, "SS_LOCAL_PORT": port,
                      "SS_PLUGIN_OPTIONS": f"server;{tls};key={ctx.key}"}
        client_env = {"SS_LOCAL_HOST": "127.0.0.1", "SS_LOCAL_PORT": str(self.port),
                      "SS_REMOTE_HOST": "127.0.0.1", "SS_REMOTE_PORT": str(sp),
                      "SS_PLUGIN_OPTIONS": f"{tls};mux=1"}
        mtt_as = lambda role: ["bash", "-c", f'exec -a mtt-{role} "$0"', ctx.mtt]
        if which == "v2ray client":
            self._start(mtt_as("server"), sp, "mtt server (v2ray-plugin options)", server_env)
            self._start([V2RAY_BIN], self.port, "v2ray-plugin client", client_env)
        else:
            self._start([V2RAY_BIN], sp, "v2ray-plugin server", server_env)
            self._start(mtt_as("client"), self.port, "mtt client (v2ray-plugin options)", client_env)

    def _start(self, cmd, port, what, env=None):
        full = dict(os.environ, **env) if env else None
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full)
        self.procs.append(p)
        wait_listening(port, p, what)

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def original_build(tmp, src=None):
    """Builds the Go original's client and server into tmp/original (GOPATH mode: its
    dependencies are vendored; Debian's Go) from `src` (a checkout; $MTT_ORIGINAL_SRC) or a
    clone of ORIGINAL_REPO at ORIGINAL_COMMIT: the directory, or None (said) if it cannot."""
    src = src or os.environ.get("MTT_ORIGINAL_SRC")
    gopath = os.path.join(tmp, "original-gopath")
    tree = os.path.join(gopath, "src", "github.com", "IrineSistiana", "mos-tls-tunnel")
    out = os.path.join(tmp, "original")
    os.makedirs(os.path.dirname(tree), exist_ok=True)
    env = dict(os.environ, GOPATH=gopath, GO111MODULE="off", GOFLAGS="",
               GOCACHE=os.path.join(tmp, "original-gocache"))
    try:
        subprocess.run(["git", "clone", "-q", src or ORIGINAL_REPO, tree], check=True,
                       capture_output=True, text=True, timeout=300)
        subprocess.run(["git", "-C", tree, "checkout", "-q", ORIGINAL_COMMIT], check=True,
                       capture_output=True, text=True)
        for role in ("mtt-server", "mtt-client"):
            subprocess.run(["/usr/bin/go", "build", "-o", os.path.join(out, role), f"./cmd/{role}"],
                           cwd=tree, env=env, check=True, capture_output=True, text=True,
                           timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        log(f"the Go original did not build; its rows are left out: {detail.strip()}")
        return None
    return out
