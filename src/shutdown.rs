//! Stop and reload requests: the first stop request (SIGINT/SIGTERM; on Windows Ctrl-C,
//! Ctrl-Break, a closed console, logoff or shutdown) asks the roles to stop accepting and
//! drain, a second one exits at once. SIGHUP re-reads files where the OS has it.

use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::error::IoContext;
use crate::sys::{RELOAD_REQUEST, ReloadRequests, StopRequests};

/// Runs `reload` on every reload request (systemd's `ExecReload`, certbot's deploy hooks).
/// Where there is none (Windows), the certificate files' watch is the way to reload.
pub fn on_hangup(reload: crate::role::Reloader) -> Result<()> {
    let Some(mut hup) = reload_requests()? else {
        return Ok(());
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload.reload().await;
        }
    });
    Ok(())
}

/// The client has nothing to re-read: SIGHUP (sent to every unit by some service managers and
/// by `systemctl reload`) is noted and otherwise ignored, instead of killing the process.
pub fn ignore_hangup() -> Result<()> {
    let Some(mut hup) = reload_requests()? else {
        return Ok(());
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            log::info!(
                target: crate::logging::NOTICE,
                "{RELOAD_REQUEST}: the client has nothing to re-read; still running"
            );
        }
    });
    Ok(())
}

/// The reload requests' handler, where the OS has them.
fn reload_requests() -> Result<Option<ReloadRequests>> {
    ReloadRequests::new().context(|| format!("install {RELOAD_REQUEST} handler"))
}

/// Installs the handlers (inside a runtime) and returns the token the first request cancels.
pub fn on_signals() -> Result<CancellationToken> {
    let mut stop = StopRequests::new().context(|| "install the stop signal handlers")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = stop.recv().await;
        log::info!(
            target: crate::logging::NOTICE,
            "{name}: no longer accepting; draining live tunnels (signal again to exit now)"
        );
        cancel.cancel();
        let name = stop.recv().await;
        log::warn!("{name} again: exiting without waiting for live tunnels");
        std::process::exit(1);
    });
    Ok(token)
}
