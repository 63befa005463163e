//! The server end: one HTTP/2 connection, served until the client leaves, it stays without
//! calls for the idle timeout, or shutdown. A `POST` of `application/grpc` to a tunnel call of
//! a known service becomes a tunnel (its owner's, on a mu-server); every other request goes to
//! the fallback site (or gets 404), over HTTP/2 as it came, so the port answers as a web
//! server does.
//!
//! Bounds, per connection: 128 streams at once; 16 KiB of request headers; the connection's
//! receive window (16 MiB) is what all its streams may hold unread together, and each
//! stream's (4 MiB) what one may; h2's guards against streams reset as soon as opened
//! (CVE-2023-44487: 32 pending), CONTINUATION floods and unanswered PINGs and SETTINGS hold;
//! calls the client resets before their first byte, each of which dialled a destination,
//! are budgeted (512 at once, then 256 a second; past it new calls are refused, and 1024
//! refusals close the connection). A peer past one of
//! them loses its connection (GOAWAY), and only its own.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stream::GrpcStream;
use super::{CONNECTION_WINDOW, MAX_FRAME, SEND_BUFFER, STREAM_WINDOW, Service, UDP_HEADER};
use crate::addr::HostPort;
use crate::transport::accept::Tunnel;
use crate::transport::datagram::Kind;
use crate::transport::mux::Quiet;
use crate::transport::options::{PathMatch, Timeouts};
use crate::transport::serve::ConnId;

/// Streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 128;
/// The most request-header bytes taken (HPACK-decoded, as HTTP/2 counts them).
pub const MAX_HEADERS: u32 = 16 * 1024;
/// Streams the client may reset before they are accepted (rapid reset): then GOAWAY.
const PENDING_RESETS: usize = 32;
/// Streams this end may reset for the peer's errors before it gives the connection up.
const LOCAL_RESETS: usize = 256;
/// Calls a connection may abandon (reset by the client before its first byte) in a burst,
/// and then per second. Each call dials a destination, so a client that opens streams only
/// to reset them once answered (rapid reset) would otherwise make this server dial as fast
/// as it can send 30 bytes; calls that carry anything cost nothing here, however many.
const ABANDONED_BURST: f64 = 512.0;
const ABANDONED_PER_SECOND: f64 = 256.0;
/// Calls refused past that budget before the connection is closed (GOAWAY).
const REFUSED_CALLS: u32 = 1024;

/// The budget of abandoned calls of one connection (a token bucket their tunnels draw on).
struct Budget {
    tokens: f64,
    at: tokio::time::Instant,
    refused: u32,
    /// Calls abandoned since the last look, counted by their streams.
    abandoned: Arc<AtomicU32>,
}

impl Budget {
    fn new() -> Self {
        Budget {
            tokens: ABANDONED_BURST,
            at: tokio::time::Instant::now(),
            refused: 0,
            abandoned: Arc::default(),
        }
    }

    /// Whether a new call may be taken now: not while the calls abandoned lately are past
    /// the budget.
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * ABANDONED_PER_SECOND;
        let spent = f64::from(self.abandoned.swap(0, Ordering::AcqRel));
        self.tokens = (self.tokens + earned).min(ABANDONED_BURST) - spent;
        self.at = now;
        if self.tokens >= 0.0 {
            return true;
        }
        self.refused += 1;
        false
    }
}

/// The gRPC settings of a server.
pub struct GrpcFront<O> {
    /// Which services' calls are tunnels: one, or (mu-server) one per user, by path.
    pub services: PathMatch<O>,
    /// The calls a service takes (`Tun`, `TunMulti`, or Xray's custom names).
    pub calls: Service,
    /// Where requests that are not tunnels go; `None` answers 404.
    pub fallback: Option<HostPort>,
    /// Handshake limits, keepalive, the fallback's wait.
    pub timeouts: Timeouts,
    /// Whether tunnels may carry datagrams (`-udp`).
    pub udp: bool,
}

/// Counts a connection's live calls; the last one out wakes the idle watch.
#[derive(Default)]
struct Live {
    n: AtomicUsize,
    gone: Notify,
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.gone.notify_one();
        }
    }
}

impl<O: Clone + Send + Sync + 'static> GrpcFront<O> {
    /// Serves one HTTP/2 connection: each tunnel call goes to `handle` in a task `tasks`
    /// tracks; other requests to the fallback. `peer`: the visitor, for the fallback site.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve<S, H, Fut>(
        &self,
        io: S,
        id: &ConnId,
        quiet: Quiet,
        peer: Option<IpAddr>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        handle: H,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(Tunnel<O>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADERS)
            .max_pending_accept_reset_streams(PENDING_RESETS)
            .max_local_error_reset_streams(Some(LOCAL_RESETS))
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(quiet.first, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                crate::rarely!(Warn, "{id}: HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                log::debug!("{id}: no HTTP/2 preface within {:?}", quiet.first);
                return;
            }
        };
        log::debug!("{id}: HTTP/2 connection (gRPC)");
        let live = Arc::new(Live::default());
        let keepalive = super::keepalive(conn.ping_pong(), quiet.ping);
        tokio::pin!(keepalive);
        let mut closing = false;
        let mut calls = 0u64;
        let mut budget = Budget::new();
        let mut quiet_for = quiet.first;
        loop {
            let idle = live.n.load(Ordering::Acquire) == 0 && !closing;
            let next = tokio::select! {
                next = conn.accept() => next,
                _ = shutdown.cancelled(), if !closing => {
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                _ = live.gone.notified() => continue,
                _ = tokio::time::sleep(quiet_for), if idle => {
                    log::debug!("{id}: HTTP/2 connection closed after {quiet_for:?} without calls");
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                why = &mut keepalive => {
                    log::info!("{id}: HTTP/2 connection closed: {why}");
                    return;
                }
            };
            let (req, respond) = match next {
                None => return,
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    if e.is_go_away() || e.reason().is_some_and(|r| r != h2::Reason::NO_ERROR) {
                        crate::rarely!(Warn, "{id}: HTTP/2 connection closed: {e}");
                    } else {
                        log::debug!("{id}: HTTP/2 connection ended: {e}");
                    }
                    return;
                }
            };
            quiet_for = quiet.idle;
            let mut respond = respond;
            if live.n.load(Ordering::Acquire) >= MAX_STREAMS as usize || !budget.take() {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                if budget.refused > REFUSED_CALLS && !closing {
                    crate::rarely!(
                        Warn,
                        "{id}: HTTP/2 connection closed: more than {REFUSED_CALLS} calls refused while it reset calls before their first byte beyond {ABANDONED_PER_SECOND} a second (rapid reset?)"
                    );
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                }
                continue;
            }
            calls += 1;
            let sid = id.stream(calls);
            live.n.fetch_add(1, Ordering::AcqRel);
            let guard = LiveGuard(live.clone());
            match self.tunnel_of(&req) {
                Some(Ok((owner, kind))) => {
                    let resp = Response::builder()
                        .status(StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .body(());
                    let send = match resp.map(|r| respond.send_response(r, false)) {
                        Ok(Ok(s)) => s,
                        _ => continue,
                    };
                    let io = Box::new(GrpcStream::server(
                        send,
                        req.into_body(),
                        budget.abandoned.clone(),
                    ));
                    let tunnel = Tunnel {
                        io,
                        kind,
                        id: sid,
                        owner,
                        shutdown: shutdown.clone(),
                    };
                    let handle = handle.clone();
                    tasks.spawn(async move {
                        let _guard = guard;
                        Box::pin(handle(tunnel)).await
                    });
                }
                Some(Err(why)) => {
                    crate::transport::datagram::warn_once(
                        &crate::transport::accept::UDP_REFUSED,
                        format_args!("{sid}: a client asked for a UDP tunnel; {why} (said once)"),
                    );
                    refuse(respond, why);
                }
                None => {
                    let (fallback, timeouts) = (self.fallback.clone(), self.timeouts);
                    let name = sid.to_string();
                    tasks.spawn(async move {
                        let _guard = guard;
                        not_a_tunnel(req, respond, fallback, timeouts, name, peer).await
                    });
                }
            }
        }
    }

    /// What a request is: a tunnel (its owner and what it carries), a tunnel refused (why),
    /// or (`None`) no tunnel at all.
    fn tunnel_of(&self, req: &Request<RecvStream>) -> Option<Result<(Option<O>, Kind), String>> {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/grpc"));
        if req.method() != http::Method::POST || !grpc {
            return None;
        }
        let service = self.calls.call(req.uri().path())?;
        let owner = match &self.services {
            PathMatch::Any => None,
            PathMatch::Exact(p) => (p == service).then_some(None)?,
            PathMatch::Route(r) => Some(r.route(service)?),
        };
        if !req.headers().contains_key(UDP_HEADER) {
            return Some(Ok((owner, Kind::Stream)));
        }
        if !self.udp {
            return Some(Err("this server runs without -udp".into()));
        }
        Some(Ok((owner, Kind::Datagrams)))
    }
}

/// Ends a call at once with gRPC's UNIMPLEMENTED and `why`.
fn refuse(mut respond: SendResponse<Bytes>, why: String) {
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("12"));
    if let Ok(v) = HeaderValue::from_str(&why) {
        h.insert("grpc-message", v);
    }
    let _ = respond.send_response(resp, true);
}

/// A request's body, as the fallback's HTTP client reads bodies (its window given back as it
/// is taken).
struct H2Body(RecvStream);

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let body = &mut self.0;
        match body.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        match body.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// Answers a request that is not a tunnel as the WebSocket front does (the fallback site's
/// response, or 404), over HTTP/2.
async fn not_a_tunnel(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    fallback: Option<HostPort>,
    timeouts: Timeouts,
    id: String,
    peer: Option<IpAddr>,
) {
    let (mut parts, body) = req.into_parts();
    // The site gets an HTTP/1.1 request: the authority becomes its Host.
    if let Some(a) = parts.uri.authority().cloned()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(http::header::HOST, v);
    }
    if let Some(pq) = parts.uri.path_and_query().cloned()
        && let Ok(uri) = http::Uri::try_from(pq.as_str())
    {
        parts.uri = uri;
    }
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, H2Body(body));
    let resp =
        crate::transport::fallback::respond(req, fallback.as_ref(), &timeouts, &id, peer).await;
    let (mut head, mut body) = resp.into_parts();
    // HTTP/2 has no connection-specific headers; the fallback stripped the hop-by-hop ones.
    head.version = http::Version::HTTP_2;
    let head = Response::from_parts(head, ());
    let Ok(mut send) = respond.send_response(head, body.is_end_stream()) else {
        return;
    };
    if body.is_end_stream() {
        return;
    }
    let wait = timeouts.fallback.max(Duration::from_secs(60));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout(wait, frame).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(_))) | Err(_) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let room = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(n)) if n > 0 => n,
                        Some(Ok(_)) => continue,
                        _ => return,
                    };
                    let chunk = data.split_to(room.min(data.len()));
                    if send.send_data(chunk, false).is_err() {
                        return;
                    }
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    let _ = send.send_trailers(strip(t));
                    return;
                }
            }
        }
    }
}

/// Trailers as HTTP/2 may carry them.
fn strip(mut t: HeaderMap) -> HeaderMap {
    for h in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
    ] {
        t.remove(h);
    }
    t
}
