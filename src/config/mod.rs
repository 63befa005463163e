//! Validated runtime configuration of each role, built from the command line. Every check
//! that can fail on user input happens here, before anything listens.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::HostPort;
use crate::certs::CertSource;
use crate::certs::acme::{AcmeOptions, LETS_ENCRYPT};
use crate::certs::fingerprint;
use crate::cli::{ClientArgs, ServerArgs};
use crate::goflag::{parse_duration, parse_int};
use crate::transport::mux;
use crate::transport::options::{
    AcceptOptions, DEFAULT_TIMEOUTS, DialOptions, EarlyData, Ech, GrpcClientOptions,
    GrpcServerOptions, HelloOptions, MuxClientOptions, PathMatch, Timeouts, TlsClientOptions,
    Verify, WsClientOptions, WsServerOptions, is_valid_path, normalize_path,
};
use crate::transport::origin::{ForwardHeader, Trusted};
use crate::{Error, Result};

mod client;
mod mu_server;
mod server;

pub use client::{ClientConfig, UDP_ASSOC_RATE, UdpConfig, parse_pin};
pub use mu_server::MuServerConfig;
pub use server::ServerConfig;
pub(crate) use server::{AcmeFlags, cert_source};

/// Default idle timeout of client and server (the original's `5m`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long live tunnels may run on after SIGINT/SIGTERM before the process exits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `-udp-timeout`.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(60);

/// Validates `-udp-timeout` (and says when it has no use).
fn udp_timeout(v: &Option<String>, udp: bool) -> Result<Duration> {
    let Some(s) = v else {
        return Ok(UDP_TIMEOUT);
    };
    if !udp {
        log::warn!("-udp-timeout is not used without -udp");
    }
    let d = parse_duration("udp-timeout", s)?;
    if d.is_zero() {
        return Err(Error::usage(format!(
            "-udp-timeout must be greater than zero, got '{s}'"
        )));
    }
    Ok(d)
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address.
    Tcp(HostPort),
    /// A Unix stream socket path, or `@name` for a Linux abstract socket.
    Unix(String),
}

/// `-trusted-proxy` and `-accept-proxy-protocol`.
pub(crate) fn trusted(
    list: &Option<String>,
    header: &Option<String>,
    accept_header: bool,
) -> Result<Trusted> {
    let nets = match list.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(l) => Trusted::parse(l).map_err(|e| Error::usage(format!("-trusted-proxy: {e}")))?,
    };
    if accept_header && nets.is_empty() {
        return Err(Error::usage(
            "-accept-proxy-protocol needs -trusted-proxy: a PROXY header is believed only from the proxies named there (e.g. -trusted-proxy 10.0.0.5)",
        ));
    }
    let header = match header.as_deref().filter(|s| !s.is_empty()) {
        None => ForwardHeader::default(),
        Some(_) if nets.is_empty() => {
            return Err(Error::usage(
                "-trusted-proxy-header needs -trusted-proxy: the header is believed only from the proxies named there",
            ));
        }
        Some(h) => ForwardHeader::parse(h).ok_or_else(|| {
            Error::usage(format!(
                "-trusted-proxy-header: '{h}' is not X-Forwarded-For, X-Real-IP or Forwarded (name the one your proxy writes)"
            ))
        })?,
    };
    Ok(Trusted {
        nets,
        header,
        proxy_protocol: accept_header,
    })
}

fn required<'a>(flag: &str, v: &'a Option<String>, what: &str) -> Result<&'a str> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::usage(format!("missing -{flag}: {what}"))),
    }
}

/// Validates `-max-conns`.
fn max_conns(v: &Option<String>) -> Result<usize> {
    match v {
        None => Ok(0),
        Some(s) => {
            let n = parse_int("max-conns", s)?;
            usize::try_from(n).map_err(|_| {
                Error::usage(format!("-max-conns must be 0 (no limit) or more, got {s}"))
            })
        }
    }
}

/// Validates `-grpc-service` (given without `-grpc`: refused).
fn grpc_service(v: &Option<String>, grpc: bool) -> Result<crate::transport::grpc::Service> {
    use crate::transport::grpc::{DEFAULT_SERVICE, Service};
    let name = v.as_deref().unwrap_or(DEFAULT_SERVICE);
    if v.is_some() && !grpc {
        return Err(Error::usage("-grpc-service needs -grpc"));
    }
    Service::parse(name).ok_or_else(|| {
        Error::usage(format!(
            "-grpc-service must be a service name (letters, digits, - _ . ~) such as GunService, or Xray's custom path /a/b/Tun (servers: /a/b/Tun|TunMulti), got '{name}'"
        ))
    })
}

/// Validates `-fwmark` (0: none); where marks do not exist, any other value is refused.
fn fwmark(v: &Option<String>) -> Result<Option<u32>> {
    let Some(s) = v.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let n = parse_int("fwmark", s)?;
    let mark = u32::try_from(n).map_err(|_| {
        Error::usage(format!(
            "-fwmark must be a 32-bit mark, 0 to 4294967295 (or 0x…), got {s}"
        ))
    })?;
    if mark != 0 && !cfg!(any(target_os = "linux", target_os = "android")) {
        return Err(Error::usage(format!(
            "-fwmark {s}: socket marks are Linux's; drop -fwmark here"
        )));
    }
    Ok((mark != 0).then_some(mark))
}

/// Validates `-drain-timeout` (zero: exit at once).
fn drain(v: &Option<String>) -> Result<Duration> {
    match v {
        None => Ok(DRAIN_TIMEOUT),
        Some(s) => parse_duration("drain-timeout", s),
    }
}

/// Validates `-fallback-dns`.
fn fallback_dns(v: &Option<String>) -> Result<Option<std::net::SocketAddr>> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => Ok(Some(crate::transport::dns::Dns::parse("fallback-dns", v)?)),
    }
}

/// Validates `-handshake-timeout` and `-ping` (`0` turns pings off; given without `-wss` it
/// has nothing to ping with, and says so).
fn timeouts(v: &Option<String>, ping: &Option<String>, wss: bool, mux: bool) -> Result<Timeouts> {
    let mut t = DEFAULT_TIMEOUTS;
    if let Some(s) = v {
        t.handshake = parse_duration("handshake-timeout", s)?;
        if t.handshake.is_zero() {
            return Err(Error::usage(format!(
                "-handshake-timeout must be greater than zero, got '{s}'"
            )));
        }
    }
    if let Some(s) = ping.as_deref().filter(|s| !s.is_empty()) {
        let every = if s == "0" {
            Duration::ZERO
        } else {
            parse_duration("ping", s)?
        };
        t.ping = (!every.is_zero()).then_some(every);
        if t.ping.is_some() && !wss && !mux {
            log::warn!(
                "-ping: a plain TLS tunnel has nothing to ping with (pings are WebSocket frames with -wss, yamux keepalive frames with -mux, HTTP/2 PINGs with -grpc); it relies on TCP keepalive"
            );
        }
    }
    Ok(t)
}

/// Adds `-fallback-timeout` (default: the handshake timeout and 5 s) to `t`.
fn fallback_timeout(mut t: Timeouts, v: &Option<String>, fallback: bool) -> Result<Timeouts> {
    t.fallback = t.handshake + crate::transport::options::FALLBACK_AFTER_HANDSHAKE;
    if let Some(s) = v.as_deref().filter(|s| !s.is_empty()) {
        if !fallback {
            log::warn!("-fallback-timeout is not used without -fallback");
        }
        t.fallback = parse_duration("fallback-timeout", s)?;
        if t.fallback.is_zero() {
            return Err(Error::usage(format!(
                "-fallback-timeout must be greater than zero, got '{s}'"
            )));
        }
    }
    Ok(t)
}

/// Validates a `-wss-path` value and adds the leading `/` users may leave out.
fn ws_path(v: &Option<String>, wss: bool) -> Result<String> {
    let raw = v.as_deref().unwrap_or("/");
    if !is_valid_path(raw, false) {
        return Err(Error::usage(format!(
            "-wss-path must be a URL path of visible ASCII characters without spaces, e.g. /ws, got '{raw}'"
        )));
    }
    if !wss && v.is_some() {
        log::warn!("-wss-path is not used without -wss");
    }
    Ok(normalize_path(raw))
}

/// `/ws?ed=2048` → (`/ws`, Some(2048)): the early-data parameter. A client sends it as it is
/// given (so an mtt server knows the request carries early data; Xray's and v2ray's servers
/// match the path alone); a server's says its clients send early data unmarked, as Xray's
/// clients do.
fn early_data(path: &str, wss: bool) -> Result<(String, Option<usize>)> {
    let Some((base, query)) = path.split_once('?') else {
        return Ok((path.to_string(), None));
    };
    let mut ed = None;
    let mut rest = Vec::new();
    for kv in query.split('&') {
        match kv.strip_prefix("ed=") {
            Some(n) => {
                let n: usize = n.parse().ok().filter(|n| (1..=MAX_EARLY_DATA).contains(n)).ok_or_else(|| {
                    Error::usage(format!(
                        "-wss-path: ed= must be a number of bytes from 1 to {MAX_EARLY_DATA}, e.g. /ws?ed=2048, got '{n}'"
                    ))
                })?;
                ed = Some(n);
            }
            None => rest.push(kv),
        }
    }
    if ed.is_some() && !wss {
        log::warn!("-wss-path ?ed= is not used without -wss");
    }
    let path = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((path, ed))
}

/// `-early-data on|off` of the servers.
pub(crate) fn early_data_switch(v: &Option<String>) -> Result<bool> {
    match v.as_deref() {
        None | Some("") | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(Error::usage(format!(
            "-early-data takes on or off, got '{other}'"
        ))),
    }
}

/// The largest early data a client sends in its upgrade request (it becomes about 4/3 as
/// many header bytes; servers and CDNs limit request heads to 8–16 KiB).
pub const MAX_EARLY_DATA: usize = 8192;

fn timeout(v: &Option<String>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration("timeout", s)?;
            if d.is_zero() {
                return Err(Error::usage(format!(
                    "-timeout must be greater than zero, got '{s}'"
                )));
            }
            Ok(d)
        }
    }
}

/// `-b` of the servers: a TCP address, or with `-bind-unix` a socket path.
fn server_listen(b: &Option<String>, bind_unix: bool) -> Result<Listen> {
    let b = required(
        "b",
        b,
        "the address to listen on, e.g. -b 0.0.0.0:443 (or a socket path with -bind-unix)",
    )?;
    Ok(if bind_unix {
        Listen::Unix(b.to_string())
    } else {
        Listen::Tcp(HostPort::parse("b", b, true)?)
    })
}

/// `-metrics`: the endpoint has no authentication, so `:port` means loopback, not every
/// interface; exposing it takes an explicit address.
pub(crate) fn metrics_addr(v: &Option<String>) -> Result<Option<HostPort>> {
    let parsed = v
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|m| HostPort::parse("metrics", m, true))
        .transpose()?;
    Ok(parsed.map(|mut a| {
        if a.host.is_empty() {
            a.host = "127.0.0.1".into();
        }
        a
    }))
}
