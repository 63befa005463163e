//! smux protocol version 1 frames, as xtaci/smux 1.5 and mos-tls-tunnel speak them: an 8-byte
//! header, `version (1) | command | length (u16, little-endian) | stream id (u32,
//! little-endian)`, then `length` bytes of payload (data frames only).

use std::fmt;

/// Header length.
pub const HEADER: usize = 8;
/// The protocol version spoken (version 2 adds window updates; the original never uses it).
pub const VERSION: u8 = 1;
/// Largest payload this side sends in one frame (the original's `MaxFrameSize`).
pub const MAX_FRAME: usize = 16 * 1024;

/// What a frame does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Opens a stream.
    Syn = 0,
    /// The sender is done with a stream.
    Fin = 1,
    /// Data for a stream.
    Psh = 2,
    /// Keepalive (stream 0).
    Nop = 3,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub cmd: Cmd,
    pub len: u16,
    pub sid: u32,
}

/// Why a header is not one of version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not version 1.
    Version(u8),
    /// A command version 1 does not have.
    Command(u8),
    /// A payload on a frame that carries none (the peer would lose the framing).
    Payload(Cmd, u16),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Version(v) => write!(f, "smux frame of version {v}, not 1"),
            FrameError::Command(c) => write!(f, "smux frame with unknown command {c}"),
            FrameError::Payload(c, n) => write!(f, "smux {c:?} frame with {n} bytes of payload"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Header {
    /// A header for `cmd` on `sid` with `len` bytes of payload.
    pub fn new(cmd: Cmd, sid: u32, len: u16) -> Self {
        Header { cmd, len, sid }
    }

    /// Reads a header; only data frames may announce a payload.
    pub fn parse(b: &[u8; HEADER]) -> Result<Header, FrameError> {
        if b[0] != VERSION {
            return Err(FrameError::Version(b[0]));
        }
        let cmd = match b[1] {
            0 => Cmd::Syn,
            1 => Cmd::Fin,
            2 => Cmd::Psh,
            3 => Cmd::Nop,
            c => return Err(FrameError::Command(c)),
        };
        let len = u16::from_le_bytes([b[2], b[3]]);
        if len > 0 && cmd != Cmd::Psh {
            return Err(FrameError::Payload(cmd, len));
        }
        let sid = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        Ok(Header { cmd, len, sid })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER] {
        let l = self.len.to_le_bytes();
        let s = self.sid.to_le_bytes();
        [VERSION, self.cmd as u8, l[0], l[1], s[0], s[1], s[2], s[3]]
    }
}

/// Whether `b` begins like an smux client's first frame: version 1 opening an odd stream, or a
/// keepalive on stream 0. `None` while fewer than 8 bytes are known.
pub fn looks_like_smux(b: &[u8]) -> Option<bool> {
    let h: &[u8; HEADER] = b.get(..HEADER)?.try_into().ok()?;
    Some(match Header::parse(h) {
        Ok(Header {
            cmd: Cmd::Syn, sid, ..
        }) => sid % 2 == 1,
        Ok(Header {
            cmd: Cmd::Nop,
            sid: 0,
            ..
        }) => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes captured from the original (opening stream 3, "HELLO", closing) read back as
    /// those frames, and encode to the same bytes.
    #[test]
    fn the_originals_bytes() {
        let syn = [0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00];
        let psh = [0x01, 0x02, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00];
        let fin = [0x01, 0x01, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00];
        assert_eq!(Header::parse(&syn), Ok(Header::new(Cmd::Syn, 3, 0)));
        assert_eq!(Header::parse(&psh), Ok(Header::new(Cmd::Psh, 3, 5)));
        assert_eq!(Header::parse(&fin), Ok(Header::new(Cmd::Fin, 3, 0)));
        assert_eq!(Header::new(Cmd::Psh, 3, 5).encode(), psh);
        assert_eq!(looks_like_smux(&syn), Some(true));
        assert_eq!(looks_like_smux(&syn[..7]), None);
        let nop = Header::new(Cmd::Nop, 0, 0).encode();
        assert_eq!(looks_like_smux(&nop), Some(true));
    }

    /// Other versions, unknown commands and payloads on control frames are refused; yamux's
    /// and an application's first bytes are not smux.
    #[test]
    fn refuses_what_version_1_is_not() {
        let mut h = Header::new(Cmd::Syn, 3, 0).encode();
        h[0] = 2;
        assert_eq!(Header::parse(&h), Err(FrameError::Version(2)));
        h[0] = 1;
        h[1] = 4;
        assert_eq!(Header::parse(&h), Err(FrameError::Command(4)));
        let fin_with_payload = [1, 1, 9, 0, 3, 0, 0, 0];
        assert!(matches!(
            Header::parse(&fin_with_payload),
            Err(FrameError::Payload(Cmd::Fin, 9))
        ));
        assert_eq!(looks_like_smux(&[0, 2, 0, 1, 0, 0, 0, 0]), Some(false));
        assert_eq!(looks_like_smux(b"GET / HTTP/1.1\r\n"), Some(false));
        // An even stream is the server's to open; a client never starts with one.
        assert_eq!(looks_like_smux(&[1, 0, 0, 0, 2, 0, 0, 0]), Some(false));
    }
}
