//! Faults between client and server, through the binary in every mode (tls, wss, mux,
//! wss+mux): a server killed with SIGKILL in the middle of a transfer, and a lossy, delaying
//! link in a network namespace this test makes (tc netem where the kernel has it, otherwise a
//! token-bucket queue plus nftables' random drop), where every byte must still arrive intact.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODES: [(&str, &[&str]); 4] = [
    ("tls", &[]),
    ("wss", &["-wss", "-wss-path", "/f"]),
    ("mux", &["-mux"]),
    ("wss+mux", &["-wss", "-wss-path", "/f", "-mux"]),
];

fn server_args<'a>(listen: &'a str, dest: &'a str, mode: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "server",
        "-b",
        listen,
        "-d",
        dest,
        "-n",
        "localhost",
        "-verbose",
    ];
    a.extend_from_slice(mode);
    a
}

async fn spawn_client(server: SocketAddr, pin: &str, mode: &[&str]) -> (Proc, SocketAddr) {
    let server = server.to_string();
    let mut args = vec![
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &server,
        "-n",
        "localhost",
        "-cert-sha256",
        pin,
        "-verbose",
    ];
    args.extend_from_slice(mode);
    let mut p = Proc::spawn(&mtt_bin(), &args);
    let addr = p.listening_addr().await;
    (p, addr)
}

/// kill -9 of the server while data flows both ways: the client closes the local connection
/// within 3 s, and once the server is back on its port new connections work.
#[tokio::test]
async fn server_killed_mid_transfer_closes_local_connections_and_recovers() {
    bounded(async {
        let echo = echo_server().await.to_string();
        for (name, mode) in MODES {
            let (_dir, cert, key, pin) = self_signed_files("localhost");
            let (cert, key) = (path_str(&cert), path_str(&key));
            let mut args = server_args("127.0.0.1:0", &echo, mode);
            args.extend_from_slice(&["-cert", &cert, "-key", &key]);
            let mut server = Proc::spawn(&mtt_bin(), &args);
            let listen = server.listening_addr().await;
            let (client, local) = spawn_client(listen, &pin, mode).await;

            let conn = TcpStream::connect(local).await.expect("connect");
            let (mut rd, mut wr) = conn.into_split();
            let writer = tokio::spawn(async move {
                let chunk = random_bytes(256 * 1024, 9);
                while wr.write_all(&chunk).await.is_ok() {}
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < 4 << 20 {
                let n = rd.read(&mut buf).await.expect("echo flows before the kill");
                assert!(n > 0, "{name}: ended before the kill");
                got += n;
            }
            server.signal("KILL");
            server.exit().await;
            let killed = Instant::now();
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let took = killed.elapsed();
            assert!(
                took < Duration::from_secs(3),
                "{name}: closed after {took:?}"
            );
            writer.await.expect("writer");

            // Back on the port it had, which the client dials.
            let again = listen.to_string();
            args[2] = &again;
            let mut server = Proc::spawn(&mtt_bin(), &args);
            server.wait_line("server listening on").await;
            echo_roundtrip(local, &random_bytes(512 * 1024, 10)).await;
            eprintln!("{name}: local connection closed {took:?} after kill -9; recovered");
            drop(client);
            server.signal("TERM");
            server.exit().await;
        }
    })
    .await;
}

/// A destination that resets each connection (RST, not FIN) once it has read the first
/// bytes: in every mode the client closes the local connection at once, and the tunnel
/// processes stay up for the next connection.
#[tokio::test]
async fn a_destination_reset_closes_the_local_connection_promptly() {
    bounded(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dest = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        // SO_LINGER 0: close sends RST.
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    }
                });
            }
        });
        for (name, mode) in MODES {
            let listen = "127.0.0.1:0";
            let mut server = Proc::spawn(&mtt_bin(), &server_args(listen, &dest, mode));
            let addr = server.listening_addr().await;
            let pin = server.pin().await;
            let (client, local) = spawn_client(addr, &pin, mode).await;
            for round in 0..2 {
                let mut s = TcpStream::connect(local).await.expect("connect");
                s.write_all(b"x").await.expect("write");
                let start = Instant::now();
                let (n, _) = drain(&mut s).await;
                assert_eq!(n, 0, "{name}: nothing comes back from a reset");
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "{name} round {round}: closed after {:?}",
                    start.elapsed()
                );
            }
            drop(client); // and with it any idle mux session the server would wait for
            server.signal("TERM");
            assert_eq!(
                server.exit().await.code(),
                Some(0),
                "{name}: server survived"
            );
        }
    })
    .await;
}

/// A network namespace joined to this one by a veth pair; deleted (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
    outer: IpAddr,
    inner: IpAddr,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).bounded_output();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

impl Netns {
    fn new() -> Netns {
        let uid = must(&["id", "-u"]);
        assert_eq!(
            uid.trim(),
            "0",
            "this test makes a network namespace and needs root (as CI has)"
        );
        let pid = std::process::id();
        let (b, c) = (200 + (pid / 250) % 50, pid % 250);
        let ns = Netns {
            name: format!("mtt-faults-{pid}"),
            host_if: format!("mttf{pid}a"),
            inner_if: format!("mttf{pid}b"),
            outer: format!("10.{b}.{c}.1").parse().expect("ip"),
            inner: format!("10.{b}.{c}.2").parse().expect("ip"),
        };
        must(&["ip", "netns", "add", &ns.name]);
        must(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ]);
        must(&["ip", "link", "set", &ns.inner_if, "netns", &ns.name]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.outer),
            "dev",
            &ns.host_if,
        ]);
        must(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.inner),
            "dev",
            &ns.inner_if,
        ]);
        ns.exec(&["ip", "link", "set", &ns.inner_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend_from_slice(args);
        must(&a)
    }

    /// Impairs both directions of the veth link. Returns how: "netem" (20 ms delay, 2% loss
    /// each way) or "tbf+nft" (a 200 Mbit/s token bucket queueing up to 30 ms, and 2% of TCP
    /// packets dropped at random each way) where the kernel lacks netem.
    fn impair(&self) -> &'static str {
        let netem = ["netem", "delay", "20ms", "5ms", "loss", "2%"];
        let host: Vec<&str> = ["tc", "qdisc", "add", "dev", &self.host_if, "root"]
            .into_iter()
            .chain(netem)
            .collect();
        match run(&host) {
            Ok(_) => {
                let mut inner = vec!["ip", "netns", "exec", &self.name];
                inner.extend(["tc", "qdisc", "add", "dev", &self.inner_if, "root"]);
                inner.extend(netem);
                must(&inner);
                "netem"
            }
            Err(e) => {
                assert!(e.contains("qdisc kind is unknown"), "{e}");
                let tbf = ["tbf", "rate", "200mbit", "burst", "64kb", "latency", "30ms"];
                for (dev, inside) in [(&self.host_if, false), (&self.inner_if, true)] {
                    let mut a = vec!["tc", "qdisc", "add", "dev", dev.as_str(), "root"];
                    a.extend(tbf);
                    if inside {
                        let mut b = vec!["ip", "netns", "exec", &self.name];
                        b.extend(a);
                        must(&b);
                    } else {
                        must(&a);
                    }
                }
                self.exec(&["nft", "add", "table", "inet", "impair"]);
                for (chain, hook) in [("in", "input"), ("out", "output")] {
                    self.exec(&[
                        "nft",
                        "add",
                        "chain",
                        "inet",
                        "impair",
                        chain,
                        &format!("{{ type filter hook {hook} priority 0; }}"),
                    ]);
                    self.exec(&[
                        "nft", "add", "rule", "inet", "impair", chain, "iifname", "!=", "lo",
                        "oifname", "!=", "lo", "meta", "l4proto", "tcp", "numgen", "random", "mod",
                        "100", "<", "2", "counter", "drop",
                    ]);
                }
                "tbf+nft"
            }
        }
    }

    /// Packets the impairment dropped so far, summed over both directions.
    fn dropped(&self, how: &str) -> u64 {
        let sum_after = |text: &str, key: &str| -> u64 {
            text.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] == key)
                .filter_map(|w| w[1].trim_end_matches(',').parse::<u64>().ok())
                .sum()
        };
        if how == "netem" {
            let host = must(&["tc", "-s", "qdisc", "show", "dev", &self.host_if]);
            let inner = self.exec(&["tc", "-s", "qdisc", "show", "dev", &self.inner_if]);
            sum_after(&host, "dropped") + sum_after(&inner, "dropped")
        } else {
            sum_after(
                &self.exec(&["nft", "list", "table", "inet", "impair"]),
                "packets",
            )
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// An echo server on `ip` (the test's side of the veth link).
async fn echo_on(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Client here, server inside the namespace, destination back here: each tunnel crosses the
/// impaired link twice each way. 4 concurrent 1 MiB echoes per mode, hashed.
#[tokio::test]
async fn transfers_complete_intact_over_a_lossy_delaying_link() {
    bounded(async {
        let ns = Netns::new();
        let how = ns.impair();
        let echo = echo_on(ns.outer).await.to_string();
        let ip = format!("{}:0", ns.inner);
        let (bin, nsname) = (path_str(&mtt_bin()), ns.name.clone());
        let mut report = Vec::new();
        for (name, mode) in MODES {
            let mut args = vec!["netns", "exec", &nsname, &bin];
            args.extend(server_args(&ip, &echo, mode));
            let mut server = Proc::spawn(std::path::Path::new("ip"), &args);
            let addr = server.listening_addr().await;
            let pin = server.pin().await;
            let (client, local) = spawn_client(addr, &pin, mode).await;
            let start = Instant::now();
            let mut jobs = Vec::new();
            for i in 0..4u64 {
                jobs.push(tokio::spawn(async move {
                    echo_roundtrip(local, &random_bytes(1 << 20, 100 + i)).await;
                }));
            }
            for j in jobs {
                j.await.expect("an echo through the impaired link");
            }
            report.push(format!("{name} {:?}", start.elapsed()));
            drop(client);
            server.signal("TERM");
            server.exit().await;
        }
        let dropped = ns.dropped(how);
        eprintln!("impairment {how}: {dropped} packets dropped; {report:?}");
        assert!(
            dropped > 0,
            "the link lost nothing: the test would prove nothing"
        );
    })
    .await;
}
