//! Layer 2, TLS: the client (SNI, the hello of [`super::hello`], the retry for servers
//! without TLS 1.3 or with new ECH keys) and the server (ALPN chosen by what the hello
//! offered; [`server`], with 0-RTT in [`early`]), handshakes bounded in time, and their
//! errors in plain words.

pub mod early;
pub mod server;
mod sessions;

pub use server::{EARLY_DATA_MAX, TlsServer};

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio_rustls::{TlsConnector, client};

use super::hello::{PinMismatch, connector, ech_config, grease, resumption};
use super::io::Io;
use super::options::{Ech, TlsClientOptions};
use super::relay::RELAY_BUFFER;
use crate::{Error, Result};

/// What a client's configuration is built from again: its options, the mode's ALPN, and
/// the store of its sessions (kept across the rebuild).
type Rebuild = (TlsClientOptions, Vec<Vec<u8>>, rustls::client::Resumption);

/// The dialling side of TLS.
#[derive(Clone)]
pub struct TlsClient {
    /// The hello's configuration; with `-ech-config`, replaced by the retry configurations
    /// a server sends when it rejects ECH.
    connector: Arc<std::sync::RwLock<TlsConnector>>,
    /// With GREASE ECH (TLS 1.3 only): the same hello offering TLS 1.2 too, without ECH,
    /// for a server that answered the first with a protocol_version alert (one that speaks
    /// no TLS 1.3, as nginx before 1.23.4 unless told to).
    tls12: Option<TlsConnector>,
    /// The server spoke no TLS 1.3: every handshake offers TLS 1.2 from then on.
    only_tls12: Arc<std::sync::atomic::AtomicBool>,
    /// What a new configuration is built from (with real ECH only).
    rebuild: Option<Arc<Rebuild>>,
    name: ServerName<'static>,
    handshake: Duration,
    /// The sessions kept, with 0-RTT on (`-early-data`).
    early: Option<Arc<super::hello::Sessions>>,
}

impl TlsClient {
    /// Builds the client configuration. `alpn` is what the mode needs (empty in plain mode:
    /// then the hello offers `-alpn`, or `h2`, `http/1.1` as browsers do); handshakes that
    /// take longer than `handshake` fail.
    pub fn new(cfg: &TlsClientOptions, alpn: &[&[u8]], handshake: Duration) -> Result<Self> {
        let name = ServerName::try_from(cfg.server_name.clone()).map_err(|_| {
            Error::usage(format!(
                "-n: '{}' is neither a DNS name nor an IP address",
                cfg.server_name
            ))
        })?;
        let (sessions, kept) = resumption(cfg);
        let (main, tls12) = match (&cfg.hello.ech, cfg.hello.tls12) {
            (Ech::Config(_), true) => {
                return Err(Error::usage(
                    "-tls12 and -ech-config exclude each other: ECH needs TLS 1.3; drop one of them",
                ));
            }
            (_, true) => (connector(cfg, alpn, None, &sessions)?, None),
            (Ech::Grease, false) => (
                connector(cfg, alpn, Some(grease()?), &sessions)?,
                Some(connector(cfg, alpn, None, &sessions)?),
            ),
            (Ech::Config(list), false) => (
                connector(cfg, alpn, Some(ech_config(list)?), &sessions)?,
                None,
            ),
            (Ech::Dns, _) => {
                return Err(Error::usage(
                    "-ech-dns: the ECH configuration was not fetched before TLS was set up",
                ));
            }
        };
        let rebuild = matches!(cfg.hello.ech, Ech::Config(_) | Ech::Dns).then(|| {
            Arc::new((
                cfg.clone(),
                alpn.iter().map(|p| p.to_vec()).collect(),
                sessions,
            ))
        });
        Ok(TlsClient {
            connector: Arc::new(std::sync::RwLock::new(main)),
            tls12,
            only_tls12: Arc::default(),
            rebuild,
            name,
            handshake,
            early: kept.filter(|_| cfg.hello.early_data),
        })
    }

    /// Whether the next handshake resumes a session that takes early data (0-RTT): then the
    /// tunnel's first bytes are worth waiting for, briefly, to ride its first flight.
    pub fn zero_rtt_ready(&self) -> bool {
        self.early
            .as_ref()
            .is_some_and(|s| s.early_ready(&self.name))
    }

    /// Runs the handshake over `io` within the handshake timeout (the ALPN agreed, if any,
    /// is `stream.get_ref().1.alpn_protocol()`). With 0-RTT, resuming, the stream comes back
    /// before anything is sent: what is written first is early data, and the first flush
    /// sends the hello with it and completes the handshake (see [`TlsClient::finish`]).
    pub async fn connect<S: Io>(&self, io: S) -> io::Result<client::TlsStream<S>> {
        use std::sync::atomic::Ordering::Relaxed;
        let connector = match &self.tls12 {
            Some(c) if self.only_tls12.load(Relaxed) => c.clone(),
            _ => self
                .connector
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let mut tls = within(self.handshake, connector.connect(self.name.clone(), io))
            .await
            .map_err(plain_words)?;
        tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
        Ok(tls)
    }

    /// Completes a 0-RTT handshake (one [`TlsClient::connect`] handed back unfinished):
    /// `first`, the tunnel's first bytes, goes out as early data with the hello, and the
    /// handshake is awaited, within the handshake timeout. If the server declined the early
    /// data, they were sent again after it. Nothing to do for a finished handshake (`first`
    /// is then the caller's to write); says whether `first` was sent.
    pub async fn finish<S: Io>(
        &self,
        tls: &mut client::TlsStream<S>,
        first: &[u8],
    ) -> io::Result<bool> {
        use tokio::io::AsyncWriteExt;
        if !tls.get_ref().1.is_handshaking() {
            return Ok(false);
        }
        let send = async {
            tls.write_all(first).await?;
            tls.flush().await
        };
        within(self.handshake, send).await.map_err(plain_words)?;
        let conn = tls.get_ref().1;
        log::debug!(
            "TLS 0-RTT with server {}: {}{}",
            self.name.to_str(),
            agreed(conn),
            if conn.is_early_data_accepted() {
                ", early data accepted"
            } else {
                ", early data declined (sent again after the handshake)"
            }
        );
        Ok(true)
    }

    /// Whether a handshake that failed with `e` is worth one more try on a new connection:
    /// * the server refused TLS 1.3 (a protocol_version alert) and this client can offer
    ///   TLS 1.2 (GREASE ECH, no `-ech-config`): from then on it does, said once;
    /// * the server rejected `-ech-config` and sent retry configurations (authenticated by
    ///   its certificate for the public name): they replace it, said each time.
    pub fn retry(&self, e: &io::Error, server: &str) -> bool {
        use rustls::{AlertDescription, PeerIncompatible};
        use std::sync::atomic::Ordering::Relaxed;
        let tls = e.get_ref().and_then(|i| {
            i.downcast_ref::<rustls::Error>()
                .or_else(|| i.downcast_ref::<Said>().map(|s| &s.tls))
        });
        let Some(tls) = tls else {
            return false;
        };
        match tls {
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
                if self.tls12.is_some() =>
            {
                // Said once; handshakes that were under way meanwhile try again too.
                if !self.only_tls12.swap(true, Relaxed) {
                    log::warn!(
                        "server {server} speaks no TLS 1.3 (it answered with a protocol_version alert): offering TLS 1.2 too from now on, without ECH; enable TLS 1.3 there (nginx: ssl_protocols TLSv1.2 TLSv1.3;), or give this client -tls12 to skip the first try"
                    );
                }
                true
            }
            rustls::Error::PeerIncompatible(
                PeerIncompatible::ServerRejectedEncryptedClientHello(Some(configs)),
            ) => {
                let Some(rebuild) = &self.rebuild else {
                    return false;
                };
                // The list as the server sent it (rustls's codec: no other way to write
                // EchConfigPayload back).
                use rustls::internal::msgs::codec::Codec;
                let mut list = Vec::new();
                configs.encode(&mut list);
                let (cfg, alpn, sessions) = &**rebuild;
                let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
                let fresh =
                    ech_config(&list).and_then(|m| connector(cfg, &alpn, Some(m), sessions));
                match fresh {
                    Ok(c) => {
                        use base64::Engine;
                        log::warn!(
                            "server {server} rejected the ECH configuration and sent another: using it; give -ech-config {} from now on",
                            base64::engine::general_purpose::STANDARD.encode(&list)
                        );
                        *self.connector.write().unwrap_or_else(|p| p.into_inner()) = c;
                        true
                    }
                    Err(why) => {
                        log::warn!(
                            "server {server} rejected the ECH configuration and sent none this client can use ({why})"
                        );
                        false
                    }
                }
            }
            _ => false,
        }
    }
}

/// What a handshake agreed, for a connection's log line: version, key exchange, cipher suite
/// and whether a session was resumed (`TLSv1_3 X25519MLKEM768 TLS13_AES_128_GCM_SHA256`,
/// `… resumed`).
pub fn agreed(conn: &rustls::CommonState) -> String {
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    format!(
        "{} {} {}{}",
        conn.protocol_version()
            .map_or_else(|| "?".into(), |v| format!("{v:?}")),
        conn.negotiated_key_exchange_group()
            .map_or_else(|| "?".into(), |g| format!("{:?}", g.name())),
        conn.negotiated_cipher_suite()
            .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
        if resumed { " resumed" } else { "" },
    )
}

/// Bytes of unsent TLS records a connection may hold (rustls's default is 64 KiB): enough
/// for one relay write or one whole WebSocket frame, so neither is taken in parts, the
/// rest copied aside by the layer above and written again.
const SEND_BUFFER: usize = RELAY_BUFFER + 16 * 1024;

async fn within<T>(limit: Duration, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake timed out after {limit:?}"),
        )),
    }
}

/// A handshake error in plain words: rustls shows our own verifier's errors with `Debug`
/// (`invalid peer certificate: Other(OtherError(PinMismatch(…)))`).
fn plain_words(e: io::Error) -> io::Error {
    use rustls::CertificateError as C;
    let said = e
        .get_ref()
        .and_then(|inner| match inner.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(C::Other(o)) => {
                o.0.downcast_ref::<PinMismatch>().map(ToString::to_string)
            }
            // The most common first mistake: a self-signed server, a client without a pin.
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => Some(
                "invalid peer certificate: UnknownIssuer: the server's certificate is not from a CA this client trusts (self-signed?): use -ca FILE, or -cert-sha256 PIN (printed by mtt cert, or logged by a server that made its own)".into(),
            ),
            rustls::Error::InvalidCertificate(C::NotValidForNameContext { expected, presented }) => {
                let expected = match expected {
                    ServerName::DnsName(d) => d.as_ref().to_string(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                };
                Some(format!(
                    "invalid peer certificate: the certificate is for {}, -n is {expected} (by default the host of -s): give -n one of the certificate's names",
                    presented
                        .iter()
                        .map(|p| p.trim_start_matches("DnsName(\"").trim_end_matches("\")"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerRejectedEncryptedClientHello(retry),
            ) => Some(format!(
                "the server rejected ECH ({}): -ech-config is stale or for another server; fetch its ECHConfigList again (the ech= value of its DNS HTTPS record). The hello was not sent again without ECH",
                if retry.is_some() { "again, with the configuration it sent" } else { "and sent no configuration to retry with" }
            )),
            _ => None,
        });
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match (said, tls) {
        (Some(words), Some(tls)) => io::Error::new(io::ErrorKind::InvalidData, Said { words, tls }),
        _ => e,
    }
}

/// A handshake error in plain words, the library's error kept beside it for
/// [`TlsClient::retry`] (not as its source: reports would repeat it in the library's words).
#[derive(Debug)]
struct Said {
    words: String,
    tls: rustls::Error,
}

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words)
    }
}

impl std::error::Error for Said {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertStore, fingerprint, pem};
    use crate::transport::options::Verify;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    /// Small socket buffers, so that a write fills them long before it ends.
    fn small(socket: &TcpSocket) {
        socket.set_send_buffer_size(8192).expect("SO_SNDBUF");
        socket.set_recv_buffer_size(8192).expect("SO_RCVBUF");
    }

    /// One write of a relay's size is taken whole by either end, even while the socket is
    /// full and the peer reads nothing (rustls's default takes 64 KiB at a time and leaves
    /// the rest for the layer above to copy aside and write again); every byte arrives.
    #[tokio::test]
    async fn a_relay_write_is_taken_whole() {
        let made = pem::self_signed(Some("localhost")).expect("certificate");
        let pin = made.cert_key.fingerprint();
        let limit = Duration::from_secs(10);
        let server = TlsServer::with_extra(
            CertStore::new(made.cert_key).expect("store"),
            &[],
            &[],
            limit,
            true,
        )
        .expect("server config");
        let client = TlsClient::new(
            &TlsClientOptions {
                server_name: "localhost".into(),
                verify: Verify::Pin(fingerprint::parse(&pin).expect("pin")),
                hello: Default::default(),
            },
            &[],
            limit,
        )
        .expect("client config");
        let socket = TcpSocket::new_v4().expect("socket");
        small(&socket);
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            server.negotiate(tcp).await.expect("server handshake").0
        });
        let socket = TcpSocket::new_v4().expect("socket");
        small(&socket);
        let tcp = socket.connect(addr).await.expect("connect");
        let mut c = client.connect(tcp).await.expect("client handshake");
        let mut s = accepting.await.expect("accept task");
        let data: Vec<u8> = (0..RELAY_BUFFER).map(|i| (i * 7 % 253) as u8).collect();
        for (from, to) in [(0, 1), (1, 0)] {
            let (w, r): (&mut dyn Io, &mut dyn Io) = if from == 0 {
                (&mut c, &mut s)
            } else {
                (&mut s, &mut c)
            };
            let n = tokio::time::timeout(limit, w.write(&data))
                .await
                .expect("write in time")
                .expect("write");
            assert_eq!(n, RELAY_BUFFER, "end {from} took {n} bytes of one write");
            let mut got = vec![0u8; RELAY_BUFFER];
            let reading = r.read_exact(&mut got);
            let flushing = w.flush();
            let (read, flushed) =
                tokio::time::timeout(limit, async { tokio::join!(reading, flushing) })
                    .await
                    .expect("transfer in time");
            read.expect("read");
            flushed.expect("flush");
            assert!(got == data, "end {to} received other bytes");
        }
    }
}

#[cfg(test)]
mod compression {
    use super::*;
    use crate::certs::{CertStore, pem, provider};
    use crate::transport::hello::client_config;
    use crate::transport::options::Verify;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A socket that counts the bytes read from it.
    struct Counted(tokio::net::TcpStream, Arc<AtomicUsize>);

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let r = Pin::new(&mut self.0).poll_read(cx, buf);
            self.1
                .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
            r
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Bytes the server sent for one handshake with a client that takes compressed
    /// certificates (`compressed`) or not.
    async fn server_flight(server: &TlsServer, compressed: bool) -> usize {
        let opts = TlsClientOptions {
            server_name: "localhost".into(),
            verify: Verify::Insecure,
            hello: Default::default(),
        };
        let mut client = TlsClient::new(&opts, &[], Duration::from_secs(10)).expect("client");
        if !compressed {
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_ech(grease().expect("grease"))
                .expect("builder");
            let mut c = client_config(builder, &opts, &[]).expect("config");
            c.cert_decompressors = Vec::new();
            client.connector = Arc::new(std::sync::RwLock::new(TlsConnector::from(Arc::new(c))));
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let s = server.clone();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.expect("accept");
            s.negotiate(tcp).await.expect("server handshake")
        });
        let read = Arc::new(AtomicUsize::new(0));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = client
            .connect(Counted(tcp, read.clone()))
            .await
            .expect("client handshake");
        let _server = accepting.await.expect("accept task");
        drop(tls);
        read.load(Ordering::Relaxed)
    }

    /// A server sends its certificate chain compressed (zlib, RFC 8879) to a client that
    /// offers it, as mtt's clients do: fewer bytes on the wire than for one that does not.
    #[tokio::test]
    async fn certificates_travel_compressed() {
        let made = pem::self_signed(Some("localhost")).expect("certificate");
        let server = TlsServer::with_extra(
            CertStore::new(made.cert_key).expect("store"),
            &[],
            &[],
            Duration::from_secs(10),
            true,
        )
        .expect("server config");
        let plain = server_flight(&server, false).await;
        let compressed = server_flight(&server, true).await;
        assert!(
            compressed < plain,
            "the server's flight: {compressed} bytes compressed, {plain} without"
        );
    }
}
