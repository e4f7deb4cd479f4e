//! The pending list's storage: each appointment as QUBS last listed it, through
//! [`PendingListStore`] (domain types in and out), one implementation per backend
//! (`sqlite.rs`, `postgres.rs`). Replicas on PostgreSQL share the table: a listing any
//! replica saw serves every replica's lookups.

use std::sync::Arc;
use std::time::Duration;

use crate::qubs::Appointment;
use crate::store::{Database, StoreError};

/// The pending list's table on one backend.
#[async_trait::async_trait]
pub trait PendingListStore: Send + Sync {
    /// Stores these appointments as seen now (the time is the store's).
    async fn save(&self, domain: &str, appointments: Vec<Appointment>) -> Result<(), StoreError>;

    /// The appointment as last listed, if it ever was.
    async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Appointment>, StoreError>;

    /// The scheduled site of an appointment as last listed: `None` when it never was,
    /// `Some(None)` when it names no site.
    async fn site_name(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Option<String>>, StoreError>;

    /// Forgets appointments of `domain` not listed for `age`; answers how many.
    async fn forget_unseen_for(&self, domain: &str, age: Duration) -> Result<usize, StoreError>;
}

/// Appointments as last listed, in the store; cheap to clone.
#[derive(Clone)]
pub struct PendingStore {
    inner: Arc<dyn PendingListStore>,
}

impl PendingStore {
    pub fn new(db: &Database) -> PendingStore {
        let inner: Arc<dyn PendingListStore> = match db {
            Database::Sqlite(s) => Arc::new(super::sqlite::SqlitePending::new(s.clone())),
            Database::Postgres(p) => Arc::new(super::postgres::PgPending::new(p.clone())),
        };
        PendingStore { inner }
    }

    pub async fn save(
        &self,
        domain: &str,
        appointments: Vec<Appointment>,
    ) -> Result<(), StoreError> {
        if appointments.is_empty() {
            return Ok(());
        }
        self.inner.save(domain, appointments).await
    }

    pub async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Appointment>, StoreError> {
        self.inner.appointment(domain, appointment_id).await
    }

    pub async fn site_name(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        self.inner.site_name(domain, appointment_id).await
    }

    pub async fn forget_unseen_for(
        &self,
        domain: &str,
        age: Duration,
    ) -> Result<usize, StoreError> {
        self.inner.forget_unseen_for(domain, age).await
    }
}

/// What was stored was read from QUBS as an appointment; a row that no longer reads as one
/// (a damaged file) is as good as absent.
pub(super) fn read_document(document: Option<Vec<u8>>) -> Option<Appointment> {
    document
        .and_then(|d| serde_json::from_slice(&d).ok())
        .and_then(|v| Appointment::from_json(v).ok())
}
