//! Who a tunnel's client really is behind trusted proxies: the PROXY v1/v2 header a
//! TLS-passthrough proxy sends first (`-accept-proxy-protocol`), the one forwarding header an
//! HTTP proxy writes into its upgrade requests (`-trusted-proxy-header`), both believed only
//! from `-trusted-proxy` addresses; and the PROXY v2 header a server sends to its destination
//! (`-proxy-protocol`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::HeaderMap;
use proxy_header::{ParseConfig, ProxiedAddress, ProxyHeader, Tlv};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The TLV type of the mu-server's user path in the PROXY v2 header sent to a destination:
/// the first of the range the specification leaves to applications (`PP2_TYPE_MIN_CUSTOM`).
pub const TLV_USER_PATH: u8 = 0xE0;
/// The largest PROXY header read (v2 with TLVs from a load balancer; v1 is at most 107).
const MAX_HEADER: usize = 4096;

/// The header a trusted HTTP proxy names its client in (`-trusted-proxy-header`). Only that
/// one is read: a client may send any of them itself, and a proxy rewrites only the one it
/// is configured for, so believing another would let the client choose its own address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx's `$proxy_add_x_forwarded_for`, haproxy's
    /// `option forwardfor`).
    #[default]
    XForwardedFor,
    /// `X-Real-IP: client` (nginx's `$remote_addr`).
    XRealIp,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardHeader {
    /// The header named `name` (any case), if it is one of the three.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::XForwardedFor, Self::XRealIp, Self::Forwarded]
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// The header's name, as written.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "X-Forwarded-For",
            Self::XRealIp => "X-Real-IP",
            Self::Forwarded => "Forwarded",
        }
    }
}

/// Which peers are believed about the client behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted {
    /// `-trusted-proxy`.
    pub nets: Vec<ipnet::IpNet>,
    /// `-trusted-proxy-header`.
    pub header: ForwardHeader,
    /// `-accept-proxy-protocol`: trusted peers start with a PROXY header.
    pub proxy_protocol: bool,
}

impl Trusted {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Parses `-trusted-proxy CIDR[,CIDR…]` (a bare address is a /32 or /128).
    pub fn parse(list: &str) -> Result<Vec<ipnet::IpNet>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("'{s}' is not an address or CIDR (e.g. 10.0.0.0/8)"))
            })
            .collect()
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as a dual-stack listener sees it) as
/// the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Reads the PROXY v1 or v2 header `io` starts with, within `limit`: the client address it
/// names (`None` for a LOCAL header, a health check) and the bytes read beyond it.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: Duration,
) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a whole PROXY header",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let config = ParseConfig {
                include_tlvs: false,
                ..Default::default()
            };
            match ProxyHeader::parse(&buf, config) {
                Ok((h, used)) => {
                    let client = h.proxied_address().map(|a| a.source);
                    return Ok((client, buf[used..].to_vec()));
                }
                Err(proxy_header::Error::BufferTooShort) if buf.len() < MAX_HEADER => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("no valid PROXY header from a trusted proxy ({e})"),
                    ));
                }
            }
        }
    };
    tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no PROXY header within {limit:?}"),
        ))
    })
}

/// The client behind `peer` according to the one forwarding header its proxy writes
/// ([`Trusted::header`]): the rightmost address in it that is not itself a trusted proxy
/// (the hops a client wrote itself stand left of the ones the proxies appended). `peer`
/// itself when it is not trusted or the header says nothing usable.
pub fn from_headers(h: &HeaderMap, peer: IpAddr, trusted: &Trusted) -> IpAddr {
    if !trusted.trusts(peer) {
        return peer;
    }
    let values = h
        .get_all(trusted.header.name())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let hops: Vec<IpAddr> = match trusted.header {
        ForwardHeader::Forwarded => values
            .filter_map(|elem| {
                elem.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for").then(|| forwarded_ip(v))?
                })
            })
            .collect(),
        ForwardHeader::XForwardedFor | ForwardHeader::XRealIp => {
            values.filter_map(parse_ip).collect()
        }
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !trusted.trusts(*hop) {
            break;
        }
    }
    client
}

/// An address in an `X-Forwarded-For` list (with or without a port).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// A `for=` value of `Forwarded` (RFC 7239): `192.0.2.1`, `"192.0.2.1:80"`, `"[2001:db8::1]:80"`.
fn forwarded_ip(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    parse_ip(v)
}

/// The PROXY v2 header for a destination: `client` as source, `local` (the address the
/// client reached) as destination, and the mu-server user's path as a [`TLV_USER_PATH`] TLV.
pub fn v2_header(client: SocketAddr, local: SocketAddr, user_path: Option<&str>) -> Vec<u8> {
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::V4(c),
            l.ip()
                .to_ipv4_mapped()
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |ip| {
                    SocketAddr::from((ip, l.port()))
                }),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::from((l.ip().to_ipv6_mapped(), l.port())),
        ),
        pair => pair,
    };
    let mut header = ProxyHeader::with_address(ProxiedAddress::stream(client, local));
    if let Some(p) = user_path {
        header.append_tlv(Tlv::Custom(TLV_USER_PATH, p.as_bytes().into()));
    }
    let mut out = Vec::with_capacity(64);
    // Encoding fails only beyond 64 KiB of TLVs; a user path is at most 1 KiB.
    if header.encode_v2(&mut out).is_err() {
        out.clear();
    }
    out
}

/// The PROXY v2 header of a connection whose client is not known (a Unix socket): LOCAL.
pub fn v2_local() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    if ProxyHeader::with_local().encode_v2(&mut out).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &str, header: ForwardHeader) -> Trusted {
        Trusted {
            nets: Trusted::parse(list).expect("list"),
            header,
            proxy_protocol: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn headers_are_believed_from_trusted_proxies_only() {
        let t = trusted("10.0.0.0/8, 192.168.1.1", ForwardHeader::XForwardedFor);
        let proxy = ip("10.1.2.3");
        let stranger = ip("203.0.113.9");
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 10.9.9.9")]);
        assert_eq!(from_headers(&xff, proxy, &t), ip("198.51.100.7"));
        assert_eq!(
            from_headers(&xff, stranger, &t),
            stranger,
            "spoofed by a stranger"
        );
        // A client's own forged entry left of an untrusted hop is not believed.
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7")]);
        assert_eq!(from_headers(&forged, proxy, &t), ip("198.51.100.7"));
        let junk = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(from_headers(&junk, proxy, &t), proxy);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert!(t.trusts(mapped));
        assert!(Trusted::parse("10.0.0.0/33").is_err());
    }

    /// Only the header the proxy writes is read: a client's own `Forwarded` or `X-Real-IP`
    /// beside the proxy's `X-Forwarded-For` changes nothing, and the other way round.
    #[test]
    fn only_the_named_header_is_believed() {
        let proxy = ip("10.1.2.3");
        let sent = headers(&[
            ("forwarded", r#"for="[2001:db8::1]:4711";proto=https"#),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let by = |h| from_headers(&sent, proxy, &trusted("10.0.0.0/8", h));
        assert_eq!(by(ForwardHeader::XForwardedFor), ip("198.51.100.7"));
        assert_eq!(by(ForwardHeader::Forwarded), ip("2001:db8::1"));
        assert_eq!(by(ForwardHeader::XRealIp), ip("6.6.6.6"));
        let walk = headers(&[("forwarded", "for=6.6.6.6, for=198.51.100.9, for=10.0.0.7")]);
        let t = trusted("10.0.0.0/8", ForwardHeader::Forwarded);
        assert_eq!(from_headers(&walk, proxy, &t), ip("198.51.100.9"));
        let only_forwarded = headers(&[("forwarded", "for=6.6.6.6")]);
        let t = trusted("10.0.0.0/8", ForwardHeader::XForwardedFor);
        assert_eq!(from_headers(&only_forwarded, proxy, &t), proxy);
        assert_eq!(
            ForwardHeader::parse("x-real-ip"),
            Some(ForwardHeader::XRealIp)
        );
        assert_eq!(ForwardHeader::parse("Via"), None);
    }

    #[tokio::test]
    async fn proxy_headers_round_trip_and_garbage_is_refused() {
        let client: SocketAddr = "198.51.100.7:4711".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:443".parse().expect("addr");
        let mut bytes = v2_header(client, local, Some("/alice"));
        let (h, used) = ProxyHeader::parse(&bytes, ParseConfig::default()).expect("parse");
        assert_eq!(used, bytes.len());
        assert_eq!(h.proxied_address().map(|a| a.source), Some(client));
        let tlv: Vec<_> = h.tlvs().collect::<Result<_, _>>().expect("tlvs");
        assert_eq!(
            tlv,
            [Tlv::Custom(TLV_USER_PATH, b"/alice".as_slice().into())]
        );

        bytes.extend_from_slice(b"first bytes");
        let (got, rest) = read_header(&mut bytes.as_slice(), Duration::from_secs(1))
            .await
            .expect("read");
        assert_eq!(
            (got, rest.as_slice()),
            (Some(client), b"first bytes".as_slice())
        );
        let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\nhello";
        let (got, rest) = read_header(&mut v1.as_slice(), Duration::from_secs(1))
            .await
            .expect("v1");
        assert_eq!((got, rest.as_slice()), (Some(client), b"hello".as_slice()));
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert!(
            read_header(&mut tls.as_slice(), Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
