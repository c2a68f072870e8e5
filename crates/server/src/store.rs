//! Finished results in an embedded SQLite database, so that a result outlives the process that
//! computed it and can be fetched again or shared by its public id.
//!
//! The store is synchronous: every call takes the connection's lock and touches the disk, so
//! async code calls it from a blocking thread.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// The schema this build writes. Bump it with a new step in `migrate` whenever a column or
/// index changes; a file written by a newer build is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 2;

/// What a memory-only store calls itself in error messages.
const IN_MEMORY: &str = ":memory:";

/// One finished request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    /// The public request id, chosen by the caller (e.g. `r-3f9c0a1b2c4d5e6f`).
    pub id: String,
    /// `analysis` or `generation`.
    pub kind: String,
    pub models: Vec<String>,
    /// A client label, never an API key.
    pub client: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The request as submitted (text, options).
    pub input: serde_json::Value,
    /// `completed`, `error` or `cancelled`.
    pub outcome: String,
    /// The `JobOutput` as JSON when completed; partial rows, or nothing, otherwise.
    pub output: Option<serde_json::Value>,
    /// The error's message, or why the request was cancelled.
    pub error: Option<String>,
    /// A cancelled request had sent part of its result before it ended.
    #[serde(default)]
    pub partial: bool,
    /// Stage durations, e.g. `{"wait_ms": .., "compute_ms": ..}`.
    pub timings: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the folder of result database {db}: {source}")]
    CreateDir {
        db: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open result database {db}: {source}")]
    Open {
        db: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "result database {db} is not a readable SQLite database ({source}); move the file \
         aside and lensd will start a fresh one"
    )]
    Corrupt {
        db: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "result database {db} has schema version {found}, newer than version {supported} that \
         this lensd understands; run a newer lensd or point it at another file"
    )]
    SchemaTooNew {
        db: String,
        found: i64,
        supported: i64,
    },
    #[error("result database {db}: {action} failed: {source}")]
    Sql {
        db: String,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("result database {db}: column `{column}` of result {id} is not valid JSON: {source}")]
    BadJson {
        db: String,
        id: String,
        column: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub struct Store {
    /// The file, as shown in error messages.
    db: String,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens the database at `path`, creating the file, its folder and the schema as needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                db: db.clone(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            db: db.clone(),
            source,
        })?;
        Store::init(db, conn, true)
    }

    /// A store that lives only as long as the value; for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let db = IN_MEMORY.to_string();
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            db: db.clone(),
            source,
        })?;
        Store::init(db, conn, false)
    }

    fn init(db: String, mut conn: Connection, on_disk: bool) -> Result<Store, StoreError> {
        // SQLite opens lazily: a file of garbage only shows itself at the first read, so read
        // the schema version before anything else and report such a file as corrupt.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|source| unreadable(&db, "reading the schema version", source))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                db,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // Another process (a second server, the sqlite3 shell) may hold the file briefly.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| sql(&db, "setting the busy timeout", source))?;
        if on_disk {
            // WAL lets readers (share pages) proceed while a result is written; NORMAL sync is
            // durable against a crash of the process, which is what a result cache needs.
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(|source| unreadable(&db, "switching to WAL mode", source))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(db = %db, mode = %mode, "result database could not use WAL mode");
            }
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|source| sql(&db, "setting synchronous mode", source))?;
        }
        migrate(&db, &mut conn, version)?;
        Ok(Store {
            db,
            conn: Mutex::new(conn),
        })
    }

    /// Inserts `r`, replacing any earlier result with the same id.
    pub fn save(&self, r: &StoredResult) -> Result<(), StoreError> {
        let models = json_text(&r.models);
        let input = json_text(&r.input);
        let output = r.output.as_ref().map(json_text);
        let timings = json_text(&r.timings);
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO results
                     (id, kind, models, client, created_at, input, outcome, output, error, timings,
                      partial)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    r.id,
                    r.kind,
                    models,
                    r.client,
                    r.created_at,
                    input,
                    r.outcome,
                    output,
                    r.error,
                    timings,
                    r.partial
                ],
            )
            .map_err(|source| sql(&self.db, "saving a result", source))?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredResult>, StoreError> {
        let raw = self
            .lock()
            .query_row(
                "SELECT id, kind, models, client, created_at, input, outcome, output, error, timings,
                        partial
                 FROM results WHERE id = ?1",
                [id],
                RawRow::read,
            )
            .optional()
            .map_err(|source| sql(&self.db, "reading a result", source))?;
        raw.map(|raw| raw.decode(&self.db)).transpose()
    }

    /// The newest `limit` results of `client`, newest first, without their `output` (always
    /// `None` here) so that a listing stays small; `get` returns the whole result.
    pub fn recent(&self, client: &str, limit: usize) -> Result<Vec<StoredResult>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        let read = || -> rusqlite::Result<Vec<RawRow>> {
            // Among results of the same second, the one saved last comes first.
            let mut stmt = conn.prepare_cached(
                "SELECT id, kind, models, client, created_at, input, outcome, NULL, error, timings,
                        partial
                 FROM results WHERE client = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![client, limit], RawRow::read)?;
            rows.collect()
        };
        let raws = read().map_err(|source| sql(&self.db, "listing recent results", source))?;
        drop(conn);
        raws.into_iter().map(|raw| raw.decode(&self.db)).collect()
    }

    /// Deletes every result created before `cutoff_unix`; returns how many went.
    pub fn purge_older_than(&self, cutoff_unix: i64) -> Result<usize, StoreError> {
        self.lock()
            .execute("DELETE FROM results WHERE created_at < ?1", [cutoff_unix])
            .map_err(|source| sql(&self.db, "purging old results", source))
    }

    pub fn count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM results", [], |row| row.get(0))
            .map_err(|source| sql(&self.db, "counting results", source))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot leave the database half-written (each call
        // is one statement, atomic in SQLite), so the connection is still good to use.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Brings a database at `seen` (0 for a new file) up to `SCHEMA_VERSION`, all or nothing.
fn migrate(db: &str, conn: &mut Connection, seen: i64) -> Result<(), StoreError> {
    if seen == SCHEMA_VERSION {
        return Ok(());
    }
    let fail = |source| unreadable(db, "creating the schema", source);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    // Another process may have migrated the file between the first read and taking the
    // write lock; start from what the file says now.
    let from: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(fail)?;
    if from > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            db: db.to_string(),
            found: from,
            supported: SCHEMA_VERSION,
        });
    }
    if from < 1 {
        // JSON values are kept as TEXT: SQLite's own JSON type is text too, and the server
        // never queries inside them.
        tx.execute_batch(
            "CREATE TABLE results (
                 id         TEXT PRIMARY KEY NOT NULL,
                 kind       TEXT NOT NULL,
                 models     TEXT NOT NULL,
                 client     TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 input      TEXT NOT NULL,
                 outcome    TEXT NOT NULL,
                 output     TEXT,
                 error      TEXT,
                 timings    TEXT NOT NULL
             );
             CREATE INDEX results_by_client ON results (client, created_at);
             CREATE INDEX results_by_age ON results (created_at);",
        )
        .map_err(fail)?;
    }
    if from < 2 {
        // Version 2: whether a cancelled request had sent part of its result.
        tx.execute_batch("ALTER TABLE results ADD COLUMN partial INTEGER NOT NULL DEFAULT 0;")
            .map_err(fail)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(fail)?;
    tx.commit().map_err(fail)
}

/// A row as SQLite returns it, before its JSON columns are parsed.
struct RawRow {
    id: String,
    kind: String,
    models: String,
    client: String,
    created_at: i64,
    input: String,
    outcome: String,
    output: Option<String>,
    error: Option<String>,
    timings: String,
    partial: bool,
}

impl RawRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: row.get(0)?,
            kind: row.get(1)?,
            models: row.get(2)?,
            client: row.get(3)?,
            created_at: row.get(4)?,
            input: row.get(5)?,
            outcome: row.get(6)?,
            output: row.get(7)?,
            error: row.get(8)?,
            timings: row.get(9)?,
            partial: row.get(10)?,
        })
    }

    fn decode(self, db: &str) -> Result<StoredResult, StoreError> {
        let parse = |column: &'static str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|source| StoreError::BadJson {
                db: db.to_string(),
                id: self.id.clone(),
                column,
                source,
            })
        };
        let models = serde_json::from_str::<Vec<String>>(&self.models).map_err(|source| {
            StoreError::BadJson {
                db: db.to_string(),
                id: self.id.clone(),
                column: "models",
                source,
            }
        })?;
        let input = parse("input", &self.input)?;
        let output = self
            .output
            .as_deref()
            .map(|text| parse("output", text))
            .transpose()?;
        let timings = parse("timings", &self.timings)?;
        Ok(StoredResult {
            id: self.id,
            kind: self.kind,
            models,
            client: self.client,
            created_at: self.created_at,
            input,
            outcome: self.outcome,
            output,
            error: self.error,
            partial: self.partial,
            timings,
        })
    }
}

fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    // Strings, vectors of strings and `serde_json::Value`s always serialise.
    serde_json::to_string(value).expect("serialising plain JSON data cannot fail")
}

fn sql(db: &str, action: &'static str, source: rusqlite::Error) -> StoreError {
    StoreError::Sql {
        db: db.to_string(),
        action,
        source,
    }
}

/// Errors at open time: a file SQLite does not recognise is reported as such, with advice.
fn unreadable(db: &str, action: &'static str, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            db: db.to_string(),
            source,
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            StoreError::Open {
                db: db.to_string(),
                source,
            }
        }
        _ => sql(db, action, source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(id: &str, client: &str, created_at: i64) -> StoredResult {
        StoredResult {
            id: id.to_string(),
            kind: "analysis".to_string(),
            models: vec!["smollm2-135m".to_string(), "smollm2-135m-tuned".to_string()],
            client: client.to_string(),
            created_at,
            input: json!({"text": "The capital of France is", "options": {"top_k": 5}}),
            outcome: "completed".to_string(),
            output: Some(json!({"kind": "analysis", "analyses": []})),
            error: None,
            partial: false,
            timings: json!({"wait_ms": 12, "compute_ms": 340}),
        }
    }

    fn ids(results: &[StoredResult]) -> Vec<&str> {
        results.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn save_then_get_returns_the_same_result() {
        let store = Store::open_in_memory().unwrap();
        let mut r = result("r-0000000000000001", "alice", 1_700_000_000);
        r.outcome = "error".to_string();
        r.error = Some("text too long: 9000 tokens, limit 8192".to_string());
        store.save(&r).unwrap();
        assert_eq!(store.get(&r.id).unwrap(), Some(r));
        assert_eq!(store.get("r-missing").unwrap(), None);
    }

    #[test]
    fn a_result_without_output_round_trips_as_none() {
        let store = Store::open_in_memory().unwrap();
        let mut r = result("r-1", "alice", 10);
        r.outcome = "cancelled".to_string();
        r.output = None;
        store.save(&r).unwrap();
        assert_eq!(store.get("r-1").unwrap().unwrap().output, None);
    }

    #[test]
    fn saving_an_existing_id_replaces_it() {
        let store = Store::open_in_memory().unwrap();
        let mut r = result("r-1", "alice", 10);
        r.outcome = "cancelled".to_string();
        store.save(&r).unwrap();
        r.outcome = "completed".to_string();
        r.timings = json!({"wait_ms": 1, "compute_ms": 2});
        store.save(&r).unwrap();
        assert_eq!(store.count().unwrap(), 1);
        assert_eq!(store.get("r-1").unwrap(), Some(r));
    }

    #[test]
    fn recent_lists_one_clients_results_newest_first_without_output() {
        let store = Store::open_in_memory().unwrap();
        store.save(&result("r-a1", "alice", 100)).unwrap();
        store.save(&result("r-b1", "bob", 250)).unwrap();
        store.save(&result("r-a3", "alice", 300)).unwrap();
        store.save(&result("r-a2", "alice", 200)).unwrap();

        let listed = store.recent("alice", 10).unwrap();
        assert_eq!(ids(&listed), ["r-a3", "r-a2", "r-a1"]);
        assert!(listed.iter().all(|r| r.output.is_none()));
        // Everything but the output is there.
        let mut expected = result("r-a3", "alice", 300);
        expected.output = None;
        assert_eq!(listed[0], expected);

        assert_eq!(ids(&store.recent("alice", 2).unwrap()), ["r-a3", "r-a2"]);
        assert_eq!(ids(&store.recent("bob", 10).unwrap()), ["r-b1"]);
        assert!(store.recent("alice", 0).unwrap().is_empty());
        assert!(store.recent("carol", 10).unwrap().is_empty());
    }

    #[test]
    fn recent_puts_the_last_saved_first_within_one_second() {
        let store = Store::open_in_memory().unwrap();
        store.save(&result("r-first", "alice", 100)).unwrap();
        store.save(&result("r-second", "alice", 100)).unwrap();
        assert_eq!(
            ids(&store.recent("alice", 10).unwrap()),
            ["r-second", "r-first"]
        );
    }

    #[test]
    fn threads_can_save_through_one_shared_store() {
        let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .save(&result(&format!("r-{t}-{i}"), "alice", i))
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(store.count().unwrap(), 100);
        assert_eq!(store.recent("alice", 1000).unwrap().len(), 100);
    }

    #[test]
    fn purge_deletes_only_results_older_than_the_cutoff() {
        let store = Store::open_in_memory().unwrap();
        for (id, t) in [("r-1", 100), ("r-2", 199), ("r-3", 200), ("r-4", 500)] {
            store.save(&result(id, "alice", t)).unwrap();
        }
        assert_eq!(store.purge_older_than(200).unwrap(), 2);
        assert_eq!(store.count().unwrap(), 2);
        assert_eq!(store.get("r-2").unwrap(), None);
        assert!(store.get("r-3").unwrap().is_some());
        assert_eq!(store.purge_older_than(200).unwrap(), 0);
    }

    #[test]
    fn results_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("results.db");
        let r = result("r-persist", "alice", 42);
        {
            let store = Store::open(&path).unwrap();
            store.save(&r).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count().unwrap(), 1);
        assert_eq!(store.get("r-persist").unwrap(), Some(r));
    }

    #[test]
    fn a_file_is_opened_in_wal_mode_with_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        let store = Store::open(&path).unwrap();
        let conn = store.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_version_1_file_is_migrated_keeping_its_results() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE results (id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
                     models TEXT NOT NULL, client TEXT NOT NULL, created_at INTEGER NOT NULL,
                     input TEXT NOT NULL, outcome TEXT NOT NULL, output TEXT, error TEXT,
                     timings TEXT NOT NULL);
                 INSERT INTO results VALUES ('r-old', 'analysis', '[]', 'alice', 5, '{}',
                     'cancelled', NULL, NULL, '{}');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let old = store.get("r-old").unwrap().unwrap();
        assert_eq!((old.outcome.as_str(), old.partial), ("cancelled", false));
        let mut r = result("r-new", "alice", 6);
        r.outcome = "cancelled".into();
        r.partial = true;
        store.save(&r).unwrap();
        assert_eq!(store.get("r-new").unwrap(), Some(r));
    }

    #[test]
    fn a_garbage_file_is_refused_as_corrupt_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        std::fs::write(
            &path,
            b"this is not a database, just some bytes\n".repeat(200),
        )
        .unwrap();
        let err = Store::open(&path).err().expect("garbage must not open");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("not a readable SQLite database"),
            "{message}"
        );
        // The file is left as it was for the operator to inspect.
        assert!(std::fs::read(&path).unwrap().starts_with(b"this is not"));
    }

    #[test]
    fn a_folder_in_place_of_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("a folder must not open");
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let err = Store::open(&path)
            .err()
            .expect("a newer schema must be refused");
        match &err {
            StoreError::SchemaTooNew {
                found, supported, ..
            } => {
                assert_eq!(*found, SCHEMA_VERSION + 1);
                assert_eq!(*supported, SCHEMA_VERSION);
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{message}"
        );
    }

    #[test]
    fn a_damaged_json_column_is_reported_with_the_id_and_column() {
        let store = Store::open_in_memory().unwrap();
        store.save(&result("r-bad", "alice", 1)).unwrap();
        store
            .lock()
            .execute(
                "UPDATE results SET timings = '{oops' WHERE id = 'r-bad'",
                [],
            )
            .unwrap();
        let message = store.get("r-bad").unwrap_err().to_string();
        assert!(message.contains("r-bad"), "{message}");
        assert!(message.contains("`timings`"), "{message}");
    }

    fn big(id: &str) -> StoredResult {
        let mut r = result(id, "alice", 2);
        r.output = Some(json!({"kind": "analysis", "note": "y".repeat(1 << 20)}));
        r
    }

    #[test]
    fn a_full_database_refuses_a_save_with_a_clear_error_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        let store = Store::open(&path).unwrap();
        store.save(&result("r-1", "alice", 1)).unwrap();
        // SQLite's own limit stands in for a full disk: it fails writes with SQLITE_FULL.
        let pages: i64 = store
            .lock()
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let set_max = |n: i64| {
            let got: i64 = store
                .lock()
                .query_row(&format!("PRAGMA max_page_count = {n}"), [], |row| {
                    row.get(0)
                })
                .unwrap();
            assert!(got >= pages);
        };
        set_max(pages);
        let message = store.save(&big("r-2")).unwrap_err().to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("full"),
            "{message}"
        );
        assert!(store.get("r-1").unwrap().is_some(), "what was stored stays");
        assert!(store.get("r-2").unwrap().is_none(), "nothing half-written");
        set_max(1 << 30);
        store.save(&big("r-2")).unwrap();
        assert!(
            store.get("r-2").unwrap().is_some(),
            "with room again, saves resume"
        );
    }

    #[test]
    fn a_read_only_database_refuses_saves_and_still_serves_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        let store = Store::open(&path).unwrap();
        store.save(&result("r-1", "alice", 1)).unwrap();
        // Writes now fail with SQLITE_READONLY, as on a read-only mount (file modes do not
        // stop root, under which the tests may run).
        store
            .lock()
            .pragma_update(None, "query_only", true)
            .unwrap();
        let message = store
            .save(&result("r-2", "alice", 2))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("readonly"),
            "{message}"
        );
        assert!(store.purge_older_than(i64::MAX).is_err());
        assert_eq!(ids(&store.recent("alice", 10).unwrap()), ["r-1"]);
    }
}
