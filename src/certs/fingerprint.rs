//! Certificate fingerprints: the SHA-256 of a DER certificate, written as 64 hex digits the
//! way servers print them and clients pin them (`-cert-sha256`, with or without colons).

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of a DER certificate as 64 lowercase hex digits.
pub fn of(der: &[u8]) -> String {
    hex::encode(sha256(der))
}

/// A fingerprint written as 64 hex digits, with or without `:` between bytes; `None` when it
/// is not one.
pub fn parse(s: &str) -> Option<[u8; 32]> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_with_and_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse(&hex), Some([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse(&colons), Some([0xab; 32]));
        assert_eq!(parse("abcd"), None);
        assert_eq!(parse(&"zz".repeat(32)), None);
        assert_eq!(of(b"x"), hex::encode(sha256(b"x")));
        assert_eq!(parse(&of(b"x")), Some(sha256(b"x")));
    }
}
