//! Fuzzes the decoder of gun messages (gRPC tunnels): any bytes decode to the same data and
//! the same verdict whether they come whole or a byte at a time, never more data than came
//! in, never a panic; and data encoded by the encoder, in messages of any size, decodes to
//! exactly itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mtt::testing::transport::grpc::{Decoder, encode};

/// The data `input` carries, fed in pieces of `split` bytes and taken `max` at a time; the
/// error, if any, and whether it ended between messages.
fn decode(input: &[u8], split: usize, max: usize) -> (Vec<u8>, bool, bool) {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    for piece in input.chunks(split) {
        let mut rest = piece;
        while !rest.is_empty() {
            match d.step(rest, max) {
                Ok((used, data)) => {
                    assert!(used <= rest.len());
                    if let Some(r) = data {
                        assert!(r.len() <= max && r.end <= used);
                        out.extend_from_slice(&rest[r]);
                    }
                    rest = &rest[used..];
                }
                Err(_) => return (out, false, false),
            }
        }
    }
    (out, true, d.at_boundary())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let whole = decode(rest, rest.len().max(1), usize::MAX);
        let bytewise = decode(rest, 1, 1 + mode as usize / 2);
        assert_eq!(whole.1, bytewise.1, "the verdict depends on the split");
        if whole.1 {
            assert_eq!(whole, bytewise, "the data depends on the split");
        } else {
            // Both stop at the first bad byte: what came before it is the same.
            let n = whole.0.len().min(bytewise.0.len());
            assert_eq!(whole.0[..n], bytewise.0[..n]);
        }
        assert!(whole.0.len() <= rest.len());
    } else {
        let size = 1 + mode as usize;
        let mut wire = BytesMut::new();
        for chunk in rest.chunks(size) {
            encode(chunk, &mut wire);
        }
        let (out, ok, boundary) = decode(&wire, 1 + size / 3, 7);
        assert!(ok && boundary);
        assert_eq!(out, rest);
    }
});
