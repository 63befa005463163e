//! Loopback destinations (echo, reply after EOF, paced, any) and the checks that talk through tunnels to them.

use super::*;

/// Echoes every byte; on EOF from the peer, finishes writing and shuts down its side.
pub async fn echo_server() -> SocketAddr {
    serve_dest(|mut s| async move {
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await
    })
    .await
}

/// Reads to EOF, only then replies with the SHA-256 of what it read, then closes.
pub async fn reply_after_eof_server() -> SocketAddr {
    serve_dest(|mut s| async move {
        let mut all = Vec::new();
        s.read_to_end(&mut all).await?;
        s.write_all(&sha256(&all)).await?;
        s.shutdown().await
    })
    .await
}

/// Sends `chunks` chunks of 1 KiB, one every `every`, then closes; never reads.
pub async fn paced_server(chunks: usize, every: Duration) -> SocketAddr {
    serve_dest(move |mut s| async move {
        let mut tick = tokio::time::interval(every);
        for i in 0..chunks {
            tick.tick().await;
            s.write_all(&[i as u8; 1024]).await?;
        }
        s.shutdown().await
    })
    .await
}

/// Accepts forever, running `f` on each connection.
pub async fn serve_dest<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    });
    addr
}

/// Sends `data` through `addr` to an echo destination while reading the echo, half-closes,
/// and checks that exactly `data` came back.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) {
    let s = TcpStream::connect(addr).await.expect("connect");
    echo_over(s, data).await;
}

/// The echo check of [`echo_roundtrip`] over any stream.
pub async fn echo_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(s: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
    };
    let recv = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.expect("read");
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(back.len(), data.len(), "echo length");
    assert_eq!(sha256(&back), sha256(data), "echo content");
}

/// Reads until EOF or error; returns (bytes read, whether it ended by EOF).
pub async fn drain(s: &mut TcpStream) -> (usize, bool) {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (n, true),
            Ok(k) => n += k,
            Err(_) => return (n, false),
        }
    }
}

/// Asserts that the connection to `addr` is closed by the other side within 2 s, unused.
pub async fn closed_promptly(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let start = std::time::Instant::now();
    assert_eq!(drain(&mut s).await.0, 0);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// Like [`echo_over`] without the half-close, for peers that close both ways on EOF
/// (shadowsocks): writes `data` while reading exactly as many bytes back.
pub async fn echo_exact<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(s: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.expect("read echo");
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(sha256(&back), sha256(data), "echo content");
}

/// Writes `ping` and reads the echo; returns the round trip.
pub async fn ping(s: &mut TcpStream) -> Duration {
    let start = std::time::Instant::now();
    s.write_all(b"ping").await.expect("ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.expect("pong");
    assert_eq!(&b, b"ping");
    start.elapsed()
}

/// Whether `addr` still carries tunnels: a connection that echoes `ping` (through an echo
/// destination). A refused connection, or one to whatever else took the port since, is not.
pub async fn still_tunnels(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let attempt = async {
        s.write_all(b"ping").await.ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.ok()?;
        (&b == b"ping").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(()))
    )
}

/// One tunnel through `client` to an echo destination: says hello, stays silent for `quiet`
/// (the subject of the test, not a wait for something), then says bye; whether the bye came
/// back.
pub async fn survives_silence(client: SocketAddr, quiet: Duration) -> bool {
    let mut s = TcpStream::connect(client).await.expect("connect");
    let mut b = [0u8; 5];
    s.write_all(b"hello").await.expect("write");
    s.read_exact(&mut b).await.expect("hello echoed");
    tokio::time::sleep(quiet).await;
    if s.write_all(b"bye!!").await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut b)).await,
        Ok(Ok(_)) if &b == b"bye!!"
    )
}

/// Whether a tunnel through `client` reaches an echo destination now.
pub async fn tunnel_works(client: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(client).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// How long until `check` holds, polling; panics after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
