//! The multi-user server: the original's controller API byte for byte, the REST API, tokens,
//! tunnels routed per user (plain and multiplexed), removal with and without kick, 404s, and
//! the users file surviving kill -9.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::config::{Listen, MuServerConfig};
use mtt::testing::role::mu_server::MuServer;
use mtt::testing::transport::Listener;
use mtt::testing::transport::options::Verify;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);

/// The controller token of these tests; [`http`] sends it unless told otherwise.
const TEST_TOKEN: &str = "test-token";

struct Mu {
    data: SocketAddr,
    control: SocketAddr,
    pin: Verify,
}

fn mu_config(token: Option<&str>, users_file: Option<std::path::PathBuf>) -> MuServerConfig {
    MuServerConfig {
        listen: Listen::Tcp(hp("127.0.0.1:0")),
        controller: hp("127.0.0.1:0"),
        token: Some(token.unwrap_or(TEST_TOKEN).to_string()),
        token_file: std::path::PathBuf::from("unused.token"),
        users_file,
        users_redis: None,
        trusted: Default::default(),
        proxy_protocol: false,
        tls: Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        fallback: None,
        early_data: true,
        mux: false,
        grpc: false,
        timeouts: mtt::testing::transport::options::DEFAULT_TIMEOUTS,
        udp: false,
        udp_timeout: T,
        fast_open: false,
        fwmark: None,
        drain: T,
        max_conns: 0,
        timeout: T,
    }
}

async fn start_mu(cfg: MuServerConfig) -> Mu {
    let server = MuServer::start(cfg).await.expect("mu-server");
    let pin = Verify::Pin(
        mtt::testing::config::parse_pin(&server.fingerprint().expect("fp")).expect("pin"),
    );
    let data = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let control = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (d, c) = (
        data.local_addr().expect("a"),
        control.local_addr().expect("a"),
    );
    tokio::spawn(server.run(
        Listener::from(data),
        control,
        tokio_util::sync::CancellationToken::new(),
    ));
    Mu {
        data: d,
        control: c,
        pin,
    }
}

/// One HTTP/1.1 request to the controller, with the test token unless `headers` carry an
/// Authorization of their own; returns (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String) {
    let headers = if headers.to_ascii_lowercase().contains("authorization:") {
        headers.to_string()
    } else {
        format!("Authorization: Bearer {TEST_TOKEN}\r\n{headers}")
    };
    http_request(addr, method, path, &headers, body).await
}

async fn post(mu: &Mu, json: &str) -> (u16, String) {
    http(mu.control, "POST", "/", "", json.as_bytes()).await
}

fn user_client(mu: &Mu, path: &str, mux: bool) -> mtt::testing::config::ClientConfig {
    let mut c = wss_client_config(mu.data, mu.pin.clone(), path, T);
    if mux {
        c.dial.mux = Some(mtt::testing::transport::options::MuxClientOptions {
            muxing: mtt::testing::transport::mux::Muxing::Yamux,
            max_streams: 4,
            idle: Duration::from_secs(10),
        });
    }
    c
}

#[tokio::test]
async fn compatible_api_answers_byte_for_byte() {
    bounded(async {
        let mu = start_mu(mu_config(None, None)).await;
        let add = r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1001"},{"path":"/b","dst":"127.0.0.1:1002"}]}"#;
        assert_eq!(post(&mu, add).await, (200, r#"{"res":1}"#.into()));
        assert_eq!(post(&mu, r#"{"opt":9}"#).await, (200, r#"{"res":1,"current_users":2}"#.into()));
        assert_eq!(
            post(&mu, r#"{"opt":2,"args_bunch":[{"path":"/a"},{"path":"/unknown"}]}"#).await,
            (200, r#"{"res":1}"#.into())
        );
        assert_eq!(post(&mu, r#"{"opt":1}"#).await, (200, r#"{"res":2,"err_string":"empty args"}"#.into()));
        assert_eq!(post(&mu, r#"{"opt":2,"args_bunch":[]}"#).await, (200, r#"{"res":2,"err_string":"empty args"}"#.into()));
        assert_eq!(post(&mu, r#"{"opt":7}"#).await, (200, r#"{"res":2,"err_string":"invalid opt"}"#.into()));
        assert_eq!(post(&mu, r#"{}"#).await, (200, r#"{"res":2,"err_string":"invalid opt"}"#.into()));
        assert_eq!(post(&mu, r#"{"opt":3}"#).await, (200, r#"{"res":1}"#.into()));
        // Zero users: the field is omitted, as a restarted original answers.
        assert_eq!(post(&mu, r#"{"opt":9}"#).await, (200, r#"{"res":1}"#.into()));
        // Bad input: JSON errors with real statuses, and nothing changes.
        for (body, status) in [("{not json", 400), (r#"{"opt":"1"}"#, 400), (r#"{"opt":1,"args_bunch":{}}"#, 400)] {
            let (code, text) = post(&mu, body).await;
            assert_eq!(code, status, "{body}");
            assert!(text.starts_with(r#"{"res":2,"err_string":"#), "{text}");
        }
        let (code, text) = http(mu.control, "GET", "/nope", "", b"").await;
        assert_eq!((code, text.as_str()), (405, r#"{"res":2,"err_string":"use POST"}"#));
        // GET / is the dashboard's page, not the command API.
        let (code, text) = http(mu.control, "GET", "/", "", b"").await;
        assert_eq!(code, 200);
        assert!(text.starts_with("<!doctype html>"), "{text}");
        let huge = vec![b' '; 2 * 1024 * 1024 + 1];
        assert_eq!(http(mu.control, "POST", "/", "", &huge).await.0, 413);
        for bad in [
            r#"{"opt":1,"args_bunch":[{"path":"nos lash","dst":"127.0.0.1:1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/ok","dst":"nope"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/ok","dst":"127.0.0.1:1"},{"path":"/x","dst":"h:99999"}]}"#,
        ] {
            let (code, text) = post(&mu, bad).await;
            assert_eq!(code, 200);
            assert!(text.starts_with(r#"{"res":2,"err_string":"#), "{text}");
        }
        assert_eq!(post(&mu, r#"{"opt":9}"#).await.1, r#"{"res":1}"#, "a rejected batch adds nobody");
        // A thousand users in one request.
        let many: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"path":"/u{i}","dst":"127.0.0.1:{}"}}"#, 2000 + i))
            .collect();
        let req = format!(r#"{{"opt":1,"args_bunch":[{}]}}"#, many.join(","));
        assert_eq!(post(&mu, &req).await.1, r#"{"res":1}"#);
        assert_eq!(post(&mu, r#"{"opt":9}"#).await.1, r#"{"res":1,"current_users":1000}"#);
    })
    .await;
}

#[tokio::test]
async fn rest_api_metrics_and_concurrent_writes() {
    bounded(async {
        let mu = start_mu(mu_config(None, None)).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let control = mu.control;
            tasks.push(tokio::spawn(async move {
                let body = format!(r#"{{"dst":"127.0.0.1:{}"}}"#, 3000 + i);
                http(
                    control,
                    "PUT",
                    &format!("/v1/users/p{i}"),
                    "",
                    body.as_bytes(),
                )
                .await
            }));
        }
        for t in tasks {
            let (code, text) = t.await.expect("put");
            assert_eq!(code, 200, "{text}");
        }
        let (code, list) = http(mu.control, "GET", "/v1/users", "", b"").await;
        assert_eq!(code, 200);
        let users: serde_json::Value = serde_json::from_str(&list).expect("json");
        assert_eq!(users.as_array().expect("array").len(), 20);
        assert_eq!(users[0]["path"], "/p0");
        assert_eq!(users[0]["connections"], 0);
        assert_eq!(
            http(mu.control, "PUT", "/v1/users/x", "", b"{\"dst\":\"bad\"}")
                .await
                .0,
            400
        );
        assert_eq!(
            http(mu.control, "PUT", "/v1/users/x", "", b"not json")
                .await
                .0,
            400
        );
        assert_eq!(
            http(mu.control, "DELETE", "/v1/users/p3", "", b"").await.0,
            200
        );
        assert_eq!(
            http(mu.control, "DELETE", "/v1/users/p3", "", b"").await.0,
            404
        );
        let (code, status) = http(mu.control, "GET", "/v1/status", "", b"").await;
        assert_eq!(code, 200);
        assert!(status.contains("\"users\":19"), "{status}");
        let (code, metrics) = http(mu.control, "GET", "/metrics", "", b"").await;
        assert_eq!(code, 200);
        assert!(metrics.contains("mtt_users 19\n"), "{metrics}");
        // Labelled by a hash of the path, which is the user's credential.
        let p0 = mtt::testing::role::controller::user_id("/p0");
        assert!(
            metrics.contains(&format!("mtt_user_bytes_up_total{{user=\"{p0}\"}} 0\n")),
            "{metrics}"
        );
        assert!(!metrics.contains("/p0"), "no path in the metrics");
        assert_eq!(http(mu.control, "GET", "/v1/nothing", "", b"").await.0, 404);
    })
    .await;
}

#[tokio::test]
async fn tokens_guard_every_endpoint() {
    bounded(async {
        let mu = start_mu(mu_config(Some("s3cret"), None)).await;
        let add = r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1"}]}"#;
        for headers in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: s3cret\r\n",
        ] {
            assert_eq!(
                http(mu.control, "POST", "/", headers, add.as_bytes())
                    .await
                    .0,
                401
            );
            assert_eq!(
                http(mu.control, "GET", "/v1/users", headers, b"").await.0,
                401
            );
        }
        let auth = "Authorization: Bearer s3cret\r\n";
        let (_, ping) = http(mu.control, "POST", "/", auth, br#"{"opt":9}"#).await;
        assert_eq!(ping, r#"{"res":1}"#, "nothing was added without the token");
        assert_eq!(
            http(mu.control, "POST", "/", auth, add.as_bytes()).await.1,
            r#"{"res":1}"#
        );
    })
    .await;
}

#[tokio::test]
async fn users_are_routed_removed_and_kicked() {
    bounded(async {
        let echo = echo_server().await;
        let replier = reply_after_eof_server().await;
        let mu = start_mu(mu_config(None, None)).await;
        let add = format!(
            r#"{{"opt":1,"args_bunch":[{{"path":"/echo","dst":"{echo}"}},{{"path":"/hash","dst":"{replier}"}},{{"path":"/kick","dst":"{echo}"}},{{"path":"/mux","dst":"{echo}"}}]}}"#
        );
        assert_eq!(post(&mu, &add).await.1, r#"{"res":1}"#);
        let echo_client = start_client(user_client(&mu, "/echo", false)).await;
        let hash_client = start_client(user_client(&mu, "/hash", false)).await;
        let mux_client = start_client(user_client(&mu, "/mux", true)).await;
        let mut tasks = Vec::new();
        for i in 0..6u64 {
            let (e, m) = (echo_client.addr, mux_client.addr);
            tasks.push(tokio::spawn(async move { echo_roundtrip(e, &random_bytes(512 * 1024, i)).await }));
            tasks.push(tokio::spawn(async move { echo_roundtrip(m, &random_bytes(256 * 1024, 50 + i)).await }));
        }
        // Each user reaches its own destination: this one answers a hash after EOF.
        let data = random_bytes(300 * 1024, 9);
        let mut s = TcpStream::connect(hash_client.addr).await.expect("connect");
        s.write_all(&data).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("reply");
        assert_eq!(reply, sha256(&data));
        for t in tasks {
            t.await.expect("transfer");
        }
        // The /hash tunnel's bytes are counted once its relay has finished.
        let counted = serde_json::json!({
            "bytes_down": 32, "bytes_up": data.len(), "clients": [], "connections": 0,
            "dst": replier.to_string(), "path": "/hash", "state": "active", "open_connections": 0,
            "user": mtt::testing::role::controller::user_id("/hash"),
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, users) = http(mu.control, "GET", "/v1/users", "", b"").await;
            let list: Vec<serde_json::Value> = serde_json::from_str(&users).expect("JSON");
            if list.contains(&counted) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "bytes not counted: {users}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Removal without kick: a live tunnel goes on, new ones are refused.
        let mut live = TcpStream::connect(echo_client.addr).await.expect("connect");
        live.write_all(b"ping").await.expect("w");
        let mut b = [0u8; 4];
        live.read_exact(&mut b).await.expect("echo");
        assert_eq!(post(&mu, r#"{"opt":2,"args_bunch":[{"path":"/echo"}]}"#).await.1, r#"{"res":1}"#);
        live.write_all(b"pong").await.expect("w");
        live.read_exact(&mut b).await.expect("the live tunnel survives removal");
        assert_eq!(&b, b"pong");
        closed_promptly(echo_client.addr).await;
        // A kick of the removed path still ends its live tunnel (the compatible API's
        // removal does not kick); a path that never was, or whose tunnels are gone, is 404.
        let start = std::time::Instant::now();
        assert_eq!(http(mu.control, "DELETE", "/v1/users/echo?kick=true", "", b"").await.0, 200);
        drain(&mut live).await;
        assert!(start.elapsed() < Duration::from_secs(2), "kick took {:?}", start.elapsed());
        assert_eq!(http(mu.control, "DELETE", "/v1/users/echo?kick=true", "", b"").await.0, 404);
        assert_eq!(http(mu.control, "DELETE", "/v1/users/never?kick=true", "", b"").await.0, 404);
        // Removal with kick: the live tunnel is closed at once.
        let kick_client = start_client(user_client(&mu, "/kick", false)).await;
        let mut kicked = TcpStream::connect(kick_client.addr).await.expect("connect");
        kicked.write_all(b"ping").await.expect("w");
        kicked.read_exact(&mut b).await.expect("echo");
        assert_eq!(http(mu.control, "DELETE", "/v1/users/kick?kick=true", "", b"").await.0, 200);
        let start = std::time::Instant::now();
        drain(&mut kicked).await;
        assert!(start.elapsed() < Duration::from_secs(2), "kick took {:?}", start.elapsed());
        // A removed multiplexing user's session opens no new streams.
        assert_eq!(http(mu.control, "DELETE", "/v1/users/mux", "", b"").await.0, 200);
        closed_promptly(mux_client.addr).await;
        // Unknown paths are an ordinary 404.
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "-m", "10", "-w", "\n%{http_code}", &format!("https://127.0.0.1:{}/nobody", mu.data.port())])
            .bounded_output().await;
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n404"));
    })
    .await;
}

/// kill -9 right after acknowledged changes: the restarted server has every user.
#[tokio::test]
async fn the_users_file_survives_kill_9() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        let echo = echo_server().await;
        let args = [
            "mu-server",
            "-b",
            "127.0.0.1:0",
            "-c",
            "127.0.0.1:0",
            "-users-file",
            &path_str(&file),
            "-n",
            "127.0.0.1",
            "-c-token",
            TEST_TOKEN,
            "-verbose",
        ];
        let mut p = Proc::spawn(&mtt_bin(), &args);
        let pin = p.pin().await;
        let control = p.addr_after("controller on ").await;
        for i in 0..50 {
            let body = format!(r#"{{"opt":1,"args_bunch":[{{"path":"/k{i}","dst":"{echo}"}}]}}"#);
            assert_eq!(
                http(control, "POST", "/", "", body.as_bytes()).await.1,
                r#"{"res":1}"#
            );
        }
        assert_eq!(
            http(control, "DELETE", "/v1/users/k7", "", b"").await.0,
            200
        );
        p.signal("KILL");
        p.exit().await;
        let mut p = Proc::spawn(&mtt_bin(), &args);
        let control = p.addr_after("controller on ").await;
        let data = p.listening_addr().await;
        assert_eq!(
            http(control, "POST", "/", "", br#"{"opt":9}"#).await.1,
            r#"{"res":1,"current_users":49}"#
        );
        // A restart makes a new self-signed certificate.
        let restarted_pin = p.pin().await;
        assert_ne!(restarted_pin, pin);
        let pin = restarted_pin;
        let mu = Mu {
            data,
            control,
            pin: Verify::Pin(mtt::testing::config::parse_pin(&pin).expect("pin")),
        };
        let client = start_client(user_client(&mu, "/k42", false)).await;
        echo_roundtrip(client.addr, &random_bytes(128 * 1024, 1)).await;
        closed_promptly(start_client(user_client(&mu, "/k7", false)).await.addr).await;
    })
    .await;
}

/// Off loopback the controller needs a token: refused without one, and
/// MTT_CONTROLLER_TOKEN provides it.
#[tokio::test]
async fn an_exposed_controller_requires_a_token() {
    bounded(async {
        let out = tokio::process::Command::new(mtt_bin())
            .args(["mu-server", "-b", "127.0.0.1:0", "-c", "0.0.0.0:0"])
            .env_remove("MTT_CONTROLLER_TOKEN")
            .bounded_output()
            .await;
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("-c-token") && err.trim_end().lines().count() == 1,
            "{err}"
        );

        // The token comes from the environment (of this child only).
        let mut p = Proc::spawn_env(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "0.0.0.0:0",
                "-verbose",
            ],
            &[("MTT_CONTROLLER_TOKEN", "from-env")],
        );
        let bound = p.addr_after("controller on ").await;
        let control = SocketAddr::from(([127, 0, 0, 1], bound.port()));
        assert_eq!(http(control, "POST", "/", "", br#"{"opt":9}"#).await.0, 401);
        let auth = "Authorization: Bearer from-env\r\n";
        assert_eq!(
            http(control, "POST", "/", auth, br#"{"opt":9}"#).await,
            (200, r#"{"res":1}"#.into())
        );
    })
    .await;
}

/// With -fallback, paths nobody owns are the real site's (nginx from Debian here).
#[tokio::test]
async fn unknown_paths_go_to_the_fallback_site() {
    bounded(async {
        let (_nginx, web_port) = Nginx::static_site(
            "<h1>the real site</h1>
",
        )
        .await;
        let mut cfg = mu_config(None, None);
        cfg.fallback = Some(hp(format!("127.0.0.1:{web_port}")));
        let mu = start_mu(cfg).await;
        let echo = echo_server().await;
        let add = format!(r#"{{"opt":1,"args_bunch":[{{"path":"/u","dst":"{echo}"}}]}}"#);
        assert_eq!(post(&mu, &add).await.1, r#"{"res":1}"#);
        let out = tokio::process::Command::new("curl")
            .args([
                "-sk",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
                &format!("https://127.0.0.1:{}/", mu.data.port()),
            ])
            .bounded_output()
            .await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("<h1>the real site</h1>") && text.ends_with("\n200"),
            "{text}"
        );
        let client = start_client(user_client(&mu, "/u", false)).await;
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 2)).await;
    })
    .await;
}

/// The mu-server counts what the server counts (tunnels, bytes, handshakes, failed
/// destinations), on its controller's /metrics beside the per-user series.
#[tokio::test]
async fn mu_server_metrics_count_tunnels_bytes_and_failures() {
    bounded(async {
        let echo = echo_server().await;
        let dead = dead_addr();
        let mut mu = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-n",
                "127.0.0.1",
                "-c-token",
                TEST_TOKEN,
                "-verbose",
            ],
        );
        let pin = Verify::Pin(mtt::testing::config::parse_pin(&mu.pin().await).expect("pin"));
        let line = mu.wait_line("controller on ").await;
        let control: SocketAddr = line
            .split("controller on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("controller address")
            .parse()
            .expect("controller address");
        let data = mu.listening_addr().await;
        for (path, dst) in [("/echo", echo), ("/dead", dead)] {
            let body = format!(r#"{{"dst":"{dst}"}}"#);
            let (code, text) = http(
                control,
                "PUT",
                &format!("/v1/users{path}"),
                "",
                body.as_bytes(),
            )
            .await;
            assert_eq!(code, 200, "{text}");
        }
        let sent = random_bytes(300 * 1024, 5);
        let echo_client = start_client(wss_client_config(data, pin.clone(), "/echo", T)).await;
        echo_roundtrip(echo_client.addr, &sent).await;
        let dead_client = start_client(wss_client_config(data, pin, "/dead", T)).await;
        let mut s = TcpStream::connect(dead_client.addr).await.expect("connect");
        assert_eq!(
            drain(&mut s).await.0,
            0,
            "a dead destination closes the tunnel"
        );
        let (code, metrics) = http(control, "GET", "/metrics", "", b"").await;
        assert_eq!(code, 200);
        let n = sent.len();
        for want in [
            format!("mtt_bytes_total{{direction=\"up\"}} {n}\n"),
            format!("mtt_bytes_total{{direction=\"down\"}} {n}\n"),
            "mtt_connections_failed_total{reason=\"destination\"} 1\n".to_string(),
            "mtt_handshake_seconds_count 2\n".to_string(),
            format!(
                "mtt_user_bytes_up_total{{user=\"{}\"}} {n}\n",
                mtt::testing::role::controller::user_id("/echo")
            ),
            "mtt_users 2\n".to_string(),
        ] {
            assert!(metrics.contains(&want), "{want:?} missing from:\n{metrics}");
        }
        assert!(metrics.trim_end().ends_with("# EOF"), "one page: {metrics}");
        assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
        mu.signal("TERM");
        assert_eq!(mu.exit().await.code(), Some(0));
    })
    .await;
}

/// Kick after a replace: tunnels opened on the path before the replace (to the old
/// destination) are closed too, plain and multiplexed, and the kicked user's multiplexed
/// session is closed.
#[tokio::test]
async fn kick_after_replace_closes_the_tunnels_opened_before_it() {
    bounded(async {
        let echo = echo_server().await;
        let other = echo_server().await;
        let mu = start_mu(mu_config(None, None)).await;
        let put = |dst: SocketAddr| format!(r#"{{"dst":"{dst}"}}"#);
        assert_eq!(
            http(
                mu.control,
                "PUT",
                "/v1/users/erin",
                "",
                put(echo).as_bytes()
            )
            .await
            .0,
            200
        );
        let plain = start_client(user_client(&mu, "/erin", false)).await;
        let muxed = start_client(user_client(&mu, "/erin", true)).await;
        let mut held = Vec::new();
        for addr in [plain.addr, muxed.addr] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            ping(&mut s).await;
            held.push(s);
        }
        assert_eq!(
            http(
                mu.control,
                "PUT",
                "/v1/users/erin",
                "",
                put(other).as_bytes()
            )
            .await
            .0,
            200
        );
        // The replace alone closes nothing.
        for s in &mut held {
            ping(s).await;
        }
        assert_eq!(
            http(mu.control, "DELETE", "/v1/users/erin?kick=true", "", b"")
                .await
                .0,
            200
        );
        for (i, mut s) in held.into_iter().enumerate() {
            let start = std::time::Instant::now();
            drain(&mut s).await;
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "tunnel {i} lives on after the kick"
            );
        }
        // The multiplexing client's session is gone with them: with the user re-added, its
        // next tunnel needs (and gets) a new session that works.
        assert_eq!(
            http(
                mu.control,
                "PUT",
                "/v1/users/erin",
                "",
                put(echo).as_bytes()
            )
            .await
            .0,
            200
        );
        echo_roundtrip(muxed.addr, &random_bytes(64 * 1024, 3)).await;
    })
    .await;
}

/// The users file holds every user's credential: it is made 0600, keeps a mode the operator
/// chose, and its writing never follows a file planted beside it.
#[tokio::test]
async fn the_users_file_keeps_its_mode_and_follows_no_planted_link() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        // Where a fixed temp name would be written.
        std::os::unix::fs::symlink(&victim, dir.path().join(".users.json.tmp")).expect("plant");
        let mu = start_mu(mu_config(None, Some(file.clone()))).await;
        let add =
            |p: &str| format!(r#"{{"opt":1,"args_bunch":[{{"path":"{p}","dst":"127.0.0.1:1"}}]}}"#);
        assert_eq!(post(&mu, &add("/a")).await.1, r#"{"res":1}"#);
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600, "a new users file is private");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(post(&mu, &add("/b")).await.1, r#"{"res":1}"#);
        assert_eq!(mode(&file), 0o640, "the operator's mode is kept");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "untouched"
        );
        assert!(
            std::fs::symlink_metadata(dir.path().join(".users.json.tmp"))
                .expect("link")
                .file_type()
                .is_symlink()
        );
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(saved.as_array().expect("array").len(), 2);
        // The users file as a link to a world-readable, set-id file: what is written takes
        // neither mode (the link is replaced by a private file).
        let target = dir.path().join("elsewhere.json");
        std::fs::rename(&file, &target).expect("move");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o4666)).expect("chmod");
        std::os::unix::fs::symlink(&target, &file).expect("link");
        assert_eq!(post(&mu, &add("/c")).await.1, r#"{"res":1}"#);
        let meta = std::fs::symlink_metadata(&file).expect("stat");
        assert!(meta.file_type().is_file());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o600,
            "not the link target's mode"
        );
    })
    .await;
}

/// `PUT /v1/users/a?b` is refused: it does not quietly replace `/a`.
#[tokio::test]
async fn a_user_path_with_a_query_is_refused() {
    bounded(async {
        let mu = start_mu(mu_config(None, None)).await;
        let put = |d: &str| format!(r#"{{"dst":"{d}"}}"#);
        assert_eq!(
            http(
                mu.control,
                "PUT",
                "/v1/users/a",
                "",
                put("127.0.0.1:1").as_bytes()
            )
            .await
            .0,
            200
        );
        let (code, text) = http(
            mu.control,
            "PUT",
            "/v1/users/a?b",
            "",
            put("127.0.0.1:2").as_bytes(),
        )
        .await;
        assert_eq!(code, 400, "{text}");
        let (_, list) = http(mu.control, "GET", "/v1/users", "", b"").await;
        assert!(
            list.contains("127.0.0.1:1") && !list.contains("127.0.0.1:2"),
            "{list}"
        );
    })
    .await;
}

/// The controller answers only its operator: always a token (made into a 0600 file beside
/// the users file when none is given), and nothing from web pages: no Origin, no form
/// content types, no stranger's Host.
#[tokio::test]
async fn the_controller_refuses_web_pages_and_needs_a_token_always() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let users = dir.path().join("users.json");
        let mut p = Proc::spawn(
            &mtt_bin(),
            &["mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-users-file", &path_str(&users), "-verbose"],
        );
        let line = p.wait_line("controller's token is in").await;
        let control = p.addr_after("controller on ").await;
        let token_file = dir.path().join("controller.token");
        assert!(line.contains(&path_str(&token_file)), "{line}");
        let meta = std::fs::metadata(&token_file).expect("token file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
        assert_eq!(token.len(), 64);
        let auth = format!("Authorization: Bearer {token}\r\n");
        let ping = br#"{"opt":9}"#;
        // No token: refused, even on loopback.
        assert_eq!(http(control, "POST", "/", "Authorization: Bearer \r\n", ping).await.0, 401);
        for (extra, want) in [
            ("Origin: https://evil.example\r\n", 403),
            ("Content-Type: text/plain\r\n", 415),
            ("Content-Type: application/x-www-form-urlencoded\r\n", 415),
        ] {
            let (code, text) = http(control, "POST", "/", &format!("{auth}{extra}"), ping).await;
            assert_eq!(code, want, "{extra}: {text}");
        }
        // A DNS-rebinding page arrives under its own name.
        let mut s = TcpStream::connect(control).await.expect("connect");
        s.write_all(format!("POST / HTTP/1.1\r\nHost: rebind.attacker.example\r\n{auth}Content-Length: 9\r\nConnection: close\r\n\r\n{{\"opt\":9}}").as_bytes())
            .await
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
        // The operator, with JSON and the token, is served.
        let json = format!("{auth}Content-Type: application/json\r\n");
        assert_eq!(http(control, "POST", "/", &json, ping).await, (200, r#"{"res":1}"#.into()));
        // A restart keeps the token.
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
        let mut p = Proc::spawn(
            &mtt_bin(),
            &["mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-users-file", &path_str(&users), "-verbose"],
        );
        let control = p.addr_after("controller on ").await;
        assert_eq!(http(control, "POST", "/", &auth, ping).await, (200, r#"{"res":1}"#.into()));
        p.signal("TERM");
        p.exit().await;
    })
    .await;
}

/// A users file in a directory that does not exist is refused at start (exit 2, naming the
/// directory), not at the first change.
#[tokio::test]
async fn a_users_file_where_none_can_be_saved_is_refused_at_start() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("missing/users.json");
        let out = tokio::process::Command::new(mtt_bin())
            .args([
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-c-token",
                "t",
                "-users-file",
                &path_str(&file),
            ])
            .bounded_output()
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("does not exist") && err.contains("missing"),
            "{err}"
        );
    })
    .await;
}

/// A users file that is a directory is refused like every bad value (exit 2, with the fix);
/// an empty file is an empty table; a file that is no users file says what one looks like.
#[tokio::test]
async fn users_files_that_are_directories_empty_or_not_json() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let run = |file: std::path::PathBuf| async move {
            tokio::process::Command::new(mtt_bin())
                .args([
                    "mu-server",
                    "-b",
                    "127.0.0.1:0",
                    "-c",
                    "127.0.0.1:0",
                    "-c-token",
                    "t",
                ])
                .arg("-users-file")
                .arg(&file)
                .bounded_output()
                .await
        };
        let out = run(dir.path().to_path_buf()).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("is a directory") && err.contains("users.json"),
            "{err}"
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").expect("write");
        let out = run(bad).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("a JSON list like"), "{err}");
        // An empty file: the server starts with no users.
        let empty = dir.path().join("users.json");
        std::fs::write(&empty, "").expect("touch");
        let mut p = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-c-token",
                "t",
                "-users-file",
                &path_str(&empty),
            ],
        );
        let line = p.wait_line("mu-server listening on").await;
        assert!(line.contains("0 user(s)"), "{line}");
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
    })
    .await;
}

/// A change that cannot be stored (its directory is gone) is answered with a 5xx, and the
/// table does not change.
#[tokio::test]
async fn a_change_that_cannot_be_stored_is_a_server_error() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("state");
        std::fs::create_dir(&sub).expect("mkdir");
        let mu = start_mu(mu_config(None, Some(sub.join("users.json")))).await;
        let add =
            |p: &str| format!(r#"{{"opt":1,"args_bunch":[{{"path":"{p}","dst":"127.0.0.1:1"}}]}}"#);
        assert_eq!(post(&mu, &add("/a")).await, (200, r#"{"res":1}"#.into()));
        std::fs::remove_dir_all(&sub).expect("rm");
        let (code, text) = post(&mu, &add("/b")).await;
        assert_eq!(code, 500, "{text}");
        assert!(text.starts_with(r#"{"res":2,"err_string":"#), "{text}");
        let (code, text) = http(
            mu.control,
            "PUT",
            "/v1/users/c",
            "",
            br#"{"dst":"127.0.0.1:1"}"#,
        )
        .await;
        assert_eq!(code, 500, "{text}");
        assert_eq!(
            post(&mu, r#"{"opt":9}"#).await.1,
            r#"{"res":1,"current_users":1}"#
        );
    })
    .await;
}

/// Without -c-token, the made token is kept in `$STATE_DIRECTORY`, else beside the users
/// file, else in `$XDG_STATE_HOME/mtt` (made 0700), never in the working directory; the file
/// used is named at the default log level; a token file others may read is refused.
#[tokio::test]
async fn the_made_token_is_kept_out_of_the_working_directory_and_private() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let cwd = tempfile::tempdir().expect("tmp");
        let state = tempfile::tempdir().expect("tmp");
        let xdg = path_str(state.path());
        let args = ["mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0"];
        let env = [("XDG_STATE_HOME", xdg.as_str())];
        let file = state.path().join("mtt").join("controller.token");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        // Made: said at the default level, naming the file.
        let mut p = Proc::spawn_opts(&mtt_bin(), &args, &env, Some(cwd.path()));
        let line = p.wait_line("controller's token is in").await;
        assert!(line.contains(&path_str(&file)), "{line}");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().expect("dir")), 0o700);
        assert!(
            !cwd.path().join("controller.token").exists(),
            "a token in the working directory"
        );
        p.addr_after("controller on ").await;
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
        // Read again on the next start, and said so.
        let mut p = Proc::spawn_opts(&mtt_bin(), &args, &env, Some(cwd.path()));
        let line = p.wait_line("controller token from").await;
        assert!(line.contains(&path_str(&file)), "{line}");
        p.addr_after("controller on ").await;
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
        // Readable by others: refused, with the fix.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = tokio::process::Command::new(mtt_bin())
            .args(args)
            .current_dir(cwd.path())
            .env("XDG_STATE_HOME", &xdg)
            .env_remove("STATE_DIRECTORY")
            .bounded_output()
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("chmod 600") && err.contains(&path_str(&file)),
            "{err}"
        );
        // systemd's state directory comes before the users file's.
        let units = tempfile::tempdir().expect("tmp");
        let users = cwd.path().join("users.json");
        let mut with_users = args.to_vec();
        with_users.extend(["-users-file", users.to_str().expect("utf-8")]);
        let sd = path_str(units.path());
        let env = [("STATE_DIRECTORY", sd.as_str())];
        let mut p = Proc::spawn_opts(&mtt_bin(), &with_users, &env, Some(cwd.path()));
        let line = p.wait_line("controller's token is in").await;
        assert!(
            line.contains(&path_str(&units.path().join("controller.token"))),
            "{line}"
        );
        assert!(!cwd.path().join("controller.token").exists());
        p.addr_after("controller on ").await;
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
    })
    .await;
}

/// The operator's changes are said at the default level (an audit line per change, users by
/// their label, never their path), and a known endpoint asked with the wrong method answers
/// 405 with what it takes in `Allow`.
#[tokio::test]
async fn changes_are_audited_and_wrong_methods_are_405() {
    bounded(async {
        let mut p = Proc::spawn(
            &mtt_bin(),
            &["mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-c-token", "t"],
        );
        let control = p.addr_after("controller on ").await;
        let auth = "Authorization: Bearer t\r\nContent-Type: application/json\r\n";
        let (code, _) = http(control, "PUT", "/v1/users/secret-path", auth, br#"{"dst":"127.0.0.1:1"}"#).await;
        assert_eq!(code, 200);
        let id = mtt::testing::role::controller::user_id("/secret-path");
        let line = p.wait_line("controller: added or replaced").await;
        assert!(line.contains(&id) && !line.contains("secret-path"), "{line}");
        let (code, _) = http(control, "DELETE", "/v1/users/secret-path?kick=true", auth, b"").await;
        assert_eq!(code, 200);
        let line = p.wait_line("controller: removed").await;
        assert!(line.contains(&id) && line.contains("kick"), "{line}");
        let mut s = TcpStream::connect(control).await.expect("connect");
        s.write_all(b"PATCH /v1/users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("\r\nallow: get\r\n"), "{raw}");
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
    })
    .await;
}
