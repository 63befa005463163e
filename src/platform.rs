//! Whether the kernel's settings let `-fast-open` work (read from `/proc`; elsewhere nothing
//! is said).

/// Says once, at start, when the kernel's `net.ipv4.tcp_fastopen` keeps `-fast-open` from
/// working on this side (`server`: accepting fast-open connections; else sending them).
pub fn check_fast_open(server: bool) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen") else {
        return;
    };
    if let Some(why) = text
        .trim()
        .parse()
        .ok()
        .and_then(|v| fast_open_gap(v, server))
    {
        log::warn!("{why}");
    }
}

/// What is missing from the sysctl value `v` (bit 1: clients, bit 2: servers) for this side.
fn fast_open_gap(v: u32, server: bool) -> Option<String> {
    let (bit, side) = if server {
        (2, "accepts no fast-open connections")
    } else {
        (1, "sends no fast-open connections")
    };
    (v & bit == 0).then(|| {
        format!(
            "-fast-open has no effect: the kernel {side} (net.ipv4.tcp_fastopen = {v}); set it to 3 for both ends: sysctl -w net.ipv4.tcp_fastopen=3"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::fast_open_gap;

    #[test]
    fn fast_open_needs_the_sysctl_bit_of_its_side() {
        // Linux's default, 1: clients only.
        assert_eq!(fast_open_gap(1, false), None);
        let server = fast_open_gap(1, true).expect("a server needs bit 2");
        assert!(
            server.contains("accepts no fast-open") && server.contains("= 1"),
            "{server}"
        );
        assert!(server.contains("tcp_fastopen=3"), "{server}");
        assert_eq!(fast_open_gap(3, true), None);
        assert_eq!(fast_open_gap(2, true), None);
        assert!(fast_open_gap(0, false).is_some());
        assert!(fast_open_gap(2, false).is_some());
    }
}
