//! Who may use the mu-server's controller: the bearer token (given, or made once into a
//! 0600 file), compared in constant time, and the `Host` names it answers to.

/// Equal in time whatever the inputs share (subtle's constant-time comparison).
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Whether a `Host` header may reach the controller: an IP literal (a rebinding attack needs
/// a name), `localhost`, or the name the controller was given with `-c`.
pub(super) fn host_allowed(host: &str, name: Option<&str>) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || port.bytes().all(|b| b.is_ascii_digit()) => {
            if h.contains(':') && !h.starts_with('[') {
                host // an IPv6 literal without brackets or port
            } else {
                h
            }
        }
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || bare.eq_ignore_ascii_case("localhost")
        || name.is_some_and(|n| bare.eq_ignore_ascii_case(n))
}

/// Whether a request that carries `Origin` comes from the controller's own page: the origin
/// is exactly `http://` and the request's `Host` (which [`host_allowed`] checked), so a page
/// elsewhere, or one rebound to this address under its own name, is not.
pub(super) fn own_origin(origin: &str, host: Option<&str>) -> bool {
    host.is_some_and(|h| origin.strip_prefix("http://") == Some(h))
}

/// Reads the controller token kept in `path`, or makes one there (32 random bytes as hex,
/// file mode 0600, created exclusively, in a directory made 0700 if missing). A token file
/// that others may read is refused: its token is no secret any more. Returns the token, and
/// whether it was made now.
pub fn load_or_make_token(path: &std::path::Path) -> crate::Result<(String, bool)> {
    use std::io::Write;
    let ctx = || format!("controller token file {}", path.display());
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            let meta = std::fs::metadata(path).map_err(|e| crate::Error::io(ctx(), e))?;
            if let Some(mode) = crate::sys::mode_of(&meta).filter(|m| m & 0o077 != 0) {
                return Err(crate::Error::usage(format!(
                    "{} may be read by others (mode {:o}): its token is no secret; run 'chmod 600 {}' (and change the token if others had it), or give -c-token",
                    ctx(),
                    mode,
                    path.display()
                )));
            }
            return Ok((t.trim().to_string(), false));
        }
        Ok(_) => {
            return Err(crate::Error::usage(format!(
                "{} is empty: delete it to have a new token made, or give -c-token",
                ctx()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::Error::io(ctx(), e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::sys::create_private_dir(dir).map_err(|e| {
            crate::Error::io(
                format!("directory {} for the controller token", dir.display()),
                e,
            )
        })?;
    }
    let token = hex::encode(crate::random::bytes::<32>()?);
    let mut f = crate::sys::create_new_file(path, 0o600).map_err(|e| crate::Error::io(ctx(), e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| crate::Error::io(ctx(), e))?;
    Ok((token, true))
}
