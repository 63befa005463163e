//! The HTTP/1.1 front of WebSocket servers (hyper): upgrade requests on the tunnel path become
//! [`WsStream`]s; every other request goes to [`super::fallback`], which answers as an
//! ordinary web server would, so probes see a real site.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;

use super::datagram::{self, SUBPROTOCOL_UDP};
use super::fallback::{self, Body};
use super::io::{BoxIo, Io};
use super::mux::Muxing;
use super::options::{EarlyData, PathMatch, Timeouts};
use super::sniff::Rewind;
use super::ws::{self, Role, WsStream};
use crate::addr::HostPort;

/// Largest request head accepted (hyper's smallest buffer); larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// The subprotocol an original client sends without multiplexing.
pub const SMUX_OFF: &str = "smux_off";

/// Set once a refused UDP tunnel has been logged.
static UDP_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the client's subprotocol asked the tunnel to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// One byte stream (`smux_off`, or no subprotocol and no `-mux`).
    Plain,
    /// A multiplexed session: of the multiplexing the client named (`yamux2`, `yamux`,
    /// `smux_on`; on plain TLS, ALPN `mtt-mux2`), or (`None`: no subprotocol, `-mux`) of
    /// whichever its first bytes show; `v2`: its streams open with a type byte.
    Session {
        /// The multiplexing named, if any.
        muxing: Option<Muxing>,
        /// Version 2.
        v2: bool,
    },
    /// Datagrams (`mtt-udp`).
    Datagrams,
    /// An HTTP/2 connection whose gRPC calls are tunnels (ALPN `h2`, or h2c's preface).
    Grpc,
}

/// Settings of the HTTP front; `O` is the owner of routed tunnels.
#[derive(Debug, Clone)]
pub struct HttpServer<O> {
    /// Tunnel path(s).
    pub path: PathMatch<O>,
    /// Where requests that are not tunnels go; `None` answers 404.
    pub fallback: Option<HostPort>,
    /// Which upgrade requests may carry early data.
    pub early_data: EarlyData,
    /// What clients that name no subprotocol get (the server's `-mux`).
    pub default_mux: bool,
    /// The request-head timeout, and the fallback site's connect.
    pub timeouts: Timeouts,
    /// Whether tunnels may carry datagrams (`-udp`).
    pub udp: bool,
    /// Proxies whose forwarding headers name the client (`-trusted-proxy`).
    pub trusted: super::origin::Trusted,
}

type Slot<O> = Arc<Mutex<Option<(hyper::upgrade::OnUpgrade, Upgrade<O>, Vec<u8>)>>>;

/// An accepted upgrade: the 101 response, the upgrade to come, what the tunnel carries and
/// the early data that rode the request.
type Accepted = (Response<Body>, hyper::upgrade::OnUpgrade, Carry, Vec<u8>);

/// What an upgrade request asked for: what the tunnel carries, its path and owner.
pub struct Upgrade<O> {
    /// One stream, or a session.
    pub carry: Carry,
    /// The request path (a session's streams are routed by it again).
    pub path: String,
    /// The path's owner, when routed.
    pub owner: Option<O>,
    /// The client a trusted proxy's forwarding headers named, if they did.
    pub client: Option<IpAddr>,
    /// The client's TLS hello offered exactly `http/1.1`, as WebSocket clients do (a
    /// plain-TLS server refuses their upgrade requests instead of relaying them).
    pub ws_hello: bool,
}

impl<O> Upgrade<O> {
    /// An HTTP/2 connection: its calls are routed one by one.
    pub fn grpc() -> Self {
        Upgrade {
            carry: Carry::Grpc,
            path: String::new(),
            owner: None,
            client: None,
            ws_hello: false,
        }
    }
}

/// Whether `first` may begin an HTTP/1 request line: a method (capital letters) then a space,
/// or capital letters only so far.
fn could_be_http(first: &[u8]) -> bool {
    let method = first.iter().take_while(|c| c.is_ascii_uppercase()).count();
    (1..=16).contains(&method) && first.get(method).is_none_or(|&c| c == b' ')
}

/// The largest early data accepted in an upgrade request (Xray's `?ed=`), decoded.
const MAX_EARLY: usize = 8192;

/// Early data a client sent in `Sec-WebSocket-Protocol` (base64, URL-safe or standard, with or
/// without padding), as Xray clients with `?ed=` do: `None` if the value is not that. Its
/// encoded length is bounded here; its limit ([`MAX_EARLY`] at most) is the caller's.
fn early_data(offered: &[String]) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let [value] = offered else { return None };
    let trimmed = value.trim_end_matches('=');
    if trimmed.is_empty() || trimmed.len() > MAX_EARLY.div_ceil(3) * 4 {
        return None;
    }
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .ok()
        .filter(|b| !b.is_empty())
}

/// Whether the request's path says it carries early data (`?ed=N`, as the client was given).
fn marked_early(req: &Request<Incoming>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("ed=")))
}

impl<O: Clone + Send + Sync + 'static> HttpServer<O> {
    /// Serves HTTP on `io` until a request upgrades to a tunnel (returned) or the client goes
    /// away (`None`). `id` prefixes log lines; `peer` is the visitor's address, which the
    /// fallback site is told.
    pub async fn serve<S: Io + 'static>(
        self: &Arc<Self>,
        io: S,
        id: &str,
        peer: Option<IpAddr>,
    ) -> io::Result<Option<(BoxIo, Upgrade<O>)>> {
        // A client that speaks no HTTP (an mtt client without -wss) is told nothing: an HTTP
        // 400 would reach its application as if the destination had sent it.
        let mut io = io;
        let mut first = [0u8; 16];
        let n = tokio::time::timeout(self.timeouts.handshake, io.read(&mut first))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP request in time"))??;
        if n == 0 {
            return Ok(None);
        }
        if !could_be_http(&first[..n]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid HTTP method: the first bytes are no request line",
            ));
        }
        let io = Rewind::new(io, &first[..n]);
        let slot: Slot<O> = Arc::default();
        let service = {
            let this = self.clone();
            let slot = slot.clone();
            let id = id.to_string();
            hyper::service::service_fn(move |req| {
                let this = this.clone();
                let slot = slot.clone();
                let id = id.clone();
                async move { Ok::<_, Infallible>(this.respond(req, &slot, &id, peer).await) }
            })
        };
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.handshake)
            .max_buf_size(MAX_HEAD)
            .title_case_headers(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
            .map_err(io::Error::other)?;
        let upgrade = slot.lock().map(|mut s| s.take()).unwrap_or(None);
        let Some((on_upgrade, up, early)) = upgrade else {
            return Ok(None);
        };
        let upgraded = on_upgrade.await.map_err(io::Error::other)?;
        // Unwrap hyper's layers when they are ours: the frames then read the transport directly.
        let ping = self.timeouts.ping;
        let stream: BoxIo = match upgraded.downcast::<TokioIo<Rewind<S>>>() {
            Ok(parts) => Box::new(
                WsStream::new(parts.io.into_inner(), Role::Server, &parts.read_buf).keepalive(ping),
            ),
            Err(upgraded) => {
                Box::new(WsStream::new(TokioIo::new(upgraded), Role::Server, &[]).keepalive(ping))
            }
        };
        // Early data comes first on the stream, before anything the frames carry.
        let stream: BoxIo = if early.is_empty() {
            stream
        } else {
            Box::new(super::sniff::Rewind::new(stream, &early))
        };
        Ok(Some((stream, up)))
    }

    async fn respond(
        &self,
        mut req: Request<Incoming>,
        slot: &Slot<O>,
        id: &str,
        peer: Option<IpAddr>,
    ) -> Response<Body> {
        // Behind a trusted proxy, the client its forwarding headers name.
        let peer = peer.map(|p| super::origin::from_headers(req.headers(), p, &self.trusted));
        let client = peer.filter(|_| !self.trusted.nets.is_empty());
        let headers = req.headers();
        let wants_ws = has_token(headers, "upgrade", "websocket");
        if wants_ws && let Some(owner) = self.path.route(req.uri().path()) {
            let path = req.uri().path().to_string();
            return match self.upgrade(&mut req, id) {
                Ok((resp, on_upgrade, carry, early)) => {
                    if let Ok(mut s) = slot.lock() {
                        let up = Upgrade {
                            carry,
                            path,
                            owner,
                            client,
                            ws_hello: false,
                        };
                        *s = Some((on_upgrade, up, early));
                    }
                    resp
                }
                Err(resp) => resp,
            };
        }
        fallback::respond(req, self.fallback.as_ref(), &self.timeouts, id, peer).await
    }

    /// Checks an upgrade request on the tunnel path and builds the 101 response.
    #[allow(clippy::result_large_err)]
    fn upgrade(&self, req: &mut Request<Incoming>, id: &str) -> Result<Accepted, Response<Body>> {
        let h = req.headers();
        let refuse = |status: StatusCode, why: &str| {
            log::info!("{id}: WebSocket upgrade refused ({status}): {why}");
            let mut r = fallback::page(status, "");
            *r.body_mut() = Either::Left(Full::new(Bytes::from(format!("{why}\n"))));
            r
        };
        if req.method() != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "upgrade requests use GET",
            ));
        }
        if !has_token(h, "connection", "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "missing 'Connection: Upgrade'",
            ));
        }
        if h.get("sec-websocket-version").map(HeaderValue::as_bytes) != Some(b"13") {
            let mut r = refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket version 13 required",
            );
            r.headers_mut()
                .insert("Sec-WebSocket-Version", HeaderValue::from_static("13"));
            return Err(r);
        }
        let Some(key) = h.get("sec-websocket-key").and_then(|k| k.to_str().ok()) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
        };
        let accept = ws::accept_key(key.trim());
        let offered = tokens(h, "sec-websocket-protocol");
        let mut early = Vec::new();
        let (carry, chosen) = if offered.iter().any(|p| p == SUBPROTOCOL_UDP) {
            if !self.udp {
                datagram::warn_once(
                    &UDP_REFUSED,
                    format_args!(
                        "{id}: a client asked for a UDP tunnel; this server runs without -udp (said once)"
                    ),
                );
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "this server does not carry UDP (-udp)",
                ));
            }
            (Carry::Datagrams, Some(SUBPROTOCOL_UDP))
        } else if let Some((muxing, v2, chosen)) = Muxing::named(&offered) {
            (
                Carry::Session {
                    muxing: Some(muxing),
                    v2,
                },
                Some(chosen),
            )
        } else if offered.iter().any(|p| p == SMUX_OFF) {
            (Carry::Plain, Some(SMUX_OFF))
        } else if let Some(bytes) = early_data(&offered) {
            // Early data (Xray's `?ed=`): the first bytes of a plain stream rode the request;
            // the header is echoed, as Xray's server does. Taken only where the client or
            // the operator said so, else refused whole: never guessed into the stream.
            let limit = match marked_early(req) {
                true => Some(MAX_EARLY),
                false => self.early_data.unmarked,
            };
            match limit {
                _ if !self.early_data.on => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "early data is refused here (-early-data off)",
                    ));
                }
                Some(max) if bytes.len() <= max => early = bytes,
                Some(max) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        &format!("{} bytes of early data, more than {max}", bytes.len()),
                    ));
                }
                None => {
                    crate::rarely!(
                        Warn,
                        "{id}: a client sent what looks like early data (one base64 subprotocol) on a path without ?ed=: refused; if your clients use Xray's ?ed=, give this server -wss-path PATH?ed=2048"
                    );
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "unknown subprotocol (early data is taken with ?ed= in the path)",
                    ));
                }
            }
            (Carry::Plain, None)
        } else if self.default_mux {
            // No known subprotocol (clients older than mos-tls-tunnel 0.5.4): `-mux` decides,
            // and the first bytes which multiplexing.
            (
                Carry::Session {
                    muxing: None,
                    v2: false,
                },
                None,
            )
        } else {
            (Carry::Plain, None)
        };
        let echo = (!early.is_empty())
            .then(|| req.headers().get("sec-websocket-protocol").cloned())
            .flatten();
        let on_upgrade = hyper::upgrade::on(req);
        let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hm = resp.headers_mut();
        hm.insert("Upgrade", HeaderValue::from_static("websocket"));
        hm.insert("Connection", HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            hm.insert("Sec-WebSocket-Accept", v);
        }
        if let Some(p) = chosen {
            hm.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        } else if let Some(v) = echo {
            hm.insert("Sec-WebSocket-Protocol", v);
        }
        Ok((resp, on_upgrade, carry, early))
    }
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    tokens(h, name)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Early data is read in both base64 alphabets, padded or not; several subprotocols, an
    /// empty value, garbage and more than the limit are not early data.
    #[test]
    fn early_data_in_both_alphabets_and_nothing_else() {
        let one = |v: &str| early_data(&[v.to_string()]);
        let bytes = vec![0xfbu8, 0xff, 0x3e, 0x01];
        assert_eq!(one("-_8-AQ"), Some(bytes.clone()));
        assert_eq!(one("+/8+AQ=="), Some(bytes));
        assert_eq!(one("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(one(""), None);
        assert_eq!(one("not base64!"), None);
        assert_eq!(early_data(&["aGVsbG8".into(), "smux_off".into()]), None);
        let big = "A".repeat(MAX_EARLY.div_ceil(3) * 4 + 4);
        assert_eq!(one(&big), None);
    }
}
