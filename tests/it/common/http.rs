//! Plain HTTP from tests: one request, a message head, and the metrics endpoint.

use super::*;

/// One HTTP/1.1 request over plain HTTP, `headers` as lines each ending in CRLF; returns
/// (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(&raw).expect("HTTP response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response: {}", String::from_utf8_lossy(&raw)),
    };
    (
        resp.code.unwrap_or(0),
        String::from_utf8_lossy(&raw[len..]).into_owned(),
    )
}

/// Reads an HTTP message head, byte by byte (nothing after it is taken), through its blank
/// line: what came, with the error if the stream failed or ended first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if let Err(e) = s.read_exact(&mut b).await {
            return (head, Err(e));
        }
        head.push(b[0]);
    }
    (head, Ok(()))
}

/// GET /metrics over plain HTTP.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Scrapes `/metrics` at `addr` until `ok` holds of the text (every 20 ms, for at most
/// `within`; `what` says in the failure what was awaited); returns that text.
pub async fn scrape_until(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}, not within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of sample `name` (with its labels, as printed) in OpenMetrics `text`; 0 when
/// it is not there.
pub fn sample_of(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
