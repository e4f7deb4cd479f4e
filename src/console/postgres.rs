//! The console's tables on PostgreSQL, shared by the replicas: every replica's console
//! reads the whole cluster's audit log and mapping history.

use std::sync::Arc;

use tokio_postgres::Row;

use super::audit::{AuditEntry, Change};
use super::history::{NewVersion, Recorded, Version};
use super::store::ConsoleStore;
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::postgres::{CONSOLE_HISTORY_LOCK, Postgres};

pub(super) static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "audit log, mapping versions",
    sql: "
CREATE TABLE console_audit (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT  NOT NULL,
    user_name TEXT    NOT NULL,
    via       TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    replica   TEXT    NOT NULL
);
CREATE TABLE console_mapping_versions (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT  NOT NULL,
    user_name   TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    file        TEXT    NOT NULL,
    before_text TEXT    NOT NULL,
    after_text  TEXT    NOT NULL,
    set_before  TEXT    NOT NULL,
    set_after   TEXT    NOT NULL,
    note        TEXT    NOT NULL,
    golden      TEXT    NOT NULL,
    replica     TEXT    NOT NULL
);
CREATE INDEX console_mapping_versions_file ON console_mapping_versions (file, id);
",
}];

const AUDIT_COLUMNS: &str = "id, at, user_name, via, action, target, detail, outcome, replica";

const VERSION_COLUMNS: &str = "id, at, user_name, action, file, set_before, set_after, note, \
                               golden, replica, before_text, after_text";

fn read_audit(r: &Row) -> AuditEntry {
    AuditEntry {
        id: r.get(0),
        at_ms: r.get(1),
        user: r.get(2),
        via: r.get(3),
        action: r.get(4),
        target: r.get(5),
        detail: r.get(6),
        outcome: r.get(7),
        replica: r.get(8),
    }
}

fn read_version(r: &Row) -> Version {
    Version {
        id: r.get(0),
        at_ms: r.get(1),
        user: r.get(2),
        action: r.get(3),
        file: r.get(4),
        set_before: r.get(5),
        set_after: r.get(6),
        note: r.get(7),
        golden: r.get(8),
        replica: r.get(9),
        before_text: r.get(10),
        after_text: r.get(11),
    }
}

pub(super) struct PgConsole {
    pg: Arc<Postgres>,
    replica: String,
}

impl PgConsole {
    pub(super) fn new(pg: Arc<Postgres>, replica: String) -> PgConsole {
        PgConsole { pg, replica }
    }
}

#[async_trait::async_trait]
impl ConsoleStore for PgConsole {
    async fn record_audit(&self, c: Change) -> Result<i64, StoreError> {
        let pg = &self.pg;
        let client = pg.client("console_write").await?;
        let row = client
            .query_one(
                "INSERT INTO console_audit
                     (at, user_name, via, action, target, detail, outcome, replica)
                 VALUES (bridge_now_ms(), $1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &c.user,
                    &c.via,
                    &c.action,
                    &c.target,
                    &c.detail,
                    &c.outcome,
                    &self.replica,
                ],
            )
            .await
            .map_err(|e| pg.failed("console_write", e))?;
        Ok(row.get(0))
    }

    async fn audit(&self, before_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("console_read").await?;
        let limit = limit as i64;
        let rows = client
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM console_audit
                     WHERE $1::bigint <= 0 OR id < $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&before_id, &limit],
            )
            .await
            .map_err(|e| pg.failed("console_read", e))?;
        Ok(rows.iter().map(read_audit).collect())
    }

    async fn record_version(
        &self,
        v: NewVersion,
        latest: Option<i64>,
    ) -> Result<Recorded, StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("console_write", e);
        let mut client = pg.client("console_write").await?;
        let tx = client.transaction().await.map_err(fail)?;
        // Replicas record versions one at a time, so the check below and the insert see
        // every version committed before them.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CONSOLE_HISTORY_LOCK])
            .await
            .map_err(fail)?;
        let current = tx
            .query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM console_mapping_versions WHERE file = $1
                     ORDER BY id DESC LIMIT 1"
                ),
                &[&v.file],
            )
            .await
            .map_err(fail)?
            .map(|r| read_version(&r));
        if let Some(current) = current
            && Some(current.id) != latest
        {
            return Ok(Recorded::Superseded(Box::new(current)));
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO console_mapping_versions (at, user_name, action, file,
                     before_text, after_text, set_before, set_after, note, golden, replica)
                 VALUES (bridge_now_ms(), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 RETURNING id",
                &[
                    &v.user,
                    &v.action,
                    &v.file,
                    &v.before_text,
                    &v.after_text,
                    &v.set_before,
                    &v.set_after,
                    &v.note,
                    &v.golden,
                    &self.replica,
                ],
            )
            .await
            .map_err(fail)?
            .get(0);
        tx.commit().await.map_err(fail)?;
        Ok(Recorded::Stored(id))
    }

    async fn versions(&self, limit: usize) -> Result<Vec<Version>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("console_read").await?;
        let limit = limit as i64;
        let rows = client
            .query(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM console_mapping_versions
                     ORDER BY id DESC LIMIT $1"
                ),
                &[&limit],
            )
            .await
            .map_err(|e| pg.failed("console_read", e))?;
        Ok(rows.iter().map(read_version).collect())
    }

    async fn version(&self, id: i64) -> Result<Option<Version>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("console_read").await?;
        let row = client
            .query_opt(
                &format!("SELECT {VERSION_COLUMNS} FROM console_mapping_versions WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(|e| pg.failed("console_read", e))?;
        Ok(row.as_ref().map(read_version))
    }

    async fn latest_version(&self, file: &str) -> Result<Option<Version>, StoreError> {
        let pg = &self.pg;
        let client = pg.client("console_read").await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM console_mapping_versions WHERE file = $1
                     ORDER BY id DESC LIMIT 1"
                ),
                &[&file],
            )
            .await
            .map_err(|e| pg.failed("console_read", e))?;
        Ok(row.as_ref().map(read_version))
    }

    fn replica(&self) -> &str {
        &self.replica
    }

    fn shared(&self) -> bool {
        true
    }
}
