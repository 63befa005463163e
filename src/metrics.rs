//! Process-wide counters in Prometheus text format (prometheus-client): connections accepted,
//! active and failed by reason, bytes each way, handshake latency, multiplexed sessions and
//! streams; served by [`crate::admin`].

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a connection failed (the `reason` label of `mtt_connections_failed`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Failure {
    /// A client's TLS, HTTP or WebSocket handshake with this server failed.
    Handshake,
    /// The client could not open a tunnel to its server.
    Server,
    /// The server could not connect to the destination.
    Destination,
    /// Refused at `-max-conns`.
    Limit,
}

impl Failure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Handshake => "handshake",
            Failure::Server => "server",
            Failure::Destination => "destination",
            Failure::Limit => "limit",
        }
    }
}

impl EncodeLabelValue for Failure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Why a datagram was dropped (the `reason` label of `mtt_udp_dropped`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UdpDrop {
    /// Larger than a UDP payload can be.
    TooLarge,
    /// Its association's queue was full (the tunnel could not keep up).
    QueueFull,
    /// No association could be made for it (its tunnel failed).
    NoTunnel,
    /// It would have started an association beyond `-udp-assoc-rate`.
    RateLimited,
}

impl EncodeLabelValue for UdpDrop {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(
            encoder,
            match self {
                UdpDrop::TooLarge => "too_large",
                UdpDrop::QueueFull => "queue_full",
                UdpDrop::NoTunnel => "no_tunnel",
                UdpDrop::RateLimited => "rate_limited",
            },
        )
    }
}

/// The label set of `mtt_udp_dropped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Why.
    pub reason: UdpDrop,
}

/// The label set of `mtt_connections_failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: Failure,
}

/// Which way bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// `up` (towards the destination) or `down`.
    pub direction: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    /// Connections accepted by a listener.
    pub accepted: Counter,
    /// Connections being served.
    pub active: Gauge,
    /// Connections that failed before carrying data.
    pub failed: Family<Reason, Counter>,
    /// Bytes relayed.
    pub bytes: Family<Direction, Counter>,
    /// Time to set up a tunnel's layers (TCP, TLS, WebSocket) as dialled or accepted.
    pub handshake: Histogram,
    /// Multiplexed sessions open.
    pub mux_sessions: Gauge,
    /// Of those, sessions speaking smux version 1 (the original's multiplexing).
    pub smux_sessions: Gauge,
    /// Multiplexed streams open.
    pub mux_streams: Gauge,
    /// UDP associations open.
    pub udp_associations: Gauge,
    /// Datagrams relayed, by direction.
    pub udp_datagrams: Family<Direction, Counter>,
    /// Bytes of datagrams relayed, by direction.
    pub udp_bytes: Family<Direction, Counter>,
    /// Datagrams dropped, by reason.
    pub udp_dropped: Family<DropLabel, Counter>,
    /// When the served certificate expires (Unix seconds; 0 while there is none).
    pub certificate_expiry: Gauge,
    /// The two series of `bytes`, `udp_datagrams` and `udp_bytes`, taken out once: relays
    /// add to them as bytes and datagrams move, with no look-up on that path.
    bytes_ways: Ways,
    datagram_ways: Ways,
    datagram_byte_ways: Ways,
    registry: Registry,
}

/// The `up` and `down` series of a family by direction.
#[derive(Default)]
struct Ways {
    up: Counter,
    down: Counter,
}

impl Ways {
    fn of(family: &Family<Direction, Counter>) -> Self {
        let way = |direction| family.get_or_create(&Direction { direction }).clone();
        Ways {
            up: way("up"),
            down: way("down"),
        }
    }

    fn way(&self, up: bool) -> &Counter {
        if up { &self.up } else { &self.down }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("mtt");
        let m = Metrics {
            accepted: Counter::default(),
            active: Gauge::default(),
            failed: Family::default(),
            bytes: Family::default(),
            handshake: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            mux_sessions: Gauge::default(),
            smux_sessions: Gauge::default(),
            mux_streams: Gauge::default(),
            udp_associations: Gauge::default(),
            udp_datagrams: Family::default(),
            udp_bytes: Family::default(),
            udp_dropped: Family::default(),
            certificate_expiry: Gauge::default(),
            bytes_ways: Ways::default(),
            datagram_ways: Ways::default(),
            datagram_byte_ways: Ways::default(),
            registry: Registry::default(),
        };
        let bytes_ways = Ways::of(&m.bytes);
        let datagram_ways = Ways::of(&m.udp_datagrams);
        let datagram_byte_ways = Ways::of(&m.udp_bytes);
        registry.register(
            "connections_accepted",
            "Connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Connections being served",
            m.active.clone(),
        );
        registry.register(
            "connections_failed",
            "Connections that failed, by reason",
            m.failed.clone(),
        );
        registry.register("bytes", "Bytes relayed, by direction", m.bytes.clone());
        registry.register(
            "handshake_seconds",
            "Time to set up a tunnel's layers",
            m.handshake.clone(),
        );
        registry.register(
            "mux_sessions",
            "Multiplexed sessions open",
            m.mux_sessions.clone(),
        );
        registry.register(
            "mux_smux_sessions",
            "Multiplexed sessions open that speak smux version 1 (the original's multiplexing)",
            m.smux_sessions.clone(),
        );
        registry.register(
            "mux_streams",
            "Multiplexed streams open",
            m.mux_streams.clone(),
        );
        registry.register(
            "udp_associations",
            "UDP associations open",
            m.udp_associations.clone(),
        );
        registry.register(
            "udp_datagrams",
            "Datagrams relayed, by direction",
            m.udp_datagrams.clone(),
        );
        registry.register(
            "udp_bytes",
            "Bytes of datagrams relayed, by direction",
            m.udp_bytes.clone(),
        );
        registry.register(
            "udp_dropped",
            "Datagrams dropped, by reason",
            m.udp_dropped.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "When the served certificate expires, in Unix seconds (0: none yet)",
            m.certificate_expiry.clone(),
        );
        Metrics {
            registry,
            bytes_ways,
            datagram_ways,
            datagram_byte_ways,
            ..m
        }
    })
}

impl Metrics {
    /// Counts a failure.
    pub fn fail(&self, reason: Failure) {
        self.failed.get_or_create(&Reason { reason }).inc();
    }

    /// Adds bytes relayed (as they move).
    pub fn add_bytes(&self, up: u64, down: u64) {
        if up > 0 {
            self.bytes_ways.up.inc_by(up);
        }
        if down > 0 {
            self.bytes_ways.down.inc_by(down);
        }
    }

    /// Counts an accepted connection and keeps `connections_active` up while the guard lives.
    pub fn serving(&'static self) -> Held {
        self.accepted.inc();
        self.active.inc();
        Held(&self.active)
    }

    /// Keeps `udp_associations` up while the guard lives.
    pub fn association(&'static self) -> Held {
        self.udp_associations.inc();
        Held(&self.udp_associations)
    }

    /// Counts a datagram relayed `up` (towards the destination) or down.
    pub fn udp_datagrams(&self, up: bool, n: u64, bytes: u64) {
        self.datagram_ways.way(up).inc_by(n);
        self.datagram_byte_ways.way(up).inc_by(bytes);
    }

    /// Counts a datagram dropped.
    pub fn udp_drop(&self, reason: UdpDrop) {
        self.udp_dropped.get_or_create(&DropLabel { reason }).inc();
    }

    /// Records a handshake's duration.
    pub fn handshake_took(&self, d: Duration) {
        self.handshake.observe(d.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        run_hooks();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The text exposition without its closing `# EOF` line, for a page that goes on with
    /// metrics of its own (the mu-server's per-user series).
    pub fn render_open(&self) -> String {
        run_hooks();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What brings a gauge up to date just before the metrics are rendered.
type Hook = Box<dyn Fn() + Send + Sync>;

fn hooks() -> &'static std::sync::Mutex<Vec<Hook>> {
    static HOOKS: OnceLock<std::sync::Mutex<Vec<Hook>>> = OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// Runs `hook` before every rendering of the metrics (for values that are costly to keep
/// current, such as a certificate's expiry, which needs the certificate parsed).
pub fn before_render(hook: Hook) {
    hooks().lock().unwrap_or_else(|p| p.into_inner()).push(hook);
}

fn run_hooks() {
    for h in hooks().lock().unwrap_or_else(|p| p.into_inner()).iter() {
        h();
    }
}

/// Keeps a gauge one higher for as long as it lives.
pub struct Held(&'static Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
