//! Mux.Cool frames, as v2ray (v2fly/v2ray-core `common/mux`, v2ray-plugin's multiplexing) and
//! Xray write them: a big-endian `u16` metadata length (at most 512), the metadata — session
//! id (`u16`), status (New 1, Keep 2, End 3, KeepAlive 4), options (bit 0: data follows, bit 1:
//! error), and for New the network (TCP 1, UDP 2), port (`u16`) and address (type 1: IPv4, 2:
//! a length-prefixed domain, 3: IPv6) — then, with the data option, a big-endian `u16` length
//! and that many bytes. Xray may append more to New's metadata (XUDP's global id): ignored.

use std::fmt;

/// The largest metadata a frame may announce (v2ray refuses more: "invalid metalen").
pub const MAX_META: usize = 512;

/// What a frame does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Opens a stream.
    New = 1,
    /// Carries a stream's data.
    Keep = 2,
    /// Ends a stream.
    End = 3,
    /// Keeps the connection alive.
    KeepAlive = 4,
}

/// Option bit: data follows the metadata.
pub const OPT_DATA: u8 = 0x01;
/// Option bit: the stream ended in error.
pub const OPT_ERROR: u8 = 0x02;
/// Network of a New frame: TCP.
pub const NET_TCP: u8 = 1;
/// Network of a New frame: UDP.
pub const NET_UDP: u8 = 2;

/// A frame's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The stream (v2ray calls it the session).
    pub sid: u16,
    /// What the frame does.
    pub status: Status,
    /// [`OPT_DATA`], [`OPT_ERROR`].
    pub opt: u8,
    /// For New: [`NET_TCP`] or [`NET_UDP`].
    pub net: u8,
}

/// Metadata that is no Mux.Cool frame's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// Longer than [`MAX_META`].
    Length(usize),
    /// Shorter than its status needs.
    Short(usize),
    /// A status byte that is none of the four.
    Status(u8),
    /// A New frame's network that is neither TCP nor UDP.
    Network(u8),
    /// A New frame's address of an unknown type.
    Address(u8),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Length(n) => {
                write!(f, "Mux.Cool metadata of {n} bytes (at most {MAX_META})")
            }
            MetaError::Short(n) => write!(f, "Mux.Cool metadata of only {n} bytes"),
            MetaError::Status(s) => write!(f, "Mux.Cool frame of unknown status {s}"),
            MetaError::Network(n) => write!(f, "Mux.Cool New frame for unknown network {n}"),
            MetaError::Address(t) => write!(f, "Mux.Cool New frame with address type {t}"),
        }
    }
}

impl std::error::Error for MetaError {}

impl Meta {
    /// Reads metadata (without its length prefix).
    pub fn parse(m: &[u8]) -> Result<Meta, MetaError> {
        if m.len() > MAX_META {
            return Err(MetaError::Length(m.len()));
        }
        if m.len() < 4 {
            return Err(MetaError::Short(m.len()));
        }
        let sid = u16::from_be_bytes([m[0], m[1]]);
        let status = match m[2] {
            1 => Status::New,
            2 => Status::Keep,
            3 => Status::End,
            4 => Status::KeepAlive,
            s => return Err(MetaError::Status(s)),
        };
        let opt = m[3];
        let mut net = 0;
        if status == Status::New {
            // network, port (2), address type, then at least one byte of address.
            if m.len() < 9 {
                return Err(MetaError::Short(m.len()));
            }
            net = m[4];
            if net != NET_TCP && net != NET_UDP {
                return Err(MetaError::Network(net));
            }
            let need = match m[7] {
                1 => 8 + 4,
                2 => 9 + usize::from(m[8]),
                3 => 8 + 16,
                t => return Err(MetaError::Address(t)),
            };
            if m.len() < need {
                return Err(MetaError::Short(m.len()));
            }
        }
        Ok(Meta {
            sid,
            status,
            opt,
            net,
        })
    }
}

/// The head of a frame: the metadata length, the metadata, and with `data`, the data length.
/// A New frame names 127.0.0.1, port 0 (as v2ray-plugin's clients do: the server sends every
/// stream to its own destination).
pub fn head(sid: u16, status: Status, opt: u8, net: u8, data: Option<u16>, out: &mut Vec<u8>) {
    let meta_len: u16 = if status == Status::New { 12 } else { 4 };
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(&sid.to_be_bytes());
    out.push(status as u8);
    out.push(opt | if data.is_some() { OPT_DATA } else { 0 });
    if status == Status::New {
        out.push(net);
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&[1, 127, 0, 0, 1]);
    }
    if let Some(n) = data {
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Whether a connection's first bytes open a Mux.Cool session: a New frame (for any stream:
/// a v2ray client's streams race to write first) of TCP or UDP, with its address type when
/// the bytes reach it, maybe after Ends and keepalives (a stream whose application closed at
/// once is ended before it was opened). `None`: more bytes are needed (eight after those
/// decide).
pub fn looks_like_muxcool(b: &[u8]) -> Option<bool> {
    let b = &b[leading_controls(b)..];
    let head: &[u8; 8] = b.get(..8)?.try_into().ok()?;
    let meta_len = usize::from(u16::from_be_bytes([head[0], head[1]]));
    let address = match b.get(9) {
        None => true,
        Some(1) => meta_len >= 12,
        Some(2) => b.get(10).is_none_or(|&n| meta_len >= 9 + usize::from(n)),
        Some(3) => meta_len >= 24,
        Some(_) => false,
    };
    Some(
        (10..=MAX_META).contains(&meta_len)
            && head[4] == Status::New as u8
            && head[5] & !(OPT_DATA | OPT_ERROR) == 0
            && (head[6] == NET_TCP || head[6] == NET_UDP)
            && address,
    )
}

/// The length of the End and KeepAlive frames (without data) that `b` begins with.
fn leading_controls(b: &[u8]) -> usize {
    let mut at = 0;
    while let Some(f) = b.get(at..at + 6) {
        let control = f[0] == 0
            && f[1] == 4
            && (f[4] == Status::End as u8 || f[4] == Status::KeepAlive as u8)
            && f[5] & !OPT_ERROR == 0;
        if !control {
            break;
        }
        at += 6;
    }
    at
}

/// Whether `b` is only Ends and keepalives, and a beginning too short to tell: a Mux.Cool
/// session's first bytes, most likely, whose New is still to come.
pub fn waiting_for_new(b: &[u8]) -> bool {
    let at = leading_controls(b);
    at > 0 && b.len() - at < 8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes v2ray-plugin's client sends to open its first stream, and to carry and end it.
    #[test]
    fn v2rays_bytes() {
        let new = [0, 12, 0, 1, 1, 0, 1, 0, 0, 1, 127, 0, 0, 1];
        let mut out = Vec::new();
        head(1, Status::New, 0, NET_TCP, None, &mut out);
        assert_eq!(out, new);
        assert_eq!(looks_like_muxcool(&new), Some(true));
        assert_eq!(looks_like_muxcool(&new[..7]), None);
        assert_eq!(looks_like_muxcool(&new[..8]), Some(true));
        // Any stream may be the first a v2ray client writes.
        let third = [0, 12, 0, 3, 1, 1, 1, 0, 0, 1, 127, 0, 0, 1, 32, 0];
        assert_eq!(looks_like_muxcool(&third), Some(true));
        // A first stream that ended before it opened: its End, then the next New.
        let mut ended_first = vec![0, 4, 0, 1, 3, 2];
        assert!(waiting_for_new(&ended_first));
        assert_eq!(looks_like_muxcool(&ended_first), None);
        ended_first.extend_from_slice(&third);
        assert!(!waiting_for_new(&ended_first));
        assert_eq!(looks_like_muxcool(&ended_first), Some(true));
        assert!(!waiting_for_new(b"abcdef"));
        let mut bad_address = new;
        bad_address[9] = 7;
        assert_eq!(looks_like_muxcool(&bad_address), Some(false));
        assert_eq!(
            Meta::parse(&new[2..]),
            Ok(Meta {
                sid: 1,
                status: Status::New,
                opt: 0,
                net: NET_TCP
            })
        );
        out.clear();
        head(1, Status::Keep, 0, 0, Some(5), &mut out);
        assert_eq!(out, [0, 4, 0, 1, 2, 1, 0, 5]);
        out.clear();
        head(1, Status::End, OPT_ERROR, 0, None, &mut out);
        assert_eq!(out, [0, 4, 0, 1, 3, 2]);
        // A domain name, and Xray's longer New with a global id after the address.
        let domain = [0, 1, 1, 0, 1, 1, 187, 2, 3, b'a', b'.', b'b'];
        assert_eq!(Meta::parse(&domain).map(|m| m.net), Ok(NET_TCP));
        let mut xudp = vec![0, 0, 1, 0, 2, 0, 53, 1, 8, 8, 8, 8];
        xudp.extend_from_slice(&[7; 8]);
        assert_eq!(Meta::parse(&xudp).map(|m| m.net), Ok(NET_UDP));
    }

    #[test]
    fn what_is_not_mux_cool() {
        assert_eq!(Meta::parse(&[0, 1, 9, 0]), Err(MetaError::Status(9)));
        assert_eq!(
            Meta::parse(&[0, 1, 1, 0, 3, 0, 1, 1]),
            Err(MetaError::Short(8))
        );
        assert_eq!(
            Meta::parse(&[0, 1, 1, 0, 3, 0, 1, 1, 1, 1, 1, 1]),
            Err(MetaError::Network(3))
        );
        assert_eq!(
            Meta::parse(&[0, 1, 1, 0, 1, 0, 1, 9, 1, 1, 1, 1]),
            Err(MetaError::Address(9))
        );
        assert_eq!(Meta::parse(&[0; 513]), Err(MetaError::Length(513)));
        // yamux's first frames, smux's, an application's.
        assert_eq!(looks_like_muxcool(&[0, 2, 0, 1, 0, 0, 0, 0]), Some(false));
        assert_eq!(looks_like_muxcool(&[0, 0, 0, 1, 0, 0, 0, 1]), Some(false));
        assert_eq!(looks_like_muxcool(&[1, 0, 0, 0, 3, 0, 0, 0]), Some(false));
        assert_eq!(looks_like_muxcool(b"GET / HTTP/1.1"), Some(false));
    }
}
