//! Go `flag`-package compatibility: rewrites users' existing command lines for argh and parses
//! Go-syntax values (durations, integers, booleans).
//!
//! Users of the original keep their command lines: `-wss-path /x`, `--wss-path=/x`, `-sv`,
//! `-mux=false`, `-timeout 1h30m`. argh only knows `--long value` and switches, so every
//! argument is rewritten against the flag table argh derives from the same struct
//! ([`argh::ArgsInfo`]): nothing here repeats the list of flags.

use std::time::Duration;

use argh::{ArgsInfo, FlagInfoKind};

use crate::{Error, Result};

/// Rewrites Go-style `args` into the `--name [value]` form argh parses.
///
/// * one or two leading dashes; `-k=v` or `-k v` (the next element is the value even if it
///   starts with `-`, as in Go);
/// * switches as `-k` or `-k=<bool>` with Go's literals; `-k=false` drops the switch;
/// * a repeated flag: the last one wins (as in Go), except for repeatable ones (a `Vec`
///   field, like `-wss-header`), which keep every value in order;
/// * `-h`, `-help`, `--help` ask for help;
/// * unknown flags and stray positional words are errors that name the flag and the fix.
pub fn normalize<T: ArgsInfo>(prog: &str, args: &[String]) -> Result<Vec<String>> {
    let info = T::get_args_info();
    // (flag name, value) in order of last appearance.
    let mut seen: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args.iter();
    let mut previous_switch: Option<String> = None;
    while let Some(arg) = it.next() {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            // `mtt client help`, as `mtt help` works.
            if arg == "help" {
                return Ok(vec!["--help".to_string()]);
            }
            let hint = match (&previous_switch, parse_bool(arg)) {
                (Some(flag), Some(_)) => format!(": write -{flag}={arg}, not -{flag} {arg}"),
                _ => String::new(),
            };
            return Err(Error::usage(format!(
                "unexpected argument '{arg}'{hint} (run '{prog} -h' for usage)"
            )));
        };
        previous_switch = None;
        if body.is_empty() || arg == "-" {
            return Err(Error::usage(format!(
                "unexpected argument '{arg}' (run '{prog} -h' for usage)"
            )));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(vec!["--help".to_string()]);
        }
        let Some(flag) = info
            .flags
            .iter()
            .find(|f| f.long.strip_prefix("--") == Some(name) && name != "help")
        else {
            return Err(Error::usage(format!(
                "unknown flag -{name} (run '{prog} -h' for the list of flags)"
            )));
        };
        let value = match flag.kind {
            FlagInfoKind::Switch => match inline {
                None => {
                    previous_switch = Some(name.to_string());
                    Some("true".to_string())
                }
                Some(v) => match parse_bool(&v) {
                    Some(b) => Some(b.to_string()),
                    None => {
                        return Err(Error::usage(format!(
                            "-{name}: invalid boolean '{v}' (use -{name}, -{name}=true or -{name}=false)"
                        )));
                    }
                },
            },
            FlagInfoKind::Option { .. } => match inline {
                Some(v) => Some(v),
                None => match it.next() {
                    // `-b -s host:port`: the next flag is no value (negative numbers and
                    // values that merely start with '-' are taken: only a known flag is not).
                    Some(v) if is_flag(&info, v) => {
                        return Err(Error::usage(format!(
                            "-{name} is missing its value ('{v}' after it is a flag of its own)"
                        )));
                    }
                    Some(v) => Some(v.clone()),
                    None => {
                        return Err(Error::usage(format!("-{name} needs a value")));
                    }
                },
            },
        };
        // A repeatable flag (`-wss-header`) keeps every value, in order.
        if flag.optionality != argh::Optionality::Repeating {
            seen.retain(|(n, _)| n != name);
        }
        seen.push((name.to_string(), value));
    }
    let mut out = Vec::with_capacity(seen.len() * 2);
    for (name, value) in seen {
        let flag = info
            .flags
            .iter()
            .find(|f| f.long.strip_prefix("--") == Some(name.as_str()));
        match (flag.map(|f| &f.kind), value) {
            (Some(FlagInfoKind::Switch), Some(v)) if v == "false" => {}
            (Some(FlagInfoKind::Switch), _) => out.push(format!("--{name}")),
            (_, Some(v)) => {
                out.push(format!("--{name}"));
                out.push(v);
            }
            (_, None) => out.push(format!("--{name}")),
        }
    }
    Ok(out)
}

/// Whether `arg` is one of the flags of `info` (single- or double-dash, with or without a
/// value after `=`), or asks for help.
fn is_flag(info: &argh::CommandInfoWithArgs, arg: &str) -> bool {
    let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
        return false;
    };
    let name = body.split_once('=').map_or(body, |(n, _)| n);
    name == "h"
        || name == "help"
        || info
            .flags
            .iter()
            .any(|f| f.long.strip_prefix("--") == Some(name))
}

/// Parses `args` (Go style) into `T`. Help goes to the caller as [`Parsed::Help`] with the
/// flags shown single-dashed, as users of the original know them.
pub fn parse<T: ArgsInfo + argh::FromArgs>(prog: &str, args: &[String]) -> Result<Parsed<T>> {
    let argv = normalize::<T>(prog, args)?;
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    match T::from_args(&[prog], &argv_ref) {
        Ok(t) => Ok(Parsed::Args(t)),
        Err(early) if early.status.is_ok() => Ok(Parsed::Help(single_dash_help(&early.output))),
        Err(early) => Err(Error::usage(early.output.trim().replace("--", "-"))),
    }
}

/// The outcome of [`parse`].
pub enum Parsed<T> {
    /// Arguments parsed.
    Args(T),
    /// Help was asked for; this is the text to print on stdout.
    Help(String),
}

/// argh prints `--name`; the original's users know `-name` (both are accepted). The column
/// of descriptions keeps its place.
pub fn single_dash_help(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("  --") {
            Some(rest) => match rest.find("  ").or_else(|| rest.find(' ')) {
                Some(i) => format!("  -{}  {}", &rest[..i], &rest[i + 1..]),
                None => format!("  -{rest}"),
            },
            None => line.replace(" --", " -").replace("[--", "[-"),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Go's `strconv.ParseBool` literals.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a Go duration (`300ms`, `1.5h`, `1h30m`, `5m0s`, `2us`, `2µs`) with the
/// `go-parse-duration` crate, guarding it against inputs it mishandles: it indexes bytes by
/// characters (so a non-ASCII unit panics) and loops forever on fractions longer than
/// 18 digits. Negative durations are refused (no flag takes one).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    let bad = |why: &str| {
        Error::usage(format!(
            "-{flag}: invalid duration '{s}': {why} (Go syntax: 300ms, 90s, 5m, 1h30m)"
        ))
    };
    let ascii = s.replace(['µ', 'μ'], "u");
    if !ascii.is_ascii() {
        return Err(bad("unexpected character"));
    }
    if ascii.len() > 64
        || ascii
            .split(|c: char| !c.is_ascii_digit())
            .any(|run| run.len() > 18)
    {
        return Err(bad("too many digits"));
    }
    match go_parse_duration::parse_duration(&ascii) {
        Ok(ns) if ns < 0 => Err(bad("negative")),
        Ok(ns) => Ok(Duration::from_nanos(ns.unsigned_abs())),
        Err(go_parse_duration::Error::ParseError(msg)) => {
            if msg.starts_with("missing unit") {
                Err(bad("missing unit"))
            } else if msg.starts_with("unknown unit") {
                Err(bad("unknown unit (use ns, us, ms, s, m or h)"))
            } else {
                Err(bad("not a duration"))
            }
        }
    }
}

/// Parses an integer as Go's `strconv.ParseInt(s, 0, 64)`: decimal, `0x`, `0o`, `0b`, a
/// leading `0` for octal, `_` between digits.
pub fn parse_int(flag: &str, s: &str) -> Result<i64> {
    let bad = || Error::usage(format!("-{flag}: invalid number '{s}'"));
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let v = i64::from_str_radix(&digits.replace('_', ""), radix).map_err(|_| bad())?;
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        let ok = |s: &str| parse_duration("timeout", s).unwrap();
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("5m0s"), Duration::from_secs(300));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2us"), Duration::from_micros(2));
        assert_eq!(ok("2µs"), Duration::from_micros(2));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn bad_durations_are_named_errors_not_panics() {
        for s in [
            "300",
            "5x",
            "",
            "-1s",
            "1é",
            "5ms\u{301}",
            "1.99999999999999999999999s",
            "h",
            ".s",
        ] {
            let err = parse_duration("timeout", s)
                .unwrap_err()
                .report()
                .to_string();
            assert!(err.starts_with("-timeout: invalid duration"), "{s}: {err}");
        }
        assert!(
            parse_duration("timeout", "300")
                .unwrap_err()
                .report()
                .to_string()
                .contains("missing unit")
        );
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_int("n", "16").unwrap(), 16);
        assert_eq!(parse_int("n", "0x10").unwrap(), 16);
        assert_eq!(parse_int("n", "010").unwrap(), 8);
        assert_eq!(parse_int("n", "0b11").unwrap(), 3);
        assert_eq!(parse_int("n", "1_0").unwrap(), 10);
        assert_eq!(parse_int("n", "-4").unwrap(), -4);
        for s in ["", "x", "0x", "1__0", "_1", "09", "1.5"] {
            assert!(parse_int("n", s).is_err(), "{s}");
        }
    }

    fn norm(args: &[&str]) -> Result<Vec<String>> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        normalize::<crate::cli::ClientArgs>("mtt client", &v)
    }

    #[test]
    fn go_command_lines_become_argh_ones() {
        assert_eq!(
            norm(&["-b", "127.0.0.1:1080", "--s=x:1", "-wss-path", "/p", "-sv"]).unwrap(),
            [
                "--b",
                "127.0.0.1:1080",
                "--s",
                "x:1",
                "--wss-path",
                "/p",
                "--sv"
            ]
        );
        // A value may start with a dash, as in Go.
        assert_eq!(norm(&["-n", "-odd"]).unwrap(), ["--n", "-odd"]);
        // Booleans: =true keeps, =false drops; the last repetition wins.
        assert_eq!(norm(&["-mux=true", "-sv=0"]).unwrap(), ["--mux"]);
        assert_eq!(norm(&["-mux", "-mux=false"]).unwrap(), Vec::<String>::new());
        assert_eq!(norm(&["-b", "a:1", "-b", "b:2"]).unwrap(), ["--b", "b:2"]);
        assert_eq!(norm(&["-h"]).unwrap(), ["--help"]);
        assert_eq!(norm(&["help"]).unwrap(), ["--help"]);
        let e = norm(&["-b", "-s", "127.0.0.1:1"])
            .unwrap_err()
            .report()
            .to_string();
        assert!(e.contains("-b is missing its value"), "{e}");
        // A value that only starts with '-' is still a value.
        assert_eq!(norm(&["-wss-path", "-x"]).unwrap(), ["--wss-path", "-x"]);
        assert_eq!(norm(&["-b", "a:1", "--help"]).unwrap(), ["--help"]);
    }

    #[test]
    fn go_command_line_mistakes_are_named() {
        let err = |a: &[&str]| norm(a).unwrap_err().report().to_string();
        assert!(err(&["-bogus"]).contains("unknown flag -bogus"));
        assert!(err(&["-mux", "false"]).contains("write -mux=false"));
        assert!(err(&["stray"]).contains("unexpected argument 'stray'"));
        assert!(err(&["-b"]).contains("-b needs a value"));
        assert!(err(&["-sv=yes"]).contains("-sv: invalid boolean"));
        assert!(err(&["-"]).contains("unexpected argument '-'"));
    }

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
