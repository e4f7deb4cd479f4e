//! The console's storage: the [`super::audit`] log and the mapping [`super::history`],
//! through [`ConsoleStore`] (domain types in and out), one implementation per backend
//! (`sqlite.rs`, `postgres.rs`), each with its own migrations ([`SCHEMA`]). On PostgreSQL
//! every replica writes to and reads from the same tables, so any replica's console shows
//! the whole cluster's audit log and history.

use std::sync::Arc;

use super::audit::{AuditEntry, Change};
use super::history::{NewVersion, Recorded, Version};
use crate::store::migrate::Component;
use crate::store::{Database, StoreError};

/// The console's tables on each backend.
pub static SCHEMA: Component = Component {
    name: "console",
    copy: &[
        ("console_audit", "console_audit"),
        ("console_mapping_versions", "console_mapping_versions"),
    ],
    sqlite: super::sqlite::MIGRATIONS,
    postgres: super::postgres::MIGRATIONS,
};

/// The console's tables on one backend. Times are the store's clock; every row names the
/// replica that wrote it.
#[async_trait::async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Appends an audit entry; returns its id.
    async fn record_audit(&self, change: Change) -> Result<i64, StoreError>;
    /// Up to `limit` audit entries, newest first, older than `before_id` when positive.
    async fn audit(&self, before_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Appends a mapping version if the file's latest version id is still `latest`.
    async fn record_version(
        &self,
        v: NewVersion,
        latest: Option<i64>,
    ) -> Result<Recorded, StoreError>;
    /// Up to `limit` versions, newest first.
    async fn versions(&self, limit: usize) -> Result<Vec<Version>, StoreError>;
    async fn version(&self, id: i64) -> Result<Option<Version>, StoreError>;
    /// The newest version of `file`.
    async fn latest_version(&self, file: &str) -> Result<Option<Version>, StoreError>;
    /// The replica this process records as.
    fn replica(&self) -> &str;
    /// Whether other replicas share these tables (PostgreSQL).
    fn shared(&self) -> bool;
}

/// The console's storage in `db`.
pub fn open(db: &Database) -> Arc<dyn ConsoleStore> {
    let replica = db.replica().id.clone();
    match db {
        Database::Sqlite(s) => Arc::new(super::sqlite::SqliteConsole::new(s.clone(), replica)),
        Database::Postgres(p) => Arc::new(super::postgres::PgConsole::new(p.clone(), replica)),
    }
}
