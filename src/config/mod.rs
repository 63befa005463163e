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
    AcceptOptions, DEFAULT_TIMEOUTS, DialOptions, EarlyData, MuxClientOptions, PathMatch, Timeouts,
    TlsClientOptions, Verify, WsClientOptions, WsServerOptions, is_valid_path, normalize_path,
};
use crate::transport::origin::{ForwardHeader, Trusted};
use crate::{Error, Result};

mod mu_server;

pub use mu_server::{DEFAULT_CONTROLLER, MU_DEFAULT_TIMEOUT, MuServerConfig, TOKEN_FILE};

/// Default idle timeout of client and server (the original's `5m`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long live tunnels may run on after SIGINT/SIGTERM before the process exits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Local listen address (with fast open when `dial.fast_open`).
    pub listen: HostPort,
    /// How tunnels to the server are made.
    pub dial: DialOptions,
    /// How long live tunnels may finish after SIGINT/SIGTERM (`-drain-timeout`).
    pub drain: Duration,
    /// Connections served at once; more are closed on arrival (`-max-conns`, 0: no limit).
    pub max_conns: usize,
    /// Idle timeout of a tunnel (no bytes in either direction).
    pub timeout: Duration,
    /// UDP through the tunnel too (`-udp`).
    pub udp: Option<UdpConfig>,
}

/// UDP settings of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// An association with no datagram either way for this long is closed (`-udp-timeout`).
    pub timeout: Duration,
    /// Associations at once (`-udp-max-assoc`); beyond, the longest idle is dropped.
    pub max_assoc: usize,
    /// New associations a second (`-udp-assoc-rate`), each a tunnel dialled; 0: no limit.
    pub assoc_rate: u32,
}

/// Default `-udp-timeout`.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `-udp-max-assoc`.
pub const UDP_MAX_ASSOC: usize = 1024;
/// Default `-udp-assoc-rate`: far above what one user's applications start (a DNS client
/// that uses a new port per query, a browser's QUIC connections), far below a flood.
pub const UDP_ASSOC_RATE: u32 = 200;

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

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: Listen,
    /// Destination of every tunnel.
    pub dest: HostPort,
    /// How tunnels are ended: certificate, WebSocket, multiplexing, timeouts.
    pub accept: AcceptOptions<()>,
    /// TCP fast open on the listener (`-fast-open`).
    pub fast_open: bool,
    /// DNS server for the destination's host name (`-fallback-dns`).
    pub fallback_dns: Option<std::net::SocketAddr>,
    /// How long live tunnels may finish after SIGINT/SIGTERM (`-drain-timeout`).
    pub drain: Duration,
    /// Connections served at once; more are closed on arrival (`-max-conns`, 0: no limit).
    pub max_conns: usize,
    /// Idle timeout of a tunnel.
    pub timeout: Duration,
    /// Idle timeout of a UDP association (`-udp-timeout`; UDP itself is `accept.udp`).
    pub udp_timeout: Duration,
    /// Send the destination a PROXY v2 header (`-proxy-protocol`).
    pub proxy_protocol: bool,
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
                "-ping: a plain TLS tunnel has nothing to ping with (pings are WebSocket frames with -wss, or yamux keepalive frames with -mux); it relies on TCP keepalive"
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

/// Headers of the upgrade that `-wss-header` may not set: the handshake's own.
const OWN_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// `-wss-header 'Name: value'` → (name, value), checked.
fn wss_headers(raw: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in raw {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Error::usage(format!(
                "-wss-header must be 'Name: value', e.g. -wss-header 'X-Token: abc', got '{h}'"
            )));
        };
        let (name, value) = (name.trim(), value.trim());
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Error::usage(format!(
                "-wss-header: '{h}' is not a valid header ('Name: value', the name a token, the value on one line)"
            )));
        }
        if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            let hint = if name.eq_ignore_ascii_case("host") {
                "; use -wss-host"
            } else {
                ""
            };
            return Err(Error::usage(format!(
                "-wss-header: {name} belongs to the WebSocket handshake and cannot be set{hint}"
            )));
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

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

/// Parses `-cert-sha256`: 64 hex digits, with or without `:` separators.
pub fn parse_pin(s: &str) -> Result<[u8; 32]> {
    fingerprint::parse(s).ok_or_else(|| {
        Error::usage(format!(
            "-cert-sha256 must be 64 hex digits (the SHA-256 of the server certificate, as 'mtt cert' or the server's warning prints it), got '{s}'"
        ))
    })
}

impl ClientConfig {
    /// Validates the client's flags.
    pub fn from_args(a: &ClientArgs) -> Result<Self> {
        let listen = HostPort::parse(
            "b",
            required(
                "b",
                &a.b,
                "the local address to listen on, e.g. -b 127.0.0.1:1080",
            )?,
            true,
        )?;
        let server = HostPort::parse(
            "s",
            required("s", &a.s, "the server address, e.g. -s example.com:443")?,
            false,
        )?;
        let timeout = timeout(&a.timeout, DEFAULT_TIMEOUT)?;
        let max_streams = match &a.mux_max_stream {
            None => 4,
            Some(v) => {
                let n = parse_int("mux-max-stream", v)?;
                if !(1..=16).contains(&n) {
                    return Err(Error::usage(format!(
                        "-mux-max-stream must be between 1 and 16, got {v}"
                    )));
                }
                n as usize
            }
        };
        let idle = match &a.mux_idle {
            None => mux::DEFAULT_IDLE,
            Some(v) => parse_duration("mux-idle", v)?,
        };
        if a.mux_idle.is_some() && !a.mux {
            log::warn!("-mux-idle is not used without -mux");
        }
        let muxing = match a.mux_proto.as_deref() {
            None => mux::Muxing::Yamux,
            Some(name) => mux::Muxing::parse(name).ok_or_else(|| {
                Error::usage(format!(
                    "-mux-proto must be yamux (mtt servers) or smux (mos-tls-tunnel servers), got {name}"
                ))
            })?,
        };
        if a.mux_proto.is_some() && !a.mux {
            log::warn!("-mux-proto is not used without -mux");
        }
        let mux = a.mux.then_some(MuxClientOptions {
            max_streams,
            idle,
            muxing,
        });
        let path = ws_path(&a.wss_path, a.wss)?;
        let fallback_dns = fallback_dns(&a.fallback_dns)?;
        let server_name = match a.n.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => server.host.clone(),
        };
        let chosen = [a.sv, a.ca.is_some(), a.cert_sha256.is_some()];
        if chosen.iter().filter(|x| **x).count() > 1 {
            return Err(Error::usage(
                "-sv, -ca and -cert-sha256 exclude each other: choose one way to trust the server",
            ));
        }
        let verify = if a.sv {
            Verify::Insecure
        } else if let Some(ca) = &a.ca {
            if ca.is_empty() {
                return Err(Error::usage("-ca needs a file name"));
            }
            Verify::Ca(PathBuf::from(ca))
        } else if let Some(pin) = &a.cert_sha256 {
            Verify::Pin(parse_pin(pin)?)
        } else {
            Verify::WebPki
        };
        let (path, early_data) = early_data(&path, a.wss)?;
        if early_data.is_some() && a.mux {
            return Err(Error::usage(
                "-wss-path ?ed= (early data) and -mux exclude each other: a multiplexed session's first bytes are the session's own; drop ?ed= or -mux",
            ));
        }
        let host = match a.wss_host.as_deref().filter(|h| !h.is_empty()) {
            None => server_name.clone(),
            Some(h) => {
                if !a.wss {
                    log::warn!("-wss-host is not used without -wss");
                }
                if crate::addr::HostPort::parse("wss-host", &format!("{h}:1"), false).is_err()
                    || h.contains([':', '/'])
                {
                    return Err(Error::usage(format!(
                        "-wss-host must be a host name (no port, no path), e.g. -wss-host cdn.example.com, got '{h}'"
                    )));
                }
                h.to_string()
            }
        };
        let headers = wss_headers(&a.wss_header)?;
        if !headers.is_empty() && !a.wss {
            log::warn!("-wss-header is not used without -wss");
        }
        let ws = a.wss.then_some(WsClientOptions {
            path,
            host,
            headers,
            early_data,
        });
        Ok(ClientConfig {
            listen,
            dial: DialOptions {
                server,
                tls: TlsClientOptions {
                    server_name,
                    verify,
                },
                ws,
                mux,
                fast_open: a.fast_open,
                fallback_dns,
                protect: None,
                timeouts: timeouts(&a.handshake_timeout, &a.ping, a.wss, a.mux)?,
            },
            drain: drain(&a.drain_timeout)?,
            max_conns: max_conns(&a.max_conns)?,
            timeout,
            udp: udp_client(a)?,
        })
    }
}

/// `-udp`, `-udp-timeout`, `-udp-max-assoc`, `-udp-assoc-rate` of the client.
fn udp_client(a: &ClientArgs) -> Result<Option<UdpConfig>> {
    let timeout = udp_timeout(&a.udp_timeout, a.udp)?;
    let max_assoc = match &a.udp_max_assoc {
        None => UDP_MAX_ASSOC,
        Some(v) => {
            if !a.udp {
                log::warn!("-udp-max-assoc is not used without -udp");
            }
            let n = parse_int("udp-max-assoc", v)?;
            usize::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Error::usage(format!("-udp-max-assoc must be 1 or more, got {v}")))?
        }
    };
    let assoc_rate = match &a.udp_assoc_rate {
        None => UDP_ASSOC_RATE,
        Some(v) => {
            if !a.udp {
                log::warn!("-udp-assoc-rate is not used without -udp");
            }
            let n = parse_int("udp-assoc-rate", v)?;
            u32::try_from(n).map_err(|_| {
                Error::usage(format!(
                    "-udp-assoc-rate must be 0 (no limit) or a number of associations a second, got {v}"
                ))
            })?
        }
    };
    Ok(a.udp.then_some(UdpConfig {
        timeout,
        max_assoc,
        assoc_rate,
    }))
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

impl ServerConfig {
    /// Validates the server's flags.
    pub fn from_args(a: &ServerArgs) -> Result<Self> {
        let listen = server_listen(&a.b, a.bind_unix)?;
        let dest = HostPort::parse(
            "d",
            required("d", &a.d, "the destination address, e.g. -d 127.0.0.1:8388")?,
            false,
        )?;
        let timeout = timeout(&a.timeout, DEFAULT_TIMEOUT)?;
        let (path, unmarked) = early_data(&ws_path(&a.wss_path, a.wss)?, a.wss)?;
        let fallback = match a.fallback.as_deref() {
            None | Some("") => None,
            Some(_) if !a.wss => {
                return Err(Error::usage(
                    "-fallback needs -wss: it answers the HTTP requests that are not tunnels",
                ));
            }
            Some(f) => Some(HostPort::parse("fallback", f, false)?),
        };
        let early_data = EarlyData {
            on: early_data_switch(&a.early_data)?,
            unmarked,
        };
        let ws = a.wss.then(|| WsServerOptions {
            path: PathMatch::new(&path),
            fallback,
            early_data,
        });
        let acme = AcmeFlags {
            names: &a.acme,
            email: &a.acme_email,
            dir: &a.acme_dir,
            directory: &a.acme_directory,
            ca: &a.acme_ca,
        };
        let tls = cert_source(&a.cert, &a.key, &a.n, a.disable_tls, &acme)?;
        Ok(ServerConfig {
            listen,
            dest,
            accept: AcceptOptions {
                tls,
                ws,
                mux: a.mux,
                timeouts: fallback_timeout(
                    timeouts(&a.handshake_timeout, &a.ping, a.wss, a.mux)?,
                    &a.fallback_timeout,
                    a.fallback.as_deref().is_some_and(|f| !f.is_empty()),
                )?,
                session_idle: timeout,
                udp: a.udp,
                trusted: trusted(
                    &a.trusted_proxy,
                    &a.trusted_proxy_header,
                    a.accept_proxy_protocol,
                )?,
            },
            fast_open: a.fast_open,
            fallback_dns: fallback_dns(&a.fallback_dns)?,
            drain: drain(&a.drain_timeout)?,
            max_conns: max_conns(&a.max_conns)?,
            timeout,
            udp_timeout: udp_timeout(&a.udp_timeout, a.udp)?,
            proxy_protocol: a.proxy_protocol,
        })
    }
}

/// The `-acme*` flags of a server.
pub(crate) struct AcmeFlags<'a> {
    pub names: &'a Option<String>,
    pub email: &'a Option<String>,
    pub dir: &'a Option<String>,
    pub directory: &'a Option<String>,
    pub ca: &'a Option<String>,
}

impl AcmeFlags<'_> {
    /// What they ask for; `None` without `-acme` (the other `-acme-*` flags then say so).
    fn options(&self) -> Result<Option<AcmeOptions>> {
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let Some(names) = given(self.names) else {
            for (flag, v) in [
                ("-acme-email", self.email),
                ("-acme-dir", self.dir),
                ("-acme-directory", self.directory),
                ("-acme-ca", self.ca),
            ] {
                if given(v).is_some() {
                    return Err(Error::usage(format!(
                        "{flag} needs -acme NAME[,NAME]: the names to obtain a certificate for"
                    )));
                }
            }
            return Ok(None);
        };
        let mut domains = Vec::new();
        for d in names.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let ok = !d.starts_with('*')
                && d.parse::<std::net::IpAddr>().is_err()
                && rustls::pki_types::DnsName::try_from(d).is_ok()
                && d.contains('.');
            if !ok {
                return Err(Error::usage(format!(
                    "-acme: '{d}' is not a DNS name a CA can validate on this port (no IP addresses, no wildcards), e.g. -acme example.com,www.example.com"
                )));
            }
            domains.push(d.to_ascii_lowercase());
        }
        if domains.is_empty() {
            return Err(Error::usage(
                "-acme: give at least one name, e.g. -acme example.com",
            ));
        }
        let email = given(self.email);
        if let Some(e) = &email
            && (!e.contains('@') || e.contains(char::is_whitespace))
        {
            return Err(Error::usage(format!(
                "-acme-email: '{e}' is not an e-mail address"
            )));
        }
        let directory = given(self.directory).unwrap_or_else(|| LETS_ENCRYPT.to_string());
        if !directory.starts_with("https://") {
            return Err(Error::usage(format!(
                "-acme-directory: '{directory}' must be an https:// URL (Let's Encrypt: {LETS_ENCRYPT})"
            )));
        }
        let dir = match given(self.dir) {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
                // systemd may list several state directories; the first is ours.
                Some(v) => PathBuf::from(
                    v.to_string_lossy()
                        .split(':')
                        .next()
                        .unwrap_or(".")
                        .to_string(),
                )
                .join("acme"),
                None => PathBuf::from("acme"),
            },
        };
        Ok(Some(AcmeOptions {
            domains,
            email,
            dir,
            directory,
            ca: given(self.ca).map(PathBuf::from),
        }))
    }
}

/// `-cert`/`-key`/`-n`/`-disable-tls`/`-acme` → where the certificate comes from.
pub(crate) fn cert_source(
    cert: &Option<String>,
    key: &Option<String>,
    name: &Option<String>,
    disable_tls: bool,
    acme: &AcmeFlags<'_>,
) -> Result<Option<CertSource>> {
    let cert = cert.as_deref().filter(|s| !s.is_empty());
    let key = key.as_deref().filter(|s| !s.is_empty());
    if let Some(opts) = acme.options()? {
        if disable_tls {
            return Err(Error::usage(
                "-acme and -disable-tls exclude each other: -acme obtains the certificate this server's TLS presents",
            ));
        }
        if cert.is_some() || key.is_some() {
            return Err(Error::usage(
                "-acme and -cert/-key exclude each other: -acme obtains the certificate itself",
            ));
        }
        return Ok(Some(CertSource::Acme(opts)));
    }
    if disable_tls {
        if cert.is_some() || key.is_some() {
            log::warn!("-cert and -key are not used with -disable-tls");
        }
        return Ok(None);
    }
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(CertSource::Files {
            cert: c.into(),
            key: k.into(),
        })),
        (None, None) => Ok(Some(CertSource::SelfSigned(
            name.as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        ))),
        (Some(_), None) => Err(Error::usage(
            "-cert was given without -key: give both, or neither for a self-signed certificate",
        )),
        (None, Some(_)) => Err(Error::usage(
            "-key was given without -cert: give both, or neither for a self-signed certificate",
        )),
    }
}
