//! Logger set-up: warnings and errors by default, plus the few notices a user expects to see
//! (what is listening where, reloads, shutdown); per-connection detail with `-verbose`;
//! `RUST_LOG` overriding both; no timestamps under journald, which adds its own.

/// The log target of notices: INFO lines shown at the default level.
pub const NOTICE: &str = "mtt::notice";

/// Initialises `env_logger` once; later calls are ignored.
pub fn init(verbose: bool) {
    // yamux logs a peer's malformed frames at ERROR, one line each: a hostile peer could
    // fill the log. They end the session, which mtt reports itself.
    let default = if verbose {
        "mtt=debug,warn,yamux=off"
    } else {
        "warn,mtt::notice=info,yamux=off"
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

/// One kind of log line that peers can cause (a failed handshake, a refused stream): said at
/// most once a second, with how many like it were folded into it since, so that a flood of
/// them shows in the log without filling it. Used through [`crate::rarely!`], one per call
/// site.
pub struct Rarely {
    /// Milliseconds since [`epoch`] of the last line said, plus one (0: never said).
    last: std::sync::atomic::AtomicU64,
    /// Lines folded since the last one said.
    folded: std::sync::atomic::AtomicU64,
}

impl Rarely {
    /// A kind of line never said yet.
    pub const fn new() -> Self {
        Rarely {
            last: std::sync::atomic::AtomicU64::new(0),
            folded: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Says `msg` at `level` if nothing of this kind was said in the last second (with the
    /// count of those folded since); otherwise counts it. Returns whether it was said.
    pub fn log(&self, target: &str, level: log::Level, msg: std::fmt::Arguments<'_>) -> bool {
        if !log::log_enabled!(target: target, level) {
            return false;
        }
        let line = |args: std::fmt::Arguments<'_>| {
            // As the call site's own line: its module is the target and the shown path.
            log::logger().log(
                &log::Record::builder()
                    .args(args)
                    .level(level)
                    .target(target)
                    .module_path(Some(target))
                    .build(),
            );
        };
        match self.due(epoch().elapsed().as_millis() as u64) {
            None => false,
            Some(0) => {
                line(format_args!("{msg}"));
                true
            }
            Some(n) => {
                line(format_args!(
                    "{msg} (and {n} more like it since the last such line)"
                ));
                true
            }
        }
    }

    /// Whether a line is due at `now` (milliseconds since [`epoch`]): `Some(folded)` with the
    /// count of lines folded since the last one said, or `None` (and this one is counted).
    fn due(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now + 1;
        let last = self.last.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= 1000;
        if !due
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.folded.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.folded.swap(0, Relaxed))
    }
}

impl Default for Rarely {
    fn default() -> Self {
        Self::new()
    }
}

/// The instant [`Rarely`] counts from: the first time it is asked.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Logs at a level at most once a second for this call site, with a count of the lines folded
/// in: `rarely!(Warn, "{id}: {e}")`. For lines a peer can cause once per connection.
#[macro_export]
macro_rules! rarely {
    ($level:ident, $($arg:tt)+) => {{
        static RARELY: $crate::logging::Rarely = $crate::logging::Rarely::new();
        RARELY.log(module_path!(), log::Level::$level, format_args!($($arg)+))
    }};
}

/// Writes one line of a command's own output (a table, a pin, help) to stdout. A reader that
/// went away (`mtt cert … | head -1`) ends the command quietly, with exit code 0, as the
/// output was taken as far as it was wanted; any other failure to write is said on stderr
/// and ends it with 1.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let wrote = out
        .write_fmt(line)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    match wrote {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mtt: writing to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// [`say`] with `format!` arguments: one line of a command's output.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of lines within a second is said once; the next one said, a second later,
    /// carries the count of those folded in.
    #[test]
    fn a_burst_is_said_once_with_its_count() {
        let r = Rarely::new();
        let said: Vec<u64> = (0..200).filter_map(|i| r.due(5000 + i * 4)).collect();
        assert_eq!(said, vec![0], "one line for 200 events within 0.8 s");
        assert_eq!(r.due(5999), None, "still within the second");
        assert_eq!(r.due(6000), Some(200), "the next line carries the count");
        assert_eq!(r.due(6001), None);
    }
}
