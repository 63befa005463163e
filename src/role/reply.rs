//! What the controller reads and answers: the original's JSON commands and replies (zero
//! fields left out, as it did), JSON and error bodies of the REST API, 405 with `Allow`, and the
//! audit line of each change.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::controller::{MAX_BODY, user_id};
use crate::users::{Change, User};

#[derive(Deserialize)]
pub(super) struct CompatRequest {
    #[serde(default)]
    pub(super) opt: i64,
    #[serde(default)]
    pub(super) args_bunch: Vec<CompatArg>,
}

#[derive(Deserialize)]
pub(super) struct CompatArg {
    #[serde(default)]
    pub(super) path: String,
    #[serde(default)]
    pub(super) dst: String,
}

/// The original's answer: every field omitted when zero or empty.
#[derive(Serialize)]
pub(super) struct CompatReply {
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) res: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) err_string: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) current_users: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A REST API user: `dst`, and the limits among the rest (checked by name).
#[derive(Deserialize)]
pub(super) struct PutUser {
    pub(super) dst: String,
    #[serde(flatten)]
    pub(super) rest: serde_json::Map<String, serde_json::Value>,
}

pub(super) fn body(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(text.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body(status, "application/json", text)
}

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

/// A request's body, up to [`MAX_BODY`]; the answer to send instead if it is larger or
/// unreadable.
pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(compat_err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body over 2 MiB",
            ))
        }
        Err(e) => Err(compat_err(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// Compatible-API answers keep the original's content type and compact bytes.
pub(super) fn compat(status: StatusCode, reply: CompatReply) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
    body(status, "text/plain; charset=utf-8", text)
}

pub(super) fn compat_err(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    compat(
        status,
        CompatReply {
            res: 2,
            err_string: msg.into(),
            current_users: 0,
        },
    )
}

/// Decodes a compatible-API request body: `(opt, [(path, dst)])`, or why it is not one.
pub fn decode_compat(body: &[u8]) -> Result<(i64, Vec<(String, String)>), String> {
    let cmd: CompatRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok((
        cmd.opt,
        cmd.args_bunch
            .into_iter()
            .map(|a| (a.path, a.dst))
            .collect(),
    ))
}

/// A user as `GET /v1/users` lists it: its entry (what `PUT` takes), the fleet's counters
/// `(live tunnels, bytes up, bytes down)`, its state at `now`, and where its quota stands.
pub(super) fn user_json(
    u: &User,
    (live, up, down): (u64, u64, u64),
    now: u64,
) -> serde_json::Value {
    let mut v = serde_json::to_value(&u.limits).unwrap_or_default();
    let state = u.refusal(now).map_or("active", |r| r.as_str());
    let extra = serde_json::json!({
        "path": u.path, "user": user_id(&u.path), "dst": u.dst.to_string(),
        "connections": live, "bytes_up": up, "bytes_down": down,
        "clients": u.clients(), "state": state, "open_connections": u.connections(),
    });
    if let (Some(m), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
        if u.limits.has_quota() {
            let used = u.used();
            m.insert("used_up".into(), used.0.into());
            m.insert("used_down".into(), used.1.into());
            m.insert("quota_remaining".into(), u.limits.remaining(used).into());
            if let Some(at) = u.limits.next_reset(now) {
                m.insert("resets_at".into(), at.into());
            }
        }
    }
    v
}

/// The audit line of a change the operator made, at the default level: users by their
/// label ([`user_id`]), never by their path, which is their credential.
pub(super) fn audit(change: &Change) {
    let ids = |paths: &mut dyn Iterator<Item = &String>| {
        paths.map(|p| user_id(p)).collect::<Vec<_>>().join(", ")
    };
    let line = match change {
        Change::Add(items) => format!(
            "added or replaced user(s) {}",
            ids(&mut items.iter().map(|e| &e.path))
        ),
        Change::Remove(paths, false) => format!("removed user(s) {}", ids(&mut paths.iter())),
        Change::Remove(paths, true) => format!(
            "removed user(s) {} and closed their tunnels (kick)",
            ids(&mut paths.iter())
        ),
        Change::Reset => "removed every user".to_string(),
    };
    log::info!(target: crate::logging::NOTICE, "controller: {line}");
}

/// 405 with the methods `path` takes, in `Allow` as RFC 9110 asks.
pub(super) fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this endpoint takes {allow}"),
    );
    r.headers_mut()
        .insert("Allow", HeaderValue::from_static(allow));
    r
}
