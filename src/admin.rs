//! The admin HTTP endpoint: one plain-HTTP/1.1 serving loop (on the same accept loop as the
//! tunnels, so it drains and backs off alike) for the mu-server's controller and the
//! `-metrics` endpoint, and the `/metrics` page itself.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::transport::options::DEFAULT_TIMEOUTS;
use crate::transport::serve::{Limits, accept_loop};
use crate::transport::{Listener, Stream};

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Admin requests are short: at shutdown, those under way get this long to finish.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves plain HTTP/1.1 on `listener` until `shutdown`, answering every request with
/// `respond`, with the handshake timeout for request heads. `what` names it in logs.
pub async fn serve_plain<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    respond: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let limits = Limits {
        drain: DRAIN,
        max_conns: 0,
    };
    accept_loop(
        Listener::from(listener),
        shutdown,
        limits,
        move |conn: Stream, id, _tasks| {
            let respond = respond.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let respond = respond.clone();
                    async move { Ok::<_, Infallible>(respond(req).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(DEFAULT_TIMEOUTS.handshake)
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
                if let Err(e) = served {
                    log::debug!("{what} {id}: {e}");
                }
            }
        },
    )
    .await;
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(listener: TcpListener, shutdown: CancellationToken) {
    serve_plain(listener, shutdown, "metrics", |req| async move {
        if req.uri().path() == "/metrics" {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::get().render())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    })
    .await;
}
