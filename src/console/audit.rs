//! The audit log: who changed what, and when — every retry, purge, promotion, rollback and
//! resend made through the console, and every sign-in. Kept in the store ([`super::store`]),
//! next to what it describes, so it survives restarts and every replica on PostgreSQL shows
//! the whole cluster's; entries name ids and counts, never patient data.

use std::sync::Arc;

use serde::Serialize;

use super::store::ConsoleStore;
use crate::store::StoreError;

/// One change, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds (the store's clock).
    pub at_ms: i64,
    pub user: String,
    /// How the user authenticated: `session`, `token` or `certificate`.
    pub via: String,
    /// What was done, e.g. `outbox.retry`, `outbox.purge`, `feed.retry`, `login`.
    pub action: String,
    /// What it was done to: ids, a destination, a mapping version.
    pub target: String,
    /// The request's parameters and counts (no patient data).
    pub detail: String,
    /// `ok`, or why it failed.
    pub outcome: String,
    /// The replica whose console took the request.
    pub replica: String,
}

/// A change about to be recorded.
#[derive(Debug, Clone)]
pub struct Change {
    pub user: String,
    pub via: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub outcome: String,
}

/// The audit log in the store; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn ConsoleStore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn ConsoleStore>) -> AuditLog {
        AuditLog { store }
    }

    /// Records a change (the time is the store's, the replica this one).
    pub async fn record(&self, change: Change) -> Result<i64, StoreError> {
        self.store.record_audit(change).await
    }

    /// The newest entries first, those older than `before_id` when it is positive.
    pub async fn list(&self, before_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.audit(before_id, limit.max(1)).await
    }
}
