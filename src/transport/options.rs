//! What the pipeline's layers are built from: the option types of the dialling end
//! ([`DialOptions`]) and of the accepting end ([`AcceptOptions`]), and the [`Timeouts`] both
//! obey. `config` fills them from the command line; the layers never see the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::HostPort;

/// How long the steps of setting up a tunnel may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP connect, overall across the addresses of a name (client → server, server →
    /// destination, fallback site).
    pub connect: Duration,
    /// A handshake: TLS on both ends, the WebSocket upgrade, a request head of the HTTP front
    /// (`-handshake-timeout`).
    pub handshake: Duration,
    /// WebSocket keepalive (`-ping`): a ping this often; a peer silent for two intervals is
    /// gone. `None`: no pings.
    pub ping: Option<Duration>,
    /// How long the `-fallback` site may take to answer with its response head
    /// (`-fallback-timeout`); then the visitor gets 504.
    pub fallback: Duration,
}

/// The original's 10 s for connects and handshakes.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    handshake: Duration::from_secs(10),
    ping: Some(DEFAULT_PING),
    fallback: Duration::from_secs(10 + FALLBACK_AFTER_HANDSHAKE.as_secs()),
};

/// The default `-fallback-timeout` is this much more than `-handshake-timeout`.
pub const FALLBACK_AFTER_HANDSHAKE: Duration = Duration::from_secs(5);

/// The default `-ping` of WebSocket tunnels: well inside the idle timers of CDNs and proxies
/// (Cloudflare about 100 s, nginx's `proxy_read_timeout` 60 s, AWS NLB 350 s).
pub const DEFAULT_PING: Duration = Duration::from_secs(30);

impl Default for Timeouts {
    fn default() -> Self {
        DEFAULT_TIMEOUTS
    }
}

/// How the client decides to trust the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The chain against the public web PKI roots (webpki-roots) and the server name.
    WebPki,
    /// The chain against this PEM file's certificates only, and the server name.
    Ca(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (any issuer, any name).
    Pin([u8; 32]),
    /// Anything (`-sv`): encrypted but not authenticated.
    Insecure,
}

/// TLS settings of a dialling end.
#[derive(Debug, Clone)]
pub struct TlsClientOptions {
    /// SNI and the name checked in the certificate. IP literals send no SNI.
    pub server_name: String,
    /// Trust policy.
    pub verify: Verify,
    /// What the hello offers beyond the mode's own needs.
    pub hello: HelloOptions,
}

/// What a client's TLS hello offers beyond the mode's own needs (docs/tls.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloOptions {
    /// ALPN of plain-TLS tunnels (`-alpn`); `None`: `h2`, `http/1.1`, as browsers offer.
    pub alpn: Option<Vec<String>>,
    /// Encrypted Client Hello.
    pub ech: Ech,
    /// TLS 1.2 offered too (`-tls12`), for servers without TLS 1.3: no ECH then.
    pub tls12: bool,
    /// No session kept to resume (`-no-resume`): a full handshake for every connection.
    pub no_resume: bool,
    /// 0-RTT (`-early-data`, on unless off; never for a session's connections): a resumed
    /// handshake carries the tunnel's first bytes as TLS early data.
    pub early_data: bool,
}

/// Encrypted Client Hello (TLS 1.3 only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ech {
    /// No configuration: an ECH extension of random bytes, as browsers send (GREASE), so
    /// hellos with and without ECH look alike.
    #[default]
    Grease,
    /// An ECHConfigList (`-ech-config`, or the server name's HTTPS record): the real server
    /// name travels encrypted, the outer hello names the configuration's public name.
    Config(Vec<u8>),
    /// The ECHConfigList of the server name's HTTPS record (`-ech-dns`), fetched when the
    /// client starts ([`crate::transport::dns::ech_config_list`]) to become `Config`.
    Dns,
}

/// WebSocket settings of a client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsClientOptions {
    /// Request path, with its leading `/` (without `?ed=`).
    pub path: String,
    /// `Host` header: the server name (or `-wss-host`), never a port.
    pub host: String,
    /// Extra headers of the upgrade request (`-wss-header`), in order.
    pub headers: Vec<(String, String)>,
    /// Early data (`?ed=N`): a first write of at most this many bytes rides the upgrade.
    pub early_data: Option<usize>,
}

/// Multiplexing settings of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxClientOptions {
    /// Streams per session (`-mux-max-stream`, 1–16).
    pub max_streams: usize,
    /// How long a session without streams is kept.
    pub idle: Duration,
    /// yamux (mtt servers), or smux version 1 (the original's servers; `-mux-proto smux`).
    pub muxing: super::mux::Muxing,
}

/// gRPC settings of a client (`-grpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcClientOptions {
    /// The service whose tunnel call is made (`-grpc-service`).
    pub service: super::grpc::Service,
    /// `:authority` of the calls: the server's name.
    pub authority: String,
    /// Tunnels one HTTP/2 connection carries at once (`-grpc-max-streams`).
    pub max_streams: usize,
    /// How long a connection without tunnels is kept.
    pub idle: Duration,
}

/// gRPC settings of a server (`-grpc`).
#[derive(Debug, Clone)]
pub struct GrpcServerOptions<O> {
    /// Which services' calls are tunnels (the mu-server's: its users' paths).
    pub services: PathMatch<O>,
    /// The names of the calls (and, for one service, its path).
    pub calls: super::grpc::Service,
    /// Web server for requests that are not tunnels.
    pub fallback: Option<HostPort>,
}

/// Everything the [`super::Dialer`] needs to open tunnels to a server.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// The mtt server.
    pub server: HostPort,
    /// TLS to the server.
    pub tls: TlsClientOptions,
    /// WebSocket over TLS (`-wss`).
    pub ws: Option<WsClientOptions>,
    /// Multiplexing (`-mux`).
    pub mux: Option<MuxClientOptions>,
    /// gRPC over HTTP/2 (`-grpc`), which multiplexes by itself.
    pub grpc: Option<GrpcClientOptions>,
    /// TCP fast open on dials to the server (`-fast-open`).
    pub fast_open: bool,
    /// Mark of the connections to the server (`-fwmark`).
    pub fwmark: Option<u32>,
    /// No TLS at this end (`-disable-tls`): the server is behind a TLS-terminating proxy.
    pub disable_tls: bool,
    /// DNS server for the server's host name (`-fallback-dns`).
    pub fallback_dns: Option<SocketAddr>,
    /// Android VPN protect server (plugin mode's `-V`): every dial is protected first.
    pub protect: Option<PathBuf>,
    /// Connect and handshake limits.
    pub timeouts: Timeouts,
}

/// Maps request paths to the owners of their tunnels (the mu-server's users).
pub trait Router: Send + Sync {
    /// Who a tunnel on a path belongs to.
    type Owner: Clone + Send + Sync + 'static;
    /// The owner of `path` now, if it opens a tunnel.
    fn route(&self, path: &str) -> Option<Self::Owner>;

    /// The owner of a new stream of a connection that `current` owns (a multiplexed
    /// session's): the path's owner now, if it still opens tunnels.
    fn reroute(&self, path: &str, _current: &Self::Owner) -> Option<Self::Owner> {
        self.route(path)
    }

    /// Fires when `owner` is revoked (a user removed with kick): its tunnels, and the
    /// multiplexed sessions carrying them, are closed.
    fn revoked(&self, _owner: &Self::Owner) -> Option<tokio_util::sync::CancellationToken> {
        None
    }
}

/// Which request paths open a tunnel; `O` is the owner a routed path yields.
pub enum PathMatch<O> {
    /// `-wss-path /`: every path (as the original).
    Any,
    /// Exactly this path (with its leading `/`).
    Exact(String),
    /// Whatever the router knows, with its owner.
    Route(Arc<dyn Router<Owner = O>>),
}

impl<O> Clone for PathMatch<O> {
    fn clone(&self) -> Self {
        match self {
            PathMatch::Any => PathMatch::Any,
            PathMatch::Exact(p) => PathMatch::Exact(p.clone()),
            PathMatch::Route(r) => PathMatch::Route(r.clone()),
        }
    }
}

impl<O> std::fmt::Debug for PathMatch<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Any => f.write_str("Any"),
            PathMatch::Exact(p) => write!(f, "Exact({p:?})"),
            PathMatch::Route(_) => f.write_str("Route"),
        }
    }
}

impl<O: Clone + Send + Sync + 'static> PathMatch<O> {
    /// From a `-wss-path` value: `/` is [`PathMatch::Any`]; a missing leading `/` is added.
    pub fn new(path: &str) -> Self {
        match normalize_path(path) {
            p if p == "/" => PathMatch::Any,
            p => PathMatch::Exact(p),
        }
    }

    /// What closes `owner`'s tunnels, if anything can.
    pub fn revoked(&self, owner: &O) -> Option<tokio_util::sync::CancellationToken> {
        match self {
            PathMatch::Route(r) => r.revoked(owner),
            _ => None,
        }
    }

    /// Who a new stream on `path` of a connection owned by `current` belongs to; `None`: it
    /// opens nothing.
    pub fn reroute(&self, path: &str, current: &O) -> Option<O> {
        match self {
            PathMatch::Route(r) => r.reroute(path, current),
            _ => Some(current.clone()),
        }
    }

    /// `None`: not a tunnel path; `Some(owner)`: a tunnel, with its owner if routed.
    pub fn route(&self, path: &str) -> Option<Option<O>> {
        match self {
            PathMatch::Any => Some(None),
            PathMatch::Exact(p) => (p == path).then_some(None),
            PathMatch::Route(r) => r.route(path).map(Some),
        }
    }
}

/// Adds the leading `/` users may leave out (`ws` → `/ws`).
pub fn normalize_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Whether `path` is one a client can send as a WebSocket request path: visible ASCII
/// without spaces, and (`strict`, for the mu-server's user paths) a leading `/`, at most
/// 1024 bytes, no `?` or `#`. The one predicate behind `-wss-path` and user paths.
pub fn is_valid_path(path: &str, strict: bool) -> bool {
    let visible = !path.is_empty() && path.bytes().all(|b| (0x21..0x7f).contains(&b));
    visible
        && (!strict || (path.starts_with('/') && path.len() <= 1024 && !path.contains(['?', '#'])))
}

/// WebSocket settings of a server.
#[derive(Debug, Clone)]
pub struct WsServerOptions<O> {
    /// Which paths open tunnels.
    pub path: PathMatch<O>,
    /// Web server for requests that are not tunnels.
    pub fallback: Option<HostPort>,
    /// Which upgrade requests may carry early data.
    pub early_data: EarlyData,
}

impl<O> WsServerOptions<O> {
    /// Tunnels on `path`, other requests to `fallback`, early data as by default.
    pub fn new(path: PathMatch<O>, fallback: Option<HostPort>) -> Self {
        WsServerOptions {
            path,
            fallback,
            early_data: EarlyData::default(),
        }
    }
}

/// Which upgrade requests a server takes early data from (a client's first bytes, base64 in
/// `Sec-WebSocket-Protocol`, as Xray sends them with `?ed=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyData {
    /// `-early-data off`: from none (such requests are refused).
    pub on: bool,
    /// From requests that do not say so in their path (Xray's clients strip `?ed=`), up to
    /// this many bytes: the server's own `-wss-path …?ed=N`. Requests whose path carries
    /// `ed=` (mtt's clients) are always taken, up to the 8 KiB any client sends.
    pub unmarked: Option<usize>,
}

impl Default for EarlyData {
    fn default() -> Self {
        EarlyData {
            on: true,
            unmarked: None,
        }
    }
}

/// Everything the [`super::Acceptor`] needs to end tunnels.
#[derive(Debug, Clone)]
pub struct AcceptOptions<O> {
    /// The certificate; `None` with `-disable-tls`.
    pub tls: Option<crate::certs::CertSource>,
    /// HTTP + WebSocket in front of the tunnels (`-wss`).
    pub ws: Option<WsServerOptions<O>>,
    /// gRPC tunnels over HTTP/2 (`-grpc`), beside WebSocket on one port (chosen by ALPN).
    pub grpc: Option<GrpcServerOptions<O>>,
    /// Plain TLS: every connection is a multiplexed session. WebSocket: the default for
    /// clients that name no subprotocol.
    pub mux: bool,
    /// Handshake limits (and the fallback site's connect).
    pub timeouts: Timeouts,
    /// How long a multiplexed session may carry no stream before it is closed (`-timeout`).
    pub session_idle: Duration,
    /// Whether tunnels may carry datagrams (`-udp`).
    pub udp: bool,
    /// Proxies believed about the client behind them (`-trusted-proxy`,
    /// `-accept-proxy-protocol`).
    pub trusted: super::origin::Trusted,
    /// TLS 1.3 early data (0-RTT) from resumed clients (`-early-data`, off in a fleet:
    /// its tickets must open on any server, and early data needs sessions taken once).
    pub zero_rtt: bool,
}
