//! Unix: the signals that stop and reload, the process's ties to its parent and its open file
//! limit, and files only their owner may read (by mode bits).

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Runs `main`: Unix has no service manager to speak to first (systemd needs nothing).
pub fn as_service_or(main: fn() -> i32) -> i32 {
    main()
}

/// The requests to stop: SIGINT and SIGTERM.
pub struct StopRequests {
    int: Signal,
    term: Signal,
}

impl StopRequests {
    /// Installs the handlers (inside a runtime).
    pub fn new() -> io::Result<Self> {
        Ok(StopRequests {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next request; returns its name, for the log.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The request to re-read files: SIGHUP (systemd's `ExecReload`, certbot's deploy hooks).
pub struct ReloadRequests(Signal);

impl ReloadRequests {
    /// Installs the handler; `None` where the OS has no such request.
    pub fn new() -> io::Result<Option<Self>> {
        signal(SignalKind::hangup()).map(|s| Some(ReloadRequests(s)))
    }

    /// Waits for the next request; `None` once no more can come.
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// The name of the reload request, for messages.
pub const RELOAD_REQUEST: &str = "SIGHUP";

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

/// Who may read a file made by [`create_new_file`] with mode 0600, for messages.
pub const PRIVATE_FILE: &str = "mode 0600";

/// Creates directory `dir` and its missing parents, each new one open to its owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates the new file `path` (never over an existing one) with permission bits `mode`.
pub fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Gives `file` permission bits `mode` (a file about to replace another).
pub(in crate::sys) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// The permission bits of the file `meta` describes (no set-id or sticky bits); `None` where
/// the OS keeps no such bits.
pub fn mode_of(meta: &std::fs::Metadata) -> Option<u32> {
    Some(meta.mode() & 0o777)
}

/// A failed rename over a file, as it is: nothing else holds a file against it here.
pub(in crate::sys) fn replace_error(e: io::Error) -> io::Error {
    e
}

/// Makes a rename within `dir` durable (the directory's own entry list, fsync'd).
pub(in crate::sys) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
