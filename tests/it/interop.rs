//! Interop with independent TLS peers from OpenSSL: `openssl s_client` as the client of
//! `mtt server`, `openssl s_server` as the server of `mtt client`. The application bytes must
//! pass verbatim, nothing added.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::options::Verify;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

fn openssl() -> &'static Path {
    Path::new("openssl")
}

/// Reads exactly `n` bytes, only then replies with their SHA-256 and closes.
async fn reply_after_n(n: usize) -> std::net::SocketAddr {
    serve_dest(move |mut s| async move {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        s.write_all(&sha256(&buf)).await?;
        s.shutdown().await
    })
    .await
}

#[tokio::test]
async fn openssl_s_client_through_mtt_server() {
    bounded(async {
        let data = random_bytes(300 * 1024, 77);
        let dest = reply_after_n(data.len()).await;
        let server = start_server(server_config(
            dest,
            Some(CertSource::SelfSigned(Some("localhost".into()))),
            T,
        ))
        .await;
        let connect = server.addr.to_string();
        for version in ["-tls1_3", "-tls1_2"] {
            let mut child = tokio::process::Command::new(openssl())
                .args([
                    "s_client",
                    "-connect",
                    &connect,
                    "-servername",
                    "localhost",
                    "-quiet",
                    version,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("openssl s_client (install openssl)");
            let mut stdin = child.stdin.take().expect("stdin");
            let mut stdout = child.stdout.take().expect("stdout");
            let feed = async {
                stdin.write_all(&data).await.expect("feed s_client");
                // Keep stdin open: s_client -quiet ignores its EOF anyway, and the server
                // ends the session once the destination has replied.
                stdin
            };
            let read = async {
                let mut out = Vec::new();
                stdout.read_to_end(&mut out).await.expect("read s_client");
                out
            };
            let (_stdin, out) = tokio::join!(feed, read);
            assert_eq!(
                out,
                sha256(&data),
                "{version}: destination got exactly the bytes sent"
            );
            let status = child.wait().await.expect("wait");
            assert!(status.success(), "{version}: s_client exit {status}");
        }
    })
    .await;
}

#[tokio::test]
async fn mtt_client_through_openssl_s_server() {
    bounded(async {
        let (_dir, cert, key, fp) = self_signed_files("localhost");
        let port = free_port();
        let accept = format!("127.0.0.1:{port}");
        let mut s_server = Proc::spawn(
            openssl(),
            &[
                "s_server",
                "-accept",
                &accept,
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-naccept",
                "1",
            ],
        );
        s_server.wait_line("ACCEPT").await;
        let client = start_client(client_config(
            accept.parse().expect("addr"),
            "localhost",
            Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin")),
            T,
        ))
        .await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        // Up: our line must appear verbatim in s_server's output.
        let up = format!("from-the-app-{}", hex::encode(random_bytes(24, 1)));
        s.write_all(format!("{up}\n").as_bytes())
            .await
            .expect("write");
        s_server.wait_line(&up).await;
        // Down: what s_server sends reaches the app verbatim.
        let down = format!("from-s_server-{}\n", hex::encode(random_bytes(24, 2)));
        let mut stdin = s_server.child.stdin.take().expect("stdin");
        stdin
            .write_all(down.as_bytes())
            .await
            .expect("feed s_server");
        stdin.flush().await.expect("flush");
        let mut got = vec![0u8; down.len()];
        s.read_exact(&mut got).await.expect("read from s_server");
        assert_eq!(String::from_utf8_lossy(&got), down);
        drop(stdin);
    })
    .await;
}

fn sh(args: &[&str], dir: &Path) {
    let out = std::process::Command::new(openssl())
        .args(args)
        .current_dir(dir)
        .bounded_output();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keys as OpenSSL writes them: PKCS#8, PKCS#1 (RSA) and SEC1 (EC P-384, the curve of the
/// original's certificates), each serving a verified tunnel.
#[tokio::test]
async fn server_keys_in_pkcs8_pkcs1_and_sec1() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("w");
        sh(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=test CA",
                "-days",
                "2",
            ],
            d,
        );
        let sign = |key: &str, crt: &str| {
            sh(
                &[
                    "req",
                    "-new",
                    "-key",
                    key,
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=localhost",
                ],
                d,
            );
            sh(
                &[
                    "x509",
                    "-req",
                    "-in",
                    "leaf.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    crt,
                    "-days",
                    "2",
                    "-extfile",
                    "leaf.ext",
                ],
                d,
            );
        };
        sh(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa8.key",
            ],
            d,
        );
        sh(
            &["rsa", "-in", "rsa8.key", "-out", "rsa1.key", "-traditional"],
            d,
        );
        sign("rsa8.key", "rsa.crt");
        sh(
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                "ec.key",
            ],
            d,
        );
        sign("ec.key", "ec.crt");
        let head = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .expect("read")
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(head("rsa8.key"), "-----BEGIN PRIVATE KEY-----");
        assert_eq!(head("rsa1.key"), "-----BEGIN RSA PRIVATE KEY-----");
        assert_eq!(head("ec.key"), "-----BEGIN EC PRIVATE KEY-----");
        let echo = echo_server().await;
        for (cert, key) in [
            ("rsa.crt", "rsa8.key"),
            ("rsa.crt", "rsa1.key"),
            ("ec.crt", "ec.key"),
        ] {
            let server = start_server(server_config(
                echo,
                Some(CertSource::Files {
                    cert: d.join(cert),
                    key: d.join(key),
                }),
                T,
            ))
            .await;
            let client = start_client(client_config(
                server.addr,
                "localhost",
                Verify::Ca(d.join("ca.crt")),
                T,
            ))
            .await;
            echo_roundtrip(client.addr, &random_bytes(256 * 1024, 8)).await;
        }
        // A key that does not belong to the certificate is refused at start-up.
        let err = mtt::testing::role::server::Server::new(server_config(
            echo,
            Some(CertSource::Files {
                cert: d.join("rsa.crt"),
                key: d.join("ec.key"),
            }),
            T,
        ))
        .err()
        .expect("mismatched key must be refused");
        let err = err.report().to_string();
        assert!(
            err.contains("certificate and key") && err.contains("-key"),
            "{err}"
        );
        assert!(!err.contains("KeyMismatch"), "plain words: {err}");
    })
    .await;
}

/// What `openssl s_client` can negotiate with `mtt server`: TLS 1.2 and 1.3 with AEAD suites
/// only; TLS 1.0/1.1 and CBC or non-forward-secret suites are refused.
#[tokio::test]
async fn tls_hygiene_as_openssl_sees_it() {
    bounded(async {
        let echo = echo_server().await;
        let server = start_server(server_config(
            echo,
            Some(CertSource::SelfSigned(Some("localhost".into()))),
            T,
        ))
        .await;
        let connect = server.addr.to_string();
        let attempt = |args: Vec<&'static str>| {
            let connect = connect.clone();
            async move {
                let mut cmd = tokio::process::Command::new(openssl());
                cmd.args(["s_client", "-connect", &connect, "-brief"])
                    .args(&args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
                    .await
                    .expect("s_client finishes")
                    .expect("run openssl");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                (text.contains("CONNECTION ESTABLISHED"), text)
            }
        };
        for (args, want) in [
            (vec!["-tls1_3"], true),
            (
                vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
                true,
            ),
            (
                vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
                true,
            ),
            (
                vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"],
                false,
            ),
            (
                vec!["-tls1_2", "-cipher", "AES128-GCM-SHA256:@SECLEVEL=0"],
                false,
            ),
            (vec!["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], false),
            (vec!["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"], false),
        ] {
            let (ok, text) = attempt(args.clone()).await;
            assert_eq!(ok, want, "{args:?}: {text}");
        }
    })
    .await;
}

/// Certificate files that cannot be used are blamed on the file at fault, in words that say
/// what is wrong: a damaged certificate (not "the key does not belong"), a DSA key (a kind
/// that cannot be used), a missing file (not "not readable as PEM").
#[tokio::test]
async fn unusable_certificate_files_are_blamed_on_the_right_file() {
    bounded(async {
        let (dir, cert, key, _) = self_signed_files("t.example");
        let d = dir.path();
        // The certificate's DER damaged inside well-formed PEM.
        let pem = std::fs::read_to_string(&cert).expect("read");
        let der = pem_body(&pem);
        let mut damaged = der.clone();
        damaged[40..60].fill(0);
        let bad = d.join("damaged.crt");
        std::fs::write(&bad, pem_of("CERTIFICATE", &damaged)).expect("write");
        let dsa = d.join("dsa.key");
        let params = d.join("dsa.params");
        for args in [
            vec!["dsaparam", "-out", &path_str(&params), "1024"],
            vec!["gendsa", "-out", &path_str(&dsa), &path_str(&params)],
        ] {
            let st = tokio::process::Command::new(openssl())
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .expect("openssl");
            assert!(st.success(), "openssl {args:?}");
        }
        let missing = d.join("missing.crt");
        for (c, k, file, words) in [
            (&bad, &key, "-cert", "the certificate cannot be used"),
            (&cert, &dsa, "-key", "DSA cannot"),
            (&missing, &key, "-cert", "cannot be read: No such file"),
        ] {
            let out = tokio::process::Command::new(mtt_bin())
                .args(["server", "-b", "127.0.0.1:0", "-d", "127.0.0.1:1"])
                .args(["-cert", &path_str(c), "-key", &path_str(k)])
                .output()
                .await
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            let named = format!("{file} {}", path_str(if file == "-cert" { c } else { k }));
            assert!(err.contains(&named) && err.contains(words), "{err}");
            assert!(!err.contains("belong together"), "{err}");
        }
    })
    .await;
}

fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}
