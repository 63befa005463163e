//! Logger set-up: warnings and errors by default, per-connection detail with `-verbose`,
//! `RUST_LOG` overriding both; no timestamps under journald, which adds its own.

/// Initialises `env_logger` once; later calls are ignored.
pub fn init(verbose: bool) {
    let default = if verbose { "mtt=debug,warn" } else { "warn" };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format_timestamp(None);
    }
    let _ = b.try_init();
}
