//! The ALPN protocols a server's TLS offers: what its front speaks (HTTP/2 for gRPC,
//! HTTP/1.1 for WebSocket, none in plain mode), and those answered only to a client that
//! offers them (older clients' sessions and UDP tunnels, ACME's validation).

use super::super::{ALPN_HTTP1, datagram, grpc};
use crate::certs::acme;

/// (protocols offered to every client, protocols each answered when a client offers it).
pub(super) fn offered(
    grpc: bool,
    http: bool,
    mux: bool,
    udp: bool,
    acme: bool,
) -> (&'static [&'static [u8]], Vec<&'static [u8]>) {
    // HTTP/2 first when gRPC is served: a browser offering both then speaks h2 to the
    // fallback site too.
    const BOTH: &[&[u8]] = &[grpc::ALPN_H2, ALPN_HTTP1[0]];
    let alpn: &[&[u8]] = match (grpc, http) {
        (true, true) => BOTH,
        (true, false) => &[grpc::ALPN_H2],
        (false, true) => ALPN_HTTP1,
        (false, false) => &[],
    };
    // Plain mode answers the ALPN of version-2 sessions and of UDP tunnels when it can;
    // WebSocket mode says the same with subprotocols.
    let mut extra: Vec<&[u8]> = Vec::new();
    if !http && mux {
        extra.push(datagram::ALPN_MUX2);
    }
    if !http && udp && !mux {
        extra.push(datagram::ALPN_UDP);
    }
    // With ACME, validation connections (RFC 8737) are answered on this port too.
    if acme {
        extra.push(acme::ALPN_ACME);
    }
    (alpn, extra)
}
