//! Name resolution through one chosen DNS server (`-fallback-dns`), for hosts whose system
//! resolver is unusable (an Android VPN capturing its own DNS traffic): UDP, TCP when a
//! reply is truncated, via hickory-resolver; and a server's ECH configuration from its HTTPS
//! record (`-ech-dns`).

use std::io;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

use crate::addr::HostPort;
use crate::{Error, Result};

/// A resolver bound to one DNS server.
pub struct Dns {
    server: SocketAddr,
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dns({})", self.server)
    }
}

impl Dns {
    /// Parses `IP` or `IP:PORT` (port 53 by default): the server must be an address, since
    /// nothing could resolve its name.
    pub fn parse(flag: &str, s: &str) -> Result<SocketAddr> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, 53));
        }
        s.parse::<SocketAddr>().map_err(|_| {
            Error::usage(format!(
                "-{flag} must be an IP address with an optional port, e.g. 1.1.1.1 or [2606:4700::1111]:53, got '{s}'"
            ))
        })
    }

    /// The DNS server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// A resolver that asks only `server`.
    pub fn new(server: SocketAddr) -> Result<Self> {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|e| Error::usage(format!("-fallback-dns {server}: {e}")))?;
        Ok(Dns { server, resolver })
    }

    /// The addresses of `addr`'s host (IP literals are returned as they are).
    pub async fn resolve(&self, addr: &HostPort) -> io::Result<Vec<SocketAddr>> {
        if let Some(ip) = addr.ip() {
            return Ok(vec![SocketAddr::new(ip, addr.port)]);
        }
        let found = self
            .resolver
            .lookup_ip(addr.host.as_str())
            .await
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "resolve {} through -fallback-dns {}: {e}",
                        addr.host, self.server
                    ),
                )
            })?;
        let addrs: Vec<SocketAddr> = found
            .iter()
            .map(|ip| SocketAddr::new(ip, addr.port))
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no address at {}", addr.host, self.server),
            ));
        }
        Ok(addrs)
    }
}

/// The ECHConfigList of `name`'s HTTPS record (its `ech=` value): asked of `via`
/// (`-fallback-dns`) or of the system's resolvers (/etc/resolv.conf).
pub async fn ech_config_list(name: &str, via: Option<SocketAddr>) -> Result<Vec<u8>> {
    use hickory_resolver::proto::rr::rdata::svcb::SvcParamValue;
    use hickory_resolver::proto::rr::{RData, RecordType};
    let (resolver, asked) = match via {
        Some(server) => (Dns::new(server)?.resolver, format!("-fallback-dns {server}")),
        None => (
            Resolver::builder_tokio()
                .map_err(|e| {
                    Error::usage(format!(
                        "-ech-dns: the system's resolver configuration cannot be read ({e}): give -fallback-dns, or -ech-config"
                    ))
                })?
                .build()
                .map_err(|e| Error::usage(format!("-ech-dns: {e}")))?,
            "the system's resolver".to_string(),
        ),
    };
    let fail = |why: String| {
        Error::usage(format!(
            "-ech-dns: {name}'s HTTPS record, asked of {asked}: {why}; give -ech-config BASE64 instead, or drop -ech-dns"
        ))
    };
    let found = resolver
        .lookup(name, RecordType::HTTPS)
        .await
        .map_err(|e| fail(e.to_string()))?;
    // The record of the lowest priority that has one (RFC 9460: lower is preferred).
    let mut best: Option<(u16, Vec<u8>)> = None;
    for record in found.answers() {
        let RData::HTTPS(https) = &record.data else {
            continue;
        };
        for (_, value) in &https.0.svc_params {
            if let SvcParamValue::EchConfigList(list) = value
                && best.as_ref().is_none_or(|(p, _)| https.0.svc_priority < *p)
            {
                best = Some((https.0.svc_priority, list.0.clone()));
            }
        }
    }
    best.map(|(_, list)| list)
        .ok_or_else(|| fail("no ech= value in it".into()))
}
