//! Process-level hooks of the operating system: a plugin must not outlive its host.

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
