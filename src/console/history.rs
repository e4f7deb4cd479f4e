//! Mapping versions promoted from the console: each promotion or rollback of a mapping
//! file, with the text before and after, the mapping-set versions, who and when. Kept in the
//! store next to the audit log, so any two versions can be compared and an older one put
//! back.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::store::{Cached, Store, StoreError};

/// The history's table, created by [`Store::open`].
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS console_mapping_versions (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    user_name   TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    file        TEXT    NOT NULL,
    before_text TEXT    NOT NULL,
    after_text  TEXT    NOT NULL,
    set_before  TEXT    NOT NULL,
    set_after   TEXT    NOT NULL,
    note        TEXT    NOT NULL,
    golden      TEXT    NOT NULL
);
";

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
    /// The mapping-set versions before and after.
    pub set_before: String,
    pub set_after: String,
    /// What the analyst said about it.
    pub note: String,
    /// The golden cases' outcome at promotion (counts, and expectations rewritten).
    pub golden: String,
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

/// The mapping history in the store.
#[derive(Clone)]
pub struct History {
    store: Arc<Store>,
}

const COLUMNS: &str = "id, at, user_name, action, file, set_before, set_after, note, golden, \
                       before_text, after_text";

fn read(r: &rusqlite::Row) -> rusqlite::Result<Version> {
    Ok(Version {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        user: r.get(2)?,
        action: r.get(3)?,
        file: r.get(4)?,
        set_before: r.get(5)?,
        set_after: r.get(6)?,
        note: r.get(7)?,
        golden: r.get(8)?,
        before_text: r.get(9)?,
        after_text: r.get(10)?,
    })
}

impl History {
    pub fn new(store: Arc<Store>) -> History {
        History { store }
    }

    /// Records a version; returns its id.
    pub async fn record(&self, v: NewVersion) -> Result<i64, StoreError> {
        self.store
            .write(move |tx, now| {
                tx.exec(
                    "INSERT INTO console_mapping_versions (at, user_name, action, file,
                         before_text, after_text, set_before, set_after, note, golden)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        now,
                        v.user,
                        v.action,
                        v.file,
                        v.before_text,
                        v.after_text,
                        v.set_before,
                        v.set_after,
                        v.note,
                        v.golden
                    ],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await
    }

    /// The newest versions first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Version>, StoreError> {
        self.store
            .read(move |tx, _| {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM console_mapping_versions ORDER BY id DESC LIMIT ?1"
                ))?;
                stmt.query_map(params![limit.max(1) as i64], read)?
                    .collect()
            })
            .await
    }

    /// One version.
    pub async fn get(&self, id: i64) -> Result<Option<Version>, StoreError> {
        self.store
            .read(move |tx, _| {
                tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM console_mapping_versions WHERE id = ?1"
                ))?
                .query_row(params![id], read)
                .optional()
            })
            .await
    }
}
