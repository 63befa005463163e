//! The client side of the WebSocket upgrade: the request, byte-exact with the original
//! client's, and the checks of the server's 101 response.

use std::io;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Role, WsStream};
use crate::transport::io::Io;

/// The GUID of RFC 6455 §1.3, hashed with the client's key into the accept key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest upgrade response head accepted by the client.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(GUID.as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64.encode(digest.as_ref())
}

/// The upgrade request the original mos-tls-tunnel client sends (gorilla/websocket 1.4.1):
/// same header order and spelling, so an original server, and anything that learned its
/// shape, sees the same bytes. `extra` headers (`-wss-header`) follow the handshake's own; a
/// `User-Agent` among them replaces the default one.
pub fn upgrade_request(
    host: &str,
    path: &str,
    key: &str,
    protocol: &str,
    extra: &[(String, String)],
) -> String {
    use std::fmt::Write;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let agent = extra
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
        .map_or("Go-http-client/1.1", |(_, v)| v.as_str());
    // No subprotocol (a Mux.Cool client's, as v2ray's send none): no header for it.
    let protocol = match protocol {
        "" => String::new(),
        p => format!("Sec-WebSocket-Protocol: {p}\r\n"),
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{protocol}Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
    );
    for (name, value) in extra {
        if !name.eq_ignore_ascii_case("user-agent") {
            let _ = write!(req, "{name}: {value}\r\n");
        }
    }
    req.push_str("\r\n");
    req
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> io::Result<String> {
    let mut raw = [0u8; 16];
    crate::random::fill(&mut raw)?;
    Ok(BASE64.encode(raw))
}

/// Runs the client side of the upgrade over `io`: sends the request, waits for 101 with the
/// right accept key, and returns the stream (with any bytes that followed the response).
///
/// `protocol` may list several subprotocols (`yamux2, yamux`); the one the server chose, if
/// any, is returned with the stream.
pub async fn client<S: Io>(
    mut io: S,
    host: &str,
    path: &str,
    protocol: &str,
    extra: &[(String, String)],
) -> io::Result<(WsStream<S>, Option<String>)> {
    let key = new_key()?;
    io.write_all(upgrade_request(host, path, &key, protocol, extra).as_bytes())
        .await?;
    io.flush().await?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the WebSocket upgrade response",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(bad_upgrade("response head larger than 16 KiB".into()));
            }
            Err(e) => return Err(bad_upgrade(format!("malformed HTTP response: {e}"))),
        };
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(bad_upgrade(format!(
                "server answered HTTP {code} {}",
                resp.reason.unwrap_or("")
            )));
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect::<Vec<_>>()
        };
        if !header("upgrade")
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case("websocket"))
        {
            return Err(bad_upgrade("101 without 'Upgrade: websocket'".into()));
        }
        if !has_token(&header("connection"), "upgrade") {
            return Err(bad_upgrade("101 without 'Connection: upgrade'".into()));
        }
        if header("sec-websocket-accept").first().map(|v| v.trim()) != Some(&accept_key(&key)) {
            return Err(bad_upgrade("wrong Sec-WebSocket-Accept".into()));
        }
        let chosen = header("sec-websocket-protocol")
            .first()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty());
        return Ok((WsStream::new(io, Role::Client, &head[len..]), chosen));
    }
}

fn bad_upgrade(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("WebSocket upgrade failed: {why}"),
    )
}

/// Whether comma-separated header values contain `token` (case-insensitive).
pub fn has_token(values: &[String], token: &str) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn request_matches_the_original_client_byte_for_byte() {
        let req = upgrade_request(
            "example.com",
            "/ws",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "smux_off",
            &[],
        );
        assert_eq!(
            req,
            "GET /ws HTTP/1.1\r\n\
             Host: example.com\r\n\
             User-Agent: Go-http-client/1.1\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: smux_off\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Upgrade: websocket\r\n\r\n"
        );
        assert!(upgrade_request("::1", "/", "k", "smux_off", &[]).contains("Host: [::1]\r\n"));
        let extra = [
            ("X-Token".to_string(), "abc".to_string()),
            ("User-Agent".to_string(), "curl/8".to_string()),
        ];
        let req = upgrade_request("cdn.example", "/", "k", "smux_off", &extra);
        assert!(req.contains("User-Agent: curl/8\r\n") && !req.contains("Go-http-client"));
        assert!(
            req.ends_with("Upgrade: websocket\r\nX-Token: abc\r\n\r\n"),
            "{req}"
        );
    }
}
