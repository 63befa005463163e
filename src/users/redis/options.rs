//! How the fleet's Redis is reached: what `-users-redis` and its flags ask for, the client
//! (TLS with `-users-redis-ca`), the connection's limits, and URLs as logs may show them.

use std::path::PathBuf;
use std::time::Duration;

use super::{CONNECT_LIMIT, RESPONSE_LIMIT};
use crate::{Error, Result};

/// What `-users-redis` and its flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS).
    pub url: String,
    /// Prefix of every key and of the channel.
    pub prefix: String,
    /// How often the local copy is compared with Redis (and fetched whole if it differs).
    pub resync: Duration,
    /// A copy of the table kept on disk, to start from while Redis cannot be reached.
    pub snapshot: Option<PathBuf>,
    /// Trust this PEM root for `rediss://` instead of the public roots.
    pub ca: Option<PathBuf>,
}

/// How the connection to Redis is kept: bounded connects and answers, one retry.
pub(super) fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_LIMIT))
        .set_response_timeout(Some(RESPONSE_LIMIT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2))
}

/// The client for `opts.url` (with `-users-redis-ca`, trusting that root for TLS).
pub(super) fn client(opts: &RedisOptions) -> Result<redis::Client> {
    let bad = |e: redis::RedisError| {
        Error::usage(format!(
            "-users-redis: '{}' is not a Redis URL ({e}); e.g. redis://127.0.0.1:6379/0",
            redacted(&opts.url)
        ))
    };
    match &opts.ca {
        None => redis::Client::open(opts.url.as_str()).map_err(bad),
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io(format!("-users-redis-ca {}", ca.display()), e))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(opts.url.as_str(), certs).map_err(bad)
        }
    }
}

pub(super) fn unreachable_at(url: &str, why: &str) -> Error {
    Error::runtime(format!(
        "-users-redis {}: Redis cannot be reached ({why}); start it, check the URL, or give -users-redis-snapshot to start from the last table",
        redacted(url)
    ))
}

/// A Redis URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
