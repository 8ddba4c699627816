//! The build index (`v1/index.sqlite`): builds, stage runs and the action cache.
//! The same database holds the stat cache of ingested files, whose queries
//! live in the `statcache` module.
//!
//! SQLite in WAL mode, so readers never block the writer; each connection
//! waits up to [`BUSY_TIMEOUT`] for another process's write to finish. The
//! schema version is `PRAGMA user_version`; `migrate` brings an index up to
//! date when the store is opened, one numbered migration at a time.
//!
//! **Integrity rule**: a caller records an action result (and a run) only
//! after every object it refers to is in the store: the output tree's blobs,
//! then the tree with [`Store::put_manifest`], then the row. Recording first
//! flushes to disk every object written since the last record
//! ([`Store::make_durable`]: one batch per stage). A process killed, or a
//! machine losing power, at any instant thus leaves at worst unreferenced
//! objects, which gc drops, and never a row pointing at something missing. The exception is a run of
//! status [`RunStatus::Remote`], whose output the build did not need locally:
//! it names an output of the shared cache, whose signed record is kept in
//! `remote_actions` (never in `actions`) until no run uses it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// How long a connection waits for another writer before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Migration `n` (from 0) brings the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipe      TEXT    NOT NULL,
    recipe_dir  TEXT    NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    status      TEXT    NOT NULL CHECK (status IN ('running', 'succeeded', 'failed'))
);
CREATE INDEX builds_by_recipe ON builds (recipe, id);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    build_id       INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    stage          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('ran', 'cached')),
    output_changed INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    output         TEXT    NOT NULL,
    output_kind    TEXT    NOT NULL CHECK (output_kind IN ('tree', 'blob')),
    UNIQUE (build_id, stage)
);
CREATE INDEX runs_by_stage ON runs (stage, build_id);

CREATE TABLE run_inputs (
    run_id   INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    digest   TEXT    NOT NULL,
    value    TEXT,
    PRIMARY KEY (run_id, position)
);

CREATE TABLE actions (
    key          TEXT    PRIMARY KEY,
    output       TEXT    NOT NULL,
    output_kind  TEXT    NOT NULL CHECK (output_kind IN ('tree', 'blob')),
    created_ms   INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE stat_cache (
    path        BLOB    PRIMARY KEY,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    mode        INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    blob        BLOB    NOT NULL,
    recorded_ns INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
"#,
    // A run's status may be `remote`: SQLite cannot change a CHECK constraint, so the table is
    // rebuilt (with foreign keys off, see `migrate`). `remote_actions` keeps the signed records
    // of the shared cache whose outputs were not downloaded.
    r#"
CREATE TABLE runs_v4 (
    id             INTEGER PRIMARY KEY,
    build_id       INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    stage          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('ran', 'cached', 'remote')),
    output_changed INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    output         TEXT    NOT NULL,
    output_kind    TEXT    NOT NULL CHECK (output_kind IN ('tree', 'blob')),
    notes          TEXT    NOT NULL DEFAULT '',
    UNIQUE (build_id, stage)
);
INSERT INTO runs_v4 (id, build_id, stage, kind, key, status, output_changed, duration_ms, output, output_kind, notes)
    SELECT id, build_id, stage, kind, key, status, output_changed, duration_ms, output, output_kind, notes FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v4 RENAME TO runs;
CREATE INDEX runs_by_stage ON runs (stage, build_id);

CREATE TABLE remote_actions (
    key        TEXT    PRIMARY KEY,
    remote     TEXT    NOT NULL,
    record     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // Plain objects are 0644 instead of 0444 (see `blob`): the index is unchanged, the store's
    // objects are re-moded by `Store::relax_object_modes` within this migration's transaction,
    // so a store is on one side of the change or the other, never both.
    r#"
-- plain objects: mode 0644
"#,
    // Shared checkouts date every entry `SHARED_CHECKOUT_MTIME` (see `shared`): those made
    // before kept the times their objects were written at, which differ from store to store.
    // `Store::remove_shared_checkout_files` drops them within this migration's transaction; the next
    // build makes them again.
    r#"
-- shared checkouts: every entry dated SHARED_CHECKOUT_MTIME
"#,
    // gc keeps blobs no checkout links compressed, as `objects/ab/<rest>.zst` (see `freeze`):
    // the version keeps a kiln that would not find those blobs away. An action may be anchored
    // to another object: gc keeps it as long as that object is kept (an initrd segment's entry
    // names a range of an initrd, and lives as long as that initrd).
    r#"
-- frozen blobs: objects/ab/<rest>.zst
ALTER TABLE actions ADD COLUMN anchor TEXT;
"#,
];

/// The migration (counted from 0) that comes with re-moding the plain objects.
const PLAIN_MODE_MIGRATION: usize = 4;

/// The migration (counted from 0) that comes with dating shared checkouts.
const DATED_CHECKOUTS_MIGRATION: usize = 5;

/// The schema version this kiln writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A build's number in the index; later builds have larger ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(pub i64);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a stage produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// A tree; the output id is a [`crate::TreeId`].
    Tree,
    /// A single file; the output id is a [`crate::BlobId`].
    Blob,
}

/// How a stage's output was obtained in a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// The stage ran.
    Ran,
    /// The action cache had its output.
    Cached,
    /// The shared cache had a trusted record of its output. The output is in the local store
    /// only if the build needed it there (see `kiln_engine::remote`); the run's inputs and
    /// notes are those of the record.
    Remote,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// Started and not finished: still going, or killed.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
}

macro_rules! text_enum {
    ($ty:ident, $($variant:ident = $text:literal),+) => {
        impl $ty {
            /// The word stored in the index and shown to users.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($text => Ok($ty::$variant),)+ _ => Err(s.to_owned()) }
            }
        }
    };
}

text_enum!(OutputKind, Tree = "tree", Blob = "blob");
text_enum!(RunStatus, Ran = "ran", Cached = "cached", Remote = "remote");
text_enum!(
    BuildStatus,
    Running = "running",
    Succeeded = "succeeded",
    Failed = "failed"
);

/// The output an action (a stage key) produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionResult {
    /// The output id.
    pub output: Digest,
    /// Whether it names a tree or a blob.
    pub kind: OutputKind,
}

/// One named input of a stage run, as it went into the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedInput {
    /// The input's name within the stage.
    pub name: String,
    /// The input's kind, as the engine names it.
    pub kind: String,
    /// The digest that entered the key; for an upstream stage, its output id.
    pub digest: Digest,
    /// A human-readable value for plain value inputs (e.g. `IMAGE_VERSION=2`).
    pub value: Option<String>,
}

/// A stage's part in a build: what it was keyed on and what came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRun {
    /// The stage's name in the recipe.
    pub stage: String,
    /// The stage kind.
    pub kind: String,
    /// The stage key.
    pub key: Digest,
    /// Ran or cached.
    pub status: RunStatus,
    /// Whether the output differs from the previous run of the stage.
    pub output_changed: bool,
    /// Wall time spent (zero when cached).
    pub duration: Duration,
    /// The output.
    pub output: ActionResult,
    /// The inputs, in key order.
    pub inputs: Vec<RecordedInput>,
    /// What the stage said about how it resolved its inputs or what its run did ("56 of 57
    /// segments reused"), one line each.
    pub notes: Vec<String>,
}

/// A build's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// Its id.
    pub id: BuildId,
    /// The recipe's name.
    pub recipe: String,
    /// The recipe's directory.
    pub recipe_dir: PathBuf,
    /// When it started.
    pub started: SystemTime,
    /// When it finished, if it did.
    pub finished: Option<SystemTime>,
    /// How it ended.
    pub status: BuildStatus,
}

/// A connection to the store's index. Open one per thread with
/// [`Store::index`]; it keeps the store (and its lock) alive.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
    path: PathBuf,
    store: Store,
}

impl Store {
    /// Opens a connection to the build index.
    pub fn index(&self) -> Result<Index> {
        let path = self.index_path();
        let conn = connect(&path)?;
        Ok(Index {
            conn,
            path,
            store: self.clone(),
        })
    }
}

pub(crate) fn connect(path: &Path) -> Result<Connection> {
    let err = |source| StoreError::Index {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
        .map_err(err)?;
    Ok(conn)
}

/// The schema version of the index at `path`, read without changing it.
pub(crate) fn schema_version(path: &Path) -> Result<i64> {
    let conn = connect(path)?;
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| StoreError::Index {
            path: path.to_owned(),
            source,
        })
}

/// Moves a damaged index aside so that a new one can be created: SQLite keeps no checksums, but
/// a flipped bit in a page's structure makes `PRAGMA quick_check` (a few milliseconds on an
/// index of this size) or opening fail with "malformed" or "not a database". Returns where the
/// damaged file went, `None` when the index is sound or missing. The damaged file is kept for
/// inspection; the action cache starts empty, so the next build runs every stage again (objects
/// already stored are not written again).
pub(crate) fn recover_damaged(path: &Path) -> Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let damaged = |error: &rusqlite::Error| {
        matches!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    };
    let check = connect(path).and_then(|conn| {
        let verdict: rusqlite::Result<String> =
            conn.query_row("PRAGMA quick_check(1)", [], |row| row.get(0));
        match verdict {
            Ok(verdict) => Ok(verdict != "ok"),
            Err(error) if damaged(&error) => Ok(true),
            Err(source) => Err(StoreError::Index {
                path: path.to_owned(),
                source,
            }),
        }
    });
    let is_damaged = match check {
        Ok(is_damaged) => is_damaged,
        Err(StoreError::Index { source, .. }) if damaged(&source) => true,
        Err(error) => return Err(error),
    };
    if !is_damaged {
        return Ok(None);
    }
    let moved = path.with_extension(format!("sqlite.damaged-{}", now_ms()));
    std::fs::rename(path, &moved).map_err(|source| StoreError::Rename {
        from: path.to_owned(),
        to: moved.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut aside = moved.as_os_str().to_owned();
        aside.push(suffix);
        let _ = std::fs::rename(&side, &aside);
    }
    Ok(Some(moved))
}

/// Creates or upgrades the index of `store` to [`SCHEMA_VERSION`], changing
/// the store's files where a migration says so, within the index's write
/// transaction (other processes opening the store wait for it).
pub(crate) fn migrate(store: &Store) -> Result<()> {
    let path = &store.index_path();
    let err = |source| StoreError::Index {
        path: path.to_owned(),
        source,
    };
    let conn = connect(path)?;
    // Rebuilding a table drops the old one, which would delete the rows referring to it with
    // foreign keys on. This connection only migrates; `foreign_key_check` runs before commit.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(err)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
        row.get::<_, String>(0)
    })
    .map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(err)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Another process may be migrating: take the write lock, then re-read.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Ok(Err(version));
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql)?;
            let files = match from {
                PLAIN_MODE_MIGRATION => store.relax_object_modes(),
                DATED_CHECKOUTS_MIGRATION => store.remove_shared_checkout_files().map(|_| ()),
                _ => Ok(()),
            };
            files.map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            conn.pragma_update(None, "user_version", from as i64 + 1)?;
        }
        let dangling: Option<String> = conn
            .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
            .optional()?;
        if let Some(table) = dangling {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                Some(format!(
                    "migration left rows of `{table}` without their parent"
                )),
            ));
        }
        Ok(Ok(()))
    })();
    match result {
        Ok(Ok(())) => conn.execute_batch("COMMIT").map_err(err),
        Ok(Err(found)) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(StoreError::IndexTooNew {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            })
        }
        Err(rusqlite::Error::ToSqlConversionFailure(e)) if e.is::<StoreError>() => {
            let _ = conn.execute_batch("ROLLBACK");
            match e.downcast::<StoreError>() {
                Ok(e) => Err(*e),
                Err(e) => Err(err(rusqlite::Error::ToSqlConversionFailure(e))),
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err(e))
        }
    }
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

const RUN_COLUMNS: &str = "r.id, r.stage, r.kind, r.key, r.status, r.output_changed, r.duration_ms, r.output, r.output_kind, r.notes";

/// A run row before its inputs are attached.
struct RunRow {
    id: i64,
    stage: String,
    kind: String,
    key: String,
    status: String,
    output_changed: bool,
    duration_ms: i64,
    output: String,
    output_kind: String,
    notes: String,
}

impl RunRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            stage: row.get(1)?,
            kind: row.get(2)?,
            key: row.get(3)?,
            status: row.get(4)?,
            output_changed: row.get(5)?,
            duration_ms: row.get(6)?,
            output: row.get(7)?,
            output_kind: row.get(8)?,
            notes: row.get(9)?,
        })
    }
}

impl Index {
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Index {
            path: self.path.clone(),
            source,
        }
    }

    fn parse<T: FromStr>(&self, what: &'static str, value: &str) -> Result<T> {
        value.parse().map_err(|_| StoreError::IndexValue {
            path: self.path.clone(),
            what,
            value: value.to_owned(),
        })
    }

    /// Records the start of a build of `recipe` from `dir`, begun at `started`.
    pub fn begin_build(&self, recipe: &str, dir: &Path, started: SystemTime) -> Result<BuildId> {
        self.conn
            .execute(
                "INSERT INTO builds (recipe, recipe_dir, started_ms, status) VALUES (?1, ?2, ?3, 'running')",
                params![recipe, dir.to_string_lossy(), to_ms(started)],
            )
            .map_err(|e| self.err(e))?;
        Ok(BuildId(self.conn.last_insert_rowid()))
    }

    /// Records the end of a build.
    pub fn finish_build(&self, build: BuildId, ok: bool) -> Result<()> {
        let status = if ok {
            BuildStatus::Succeeded
        } else {
            BuildStatus::Failed
        };
        self.conn
            .execute(
                "UPDATE builds SET finished_ms = ?1, status = ?2 WHERE id = ?3",
                params![now_ms(), status.as_str(), build.0],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A build's row.
    pub fn build(&self, build: BuildId) -> Result<Option<BuildInfo>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, recipe, recipe_dir, started_ms, finished_ms, status FROM builds WHERE id = ?1",
                [build.0],
                build_row,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|r| self.build_info(r)).transpose()
    }

    /// All builds, of one recipe or of all, newest first.
    pub fn builds(&self, recipe: Option<&str>) -> Result<Vec<BuildInfo>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, recipe, recipe_dir, started_ms, finished_ms, status FROM builds
                 WHERE ?1 IS NULL OR recipe = ?1 ORDER BY id DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([recipe], build_row)
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(|r| self.build_info(r)).collect()
    }

    fn build_info(&self, r: BuildRow) -> Result<BuildInfo> {
        Ok(BuildInfo {
            id: BuildId(r.0),
            recipe: r.1,
            recipe_dir: PathBuf::from(r.2),
            started: from_ms(r.3),
            finished: r.4.map(from_ms),
            status: self.parse("build status", &r.5)?,
        })
    }

    /// The latest build of `recipe`, whatever its status.
    pub fn last_build(&self, recipe: &str) -> Result<Option<BuildId>> {
        self.conn
            .query_row(
                "SELECT id FROM builds WHERE recipe = ?1 ORDER BY id DESC LIMIT 1",
                [recipe],
                |row| row.get(0).map(BuildId),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The last successful build of `recipe` before `before`.
    pub fn previous_build(&self, recipe: &str, before: BuildId) -> Result<Option<BuildId>> {
        self.conn
            .query_row(
                "SELECT id FROM builds WHERE recipe = ?1 AND id < ?2 AND status = 'succeeded'
                 ORDER BY id DESC LIMIT 1",
                params![recipe, before.0],
                |row| row.get(0).map(BuildId),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Looks up a stage key in the action cache and marks it used.
    ///
    /// An entry whose output object is no longer in the store is dropped and
    /// reported as a miss.
    pub fn lookup_action(&self, key: &Digest) -> Result<Option<ActionResult>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "UPDATE actions SET last_used_ms = ?1 WHERE key = ?2 RETURNING output, output_kind",
                params![now_ms(), key.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((output, kind)) = row else {
            return Ok(None);
        };
        let parsed = self
            .parse("output id", &output)
            .and_then(|output| Ok((output, self.parse("output kind", &kind)?)));
        let Ok((output, kind)) = parsed else {
            // A damaged row: the stage runs again and records a sound one.
            self.delete_actions(&[*key])?;
            self.store.note_repair(format!(
                "the build index `{}` held an unreadable action cache entry for key {}; \
                 dropped it, so its stage runs again",
                self.path.display(),
                key.short()
            ));
            return Ok(None);
        };
        let result = ActionResult { output, kind };
        let present = match result.kind {
            OutputKind::Tree => self.store.has_tree(&result.output),
            OutputKind::Blob => self.store.has_blob(&result.output),
        };
        if !present {
            self.delete_actions(&[*key])?;
            self.store.note_repair(format!(
                "the action cache entry for key {} in `{}` names {} {}, which is not in the \
                 store; dropped it, so its stage runs again",
                key.short(),
                self.path.display(),
                result.kind,
                result.output.short()
            ));
            return Ok(None);
        }
        Ok(Some(result))
    }

    /// Records what a stage key produced, keeping an existing entry (two
    /// processes that computed the same key agree, or the first one wins).
    /// Follow the integrity rule of this module: store objects first.
    pub fn record_action(&self, key: &Digest, result: ActionResult) -> Result<()> {
        self.insert_action(key, result, None)
    }

    /// Records what a key produced, as [`Index::record_action`], for as long
    /// as `anchor` (a blob or tree) is kept: gc keeps the entry and its
    /// output while it keeps the anchor, though no build's run names them.
    pub fn record_anchored_action(
        &self,
        key: &Digest,
        result: ActionResult,
        anchor: &Digest,
    ) -> Result<()> {
        self.insert_action(key, result, Some(anchor))
    }

    fn insert_action(
        &self,
        key: &Digest,
        result: ActionResult,
        anchor: Option<&Digest>,
    ) -> Result<()> {
        self.durable_before_record()?;
        let now = now_ms();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO actions (key, output, output_kind, created_ms, last_used_ms, anchor)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![
                    key.to_string(),
                    result.output.to_string(),
                    result.kind.as_str(),
                    now,
                    anchor.map(Digest::to_string)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The anchored action cache entries: key, output and anchor.
    pub(crate) fn anchored_actions(&self) -> Result<Vec<(Digest, ActionResult, Digest)>> {
        Ok(self
            .action_rows("WHERE anchor IS NOT NULL")?
            .into_iter()
            .filter_map(|(key, result, anchor)| Some((key, result, anchor?)))
            .collect())
    }

    /// Flushes every object written since the last flush, so the record about
    /// to be made names only objects on disk (see [`Store::make_durable`]).
    fn durable_before_record(&self) -> Result<()> {
        self.store.make_durable()?;
        self.store.before_record();
        Ok(())
    }

    /// Records a stage's run in `build`, replacing an earlier record of the
    /// same stage in that build.
    pub fn record_run(&self, build: BuildId, run: &StageRun) -> Result<()> {
        self.durable_before_record()?;
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "DELETE FROM runs WHERE build_id = ?1 AND stage = ?2",
            params![build.0, run.stage],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO runs (build_id, stage, kind, key, status, output_changed, duration_ms, output, output_kind, notes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                build.0,
                run.stage,
                run.kind,
                run.key.to_string(),
                run.status.as_str(),
                run.output_changed,
                run.duration.as_millis() as i64,
                run.output.output.to_string(),
                run.output.kind.as_str(),
                run.notes.join("\n"),
            ],
        )
        .map_err(|e| self.err(e))?;
        let run_id = tx.last_insert_rowid();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO run_inputs (run_id, position, name, kind, digest, value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for (position, input) in run.inputs.iter().enumerate() {
                stmt.execute(params![
                    run_id,
                    position as i64,
                    input.name,
                    input.kind,
                    input.digest.to_string(),
                    input.value,
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        crate::testpoint::pause_at("index-write");
        tx.commit().map_err(|e| self.err(e))
    }

    /// The runs recorded in `build`, in the order they were recorded.
    pub fn runs(&self, build: BuildId) -> Result<Vec<StageRun>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.build_id = ?1 ORDER BY r.id");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([build.0], RunRow::read)
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(|row| self.stage_run(row)).collect()
    }

    /// The latest run of `stage` in a build of `recipe` before `before`,
    /// whatever that build's status.
    pub fn last_run_of_stage(
        &self,
        recipe: &str,
        stage: &str,
        before: BuildId,
    ) -> Result<Option<StageRun>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN builds b ON b.id = r.build_id
             WHERE b.recipe = ?1 AND r.stage = ?2 AND b.id < ?3
             ORDER BY b.id DESC LIMIT 1"
        );
        let row = self
            .conn
            .query_row(&sql, params![recipe, stage, before.0], RunRow::read)
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|row| self.stage_run(row)).transpose()
    }

    fn stage_run(&self, row: RunRow) -> Result<StageRun> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, kind, digest, value FROM run_inputs WHERE run_id = ?1 ORDER BY position",
            )
            .map_err(|e| self.err(e))?;
        let inputs = stmt
            .query_map([row.id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        Ok(StageRun {
            stage: row.stage,
            kind: row.kind,
            key: self.parse("stage key", &row.key)?,
            status: self.parse("run status", &row.status)?,
            output_changed: row.output_changed,
            duration: Duration::from_millis(row.duration_ms.max(0) as u64),
            output: ActionResult {
                output: self.parse("output id", &row.output)?,
                kind: self.parse("output kind", &row.output_kind)?,
            },
            notes: row
                .notes
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_string)
                .collect(),
            inputs: inputs
                .into_iter()
                .map(|(name, kind, digest, value)| {
                    Ok(RecordedInput {
                        digest: self.parse("input digest", &digest)?,
                        name,
                        kind,
                        value,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Keeps the signed text of a shared cache's record, so a later build knows the output of
    /// `key` without asking the remote again (and checks the signature again then). Replaces
    /// what was kept for `key`.
    pub fn remember_remote_action(&self, key: &Digest, remote: &str, record: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO remote_actions (key, remote, record, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key.to_string(), remote, record, now_ms()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The record kept for `key` by [`Index::remember_remote_action`]: the remote's location
    /// and the signed text.
    pub fn remote_action(&self, key: &Digest) -> Result<Option<(String, String)>> {
        self.conn
            .query_row(
                "SELECT remote, record FROM remote_actions WHERE key = ?1",
                [key.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Drops the record kept for `key` (its objects turned out to be gone from the remote).
    pub fn forget_remote_action(&self, key: &Digest) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM remote_actions WHERE key = ?1",
                [key.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops kept remote records that no recorded run uses any more.
    pub(crate) fn prune_remote_actions(&self) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM remote_actions WHERE key NOT IN (SELECT key FROM runs)",
                [],
            )
            .map_err(|e| self.err(e))
    }

    /// Every action cache entry.
    pub(crate) fn actions(&self) -> Result<Vec<(Digest, ActionResult)>> {
        Ok(self
            .action_rows("")?
            .into_iter()
            .map(|(key, result, _)| (key, result))
            .collect())
    }

    /// The input digests recorded for each action cache entry, from every run keyed like it
    /// (what `graph explain` shows). An entry whose runs gc removed has none.
    pub(crate) fn action_inputs(&self) -> Result<HashMap<Digest, Vec<Digest>>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT r.key, i.digest FROM runs r
                 JOIN run_inputs i ON i.run_id = r.id
                 WHERE r.key IN (SELECT key FROM actions)",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        let mut inputs: HashMap<Digest, Vec<Digest>> = HashMap::new();
        // A value that does not parse names no object: it taints nothing.
        for (key, digest) in rows {
            if let (Ok(key), Ok(digest)) = (key.parse(), digest.parse()) {
                inputs.entry(key).or_default().push(digest);
            }
        }
        Ok(inputs)
    }

    /// The action cache entries `filter` (an SQL `WHERE` clause, or nothing)
    /// selects, with their anchors.
    fn action_rows(&self, filter: &str) -> Result<Vec<(Digest, ActionResult, Option<Digest>)>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT key, output, output_kind, anchor FROM actions {filter}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(key, output, kind, anchor)| {
                Ok((
                    self.parse("stage key", &key)?,
                    ActionResult {
                        output: self.parse("output id", &output)?,
                        kind: self.parse("output kind", &kind)?,
                    },
                    anchor
                        .map(|anchor| self.parse("anchor id", &anchor))
                        .transpose()?,
                ))
            })
            .collect()
    }

    /// Removes action cache entries.
    pub(crate) fn delete_actions(&self, keys: &[Digest]) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM actions WHERE key = ?1")
                .map_err(|e| self.err(e))?;
            for key in keys {
                stmt.execute([key.to_string()]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Removes builds with their runs and inputs.
    pub(crate) fn delete_builds(&self, builds: &[BuildId]) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM builds WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for build in builds {
                stmt.execute([build.0]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Moves the write-ahead log into the database and truncates it; best
    /// effort, a busy reader only delays it.
    pub(crate) fn checkpoint(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// Number of rows of a table, for statistics.
    pub(crate) fn count(&self, table: Table) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", table.name());
        self.conn
            .query_row(&sql, [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

/// Tables counted by [`Index::count`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Builds,
    Runs,
    Actions,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Builds => "builds",
            Table::Runs => "runs",
            Table::Actions => "actions",
        }
    }
}

type BuildRow = (i64, String, String, i64, Option<i64>, String);

fn build_row(row: &Row<'_>) -> rusqlite::Result<BuildRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectDir;
    use std::fs;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn run(stage: &str, output: Digest) -> StageRun {
        StageRun {
            notes: Vec::new(),
            stage: stage.to_owned(),
            kind: "packages".to_owned(),
            key: Digest::of_bytes(stage.as_bytes()),
            status: RunStatus::Ran,
            output_changed: true,
            duration: Duration::from_millis(1234),
            output: ActionResult {
                output,
                kind: OutputKind::Tree,
            },
            inputs: vec![
                RecordedInput {
                    name: "packages".to_owned(),
                    kind: "value".to_owned(),
                    digest: Digest::of_bytes(b"linux=6.7.1"),
                    value: Some("linux=6.7.1".to_owned()),
                },
                RecordedInput {
                    name: "skeleton".to_owned(),
                    kind: "tree".to_owned(),
                    digest: Digest::of_bytes(b"skeleton"),
                    value: None,
                },
            ],
        }
    }

    #[test]
    fn schema_version_is_set() {
        let (_dir, store) = store();
        let conn = Connection::open(store.index_path()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn version_1_index_gains_the_stat_cache_and_run_notes_and_keeps_its_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1/index.sqlite");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO builds (recipe, recipe_dir, started_ms, status) VALUES ('r', '/r', 1, 'succeeded')",
            [],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        let index = store.index().unwrap();
        assert_eq!(index.builds(Some("r")).unwrap().len(), 1);
        let version: i64 = index
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 7);
        assert_eq!(store.stat_cache_rows().unwrap(), 0);
        let build = index.last_build("r").unwrap().unwrap();
        assert!(index.runs(build).unwrap().is_empty());
    }

    #[test]
    fn version_3_index_keeps_its_runs_and_inputs_and_takes_remote_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1/index.sqlite");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO builds (id, recipe, recipe_dir, started_ms, status) VALUES (1, 'r', '/r', 1, 'succeeded');
             INSERT INTO runs (id, build_id, stage, kind, key, status, output_changed, duration_ms, output, output_kind, notes)
                 VALUES (7, 1, 'base', 'trees', 'k', 'ran', 1, 5, 'o', 'tree', 'a note');
             INSERT INTO run_inputs (run_id, position, name, kind, digest) VALUES (7, 0, 'base', 'tree', 'd');",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        let index = store.index().unwrap();
        let inputs: i64 = index
            .conn
            .query_row(
                "SELECT count(*) FROM run_inputs WHERE run_id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(inputs, 1, "the rebuild of `runs` dropped its inputs");
        let notes: String = index
            .conn
            .query_row("SELECT notes FROM runs WHERE id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(notes, "a note");
        // Foreign keys still hold: removing the build removes its runs and their inputs.
        index.delete_builds(&[BuildId(1)]).unwrap();
        let left: i64 = index
            .conn
            .query_row("SELECT count(*) FROM run_inputs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        let build = index
            .begin_build("r", Path::new("/r"), std::time::SystemTime::now())
            .unwrap();
        let mut remote = run("base", Digest::of_bytes(b"not stored here"));
        remote.status = RunStatus::Remote;
        index.record_run(build, &remote).unwrap();
        assert_eq!(index.runs(build).unwrap(), vec![remote]);
    }

    #[test]
    fn remote_records_are_kept_until_no_run_uses_them() {
        let (_dir, store) = store();
        let index = store.index().unwrap();
        let key = Digest::of_bytes(b"base");
        assert_eq!(index.remote_action(&key).unwrap(), None);
        index
            .remember_remote_action(&key, "http://cache", "{signed}")
            .unwrap();
        assert_eq!(
            index.remote_action(&key).unwrap(),
            Some(("http://cache".to_owned(), "{signed}".to_owned()))
        );
        let other = Digest::of_bytes(b"other");
        index
            .remember_remote_action(&other, "http://cache", "{other}")
            .unwrap();
        let build = index
            .begin_build("r", Path::new("/r"), std::time::SystemTime::now())
            .unwrap();
        let mut remote = run("base", Digest::of_bytes(b"out"));
        remote.status = RunStatus::Remote;
        index.record_run(build, &remote).unwrap();
        assert_eq!(index.prune_remote_actions().unwrap(), 1);
        assert!(index.remote_action(&key).unwrap().is_some());
        index.forget_remote_action(&key).unwrap();
        assert_eq!(index.remote_action(&key).unwrap(), None);
    }

    /// A tree of one file `f` holding `content` with `mode`, owned as the store's objects are,
    /// and its shared checkout.
    fn one_file_checkout(
        store: &Store,
        content: &[u8],
        mode: u32,
    ) -> (crate::BlobId, crate::TreeId, std::path::PathBuf) {
        let blob = store.put_bytes(content).unwrap();
        let (uid, gid) = store.owner();
        let owned = |path: &str, kind, mode| crate::Entry {
            uid,
            gid,
            ..crate::Entry::new(path, kind, mode)
        };
        let size = content.len() as u64;
        let manifest = crate::Manifest::from_entries(vec![
            owned("", crate::EntryKind::Dir, 0o755),
            owned("f", crate::EntryKind::File { blob, size }, mode),
        ])
        .unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        let checkout = store.shared_checkout(&tree).unwrap();
        (blob, tree, checkout)
    }

    /// Makes a new index's action table what it was before migration 7.
    fn as_before_anchors(conn: &Connection) {
        conn.execute_batch("ALTER TABLE actions DROP COLUMN anchor")
            .unwrap();
    }

    #[test]
    fn version_4_store_gets_0644_objects_and_loses_its_shared_checkouts() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = store();
        let (blob, tree, checkout) = one_file_checkout(&store, b"written with 0444 objects", 0o444);
        let old_mode = fs::Permissions::from_mode(0o444);
        fs::set_permissions(store.blob_path(&blob).unwrap(), old_mode.clone()).unwrap();
        fs::set_permissions(store.object_path(ObjectDir::Trees, &tree), old_mode).unwrap();
        let conn = Connection::open(store.index_path()).unwrap();
        as_before_anchors(&conn);
        conn.pragma_update(None, "user_version", 4).unwrap();
        drop((conn, store));

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema_version(&store.index_path()).unwrap(), SCHEMA_VERSION);
        for path in [
            store.blob_path(&blob).unwrap(),
            store.object_path(ObjectDir::Trees, &tree),
        ] {
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, crate::OBJECT_MODE, "{}", path.display());
        }
        // Its entry wanted 0444, which the plain blob no longer has.
        assert!(!checkout.exists());
        let again = store.shared_checkout(&tree).unwrap();
        let mode = fs::metadata(again.join("f")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o444);
    }

    #[test]
    fn version_5_store_loses_its_shared_checkouts_made_with_write_times() {
        let (dir, store) = store();
        let (blob, _, checkout) = one_file_checkout(&store, b"written at some time", 0o644);
        let conn = Connection::open(store.index_path()).unwrap();
        as_before_anchors(&conn);
        conn.pragma_update(None, "user_version", 5).unwrap();
        drop((conn, store));

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema_version(&store.index_path()).unwrap(), SCHEMA_VERSION);
        assert!(!checkout.exists());
        assert_eq!(store.read_blob(&blob).unwrap(), b"written at some time");
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = store();
        let path = store.index_path();
        drop(store);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::IndexTooNew { found: 99, .. }),
            "{err}"
        );
        assert!(err.help().is_some());
    }

    #[test]
    fn builds_and_runs_roundtrip() {
        let (_dir, store) = store();
        let index = store.index().unwrap();
        let dir = Path::new("/src/arch-rescue");
        let first = index
            .begin_build("arch-rescue", dir, std::time::SystemTime::now())
            .unwrap();
        let tree = store.put_manifest(&crate::Manifest::new()).unwrap();
        let r = run("packages", tree);
        index.record_run(first, &r).unwrap();
        index.finish_build(first, true).unwrap();

        let second = index
            .begin_build("arch-rescue", dir, std::time::SystemTime::now())
            .unwrap();
        assert!(second > first);
        let mut cached = r.clone();
        cached.status = RunStatus::Cached;
        cached.output_changed = false;
        cached.duration = Duration::ZERO;
        index.record_run(second, &cached).unwrap();
        // Recording the same stage again replaces it.
        index.record_run(second, &cached).unwrap();
        index.finish_build(second, false).unwrap();

        assert_eq!(index.runs(first).unwrap(), vec![r.clone()]);
        assert_eq!(index.runs(second).unwrap(), vec![cached.clone()]);
        assert_eq!(index.last_build("arch-rescue").unwrap(), Some(second));
        assert_eq!(index.last_build("other").unwrap(), None);
        let third = index
            .begin_build("arch-rescue", dir, std::time::SystemTime::now())
            .unwrap();
        // The failed second build is skipped.
        assert_eq!(
            index.previous_build("arch-rescue", third).unwrap(),
            Some(first)
        );
        assert_eq!(index.previous_build("arch-rescue", first).unwrap(), None);
        assert_eq!(
            index
                .last_run_of_stage("arch-rescue", "packages", third)
                .unwrap(),
            Some(cached)
        );
        assert_eq!(
            index
                .last_run_of_stage("arch-rescue", "packages", second)
                .unwrap(),
            Some(r)
        );
        assert_eq!(
            index
                .last_run_of_stage("arch-rescue", "uki", third)
                .unwrap(),
            None
        );
        let info = index.build(second).unwrap().unwrap();
        assert_eq!(info.status, BuildStatus::Failed);
        assert_eq!(info.recipe_dir, dir);
        assert!(info.finished.is_some());
        assert_eq!(
            index.build(third).unwrap().unwrap().status,
            BuildStatus::Running
        );
        let all: Vec<BuildId> = index.builds(None).unwrap().iter().map(|b| b.id).collect();
        assert_eq!(all, [third, second, first]);
    }

    #[test]
    fn action_cache_roundtrip() {
        let (_dir, store) = store();
        let index = store.index().unwrap();
        let key = Digest::of_bytes(b"key");
        assert_eq!(index.lookup_action(&key).unwrap(), None);
        let blob = store.put_bytes(b"uki").unwrap();
        let result = ActionResult {
            output: blob,
            kind: OutputKind::Blob,
        };
        index.record_action(&key, result).unwrap();
        // The first record wins.
        index
            .record_action(
                &key,
                ActionResult {
                    output: Digest::of_bytes(b"other"),
                    kind: OutputKind::Blob,
                },
            )
            .unwrap();
        assert_eq!(index.lookup_action(&key).unwrap(), Some(result));

        // An entry whose output vanished is a miss, and is dropped.
        let gone = Digest::of_bytes(b"gone key");
        index
            .record_action(
                &gone,
                ActionResult {
                    output: Digest::of_bytes(b"never stored"),
                    kind: OutputKind::Tree,
                },
            )
            .unwrap();
        assert_eq!(index.lookup_action(&gone).unwrap(), None);
        assert_eq!(index.actions().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_writers_in_threads() {
        let (_dir, store) = store();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let index = store.index().unwrap();
                    let build = index
                        .begin_build(
                            &format!("recipe{t}"),
                            Path::new("/r"),
                            std::time::SystemTime::now(),
                        )
                        .unwrap();
                    for i in 0..25 {
                        let output = store.put_bytes(format!("{t}/{i}").as_bytes()).unwrap();
                        let mut r = run(&format!("stage{i}"), output);
                        r.output.kind = OutputKind::Blob;
                        index.record_action(&r.key, r.output).unwrap();
                        index.record_run(build, &r).unwrap();
                    }
                    index.finish_build(build, true).unwrap();
                    build
                })
            })
            .collect();
        let builds: Vec<BuildId> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let index = store.index().unwrap();
        for build in builds {
            assert_eq!(index.runs(build).unwrap().len(), 25);
        }
        assert_eq!(index.count(Table::Runs).unwrap(), 100);
        // Same stage names give the same keys in every thread: one row each.
        assert_eq!(index.count(Table::Actions).unwrap(), 25);
    }
}
