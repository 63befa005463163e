//! The bytes of "gun", the gRPC tunnel of Xray and v2fly: each message a gRPC length prefix
//! (a compression flag, then a 4-byte big-endian length) and a protobuf `Hunk { bytes data = 1; }`.
//! Xray's `MultiHunk { repeated bytes data = 1; }` is the same field repeated, and simple-tls's
//! `Bytes` the same field too: one decoder reads them all. Fields of other numbers are skipped,
//! as protobuf says.
//!
//! The decoder is a state machine fed whatever DATA frames bring, in any split: a message's
//! bytes go straight from the frame to the reader, never gathered.

use std::io;
use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// The gRPC prefix: a compression flag and a 4-byte length.
pub const PREFIX: usize = 5;
/// What a message adds to its data at most: the prefix, the field's tag and its length.
pub const OVERHEAD: usize = PREFIX + 1 + 5;
/// The largest message taken: gRPC's default receive limit (4 MiB). A message says its
/// length first; a longer one is refused before any of it is kept.
pub const MAX_MESSAGE: u32 = 4 << 20;

/// The tag of field 1, length-delimited: `data`.
const DATA_TAG: u8 = 0x0a;

/// Appends a message carrying `data` to `out`.
pub fn encode(data: &[u8], out: &mut BytesMut) {
    let len = data.len();
    let body = 1 + varint_len(len as u64) + len;
    out.reserve(PREFIX + body);
    out.put_u8(0);
    out.put_u32(body as u32);
    out.put_u8(DATA_TAG);
    put_varint(len as u64, out);
    out.put_slice(data);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: u64, out: &mut BytesMut) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Where the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a message's prefix; `have` bytes of it so far.
    Prefix { have: usize },
    /// Reading a field's tag (a varint).
    Tag { value: u64, shift: u32 },
    /// Reading the length of field `field`, of wire type 2.
    Len { value: u64, shift: u32, data: bool },
    /// Inside `data`: this many bytes left.
    Data { left: u64 },
    /// Skipping an unknown field's bytes.
    Skip { left: u64 },
    /// Skipping an unknown varint field.
    SkipVarint,
}

/// Reads messages from the bytes of a stream, handing out their data.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    prefix: [u8; PREFIX],
    /// What is left of the message being read, after its prefix.
    left: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Prefix { have: 0 },
            prefix: [0; PREFIX],
            left: 0,
        }
    }
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Decoder {
    /// Whether the stream may end here: between messages.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Prefix { have: 0 }
    }

    /// Reads from `input` until it has data to hand out (at most `max` bytes) or `input` is
    /// used up; returns how much of `input` it used and, within that, the data's range.
    pub fn step(&mut self, input: &[u8], max: usize) -> io::Result<(usize, Option<Range<usize>>)> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Prefix { have } => {
                    let n = (PREFIX - have).min(input.len() - at);
                    self.prefix[have..have + n].copy_from_slice(&input[at..at + n]);
                    at += n;
                    if have + n < PREFIX {
                        self.state = State::Prefix { have: have + n };
                        continue;
                    }
                    if self.prefix[0] != 0 {
                        return Err(bad(
                            "a compressed gRPC message (the tunnel's messages are never compressed)",
                        ));
                    }
                    let len = u32::from_be_bytes([
                        self.prefix[1],
                        self.prefix[2],
                        self.prefix[3],
                        self.prefix[4],
                    ]);
                    if len > MAX_MESSAGE {
                        return Err(bad(format!(
                            "a gRPC message of {len} bytes (at most {MAX_MESSAGE} are taken)"
                        )));
                    }
                    self.left = len.into();
                    self.state = self.next_field();
                }
                State::Tag { value, shift } => {
                    let b = self.take(input[at])?;
                    at += 1;
                    let value = value | u64::from(b & 0x7f) << shift;
                    if b & 0x80 != 0 {
                        self.state = State::Tag {
                            value,
                            shift: varint_shift(shift)?,
                        };
                        continue;
                    }
                    let (field, wire) = (value >> 3, value & 7);
                    self.state = match wire {
                        0 => State::SkipVarint,
                        1 => State::Skip { left: 8 },
                        2 => State::Len {
                            value: 0,
                            shift: 0,
                            data: field == 1,
                        },
                        5 => State::Skip { left: 4 },
                        _ => {
                            return Err(bad(format!(
                                "protobuf wire type {wire} in a tunnel message"
                            )));
                        }
                    };
                    if field == 0 {
                        return Err(bad("protobuf field number 0 in a tunnel message"));
                    }
                    if let State::Skip { left } = self.state
                        && left > self.left
                    {
                        return Err(bad(
                            "a protobuf field cut off by the end of its gRPC message",
                        ));
                    }
                }
                State::Len { value, shift, data } => {
                    let b = self.take(input[at])?;
                    at += 1;
                    let value = value | u64::from(b & 0x7f) << shift;
                    if b & 0x80 != 0 {
                        self.state = State::Len {
                            value,
                            shift: varint_shift(shift)?,
                            data,
                        };
                        continue;
                    }
                    if value > self.left {
                        return Err(bad("a protobuf field longer than its gRPC message"));
                    }
                    self.state = match (data, value) {
                        (_, 0) => self.next_field(),
                        (true, left) => State::Data { left },
                        (false, left) => State::Skip { left },
                    };
                }
                State::SkipVarint => {
                    let b = self.take(input[at])?;
                    at += 1;
                    if b & 0x80 == 0 {
                        self.state = self.next_field();
                    }
                }
                State::Skip { left } => {
                    let n = left.min((input.len() - at) as u64);
                    self.left -= n;
                    at += n as usize;
                    self.state = if n == left {
                        self.next_field()
                    } else {
                        State::Skip { left: left - n }
                    };
                }
                State::Data { left } => {
                    if max == 0 {
                        return Ok((at, None));
                    }
                    let n = left.min((input.len() - at) as u64).min(max as u64);
                    self.left -= n;
                    let range = at..at + n as usize;
                    self.state = if n == left {
                        self.next_field()
                    } else {
                        State::Data { left: left - n }
                    };
                    return Ok((range.end, Some(range)));
                }
            }
        }
        Ok((at, None))
    }

    /// After a field: the next one, or the next message.
    fn next_field(&self) -> State {
        if self.left == 0 {
            State::Prefix { have: 0 }
        } else {
            State::Tag { value: 0, shift: 0 }
        }
    }

    /// One byte of the message's own (tag or length), counted against it.
    fn take(&mut self, b: u8) -> io::Result<u8> {
        if self.left == 0 {
            return Err(bad(
                "a protobuf field cut off by the end of its gRPC message",
            ));
        }
        self.left -= 1;
        Ok(b)
    }
}

fn varint_shift(shift: u32) -> io::Result<u32> {
    if shift >= 63 {
        return Err(bad("a protobuf varint longer than 10 bytes"));
    }
    Ok(shift + 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `input` carries, fed in pieces of `split` bytes and taken `max` at a time.
    fn decode(input: &[u8], split: usize, max: usize) -> io::Result<Vec<u8>> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (used, data) = d.step(rest, max)?;
                if let Some(r) = data {
                    assert!(r.len() <= max);
                    out.extend_from_slice(&rest[r]);
                }
                rest = &rest[used..];
            }
        }
        assert!(d.at_boundary(), "ended inside a message");
        Ok(out)
    }

    /// The bytes of Xray's Hunk as protoc encodes them, and a MultiHunk of three, read in
    /// every split.
    #[test]
    fn hunks_and_multihunks_in_any_split() {
        let mut wire = BytesMut::new();
        encode(b"hello", &mut wire);
        assert_eq!(&wire[..], b"\x00\x00\x00\x00\x07\x0a\x05hello");
        let big = vec![7u8; 300];
        encode(&big, &mut wire);
        assert_eq!(&wire[12..19], b"\x00\x00\x00\x01\x2f\x0a\xac");
        // MultiHunk: one message, data = "ab", "", "cde"; and an unknown field 2 (varint)
        // and field 3 (bytes) skipped.
        wire.extend_from_slice(
            b"\x00\x00\x00\x00\x11\x0a\x02ab\x0a\x00\x10\x96\x01\x1a\x01z\x0a\x03cde",
        );
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"abcde");
        for split in [1, 2, 3, 5, 7, 64, 4096] {
            for max in [1, 3, 1000] {
                assert_eq!(
                    decode(&wire, split, max).expect("decode"),
                    want,
                    "{split} {max}"
                );
            }
        }
        let mut empty = BytesMut::new();
        encode(b"", &mut empty);
        assert_eq!(&empty[..], b"\x00\x00\x00\x00\x02\x0a\x00");
        assert_eq!(decode(&empty, 1, 1).expect("empty"), b"");
    }

    #[test]
    fn refuses_what_is_not_a_tunnel_message() {
        let cases: [(&[u8], &str); 5] = [
            (b"\x01\x00\x00\x00\x01\x00", "compressed"),
            (b"\x00\x00\x40\x00\x01", "at most"),
            (
                b"\x00\x00\x00\x00\x03\x0a\x05ab",
                "longer than its gRPC message",
            ),
            (b"\x00\x00\x00\x00\x02\x0b\x00", "wire type 3"),
            (b"\x00\x00\x00\x00\x02\x02\x00", "field number 0"),
        ];
        for (input, says) in cases {
            let e = decode(input, 3, 10).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
        }
        // A fixed64 field (wire type 1) longer than what is left of its message.
        let e = decode(b"\x00\x00\x00\x00\x03\x09\x01\x02", 1, 1).expect_err("cut");
        assert!(e.to_string().contains("cut off"), "{e}");
        // A message that ends inside a field's tag.
        let e = decode(b"\x00\x00\x00\x00\x01\x0a\x01", 1, 1).expect_err("cut");
        assert!(e.to_string().contains("cut off"), "{e}");
    }
}
