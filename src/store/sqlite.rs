//! The embedded store: one SQLite file (rusqlite, SQLite compiled in, nothing to install)
//! that the outbox's and the feed's SQLite implementations share.
//!
//! **Durability.** WAL with `synchronous = FULL`: a commit is on disk before it returns.
//! The file (and its `-wal`/`-shm` companions) is for the service's user only (mode 0600):
//! it holds patient data.
//!
//! **One writer thread, group commit.** A single thread owns the connection. Jobs queue on a
//! channel; the thread takes everything queued (up to a batch), runs it in one transaction,
//! commits once, and only then answers each caller. Under load many callers share one
//! fsync, and nothing is answered before it is on disk. Each write job runs in its own
//! savepoint, so one failing job leaves the others of its batch intact.
//!
//! **Checkpoints off the writer.** SQLite's automatic checkpoint would run inside a commit on
//! the writer thread, copying the WAL into the database and syncing it while every caller
//! of that batch waits; a checkpointer thread on its own connection does it instead
//! (passive: it never blocks the writer), so commits cost one WAL append and one fsync.
//! The WAL only starts over from its beginning when a transaction begins with every frame
//! copied, which a checkpoint racing steady commits never achieves: under sustained load the
//! WAL grew to hundreds of MB, and the eventual start-over truncated it back to
//! `journal_size_limit` inside a commit, holding every caller for 0.5–0.8 s. So once the
//! WAL passes [`WAL_FINISH_FRAMES`] the checkpointer asks the writer to copy the few frames
//! left itself, between two batches; the WAL then starts over and stays small.
//!
//! Each component keeps its statements in its own `sqlite.rs` and hands the store closures,
//! running them through [`Cached`]. Schemas: the migrations each component lists are
//! applied when the file is opened (one process owns it), recorded per component in
//! `bridge_schema`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Params, Row, Transaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::migrate::{Component, ComponentVersion};
use super::{Backend, Replica, Signal, StoreError};

/// Jobs per transaction at most; more wait for the next commit.
const MAX_BATCH: usize = 512;

/// Distinct statements kept prepared per connection (the owners use a few dozen).
const STATEMENT_CACHE: usize = 128;

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// After a checkpoint, a WAL longer than this is truncated back to it.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// WAL frames (pages) past which the writer finishes the checkpoint itself: 16 MiB of
/// 4 KiB pages, well under [`WAL_SIZE_LIMIT`].
const WAL_FINISH_FRAMES: i64 = if cfg!(test) { 64 } else { 4096 };

/// The file's `user_version`: 2 before versions were kept per component (the tables then
/// are version 1 of the outbox and the feed), 3 since. A newer file is refused rather than
/// misread.
const FILE_VERSION: i64 = 3;

/// Answers one job's caller once its batch's commit outcome is known.
type Answer = Box<dyn FnOnce(Option<&rusqlite::Error>)>;
type Job = Box<dyn FnOnce(&Transaction, i64) -> Answer + Send>;

/// The store handle; cheap to share behind an `Arc`.
pub struct Store {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    replica: Replica,
    /// Nothing is ever sent: every change is made in this process, which wakes its own.
    signals: broadcast::Sender<Signal>,
}

pub use super::now_ms;

impl Store {
    /// Opens (creating if needed, with its directory) the database at `path`, brings every
    /// component's tables to this build's version, and starts the writer thread.
    pub fn open(path: &Path, components: &[&Component]) -> Result<Arc<Store>, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = connect(path).map_err(|e| open_error(e.to_string()))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| open_error(e.to_string()))?;
        if version > FILE_VERSION {
            return Err(open_error(format!(
                "written by a newer qubs-bridge (file version {version}; this one knows up to {FILE_VERSION})"
            )));
        }
        migrate(&mut conn, components).map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "user_version", FILE_VERSION)
            .map_err(|e| open_error(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
            for file in [path.to_path_buf(), with("-wal"), with("-shm")] {
                if file.exists() {
                    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        // Checkpoints are the checkpointer's job (see the module comment).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(e.to_string()))?;
        let checkpoints = connect(path).map_err(|e| open_error(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let finish = Arc::new(AtomicBool::new(false));
        let finish_asked = finish.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(conn, rx, finish))
            .map_err(|e| open_error(e.to_string()))?;
        let writer_alive = tx.downgrade();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, writer_alive, finish_asked))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Arc::new(Store {
            jobs: tx,
            path: path.to_path_buf(),
            replica: Replica::this_process(),
            signals: broadcast::channel(1).0,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Each component's recorded and known schema version.
    pub async fn schema_versions(
        &self,
        components: &[&'static Component],
    ) -> Result<Vec<ComponentVersion>, StoreError> {
        let components: Vec<&'static Component> = components.to_vec();
        self.read(move |tx, _| {
            components
                .iter()
                .map(|c| {
                    Ok(ComponentVersion {
                        name: c.name,
                        stored: stored_version(tx, c.name)?,
                        known: c.latest(Backend::Sqlite),
                    })
                })
                .collect()
        })
        .await
    }

    /// Runs `f` in the next transaction; answers once it has committed. `now` is the batch's
    /// time in Unix milliseconds.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |tx, now| {
            let result = f(tx, now);
            Box::new(move |commit_error| {
                let result = match commit_error {
                    Some(e) => Err(format!("commit failed: {e}")),
                    None => result.map_err(|e| e.to_string()),
                };
                let _ = reply.send(result);
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Storage)
    }

    /// Like [`Store::read`], in a savepoint of its own: when `f` fails, none of its writes
    /// are kept and the rest of the batch is unaffected.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        self.read(move |tx, now| savepoint(tx, |tx| f(tx, now)))
            .await
    }
}

/// Applies what is missing of each component's migrations, in one transaction. A component
/// recorded at a newer version than this build knows is refused.
fn migrate(conn: &mut Connection, components: &[&Component]) -> Result<(), StoreError> {
    let storage = |e: rusqlite::Error| StoreError::Storage(e.to_string());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(storage)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS bridge_schema (
             component  TEXT    PRIMARY KEY,
             version    INTEGER NOT NULL,
             updated_at INTEGER NOT NULL
         )",
    )
    .map_err(storage)?;
    for component in components {
        let stored = stored_version(&tx, component.name).map_err(storage)?;
        let known = component.latest(Backend::Sqlite);
        if stored > known {
            return Err(StoreError::Schema(format!(
                "the file was written by a newer qubs-bridge ({} {stored}; this one knows {known})",
                component.name
            )));
        }
        for m in component.sqlite.iter().filter(|m| m.version > stored) {
            tx.execute_batch(m.sql).map_err(|e| {
                StoreError::Storage(format!(
                    "{} migration {} ({}): {e}",
                    component.name, m.version, m.description
                ))
            })?;
        }
        if known > stored {
            tx.execute(
                "INSERT INTO bridge_schema (component, version, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (component) DO UPDATE SET version = ?2, updated_at = ?3",
                rusqlite::params![component.name, known, now_ms()],
            )
            .map_err(storage)?;
        }
    }
    tx.commit().map_err(storage)
}

fn stored_version(tx: &Connection, component: &str) -> rusqlite::Result<u32> {
    Ok(tx
        .query_row(
            "SELECT version FROM bridge_schema WHERE component = ?1",
            [component],
            |r| r.get::<_, u32>(0),
        )
        .optional()?
        .unwrap_or(0))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    // Without the planner's stability guarantee, SQLite re-plans a cached statement each
    // time a new value is bound to a parameter it might plan by — every JOIN by id here —
    // and re-parsing was a quarter of the writer's time. The plans here do not depend on
    // the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Statements through the connection's statement cache. The writer runs the same few
/// statements thousands of times a second; `Connection::execute` and `query_row` would parse
/// the SQL each time (a third of the writer's time under load when they did).
pub trait Cached {
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Copies the WAL into the database every [`CHECKPOINT_EVERY`] while the store is open.
/// Passive: frames a commit is writing are left for the next round, and the writer is never
/// blocked. A failure is logged and retried next round; the data stays safe in the WAL.
/// When the WAL has grown past [`WAL_FINISH_FRAMES`], asks the writer to finish the job.
fn checkpointer(conn: Connection, writer: mpsc::WeakSender<Job>, finish: Arc<AtomicBool>) {
    while writer.upgrade().is_some() {
        std::thread::sleep(CHECKPOINT_EVERY);
        match checkpoint(&conn) {
            Ok(frames) if frames > WAL_FINISH_FRAMES => finish.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "store checkpoint failed; retrying"),
        }
    }
    // Closing the last connection checkpoints whatever is left.
}

/// A passive checkpoint: copies what it can without waiting for anyone. Answers the WAL's
/// length in frames (-1 when another connection's checkpoint was running).
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

/// The writer thread: batches queued jobs into one transaction each.
fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Job>, finish: Arc<AtomicBool>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for job in batch.drain(..) {
                answers.push(job(&tx, now));
            }
            tx.commit()
        })();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "store commit failed; the batch is not stored");
        }
        for answer in answers {
            answer(outcome.as_ref().err());
        }
        batch.clear();
        // No commit can land during this one, so it copies every frame (the checkpointer
        // has copied most already) and the next transaction starts the WAL over.
        if finish.swap(false, Ordering::Relaxed)
            && let Err(e) = checkpoint(&conn)
        {
            tracing::warn!(error = %e, "store checkpoint failed; retrying");
        }
    }
}

fn savepoint<T>(
    tx: &Transaction,
    f: impl FnOnce(&Transaction) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.exec("SAVEPOINT job", [])?;
    match f(tx) {
        Ok(v) => {
            tx.exec("RELEASE job", [])?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.exec("ROLLBACK TO job", []);
            let _ = tx.exec("RELEASE job", []);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_statements_are_not_re_planned_for_new_values() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("bridge.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);
             CREATE TABLE r (id INTEGER PRIMARY KEY, m_id INTEGER REFERENCES m(id), k TEXT);
             INSERT INTO m VALUES (1, 'a'), (2, 'b');
             INSERT INTO r VALUES (1, 1, 'x'), (2, 2, 'y');",
        )
        .unwrap();
        // The shape of the outbox's entry and message reads: a JOIN by a bound id.
        let sql = "SELECT m.body, (SELECT COUNT(*) FROM r r2 WHERE r2.m_id = m.id)
                   FROM r JOIN m ON m.id = r.m_id WHERE r.id = ?1";
        for id in [1, 2, 1, 2] {
            let body: String = conn.row(sql, [id], |row| row.get(0)).unwrap();
            assert_eq!(body, if id == 1 { "a" } else { "b" });
        }
        let statement = conn.prepare_cached(sql).unwrap();
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0
        );
    }

    #[tokio::test]
    async fn a_failing_write_leaves_the_rest_of_its_batch_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bridge.db");
        let store = Store::open(&path, &[]).unwrap();
        store
            .write(|tx, _| tx.execute_batch("CREATE TABLE t (v INTEGER UNIQUE)"))
            .await
            .unwrap();
        let ok = store.write(|tx, _| tx.execute("INSERT INTO t VALUES (1)", []));
        let clash = store.write(|tx, _| {
            tx.execute("INSERT INTO t VALUES (2)", [])?;
            tx.execute("INSERT INTO t VALUES (1)", [])
        });
        let (ok, clash) = tokio::join!(ok, clash);
        assert_eq!(ok.unwrap(), 1);
        assert!(matches!(clash, Err(StoreError::Storage(_))));
        let rows: Vec<i64> = store
            .read(|tx, _| {
                let mut s = tx.prepare("SELECT v FROM t ORDER BY v")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(rows, [1], "the failed job's first insert was rolled back");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.db");
        let wal = dir.path().join("bridge.db-wal");
        let store = Store::open(&path, &[]).unwrap();
        store
            .write(|tx, _| tx.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
            .await
            .unwrap();
        // One commit after another, with no pause for a checkpoint to catch up, for ten
        // checkpoint rounds; each rewrites one 8 kB row, so appends a few pages to the WAL.
        let (mut commits, mut largest) = (0u64, 0u64);
        let until = std::time::Instant::now() + CHECKPOINT_EVERY * 10;
        while std::time::Instant::now() < until {
            store
                .write(|tx, _| {
                    tx.exec(
                        "INSERT OR REPLACE INTO t (id, v) VALUES (1, randomblob(8000))",
                        [],
                    )
                })
                .await
                .unwrap();
            commits += 1;
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        // Had the WAL never started over, it would hold every commit's pages (three or more
        // each); starting over each round or two keeps it to a fraction of that.
        let appended = commits * 3 * 4096;
        assert!(
            largest < appended / 3,
            "WAL reached {largest} bytes after {commits} commits ({appended} bytes appended)"
        );
    }

    #[tokio::test]
    async fn the_checkpointer_moves_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.db");
        let store = Store::open(&path, &[]).unwrap();
        store
            .write(|tx, _| {
                tx.execute_batch("CREATE TABLE t (v INTEGER)")?;
                tx.exec("INSERT INTO t VALUES (42)", [])
            })
            .await
            .unwrap();
        // SQLite's own checkpoints are off (wal_autocheckpoint = 0), the writer checkpoints
        // only when asked (a WAL past WAL_FINISH_FRAMES, far more than these few pages) and
        // the store stays open, so the row can reach the main file only through the
        // checkpointer. `immutable=1` reads the main file alone, ignoring the WAL.
        let uri = format!("file:{}?mode=ro&immutable=1", path.display());
        let in_main_file = || -> Option<i64> {
            let conn = Connection::open_with_flags(
                &uri,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .ok()?;
            conn.query_row("SELECT v FROM t", [], |r| r.get(0)).ok()
        };
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 20;
        while in_main_file().is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_EVERY / 2).await;
        }
        assert_eq!(in_main_file(), Some(42));
        drop(store);
    }
}
