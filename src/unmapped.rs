//! Values the code tables did not know, in production. A value that falls to a table's
//! `unmapped: default` (or goes through with `pass_through`) still makes a valid output, so
//! nothing fails and nobody would notice that, say, OBR-24 went out as the default for a
//! modality no one mapped. Each such value is counted in
//! `mapping_unmapped_values{mapping,table}` and logged once per appointment with the
//! appointment id, the mapping and the tables — never the value (it may be PHI; `qubs-bridge
//! map` shows it to the analyst). Readiness is not affected: the output was sent.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::mapping::Unmapped;

/// How many (appointment, mapping, tables) combinations are remembered as already logged.
/// Beyond it the oldest are forgotten, and may be logged again.
const REMEMBERED: usize = 20_000;

/// `mapping_unmapped_values` labels: the mapping and the table (names only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnmappedLabels {
    pub mapping: String,
    pub table: String,
}

/// The counter and the memory of what was logged.
#[derive(Default)]
pub struct UnmappedValues {
    /// Values not in a code table, by mapping and table.
    pub counter: Family<UnmappedLabels, Counter>,
    logged: Mutex<Logged>,
}

#[derive(Default)]
struct Logged {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl UnmappedValues {
    /// Registers the counter.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mapping_unmapped_values",
            "Values a code table did not have (they went out as the table's default, or unchanged with pass_through), by mapping and table",
            self.counter.clone(),
        );
    }

    /// Counts the values `mapping` could not map for one appointment, and logs the tables
    /// once per appointment, mapping-set version and set of tables.
    pub fn record(
        &self,
        mapping: &str,
        version: &str,
        domain: &str,
        appointment_id: &str,
        unmapped: &[Unmapped],
    ) {
        if unmapped.is_empty() {
            return;
        }
        for u in unmapped {
            self.counter
                .get_or_create(&UnmappedLabels {
                    mapping: mapping.to_string(),
                    table: u.table.clone(),
                })
                .inc_by(u.count as u64);
        }
        let mut tables: Vec<&str> = unmapped.iter().map(|u| u.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        let tables = tables.join(", ");
        let key = format!("{version}\u{0}{mapping}\u{0}{domain}\u{0}{appointment_id}\u{0}{tables}");
        if !self.first_time(key) {
            return;
        }
        tracing::warn!(
            domain,
            appointment_id,
            mapping,
            mapping_set = version,
            tables = %tables,
            "values not in code tables went out as the table's default (or unchanged); `qubs-bridge map` shows them"
        );
    }

    /// Whether `key` is new (and remembers it).
    fn first_time(&self, key: String) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.keys.contains(&key) {
            return false;
        }
        if logged.order.len() >= REMEMBERED
            && let Some(old) = logged.order.pop_front()
        {
            logged.keys.remove(&old);
        }
        logged.keys.insert(key.clone());
        logged.order.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmapped(table: &str, count: usize) -> Unmapped {
        Unmapped {
            table: table.into(),
            value: "PET-MR".into(),
            count,
        }
    }

    #[test]
    fn counts_every_value_and_logs_each_appointment_once() {
        let u = UnmappedValues::default();
        let seen = [unmapped("hl7_diagnostic_service", 1)];
        u.record("orm_o01", "v1", "acme", "A1", &seen);
        u.record("orm_o01", "v1", "acme", "A1", &seen);
        let labels = UnmappedLabels {
            mapping: "orm_o01".into(),
            table: "hl7_diagnostic_service".into(),
        };
        assert_eq!(u.counter.get_or_create(&labels).get(), 2);
        // Logged once for A1 in this version; again for another appointment or version.
        let key = |v: &str, a: &str| {
            format!("{v}\u{0}orm_o01\u{0}acme\u{0}{a}\u{0}hl7_diagnostic_service")
        };
        assert!(!u.first_time(key("v1", "A1")));
        assert!(u.first_time(key("v1", "A2")));
        assert!(u.first_time(key("v2", "A1")));
    }
}
