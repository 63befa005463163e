//! The mu-server's controller: the original's JSON command API (byte-compatible answers),
//! a REST API under `/v1/`, OpenMetrics text at `/metrics`, and the dashboard at `/`; every
//! API request needs the bearer token, and requests from other web pages (an `Origin` not
//! the controller's own, a form's content type, a `Host` that is a stranger's name) are
//! refused.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access::{host_allowed, own_origin, same};
use super::dashboard;
pub use super::reply::decode_compat;
use super::reply::{
    CompatReply, PutUser, audit, body, compat, compat_err, error, json, not_allowed, read_body,
    user_json,
};
use crate::users::{Change, Entry, Limits, Users};

/// Largest request body (the original's limit).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// The controller's state.
pub struct Controller {
    users: Arc<Users>,
    token: String,
    /// The host name given with `-c`, the one name besides `localhost` a `Host` may carry.
    name: Option<String>,
    started: Instant,
}

/// The label of the per-user series: not the path, which is the user's credential, but the
/// first 16 hex digits of its SHA-256 (what [`user_id`] gives; also in `GET /v1/users`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserLabel {
    user: String,
}

/// A user's label and one of its states (`active`, `expired`, `over_quota`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    user: String,
    state: &'static str,
}

/// Why tunnels were refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// A stable name for a user that does not reveal its path.
pub fn user_id(path: &str) -> String {
    crate::users::label(path)
}

impl Controller {
    /// A controller over `users`; every request needs `Authorization: Bearer <token>`.
    /// `name` is the host name of `-c`, if it was one.
    pub fn new(users: Arc<Users>, token: String, name: Option<String>) -> Arc<Self> {
        Arc::new(Controller {
            users,
            token,
            name,
            started: Instant::now(),
        })
    }

    /// Serves the controller until `shutdown`.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        crate::admin::serve_plain(listener, shutdown, "controller", move |req| {
            let this = self.clone();
            async move { this.respond(req).await }
        })
        .await;
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let h = req.headers();
        let host = h.get(HOST).and_then(|v| v.to_str().ok());
        // A web page the operator's browser visits must not be able to drive the controller,
        // whatever it knows: browsers mark such requests with Origin, send forms as forms, and
        // a rebinding page arrives under its own host name. The dashboard's own requests
        // carry its origin, which is this controller's.
        if let Some(origin) = h.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !own_origin(origin, host) {
                return error(
                    StatusCode::FORBIDDEN,
                    "requests from other web pages are refused",
                );
            }
        }
        if let Some(host) = host
            && !host_allowed(host, self.name.as_deref())
        {
            return error(
                StatusCode::FORBIDDEN,
                format!("Host '{host}' is not this controller"),
            );
        }
        if req.method() == Method::GET
            && let Some(page) = dashboard::file(req.uri().path())
        {
            return page;
        }
        if let Some(ct) = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            let media = ct.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/json") {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type {media}: send application/json (or none)"),
                );
            }
        }
        let given = h
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), self.token.as_bytes()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
            return r;
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => self.metrics(),
            (Method::GET, "/v1/status") => self.status().await,
            (Method::GET, "/v1/users") => self.list().await,
            (Method::GET, "/v1/history") => json(StatusCode::OK, &self.users.history().json()),
            (m, p) if p.starts_with("/v1/users/") => {
                let user_path = format!("/{}", &p["/v1/users/".len()..]);
                if req.uri().query().is_some() && m == Method::PUT {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "a user path has no query ('?'): percent-encode it or choose another",
                    );
                }
                match m {
                    Method::PUT => self.put(req, user_path).await,
                    Method::DELETE => {
                        let kick = req
                            .uri()
                            .query()
                            .unwrap_or("")
                            .split('&')
                            .any(|kv| kv == "kick=true" || kv == "kick=1" || kv == "kick");
                        self.delete(user_path, kick).await
                    }
                    _ => not_allowed("PUT, DELETE"),
                }
            }
            // Known endpoints asked with another method: 405 and what they take.
            (_, "/v1/users" | "/v1/status" | "/v1/history" | "/metrics") => not_allowed("GET"),
            (_, p) if p.starts_with("/v1/") => {
                error(StatusCode::NOT_FOUND, format!("no such endpoint: {p}"))
            }
            (Method::POST, _) => self.compat(req).await,
            _ => compat_err(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        }
    }

    /// The original's command API.
    async fn compat(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let raw = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (opt, args) = match decode_compat(&raw) {
            Ok(c) => c,
            Err(e) => return compat_err(StatusCode::BAD_REQUEST, e),
        };
        let ok = CompatReply {
            res: 1,
            err_string: String::new(),
            current_users: 0,
        };
        let change = match opt {
            1 | 2 if args.is_empty() => {
                return compat_err(StatusCode::OK, "empty args");
            }
            1 => Change::Add(
                args.into_iter()
                    .map(|(p, d)| Entry::keeping(p, d))
                    .collect(),
            ),
            2 => Change::Remove(args.into_iter().map(|(path, _)| path).collect(), false),
            3 => Change::Reset,
            9 => {
                return compat(
                    StatusCode::OK,
                    CompatReply {
                        current_users: self.users.len() as i64,
                        ..ok
                    },
                );
            }
            _ => return compat_err(StatusCode::OK, "invalid opt"),
        };
        match self.users.apply(change.clone()).await {
            Ok(()) => {
                audit(&change);
                compat(StatusCode::OK, ok)
            }
            // Bad input is answered as the original did; a failure to store it is ours.
            Err(e @ crate::Error::Usage(_)) => compat_err(StatusCode::OK, e.report().to_string()),
            Err(e @ crate::Error::Unavailable { .. }) => {
                compat_err(StatusCode::SERVICE_UNAVAILABLE, e.report().to_string())
            }
            Err(e) => {
                log::error!("controller: {}", e.report());
                compat_err(StatusCode::INTERNAL_SERVER_ERROR, e.report().to_string())
            }
        }
    }

    async fn list(&self) -> Response<Full<Bytes>> {
        let counters = self.users.counters_fleet().await;
        let now = crate::users::limits::unix_now();
        let users: Vec<_> = self
            .users
            .list()
            .iter()
            .map(|u| {
                let counted = counters.get(&u.path).copied().unwrap_or_default();
                user_json(u, counted, now)
            })
            .collect();
        json(StatusCode::OK, &users)
    }

    async fn put(&self, req: Request<Incoming>, path: String) -> Response<Full<Bytes>> {
        let raw = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let put: PutUser = match serde_json::from_slice(&raw) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid JSON, expected {{\"dst\":\"host:port\"}} and any limits: {e}"),
                );
            }
        };
        let limits = match Limits::from_entry(&put.rest, &["dst"]) {
            Ok(l) => l,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.report().to_string()),
        };
        let change = Change::Add(vec![Entry {
            path: path.clone(),
            dst: put.dst,
            limits: Some(limits),
        }]);
        match self.users.apply(change.clone()).await {
            Ok(()) => {
                audit(&change);
                match self.users.get(&path) {
                    Some(u) => {
                        let mut v = serde_json::to_value(&u.limits).unwrap_or_default();
                        v["path"] = u.path.clone().into();
                        v["dst"] = u.dst.to_string().into();
                        json(StatusCode::OK, &v)
                    }
                    None => error(StatusCode::INTERNAL_SERVER_ERROR, "user vanished"),
                }
            }
            Err(e @ crate::Error::Usage(_)) => {
                error(StatusCode::BAD_REQUEST, e.report().to_string())
            }
            Err(e @ crate::Error::Unavailable { .. }) => {
                error(StatusCode::SERVICE_UNAVAILABLE, e.report().to_string())
            }
            Err(e) => {
                log::error!("controller: {}", e.report());
                error(StatusCode::INTERNAL_SERVER_ERROR, e.report().to_string())
            }
        }
    }

    async fn delete(&self, path: String, kick: bool) -> Response<Full<Bytes>> {
        let known = match kick {
            true => self.users.kickable(&path),
            false => self.users.get(&path).is_some(),
        };
        if !known {
            return error(StatusCode::NOT_FOUND, format!("no user with path {path}"));
        }
        let change = Change::Remove(vec![path.clone()], kick);
        match self.users.apply(change.clone()).await {
            Ok(()) => {
                audit(&change);
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "path": path, "removed": true, "kicked": kick }),
                )
            }
            Err(e @ crate::Error::Unavailable { .. }) => {
                error(StatusCode::SERVICE_UNAVAILABLE, e.report().to_string())
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.report().to_string()),
        }
    }

    async fn status(&self) -> Response<Full<Bytes>> {
        let users = self.users.list();
        let live: u64 = users.iter().map(|u| u.counters().0).sum();
        let mut status = serde_json::json!({
            "version": crate::VERSION,
            "users": users.len(),
            "connections": live,
            "uptime_seconds": self.started.elapsed().as_secs(),
        });
        if let Some(store) = self.users.store() {
            status["store"] = serde_json::json!({
                "kind": "redis",
                "state": if store.is_up() { "up" } else { "unreachable" },
                "table_version": self.users.version().await,
                "table_age_seconds": store.table_age().as_secs(),
            });
        }
        json(StatusCode::OK, &status)
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let users = self.users.list();
        let mut registry = Registry::with_prefix("mtt");
        let count = Gauge::<i64>::default();
        count.set(users.len() as i64);
        registry.register("users", "Users configured", count);
        if let Some(store) = self.users.store() {
            let up = Gauge::<i64>::default();
            up.set(i64::from(store.is_up()));
            registry.register(
                "users_store_up",
                "Whether the users' Redis answers (1) or not (0)",
                up,
            );
            let age = Gauge::<i64>::default();
            age.set(store.table_age().as_secs() as i64);
            registry.register(
                "users_table_age_seconds",
                "Seconds since the local user table was last known to equal Redis's",
                age,
            );
        }
        let live = Family::<UserLabel, Gauge>::default();
        let up = Family::<UserLabel, Counter>::default();
        let down = Family::<UserLabel, Counter>::default();
        let state = Family::<StateLabel, Gauge>::default();
        let remaining = Family::<UserLabel, Gauge>::default();
        let now = crate::users::limits::unix_now();
        for u in &users {
            let (l, bu, bd) = u.counters();
            let key = UserLabel {
                user: user_id(&u.path),
            };
            live.get_or_create(&key).set(l as i64);
            up.get_or_create(&key).inc_by(bu);
            down.get_or_create(&key).inc_by(bd);
            let now_state = u.refusal(now).map_or("active", |r| r.as_str());
            for s in ["active", "expired", "over_quota"] {
                let label = StateLabel {
                    user: key.user.clone(),
                    state: s,
                };
                state.get_or_create(&label).set(i64::from(s == now_state));
            }
            if let Some(left) = u.limits.remaining(u.used()) {
                remaining
                    .get_or_create(&key)
                    .set(i64::try_from(left).unwrap_or(i64::MAX));
            }
        }
        registry.register(
            "user_state",
            "1 for the state a user is in (active, expired, over_quota), 0 for the others",
            state,
        );
        registry.register(
            "user_quota_remaining_bytes",
            "Bytes a user with a quota may still move this period (fleet-wide with Redis)",
            remaining,
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        for (reason, n) in self.users.refusals() {
            refused
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
        registry.register(
            "user_refusals",
            "Tunnels refused by a user's limit, by reason (expired, over_quota, max_connections)",
            refused,
        );
        registry.register("user_connections", "Live tunnels of a user", live);
        registry.register(
            "user_bytes_up",
            "Bytes from the user's clients to its destination",
            up,
        );
        registry.register(
            "user_bytes_down",
            "Bytes from the user's destination to its clients",
            down,
        );
        // The process's own series first, then the users', on one page.
        let mut out = crate::metrics::get().render_open();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded",
            );
        }
        body(StatusCode::OK, crate::admin::OPENMETRICS, out)
    }
}
