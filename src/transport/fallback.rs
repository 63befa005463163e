//! What a WebSocket server answers to requests that are not tunnels: a plain 404 page, or the
//! `-fallback` site's own response, proxied on a new connection and streamed back.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::tcp;
use crate::addr::HostPort;

/// A response of the front: a page of ours, or the fallback site's body.
pub type Body = Either<Full<Bytes>, Incoming>;

const NOT_FOUND_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title></head>\n<body>\n<h1>Not Found</h1>\n<p>The requested URL was not found on this server.</p>\n</body>\n</html>\n";
const BAD_GATEWAY_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body>\n</html>\n";

/// Answers a request that is not a tunnel: through `fallback` if there is one, else 404.
pub async fn respond(
    req: Request<Incoming>,
    fallback: Option<&HostPort>,
    connect: Duration,
    id: &str,
) -> Response<Body> {
    match fallback {
        Some(site) => match proxy(req, site, connect).await {
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

/// An HTML page with `status`.
pub fn page(status: StatusCode, html: &'static str) -> Response<Body> {
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
async fn proxy(
    req: Request<Incoming>,
    site: &HostPort,
    connect: Duration,
) -> io::Result<Response<Incoming>> {
    let tcp = tcp::connect(site, connect).await?;
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
