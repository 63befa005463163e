//! The HTTP/1.1 front of WebSocket servers (hyper): upgrade requests on the tunnel path become
//! [`WsStream`]s; every other request is answered as an ordinary web server would, with a
//! plain 404 page or by proxying it to the `-fallback` site, so probes see a real site.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::io::{BoxIo, Io};
use super::tcp;
use super::ws::{self, Role, WsStream};
use crate::addr::HostPort;
use crate::config::CONNECT_TIMEOUT;

/// A request head must arrive within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's smallest buffer); larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// The subprotocol an original client sends without multiplexing.
pub const SMUX_OFF: &str = "smux_off";
/// The subprotocol an original client sends with smux multiplexing, which mtt does not speak.
pub const SMUX_ON: &str = "smux_on";
/// The subprotocol of mtt clients that multiplex (with yamux).
pub const YAMUX: &str = "yamux";

const NOT_FOUND_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title></head>\n<body>\n<h1>Not Found</h1>\n<p>The requested URL was not found on this server.</p>\n</body>\n</html>\n";
const BAD_GATEWAY_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body>\n</html>\n";

/// What a router attaches to a tunnel: who it belongs to (a mu-server user).
pub type Tag = Arc<dyn std::any::Any + Send + Sync>;

/// Maps request paths to tunnel owners (mu-server users); `None` is not a tunnel path.
pub trait Router: Send + Sync {
    /// The owner of `path`, if it opens a tunnel.
    fn route(&self, path: &str) -> Option<Tag>;
}

/// Which request paths open a tunnel.
#[derive(Clone)]
pub enum PathMatch {
    /// `-wss-path /`: every path (as the original).
    Any,
    /// Exactly this path (with its leading `/`).
    Exact(String),
    /// Whatever the router knows, tagged with its owner.
    Route(Arc<dyn Router>),
}

impl std::fmt::Debug for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Any => f.write_str("Any"),
            PathMatch::Exact(p) => write!(f, "Exact({p:?})"),
            PathMatch::Route(_) => f.write_str("Route"),
        }
    }
}

impl PathMatch {
    /// From a `-wss-path` value: `/` is [`PathMatch::Any`]; a missing leading `/` is added.
    pub fn new(path: &str) -> Self {
        match normalize_path(path) {
            p if p == "/" => PathMatch::Any,
            p => PathMatch::Exact(p),
        }
    }

    /// `None`: not a tunnel path; `Some(tag)`: a tunnel, with its owner if routed.
    fn route(&self, path: &str) -> Option<Option<Tag>> {
        match self {
            PathMatch::Any => Some(None),
            PathMatch::Exact(p) => (p == path).then_some(None),
            PathMatch::Route(r) => r.route(path).map(Some),
        }
    }
}

/// Adds the leading `/` users may leave out (`ws` → `/ws`).
pub fn normalize_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// What the client's subprotocol asked the tunnel to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// One byte stream (`smux_off`, or no subprotocol and no `-mux`).
    Plain,
    /// A yamux session (`yamux`, or no subprotocol with `-mux`).
    Mux,
}

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// Tunnel path(s).
    pub path: PathMatch,
    /// Where requests that are not tunnels go; `None` answers 404.
    pub fallback: Option<HostPort>,
    /// What clients that name no subprotocol get (the server's `-mux`).
    pub default_mux: bool,
}

type Body = Either<Full<Bytes>, Incoming>;
type Slot = Arc<Mutex<Option<(hyper::upgrade::OnUpgrade, Carry, Option<Tag>)>>>;

/// A connection upgraded to a tunnel: the stream, what it carries, and its owner.
pub type Upgraded = (BoxIo, Carry, Option<Tag>);

impl HttpServer {
    /// Serves HTTP on `io` until a request upgrades to a tunnel (returned) or the client goes
    /// away (`None`). `id` prefixes log lines.
    pub async fn serve<S: Io + 'static>(
        self: &Arc<Self>,
        io: S,
        id: &str,
    ) -> io::Result<Option<Upgraded>> {
        let slot: Slot = Arc::default();
        let service = {
            let this = self.clone();
            let slot = slot.clone();
            let id = id.to_string();
            hyper::service::service_fn(move |req| {
                let this = this.clone();
                let slot = slot.clone();
                let id = id.clone();
                async move { Ok::<_, Infallible>(this.respond(req, &slot, &id).await) }
            })
        };
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .title_case_headers(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
            .map_err(|e| io::Error::other(format!("HTTP: {e}")))?;
        let upgrade = slot.lock().map(|mut s| s.take()).unwrap_or(None);
        let Some((on_upgrade, carry, tag)) = upgrade else {
            return Ok(None);
        };
        let upgraded = on_upgrade
            .await
            .map_err(|e| io::Error::other(format!("WebSocket upgrade: {e}")))?;
        // Unwrap hyper's layers when they are ours: the frames then read the transport directly.
        let stream: BoxIo = match upgraded.downcast::<TokioIo<S>>() {
            Ok(parts) => Box::new(WsStream::new(
                parts.io.into_inner(),
                Role::Server,
                &parts.read_buf,
            )),
            Err(upgraded) => Box::new(WsStream::new(TokioIo::new(upgraded), Role::Server, &[])),
        };
        Ok(Some((stream, carry, tag)))
    }

    async fn respond(&self, mut req: Request<Incoming>, slot: &Slot, id: &str) -> Response<Body> {
        let headers = req.headers();
        let wants_ws = has_token(headers, "upgrade", "websocket");
        if wants_ws && let Some(tag) = self.path.route(req.uri().path()) {
            return match self.upgrade(&mut req, id) {
                Ok((resp, on_upgrade, carry)) => {
                    if let Ok(mut s) = slot.lock() {
                        *s = Some((on_upgrade, carry, tag));
                    }
                    resp
                }
                Err(resp) => resp,
            };
        }
        match &self.fallback {
            Some(site) => match proxy(req, site).await {
                Ok(resp) => resp.map(Either::Right),
                Err(e) => {
                    log::warn!("{id}: fallback site {site}: {e}");
                    page(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE)
                }
            },
            None => {
                log::info!(
                    "{id}: {} {}: 404 (not a tunnel request)",
                    req.method(),
                    req.uri().path()
                );
                page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE)
            }
        }
    }

    /// Checks an upgrade request on the tunnel path and builds the 101 response.
    #[allow(clippy::result_large_err)]
    fn upgrade(
        &self,
        req: &mut Request<Incoming>,
        id: &str,
    ) -> Result<(Response<Body>, hyper::upgrade::OnUpgrade, Carry), Response<Body>> {
        let h = req.headers();
        let refuse = |status: StatusCode, why: &str| {
            log::info!("{id}: WebSocket upgrade refused ({status}): {why}");
            let mut r = page(status, "");
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
        let (carry, chosen) = if offered.iter().any(|p| p == YAMUX) {
            (Carry::Mux, Some(YAMUX))
        } else if offered.iter().any(|p| p == SMUX_OFF) {
            (Carry::Plain, Some(SMUX_OFF))
        } else if offered.iter().any(|p| p == SMUX_ON) {
            log::warn!(
                "{id}: refused a client multiplexing with smux (a mos-tls-tunnel client with -mux): mtt multiplexes with yamux; use an mtt client, or drop -mux on that client"
            );
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "smux multiplexing is not supported; connect without -mux or with an mtt client",
            ));
        } else if self.default_mux {
            // No known subprotocol (clients older than mos-tls-tunnel 0.5.4): `-mux` decides.
            (Carry::Mux, None)
        } else {
            (Carry::Plain, None)
        };
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
        }
        Ok((resp, on_upgrade, carry))
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

fn page(status: StatusCode, html: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(html.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "Content-Type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Sends one request to the fallback site on a new connection and returns its response,
/// streamed.
async fn proxy(req: Request<Incoming>, site: &HostPort) -> io::Result<Response<Incoming>> {
    let tcp = tcp::connect(site, CONNECT_TIMEOUT).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("fallback connection: {e}");
        }
    });
    sender.send_request(req).await.map_err(io::Error::other)
}

/// Serves plain HTTP/1.1 on `listener` until `shutdown`, answering every request with
/// `respond`: one task per connection, the header timeout, accept errors backed off. For the
/// mu-server's controller and the `-metrics` endpoint; `what` names it in logs.
pub async fn serve_plain<F, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    respond: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("{what} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let respond = respond.clone();
                async move { Ok::<_, Infallible>(respond(req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                log::debug!("{what} connection from {peer}: {e}");
            }
        });
    }
}
