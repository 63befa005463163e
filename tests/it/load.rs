//! Load: many concurrent tunnels per mode through one client and one server process, every
//! byte hash-checked both ways, then both processes back to their baseline of open file
//! descriptors. 200 tunnels per mode by default (CI); set MTT_LOAD_TUNNELS=2000 for the full
//! run.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test]
async fn concurrent_tunnels_in_every_mode_leave_no_descriptor_behind() {
    let tunnels: usize = std::env::var("MTT_LOAD_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    tokio::time::timeout(Duration::from_secs(600), async {
        let echo = echo_server().await.to_string();
        for (mode, flags) in [
            ("tls", vec![]),
            ("wss", vec!["-wss", "-wss-path", "/load"]),
            ("mux", vec!["-mux"]),
            ("wss+mux", vec!["-wss", "-wss-path", "/load", "-mux"]),
        ] {
            let mut sargs = vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-n",
                "127.0.0.1",
                "-verbose",
            ];
            sargs.extend(&flags);
            let mut server = Proc::spawn(&mtt_bin(), &sargs);
            let pin = server.pin().await;
            let saddr = server.listening_addr().await.to_string();
            let mut cargs = vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &saddr,
                "-n",
                "127.0.0.1",
                "-cert-sha256",
                &pin,
                "-verbose",
                "-mux-max-stream",
                "16",
                // Idle sessions close after 1 s (default 10 s), so the descriptor check
                // below need not wait long for them.
                "-mux-idle",
                "1s",
            ];
            cargs.extend(&flags);
            let mut client = Proc::spawn(&mtt_bin(), &cargs);
            let caddr = client.listening_addr().await;
            let (spid, cpid) = (
                server.child.id().expect("pid"),
                client.child.id().expect("pid"),
            );
            let (sbase, cbase) = (Baseline::of(spid), Baseline::of(cpid));
            let start = Instant::now();
            let mut tasks = Vec::with_capacity(tunnels);
            for i in 0..tunnels {
                tasks.push(tokio::spawn(async move {
                    echo_roundtrip(caddr, &random_bytes(32 * 1024 + i % 1000, i as u64)).await
                }));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("{mode}: {e}"));
            }
            eprintln!("{mode}: {tunnels} tunnels in {:?}", start.elapsed());
            // Multiplexed sessions are kept 1 s (-mux-idle) after their last stream, then closed.
            let within = Duration::from_secs(20);
            back_to(cpid, &cbase, &format!("{mode} client"), within).await;
            back_to(spid, &sbase, &format!("{mode} server"), within).await;
            client.signal("TERM");
            server.signal("TERM");
            assert_eq!(client.exit().await.code(), Some(0));
            assert_eq!(server.exit().await.code(), Some(0));
        }
    })
    .await
    .expect("load test exceeded 10 minutes");
}
