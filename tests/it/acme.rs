//! `-acme` against a real ACME CA on loopback: Let's Encrypt's test CA, pebble, with
//! pebble-challtestsrv as its DNS (every name is 127.0.0.1). Certificates are obtained through
//! real TLS-ALPN-01 validations of mtt's own port, verified by clients against pebble's root,
//! cached across restarts and renewed under a live tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const NAME: &str = "mtt.test";

/// pebble and its DNS, on free loopback ports, stopped when dropped.
struct Pebble {
    _dns: Proc,
    ca: Proc,
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    directory: String,
    /// pebble's own HTTPS certificate (what `-acme-ca` trusts).
    https_ca: PathBuf,
    /// The root pebble issues under (what tunnel clients trust).
    root: PathBuf,
}

impl Pebble {
    /// pebble validating TLS-ALPN-01 on `tls_port`, issuing certificates valid for `validity`
    /// seconds (its default, years, when `None`).
    async fn start(tls_port: u16, validity: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().expect("tmp");
        // pebble's HTTPS certificate, made as a user would: `mtt cert`.
        let made = std::process::Command::new(mtt_bin())
            .args(["cert", "-n", "127.0.0.1", "-out"])
            .arg(dir.path())
            .bounded_output();
        assert!(made.status.success(), "mtt cert: {made:?}");
        let (dns_port, dns_mgmt) = (free_port(), free_port());
        let mut dns = Proc::spawn(
            Path::new("pebble-challtestsrv"),
            &[
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ],
        );
        dns.wait_line("Starting management server").await;
        let (listen, mgmt) = (free_port(), free_port());
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": path_str(&dir.path().join("127.0.0.1.crt")),
            "privateKey": path_str(&dir.path().join("127.0.0.1.key")),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let mut ca = Proc::spawn_env(
            Path::new("pebble"),
            &[
                "-config",
                &path_str(&config_path),
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
            ],
            &[
                ("PEBBLE_VA_NOSLEEP", "1"),
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                // Every order validates afresh, as a first order at a real CA does.
                ("PEBBLE_AUTHZREUSE", "0"),
            ],
        );
        ca.wait_line("ACME directory available").await;
        let https_ca = dir.path().join("127.0.0.1.crt");
        let root = dir.path().join("root.pem");
        let got = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&https_ca)
            .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
            .arg("-o")
            .arg(&root)
            .bounded_output();
        assert!(got.status.success(), "pebble's root: {got:?}");
        Pebble {
            _dns: dns,
            ca,
            dir,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca,
            root,
        }
    }

    /// Stops the CA (its DNS stays): orders fail from now on.
    async fn stop_ca(&mut self) {
        self.ca.child.start_kill().expect("kill pebble");
        self.ca.exit().await;
    }

    /// The `-acme*` flags for a server keeping its state in `state`.
    fn flags(&self, state: &Path) -> Vec<String> {
        [
            "-acme",
            NAME,
            "-acme-email",
            "ops@mtt.test",
            "-acme-dir",
            &path_str(state),
            "-acme-directory",
            &self.directory,
            "-acme-ca",
            &path_str(&self.https_ca),
        ]
        .map(String::from)
        .to_vec()
    }
}

fn spawn(args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&mtt_bin(), &args)
}

/// `mtt server -b 127.0.0.1:PORT -d DEST -acme … EXTRA…`.
fn acme_server(port: u16, dest: SocketAddr, pebble: &Pebble, state: &Path, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = ["server", "-b", &format!("127.0.0.1:{port}"), "-d"]
        .map(String::from)
        .to_vec();
    args.push(dest.to_string());
    args.extend(pebble.flags(state));
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn(&args)
}

/// `mtt client` trusting pebble's root for `mtt.test`, with `extra` flags; its address.
async fn client(port: u16, pebble: &Pebble, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args: Vec<String> = [
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &format!("127.0.0.1:{port}"),
        "-n",
        NAME,
        "-ca",
        &path_str(&pebble.root),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut c = spawn(&args);
    let addr = c.listening_addr().await;
    (c, addr)
}

/// The serial of the certificate a server on `port` presents for `mtt.test`, verified
/// against `root` (chain and name).
async fn served_serial(port: u16, root: &Path) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let certs = mtt::testing::certs::pem::load_certs("-ca", root).expect("root");
    roots.add_parsable_certificates(certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(NAME).expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake verified against pebble's root");
    let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    mtt::testing::certs::Validity::of(&leaf)
        .expect("parse")
        .serial
}

/// The serial in a "new certificate for mtt.test (serial S)" line.
fn serial_in(line: &str) -> String {
    let rest = line.split("(serial ").nth(1).expect("serial");
    rest.split(')').next().expect("serial").to_string()
}

/// A server on `port` in `mode` obtains its certificate through a real validation; a
/// client verifying chain and name carries hashed data both ways.
async fn obtains_and_carries(mode: &[&str]) {
    bounded(async {
        let port = free_port();
        let pebble = Pebble::start(port, None).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let mut server = acme_server(port, dest, &pebble, &state, mode);
        let line = server.wait_line("ACME: new certificate").await;
        assert!(line.contains(NAME), "{line}");
        assert_eq!(served_serial(port, &pebble.root).await, serial_in(&line));
        let (_c, addr) = client(port, &pebble, mode).await;
        echo_roundtrip(addr, &random_bytes(3 << 20, 17)).await;
        echo_roundtrip(addr, &random_bytes(100_000, 18)).await;
        // The account, the key and the certificate are the owner's alone.
        use std::os::unix::fs::PermissionsExt;
        let mut files: Vec<_> = std::fs::read_dir(&state)
            .expect("state dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].starts_with("account-") && names[0].ends_with(".json"));
        assert_eq!(names[1..], ["mtt.test.crt", "mtt.test.key"]);
        for f in &files {
            let mode = std::fs::metadata(f).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    })
    .await
}

#[tokio::test]
async fn plain_tls_server_obtains_its_certificate_and_carries_tunnels() {
    obtains_and_carries(&[]).await;
}

#[tokio::test]
async fn websocket_server_obtains_its_certificate_and_carries_tunnels() {
    obtains_and_carries(&["-wss"]).await;
}

#[tokio::test]
async fn multiplexing_server_obtains_its_certificate_and_carries_tunnels() {
    obtains_and_carries(&["-mux"]).await;
}

/// The mu-server obtains its certificate the same way; a user's tunnel is verified by name.
#[tokio::test]
async fn mu_server_obtains_its_certificate_and_routes_a_user() {
    bounded(async {
        let port = free_port();
        let pebble = Pebble::start(port, None).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let mut args: Vec<String> = [
            "mu-server",
            "-b",
            &format!("127.0.0.1:{port}"),
            "-c",
            "127.0.0.1:0",
            "-c-token",
            "t0ken",
        ]
        .map(String::from)
        .to_vec();
        args.extend(pebble.flags(&state));
        let mut mu = spawn(&args);
        let control = mu.addr_after("controller on ").await;
        mu.wait_line("ACME: new certificate").await;
        let put = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-H", "Authorization: Bearer t0ken", "-d"])
            .arg(format!(r#"{{"dst":"{dest}"}}"#))
            .arg(format!("http://{control}/v1/users/alice"))
            .bounded_output();
        assert!(put.status.success(), "add user: {put:?}");
        let (_c, addr) = client(port, &pebble, &["-wss", "-wss-path", "/alice"]).await;
        echo_roundtrip(addr, &random_bytes(1 << 20, 19)).await;
    })
    .await
}

/// Restarted with the same `-acme-dir`, the server serves its cached certificate at once and
/// orders nothing.
#[tokio::test]
async fn a_restart_serves_the_cached_certificate_without_a_new_order() {
    bounded(async {
        let port = free_port();
        let pebble = Pebble::start(port, None).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let mut first = acme_server(port, dest, &pebble, &state, &[]);
        let serial = serial_in(&first.wait_line("ACME: new certificate").await);
        first.signal("TERM");
        assert!(first.exit().await.success());

        let mut again = acme_server(port, dest, &pebble, &state, &["-verbose"]);
        again.wait_line("serving the cached certificate").await;
        again.wait_line("listening on").await;
        assert_eq!(served_serial(port, &pebble.root).await, serial);
        let (_c, addr) = client(port, &pebble, &[]).await;
        echo_roundtrip(addr, &random_bytes(200_000, 20)).await;
        // Stopped after the tunnel: everything it printed is in; no order among it.
        again.signal("TERM");
        assert!(again.exit().await.success());
        while let Some(l) = again.next_line().await {
            again.seen.push(l);
        }
        assert!(
            !again.seen.iter().any(|l| l.contains("ordering")),
            "{:?}",
            again.seen
        );
    })
    .await
}

/// A certificate of a short life (8 s from the test CA) is renewed when a third of it is
/// left, while a tunnel stays open: new handshakes see the new serial, the open tunnel goes
/// on, and the expiry metric follows.
#[tokio::test]
async fn renewal_swaps_the_certificate_under_a_live_tunnel() {
    bounded(async {
        let port = free_port();
        let pebble = Pebble::start(port, Some(8)).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let mut server = acme_server(port, dest, &pebble, &state, &["-metrics", "127.0.0.1:0"]);
        let metrics = server.addr_after("metrics at http://").await;
        let first = serial_in(&server.wait_line("ACME: new certificate").await);
        let (_c, addr) = client(port, &pebble, &[]).await;
        let mut live = TcpStream::connect(addr).await.expect("connect");
        let mut echo = [0u8; 5];
        live.write_all(b"hello").await.expect("write");
        live.read_exact(&mut echo).await.expect("echo");
        let before = sample_of(&scrape(metrics).await, "mtt_certificate_expiry_seconds");

        // The renewal: the next "new certificate" line, with another serial.
        server.seen.clear();
        let line = server.wait_line("ACME: new certificate").await;
        let second = serial_in(&line);
        assert_ne!(second, first);
        assert_eq!(served_serial(port, &pebble.root).await, second);
        let after = sample_of(&scrape(metrics).await, "mtt_certificate_expiry_seconds");
        assert!(after > before, "expiry metric {before} → {after}");

        // The tunnel opened under the first certificate goes on.
        live.write_all(b"world").await.expect("write after renewal");
        live.read_exact(&mut echo)
            .await
            .expect("echo after renewal");
        assert_eq!(&echo, b"world");
        echo_roundtrip(addr, &random_bytes(300_000, 21)).await;
    })
    .await
}

/// A CA that cannot validate the server (its validation port is not the server's) refuses:
/// the server says why in the CA's words, once, and exits with an error instead of serving
/// without a certificate.
#[tokio::test]
async fn a_refused_order_is_a_clear_error_at_start() {
    bounded(async {
        let nobody = free_port();
        let pebble = Pebble::start(nobody, None).await;
        let state = pebble.dir.path().join("state");
        let mut server = acme_server(free_port(), dead_addr(), &pebble, &state, &[]);
        let status = server.exit().await;
        assert!(!status.success());
        while let Some(l) = server.next_line().await {
            server.seen.push(l);
        }
        let errors: Vec<&String> = server
            .seen
            .iter()
            .filter(|l| l.contains("no certificate for mtt.test"))
            .collect();
        assert_eq!(errors.len(), 1, "{:?}", server.seen);
        assert!(
            errors[0].contains("refused") && errors[0].contains(&format!("{nobody}")),
            "the CA's words name the port it could not reach: {}",
            errors[0]
        );
    })
    .await
}

/// As a SIP003 plugin the same settings are options: a shadowsocks host's server plugin
/// obtains its certificate and carries the client plugin's tunnel.
#[tokio::test]
async fn plugin_mode_takes_the_acme_options() {
    bounded(async {
        let port = free_port();
        let pebble = Pebble::start(port, None).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let options = format!(
            "acme={NAME};acme-email=ops@mtt.test;acme-dir={};acme-directory={};acme-ca={}",
            path_str(&state),
            pebble.directory,
            path_str(&pebble.https_ca)
        );
        let port_s = port.to_string();
        let dest_port = dest.port().to_string();
        let mut server = Proc::spawn_env(
            &mtt_bin(),
            &["server"],
            &[
                ("SS_REMOTE_HOST", "127.0.0.1"),
                ("SS_REMOTE_PORT", &port_s),
                ("SS_LOCAL_HOST", "127.0.0.1"),
                ("SS_LOCAL_PORT", &dest_port),
                ("SS_PLUGIN_OPTIONS", &options),
            ],
        );
        server.wait_line("ACME: new certificate").await;
        let (_c, addr) = client(port, &pebble, &[]).await;
        echo_roundtrip(addr, &random_bytes(500_000, 22)).await;
    })
    .await
}

/// A renewal that fails (the CA has gone) is said in one line with the retry and the
/// expiry, and the server goes on serving the certificate it has.
#[tokio::test]
async fn a_failed_renewal_keeps_the_certificate_and_says_when_it_expires() {
    bounded(async {
        let port = free_port();
        let mut pebble = Pebble::start(port, Some(12)).await;
        let state = pebble.dir.path().join("state");
        let dest = echo_server().await;
        let mut server = acme_server(port, dest, &pebble, &state, &[]);
        let serial = serial_in(&server.wait_line("ACME: new certificate").await);
        pebble.stop_ca().await;
        let line = server
            .wait_line("renewing the certificate for mtt.test failed")
            .await;
        assert!(
            line.contains("retrying in 60s") && line.contains("it expires"),
            "{line}"
        );
        assert_eq!(served_serial(port, &pebble.root).await, serial);
        let (_c, addr) = client(port, &pebble, &[]).await;
        echo_roundtrip(addr, &random_bytes(100_000, 23)).await;
    })
    .await
}
