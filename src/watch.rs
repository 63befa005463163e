//! Re-reading `-cert`/`-key` when the files change on disk (certbot renewals), as SIGHUP does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::role::Reloader;

/// Changes closer together than this are one change: a renewal writes the certificate and the
/// key one after the other, and the pair is read once both are in place.
const SETTLE: Duration = Duration::from_millis(500);
/// How long a certificate and key that do not belong together wait for the other file of the
/// pair (a renewal that writes them further apart than [`SETTLE`]) before it is an error.
const PAIR: Duration = Duration::from_secs(5);

/// Watches the directories of the certificate files (a renewal may replace a file or re-point
/// a symlink) and reloads after each settled change. Without certificate files this does
/// nothing; if the watch cannot be set up, SIGHUP still reloads and one warning says so.
pub fn on_cert_change(reload: Reloader) {
    let Some(files) = reload.cert_files() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let targets: Vec<(PathBuf, std::ffi::OsString)> =
        files.iter().filter_map(|f| split(f)).collect();
    let dirs = {
        let mut d: Vec<PathBuf> = targets.iter().map(|(dir, _)| dir.clone()).collect();
        d.dedup();
        d
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && is_change(&ev.kind)
            && ev.paths.iter().any(|p| {
                targets
                    .iter()
                    .any(|(d, n)| p.parent() == Some(d) && p.file_name() == Some(n))
            })
        {
            let _ = tx.send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        for dir in &dirs {
            w.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            log::warn!("cannot watch the -cert/-key files ({e}); reload them with SIGHUP");
            return;
        }
    };
    log::debug!("watching {} for changes", files[0].display());
    tokio::spawn(async move {
        let _keep = watcher;
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            log::info!("-cert/-key changed on disk: re-reading them");
            let mut reloaded = reload.try_reload_cert();
            if half_renewed(&reloaded) {
                log::info!(
                    "-cert and -key do not belong together yet: waiting up to {PAIR:?} for the other file of the pair"
                );
                if let Ok(Some(())) = tokio::time::timeout(PAIR, rx.recv()).await {
                    while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
                    reloaded = reload.try_reload_cert();
                }
            }
            reload.report_cert(reloaded);
        }
    });
}

/// A reload that found one file of the pair new and the other old.
fn half_renewed(reloaded: &crate::Result<Option<String>>) -> bool {
    matches!(
        reloaded,
        Err(crate::Error::Cert {
            source: crate::error::CertError::Mismatch(_),
            ..
        })
    )
}

fn is_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// A file's directory and name, as the watcher reports them: the directory made absolute
/// (the watcher reports absolute paths, so a relative `-cert` would never match).
fn split(f: &Path) -> Option<(PathBuf, std::ffi::OsString)> {
    let name = f.file_name()?.to_owned();
    let dir = match f.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    Some((dir, name))
}
