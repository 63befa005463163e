//! Name resolution through one chosen DNS server (`-fallback-dns`), for hosts whose system
//! resolver is unusable (an Android VPN capturing its own DNS traffic): UDP, TCP when a
//! reply is truncated, via hickory-resolver.

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
