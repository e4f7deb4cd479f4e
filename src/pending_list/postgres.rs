//! The pending list on PostgreSQL, shared by the replicas.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use tokio_postgres::types::ToSql;

use super::store::{PendingListStore, read_document};
use crate::qubs::Appointment;
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::postgres::Postgres;

pub(super) static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "appointments as last listed",
    sql: "
CREATE TABLE pending_appointments (
    domain          TEXT    NOT NULL,
    appointment_id  TEXT    NOT NULL,
    site_name       TEXT,
    document        BYTEA   NOT NULL,
    seen_at         BIGINT  NOT NULL,
    PRIMARY KEY (domain, appointment_id)
);
CREATE INDEX pending_appointments_seen ON pending_appointments (domain, seen_at);
",
}];

pub(super) struct PgPending {
    pg: Arc<Postgres>,
}

impl PgPending {
    pub(super) fn new(pg: Arc<Postgres>) -> PgPending {
        PgPending { pg }
    }
}

#[async_trait::async_trait]
impl PendingListStore for PgPending {
    async fn save(&self, domain: &str, appointments: Vec<Appointment>) -> Result<(), StoreError> {
        let pg = &self.pg;
        let fail = |e| pg.failed("pending_list", e);
        let mut client = pg.client("pending_list").await?;
        let tx = client.transaction().await.map_err(fail)?;
        let upsert = tx
            .prepare_cached(
                "INSERT INTO pending_appointments
                     (domain, appointment_id, site_name, document, seen_at)
                 VALUES ($1, $2, $3, $4, bridge_now_ms())
                 ON CONFLICT (domain, appointment_id) DO UPDATE SET
                     site_name = excluded.site_name,
                     document = excluded.document,
                     seen_at = excluded.seen_at",
            )
            .await
            .map_err(fail)?;
        let rows: Vec<(&str, Option<&str>, Vec<u8>)> = appointments
            .iter()
            .map(|a| {
                (
                    a.id(),
                    a.scheduled_site(),
                    serde_json::to_vec(a.fields()).expect("JSON serializes"),
                )
            })
            .collect();
        // Pipelined, one round trip for the lot; the calls borrow their parameters.
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = rows
            .iter()
            .map(|(id, site, document)| -> Vec<&(dyn ToSql + Sync)> {
                vec![&domain, id, site, document]
            })
            .collect();
        try_join_all(params.iter().map(|p| tx.execute(&upsert, p)))
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Appointment>, StoreError> {
        let client = self.pg.client("pending_list").await?;
        let row = client
            .query_opt(
                "SELECT document FROM pending_appointments
                 WHERE domain = $1 AND appointment_id = $2",
                &[&domain, &appointment_id],
            )
            .await
            .map_err(|e| self.pg.failed("pending_list", e))?;
        Ok(read_document(row.map(|r| r.get(0))))
    }

    async fn site_name(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let client = self.pg.client("pending_list").await?;
        let row = client
            .query_opt(
                "SELECT site_name FROM pending_appointments
                 WHERE domain = $1 AND appointment_id = $2",
                &[&domain, &appointment_id],
            )
            .await
            .map_err(|e| self.pg.failed("pending_list", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn forget_unseen_for(&self, domain: &str, age: Duration) -> Result<usize, StoreError> {
        let client = self.pg.client("pending_list").await?;
        let n = client
            .execute(
                "DELETE FROM pending_appointments
                 WHERE domain = $1 AND seen_at < bridge_now_ms() - $2",
                &[&domain, &(age.as_millis() as i64)],
            )
            .await
            .map_err(|e| self.pg.failed("pending_list", e))?;
        Ok(n as usize)
    }
}
