//! Random bytes from the system's generator (through ring), with the one error every caller
//! reports when there is none.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| std::io::Error::other("no system randomness"))
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> crate::Result<[u8; N]> {
    let mut b = [0u8; N];
    fill(&mut b).map_err(|e| crate::Error::io("reading random bytes", e))?;
    Ok(b)
}
