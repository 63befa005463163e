//! A cross-built mtt (another architecture, run under qemu-user) against the native one: each
//! end emulated in turn, in tls and wss+mux mode, data hashed both ways. These need the
//! cross-built binary, so plain `cargo test` lists them as ignored; `packaging/test-cross
//! TARGET` builds it and runs them with `MTT_CROSS="qemu-aarch64 path/to/mtt"`.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

/// The emulator and the cross-built binary, from `MTT_CROSS`.
fn cross() -> (PathBuf, PathBuf) {
    let spec = std::env::var("MTT_CROSS").unwrap_or_else(|_| {
        panic!("MTT_CROSS is not set: run these through packaging/test-cross TARGET")
    });
    let mut parts = spec.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(runner), Some(bin), None) => (runner.into(), bin.into()),
        _ => panic!("MTT_CROSS must be 'EMULATOR BINARY', not '{spec}'"),
    }
}

/// One end of a tunnel: the native binary, or the cross-built one under its emulator.
fn spawn(emulated: bool, args: &[&str]) -> Proc {
    if emulated {
        let (runner, bin) = cross();
        let bin = path_str(&bin);
        let mut all = vec![bin.as_str()];
        all.extend_from_slice(args);
        Proc::spawn(&runner, &all)
    } else {
        Proc::spawn(&mtt_bin(), args)
    }
}

/// A server and a client (`emulated` says which one runs under the emulator) carrying four
/// connections of 1 MiB each to an echo destination, each echoed back intact.
async fn carry(emulated_server: bool, flags: &[&str]) {
    bounded(async {
        let echo = echo_server().await;
        let dest = echo.to_string();
        let mut server_args = vec![
            "server",
            "-b",
            "127.0.0.1:0",
            "-d",
            &dest,
            "-n",
            "127.0.0.1",
        ];
        server_args.extend_from_slice(flags);
        let mut server = spawn(emulated_server, &server_args);
        let addr = server.listening_addr().await.to_string();
        let pin = server.pin().await;
        let mut client_args = vec![
            "client",
            "-b",
            "127.0.0.1:0",
            "-s",
            &addr,
            "-n",
            "127.0.0.1",
            "-cert-sha256",
            &pin,
        ];
        client_args.extend_from_slice(flags);
        let mut client = spawn(!emulated_server, &client_args);
        let local = client.listening_addr().await;
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let data = random_bytes(1024 * 1024 + i as usize * 977, i);
            tasks.push(tokio::spawn(
                async move { echo_roundtrip(local, &data).await },
            ));
        }
        for t in tasks {
            t.await.expect("a connection through the tunnel failed");
        }
    })
    .await;
}

const WSS_MUX: &[&str] = &["-wss", "-wss-path", "/cross", "-mux"];

#[tokio::test]
#[ignore = "needs a cross-built binary: packaging/test-cross TARGET runs it"]
async fn version_under_emulation() {
    let (runner, bin) = cross();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&runner)
            .arg(&bin)
            .arg("-version")
            .output(),
    )
    .await
    .expect("-version within 60 s")
    .expect("run the emulator");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("mtt {}", env!("CARGO_PKG_VERSION")),
        "the cross-built binary is of another version"
    );
}

#[tokio::test]
#[ignore = "needs a cross-built binary: packaging/test-cross TARGET runs it"]
async fn emulated_server_native_client_tls() {
    carry(true, &[]).await;
}

#[tokio::test]
#[ignore = "needs a cross-built binary: packaging/test-cross TARGET runs it"]
async fn native_server_emulated_client_tls() {
    carry(false, &[]).await;
}

#[tokio::test]
#[ignore = "needs a cross-built binary: packaging/test-cross TARGET runs it"]
async fn emulated_server_native_client_wss_mux() {
    carry(true, WSS_MUX).await;
}

#[tokio::test]
#[ignore = "needs a cross-built binary: packaging/test-cross TARGET runs it"]
async fn native_server_emulated_client_wss_mux() {
    carry(false, WSS_MUX).await;
}
