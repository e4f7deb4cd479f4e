//! Versioned schemas: each component (the store itself, the outbox, the feed) lists its
//! migrations per backend, numbered from 1; the database records the version each
//! component is at (table `bridge_schema`), and the runner applies what is missing, in
//! order, in one transaction.

use super::{Backend, StoreError};

/// One step of a component's schema.
#[derive(Debug)]
pub struct Migration {
    /// 1, 2, 3… in order, without gaps.
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// A component's tables: its migrations on each backend.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub sqlite: &'static [Migration],
    pub postgres: &'static [Migration],
    /// `store copy`: each SQLite table and the PostgreSQL table it goes into, parents
    /// before children. Columns are matched by name.
    pub copy: &'static [(&'static str, &'static str)],
}

impl Component {
    pub fn migrations(&self, backend: Backend) -> &'static [Migration] {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }

    /// The version this build brings the component to.
    pub fn latest(&self, backend: Backend) -> u32 {
        self.migrations(backend).last().map_or(0, |m| m.version)
    }
}

/// Where a component's schema stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentVersion {
    pub name: &'static str,
    /// As recorded in the database (0: none of its tables yet).
    pub stored: u32,
    /// What this build knows.
    pub known: u32,
}

/// Ok when every component is at the version this build knows; otherwise says what to do.
pub fn require_current(versions: &[ComponentVersion]) -> Result<(), StoreError> {
    let newer: Vec<String> = versions
        .iter()
        .filter(|v| v.stored > v.known)
        .map(|v| {
            format!(
                "{} {} (this qubs-bridge knows {})",
                v.name, v.stored, v.known
            )
        })
        .collect();
    if !newer.is_empty() {
        return Err(StoreError::Schema(format!(
            "the database schema was written by a newer qubs-bridge ({}); run that version, or restore a backup taken before the upgrade",
            newer.join(", ")
        )));
    }
    if versions.iter().all(|v| v.stored == 0) {
        return Err(StoreError::Schema(
            "the database has no qubs-bridge schema yet; create it with `qubs-bridge store migrate` (once, from any replica)".into(),
        ));
    }
    let older: Vec<String> = versions
        .iter()
        .filter(|v| v.stored < v.known)
        .map(|v| {
            format!(
                "{} {} (this qubs-bridge needs {})",
                v.name, v.stored, v.known
            )
        })
        .collect();
    if !older.is_empty() {
        return Err(StoreError::Schema(format!(
            "the database schema is older than this qubs-bridge ({}); upgrade it with `qubs-bridge store migrate`",
            older.join(", ")
        )));
    }
    Ok(())
}

/// Checks that a component's migrations are numbered 1, 2, 3… (a build-time mistake).
pub fn check_numbering(component: &Component) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for (i, m) in component.migrations(backend).iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "{} migrations on {} must be numbered from 1 without gaps",
                component.name,
                backend.as_str()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(stored: u32, known: u32) -> ComponentVersion {
        ComponentVersion {
            name: "outbox",
            stored,
            known,
        }
    }

    #[test]
    fn older_newer_and_missing_schemas_say_what_to_do() {
        assert!(require_current(&[v(2, 2)]).is_ok());
        let e = require_current(&[v(1, 2)]).unwrap_err().to_string();
        assert!(
            e.contains("qubs-bridge store migrate") && e.contains("outbox 1"),
            "{e}"
        );
        let e = require_current(&[v(3, 2)]).unwrap_err().to_string();
        assert!(e.contains("newer qubs-bridge"), "{e}");
        let e = require_current(&[v(0, 2)]).unwrap_err().to_string();
        assert!(e.contains("no qubs-bridge schema"), "{e}");
    }
}
