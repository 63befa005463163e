//! SIGINT/SIGTERM handling: the first signal asks the roles to stop accepting and drain, a
//! second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::error::IoContext;

/// Runs `reload` on every SIGHUP (systemd's `ExecReload`, certbot's deploy hooks).
pub fn on_hangup(reload: crate::role::Reloader) -> Result<()> {
    let mut hup = signal(SignalKind::hangup()).context(|| "install SIGHUP handler")?;
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
    let mut hup = signal(SignalKind::hangup()).context(|| "install SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            log::info!(
                target: crate::logging::NOTICE,
                "SIGHUP: the client has nothing to re-read; still running"
            );
        }
    });
    Ok(())
}

/// Installs the handlers (inside a runtime) and returns the token the first signal cancels.
pub fn on_signals() -> Result<CancellationToken> {
    let mut int = signal(SignalKind::interrupt()).context(|| "install SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context(|| "install SIGTERM handler")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        log::info!(
            target: crate::logging::NOTICE,
            "{name}: no longer accepting; draining live tunnels (signal again to exit now)"
        );
        cancel.cancel();
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        log::warn!("{name} again: exiting without waiting for live tunnels");
        std::process::exit(1);
    });
    Ok(token)
}
