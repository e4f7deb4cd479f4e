//! Who is using the console: users (a token hash, with roles), sessions (a Secure, HttpOnly,
//! SameSite=Strict cookie) with an idle timeout, and the CSRF token every state change made
//! with a session must carry.
//!
//! The cookie is always `Secure`: browsers keep it over HTTPS and over plain HTTP to
//! `localhost` only, so a console reached over the network needs TLS in front of the admin
//! listener (a reverse proxy) before anyone can sign in with a browser.
//!
//! Requests authenticate with the session cookie or with `Authorization: Bearer <token>`
//! (scripts and tests). A bearer request carries no ambient credential a foreign page could
//! borrow, so it needs no CSRF token; a cookie request that changes state needs the
//! session's token in `X-CSRF-Token`, and a JSON body (which a cross-site form cannot send).
//!
//! Sessions live in the process: a restart signs everyone out. Session ids and tokens are
//! compared by their SHA-256, so a memory dump of the table holds no usable cookie.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::settings::{ConsoleSettings, ConsoleUser};
use crate::grpc::auth::{hash_token, new_token};

/// The session cookie's name.
pub const COOKIE: &str = "qb_console";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a user may do. Every user may view; the others add rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Dashboards: queues, states, ids and reasons; no patient data.
    Viewer,
    /// The mapping playground (orders and results with patient data), promote and roll back.
    Analyst,
    /// Retry, purge and resend.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Operator => "operator",
        }
    }
}

/// A configured user.
#[derive(Debug)]
pub struct User {
    pub name: String,
    roles: HashSet<Role>,
    /// Empty: every domain the bridge serves.
    domains: Vec<String>,
}

impl User {
    pub fn has(&self, role: Role) -> bool {
        role == Role::Viewer || self.roles.contains(&role)
    }

    /// The user's roles, viewer included, in order.
    pub fn roles(&self) -> Vec<Role> {
        let mut r: Vec<Role> = self.roles.iter().copied().collect();
        r.push(Role::Viewer);
        r.sort();
        r.dedup();
        r
    }

    /// The domains the user sees among `all` (the bridge's).
    pub fn domains(&self, all: &[String]) -> Vec<String> {
        if self.domains.is_empty() {
            all.to_vec()
        } else {
            all.iter()
                .filter(|d| self.domains.contains(d))
                .cloned()
                .collect()
        }
    }

    pub fn may_see(&self, domain: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d == domain)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No credentials, unknown ones, or an expired session: 401.
    Unauthenticated(&'static str),
    /// A role the user lacks: 403.
    Forbidden(String),
    /// A state change without the session's CSRF token, or not as JSON: 403.
    Csrf(&'static str),
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refused::Forbidden(_) | Refused::Csrf(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::Unauthenticated(m) | Refused::Csrf(m) => m.to_string(),
            Refused::Forbidden(m) => m.clone(),
        }
    }
}

struct Session {
    user: Arc<User>,
    csrf: String,
    started: Instant,
    last_seen: Instant,
}

/// The console's users and open sessions.
pub struct Access {
    by_token: HashMap<String, Arc<User>>,
    sessions: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max_age: Duration,
    max_sessions: usize,
}

/// The caller of one request.
#[derive(Clone)]
pub struct Caller {
    pub user: Arc<User>,
    /// The session's CSRF token; `None` for bearer requests.
    pub csrf: Option<String>,
    /// How the caller authenticated, for the audit log: `session` or `token`.
    pub via: &'static str,
}

/// A new session: the cookie value (shown once, to the browser) and its CSRF token.
pub struct NewSession {
    pub cookie: String,
    pub csrf: String,
    pub user: Arc<User>,
}

impl Access {
    pub fn new(settings: &ConsoleSettings) -> Access {
        let mut by_token = HashMap::new();
        for u in &settings.users {
            if let Some(h) = &u.token_sha256 {
                by_token.insert(h.to_ascii_lowercase(), Arc::new(user(u)));
            }
        }
        Access {
            by_token,
            sessions: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(settings.session_idle_timeout_secs),
            max_age: Duration::from_secs(settings.session_max_hours.saturating_mul(3600)),
            max_sessions: settings.max_sessions,
        }
    }

    /// The idle timeout, for the page (it signs out a little before).
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// The longest a session lasts (the cookie's Max-Age).
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The user behind a token, if any.
    pub fn by_token(&self, token: &str) -> Option<Arc<User>> {
        self.by_token.get(&hash_token(token)).cloned()
    }

    /// Opens a session for `user`.
    pub fn open(&self, user: Arc<User>) -> NewSession {
        let cookie = new_token();
        let csrf = new_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions");
        self.expire(&mut sessions, now);
        if sessions.len() >= self.max_sessions
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash_token(&cookie),
            Session {
                user: user.clone(),
                csrf: csrf.clone(),
                started: now,
                last_seen: now,
            },
        );
        NewSession { cookie, csrf, user }
    }

    /// Closes the session behind a cookie value.
    pub fn close(&self, cookie: &str) {
        self.sessions
            .lock()
            .expect("sessions")
            .remove(&hash_token(cookie));
    }

    /// Open sessions (for metrics and tests).
    pub fn open_sessions(&self) -> usize {
        let mut sessions = self.sessions.lock().expect("sessions");
        self.expire(&mut sessions, Instant::now());
        sessions.len()
    }

    fn expire(&self, sessions: &mut HashMap<String, Session>, now: Instant) {
        sessions.retain(|_, s| {
            now.duration_since(s.last_seen) < self.idle
                && now.duration_since(s.started) < self.max_age
        });
    }

    /// Authenticates a request by its bearer token or session cookie, and for a state change
    /// made with a session checks its CSRF token.
    pub fn authenticate(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, Refused> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(Refused::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`",
                ))?;
            let user = self
                .by_token(token)
                .ok_or(Refused::Unauthenticated("unknown bearer token"))?;
            return Ok(Caller {
                user,
                csrf: None,
                via: "token",
            });
        }
        let cookie = session_cookie(headers).ok_or(Refused::Unauthenticated(
            "sign in first: no session cookie and no bearer token",
        ))?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions");
        let key = hash_token(cookie);
        let Some(session) = sessions.get_mut(&key) else {
            return Err(Refused::Unauthenticated(
                "the session has ended (signed out, timed out, or the bridge restarted): sign in again",
            ));
        };
        if now.duration_since(session.last_seen) >= self.idle
            || now.duration_since(session.started) >= self.max_age
        {
            sessions.remove(&key);
            return Err(Refused::Unauthenticated(
                "the session timed out: sign in again",
            ));
        }
        if changes_state(method) {
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|s| constant_time_eq(s.as_bytes(), session.csrf.as_bytes())) {
                return Err(Refused::Csrf(
                    "missing or wrong X-CSRF-Token header: reload the console",
                ));
            }
        }
        session.last_seen = now;
        Ok(Caller {
            user: session.user.clone(),
            csrf: Some(session.csrf.clone()),
            via: "session",
        })
    }
}

fn user(u: &ConsoleUser) -> User {
    User {
        name: u.name.clone(),
        roles: u.roles.iter().copied().collect(),
        domains: u.domains.clone(),
    }
}

/// POST, PUT, PATCH and DELETE change state; GET and HEAD never do.
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a session, or one that removes it.
pub fn set_cookie(value: Option<&str>, max_age: Duration) -> String {
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            max_age.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// Compares without an early exit, so timing tells nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(idle_secs: u64) -> Access {
        Access::new(&ConsoleSettings {
            session_idle_timeout_secs: idle_secs,
            users: vec![
                ConsoleUser {
                    name: "ana".into(),
                    token_sha256: Some(hash_token("ana-token")),
                    roles: vec![Role::Analyst],
                    domains: vec![],
                },
                ConsoleUser {
                    name: "ops".into(),
                    token_sha256: Some(hash_token("ops-token")),
                    roles: vec![Role::Operator],
                    domains: vec!["acme".into()],
                },
            ],
            ..ConsoleSettings::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_tokens_and_roles() {
        let a = access(60);
        let caller = a
            .authenticate(
                &Method::POST,
                &headers(&[("authorization", "Bearer ana-token")]),
            )
            .unwrap();
        assert_eq!(caller.user.name, "ana");
        assert!(caller.user.has(Role::Viewer) && caller.user.has(Role::Analyst));
        assert!(!caller.user.has(Role::Operator));
        assert_eq!(caller.user.roles(), vec![Role::Viewer, Role::Analyst]);
        for bad in [
            headers(&[("authorization", "Bearer nope")]),
            headers(&[("authorization", "Basic abc")]),
            headers(&[]),
            headers(&[("cookie", "qb_console=forged")]),
        ] {
            assert!(matches!(
                a.authenticate(&Method::GET, &bad),
                Err(Refused::Unauthenticated(_))
            ));
        }
        let ops = a.by_token("ops-token").unwrap();
        assert!(ops.may_see("acme") && !ops.may_see("globex"));
        assert_eq!(ops.domains(&["acme".into(), "globex".into()]), vec!["acme"]);
    }

    #[test]
    fn sessions_need_their_csrf_token_to_change_state_and_end() {
        let a = access(60);
        let s = a.open(a.by_token("ana-token").unwrap());
        let cookie = format!("other=1; {COOKIE}={}", s.cookie);
        let get = headers(&[("cookie", &cookie)]);
        assert_eq!(a.authenticate(&Method::GET, &get).unwrap().user.name, "ana");
        assert!(matches!(
            a.authenticate(&Method::POST, &get),
            Err(Refused::Csrf(_))
        ));
        let wrong = headers(&[("cookie", &cookie), (CSRF_HEADER, "x")]);
        assert!(matches!(
            a.authenticate(&Method::POST, &wrong),
            Err(Refused::Csrf(_))
        ));
        let right = headers(&[("cookie", &cookie), (CSRF_HEADER, &s.csrf)]);
        assert!(a.authenticate(&Method::POST, &right).is_ok());
        a.close(&s.cookie);
        assert!(matches!(
            a.authenticate(&Method::GET, &get),
            Err(Refused::Unauthenticated(_))
        ));
    }

    #[test]
    fn idle_sessions_time_out() {
        let a = access(1);
        let s = a.open(a.by_token("ana-token").unwrap());
        let get = headers(&[("cookie", &format!("{COOKIE}={}", s.cookie))]);
        assert!(a.authenticate(&Method::GET, &get).is_ok());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            a.authenticate(&Method::GET, &get).err().map(|e| e.status()),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(a.open_sessions(), 0);
    }

    #[test]
    fn cookies_are_secure_http_only_and_same_site() {
        let c = set_cookie(Some("abc"), Duration::from_secs(60));
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/console",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(set_cookie(None, Duration::ZERO).contains("Max-Age=0"));
    }
}
