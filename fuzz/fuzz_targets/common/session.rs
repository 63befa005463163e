//! The shared body of the session fuzz targets: arbitrary bytes from a client must end in
//! streams that read to their end or fail, and a session that ends; never a panic or a hang.

use std::time::Duration;

use mtt::testing::transport::mux::{Quiet, ServerSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Feeds `data` to the server end of a session made by `start` over an in-memory pipe.
pub fn run(data: &[u8], start: impl FnOnce(mtt::testing::transport::BoxIo, Quiet) -> Box<dyn ServerSession>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let feed = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = peer.write_all(&feed).await;
            let _ = peer.shutdown().await;
            // Take whatever the session answers (closes, keepalives) so it never blocks on us.
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let quiet = Quiet {
            first: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            ping: None,
        };
        let mut session = start(Box::new(ours), quiet);
        let mut readers = Vec::new();
        let bounded = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(mut s)) = session.next().await {
                readers.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out).await;
                }));
            }
        })
        .await;
        assert!(bounded.is_ok(), "the session did not end after its input did");
        drop(session);
        for r in readers {
            let _ = r.await;
        }
        let _ = writer.await;
    });
}
