//! The `[console]` section: who may sign in to the web console, with which roles, and how
//! long a session lasts.

use serde::{Deserialize, Serialize};

use super::auth::Role;

/// The console's settings. Every field has a default; with no users configured the console
/// answers every request with 401 (there is no one to sign in).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve the console under `/console/` on the admin listener.
    pub enabled: bool,
    /// A session unused this long is closed (the user signs in again).
    pub session_idle_timeout_secs: u64,
    /// A session ends this long after sign-in, however busy.
    pub session_max_hours: u64,
    /// Sessions open at once, over all users; the oldest idle one makes room.
    pub max_sessions: usize,
    /// Who may sign in: one table per user or group.
    pub users: Vec<ConsoleUser>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            session_idle_timeout_secs: 1800,
            session_max_hours: 12,
            max_sessions: 1000,
            users: Vec::new(),
        }
    }
}

/// One console user, identified like a gRPC caller by a bearer token, stored as its SHA-256
/// (the admin listener speaks plain HTTP, so there are no client certificates).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    /// Shown in the page and written to the audit log, e.g. `jsmith`.
    pub name: String,
    /// SHA-256 (hex) of the user's token (`qubs-bridge grpc new-token` makes a pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// `viewer` (dashboards, no patient data), `analyst` (mapping playground, promote),
    /// `operator` (retry, purge, resend). Every user can view.
    pub roles: Vec<Role>,
    /// QUBS domains whose outbox and orders the user sees; empty: all of `qubs.domains`.
    #[serde(default)]
    pub domains: Vec<String>,
}

impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl ConsoleSettings {
    /// Checks what the types cannot; `domains` are the bridge's `qubs.domains`.
    pub fn validate(&self, domains: &[String]) -> Result<(), (String, String)> {
        let invalid = |key: String, reason: &str| Err((key, reason.to_string()));
        if self.session_idle_timeout_secs == 0 {
            return invalid(
                "console.session_idle_timeout_secs".into(),
                "must be positive",
            );
        }
        if self.session_max_hours == 0 {
            return invalid("console.session_max_hours".into(), "must be positive");
        }
        if self.max_sessions == 0 {
            return invalid("console.max_sessions".into(), "must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = |field: &str| format!("console.users[{i}].{field}");
            if u.name.trim().is_empty() {
                return invalid(key("name"), "must not be empty");
            }
            if !names.insert(u.name.as_str()) {
                return Err((key("name"), format!("`{}` is used twice", u.name)));
            }
            match &u.token_sha256 {
                None => {
                    return invalid(
                        key("token_sha256"),
                        "set the SHA-256 of the user's token (qubs-bridge grpc new-token prints a pair)",
                    );
                }
                Some(h) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return invalid(
                        key("token_sha256"),
                        "must be 64 hex digits (qubs-bridge grpc new-token prints one)",
                    );
                }
                Some(_) => {}
            }
            if u.roles.is_empty() {
                return invalid(
                    key("roles"),
                    "list at least one role: viewer, analyst or operator",
                );
            }
            for d in &u.domains {
                if !domains.contains(d) {
                    return Err((key("domains"), format!("`{d}` is not one of qubs.domains")));
                }
            }
        }
        Ok(())
    }
}
