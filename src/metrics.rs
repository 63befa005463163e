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
    /// Multiplexed streams open.
    pub mux_streams: Gauge,
    /// The two series of `bytes`, taken out once: relays add to them as bytes move.
    up: Counter,
    down: Counter,
    registry: Registry,
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
            mux_streams: Gauge::default(),
            up: Counter::default(),
            down: Counter::default(),
            registry: Registry::default(),
        };
        let up = m
            .bytes
            .get_or_create(&Direction { direction: "up" })
            .clone();
        let down = m
            .bytes
            .get_or_create(&Direction { direction: "down" })
            .clone();
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
            "mux_streams",
            "Multiplexed streams open",
            m.mux_streams.clone(),
        );
        Metrics {
            registry,
            up,
            down,
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
            self.up.inc_by(up);
        }
        if down > 0 {
            self.down.inc_by(down);
        }
    }

    /// Records a handshake's duration.
    pub fn handshake_took(&self, d: Duration) {
        self.handshake.observe(d.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The text exposition without its closing `# EOF` line, for a page that goes on with
    /// metrics of its own (the mu-server's per-user series).
    pub fn render_open(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
