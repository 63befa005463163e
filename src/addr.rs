//! `host:port` addresses as users write them (`example.com:443`, `[::1]:443`, `:1080`),
//! parsed once, resolved at dial time.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::{Error, Result};

/// A host (name or IP literal, possibly empty for "all interfaces") and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal, without brackets. Empty means all interfaces (listen only).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `s`, naming `flag` in errors. `allow_empty_host` is for listen addresses.
    pub fn parse(flag: &str, s: &str, allow_empty_host: bool) -> Result<Self> {
        let bad = |why: &str| {
            Error::usage(format!(
                "-{flag}: invalid address '{s}': {why} (expected host:port, e.g. 127.0.0.1:1080, example.com:443 or [::1]:443)"
            ))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = tail.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside brackets"));
            }
            (h, port)
        } else {
            let (h, port) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
            if h.contains(':') {
                return Err(bad("IPv6 addresses need brackets, e.g. [::1]:443"));
            }
            (h, port)
        };
        if host.is_empty() && !allow_empty_host {
            return Err(bad("missing host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("invalid host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port must be a number from 0 to 65535"))?;
        if port == 0 && !allow_empty_host {
            return Err(bad("port 0 cannot be dialled"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// The host as an IP address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Resolves to socket addresses (system resolver, at call time).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(ip) = self.ip() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address found for {}", self.host),
            ));
        }
        Ok(addrs)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        let p = |s| HostPort::parse("s", s, false).unwrap();
        assert_eq!(p("example.com:443").host, "example.com");
        assert_eq!(p("[::1]:443").host, "::1");
        assert_eq!(p("[::1]:443").to_string(), "[::1]:443");
        assert_eq!(p("127.0.0.1:1080").port, 1080);
        assert_eq!(HostPort::parse("b", ":1080", true).unwrap().host, "");
    }

    #[test]
    fn refuses_with_the_flag_named() {
        for s in [
            "example.com",
            "::1:443",
            "[::1]443",
            "[x]:1",
            ":80",
            "a:65536",
            "a:x",
            "a:0",
            "a b:1",
        ] {
            let e = HostPort::parse("s", s, false)
                .unwrap_err()
                .report()
                .to_string();
            assert!(e.starts_with("-s: invalid address"), "{s}: {e}");
        }
    }
}
