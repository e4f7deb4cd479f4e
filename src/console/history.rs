//! Mapping versions promoted from the console: each promotion or rollback of a mapping
//! file, with the text before and after, the mapping-set versions, who, when and on which
//! replica. Kept in the store ([`super::store`]) next to the audit log, so any two versions
//! can be compared and an older one put back, from any replica.

use std::sync::Arc;

use serde::Serialize;

use super::store::ConsoleStore;
use crate::store::StoreError;

/// One promotion or rollback.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub id: i64,
    /// Unix milliseconds (the store's clock).
    pub at_ms: i64,
    pub user: String,
    /// `promote` or `rollback`.
    pub action: String,
    /// The mapping file's name in the mapping directory.
    pub file: String,
    /// The mapping-set versions before and after (on the replica that wrote the file).
    pub set_before: String,
    pub set_after: String,
    /// What the analyst said about it.
    pub note: String,
    /// The golden cases' outcome at promotion (counts, and expectations rewritten).
    pub golden: String,
    /// The replica whose mapping directory was written.
    pub replica: String,
    #[serde(skip)]
    pub before_text: String,
    #[serde(skip)]
    pub after_text: String,
}

/// A version about to be recorded.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub user: String,
    pub action: String,
    pub file: String,
    pub before_text: String,
    pub after_text: String,
    pub set_before: String,
    pub set_after: String,
    pub note: String,
    pub golden: String,
}

/// What [`History::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored with this id.
    Stored(i64),
    /// Not stored: the file's latest version is no longer the one the promotion started
    /// from (another replica recorded one meanwhile); here it is.
    Superseded(Box<Version>),
}

/// The mapping history in the store; cheap to clone.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn ConsoleStore>,
}

impl History {
    pub fn new(store: Arc<dyn ConsoleStore>) -> History {
        History { store }
    }

    /// Records a version, provided the file's latest version is still `latest` (its id;
    /// `None`: the file had none) — checked and written in one transaction, so of two
    /// replicas promoting the same file at once only one records.
    pub async fn record(&self, v: NewVersion, latest: Option<i64>) -> Result<Recorded, StoreError> {
        self.store.record_version(v, latest).await
    }

    /// The newest versions first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Version>, StoreError> {
        self.store.versions(limit.max(1)).await
    }

    /// One version.
    pub async fn get(&self, id: i64) -> Result<Option<Version>, StoreError> {
        self.store.version(id).await
    }

    /// The latest version of one mapping file, on whichever replica it was recorded.
    pub async fn latest(&self, file: &str) -> Result<Option<Version>, StoreError> {
        self.store.latest_version(file).await
    }

    /// The replica this process records as.
    pub fn replica(&self) -> &str {
        self.store.replica()
    }

    /// Whether other replicas record versions in the same history (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.store.shared()
    }
}
