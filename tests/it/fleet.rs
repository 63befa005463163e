//! A fleet of `mtt mu-server` processes sharing their users through a real `redis-server` on
//! loopback (`-users-redis`): changes made on one server carry tunnels on the others within a
//! second, kicks and replacements reach every server, counters add up across the fleet,
//! Redis going away changes nothing for tunnels (writes answer 503), a missed announcement is
//! repaired, and bad URLs and corrupt entries are refused cleanly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::common::*;
use mtt::testing::transport::options::Verify;

const TOKEN: &str = "fleet-token";
const T: Duration = Duration::from_secs(30);

/// A `redis-server` on a free loopback port, killed when dropped.
struct Redis {
    proc: Proc,
    port: u16,
}

impl Redis {
    /// Starts Redis keeping its data in `dir` (append-only file, fsync on every write).
    async fn start(dir: &Path, port: u16) -> Redis {
        let mut proc = Proc::spawn(
            Path::new("redis-server"),
            &[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &path_str(dir),
            ],
        );
        proc.wait_line("Ready to accept connections").await;
        Redis { proc, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn kill(mut self) {
        self.proc.signal("KILL");
        self.proc.exit().await;
    }

    /// `redis-cli ARGS…`; its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .bounded_output();
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One mu-server process of the fleet.
struct Mu {
    proc: Proc,
    data: SocketAddr,
    control: SocketAddr,
    pin: String,
}

/// The arguments of a server of the fleet on the Redis at `url`, then `extra`.
fn mu_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "mu-server",
        "-b",
        "127.0.0.1:0",
        "-c",
        "127.0.0.1:0",
        "-c-token",
        TOKEN,
        "-users-redis",
        url,
    ];
    args.extend_from_slice(extra);
    args
}

async fn mu(url: &str, extra: &[&str]) -> Mu {
    let mut args = mu_args(url, &["-n", "127.0.0.1"]);
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&mtt_bin(), &args);
    let pin = proc.pin().await;
    let data = proc.listening_addr().await;
    let control = proc.addr_after("controller on ").await;
    Mu {
        proc,
        data,
        control,
        pin,
    }
}

impl Mu {
    /// A client of this server for the user at `path`; its local address.
    async fn client(&self, path: &str) -> (Running, SocketAddr) {
        let verify = Verify::Pin(mtt::testing::config::parse_pin(&self.pin).expect("pin"));
        let c = start_client(wss_client_config(self.data, verify, path, T)).await;
        let addr = c.addr;
        (c, addr)
    }

    async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        api(self.control, method, path, body).await
    }

    async fn put(&self, user: &str, dst: SocketAddr) -> (u16, String) {
        self.api(
            "PUT",
            &format!("/v1/users/{user}"),
            &format!(r#"{{"dst":"{dst}"}}"#),
        )
        .await
    }

    async fn users(&self) -> serde_json::Value {
        let (code, body) = self.api("GET", "/v1/users", "").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("users JSON")
    }

    async fn status(&self) -> serde_json::Value {
        let (code, body) = self.api("GET", "/v1/status", "").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }
}

/// One HTTP/1.1 request to a controller; (status, body).
async fn api(control: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let headers = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    http_request(control, method, path, &headers, body.as_bytes()).await
}

/// An echo destination that also says which it is: every reply starts with `tag`.
async fn tagged_echo(tag: u8) -> SocketAddr {
    serve_dest(move |mut s| async move {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            buf[0] = tag;
            s.write_all(&buf[..n]).await?;
        }
    })
    .await
}

/// The first byte a tunnel through `client` gets back (0 if it is refused).
async fn first_byte(client: SocketAddr) -> u8 {
    let Ok(mut s) = TcpStream::connect(client).await else {
        return 0;
    };
    if s.write_all(b"x").await.is_err() {
        return 0;
    }
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await {
        Ok(Ok(_)) => b[0],
        _ => 0,
    }
}

/// Adds on A carry tunnels on B within 1 s; a removal on B refuses new tunnels on A within
/// 1 s while a live one goes on; a kick on A ends a live tunnel on B; a replacement on C moves
/// new tunnels on A to the new destination.
#[tokio::test]
async fn changes_on_one_server_reach_every_server_within_a_second() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        let (a, b, c) = (
            mu(&redis.url(), &[]).await,
            mu(&redis.url(), &[]).await,
            mu(&redis.url(), &[]).await,
        );
        let echo = echo_server().await;
        let (_ca, via_a) = a.client("/alice").await;
        let (_cb, via_b) = b.client("/alice").await;
        assert!(!tunnel_works(via_b).await, "unknown user refused");

        assert_eq!(a.put("alice", echo).await.0, 200);
        let took = until(Duration::from_secs(1), "add on A seen by B", || {
            tunnel_works(via_b)
        })
        .await;
        eprintln!("an add on A carried a tunnel on B after {took:?}");

        // A live tunnel on A outlives the removal made on B.
        let mut live = TcpStream::connect(via_a).await.expect("connect");
        live.write_all(b"one").await.expect("write");
        let mut buf = [0u8; 3];
        live.read_exact(&mut buf).await.expect("echo");
        assert_eq!(b.api("DELETE", "/v1/users/alice", "").await.0, 200);
        until(Duration::from_secs(1), "removal on B seen by A", || async {
            !tunnel_works(via_a).await
        })
        .await;
        live.write_all(b"two")
            .await
            .expect("live tunnel still writes");
        live.read_exact(&mut buf)
            .await
            .expect("live tunnel still echoes");
        assert_eq!(&buf, b"two");

        // A kick on A ends the live tunnel on B.
        assert_eq!(a.put("alice", echo).await.0, 200);
        until(Duration::from_secs(1), "re-add seen by B", || {
            tunnel_works(via_b)
        })
        .await;
        let mut on_b = TcpStream::connect(via_b).await.expect("connect");
        on_b.write_all(b"abc").await.expect("write");
        on_b.read_exact(&mut buf).await.expect("echo");
        assert_eq!(
            a.api("DELETE", "/v1/users/alice?kick=true", "").await.0,
            200
        );
        let ended = tokio::time::timeout(Duration::from_secs(1), drain(&mut on_b)).await;
        assert!(
            ended.is_ok(),
            "the kick on A ended the tunnel on B within 1 s"
        );

        // A replacement on C sends A's new tunnels to the new destination.
        let (one, two) = (tagged_echo(1).await, tagged_echo(2).await);
        assert_eq!(c.put("alice", one).await.0, 200);
        until(Duration::from_secs(1), "add on C seen by A", || async {
            first_byte(via_a).await == 1
        })
        .await;
        assert_eq!(c.put("alice", two).await.0, 200);
        until(
            Duration::from_secs(1),
            "replacement on C seen by A",
            || async { first_byte(via_a).await == 2 },
        )
        .await;
        for s in [&a, &b, &c] {
            assert_eq!(s.status().await["store"]["state"], "up");
        }
    })
    .await
}

/// Bytes sent through A and through B add up, exactly, in `GET /v1/users` on either server;
/// live tunnels are counted across the fleet.
#[tokio::test]
async fn counters_add_up_across_the_fleet() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        let (a, b) = (mu(&redis.url(), &[]).await, mu(&redis.url(), &[]).await);
        let echo = echo_server().await;
        assert_eq!(a.put("bob", echo).await.0, 200);
        let (_ca, via_a) = a.client("/bob").await;
        let (_cb, via_b) = b.client("/bob").await;
        until(Duration::from_secs(1), "bob on B", || tunnel_works(via_b)).await;
        echo_roundtrip(via_a, &random_bytes(300_000, 1)).await;
        echo_roundtrip(via_b, &random_bytes(200_000, 2)).await;
        // And the 4-byte probe that found bob on B.
        let want = 300_000 + 200_000 + 4;
        for s in [&a, &b] {
            until(Duration::from_secs(3), "fleet totals", || async {
                let u = s.users().await;
                u[0]["bytes_up"].as_u64() == Some(want) && u[0]["bytes_down"].as_u64() == Some(want)
            })
            .await;
        }
        // Live tunnels: one open on each server, counted on either.
        let mut l1 = TcpStream::connect(via_a).await.expect("connect");
        let mut l2 = TcpStream::connect(via_b).await.expect("connect");
        for l in [&mut l1, &mut l2] {
            l.write_all(b"hi").await.expect("write");
            let mut b2 = [0u8; 2];
            l.read_exact(&mut b2).await.expect("echo");
        }
        until(Duration::from_secs(3), "fleet live count", || async {
            b.users().await[0]["connections"].as_u64() == Some(2)
        })
        .await;
    })
    .await
}

/// A quota is enforced on the fleet's sum: two servers carry one user's traffic at once, and
/// both end it once the sum reaches the quota, going past it by at most what the fleet moves
/// in one flush interval; then each refuses the user, and Redis holds the entry and counts.
#[tokio::test]
async fn a_quota_is_spent_across_the_fleet_and_enforced_on_the_sum() {
    use crate::limits::{push, sink};
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        let (a, b) = (mu(&redis.url(), &[]).await, mu(&redis.url(), &[]).await);
        let dst = sink().await;
        // Each server moves at most `rate` for the user; the quota takes about 2 s of both.
        let (quota, rate): (u64, u64) = (4 << 20, 1 << 20);
        let body = format!(
            r#"{{"dst":"{}","quota":{quota},"rate":{rate},"reset":"daily"}}"#,
            dst.addr
        );
        assert_eq!(a.api("PUT", "/v1/users/q", &body).await.0, 200);
        let entry = redis.cli(&["HGET", "mtt:users", "/q"]);
        assert!(entry.contains(&format!(r#""quota":{quota}"#)), "{entry}");
        let (_ca, via_a) = a.client("/q").await;
        let (_cb, via_b) = b.client("/q").await;
        until(Duration::from_secs(2), "/q on B", || async {
            b.users().await.as_array().is_some_and(|u| !u.is_empty())
        })
        .await;
        let (x, y) = tokio::join!(push(via_a, 16 << 20), push(via_b, 16 << 20));
        assert!(x > 0 && y > 0);
        let total = dst.after_ended(2).await;
        // At most one flush interval (1 s) of the fleet's traffic past the quota, plus what
        // one relay buffer in each direction holds on each server.
        let bound = quota + 2 * rate + 2 * 2 * 256 * 1024;
        eprintln!("the fleet moved {total} bytes for a quota of {quota} ({x} and {y} offered)");
        assert!(
            total >= quota && total <= bound,
            "the fleet moved {total} of a quota of {quota} (bound {bound})"
        );
        for s in [&a, &b] {
            until(
                Duration::from_secs(3),
                "over quota on every server",
                || async {
                    let u = &s.users().await[0];
                    u["state"] == "over_quota" && u["used_up"].as_u64().is_some_and(|n| n >= quota)
                },
            )
            .await;
        }
        closed_promptly(via_a).await;
        closed_promptly(via_b).await;
        let counted: u64 = redis
            .cli(&["HGET", "mtt:quota_up", "/q"])
            .trim()
            .parse()
            .expect("count");
        assert!(counted >= quota && counted <= bound, "{counted}");
        // A server that joins later reads the entry's limits from Redis, and the count.
        let c = mu(&redis.url(), &[]).await;
        until(
            Duration::from_secs(3),
            "the third server's count",
            || async {
                let u = &c.users().await[0];
                u["quota"] == quota && u["rate"] == rate && u["state"] == "over_quota"
            },
        )
        .await;
    })
    .await
}

/// Redis killed: tunnels keep flowing and known users' new tunnels are accepted on every
/// server; writes answer 503 and change nothing. Redis restarted on its data: the servers
/// resync, writes work again, and nothing acknowledged before the kill is lost.
#[tokio::test]
async fn a_redis_outage_is_fail_static_and_loses_nothing_acknowledged() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let redis = Redis::start(dir.path(), port).await;
        let url = redis.url();
        let (a, b) = (mu(&url, &[]).await, mu(&url, &[]).await);
        let echo = echo_server().await;
        for i in 0..5 {
            assert_eq!(a.put(&format!("u{i}"), echo).await.0, 200);
        }
        let (_cb, via_b) = b.client("/u4").await;
        until(Duration::from_secs(1), "u4 on B", || tunnel_works(via_b)).await;
        let mut live = TcpStream::connect(via_b).await.expect("connect");
        live.write_all(b"before").await.expect("write");
        let mut buf = [0u8; 6];
        live.read_exact(&mut buf).await.expect("echo");

        redis.kill().await;
        let (code, body) = a.put("late", echo).await;
        assert_eq!(code, 503, "{body}");
        let err: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(
            err["error"]
                .as_str()
                .unwrap_or("")
                .contains("nothing was changed"),
            "{body}"
        );
        let (code, body) = a
            .api(
                "POST",
                "/",
                r#"{"opt":1,"args_bunch":[{"path":"/late2","dst":"127.0.0.1:1"}]}"#,
            )
            .await;
        assert_eq!(code, 503, "compatible API too: {body}");
        assert_eq!(
            a.users().await.as_array().map(Vec::len),
            Some(5),
            "nothing half-applied"
        );
        live.write_all(b"during")
            .await
            .expect("live tunnel goes on");
        live.read_exact(&mut buf)
            .await
            .expect("echo during the outage");
        assert_eq!(&buf, b"during");
        let (_ca, via_a) = a.client("/u0").await;
        assert!(
            tunnel_works(via_a).await,
            "new tunnels of known users are accepted"
        );
        until(
            Duration::from_secs(3),
            "the outage shows in the status",
            || async { b.status().await["store"]["state"] == "unreachable" },
        )
        .await;

        let _redis = Redis::start(dir.path(), port).await;
        for s in [&a, &b] {
            until(Duration::from_secs(8), "back after the restart", || async {
                s.status().await["store"]["state"] == "up"
            })
            .await;
        }
        assert_eq!(a.put("after", echo).await.0, 200);
        until(Duration::from_secs(1), "the new user on B", || async {
            b.users().await.as_array().map(Vec::len) == Some(6)
        })
        .await;
        let paths: Vec<String> = b
            .users()
            .await
            .as_array()
            .expect("list")
            .iter()
            .map(|u| u["path"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(paths, ["/after", "/u0", "/u1", "/u2", "/u3", "/u4"]);
    })
    .await
}

/// A TCP proxy the test can cut: every connection through it is dropped and new ones are
/// refused until it is restored.
struct Cutter {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Cutter {
    async fn to(target: SocketAddr) -> Cutter {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let stop = e.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Cutter { addr, cut, epoch }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut e = self.epoch.lock().expect("lock");
        e.cancel();
        *e = CancellationToken::new();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A server whose Redis connection is cut for a moment misses an announcement; the resync
/// after it repairs the table.
#[tokio::test]
async fn a_missed_announcement_is_repaired_by_the_resync() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        let cutter = Cutter::to(format!("127.0.0.1:{}", redis.port).parse().expect("addr")).await;
        let a = mu(&redis.url(), &[]).await;
        let b = mu(
            &format!("redis://{}/0", cutter.addr),
            &["-users-redis-resync", "1s"],
        )
        .await;
        let echo = echo_server().await;
        let (_cb, via_b) = b.client("/carol").await;
        cutter.cut();
        assert_eq!(a.put("carol", echo).await.0, 200);
        // While cut, B has not heard of it.
        assert!(!tunnel_works(via_b).await);
        cutter.restore();
        until(Duration::from_secs(8), "B repaired", || tunnel_works(via_b)).await;
    })
    .await
}

/// A change this server writes while it is reading the whole table (a resync) is taken
/// after that table, never undone by it: no user vanishes, and no false "went back" line.
#[tokio::test]
async fn a_change_written_during_a_resync_is_not_undone_by_it() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        // A large table: every resync takes a while to read and parse.
        let script =
            "for i = 1, 50000 do redis.call('HSET', KEYS[1], '/u' .. i, ARGV[1]) end return 0";
        let entry = format!(r#"{{"dst":"{}"}}"#, dead_addr());
        redis.cli(&["EVAL", script, "1", "mtt:users", &entry]);
        let mut a = mu(&redis.url(), &["-verbose"]).await;
        let echo = echo_server().await;
        for i in 0..4 {
            // A change made elsewhere and not announced: the next write finds the version
            // ahead and wakes a resync; the write after it lands while that reads.
            redis.cli(&["INCR", "mtt:version"]);
            for user in [format!("v{i}"), format!("w{i}")] {
                let (code, body) = a.put(&user, echo).await;
                assert_eq!(code, 200, "PUT {user}: {body}");
            }
        }
        let listed = a.users().await;
        let paths: Vec<&str> = listed
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|u| u["path"].as_str())
            .collect();
        for i in 0..4 {
            assert!(paths.contains(&format!("/v{i}").as_str()), "/v{i}");
            assert!(paths.contains(&format!("/w{i}").as_str()), "/w{i}");
        }
        a.proc.signal("TERM");
        a.proc.exit().await;
        let lines = a.proc.all_lines().await;
        let resyncs = lines
            .iter()
            .filter(|l| l.contains("user(s) from Redis"))
            .count();
        assert!(
            resyncs >= 4,
            "a resync after each unannounced change: {lines:?}"
        );
        let back: Vec<_> = lines.iter().filter(|l| l.contains("went back")).collect();
        assert!(back.is_empty(), "{back:?}");
    })
    .await
}

/// A Redis that cannot be reached at start is one clear line and a non-zero exit; corrupt
/// entries in Redis are skipped with one line each and never stop a server.
#[tokio::test]
async fn bad_urls_and_corrupt_entries_are_refused_cleanly() {
    bounded(async {
        let url = format!("redis://user:secret@{}/0", dead_addr());
        let mut down = Proc::spawn(&mtt_bin(), &mu_args(&url, &[]));
        assert_eq!(down.exit().await.code(), Some(1));
        while let Some(l) = down.next_line().await {
            down.seen.push(l);
        }
        let said: Vec<&String> = down.seen.iter().filter(|l| l.contains("Redis")).collect();
        assert_eq!(said.len(), 1, "{:?}", down.seen);
        assert!(
            said[0].contains("cannot be reached") && !said[0].contains("secret"),
            "{}",
            said[0]
        );

        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        redis.cli(&["HSET", "mtt:users", "/broken", "not json"]);
        redis.cli(&["HSET", "mtt:users", "/nowhere", r#"{"dst":"no port"}"#]);
        redis.cli(&[
            "HSET",
            "mtt:users",
            "/fine",
            &format!(r#"{{"dst":"{}"}}"#, echo_server().await),
        ]);
        let mut a = mu(&redis.url(), &["-users-redis-resync", "1s"]).await;
        a.proc.wait_line("'/broken'").await;
        a.proc.wait_line("'/nowhere'").await;
        let (_c, via) = a.client("/fine").await;
        assert!(tunnel_works(via).await);
        assert_eq!(a.users().await.as_array().map(Vec::len), Some(1));
        // Resyncs go on (the version changes) and do not repeat the lines.
        let echo = echo_server().await;
        redis.cli(&["INCR", "mtt:version"]);
        let (code, body) = a.put("other", echo).await;
        assert_eq!(code, 200, "{body}");
        let (_c2, via2) = a.client("/other").await;
        assert!(tunnel_works(via2).await);
        tokio::time::timeout(Duration::from_millis(1500), async {
            while let Some(l) = a.proc.next_line().await {
                assert!(!l.contains("'/broken'"), "said again: {l}");
            }
        })
        .await
        .ok();
    })
    .await
}

/// Sends one command to Redis as raw RESP (bytes that are not UTF-8 included); its reply.
async fn redis_raw(port: u16, args: &[&[u8]]) -> Vec<u8> {
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("redis");
    s.write_all(&cmd).await.expect("write");
    let mut reply = vec![0u8; 256];
    let n = s.read(&mut reply).await.expect("reply");
    reply.truncate(n);
    reply
}

/// Connections Redis has accepted so far (`INFO stats`).
fn connections_received(redis: &Redis) -> u64 {
    let info = redis.cli(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

/// One bad value in Redis (a version that is not a number, a user whose value or path is not
/// UTF-8, an unreadable announcement) is skipped with one line and costs no reconnect storm:
/// the server stays up and routes the good users, and the next change sets the version right.
#[tokio::test]
async fn one_bad_value_in_redis_does_not_storm_the_fleet() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let redis = Redis::start(dir.path(), free_port()).await;
        let echo = echo_server().await;
        let dst = format!(r#"{{"dst":"{echo}"}}"#);
        redis.cli(&["HSET", "mtt:users", "/fine", &dst]);
        let mut a = mu(&redis.url(), &["-users-redis-resync", "200ms"]).await;
        let (_c, via) = a.client("/fine").await;
        assert!(tunnel_works(via).await);
        let p = redis.port;
        for cmd in [
            &[&b"SET"[..], b"mtt:version", b"abc"][..],
            &[
                b"HSET",
                b"mtt:users",
                b"/latin1",
                b"{\"dst\":\"caf\xe9:1\"}",
            ],
            &[b"HSET", b"mtt:users", b"/\xff\xfe", dst.as_bytes()],
            &[b"PUBLISH", b"mtt:changes", b"not an announcement"],
        ] {
            let reply = redis_raw(p, cmd).await;
            assert!(
                !reply.starts_with(b"-"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
        }
        a.proc.wait_line("not a number").await;
        // Ten resync intervals: each may read the table, none may reconnect in a loop (before
        // the fix: thousands of connections a second).
        let before = connections_received(&redis);
        tokio::time::sleep(Duration::from_secs(2)).await; // the window measured
        let opened = connections_received(&redis) - before;
        assert!(opened <= 3, "{opened} new Redis connections in 2 s");
        assert_eq!(a.status().await["store"]["state"], "up");
        assert!(tunnel_works(via).await, "the good user still routes");
        a.proc.wait_line("'/latin1'").await;
        // A change through the controller writes a number again, and is followed.
        let other = echo_server().await;
        let (code, body) = a.put("other", other).await;
        assert_eq!(code, 200, "{body}");
        let v = redis.cli(&["GET", "mtt:version"]);
        assert!(v.trim().parse::<u64>().is_ok(), "version now '{v}'");
        let (_c2, via2) = a.client("/other").await;
        until(Duration::from_secs(5), "the new user routes", || {
            tunnel_works(via2)
        })
        .await;
    })
    .await
}

/// With Redis down at start, a server that keeps a snapshot starts from it and routes its
/// users; one without refuses to start (see above).
#[tokio::test]
async fn a_server_starts_from_its_snapshot_while_redis_is_down() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let snap = dir.path().join("users.snapshot.json");
        let redis = Redis::start(dir.path(), free_port()).await;
        let url = redis.url();
        let echo = echo_server().await;
        {
            let a = mu(
                &url,
                &[
                    "-users-redis-snapshot",
                    &path_str(&snap),
                    "-users-redis-resync",
                    "1s",
                ],
            )
            .await;
            let (code, body) = a.put("dave", echo).await;
            assert_eq!(code, 200, "{body}");
            until(Duration::from_secs(3), "snapshot written", || async {
                std::fs::read_to_string(&snap).is_ok_and(|t| t.contains("/dave"))
            })
            .await;
        }
        redis.kill().await;
        let mut b = mu(&url, &["-users-redis-snapshot", &path_str(&snap)]).await;
        b.proc.wait_line("starting from the snapshot").await;
        let (_c, via) = b.client("/dave").await;
        assert!(tunnel_works(via).await);
        assert_eq!(b.status().await["store"]["state"], "unreachable");
        let (code, _) = b.put("eve", echo).await;
        assert_eq!(code, 503);
        // A snapshot given but never written (Redis never answered): the line says so,
        // rather than advising the flag that was given.
        let never = dir.path().join("never.json");
        let never = path_str(&never);
        let out = tokio::process::Command::new(mtt_bin())
            .args(mu_args(&url, &["-users-redis-snapshot", &never]))
            .bounded_output()
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("does not exist yet"), "{err}");
        assert!(!err.contains("give -users-redis-snapshot"), "{err}");
    })
    .await
}

/// `rediss://`: the fleet's Redis over TLS, trusted through `-users-redis-ca`; without it the
/// private certificate is refused at start, in one line.
#[tokio::test]
async fn redis_over_tls_with_a_private_ca() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let (_certs, cert, key, _) = self_signed_files("127.0.0.1");
        let port = free_port();
        let mut redis = Proc::spawn(
            Path::new("redis-server"),
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &path_str(&cert),
                "--tls-key-file",
                &path_str(&key),
                "--tls-ca-cert-file",
                &path_str(&cert),
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--dir",
                &path_str(dir.path()),
            ],
        );
        redis.wait_line("Ready to accept connections").await;
        let url = format!("rediss://127.0.0.1:{port}/0");

        let mut untrusted = Proc::spawn(&mtt_bin(), &mu_args(&url, &[]));
        assert_eq!(untrusted.exit().await.code(), Some(1));
        untrusted.wait_line("Redis cannot be reached").await;

        let a = mu(&url, &["-users-redis-ca", &path_str(&cert)]).await;
        let echo = echo_server().await;
        assert_eq!(a.put("tls", echo).await.0, 200);
        let (_c, via) = a.client("/tls").await;
        assert!(tunnel_works(via).await);
        assert_eq!(a.status().await["store"]["state"], "up");
    })
    .await
}

/// A relay to `first` for its first connection and to `rest` for every later one.
async fn switching_relay(first: SocketAddr, rest: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut to = first;
        while let Ok((mut s, _)) = l.accept().await {
            let target = std::mem::replace(&mut to, rest);
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    addr
}

/// A client resumes its TLS session on another server of the fleet: the servers seal
/// session tickets with keys they share through Redis (made by the first that asks, one
/// per hour). The client's first tunnel reaches A (a full handshake), the next ones B,
/// which resumes them with A's tickets; a server of another Redis cannot (full handshakes).
#[tokio::test]
async fn a_session_resumes_on_another_server_of_the_fleet() {
    bounded(async {
        let (dir, other_dir) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (redis, other) = (
            Redis::start(dir.path(), free_port()).await,
            Redis::start(other_dir.path(), free_port()).await,
        );
        let (_certs, cert, key, pin) = self_signed_files("127.0.0.1");
        let (cert, key) = (path_str(&cert), path_str(&key));
        let same_cert = ["-cert", cert.as_str(), "-key", key.as_str(), "-verbose"];
        let spawn = |url: String| Proc::spawn(&mtt_bin(), &mu_args(&url, &same_cert));
        let mut servers = Vec::new();
        for url in [redis.url(), redis.url(), other.url()] {
            let mut proc = spawn(url);
            let data = proc.listening_addr().await;
            let control = proc.addr_after("controller on ").await;
            servers.push((proc, data, control));
        }
        let echo = echo_server().await;
        for (_, _, control) in &servers {
            let (code, body) = api(
                *control,
                "PUT",
                "/v1/users/u",
                &format!(r#"{{"dst":"{echo}"}}"#),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
        let verify = || Verify::Pin(mtt::testing::config::parse_pin(&pin).expect("pin"));
        for (rest, should_resume) in [(1, true), (2, false)] {
            let relay = switching_relay(servers[0].1, servers[rest].1).await;
            let client = start_client(wss_client_config(relay, verify(), "/u", T)).await;
            for i in 0..3 {
                echo_roundtrip(client.addr, &random_bytes(8 * 1024, i)).await;
            }
            drop(client);
            // Its first handshake holds A's ticket (the second, its own, resumes anyway).
            let resumed = servers[rest].0.resumptions().await;
            assert_eq!(resumed.len(), 2, "server {rest}: {resumed:?}");
            let first = if should_resume {
                Handshake::Resumed
            } else {
                Handshake::Full
            };
            assert_eq!(resumed[0], first, "server {rest}: {resumed:?}");
        }
        assert_eq!(
            servers[0].0.resumptions().await,
            [Handshake::Full, Handshake::Full],
            "server A"
        );
        redis.kill().await;
        other.kill().await;
    })
    .await;
}
