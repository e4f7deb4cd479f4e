//! The pending list on the embedded store (SQLite).

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::store::{PendingListStore, read_document};
use crate::qubs::Appointment;
use crate::store::StoreError;
use crate::store::migrate::Migration;
use crate::store::sqlite::{Cached, Store};

pub(super) static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "appointments as last listed",
    sql: "
CREATE TABLE IF NOT EXISTS pending_appointments (
    domain          TEXT    NOT NULL,
    appointment_id  TEXT    NOT NULL,
    site_name       TEXT,
    document        BLOB    NOT NULL,
    seen_at         INTEGER NOT NULL,
    PRIMARY KEY (domain, appointment_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_appointments_seen ON pending_appointments(domain, seen_at);
",
}];

pub(super) struct SqlitePending {
    store: Arc<Store>,
}

impl SqlitePending {
    pub(super) fn new(store: Arc<Store>) -> SqlitePending {
        SqlitePending { store }
    }
}

#[async_trait::async_trait]
impl PendingListStore for SqlitePending {
    async fn save(&self, domain: &str, appointments: Vec<Appointment>) -> Result<(), StoreError> {
        let domain = domain.to_string();
        self.store
            .write(move |tx, now| {
                for a in &appointments {
                    let document = serde_json::to_vec(a.fields()).expect("JSON serializes");
                    tx.exec(
                        "INSERT INTO pending_appointments
                             (domain, appointment_id, site_name, document, seen_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (domain, appointment_id) DO UPDATE SET
                             site_name = excluded.site_name,
                             document = excluded.document,
                             seen_at = excluded.seen_at",
                        params![domain, a.id(), a.scheduled_site(), document, now],
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Appointment>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        let document: Option<Vec<u8>> = self
            .store
            .read(move |tx, _| {
                tx.row(
                    "SELECT document FROM pending_appointments
                     WHERE domain = ?1 AND appointment_id = ?2",
                    params![domain, id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(read_document(document))
    }

    async fn site_name(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let (domain, id) = (domain.to_string(), appointment_id.to_string());
        self.store
            .read(move |tx, _| {
                tx.row(
                    "SELECT site_name FROM pending_appointments
                     WHERE domain = ?1 AND appointment_id = ?2",
                    params![domain, id],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()
            })
            .await
    }

    async fn forget_unseen_for(&self, domain: &str, age: Duration) -> Result<usize, StoreError> {
        let domain = domain.to_string();
        let age_ms = age.as_millis() as i64;
        self.store
            .write(move |tx, now| {
                tx.exec(
                    "DELETE FROM pending_appointments WHERE domain = ?1 AND seen_at < ?2",
                    params![domain, now - age_ms],
                )
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::PendingStore;
    use crate::qubs::Appointment;
    use crate::store::{Database, StoreMetrics, StoreSettings};
    use serde_json::json;

    fn appointment(id: &str, site: Option<&str>, name: &str) -> Appointment {
        Appointment::from_json(
            json!({"appointmentId": id, "scheduledSite": site, "patientName": name, "x": [1]}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn appointments_round_trip_by_domain_and_are_forgotten_when_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("bridge.db"),
            ..Default::default()
        };
        let db = Database::open(
            &settings,
            &crate::service::SCHEMA,
            StoreMetrics::default().into(),
        )
        .await
        .unwrap();
        let store = PendingStore::new(&db);
        store
            .save(
                "acme",
                vec![
                    appointment("A1", Some("Harbour Imaging"), "One"),
                    appointment("A2", None, "Two"),
                ],
            )
            .await
            .unwrap();
        let a1 = store.appointment("acme", "A1").await.unwrap().unwrap();
        assert_eq!(a1, appointment("A1", Some("Harbour Imaging"), "One"));
        assert_eq!(
            store.site_name("acme", "A1").await.unwrap(),
            Some(Some("Harbour Imaging".into()))
        );
        assert_eq!(store.site_name("acme", "A2").await.unwrap(), Some(None));
        assert_eq!(store.site_name("acme", "A3").await.unwrap(), None);
        assert_eq!(store.appointment("globex", "A1").await.unwrap(), None);
        // A later listing replaces the earlier one.
        store
            .save("acme", vec![appointment("A1", Some("Lakeside MRI"), "Uno")])
            .await
            .unwrap();
        assert_eq!(
            store.appointment("acme", "A1").await.unwrap().unwrap(),
            appointment("A1", Some("Lakeside MRI"), "Uno")
        );
        assert_eq!(
            store
                .forget_unseen_for("acme", std::time::Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            store
                .forget_unseen_for("acme", std::time::Duration::from_millis(10))
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.appointment("acme", "A1").await.unwrap(), None);
    }
}
