//! The controller's dashboard: one page and its scripts, embedded in the binary (uPlot 1.6.32
//! vendored under `dashboard/vendor/`), served without the token (they hold no data; the page
//! asks for the token and sends it with each API request) under a strict Content Security
//! Policy: nothing loads or connects but this origin, no inline script or style, no framing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// The policy every dashboard response carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's files: path, content type, bytes.
const FILES: [(&str, &str, &[u8]); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("dashboard/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/app.js"),
    ),
    (
        "/ui/app.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/app.css"),
    ),
    (
        "/ui/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.min.css"),
    ),
];

/// The dashboard's file at `path`, if it is one.
pub fn file(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, kind, bytes) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(Full::new(Bytes::from_static(bytes)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    secure(h);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

/// The headers that keep a page (and the API's answers) to itself.
pub fn secure(h: &mut hyper::HeaderMap) {
    h.insert("Content-Security-Policy", HeaderValue::from_static(CSP));
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("Referrer-Policy", HeaderValue::from_static("no-referrer"));
    h.insert("X-Frame-Options", HeaderValue::from_static("DENY"));
    h.insert(
        "Cross-Origin-Resource-Policy",
        HeaderValue::from_static("same-origin"),
    );
}
