//! Fuzzes the reader of datagram frames: arbitrary bytes from a peer must end in datagrams
//! that re-frame to exactly the bytes read, a clean end, or an error; never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtt::testing::transport::udp::{FrameReader, MAX_DATAGRAM};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // A small pipe, so that frames arrive in pieces and batches end at odd places.
        let (mut peer, ours) = tokio::io::duplex(977);
        let feed = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = peer.write_all(&feed).await;
            let _ = peer.shutdown().await;
        });
        let mut rd = FrameReader::new(ours);
        let mut reframed = Vec::new();
        loop {
            let mut out: [&[u8]; 64] = [&[]; 64];
            match rd.next_batch(&mut out).await {
                Ok(0) => {
                    assert_eq!(reframed, data, "a clean end after all the input");
                    break;
                }
                Ok(n) => {
                    for d in &out[..n] {
                        assert!(d.len() <= MAX_DATAGRAM);
                        reframed.extend_from_slice(&(d.len() as u16).to_be_bytes());
                        reframed.extend_from_slice(d);
                    }
                    assert!(data.starts_with(&reframed), "datagrams differ from the input");
                }
                Err(_) => break,
            }
        }
        drop(rd);
        let _ = writer.await;
    });
});
