//! The WebSocket frame codec: header parsing with the refusals RFC 6455 demands, header
//! encoding, and masking (in place, or while copying a client frame together).

use std::io;

use super::Role;

/// Frames announcing more than this are refused before anything is read of them.
pub const MAX_FRAME: u64 = 64 << 20;

pub(super) const OP_CONT: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
/// Opcode of binary data frames.
pub const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, when masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

fn protocol_error(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket protocol error: {why}"),
    )
}

/// Parses a frame header at the start of `b`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((header, length of the header)))`, or an error for frames this end must refuse.
pub fn parse_header(b: &[u8], role: Role) -> io::Result<Option<(Header, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        return Err(protocol_error(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let opcode = b[0] & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(protocol_error(&format!("unknown opcode {opcode:#x}")));
    }
    let masked = b[1] & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(protocol_error("client frame not masked")),
        Role::Client if masked => return Err(protocol_error("server frame masked")),
        _ => {}
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 => match b.get(2..4) {
            None => return Ok(None),
            Some(x) => (u64::from(u16::from_be_bytes([x[0], x[1]])), 4),
        },
        127 => match b.get(2..10) {
            None => return Ok(None),
            Some(x) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                (u64::from_be_bytes(a), 10)
            }
        },
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(protocol_error("fragmented or oversized control frame"));
    }
    if len > MAX_FRAME {
        return Err(protocol_error(&format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mask = if masked {
        match b.get(at..at + 4) {
            None => return Ok(None),
            Some(m) => {
                at += 4;
                Some([m[0], m[1], m[2], m[3]])
            }
        }
    } else {
        None
    };
    Ok(Some((
        Header {
            fin,
            opcode,
            mask,
            len,
        },
        at,
    )))
}

/// Encodes a final frame header; returns the bytes and their length.
pub fn encode_header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut h = [0u8; 14];
    h[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        h[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        h[at..at + 4].copy_from_slice(&m);
        at += 4;
    }
    (h, at)
}

/// The mask as seen from `offset` bytes into the payload.
pub(super) fn rotated(mask: [u8; 4], offset: u64) -> [u8; 4] {
    let r = (offset % 4) as usize;
    [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ]
}

/// XORs `data` with `mask`, as if `data` started `offset` bytes into the payload.
pub(super) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    fastwebsockets::unmask(data, rotated(mask, offset));
}

/// `dst = src ^ mask`, eight bytes at a time: masking a client frame while building it.
pub(super) fn masked_copy(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut word = [0u8; 8];
        word.copy_from_slice(sc);
        dc.copy_from_slice(&(u64::from_ne_bytes(word) ^ m).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the mask restarts at its first byte.
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ mask[i % 4];
    }
}

/// Client masking keys from the system's CSPRNG, drawn 64 at a time.
#[derive(Default)]
pub(super) struct Masks {
    pool: Vec<u8>,
}

impl Masks {
    pub(super) fn next(&mut self) -> io::Result<[u8; 4]> {
        if self.pool.len() < 4 {
            self.pool.resize(256, 0);
            crate::random::fill(&mut self.pool)?;
        }
        let at = self.pool.len() - 4;
        let m = [
            self.pool[at],
            self.pool[at + 1],
            self.pool[at + 2],
            self.pool[at + 3],
        ];
        self.pool.truncate(at);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let (h, hl) = encode_header(OP_BINARY, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let (p, n) = parse_header(&h[..hl], role).unwrap().unwrap();
                assert_eq!(
                    (p.len, p.mask, p.opcode, p.fin, n),
                    (len as u64, mask, OP_BINARY, true, hl)
                );
                // Every strict prefix asks for more bytes.
                for cut in 0..hl {
                    assert_eq!(parse_header(&h[..cut], role).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let err = |b: &[u8], role| parse_header(b, role).unwrap_err().to_string();
        assert!(err(&[0x82, 0x05], Role::Server).contains("not masked"));
        assert!(err(&[0x82, 0x85, 0, 0, 0, 0], Role::Client).contains("masked"));
        assert!(err(&[0xC2, 0x00], Role::Client).contains("reserved"));
        assert!(err(&[0x83, 0x00], Role::Client).contains("opcode"));
        assert!(err(&[0x09, 0x00], Role::Client).contains("control"));
        assert!(err(&[0x89, 126, 0, 200], Role::Client).contains("control"));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(err(&huge, Role::Client).contains("limit"));
    }

    #[test]
    fn masking_with_offsets_matches_masking_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mask = [9, 8, 7, 6];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut parts = data.clone();
        let (a, b) = parts.split_at_mut(333);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 333);
        assert_eq!(whole, parts);
    }

    #[test]
    fn masked_copy_matches_masking_in_place() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mask = [0xde, 0xad, 0xbe, 0xef];
            let mut want = src.clone();
            apply_mask(&mut want, mask, 0);
            let mut got = vec![0u8; len];
            masked_copy(&mut got, &src, mask);
            assert_eq!(got, want, "len {len}");
        }
    }
}
