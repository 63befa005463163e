//! What a WebSocket server answers to requests that are not tunnels: a plain 404 page, or the
//! `-fallback` site's own response, proxied on a new connection and streamed back, with the
//! hop-by-hop headers of RFC 9110 §7.6.1 removed both ways and the visitor's address added
//! (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`), so the site never takes a visitor for a
//! local one.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::options::Timeouts;
use super::tcp;
use crate::addr::HostPort;

/// A response of the front: a page of ours, or the fallback site's body.
pub type Body = Either<Full<Bytes>, Incoming>;

const NOT_FOUND_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title></head>\n<body>\n<h1>Not Found</h1>\n<p>The requested URL was not found on this server.</p>\n</body>\n</html>\n";
const GATEWAY_TIMEOUT_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>504 Gateway Time-out</title></head>\n<body>\n<h1>Gateway Time-out</h1>\n</body>\n</html>\n";
const BAD_GATEWAY_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body>\n</html>\n";

/// Answers a request that is not a tunnel: through `fallback` if there is one (504 when it
/// has not answered within `timeouts.fallback`), else 404.
pub async fn respond<B>(
    req: Request<B>,
    fallback: Option<&HostPort>,
    timeouts: &Timeouts,
    id: &str,
    peer: Option<IpAddr>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match fallback {
        Some(site) => {
            let wait = timeouts.fallback;
            match tokio::time::timeout(wait, proxy(req, site, timeouts.connect, peer)).await {
                Ok(Ok(mut resp)) => {
                    strip_hop_by_hop(resp.headers_mut());
                    resp.map(Either::Right)
                }
                Ok(Err(e)) => {
                    crate::rarely!(Warn, "{id}: fallback site {site}: {e}");
                    page(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE)
                }
                Err(_) => {
                    crate::rarely!(
                        Warn,
                        "{id}: fallback site {site}: no response within {wait:?} (-fallback-timeout); answered 504"
                    );
                    page(StatusCode::GATEWAY_TIMEOUT, GATEWAY_TIMEOUT_PAGE)
                }
            }
        }
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
async fn proxy<B>(
    mut req: Request<B>,
    site: &HostPort,
    connect: Duration,
    peer: Option<IpAddr>,
) -> io::Result<Response<Incoming>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    if let Some(ip) = peer {
        forwarded_for(h, ip);
    }
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

/// Headers that concern one connection only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Headers `Connection` may not name away: the site needs them to route the request and to
/// find its end.
const END_TO_END: [&str; 2] = ["host", "content-length"];

/// Removes the hop-by-hop headers, and every header `Connection` names (but [`END_TO_END`]).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !END_TO_END.contains(&t.as_str()))
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        h.remove(name);
    }
    h.remove("proxy-authenticate");
}

/// Adds the visitor's address: appended to `X-Forwarded-For` and `Forwarded` (what earlier
/// proxies said is kept, ours comes last, as a site that trusts only its last proxy reads it),
/// and `X-Real-IP` set to it.
fn forwarded_for(h: &mut HeaderMap, ip: IpAddr) {
    let append = |h: &mut HeaderMap, name: &'static str, value: String| {
        let joined = match h.get(name).and_then(|v| v.to_str().ok()) {
            Some(old) if !old.trim().is_empty() => format!("{old}, {value}"),
            _ => value,
        };
        if let Ok(v) = HeaderValue::from_str(&joined) {
            h.insert(name, v);
        }
    };
    append(h, "x-forwarded-for", ip.to_string());
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    append(h, "forwarded", format!("for={node}"));
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        h.insert("x-real-ip", v);
    }
}
