//! `qubs-bridge store migrate|check|copy`: the store's schema, its replicas and leaders, and
//! moving an install from SQLite to PostgreSQL. These talk to the database directly (with
//! the `[store]` settings of the configuration), not to a running bridge.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::output::{self, Column, Format, Progress, Table, note};
use crate::config::Settings;
use crate::service::SCHEMA;
use crate::store::{
    ClusterStatus, Database, StoreError, StoreSettings, copy_sqlite_to_postgres, migrate,
    redact_url,
};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Create or upgrade the store's schema (safe to run from several replicas at once).
    Migrate {
        /// Configuration file (TOML); QUBS_BRIDGE__STORE__* variables override it.
        #[arg(long, short, env = "QUBS_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show the backend, the schema version, the replicas seen and who leads what. Exits 1
    /// when the schema is not the one this qubs-bridge needs.
    Check {
        #[arg(long, short, env = "QUBS_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// `text` or `json` (one object).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Copy an embedded store (SQLite file) into an empty PostgreSQL database, with the
    /// service stopped.
    Copy {
        /// The SQLite file (`store.path` of the install being moved).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL (default: `store.url`); the password comes from
        /// `store.password`, `store.password_file` or the URL.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, short, env = "QUBS_BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The `[store]` settings (the rest of the configuration is not needed here).
fn store_settings(config: Option<&std::path::Path>) -> anyhow::Result<StoreSettings> {
    let settings = Settings::load_unchecked(config, std::env::vars())?;
    let store = settings.store;
    store
        .validate()
        .map_err(|e| crate::config::ConfigError::Invalid {
            key: format!("store.{}", e.key),
            reason: e.reason,
        })?;
    Ok(store)
}

/// Errors the database gives: unreachable ones exit 69.
fn reached<T>(r: Result<T, StoreError>) -> anyhow::Result<T> {
    r.map_err(|e| match e {
        StoreError::Unavailable(_) => anyhow::Error::new(super::exit::Unreachable(e.to_string())),
        e => anyhow::Error::new(e),
    })
}

pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate { config, format } => {
            let settings = store_settings(config.as_deref())?;
            let db = reached(Database::open_for_tools(&settings, &SCHEMA).await)?;
            let done = reached(db.migrate(&SCHEMA).await)?;
            let mut out = output::stdout();
            // Components without tables on this backend (the store's own on SQLite) say nothing.
            for (was, now) in done.iter().filter(|(was, now)| was.stored + now > 0) {
                match format {
                    Format::Json => output::json_line(
                        &mut out,
                        &json!({"component": was.name, "from": was.stored, "to": now}),
                    )?,
                    Format::Text if was.stored == *now => {
                        writeln!(out, "{:<13} version {now} (up to date)", was.name)?
                    }
                    Format::Text => {
                        writeln!(out, "{:<13} version {} -> {now}", was.name, was.stored)?
                    }
                }
            }
            note!(
                "store schema ready: {} ({})",
                db.location(),
                db.backend().as_str()
            );
            Ok(())
        }
        StoreCommand::Check { config, format } => {
            let settings = store_settings(config.as_deref())?;
            let db = reached(Database::open_for_tools(&settings, &SCHEMA).await)?;
            let status = reached(db.status(&SCHEMA).await)?;
            let mut out = output::stdout();
            match format {
                Format::Json => output::json_line(&mut out, &status_json(&status, db.lease()))?,
                Format::Text => print_status(&mut out, &status, db.lease())?,
            }
            migrate::require_current(&status.schema)?;
            Ok(())
        }
        StoreCommand::Copy {
            from,
            to,
            config,
            format,
        } => {
            let mut settings = store_settings(config.as_deref())?;
            if let Some(url) = to {
                settings.url = Some(url);
            }
            settings
                .validate()
                .map_err(|e| crate::config::ConfigError::Invalid {
                    key: format!("store.{}", e.key),
                    reason: e.reason,
                })?;
            let Some(url) = settings.url.clone() else {
                return Err(super::exit::usage(
                    "say where to copy to: --to postgres://… (or set store.url)",
                ));
            };
            let db = reached(Database::open_for_tools(&settings, &[]).await)?;
            let Database::Postgres(pg) = &db else {
                unreachable!("store.url is set");
            };
            note!(
                "copying {} into {} (the service must be stopped)",
                from.display(),
                redact_url(&url)
            );
            let progress = Progress::counter("rows");
            let mut last_table = String::new();
            let mut report = |table: &str, _copied: u64, _total: u64| {
                if table != last_table {
                    last_table = table.to_string();
                }
                progress.inc();
            };
            let summary = reached(copy_sqlite_to_postgres(&from, pg, &SCHEMA, &mut report).await)?;
            progress.finish();
            let mut out = output::stdout();
            for (table, rows) in &summary.tables {
                match format {
                    Format::Json => {
                        output::json_line(&mut out, &json!({"table": table, "rows": rows}))?
                    }
                    Format::Text => writeln!(out, "{table:<20} {rows:>10} rows")?,
                }
            }
            note!(
                "copied; point every replica at it with store.url and start them (`qubs-bridge store check` shows them)"
            );
            Ok(())
        }
    }
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| output::to_seconds(&t.to_string()).to_string())
        .unwrap_or_default()
}

/// A replica is alive while its heartbeat is younger than a lease.
fn replica_state(
    r: &crate::store::ReplicaStatus,
    now: i64,
    lease: std::time::Duration,
) -> &'static str {
    if r.stopped_at_ms.is_some() {
        "stopped"
    } else if now - r.heartbeat_at_ms <= lease.as_millis() as i64 {
        "alive"
    } else {
        "silent"
    }
}

fn status_json(s: &ClusterStatus, lease: std::time::Duration) -> serde_json::Value {
    json!({
        "backend": s.backend.as_str(),
        "location": s.location,
        "schema": s.schema.iter().map(|v| json!({"component": v.name, "version": v.stored, "needed": v.known})).collect::<Vec<_>>(),
        "current": migrate::require_current(&s.schema).is_ok(),
        "now": time(s.now_ms),
        "replicas": s.replicas.iter().map(|r| json!({
            "id": r.id, "host": r.host, "pid": r.pid, "version": r.version,
            "startedAt": time(r.started_at_ms), "lastHeartbeat": time(r.heartbeat_at_ms),
            "heartbeatAgeSeconds": (s.now_ms - r.heartbeat_at_ms) as f64 / 1000.0,
            "state": replica_state(r, s.now_ms, lease),
        })).collect::<Vec<_>>(),
        "leaders": s.leases.iter().map(|l| json!({
            "role": l.role, "scope": l.scope, "holder": l.holder,
            "since": time(l.acquired_at_ms), "leaseUntil": time(l.lease_until_ms),
            "current": l.lease_until_ms > s.now_ms,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(
    out: &mut impl Write,
    s: &ClusterStatus,
    lease: std::time::Duration,
) -> std::io::Result<()> {
    let schema: Vec<String> = s
        .schema
        .iter()
        .filter(|v| v.stored + v.known > 0)
        .map(|v| format!("{} {}", v.name, v.stored))
        .collect();
    let verdict = match migrate::require_current(&s.schema) {
        Ok(()) => "current".to_string(),
        Err(e) => e.to_string(),
    };
    writeln!(out, "backend   {}", s.backend.as_str())?;
    writeln!(out, "database  {}", s.location)?;
    writeln!(out, "schema    {} ({verdict})", schema.join(", "))?;
    if s.backend == crate::store::Backend::Sqlite {
        writeln!(
            out,
            "replicas  one process (the embedded store has no replicas)"
        )?;
        return Ok(());
    }
    writeln!(out)?;
    let mut replicas = Table::new(&[
        Column::left("REPLICA"),
        Column::left("HOST"),
        Column::right("PID"),
        Column::left("VERSION"),
        Column::left("STARTED"),
        Column::left("LAST HEARTBEAT"),
        Column::left("STATE"),
    ]);
    for r in &s.replicas {
        replicas.row([
            r.id.clone(),
            r.host.clone(),
            r.pid.to_string(),
            r.version.clone(),
            time(r.started_at_ms),
            format!(
                "{} ({:.1} s ago)",
                time(r.heartbeat_at_ms),
                (s.now_ms - r.heartbeat_at_ms) as f64 / 1000.0
            ),
            replica_state(r, s.now_ms, lease).to_string(),
        ]);
    }
    replicas.print(out)?;
    writeln!(out)?;
    let mut leaders = Table::new(&[
        Column::left("ROLE"),
        Column::left("SCOPE"),
        Column::left("LEADER"),
        Column::left("SINCE"),
        Column::left("LEASE UNTIL"),
    ]);
    for l in &s.leases {
        let holder = if l.lease_until_ms > s.now_ms {
            l.holder.clone()
        } else {
            format!("none (last: {})", l.holder)
        };
        leaders.row([
            l.role.clone(),
            l.scope.clone(),
            holder,
            time(l.acquired_at_ms),
            time(l.lease_until_ms),
        ]);
    }
    leaders.print(out)
}
