//! `mtt bench`: a destination, an mtt server and an mtt client in this process on loopback
//! with a fresh self-signed certificate (pinned), measured beside direct loopback in the same
//! run; every byte is verified with a hash (the traffic itself is in [`traffic`]).

mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::addr::HostPort;
use crate::certs::CertSource;
use crate::cli::BenchArgs;
use crate::config::{ClientConfig, ServerConfig};
use crate::error::IoContext;
use crate::goflag::parse_int;
use crate::role::client::Client;
use crate::role::server::Server;
use crate::transport::options::{
    AcceptOptions, DEFAULT_TIMEOUTS, DialOptions, GrpcClientOptions, GrpcServerOptions,
    MuxClientOptions, PathMatch, TlsClientOptions, Verify, WsClientOptions, WsServerOptions,
};
use crate::transport::{Listener, grpc};
use crate::{Error, Result};
use traffic::{destination, pattern, transfer};

/// A tunnel mode to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TCP → TLS.
    Tls,
    /// TCP → TLS → WebSocket.
    Wss,
    /// TCP → TLS → yamux.
    TlsMux,
    /// TCP → TLS → WebSocket → yamux.
    WssMux,
    /// TCP → TLS → HTTP/2 (gRPC).
    Grpc,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 5] = [Mode::Tls, Mode::Wss, Mode::TlsMux, Mode::WssMux, Mode::Grpc];

    /// Name in flags and tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tls => "tls",
            Mode::Wss => "wss",
            Mode::TlsMux => "tls+mux",
            Mode::WssMux => "wss+mux",
            Mode::Grpc => "grpc",
        }
    }

    fn ws(self) -> bool {
        matches!(self, Mode::Wss | Mode::WssMux)
    }

    fn mux(self) -> bool {
        matches!(self, Mode::TlsMux | Mode::WssMux)
    }

    fn grpc(self) -> bool {
        self == Mode::Grpc
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Modes, in order; direct loopback is always measured first.
    pub modes: Vec<Mode>,
    /// Bytes each way of the single-stream tests, and in total for the aggregate test.
    pub size: u64,
    /// Parallel streams of the aggregate test.
    pub streams: usize,
    /// Sequential new connections of the latency test.
    pub conns: usize,
}

impl Options {
    /// Validates `mtt bench` flags.
    pub fn from_args(a: &BenchArgs) -> Result<Self> {
        let num = |flag: &str, v: &Option<String>, default: i64, max: i64| -> Result<i64> {
            let n = match v {
                Some(s) => parse_int(flag, s)?,
                None => default,
            };
            if !(1..=max).contains(&n) {
                return Err(Error::usage(format!(
                    "-{flag} must be between 1 and {max}, got {n}"
                )));
            }
            Ok(n)
        };
        let modes = match a.modes.as_deref() {
            None => Mode::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|m| {
                    Mode::ALL
                        .into_iter()
                        .find(|x| x.name() == m.trim())
                        .ok_or_else(|| {
                            Error::usage(format!(
                                "-modes: unknown mode '{m}' (choose from tls, wss, tls+mux, wss+mux)"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Options {
            modes,
            size: num("size", &a.size, 256, 1 << 20)? as u64 * 1024 * 1024,
            streams: num("streams", &a.streams, 16, 1024)? as usize,
            conns: num("conns", &a.conns, 200, 100_000)? as usize,
        })
    }
}

/// Limit of any one measurement, so a broken tunnel cannot hang the bench.
const STEP_LIMIT: Duration = Duration::from_secs(300);
const BLOCK: usize = 256 * 1024;

/// One measured path.
#[derive(Debug, Clone)]
pub struct Row {
    /// `direct` or the mode name.
    pub mode: &'static str,
    /// Single-stream upload, MiB/s.
    pub up: f64,
    /// Single-stream download, MiB/s.
    pub down: f64,
    /// Aggregate of `streams` parallel streams, both ways, MiB/s.
    pub aggregate: f64,
    /// New connection + first byte round trip, p50.
    pub p50: Duration,
    /// Same, p99.
    pub p99: Duration,
    /// CPU seconds of the whole process per GiB moved by the single-stream tests (load
    /// generator and destination included; subtract the direct row for the tunnel's share).
    pub cpu_per_gib: Option<f64>,
    /// The CPU time `cpu_per_gib` rests on (the kernel counts it in 10 ms ticks).
    pub cpu_measured: Duration,
}

/// CPU time (user + system, all threads) of this process, from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI mtt runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Runs every measurement and prints the table.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<()> {
    let block = Arc::new(pattern());
    let dest = TcpListener::bind("127.0.0.1:0")
        .await
        .context(|| "bench: listen for the destination")?;
    let dest_addr = dest.local_addr().context(|| "bench: destination address")?;
    tokio::spawn(destination(dest, block.clone()));

    let mut paths = vec![("direct", dest_addr)];
    for mode in &opts.modes {
        let addr = start_tunnel(*mode, dest_addr, &shutdown).await?;
        paths.push((mode.name(), addr));
    }

    crate::say!(
        "mtt bench: {} MiB each way per single stream, {} streams in the aggregate, {} new connections, loopback",
        opts.size >> 20,
        opts.streams,
        opts.conns
    );
    let mut rows = Vec::new();
    for (mode, addr) in paths {
        rows.push(measure(mode, addr, &opts, &block).await?);
    }
    {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            // The progress line goes before the table.
            eprint!("\r\x1b[2K");
        }
    }
    print_table(&rows);
    shutdown.cancel();
    Ok(())
}

/// Starts an mtt server (self-signed, pinned by the client) and client for `mode` in this
/// process; returns the client's address.
async fn start_tunnel(
    mode: Mode,
    dest: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let ws = mode.ws();
    let server = Server::new(ServerConfig {
        proxy_protocol: false,
        listen: crate::config::Listen::Tcp(HostPort::parse("b", "127.0.0.1:0", true)?),
        dest: HostPort::parse("d", &dest.to_string(), false)?,
        accept: AcceptOptions {
            trusted: Default::default(),
            tls: Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            ws: ws.then(|| WsServerOptions::new(PathMatch::new("/bench"), None)),
            grpc: mode.grpc().then(|| {
                let calls = grpc::Service::of_user("/bench");
                GrpcServerOptions {
                    services: PathMatch::Exact(calls.path.clone()),
                    calls,
                    fallback: None,
                }
            }),
            mux: mode.mux(),
            timeouts: DEFAULT_TIMEOUTS,
            session_idle: Duration::from_secs(60),
            udp: false,
            zero_rtt: true,
        },
        fast_open: false,
        fwmark: None,
        fallback_dns: None,
        drain: Duration::ZERO,
        max_conns: 0,
        timeout: Duration::from_secs(60),
        udp_timeout: Duration::from_secs(60),
    })?;
    let pin = server
        .fingerprint()
        .ok_or_else(|| Error::runtime("bench: server has no certificate"))?;
    let server_l = TcpListener::bind("127.0.0.1:0")
        .await
        .context(|| "bench: listen for the server")?;
    let server_addr = server_l.local_addr().context(|| "bench: server address")?;
    tokio::spawn(server.run(Listener::from(server_l), shutdown.clone()));

    let client = Client::new(ClientConfig {
        listen: HostPort::parse("b", "127.0.0.1:0", true)?,
        dial: DialOptions {
            server: HostPort::parse("s", &server_addr.to_string(), false)?,
            tls: TlsClientOptions {
                server_name: "127.0.0.1".into(),
                verify: Verify::Pin(crate::config::parse_pin(&pin)?),
                hello: Default::default(),
            },
            ws: ws.then(|| WsClientOptions {
                path: "/bench".into(),
                host: "127.0.0.1".into(),
                ..Default::default()
            }),
            mux: mode.mux().then_some(MuxClientOptions {
                muxing: crate::transport::mux::Muxing::Yamux,
                max_streams: 4,
                idle: crate::transport::mux::DEFAULT_IDLE,
            }),
            fast_open: false,
            fwmark: None,
            grpc: mode.grpc().then(|| GrpcClientOptions {
                service: grpc::Service::of_user("/bench"),
                authority: "127.0.0.1".into(),
                max_streams: 100,
                idle: crate::transport::mux::DEFAULT_IDLE,
            }),
            disable_tls: false,
            fallback_dns: None,
            protect: None,
            timeouts: DEFAULT_TIMEOUTS,
        },
        drain: Duration::ZERO,
        max_conns: 0,
        timeout: Duration::from_secs(60),
        udp: None,
    })?;
    let client_l = TcpListener::bind("127.0.0.1:0")
        .await
        .context(|| "bench: listen for the client")?;
    let client_addr = client_l.local_addr().context(|| "bench: client address")?;
    tokio::spawn(client.run(Listener::from(client_l), shutdown.clone()));
    Ok(client_addr)
}

async fn measure(
    mode: &'static str,
    addr: SocketAddr,
    o: &Options,
    block: &Arc<Vec<u8>>,
) -> Result<Row> {
    // On a terminal, one progress line rewritten in place; elsewhere (a log) a line each.
    let step = |what: &str| {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K  {mode}: {what}…");
        } else {
            eprintln!("  {mode}: {what}…");
        }
    };
    step("single stream up");
    let cpu_before = process_cpu();
    let up = rate(o.size, transfer(addr, o.size, 0, block.clone()).await?);
    step("single stream down");
    let down = rate(o.size, transfer(addr, 0, o.size, block.clone()).await?);
    let cpu_measured = cpu_before
        .zip(process_cpu())
        .map(|(a, b)| b.saturating_sub(a))
        .unwrap_or_default();
    let cpu_per_gib = cpu_before
        .is_some()
        .then(|| cpu_measured.as_secs_f64() / (2.0 * o.size as f64 / (1u64 << 30) as f64));
    step(&format!("{} streams both ways", o.streams));
    let per = (o.size / o.streams as u64).max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.streams {
        tasks.push(tokio::spawn(transfer(addr, per, per, block.clone())));
    }
    for t in tasks {
        t.await.map_err(|e| Error::failed("bench task", e))??;
    }
    let aggregate = rate(2 * per * o.streams as u64, start.elapsed());
    step("new connections");
    let mut lat = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        lat.push(transfer(addr, 1, 1, block.clone()).await?);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    Ok(Row {
        mode,
        up,
        down,
        aggregate,
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_gib,
        cpu_measured,
    })
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

fn print_table(rows: &[Row]) {
    crate::say!(
        "{:<8} {:>10} {:>10} {:>16} {:>12} {:>12} {:>10} {:>8} {:>10} {:>12}",
        "mode",
        "up MiB/s",
        "down MiB/s",
        "aggregate MiB/s",
        "connect p50",
        "connect p99",
        "vs direct",
        "vs tls",
        "CPU s/GiB",
        "tunnel CPU"
    );
    let base = rows.first().cloned();
    let tls = rows.iter().find(|r| r.mode == "tls").cloned();
    for r in rows {
        let ratio = base
            .as_ref()
            .map(|b| format!("{:.2}x", (r.up + r.down) / (b.up + b.down)))
            .unwrap_or_default();
        let vs_tls = match &tls {
            Some(t) if r.mode != "direct" => format!("{:.2}x", (r.up + r.down) / (t.up + t.down)),
            _ => "-".to_string(),
        };
        let cpu = r
            .cpu_per_gib
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".into());
        let tunnel_cpu = match (r.cpu_per_gib, base.as_ref().and_then(|b| b.cpu_per_gib)) {
            (Some(c), Some(d)) if r.mode != "direct" => format!("{:.2}", (c - d).max(0.0)),
            _ => "-".into(),
        };
        crate::say!(
            "{:<8} {:>10.0} {:>10.0} {:>16.0} {:>12} {:>12} {:>10} {:>8} {:>10} {:>12}",
            r.mode,
            r.up,
            r.down,
            r.aggregate,
            format!("{:.0}us", r.p50.as_secs_f64() * 1e6),
            format!("{:.0}us", r.p99.as_secs_f64() * 1e6),
            ratio,
            vs_tls,
            cpu,
            tunnel_cpu
        );
    }
    crate::say!("all transfers verified (xxh3 of every byte, both directions)");
    if rows.iter().any(|r| r.cpu_measured < Duration::from_secs(1)) {
        crate::say!(
            "note: the CPU columns rest on under a second of CPU time, counted in 10 ms ticks: take them as rough (a larger -size makes them exact)"
        );
    }
}
