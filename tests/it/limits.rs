//! Per-user limits on a real `mtt mu-server` process with a users file: a quota crossed in
//! the middle of a transfer ends the tunnel and refuses the next (and survives a restart),
//! expiry, the connection cap (the N+1st refused while N flow; a multiplexed connection
//! counts once), the rate over 5 s, and the REST API's checks of limit fields.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use mtt::testing::transport::options::Verify;

pub const TOKEN: &str = "limits-token";
const T: Duration = Duration::from_secs(30);
/// How far past its quota one server lets a user go: what one relay buffer (256 KiB) in each
/// direction holds, counted before the check that ends the tunnel.
const OVERSHOOT: u64 = 2 * 256 * 1024;

pub struct Server {
    pub proc: Proc,
    pub data: SocketAddr,
    pub control: SocketAddr,
    pub pin: Verify,
    /// The pin as `-cert-sha256` takes it.
    pub pin_text: String,
}

/// A mu-server keeping its users in `file`.
async fn server(file: &Path) -> Server {
    server_with(Some(file), &[]).await
}

/// A mu-server, keeping its users in `file` if given, with `extra` flags.
pub async fn server_with(file: Option<&Path>, extra: &[&str]) -> Server {
    let file = file.map(path_str);
    let mut args = vec![
        "mu-server",
        "-b",
        "127.0.0.1:0",
        "-c",
        "127.0.0.1:0",
        "-n",
        "127.0.0.1",
        "-c-token",
        TOKEN,
    ];
    if let Some(f) = &file {
        args.extend(["-users-file", f.as_str()]);
    }
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&mtt_bin(), &args);
    let pin = proc.pin().await;
    let data = proc.listening_addr().await;
    let control = proc.addr_after("controller on ").await;
    Server {
        proc,
        data,
        control,
        pin: Verify::Pin(mtt::testing::config::parse_pin(&pin).expect("pin")),
        pin_text: pin,
    }
}

impl Server {
    pub async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        controller(self.control, method, path, body).await
    }

    /// `PUT /v1/users<path>` with `body`, which must be taken.
    pub async fn put(&self, path: &str, body: serde_json::Value) {
        let (code, text) = self
            .api("PUT", &format!("/v1/users{path}"), &body.to_string())
            .await;
        assert_eq!(code, 200, "{text}");
    }

    /// The user at `path` as `GET /v1/users` lists it.
    pub async fn user(&self, path: &str) -> serde_json::Value {
        user_at(self.control, path).await
    }

    pub async fn client(&self, path: &str, mux: bool) -> Running {
        let mut c = wss_client_config(self.data, self.pin.clone(), path, T);
        if mux {
            c.dial.mux = Some(mtt::testing::transport::options::MuxClientOptions {
                muxing: mtt::testing::transport::mux::Muxing::Yamux,
                max_streams: 16,
                idle: Duration::from_secs(10),
            });
        }
        start_client(c).await
    }
}

/// One request to a controller with the test token.
pub async fn controller(
    control: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let headers = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    http_request(control, method, path, &headers, body.as_bytes()).await
}

pub async fn user_at(control: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = controller(control, "GET", "/v1/users", "").await;
    assert_eq!(code, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("users JSON");
    list.into_iter()
        .find(|u| u["path"] == path)
        .unwrap_or_else(|| panic!("no user {path} in {body}"))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// A destination that reads everything: what it read, and how many connections ended.
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    pub ended: Arc<AtomicU64>,
}

pub async fn sink() -> Sink {
    let received = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (r, e) = (received.clone(), ended.clone());
    let addr = serve_dest(move |mut s| {
        let (r, e) = (r.clone(), e.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    e.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                r.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    })
    .await;
    Sink {
        addr,
        received,
        ended,
    }
}

impl Sink {
    /// What it received once `n` connections have ended.
    pub async fn after_ended(&self, n: u64) -> u64 {
        until(T, "the destination's connections end", || async {
            self.ended.load(Ordering::Relaxed) >= n
        })
        .await;
        self.received.load(Ordering::Relaxed)
    }
}

/// A destination that writes without end to whoever connects.
async fn source() -> SocketAddr {
    serve_dest(|mut s| async move {
        let chunk = vec![7u8; 64 * 1024];
        loop {
            s.write_all(&chunk).await?;
        }
    })
    .await
}

/// Writes up to `n` bytes into a tunnel through `client`; how many were taken before the
/// tunnel ended (all of them if it did not).
pub async fn push(client: SocketAddr, n: usize) -> usize {
    let mut s = TcpStream::connect(client).await.expect("connect");
    // Random bytes: a run of one value could read as a multiplexing protocol's first frame.
    let chunk = random_bytes(16 * 1024, n as u64);
    let mut sent = 0;
    while sent < n {
        let m = chunk.len().min(n - sent);
        if s.write_all(&chunk[..m]).await.is_err() {
            return sent;
        }
        sent += m;
    }
    let _ = s.shutdown().await;
    // Until the far end closes: the tunnel finished (or was ended).
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(T, s.read(&mut buf)).await;
    sent
}

#[tokio::test]
async fn a_quota_crossed_mid_transfer_ends_the_tunnel_refuses_the_next_and_outlives_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        let mut s = server(&file).await;
        let sink = sink().await;
        let dst = sink.addr;
        let quota: u64 = 3 << 20;
        s.put(
            "/q",
            serde_json::json!({"dst": dst.to_string(), "quota": quota, "reset": "monthly"}),
        )
        .await;
        let c = s.client("/q", false).await;
        // 16 MiB offered; the tunnel ends once the quota is used.
        push(c.addr, 16 << 20).await;
        let got = sink.after_ended(1).await;
        eprintln!("the destination got {got} bytes for a quota of {quota}");
        assert!(
            got >= quota && got <= quota + OVERSHOOT,
            "destination got {got}, quota {quota}"
        );
        let u = s.user("/q").await;
        assert_eq!(u["state"], "over_quota", "{u}");
        assert_eq!(u["quota_remaining"], 0, "{u}");
        assert!(
            u["resets_at"].as_u64().expect("resets_at") > unix_now(),
            "{u}"
        );
        // The next tunnel is refused: closed before any byte reaches the destination.
        closed_promptly(c.addr).await;
        assert_eq!(sink.received.load(Ordering::Relaxed), got);
        let metrics = s.api("GET", "/metrics", "").await.1;
        assert!(
            sample_of(&metrics, r#"mtt_user_refusals_total{reason="over_quota"}"#) >= 1,
            "{metrics}"
        );
        let label = mtt::testing::role::controller::user_id("/q");
        assert_eq!(
            sample_of(
                &metrics,
                &format!(r#"mtt_user_quota_remaining_bytes{{user="{label}"}}"#)
            ),
            0
        );
        assert_eq!(
            sample_of(
                &metrics,
                &format!(r#"mtt_user_state{{user="{label}",state="over_quota"}}"#)
            ),
            1
        );
        // The count is kept beside the users file at a stop, and read at the next start.
        s.proc.signal("TERM");
        s.proc.exit().await;
        assert!(dir.path().join("users.json.usage").exists());
        let s = server(&file).await;
        let u = s.user("/q").await;
        assert_eq!(u["state"], "over_quota", "after a restart: {u}");
        assert_eq!(u["quota"], quota, "{u}");
        let c = s.client("/q", false).await;
        closed_promptly(c.addr).await;
        // A raised quota lets it through again.
        s.put(
            "/q",
            serde_json::json!({"dst": dst.to_string(), "quota": 64u64 << 20}),
        )
        .await;
        assert_eq!(push(c.addr, 1 << 20).await, 1 << 20);
        assert_eq!(sink.after_ended(2).await, got + (1 << 20));
    })
    .await;
}

/// A reset time starts the quota's count again: over quota before it, active from it.
#[tokio::test]
async fn a_reset_time_starts_the_count_again() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let s = server(&dir.path().join("users.json")).await;
        let sink = sink().await;
        let at = unix_now() + 3;
        let body =
            serde_json::json!({"dst": sink.addr.to_string(), "quota": 1 << 20, "reset_at": at});
        s.put("/r", body).await;
        let c = s.client("/r", false).await;
        push(c.addr, 8 << 20).await;
        sink.after_ended(1).await;
        let u = s.user("/r").await;
        assert_eq!(
            (&u["state"], &u["resets_at"]),
            (&"over_quota".into(), &at.into()),
            "{u}"
        );
        until(T, "active again", || async {
            s.user("/r").await["state"] == "active"
        })
        .await;
        assert!(unix_now() >= at, "active before the reset time");
        assert_eq!(push(c.addr, 512 << 10).await, 512 << 10);
        let got = sink.after_ended(2).await;
        assert!(got >= (1 << 20) + (512 << 10), "{got}");
    })
    .await;
}

/// UDP through a user's tunnels counts too (datagrams with their framing): a quota ends the
/// association, and the next one is refused.
#[tokio::test]
async fn datagrams_count_towards_the_quota_and_end_the_association() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let s = server_with(Some(&dir.path().join("users.json")), &["-udp"]).await;
        let echo = crate::udp::udp_echo().await;
        let quota = 20_000u64;
        s.put(
            "/u",
            serde_json::json!({"dst": echo.to_string(), "quota_up": quota}),
        )
        .await;
        let server = s.data.to_string();
        let args = ["-wss", "-wss-path", "/u", "-udp"];
        let mut client = Proc::client(&server, &s.pin_text, &args);
        let caddr = client.listening_addr().await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dgram = random_bytes(1000, 9);
        let mut buf = vec![0u8; 2048];
        let mut echoed = 0u64;
        for _ in 0..60 {
            sock.send_to(&dgram, caddr).await.expect("send");
            match tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if buf[..n] == dgram[..] => echoed += 1,
                _ => break,
            }
        }
        // Each datagram counts its 1,000 bytes and a few of framing.
        assert!(
            (15..=20).contains(&echoed),
            "{echoed} datagrams echoed under a {quota}-byte quota"
        );
        let u = s.user("/u").await;
        assert_eq!(u["state"], "over_quota", "{u}");
        let up = u["bytes_up"].as_u64().expect("bytes_up");
        assert!(up >= echoed * 1000 && up >= quota, "{u}");
        // A new association is refused too.
        sock.send_to(&dgram, caddr).await.expect("send");
        let again = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        assert!(again.is_err(), "a datagram came back after the quota");
        client.signal("TERM");
        client.exit().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_user_is_refused_and_its_open_tunnels_end() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let s = server(&dir.path().join("users.json")).await;
        let echo = echo_server().await;
        let expires = unix_now() + 3;
        s.put(
            "/e",
            serde_json::json!({"dst": echo.to_string(), "expires": expires}),
        )
        .await;
        let c = s.client("/e", false).await;
        // A tunnel opened before the expiry ends after it, within the second's check.
        let mut open = TcpStream::connect(c.addr).await.expect("connect");
        open.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.expect("echo");
        let (n, _) = drain(&mut open).await;
        assert_eq!(n, 0);
        let ended = unix_now();
        assert!(
            ended >= expires && ended <= expires + 2,
            "ended at {ended}, expiry {expires}"
        );
        assert_eq!(s.user("/e").await["state"], "expired");
        closed_promptly(c.addr).await;
        let metrics = s.api("GET", "/metrics", "").await.1;
        assert!(sample_of(&metrics, r#"mtt_user_refusals_total{reason="expired"}"#) >= 1);
        // An expiry moved on makes it active again.
        s.put(
            "/e",
            serde_json::json!({"dst": echo.to_string(), "expires": unix_now() + 3600}),
        )
        .await;
        assert!(tunnel_works(c.addr).await);
        assert_eq!(s.user("/e").await["state"], "active");
    })
    .await;
}

#[tokio::test]
async fn the_connection_cap_refuses_the_next_while_the_first_flow() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let s = server(&dir.path().join("users.json")).await;
        let echo = echo_server().await;
        s.put(
            "/c",
            serde_json::json!({"dst": echo.to_string(), "max_connections": 2}),
        )
        .await;
        let c = s.client("/c", false).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut t = TcpStream::connect(c.addr).await.expect("connect");
            t.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            t.read_exact(&mut buf).await.expect("echo");
            held.push(t);
        }
        assert_eq!(s.user("/c").await["open_connections"], 2);
        // The third is refused while both flow, and they go on flowing.
        closed_promptly(c.addr).await;
        for t in &mut held {
            t.write_all(b"more").await.expect("write");
            let mut buf = [0u8; 4];
            t.read_exact(&mut buf).await.expect("still echoing");
        }
        let metrics = s.api("GET", "/metrics", "").await.1;
        assert!(
            sample_of(
                &metrics,
                r#"mtt_user_refusals_total{reason="max_connections"}"#
            ) >= 1
        );
        // One ends: a seat is free again.
        drop(held.pop());
        until(T, "a seat is free", || async {
            s.user("/c").await["open_connections"] == 1
        })
        .await;
        assert!(tunnel_works(c.addr).await);
        // A multiplexed connection counts once, however many streams it carries.
        s.put(
            "/m",
            serde_json::json!({"dst": echo.to_string(), "max_connections": 1}),
        )
        .await;
        let m = s.client("/m", true).await;
        let streams: Vec<_> = (0..6).map(|_| tokio::spawn(tunnel_works(m.addr))).collect();
        for t in streams {
            assert!(t.await.expect("stream"));
        }
        assert_eq!(s.user("/m").await["open_connections"], 1);
    })
    .await;
}

/// A tunnel through `client` from a source destination, once its first bytes have arrived.
async fn flowing(client: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(client).await.expect("connect");
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).await.expect("first bytes");
    s
}

/// Bytes `s` receives from `from` until `end`; what arrives before `from` (a backlog
/// left while the stream was not read) is read and not counted.
async fn receive_between(mut s: TcpStream, from: Instant, end: Instant) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(Ok(n)) = tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        if Instant::now() >= from {
            total += n as u64;
        }
    }
    total
}

#[tokio::test]
async fn the_rate_holds_within_ten_percent_over_five_seconds_across_tunnels() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let s = server(&dir.path().join("users.json")).await;
        let src = source().await;
        let rate: u64 = 2 << 20;
        s.put(
            "/r",
            serde_json::json!({"dst": src.to_string(), "rate": rate}),
        )
        .await;
        let c = s.client("/r", false).await;
        // Two tunnels share the user's one bucket.
        let secs = Duration::from_secs(5);
        // One window for both, opened once both flow and what waited unread is drained: a
        // tunnel set up late (a busy machine) would otherwise count seconds the other did not.
        let (a, b) = tokio::join!(flowing(c.addr), flowing(c.addr));
        let from = Instant::now() + Duration::from_millis(200);
        let end = from + secs;
        let a = tokio::spawn(receive_between(a, from, end));
        let b = tokio::spawn(receive_between(b, from, end));
        let total = a.await.expect("a") + b.await.expect("b");
        let expected = rate * 5;
        let off = total.abs_diff(expected) as f64 / expected as f64;
        assert!(
            off <= 0.10,
            "{total} bytes in 5 s at {rate} B/s: {:.1}% off",
            off * 100.0
        );
    })
    .await;
}

#[tokio::test]
async fn limit_fields_are_checked_kept_and_the_compatible_api_leaves_them() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        let s = server(&file).await;
        for (body, says) in [
            (r#"{"dst":"127.0.0.1:1","qouta":5}"#, "unknown field 'qouta'"),
            (r#"{"dst":"127.0.0.1:1","rate":0}"#, "rate 0"),
            (r#"{"dst":"127.0.0.1:1","reset":"hourly","quota":1}"#, "reset is"),
            (r#"{"dst":"127.0.0.1:1","reset":"daily"}"#, "reset without a quota"),
            (r#"{"dst":"127.0.0.1:1","max_connections":-1}"#, "max_connections"),
        ] {
            let (code, text) = s.api("PUT", "/v1/users/x", body).await;
            assert_eq!(code, 400, "{body}: {text}");
            assert!(text.contains(says), "{body}: {text}");
        }
        s.put("/x", serde_json::json!({"dst":"127.0.0.1:1","quota_down":1000,"reset":86400,"rate":5000}))
            .await;
        // The original's add replaces the destination and keeps the limits.
        let (_, text) = s
            .api("POST", "/", r#"{"opt":1,"args_bunch":[{"path":"/x","dst":"127.0.0.1:2"}]}"#)
            .await;
        assert_eq!(text, r#"{"res":1}"#);
        let u = s.user("/x").await;
        assert_eq!((u["dst"].as_str(), &u["quota_down"], &u["reset"], &u["rate"]), (Some("127.0.0.1:2"), &1000.into(), &86400.into(), &5000.into()), "{u}");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("users file")).expect("JSON");
        assert_eq!(
            saved,
            serde_json::json!([{"path":"/x","dst":"127.0.0.1:2","quota_down":1000,"reset":86400,"rate":5000}])
        );
        // A PUT gives the whole entry: limits left out are gone.
        s.put("/x", serde_json::json!({"dst":"127.0.0.1:2"})).await;
        let u = s.user("/x").await;
        assert!(u.get("rate").is_none() && u.get("quota_down").is_none(), "{u}");
    })
    .await;
}

#[tokio::test]
async fn a_users_file_with_a_misspelt_limit_is_refused_at_start_naming_it() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        std::fs::write(&file, r#"[{"path":"/a","dst":"127.0.0.1:1","expire":5}]"#).expect("write");
        let mut p = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-users-file",
                &path_str(&file),
                "-c-token",
                TOKEN,
            ],
        );
        let line = p.wait_line("unknown field").await;
        assert!(
            line.contains("'expire'") && line.contains("expires"),
            "{line}"
        );
        assert_eq!(p.exit().await.code(), Some(2));
    })
    .await;
}
