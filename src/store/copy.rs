//! `qubs-bridge store copy`: moves an install from the embedded SQLite file to PostgreSQL,
//! with the service stopped. Every component's tables are copied (the pairs each
//! [`Component`] lists, columns matched by name) in one PostgreSQL transaction, with
//! `COPY … FROM STDIN (FORMAT binary)`; id sequences continue after the copied ids. The
//! target must be empty: the copy refuses to merge two installs.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::migrate::{Component, require_current};
use super::postgres::Postgres;
use super::{StoreError, sqlite};

/// What was copied, table by table.
#[derive(Debug, Clone, Default)]
pub struct CopySummary {
    /// (PostgreSQL table, rows)
    pub tables: Vec<(String, u64)>,
}

/// Reports progress: the table being copied and the rows copied so far.
pub trait CopyProgress {
    fn rows(&mut self, table: &str, copied: u64, total: u64);
}

impl<F: FnMut(&str, u64, u64)> CopyProgress for F {
    fn rows(&mut self, table: &str, copied: u64, total: u64) {
        self(table, copied, total)
    }
}

/// A column value read from SQLite, as the PostgreSQL column wants it.
#[derive(Debug)]
enum Value {
    /// A NULL of the column's type (binary COPY checks types, NULLs included).
    Null(Type),
    Int8(i64),
    Int4(i32),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Null(t) if *t == Type::TEXT => &None::<String>,
            Value::Null(t) if *t == Type::BYTEA => &None::<Vec<u8>>,
            Value::Null(t) if *t == Type::INT4 => &None::<i32>,
            Value::Null(t) if *t == Type::BOOL => &None::<bool>,
            Value::Null(_) => &None::<i64>,
            Value::Int8(v) => v,
            Value::Int4(v) => v,
            Value::Bool(v) => v,
            Value::Text(v) => v,
            Value::Bytes(v) => v,
        }
    }
}

fn convert(value: ValueRef<'_>, to: &Type, column: &str) -> Result<Value, String> {
    let mismatch = || format!("column {column}: cannot copy {value:?} into {to}");
    Ok(match value {
        ValueRef::Null => Value::Null(to.clone()),
        ValueRef::Integer(i) if *to == Type::INT8 => Value::Int8(i),
        ValueRef::Integer(i) if *to == Type::INT4 => {
            Value::Int4(i32::try_from(i).map_err(|_| mismatch())?)
        }
        ValueRef::Integer(i) if *to == Type::BOOL => Value::Bool(i != 0),
        ValueRef::Text(t) if *to == Type::TEXT => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|_| mismatch())?)
        }
        ValueRef::Text(t) if *to == Type::BYTEA => Value::Bytes(t.to_vec()),
        ValueRef::Blob(b) if *to == Type::BYTEA => Value::Bytes(b.to_vec()),
        ValueRef::Blob(b) if *to == Type::TEXT => {
            Value::Text(String::from_utf8(b.to_vec()).map_err(|_| mismatch())?)
        }
        _ => return Err(mismatch()),
    })
}

/// Copies every component's data from the SQLite file at `from` into `to`, which must hold
/// the current schema (migrated here if it has none yet) and no data.
pub async fn copy_sqlite_to_postgres(
    from: &Path,
    to: &Postgres,
    components: &[&'static Component],
    progress: &mut dyn CopyProgress,
) -> Result<CopySummary, StoreError> {
    if !from.is_file() {
        return Err(StoreError::Open {
            path: from.display().to_string(),
            reason: "no such file".into(),
        });
    }
    // Bring the file to this build's schema (what `serve` would do), then read it directly.
    drop(sqlite::Store::open(from, components)?);
    let source =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| StoreError::Open {
                path: from.display().to_string(),
                reason: e.to_string(),
            })?;
    source
        .busy_timeout(Duration::from_secs(2))
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    // A write lock for the whole copy: nothing may change the file meanwhile.
    source
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| StoreError::Open {
            path: from.display().to_string(),
            reason: format!("cannot lock it ({e}); stop the service that uses it first"),
        })?;

    let versions = to.schema_versions(components).await?;
    if versions.iter().all(|v| v.stored == 0) {
        to.migrate(components).await?;
    } else {
        require_current(&versions)?;
    }

    let fail = |e| to.failed("copy", e);
    let mut client = to.client("copy").await?;
    let tx = client.transaction().await.map_err(fail)?;
    for component in components {
        for (_, table) in component.copy {
            let rows: i64 = tx
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                .await
                .map_err(fail)?
                .get(0);
            if rows > 0 {
                return Err(StoreError::Schema(format!(
                    "the database already holds qubs-bridge data ({table}: {rows} rows); copy into an empty database"
                )));
            }
        }
    }
    let mut summary = CopySummary::default();
    for component in components {
        for (from_table, to_table) in component.copy {
            // The target's columns that the source has too, with their types.
            let source_columns: Vec<String> = {
                let mut stmt = source
                    .prepare(&format!(
                        "SELECT name FROM pragma_table_info('{from_table}')"
                    ))
                    .map_err(|e| StoreError::Storage(e.to_string()))?;
                stmt.query_map([], |r| r.get(0))
                    .and_then(|rows| rows.collect())
                    .map_err(|e| StoreError::Storage(e.to_string()))?
            };
            let columns: Vec<(String, Type)> = tx
                .query(
                    "SELECT a.attname, a.atttypid FROM pg_attribute a
                     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum",
                    &[&to_table],
                )
                .await
                .map_err(fail)?
                .iter()
                .filter_map(|r| {
                    let name: String = r.get(0);
                    let oid: u32 = r.get(1);
                    source_columns
                        .contains(&name)
                        .then(|| Type::from_oid(oid).map(|t| (name, t)))
                        .flatten()
                })
                .collect();
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            let types: Vec<Type> = columns.iter().map(|(_, t)| t.clone()).collect();
            let total: i64 = source
                .query_row(&format!("SELECT COUNT(*) FROM {from_table}"), [], |r| {
                    r.get(0)
                })
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            let sink = tx
                .copy_in(&format!(
                    "COPY {to_table} ({}) FROM STDIN (FORMAT binary)",
                    names.join(", ")
                ))
                .await
                .map_err(fail)?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            futures::pin_mut!(writer);
            let mut stmt = source
                .prepare(&format!("SELECT {} FROM {from_table}", names.join(", ")))
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            let mut rows = stmt
                .query([])
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            let mut copied = 0u64;
            while let Some(row) = rows
                .next()
                .map_err(|e| StoreError::Storage(e.to_string()))?
            {
                let mut values = Vec::with_capacity(columns.len());
                for (i, (name, ty)) in columns.iter().enumerate() {
                    let value = row
                        .get_ref(i)
                        .map_err(|e| StoreError::Storage(e.to_string()))?;
                    values.push(
                        convert(value, ty, &format!("{from_table}.{name}"))
                            .map_err(StoreError::Storage)?,
                    );
                }
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::as_sql).collect();
                writer.as_mut().write(&refs).await.map_err(fail)?;
                copied += 1;
                if copied.is_multiple_of(1000) {
                    progress.rows(to_table, copied, total as u64);
                }
            }
            writer.finish().await.map_err(fail)?;
            progress.rows(to_table, copied, total as u64);
            if copied != total as u64 {
                return Err(StoreError::Storage(format!(
                    "{from_table}: read {copied} rows of {total}"
                )));
            }
            // Ids drawn after the copy continue after the copied ones.
            let serial: Option<String> = if names.contains(&"id") {
                tx.query_one("SELECT pg_get_serial_sequence($1, 'id')", &[&to_table])
                    .await
                    .map_err(fail)?
                    .get(0)
            } else {
                None
            };
            if let Some(sequence) = serial {
                tx.execute(
                    &format!(
                        "SELECT setval($1::text::regclass, COALESCE((SELECT MAX(id) FROM {to_table}), 0) + 1, false)"
                    ),
                    &[&sequence],
                )
                .await
                .map_err(fail)?;
            }
            summary.tables.push((to_table.to_string(), copied));
        }
    }
    tx.commit().await.map_err(fail)?;
    let _ = source.execute_batch("ROLLBACK");
    Ok(summary)
}
