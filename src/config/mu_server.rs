//! The multi-user server's configuration: data and controller listeners, the controller's
//! token (given, or where a made one is kept), users file, UDP.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Listen, cert_source, drain, fallback_timeout, fwmark, max_conns, server_listen, timeout,
    timeouts, trusted, udp_timeout,
};
use crate::addr::HostPort;
use crate::certs::CertSource;
use crate::cli::MuServerArgs;
use crate::transport::options::Timeouts;
use crate::transport::origin::Trusted;
use crate::users::redis::RedisOptions;
use crate::{Error, Result};

/// Default controller address: loopback only.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:8080";
/// Name of the file a generated controller token is kept in.
pub const TOKEN_FILE: &str = "controller.token";
/// Default idle timeout of the multi-user server (the original's `1m`).
pub const MU_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated multi-user server configuration.
#[derive(Debug, Clone)]
pub struct MuServerConfig {
    /// Data listener.
    pub listen: Listen,
    /// Controller listener.
    pub controller: HostPort,
    /// Bearer token of the controller, when given (`-c-token`, `MTT_CONTROLLER_TOKEN`).
    pub token: Option<String>,
    /// Where a generated token is kept when none is given (see [`token_file`]).
    pub token_file: PathBuf,
    /// Where users are kept: `-users-file`, else (without `-users-redis`) `users.json` in
    /// systemd's `$STATE_DIRECTORY`, else nowhere (memory only).
    pub users_file: Option<PathBuf>,
    /// Or: the fleet's Redis (`-users-redis`).
    pub users_redis: Option<RedisOptions>,
    /// `None` with `-disable-tls`.
    pub tls: Option<CertSource>,
    /// Web server for requests that are not tunnels.
    pub fallback: Option<HostPort>,
    /// Whether upgrade requests marked `?ed=` may carry early data (`-early-data`).
    pub early_data: bool,
    /// Default for clients that name no subprotocol.
    pub mux: bool,
    /// gRPC tunnels too, each user's service being its path (`-grpc`).
    pub grpc: bool,
    /// Handshake and connect limits.
    pub timeouts: Timeouts,
    /// TCP fast open on the data listener.
    pub fast_open: bool,
    /// Mark of the data listener and of connections to destinations (`-fwmark`).
    pub fwmark: Option<u32>,
    /// How long live tunnels may finish after SIGINT/SIGTERM (`-drain-timeout`).
    pub drain: Duration,
    /// Connections served at once; more are closed on arrival (`-max-conns`, 0: no limit).
    pub max_conns: usize,
    /// Idle timeout of a tunnel.
    pub timeout: Duration,
    /// Users' tunnels may carry UDP (`-udp`).
    pub udp: bool,
    /// Idle timeout of a UDP association (`-udp-timeout`).
    pub udp_timeout: Duration,
    /// Proxies believed about the client behind them.
    pub trusted: Trusted,
    /// Send destinations a PROXY v2 header with the client and the user's path.
    pub proxy_protocol: bool,
}

/// Where the controller's token is kept when none is given: systemd's `$STATE_DIRECTORY`,
/// else beside the users file, else `$XDG_STATE_HOME/mtt` (`~/.local/state/mtt`; on Windows
/// `%LOCALAPPDATA%\mtt`); never the working directory, where a checkout or a shared folder
/// could hand it to others.
pub fn token_file(
    users_file: Option<&std::path::Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    // systemd may list several directories, separated by ':'.
    if let Some(dirs) = set("STATE_DIRECTORY") {
        return Ok(PathBuf::from(dirs.split(':').next().unwrap_or(&dirs)).join(TOKEN_FILE));
    }
    if let Some(f) = users_file {
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        return Ok(dir.unwrap_or(std::path::Path::new(".")).join(TOKEN_FILE));
    }
    let state = match (set("XDG_STATE_HOME"), set("HOME"), set("LOCALAPPDATA")) {
        (Some(x), _, _) => PathBuf::from(x),
        (None, Some(h), _) => PathBuf::from(h).join(".local/state"),
        (None, None, Some(l)) => PathBuf::from(l),
        (None, None, None) => {
            return Err(Error::usage(
                "no -c-token, and nowhere to keep a made one (no $STATE_DIRECTORY, -users-file, $XDG_STATE_HOME, $HOME or %LOCALAPPDATA%): give -c-token (or MTT_CONTROLLER_TOKEN)",
            ));
        }
    };
    Ok(state.join("mtt").join(TOKEN_FILE))
}

fn is_loopback(h: &HostPort) -> bool {
    h.host == "localhost" || h.ip().is_some_and(|ip| ip.is_loopback())
}

impl MuServerConfig {
    /// Validates the multi-user server's flags; `env` looks up `MTT_CONTROLLER_TOKEN` and
    /// `STATE_DIRECTORY`.
    pub fn from_args(a: &MuServerArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let env_token = env("MTT_CONTROLLER_TOKEN");
        let listen = server_listen(&a.b, a.bind_unix)?;
        let controller = HostPort::parse(
            "c",
            a.c.as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_CONTROLLER),
            true,
        )?;
        let token = a.c_token.clone().or(env_token).filter(|t| !t.is_empty());
        if token.is_none() && !is_loopback(&controller) {
            return Err(Error::usage(format!(
                "-c {controller} listens beyond loopback: anyone who reaches it could change the users; set -c-token (or MTT_CONTROLLER_TOKEN), or listen on 127.0.0.1"
            )));
        }
        let fallback = match a.fallback.as_deref() {
            None | Some("") => None,
            Some(f) => Some(HostPort::parse("fallback", f, false)?),
        };
        let users_file = a
            .users_file
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let users_redis = match given(&a.users_redis) {
            None => {
                for (flag, v) in [
                    ("-users-redis-prefix", &a.users_redis_prefix),
                    ("-users-redis-resync", &a.users_redis_resync),
                    ("-users-redis-snapshot", &a.users_redis_snapshot),
                    ("-users-redis-ca", &a.users_redis_ca),
                ] {
                    if given(v).is_some() {
                        return Err(Error::usage(format!(
                            "{flag} needs -users-redis redis://host:port/db"
                        )));
                    }
                }
                None
            }
            Some(_) if users_file.is_some() => {
                return Err(Error::usage(
                    "-users-file and -users-redis exclude each other: the users live in one place (for a copy on disk beside Redis, use -users-redis-snapshot)",
                ));
            }
            Some(url) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(Error::usage(format!(
                        "-users-redis: '{}' is not a Redis URL: redis://[user:pass@]host:port/db, or rediss:// for TLS",
                        crate::users::redis::redacted(&url)
                    )));
                }
                let resync = match given(&a.users_redis_resync) {
                    None => Duration::from_secs(30),
                    Some(v) => {
                        let d = crate::goflag::parse_duration("users-redis-resync", &v)?;
                        if d.is_zero() {
                            return Err(Error::usage(
                                "-users-redis-resync must be greater than zero, e.g. 30s",
                            ));
                        }
                        d
                    }
                };
                Some(RedisOptions {
                    url,
                    prefix: given(&a.users_redis_prefix).unwrap_or_else(|| "mtt:".into()),
                    resync,
                    snapshot: given(&a.users_redis_snapshot).map(PathBuf::from),
                    ca: given(&a.users_redis_ca).map(PathBuf::from),
                })
            }
        };
        // Under systemd (`StateDirectory=`), users are kept there unless the command line says
        // where: the unit passes nothing, so that `-users-redis` can be given instead.
        let users_file = match (users_file, &users_redis, env("STATE_DIRECTORY")) {
            (None, None, Some(dirs)) if !dirs.is_empty() => {
                let dir = dirs.split(':').next().unwrap_or(&dirs);
                Some(PathBuf::from(dir).join("users.json"))
            }
            (file, _, _) => file,
        };
        let token_file = token_file(users_file.as_deref(), &env)?;
        Ok(MuServerConfig {
            listen,
            controller,
            token,
            token_file,
            users_file,
            users_redis,
            tls: cert_source(&a.cert, &a.key, &a.n, a.disable_tls, &a.acme_flags())?,
            fallback,
            early_data: super::early_data_switch(&a.early_data)?,
            mux: a.mux,
            grpc: a.grpc,
            timeouts: fallback_timeout(
                timeouts(&a.handshake_timeout, &a.ping, true, a.mux)?,
                &a.fallback_timeout,
                a.fallback.as_deref().is_some_and(|f| !f.is_empty()),
            )?,
            fast_open: a.fast_open,
            fwmark: fwmark(&a.fwmark)?,
            drain: drain(&a.drain_timeout)?,
            max_conns: max_conns(&a.max_conns)?,
            timeout: timeout(&a.timeout, MU_DEFAULT_TIMEOUT)?,
            udp: a.udp,
            udp_timeout: udp_timeout(&a.udp_timeout, a.udp)?,
            trusted: trusted(
                &a.trusted_proxy,
                &a.trusted_proxy_header,
                a.accept_proxy_protocol,
            )?,
            proxy_protocol: a.proxy_protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argh::FromArgs;

    fn parse(args: &[&str], state: Option<&str>) -> Result<MuServerConfig> {
        let a = MuServerArgs::from_args(&["mu-server"], args).expect("args");
        let state = state.map(str::to_string);
        MuServerConfig::from_args(&a, |k| match k {
            "STATE_DIRECTORY" => state.clone(),
            "HOME" => Some("/home/u".into()),
            _ => None,
        })
    }

    /// Without systemd or a users file, a made token goes to the user's state folder: XDG's,
    /// or the home's, or on Windows (no HOME there) `%LOCALAPPDATA%`; with none, an error.
    #[test]
    fn a_made_token_goes_to_the_users_state_folder() {
        let at = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            token_file(None, &|k| {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        let home = at(&[("HOME", "/home/u"), ("LOCALAPPDATA", "C:/L")]).expect("home");
        assert_eq!(
            home,
            PathBuf::from("/home/u/.local/state/mtt").join(TOKEN_FILE)
        );
        let windows = at(&[("LOCALAPPDATA", "C:/Users/u/AppData/Local")]).expect("windows");
        assert_eq!(
            windows,
            PathBuf::from("C:/Users/u/AppData/Local/mtt").join(TOKEN_FILE)
        );
        let none = at(&[]).expect_err("nowhere");
        assert!(none.to_string().contains("-c-token"), "{none}");
    }

    /// Under systemd the users file defaults to the state directory, and `-users-redis`
    /// (the fleet) or `-users-file` take its place without a conflict.
    #[test]
    fn the_state_directory_keeps_users_unless_told_otherwise() {
        let b = ["--b", "127.0.0.1:0"];
        let cfg = parse(&b, Some("/var/lib/mtt-mu-server")).expect("config");
        assert_eq!(
            cfg.users_file,
            Some("/var/lib/mtt-mu-server/users.json".into())
        );
        let redis = [
            "--b",
            "127.0.0.1:0",
            "--users-redis",
            "redis://127.0.0.1:6379/0",
        ];
        let cfg = parse(&redis, Some("/var/lib/mtt-mu-server")).expect("the fleet under systemd");
        assert_eq!(cfg.users_file, None);
        assert!(cfg.users_redis.is_some());
        let file = ["--b", "127.0.0.1:0", "--users-file", "/srv/u.json"];
        let cfg = parse(&file, Some("/var/lib/mtt-mu-server")).expect("config");
        assert_eq!(cfg.users_file, Some("/srv/u.json".into()));
        assert_eq!(parse(&b, None).expect("config").users_file, None);
    }
}
