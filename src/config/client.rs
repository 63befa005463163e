//! The client's configuration: the way to its server (TLS, WebSocket, multiplexing), its
//! listener, and UDP.

use super::*;

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

/// Default `-udp-max-assoc`.
pub const UDP_MAX_ASSOC: usize = 1024;

/// Default `-udp-assoc-rate`: far above what one user's applications start (a DNS client
/// that uses a new port per query, a browser's QUIC connections), far below a flood.
pub const UDP_ASSOC_RATE: u32 = 200;

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
        if a.mux_idle.is_some() && !a.mux && !a.grpc {
            log::warn!("-mux-idle is not used without -mux");
        }
        let muxing = match a.mux_proto.as_deref() {
            None => mux::Muxing::Yamux,
            Some(name) => mux::Muxing::parse(name).ok_or_else(|| {
                Error::usage(format!(
                    "-mux-proto must be yamux (mtt servers), smux (mos-tls-tunnel servers) or mux.cool (v2ray-plugin servers), got {name}"
                ))
            })?,
        };
        if a.mux_proto.is_some() && !a.mux {
            log::warn!("-mux-proto is not used without -mux");
        }
        if a.mux && a.udp && muxing == mux::Muxing::Smux {
            return Err(Error::usage(
                "-udp and -mux-proto smux exclude each other: smux (the original's multiplexing) carries no UDP; for UDP, drop -mux-proto smux (mtt servers multiplex UDP with yamux), or drop -udp",
            ));
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
        if a.disable_tls && (a.sv || a.ca.is_some() || a.cert_sha256.is_some()) {
            return Err(Error::usage(
                "-disable-tls leaves nothing to verify: drop -sv, -ca or -cert-sha256 (or -disable-tls)",
            ));
        }
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
        let hello = hello(a)?;
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
        let grpc = grpc_client(a, &server_name)?;
        let ws = a.wss.then_some(WsClientOptions {
            path,
            host,
            headers,
            early_data,
        });
        // Said once everything is known to be valid: an invalid command line is one line.
        if a.disable_tls {
            log::warn!(
                "-disable-tls: nothing is encrypted between here and {server}; use it only when a TLS-terminating proxy or CDN stands in front of the server and the way to it is trusted"
            );
        }
        Ok(ClientConfig {
            listen,
            dial: DialOptions {
                server,
                tls: TlsClientOptions {
                    server_name,
                    verify,
                    hello,
                },
                ws,
                mux,
                grpc,
                fast_open: a.fast_open,
                fwmark: fwmark(&a.fwmark)?,
                disable_tls: a.disable_tls,
                fallback_dns,
                protect: None,
                timeouts: timeouts(&a.handshake_timeout, &a.ping, a.wss, a.mux || a.grpc)?,
            },
            drain: drain(&a.drain_timeout)?,
            max_conns: max_conns(&a.max_conns)?,
            timeout,
            udp: udp_client(a)?,
        })
    }
}

/// `-grpc`, `-grpc-service` and `-grpc-max-streams` of the client.
/// What the TLS hello offers beyond the mode's needs: `-alpn`, `-tls12`, `-ech-config`,
/// `-no-resume`.
fn hello(a: &ClientArgs) -> Result<HelloOptions> {
    let alpn = match a.alpn.as_deref() {
        None => None,
        Some("none") => Some(Vec::new()),
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
            if let Some(bad) = names.iter().find(|p| p.is_empty() || p.len() > 255) {
                return Err(Error::usage(format!(
                    "-alpn: '{bad}' is not a protocol name (1 to 255 bytes each), e.g. -alpn h2,http/1.1, or -alpn none"
                )));
            }
            Some(names)
        }
    };
    if alpn.is_some() && (a.wss || a.grpc || a.disable_tls) {
        return Err(Error::usage(
            "-alpn is for plain-TLS tunnels: -wss offers http/1.1 and -grpc h2 by themselves; drop -alpn",
        ));
    }
    if a.ech_dns && a.ech_config.is_some() {
        return Err(Error::usage(
            "-ech-dns and -ech-config exclude each other: the configuration comes from DNS or from the command line; drop one",
        ));
    }
    let ech = match a.ech_config.as_deref() {
        None if a.ech_dns => Ech::Dns,
        None => Ech::Grease,
        Some(b64) => {
            use base64::Engine;
            let e = base64::engine::general_purpose::STANDARD;
            Ech::Config(e.decode(b64.trim()).map_err(|why| {
                Error::usage(format!(
                    "-ech-config is not base64 ({why}): give the ECHConfigList as the server's DNS HTTPS record shows it (ech=...)"
                ))
            })?)
        }
    };
    if a.disable_tls && (a.tls12 || a.ech_config.is_some() || a.ech_dns || a.no_resume) {
        return Err(Error::usage(
            "-disable-tls makes no TLS hello: drop -tls12, -ech-config, -ech-dns and -no-resume (or -disable-tls)",
        ));
    }
    if a.tls12 && a.ech_dns {
        return Err(Error::usage(
            "-tls12 and -ech-dns exclude each other: ECH needs TLS 1.3; drop one of them",
        ));
    }
    Ok(HelloOptions {
        alpn,
        ech,
        tls12: a.tls12,
        no_resume: a.no_resume,
        // A session's connection lives long and starts with its own frames: nothing to
        // gain, and its first flight would not be the application's.
        early_data: super::early_data_switch(&a.early_data)? && !a.no_resume && !a.mux && !a.grpc,
    })
}

fn grpc_client(a: &ClientArgs, server_name: &str) -> Result<Option<GrpcClientOptions>> {
    let service = grpc_service(&a.grpc_service, a.grpc)?;
    if a.grpc_max_streams.is_some() && !a.grpc {
        return Err(Error::usage("-grpc-max-streams needs -grpc"));
    }
    if !a.grpc {
        return Ok(None);
    }
    if a.wss {
        return Err(Error::usage(
            "-grpc and -wss exclude each other on a client: it speaks one of them (a server may take both on one port); drop one",
        ));
    }
    if a.mux {
        return Err(Error::usage(
            "-grpc multiplexes by itself (each tunnel an HTTP/2 stream of a shared connection): drop -mux",
        ));
    }
    let max = crate::transport::grpc::server::MAX_STREAMS as i64;
    let max_streams = match &a.grpc_max_streams {
        None => 100,
        Some(v) => {
            let n = parse_int("grpc-max-streams", v)?;
            if !(1..=max).contains(&n) {
                return Err(Error::usage(format!(
                    "-grpc-max-streams must be between 1 and {max} (what an mtt server takes at once), got {v}"
                )));
            }
            n as usize
        }
    };
    Ok(Some(GrpcClientOptions {
        service,
        authority: server_name.to_string(),
        max_streams,
        idle: match &a.mux_idle {
            None => mux::DEFAULT_IDLE,
            Some(v) => parse_duration("mux-idle", v)?,
        },
    }))
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
