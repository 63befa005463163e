//! The controller's dashboard in a real browser: Debian's chromium driven by playwright-core
//! (`tests/dashboard/drive.mjs`) against a real `mtt mu-server` process: a wrong token is
//! refused, the token logs in and stays in the tab, a user added in the page carries a tunnel
//! whose bytes rise in the table, a quota set in the page ends that tunnel and shows the
//! state, kick removes the user, the page fits a phone, and the token is sent to the page's
//! own origin only; screenshots are kept. Also, without a browser: the page's security
//! headers, and which `Origin`s the API takes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;
use crate::limits::{TOKEN, server_with, sink};

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

#[tokio::test]
async fn the_dashboard_in_chromium() {
    assert!(
        driver_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/dashboard: run 'bash .ci/install-test-deps'"
    );
    bounded(async {
        let mu = server_with(None, &[]).await;
        let (data, control, pin) = (mu.data, mu.control, mu.pin.clone());
        let dst = sink().await;
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&out).expect("artefact directory");
        let url = format!("http://{control}/");
        let path = "/alice";
        let args = [
            path_str(&driver_dir().join("drive.mjs")),
            url,
            TOKEN.to_string(),
            path.to_string(),
            dst.addr.to_string(),
            path_str(&out),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = Proc::spawn(Path::new("node"), &args);
        node.wait_line("STEP logged in").await;
        node.wait_line("STEP added").await;
        // The user exists now: a tunnel of it sends until the quota the page sets ends it.
        let c = start_client(wss_client_config(data, pin, path, Duration::from_secs(30))).await;
        let sending = tokio::spawn(async move {
            let mut s = TcpStream::connect(c.addr).await.expect("connect");
            let chunk = random_bytes(64 * 1024, 3);
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(45) {
                if s.write_all(&chunk).await.is_err() {
                    return (sent, true);
                }
                sent += chunk.len() as u64;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, false)
        });
        node.wait_line("STEP over quota").await;
        let (sent, ended) = sending.await.expect("sender");
        assert!(ended, "the tunnel outlived its quota ({sent} bytes sent)");
        let lines = {
            let status = node.exit().await;
            let lines = node.all_lines().await;
            assert!(
                status.success(),
                "the browser test failed:\n{}",
                lines.join("\n")
            );
            lines
        };
        assert!(lines.iter().any(|l| l == "DONE"), "{lines:?}");
        for shot in ["dashboard.png", "dashboard-phone.png"] {
            let len = std::fs::metadata(out.join(shot))
                .map(|m| m.len())
                .unwrap_or(0);
            assert!(len > 10_000, "{shot}: {len} bytes");
        }
        eprintln!("screenshots in {}", out.display());
        assert!(dst.received.load(std::sync::atomic::Ordering::Relaxed) > 0);
    })
    .await;
}

/// One GET with these headers; (status, head, body).
async fn get(control: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    http_request(control, "GET", path, headers, b"").await
}

#[tokio::test]
async fn the_page_is_served_under_a_strict_policy_and_the_api_takes_only_its_own_origin() {
    bounded(async {
        let mu = server_with(None, &[]).await;
        let control = mu.control;
        // The page and its files need no token and say where they may load from.
        let mut s = TcpStream::connect(control).await.expect("connect");
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {control}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut all)
            .await
            .expect("read");
        let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
        for h in [
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self';",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "content-type: text/html",
        ] {
            assert!(text.contains(h), "no '{h}' in {text}");
        }
        assert!(
            !text.contains("<script>") && !text.contains(" style="),
            "inline script or style"
        );
        for f in [
            "/ui/app.js",
            "/ui/app.css",
            "/ui/uPlot.iife.min.js",
            "/ui/uPlot.min.css",
        ] {
            assert_eq!(get(control, f, "").await.0, 200, "{f}");
        }
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        // The page's own origin may use the API; any other is refused, token or not.
        let own = format!("{auth}Origin: http://{control}\r\n");
        assert_eq!(get(control, "/v1/users", &own).await.0, 200);
        for other in [
            "http://evil.example".to_string(),
            format!("https://{control}"),
            format!("http://{control}.evil.example"),
            "null".to_string(),
        ] {
            let (code, body) =
                get(control, "/v1/users", &format!("{auth}Origin: {other}\r\n")).await;
            assert_eq!(code, 403, "Origin {other}: {body}");
        }
        // Without the token the API answers 401, and the history too.
        assert_eq!(get(control, "/v1/history", "").await.0, 401);
        let (code, body) = get(control, "/v1/history", &auth).await;
        assert_eq!(code, 200, "{body}");
        let h: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(h["total"]["step"], 10);
        assert_eq!(h["users"]["step"], 60);
    })
    .await;
}
