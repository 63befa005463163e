//! SIP003 plugin mode: the `SS_*` environment a shadowsocks host sets, and the
//! `SS_PLUGIN_OPTIONS` string (`k=v;flag;k2=a\;b`), turned into the same Go-style command line
//! users type, so plugin mode goes through exactly the checks of flag mode.

pub mod v2ray;

use argh::{ArgsInfo, FlagInfoKind};

use crate::goflag::parse_bool;
use crate::{Error, Result};

/// The four address variables; `SS_PLUGIN_OPTIONS` is optional.
const ADDRESS_VARS: [&str; 4] = [
    "SS_REMOTE_HOST",
    "SS_REMOTE_PORT",
    "SS_LOCAL_HOST",
    "SS_LOCAL_PORT",
];
const OPTIONS_VAR: &str = "SS_PLUGIN_OPTIONS";

/// Option keys of Android hosts that ask for VPN socket protection.
const ANDROID_KEYS: [&str; 2] = ["V", "__android_vpn"];

/// What the host handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEnv {
    /// The shadowsocks server side (`SS_REMOTE_HOST:SS_REMOTE_PORT`), IPv6 bracketed.
    pub remote: String,
    /// The shadowsocks local side (`SS_LOCAL_HOST:SS_LOCAL_PORT`), IPv6 bracketed.
    pub local: String,
    /// `SS_PLUGIN_OPTIONS`, if set.
    pub options: Option<String>,
}

fn join(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Reads the SIP003 variables through `get`: `None` when none is set (flag mode), an error
/// when some are set but not all four addresses.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<PluginEnv>> {
    let values: Vec<Option<String>> = ADDRESS_VARS.iter().map(|v| get(v)).collect();
    let options = get(OPTIONS_VAR);
    if values.iter().all(Option::is_none) && options.is_none() {
        return Ok(None);
    }
    let missing: Vec<&str> = ADDRESS_VARS
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(Error::usage(format!(
            "SIP003 plugin mode needs SS_REMOTE_HOST, SS_REMOTE_PORT, SS_LOCAL_HOST and SS_LOCAL_PORT; missing or empty: {}",
            missing.join(", ")
        )));
    }
    let v = |i: usize| values[i].clone().unwrap_or_default();
    Ok(Some(PluginEnv {
        remote: join(&v(0), &v(1)),
        local: join(&v(2), &v(3)),
        options,
    }))
}

/// Splits `SS_PLUGIN_OPTIONS` into `(key, value)` pairs: items separated by `;`, key and value
/// by the first `=`, backslash escapes `\;` `\=` `\\`; any other backslash is itself, so that
/// a Windows path (`cert=C:\certs\a.pem`) means what it says. Spaces around keys and values
/// trimmed, empty items skipped. A value may contain unescaped `=`.
pub fn parse_options(s: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut key = String::new();
    let mut value: Option<String> = None;
    let mut chars = s.chars().peekable();
    let flush = |key: &mut String, value: &mut Option<String>, out: &mut Vec<_>| -> Result<()> {
        let k = key.trim().to_string();
        let v = value.take().map(|v| v.trim().to_string());
        if k.is_empty() {
            if let Some(v) = v {
                return Err(Error::usage(format!(
                    "SS_PLUGIN_OPTIONS: a value without a key ('={v}')"
                )));
            }
        } else {
            out.push((k, v));
        }
        key.clear();
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = match chars.peek() {
                    Some(&e @ ('\\' | ';' | '=')) => {
                        chars.next();
                        e
                    }
                    _ => '\\',
                };
                match &mut value {
                    Some(v) => v.push(next),
                    None => key.push(next),
                }
            }
            ';' => flush(&mut key, &mut value, &mut out)?,
            '=' if value.is_none() => value = Some(String::new()),
            c => match &mut value {
                Some(v) => v.push(c),
                None => key.push(c),
            },
        }
    }
    flush(&mut key, &mut value, &mut out)?;
    Ok(out)
}

/// Escapes a key or value for `SS_PLUGIN_OPTIONS` (the inverse of [`parse_options`]).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Plugin mode's view of argv: hosts pass only `-V` (Android VPN) and `-fast-open`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostArgs {
    /// `-V`: protect sockets from an Android VPN.
    pub vpn: bool,
    /// `-fast-open`.
    pub fast_open: bool,
    /// What the options were read as, when they were v2ray-plugin's: said once logging is on.
    pub read_as: Option<String>,
}

/// Reads the few arguments hosts pass to plugins; anything else is an error that names it.
pub fn host_args(prog: &str, args: &[String]) -> Result<HostArgs> {
    let mut h = HostArgs::default();
    for a in args {
        match a.trim_start_matches('-') {
            "V" => h.vpn = true,
            "fast-open" => h.fast_open = true,
            _ => {
                return Err(Error::usage(format!(
                    "{prog} runs as a SIP003 plugin (SS_* variables are set) and then accepts only -V and -fast-open on its command line, not '{a}'; put options in SS_PLUGIN_OPTIONS"
                )));
            }
        }
    }
    Ok(h)
}

/// Builds the Go-style command line of role `T` for plugin mode: the listen and dial
/// addresses from the environment (`addr_flags`, e.g. `[("b", local), ("s", remote)]`), then
/// the options, which may override them. Unknown keys are refused with the list of keys.
pub fn command_line<T: ArgsInfo>(
    addr_flags: &[(&str, &str)],
    options: &[(String, Option<String>)],
) -> Result<(Vec<String>, bool)> {
    let info = T::get_args_info();
    let mut argv: Vec<String> = Vec::new();
    for (flag, value) in addr_flags {
        argv.push(format!("-{flag}"));
        argv.push(value.to_string());
    }
    let mut android_vpn = false;
    for (key, value) in options {
        if ANDROID_KEYS.contains(&key.as_str()) {
            android_vpn |= value.as_deref().map(parse_bool).unwrap_or(Some(true)) == Some(true);
            continue;
        }
        let Some(flag) = info
            .flags
            .iter()
            .find(|f| f.long.strip_prefix("--") == Some(key.as_str()) && key != "help")
        else {
            let mut keys: Vec<&str> = info
                .flags
                .iter()
                .filter_map(|f| f.long.strip_prefix("--"))
                .filter(|k| *k != "help")
                .collect();
            keys.extend(ANDROID_KEYS);
            return Err(Error::usage(format!(
                "SS_PLUGIN_OPTIONS: unknown option '{key}'; accepted: {}",
                keys.join(", ")
            )));
        };
        match (&flag.kind, value) {
            (FlagInfoKind::Switch, None) => argv.push(format!("-{key}")),
            (FlagInfoKind::Switch, Some(v)) => match parse_bool(v) {
                Some(b) => argv.push(format!("-{key}={b}")),
                None => {
                    return Err(Error::usage(format!(
                        "SS_PLUGIN_OPTIONS: '{key}={v}': {key} takes true or false"
                    )));
                }
            },
            (FlagInfoKind::Option { .. }, Some(v)) => argv.push(format!("-{key}={v}")),
            (FlagInfoKind::Option { .. }, None) => {
                return Err(Error::usage(format!(
                    "SS_PLUGIN_OPTIONS: option '{key}' needs a value ({key}=...)"
                )));
            }
        }
    }
    Ok((argv, android_vpn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ClientArgs;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn environment() {
        assert_eq!(from_env(env(&[])).unwrap(), None);
        let full = from_env(env(&[
            ("SS_REMOTE_HOST", "::1"),
            ("SS_REMOTE_PORT", "8388"),
            ("SS_LOCAL_HOST", "127.0.0.1"),
            ("SS_LOCAL_PORT", "1080"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(full.remote, "[::1]:8388");
        assert_eq!(full.local, "127.0.0.1:1080");
        let err = from_env(env(&[("SS_REMOTE_HOST", "a")]))
            .unwrap_err()
            .report()
            .to_string();
        assert!(err.contains("SS_LOCAL_PORT"), "{err}");
        assert!(from_env(env(&[("SS_PLUGIN_OPTIONS", "wss")])).is_err());
    }

    fn p(s: &str) -> Vec<(String, Option<String>)> {
        parse_options(s).unwrap()
    }

    fn kv(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn options_per_the_spec() {
        assert_eq!(
            p("wss;wss-path=/a\\;b;n=x"),
            [
                kv("wss", None),
                kv("wss-path", Some("/a;b")),
                kv("n", Some("x"))
            ]
        );
        assert_eq!(
            p("cert-sha256=ab==;ca=c\\=d"),
            [kv("cert-sha256", Some("ab==")), kv("ca", Some("c=d"))]
        );
        assert_eq!(
            p(" wss ; n = host ;;"),
            [kv("wss", None), kv("n", Some("host"))]
        );
        assert_eq!(p("a\\\\b=c\\\\"), [kv("a\\b", Some("c\\"))]);
        assert_eq!(p(""), []);
        // Any other backslash is itself: Windows paths, and one at the end.
        assert_eq!(
            p("cert=C:\\certs\\new\\a.pem;key=D:\\k\\"),
            [
                kv("cert", Some("C:\\certs\\new\\a.pem")),
                kv("key", Some("D:\\k\\"))
            ]
        );
        assert!(parse_options("=x").is_err());
    }

    #[test]
    fn command_lines_for_roles() {
        let opts = p("wss;mux=false;n=x;timeout=90s;V");
        let (argv, vpn) =
            command_line::<ClientArgs>(&[("b", "127.0.0.1:1"), ("s", "h:2")], &opts).unwrap();
        assert_eq!(
            argv,
            [
                "-b",
                "127.0.0.1:1",
                "-s",
                "h:2",
                "-wss",
                "-mux=false",
                "-n=x",
                "-timeout=90s"
            ]
        );
        assert!(vpn);
        let err = command_line::<ClientArgs>(&[], &p("wss;path=/x;n=y"))
            .unwrap_err()
            .report()
            .to_string();
        assert!(
            err.contains("unknown option 'path'") && err.contains("wss-path"),
            "{err}"
        );
        assert!(command_line::<ClientArgs>(&[], &p("n")).is_err());
        assert!(command_line::<ClientArgs>(&[], &p("wss=maybe")).is_err());
        // The original's multiplexing, as a plugin option.
        let (argv, _) = command_line::<ClientArgs>(&[], &p("mux;mux-proto=smux")).unwrap();
        assert_eq!(argv, ["-mux", "-mux-proto=smux"]);
    }

    #[test]
    fn host_arguments() {
        let a = |v: &[&str]| {
            host_args(
                "mtt-client",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            a(&["-V", "--fast-open"]).unwrap(),
            HostArgs {
                vpn: true,
                fast_open: true,
                read_as: None
            }
        );
        assert!(a(&["-b", "x"]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn escaped_options_round_trip(pairs in proptest::collection::vec(("[a-z][a-z0-9-]{0,8}", "[ -~]{0,12}"), 0..6)) {
            let s = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
                .collect::<Vec<_>>()
                .join(";");
            let parsed = parse_options(&s).unwrap();
            let want: Vec<(String, Option<String>)> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.trim().to_string())))
                .collect();
            proptest::prop_assert_eq!(parsed, want);
        }
    }
}
