//! In-process mtt servers and clients on 127.0.0.1:0.

use super::*;

/// A running in-process server.
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: Option<String>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

pub fn server_config(dest: SocketAddr, tls: Option<CertSource>, timeout: Duration) -> ServerConfig {
    ServerConfig {
        proxy_protocol: false,
        listen: Listen::Tcp(hp("127.0.0.1:0")),
        dest: hp(dest),
        accept: AcceptOptions {
            trusted: Default::default(),
            tls,
            ws: None,
            grpc: None,
            mux: false,
            timeouts: DEFAULT_TIMEOUTS,
            session_idle: timeout,
            udp: false,
            zero_rtt: true,
        },
        fast_open: false,
        fwmark: None,
        fallback_dns: None,
        drain: Duration::from_secs(30),
        max_conns: 0,
        timeout,
        udp_timeout: Duration::from_secs(60),
    }
}

pub async fn start_server(cfg: ServerConfig) -> Running {
    let server = Server::new(cfg).expect("server");
    let fingerprint = server.fingerprint();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let run = server.run(Listener::from(l), shutdown.clone());
    let done = tokio::spawn(async move { run.await.expect("server ran") });
    Running {
        addr,
        fingerprint,
        shutdown,
        done,
    }
}

pub fn client_config(
    server: SocketAddr,
    name: &str,
    verify: Verify,
    timeout: Duration,
) -> ClientConfig {
    ClientConfig {
        listen: hp("127.0.0.1:0"),
        dial: DialOptions {
            server: hp(server),
            tls: TlsClientOptions {
                server_name: name.into(),
                verify,
                hello: Default::default(),
            },
            ws: None,
            mux: None,
            grpc: None,
            fast_open: false,
            fwmark: None,
            disable_tls: false,
            fallback_dns: None,
            protect: None,
            timeouts: DEFAULT_TIMEOUTS,
        },
        drain: Duration::from_secs(30),
        max_conns: 0,
        timeout,
        udp: None,
    }
}

pub async fn start_client(cfg: ClientConfig) -> Running {
    let client = Client::new(cfg).expect("client");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(client.run(Listener::from(l), shutdown.clone()));
    Running {
        addr,
        fingerprint: None,
        shutdown,
        done,
    }
}

pub fn pin_of(r: &Running) -> Verify {
    Verify::Pin(
        mtt::testing::config::parse_pin(r.fingerprint.as_deref().expect("tls")).expect("pin"),
    )
}

/// A self-signed server → echo, and a client pinned to it; returns the client's address.
pub async fn tunnel_to(dest: SocketAddr, timeout: Duration) -> (Running, Running) {
    let server = start_server(server_config(
        dest,
        Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        timeout,
    ))
    .await;
    let client = start_client(client_config(
        server.addr,
        "127.0.0.1",
        pin_of(&server),
        timeout,
    ))
    .await;
    (server, client)
}

/// A WebSocket server (self-signed) → `dest`, and a pinned client; paths as users give them.
pub async fn wss_tunnel_to(
    dest: SocketAddr,
    timeout: Duration,
    server_path: &str,
    client_path: &str,
) -> (Running, Running) {
    let mut scfg = server_config(
        dest,
        Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        timeout,
    );
    scfg.accept.ws = Some(WsServerOptions::new(PathMatch::new(server_path), None));
    let server = start_server(scfg).await;
    let client = start_client(wss_client_config(
        server.addr,
        pin_of(&server),
        client_path,
        timeout,
    ))
    .await;
    (server, client)
}

pub fn wss_client_config(
    server: SocketAddr,
    verify: Verify,
    path: &str,
    timeout: Duration,
) -> ClientConfig {
    let mut c = client_config(server, "127.0.0.1", verify, timeout);
    c.dial.ws = Some(WsClientOptions {
        path: normalize_path(path),
        host: "127.0.0.1".into(),
        ..Default::default()
    });
    c
}
