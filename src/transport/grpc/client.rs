//! The client end: one HTTP/2 connection to the server, each tunnel a `POST /<service>/Tun`
//! on a stream of its own. The client's pool ([`crate::transport::mux::MuxPool`]) keeps these
//! connections as it keeps multiplexed sessions: a tunnel takes a stream on a connection with
//! room, or a new connection; an idle one is closed after a while.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::stream::{GrpcStream, io_error, refused};
use super::{CONNECTION_WINDOW, MAX_FRAME, SEND_BUFFER, STREAM_WINDOW, UDP_HEADER};
use crate::error::Step;
use crate::transport::datagram::Kind;
use crate::transport::io::BoxIo;
use crate::transport::mux::{BoxFuture, ClientSession, Dialled};
use crate::{Error, Result};

/// Where a client's calls go.
#[derive(Debug, Clone)]
pub struct Target {
    /// `:authority`: the server's name.
    pub authority: String,
    /// The request path (`/<service>/Tun`).
    pub path: String,
}

/// One HTTP/2 connection to the server.
pub struct GrpcClient {
    send: h2::client::SendRequest<Bytes>,
    target: Arc<Target>,
    /// Cancelled when the connection has ended.
    ended: CancellationToken,
    /// Cancelled to close it.
    stop: CancellationToken,
}

impl GrpcClient {
    /// The HTTP/2 handshake over a dialled connection (TLS with ALPN `h2`, or a plain one
    /// to a proxy that speaks h2c); `ping`: an HTTP/2 PING this often keeps the connection
    /// alive through proxies, and a server silent for two is taken as gone.
    pub async fn start(
        dialled: Dialled,
        target: Arc<Target>,
        ping: Option<Duration>,
    ) -> Result<Arc<dyn ClientSession>> {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(dialled.io)
            .await
            .map_err(|e| Error::tunnel(Step::Grpc, "server", io_error(e)))?;
        let ended = CancellationToken::new();
        let stop = CancellationToken::new();
        let pinger = conn.ping_pong();
        let (done, halt) = (ended.clone(), stop.clone());
        tokio::spawn(async move {
            let keepalive = super::keepalive(pinger, ping);
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        log::debug!("gRPC connection to the server ended: {e}");
                    }
                }
                why = keepalive => {
                    crate::rarely!(
                        Warn,
                        "gRPC connection to the server closed: {why} (the server or the path to it is gone; new tunnels dial again)"
                    );
                }
                _ = halt.cancelled() => {}
            }
            done.cancel();
        });
        Ok(Arc::new(GrpcClient {
            send,
            target,
            ended,
            stop,
        }))
    }
}

impl ClientSession for GrpcClient {
    fn open(&self, kind: Kind) -> BoxFuture<'_, Result<BoxIo>> {
        Box::pin(async move {
            let fail = |e: h2::Error| Error::tunnel(Step::Grpc, "server", io_error(e));
            let send = self.send.clone().ready().await.map_err(fail)?;
            let mut send = send;
            let mut req = http::Request::post(format!(
                "https://{}{}",
                self.target.authority, self.target.path
            ))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, super::USER_AGENT);
            if kind == Kind::Datagrams {
                req = req.header(UDP_HEADER, "1");
            }
            let req = req
                .body(())
                .map_err(|e| Error::tunnel(Step::Grpc, "server", std::io::Error::other(e)))?;
            let (response, stream) = send.send_request(req, false).map_err(fail)?;
            if kind == Kind::Stream {
                return Ok(Box::new(GrpcStream::client(stream, response)) as BoxIo);
            }
            // A datagram tunnel waits for the answer: a server without -udp says no at once.
            let resp = response.await.map_err(fail)?;
            if let Some(why) = refused(resp.status(), resp.headers()) {
                let why = if why.contains("status 12") {
                    "it does not carry UDP (run it with -udp)".to_string()
                } else {
                    why
                };
                let e = std::io::Error::new(std::io::ErrorKind::Unsupported, why);
                return Err(Error::tunnel(Step::Udp, "server", e));
            }
            Ok(Box::new(GrpcStream::answered(stream, resp.into_body())) as BoxIo)
        })
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.ended.cancelled())
    }

    fn close(&self) {
        self.stop.cancel();
    }
}
