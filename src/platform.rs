//! Process-level hooks of the operating system: a plugin must not outlive its host; the open
//! file limit; whether the kernel's settings let `-fast-open` work.

/// Asks the kernel to send SIGTERM when the parent process dies (Linux, Android), so a plugin
/// whose shadowsocks host was killed drains and exits instead of lingering as an orphan.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn exit_with_parent() {
    use nix::sys::signal::Signal;
    let parent = nix::unistd::getppid();
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        log::warn!("cannot ask to be stopped with the plugin host: {e}");
        return;
    }
    // The host may have died just before the request: then we were adopted by another.
    if nix::unistd::getppid() != parent {
        log::warn!("the plugin host has already exited; stopping");
        std::process::exit(1);
    }
}

/// Elsewhere the host's SIGTERM is the only signal.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn exit_with_parent() {}

/// Raises the soft limit of open files to the hard limit: every tunnel holds two or more
/// descriptors, and the usual soft limit of 1024 would cap a server at a few hundred.
#[cfg(unix)]
pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::debug!("open file limit raised from {soft} to {hard}"),
            Err(e) => log::warn!("cannot raise the open file limit from {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::debug!("open file limit: {e}"),
    }
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub fn raise_nofile() {}

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
