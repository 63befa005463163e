//! Windows only, under Wine (`packaging/test-cross x86_64-pc-windows-gnu`): what only Windows
//! has or lacks. mtt.exe as a service of the service manager (`sc`), a users file another
//! program holds open, and the Unix-only flags refused by name. The foreign binary and its
//! helpers are `cross`'s.

use std::net::SocketAddr;
use std::time::Duration;

use super::cross::{
    LiveTunnel, cross, eight_transfers, foreign_path, sip003_env, spawn, spawn_foreign, windows,
};
use crate::common::*;

/// `RUNNER PROGRAM ARGS…` (Wine's own programs: `sc`, `cmd`), bounded; its status and output.
async fn runner_output(args: &[&str]) -> (bool, String) {
    let (runner, _) = cross();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&runner)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} within 30 s"))
    .expect("run the runner");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `mtt.exe` as a service of the service manager (`sc create`, `sc start`):
/// it serves; `sc stop` drains it as Ctrl-C does (the live tunnel finishes intact) and the
/// manager sees it stopped.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn service_stop_drains() {
    assert!(
        windows(),
        "a Windows-only test: run it with a Windows binary"
    );
    bounded(async {
        let (_certs, cert, key, fp) = self_signed_files("127.0.0.1");
        let echo = echo_server().await;
        let port = free_port();
        let name = format!("mtt-test-{port}");
        let bin = foreign_path(&cross().1);
        let command = format!(
            "{bin} server -b 127.0.0.1:{port} -d {echo} -cert {} -key {}",
            foreign_path(&cert),
            foreign_path(&key)
        );
        let (ok, text) = runner_output(&["sc", "create", &name, "binPath=", &command]).await;
        assert!(ok, "sc create: {text}");
        let served = async {
            let (ok, text) = runner_output(&["sc", "start", &name]).await;
            assert!(ok, "sc start: {text}");
            let server = format!("127.0.0.1:{port}");
            wait_listening(server.parse().expect("addr")).await;
            let mut client = Proc::client(&server, &fp, &[]);
            let local = client.listening_addr().await;
            eight_transfers(local).await;
            let live = LiveTunnel::open(local, 11).await;
            let (ok, text) = runner_output(&["sc", "stop", &name]).await;
            assert!(ok, "sc stop: {text}");
            live.finish("after sc stop").await;
            loop {
                let (_, text) = runner_output(&["sc", "query", &name]).await;
                if text.contains("STOPPED") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        served.await;
        let (ok, text) = runner_output(&["sc", "delete", &name]).await;
        assert!(ok, "sc delete: {text}");
    })
    .await;
}

/// A users file that another program holds open (sharing reading and writing,
/// not deletion, as editors and scanners do) cannot be replaced: the change is refused with
/// the file's name and what to do, and nothing is lost, on disk or in the table; once the
/// file is let go, the same change is made.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn a_users_file_held_open_refuses_the_change_and_keeps_both() {
    assert!(
        windows(),
        "a Windows-only test: run it with a Windows binary"
    );
    let hold = std::env::var("MTT_WINE_HOLD").expect("MTT_WINE_HOLD: packaging/test-cross sets it");
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let users = dir.path().join("users.json");
        let file = foreign_path(&users);
        let args = [
            "mu-server",
            "-b",
            "127.0.0.1:0",
            "-c",
            "127.0.0.1:0",
            "-c-token",
            "t",
        ];
        let mut mu = spawn(true, &[&args[..], &["-users-file", &file]].concat());
        let control = mu.addr_after("controller on ").await;
        let auth = "Authorization: Bearer t\r\n";
        let put = |path: &'static str| async move {
            let body = br#"{"dst":"127.0.0.1:9"}"#;
            http_request(control, "PUT", &format!("/v1/users/{path}"), auth, body).await
        };
        assert_eq!(put("a").await.0, 200);
        let before = std::fs::read_to_string(&users).expect("users file");
        let (runner, _) = cross();
        let mut holder = Proc::spawn(&runner, &[hold.as_str(), &file]);
        holder.wait_line("held").await;
        let (code, text) = put("b").await;
        assert_eq!(code, 500, "{text}");
        assert!(
            text.contains("users.json") && text.contains("holds it open"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&users).expect("users file"), before);
        let (_, list) = http_request(control, "GET", "/v1/users", auth, b"").await;
        assert!(list.contains("/a") && !list.contains("/b"), "{list}");
        drop(holder.child.stdin.take());
        assert_eq!(holder.exit().await.code(), Some(0));
        assert_eq!(put("b").await.0, 200);
        let after = std::fs::read_to_string(&users).expect("users file");
        assert!(after.contains("/a") && after.contains("/b"), "{after}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "only the users file: {left:?}");
    })
    .await;
}

/// What exists only on Unix is refused at start with one line naming the flag
/// (exit 2), not half-run: `-bind-unix`, `-fwmark`, and the SIP003 option `V`.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn unix_only_flags_are_refused_by_name() {
    assert!(
        windows(),
        "a Windows-only test: run it with a Windows binary"
    );
    bounded(async {
        let refused = |args: &'static [&'static str],
                       env: Vec<(String, String)>,
                       flag: &'static str| async move {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut p = spawn_foreign(&cross().1, args, &env);
            let code = p.exit().await.code();
            let lines = p.all_lines().await;
            assert_eq!(code, Some(2), "{flag}: {lines:?}");
            assert!(lines.iter().any(|l| l.contains(flag)), "{flag}: {lines:?}");
        };
        let unix = &[
            "server",
            "-d",
            "127.0.0.1:9",
            "-n",
            "127.0.0.1",
            "-bind-unix",
            "-b",
            "mtt.sock",
        ];
        refused(unix, vec![], "-bind-unix").await;
        let mark = &[
            "server",
            "-d",
            "127.0.0.1:9",
            "-n",
            "127.0.0.1",
            "-b",
            "127.0.0.1:0",
            "-fwmark",
            "7",
        ];
        refused(mark, vec![], "-fwmark").await;
        let any: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let pin = "ab".repeat(32);
        let env = sip003_env(any, any, &format!("V;n=x;cert-sha256={pin}"));
        refused(&["client"], env, "-V").await;
    })
    .await;
}

/// A mu-server given neither `-c-token` nor `-users-file`, with no HOME (as on Windows),
/// makes its token in `%LOCALAPPDATA%\mtt`, says where, and answers to it.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn a_made_token_goes_to_local_app_data() {
    assert!(
        windows(),
        "a Windows-only test: run it with a Windows binary"
    );
    let prefix = std::env::var("WINEPREFIX").expect("WINEPREFIX: packaging/test-cross sets it");
    bounded(async {
        let args = ["mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0"];
        // Empty is unset for mtt; Proc sets XDG_STATE_HOME, and Wine passes HOME through.
        let env = [("HOME", ""), ("XDG_STATE_HOME", "")];
        let mut mu = spawn_foreign(&cross().1, &args, &env);
        let control = mu.addr_after("controller on ").await;
        // Made now ("the controller's token is in …"), or left by an earlier run ("from …").
        let line = mu.wait_line("AppData").await;
        let at = line.find("C:\\").expect("a Windows path in the line");
        let path = line[at..].split_whitespace().next().expect("path");
        let path = path.trim_end_matches([',', ';', '.', ':']);
        assert!(
            path.ends_with("\\AppData\\Local\\mtt\\controller.token"),
            "{line}"
        );
        let linux = format!("{prefix}/drive_c/{}", path[3..].replace('\\', "/"));
        let token = std::fs::read_to_string(&linux).expect("the token file");
        let auth = format!("Authorization: Bearer {}\r\n", token.trim());
        let (code, text) = http_request(control, "GET", "/v1/users", &auth, b"").await;
        assert_eq!(code, 200, "{text}");
        std::fs::remove_file(&linux).expect("remove the made token");
    })
    .await;
}
