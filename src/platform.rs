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
