//! gRPC tunnels ("gun", as Xray and v2fly carry them): each tunnel one bidirectional-streaming
//! call, `POST /<service>/Tun`, on an HTTP/2 connection that many tunnels share, each stream
//! with its own flow control. CDNs and proxies that carry gRPC carry these (nginx `grpc_pass`,
//! haproxy in HTTP/2 mode). The wire format is in [`message`] and `docs/grpc.md`.
//!
//! The client end is a [`crate::transport::mux::ClientSession`], kept in the client's pool
//! like a multiplexed session; the server end ([`server`]) serves an HTTP/2 connection that
//! TLS chose by ALPN (`h2`), or a cleartext one (h2c) behind a proxy, routing calls by their
//! service and sending every other request to the fallback site.

pub mod client;
pub mod message;
pub mod server;
pub mod stream;

use std::time::Duration;

pub use client::{GrpcClient, Target};
pub use server::GrpcFront;

/// The ALPN value of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// How a cleartext HTTP/2 connection (h2c, prior knowledge) begins.
pub const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// A request header that marks a datagram tunnel (UDP), before its first byte.
pub const UDP_HEADER: &str = "mtt-udp";
/// What clients say they are: the gRPC library most gun clients are built on.
pub const USER_AGENT: &str = "grpc-go/1.71.0";
/// The service name without `-grpc-service` (teddysun's v2ray-plugin `mode=grpc` uses it).
pub const DEFAULT_SERVICE: &str = "GunService";

/// Each stream's receive window: what one tunnel may have in flight (and what a stream that
/// is not read may hold here). 4 MiB keeps one stream at plain-TLS speed across a 30 ms path.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// The connection's receive window: what all its streams may hold here together, unread.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// What one stream may have queued in h2 for sending. Measured (benches/latency.py), a
/// sibling's round trip beside a saturating stream: 3.9 ms p50 with 4 MiB here, 0.8-1.1 ms
/// with 256-512 KiB; one stream's throughput drops below 0.9x wss's at 256 KiB.
pub const SEND_BUFFER: usize = 512 * 1024;
/// The largest DATA frame taken (HTTP/2's default is 16 KiB): larger frames cost the sender
/// fewer writes for the same bytes (128 KiB measured no faster), smaller ones interleave
/// streams finer; the reading buffer of a connection grows to one frame.
pub const MAX_FRAME: u32 = 32 * 1024;

/// The names of a service's calls, from `-grpc-service`: a plain name (`GunService`: calls
/// `/GunService/Tun` and `/GunService/TunMulti`), or Xray's custom path `/a/b/c|d` (service
/// `a/b`, calls `c` and `d`; `/a/b/c` alone: both `c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The service's path, with its leading `/` (`/GunService`).
    pub path: String,
    /// The call a tunnel makes (`Tun`).
    pub tun: String,
    /// The call Xray's multi mode makes (`TunMulti`): served, never made.
    pub multi: String,
}

impl Service {
    /// From a `-grpc-service` value; `None` if it cannot name a call.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
        };
        let Some(custom) = name.strip_prefix('/') else {
            return (ok(name) && !name.contains('/')).then(|| Service {
                path: format!("/{name}"),
                tun: "Tun".into(),
                multi: "TunMulti".into(),
            });
        };
        let (service, calls) = custom.rsplit_once('/')?;
        let (tun, multi) = calls.split_once('|').unwrap_or((calls, calls));
        (ok(service) && ok(tun) && ok(multi) && !tun.contains('/') && !multi.contains('/')).then(
            || Service {
                path: format!("/{service}"),
                tun: tun.into(),
                multi: multi.into(),
            },
        )
    }

    /// The service of a user of the mu-server, whose path is `path` (`/alice`: calls
    /// `/alice/Tun`).
    pub fn of_user(path: &str) -> Self {
        Service {
            path: path.to_string(),
            tun: "Tun".into(),
            multi: "TunMulti".into(),
        }
    }

    /// The request path of a tunnel's call.
    pub fn tun_path(&self) -> String {
        format!("{}/{}", self.path, self.tun)
    }

    /// The service path of a request to one of its calls, if `path` is one.
    pub fn call<'a>(&self, path: &'a str) -> Option<&'a str> {
        let (service, call) = path.rsplit_once('/')?;
        (call == self.tun || call == self.multi).then_some(service)
    }
}

/// Keeps an HTTP/2 connection alive with a PING every `every`; returns why it gave up (no
/// answer within two intervals). Without either, never returns.
pub(crate) async fn keepalive(pinger: Option<h2::PingPong>, every: Option<Duration>) -> String {
    let (Some(mut pinger), Some(every)) = (pinger, every) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(2 * every, pinger.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => return format!("no answer to a keepalive PING within {:?}", 2 * every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_plain_and_custom() {
        let s = Service::parse("GunService").expect("plain");
        assert_eq!(s.tun_path(), "/GunService/Tun");
        assert_eq!(s.call("/GunService/TunMulti"), Some("/GunService"));
        assert_eq!(s.call("/GunService/Other"), None);
        let c = Service::parse("/my/sub/up|down").expect("custom");
        assert_eq!(
            (c.path.as_str(), c.tun.as_str(), c.multi.as_str()),
            ("/my/sub", "up", "down")
        );
        assert_eq!(c.tun_path(), "/my/sub/up");
        let one = Service::parse("/x/y").expect("custom, one call");
        assert_eq!((one.tun_path(), one.multi.as_str()), ("/x/y".into(), "y"));
        for bad in ["", "a b", "a/b", "/", "/only", "/a/", "/a/b|", "é"] {
            assert_eq!(Service::parse(bad), None, "{bad}");
        }
        assert_eq!(Service::of_user("/alice").tun_path(), "/alice/Tun");
    }
}
