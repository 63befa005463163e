//! The server's configuration, and the certificate flags every server shares (files, a
//! self-signed one, or ACME).

use super::*;

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
    /// Mark of the listener and of connections to the destination (`-fwmark`).
    pub fwmark: Option<u32>,
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
            Some(_) if !a.wss && !a.grpc => {
                return Err(Error::usage(
                    "-fallback needs -wss or -grpc: it answers the HTTP requests that are not tunnels",
                ));
            }
            Some(f) => Some(HostPort::parse("fallback", f, false)?),
        };
        let early_data = EarlyData {
            on: early_data_switch(&a.early_data)?,
            unmarked,
        };
        let zero_rtt = early_data.on;
        let calls = grpc_service(&a.grpc_service, a.grpc)?;
        let grpc = a.grpc.then(|| GrpcServerOptions {
            services: PathMatch::Exact(calls.path.clone()),
            calls,
            fallback: fallback.clone(),
        });
        let ws = a.wss.then(|| WsServerOptions {
            path: PathMatch::new(&path),
            fallback,
            early_data,
        });
        let tls = cert_source(&a.cert, &a.key, &a.n, a.disable_tls, &a.acme_flags())?;
        Ok(ServerConfig {
            listen,
            dest,
            accept: AcceptOptions {
                tls,
                ws,
                grpc,
                mux: a.mux,
                timeouts: fallback_timeout(
                    timeouts(&a.handshake_timeout, &a.ping, a.wss, a.mux || a.grpc)?,
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
                zero_rtt,
            },
            fast_open: a.fast_open,
            fwmark: fwmark(&a.fwmark)?,
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
        (None, None) => {
            let name = name.as_deref().filter(|s| !s.is_empty());
            if let Some(n) = name {
                crate::certs::pem::check_name(n)?;
            }
            Ok(Some(CertSource::SelfSigned(name.map(str::to_string))))
        }
        (Some(_), None) => Err(Error::usage(
            "-cert was given without -key: give both, or neither for a self-signed certificate",
        )),
        (None, Some(_)) => Err(Error::usage(
            "-key was given without -cert: give both, or neither for a self-signed certificate",
        )),
    }
}
