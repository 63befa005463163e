//! Logger set-up: warnings and errors by default, plus the few notices a user expects to see
//! (what is listening where, reloads, shutdown); per-connection detail with `-verbose`;
//! `RUST_LOG` overriding both; no timestamps under journald, which adds its own.

/// The log target of notices: INFO lines shown at the default level.
pub const NOTICE: &str = "mtt::notice";

/// Initialises `env_logger` once; later calls are ignored.
pub fn init(verbose: bool) {
    let default = if verbose {
        "mtt=debug,warn"
    } else {
        "warn,mtt::notice=info"
    };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format_timestamp(None);
    }
    let _ = b.try_init();
}

/// For `mtt bench`, whose own output is its table: errors only (unless `RUST_LOG` says
/// otherwise).
pub fn init_quiet() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error"))
        .try_init();
}
