//! Test helpers, by job: certificates, destinations, in-process mtt, processes, nginx,
//! descriptors, HTTP; here, what every test uses (deadlines, data, addresses).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtt::testing::addr::HostPort;
pub use mtt::testing::certs::CertSource;
use mtt::testing::config::{ClientConfig, Listen, ServerConfig};
use mtt::testing::role::client::Client;
use mtt::testing::role::server::Server;
use mtt::testing::transport::Listener;
use mtt::testing::transport::options::{
    AcceptOptions, DEFAULT_TIMEOUTS, DialOptions, PathMatch, TlsClientOptions, Verify,
    WsClientOptions, WsServerOptions, normalize_path,
};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod certs;
mod dest;
mod fds;
mod hosts;
mod http;
mod inproc;
mod nginx;
mod process;

pub use certs::*;
pub use dest::*;
pub use fds::*;
pub use hosts::*;
pub use http::*;
pub use inproc::*;
pub use nginx::*;
pub use process::*;

/// Every test body runs under this bound.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `fut` with [`LIMIT`], failing the test when it is exceeded.
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test exceeded its time limit")
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    mtt::testing::certs::fingerprint::sha256(data)
}

/// How many tunnels a server with `-verbose` says it relayed to `dst`, in its `lines`.
pub fn relayed_to(lines: &[String], dst: SocketAddr) -> usize {
    let needle = format!("relaying to {dst}");
    lines.iter().filter(|l| l.contains(&needle)).count()
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn hp(s: impl ToString) -> HostPort {
    HostPort::parse("test", &s.to_string(), true).expect("address")
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Connects once `addr` accepts, retrying for up to 10 s (for servers that cannot say when
/// they are ready, such as nginx).
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (TCP and UDP), only for programs that must be told a port (nginx,
/// dnsmasq, openssl, shadowsocks hosts' SS_* ports). mtt itself is started on port 0 and asked
/// what it bound ([`Proc::listening_addr`], [`Proc::addr_after`]).
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), and each handed out once
/// per run: a port the kernel picked for `bind(0)` and released could become the source port
/// of any connection a parallel test makes before the program binds it (seen: "Address
/// already in use"); the kernel never picks ports below that range by itself.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral.min(65_536));
    if high <= low + 1000 {
        return dead_addr().port();
    }
    // Runs at the same time (another checkout's tests) start elsewhere in the range.
    let start = std::process::id() * 7919;
    for _ in 0..(high - low) {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % (high - low)) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {high}")
}

/// A loopback address nobody listens on (bound, noted, released).
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}
