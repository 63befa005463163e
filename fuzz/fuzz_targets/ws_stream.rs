//! Fuzzes the WebSocket byte-stream adapter: arbitrary bytes from a client must end in data,
//! EOF or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtt::testing::transport::ws::{Role, WsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
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
            // Keep reading what the stream answers (pongs) so it never blocks on us.
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let mut ws = WsStream::new(ours, Role::Server, &[]);
        let mut out = Vec::new();
        let _ = ws.read_to_end(&mut out).await;
        drop(ws);
        let _ = writer.await;
    });
});
