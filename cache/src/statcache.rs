//! The stat cache: the blob a regular file held when it last had a given
//! `stat`, so that ingesting an unchanged tree reads no file content, as
//! git's index does.
//!
//! One row per file, keyed by its absolute path (the canonical path of the
//! ingested directory joined with the file's relative path), in the
//! `stat_cache` table of `v1/index.sqlite`:
//!
//! ```text
//! path → dev, ino, size, mtime_ns, ctime_ns, mode, uid, gid, blob, recorded_ns
//! ```
//!
//! A row is a hint, not a reference that keeps its blob alive, but it never
//! outlives its blob: the only places that remove blobs, `gc` (under the
//! exclusive store lock) and `verify`, drop the rows naming the blobs they
//! remove, so the blob of a row is in the store and a collected blob is
//! simply a miss. An ingest also drops the rows of files that left the
//! directory it walked. (Deleting objects by hand breaks this, as it breaks
//! the trees that use them: `kiln cache verify` repairs both.)
//!
//! # When a row is trusted
//!
//! Ingest takes a row's blob without reading the file only when every field
//! of the file's `lstat` equals the row's and the row is not *racy*: both
//! the file's mtime and ctime must be older than the row's `recorded_ns`
//! minus [`RACY_MARGIN_NS`] (one second).
//! `recorded_ns` is the wall-clock time at which the ingest that wrote the
//! row started, before it looked at the file.
//!
//! Why this is enough: a change to a file after the ingest started gives it
//! a ctime no earlier than that start minus the granularity of file
//! timestamps (at most one clock tick behind the wall clock, far below a
//! second), and unlike the mtime no call sets a ctime to a chosen value. A trusted row's ctime is more
//! than a second older than the start, so a file changed since the row's
//! content was read can never match it. A file changed within the same
//! timestamp tick as the read, which a plain stat comparison cannot see, is
//! racy by construction and is rehashed. Racy rows are not written at all:
//! the file is hashed again on the next ingest, which records it once it is
//! old enough.
//!
//! The rule assumes the wall clock does not jump backwards between the
//! change of a file and its ingest by more than the margin.
//!
//! Rows are written only for files without extended attributes. Setting or
//! removing one changes the ctime, so a file that matches its row still has
//! none, and a hit skips reading them as well as the content: an unchanged
//! tree costs one `lstat` per entry.
//!
//! # Concurrency
//!
//! Reads take one snapshot of the rows under the directory. Writes happen
//! after every blob they name is stored, in one `BEGIN IMMEDIATE`
//! transaction per ingest, so two builds ingesting the same directory at
//! once each write a consistent set of rows; the last one wins, and either
//! set is correct.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{TransactionBehavior, params};

use crate::digest::{BlobId, Digest};
use crate::error::{Result, StoreError};
use crate::store::Store;

/// The stat cache of [`Store::ingest_dir_cached`] trusts a row only when the
/// file's mtime and ctime are older than the row's recording time minus this
/// margin (one second, in nanoseconds): a file changed within the margin of
/// its last ingest is read again until it is older.
pub const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// The `lstat` fields a row must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl StatKey {
    /// The key of a file's metadata from the standard library.
    pub(crate) fn of(meta: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

fn nanos(seconds: i64, nanos: i64) -> i64 {
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The wall clock in nanoseconds since the epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// One file's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) stat: StatKey,
    pub(crate) blob: BlobId,
    /// When the ingest that wrote the row started.
    pub(crate) recorded_ns: i64,
}

impl Row {
    /// Whether the file was old enough when the row was recorded for a
    /// matching stat to prove an unchanged content (see the module docs).
    pub(crate) fn is_settled(&self) -> bool {
        let limit = self.recorded_ns.saturating_sub(RACY_MARGIN_NS);
        self.stat.mtime_ns < limit && self.stat.ctime_ns < limit
    }
}

/// The rows under one directory, loaded once per ingest.
#[derive(Debug)]
pub(crate) struct StatCache {
    db: PathBuf,
    /// The canonical directory, then `/`: every key starts with it.
    prefix: Vec<u8>,
    /// Rows by path relative to the directory.
    pub(crate) rows: HashMap<String, Row>,
}

impl StatCache {
    /// Loads the rows of every file under `root`, which must be canonical
    /// (absolute, no symlink, no `.` or `..`).
    pub(crate) fn load(store: &Store, root: &Path) -> Result<StatCache> {
        let db = store.index_path();
        let conn = crate::index::connect(&db)?;
        let mut prefix = root.as_os_str().as_bytes().to_vec();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        // Every key starting with `…/` sorts below `…0`.
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = b'/' + 1;
        }
        let mut cache = StatCache {
            db,
            prefix,
            rows: HashMap::new(),
        };
        {
            let mut stmt = conn
                .prepare(
                    "SELECT path, blob, dev, ino, size, mtime_ns, ctime_ns, mode, uid, gid, recorded_ns
                     FROM stat_cache WHERE path >= ?1 AND path < ?2",
                )
                .map_err(|e| cache.err(e))?;
            let mut rows = stmt
                .query(params![cache.prefix, end])
                .map_err(|e| cache.err(e))?;
            let prefix_len = cache.prefix.len();
            while let Some(r) = rows.next().map_err(|e| cache.err(e))? {
                // Rows that do not decode are misses; the ingest replaces them.
                let (Ok(ValueRef::Blob(path)), Ok(ValueRef::Blob(blob))) =
                    (r.get_ref(0), r.get_ref(1))
                else {
                    continue;
                };
                let (Some(Ok(rel)), Ok(blob)) = (
                    path.get(prefix_len..).map(std::str::from_utf8),
                    <[u8; 32]>::try_from(blob),
                ) else {
                    continue;
                };
                let rel = rel.to_owned();
                let int = |i| r.get::<_, i64>(i);
                let decoded = (|| {
                    Ok::<_, rusqlite::Error>(Row {
                        stat: StatKey {
                            dev: int(2)? as u64,
                            ino: int(3)? as u64,
                            size: int(4)? as u64,
                            mtime_ns: int(5)?,
                            ctime_ns: int(6)?,
                            mode: int(7)? as u32,
                            uid: int(8)? as u32,
                            gid: int(9)? as u32,
                        },
                        blob: Digest::from_bytes(blob),
                        recorded_ns: int(10)?,
                    })
                })();
                if let Ok(row) = decoded {
                    cache.rows.insert(rel, row);
                }
            }
        }
        Ok(cache)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Index {
            path: self.db.clone(),
            source,
        }
    }

    fn key(&self, rel: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(rel.as_bytes());
        key
    }

    /// Writes new rows and deletes the rows of files that are gone, in one
    /// transaction. Call it only once every blob of `upserts` is stored.
    pub(crate) fn write(&self, upserts: &[(&str, Row)], deletes: &[&str]) -> Result<()> {
        if upserts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let conn = crate::index::connect(&self.db)?;
        let tx = rusqlite::Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR REPLACE INTO stat_cache
                     (path, dev, ino, size, mtime_ns, ctime_ns, mode, uid, gid, blob, recorded_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(|e| self.err(e))?;
            for (rel, row) in upserts {
                let s = &row.stat;
                insert
                    .execute(params![
                        self.key(rel),
                        s.dev as i64,
                        s.ino as i64,
                        s.size as i64,
                        s.mtime_ns,
                        s.ctime_ns,
                        s.mode,
                        s.uid,
                        s.gid,
                        &row.blob.as_bytes()[..],
                        row.recorded_ns,
                    ])
                    .map_err(|e| self.err(e))?;
            }
            let mut delete = tx
                .prepare("DELETE FROM stat_cache WHERE path = ?1")
                .map_err(|e| self.err(e))?;
            for rel in deletes {
                delete.execute([self.key(rel)]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

impl Store {
    /// Drops the stat cache rows whose blob `keep` rejects; returns how many.
    pub(crate) fn prune_stat_cache(&self, keep: impl Fn(&BlobId) -> bool) -> Result<usize> {
        let db = self.index_path();
        let conn = crate::index::connect(&db)?;
        let err = |source| StoreError::Index {
            path: db.clone(),
            source,
        };
        let tx = rusqlite::Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(err)?;
        let doomed: Vec<Vec<u8>> = tx
            .prepare("SELECT path, blob FROM stat_cache")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .filter(|row| {
                    row.as_ref().map_or(true, |(_, blob)| {
                        <[u8; 32]>::try_from(blob.as_slice())
                            .map_or(true, |bytes| !keep(&Digest::from_bytes(bytes)))
                    })
                })
                .map(|row| row.map(|(path, _)| path))
                .collect()
            })
            .map_err(err)?;
        {
            let mut delete = tx
                .prepare("DELETE FROM stat_cache WHERE path = ?1")
                .map_err(err)?;
            for path in &doomed {
                delete.execute([path]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(doomed.len())
    }

    /// Drops the stat cache rows of every file under `dir` (canonical), a folder that is gone.
    pub(crate) fn forget_stat_rows_under(&self, dir: &Path) -> Result<()> {
        let db = self.index_path();
        let conn = crate::index::connect(&db)?;
        let mut prefix = dir.as_os_str().as_bytes().to_vec();
        prefix.push(b'/');
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = b'/' + 1;
        }
        conn.execute(
            "DELETE FROM stat_cache WHERE path >= ?1 AND path < ?2",
            params![prefix, end],
        )
        .map(|_| ())
        .map_err(|source| StoreError::Index { path: db, source })
    }

    /// Number of stat cache rows.
    pub(crate) fn stat_cache_rows(&self) -> Result<u64> {
        let db = self.index_path();
        let conn = crate::index::connect(&db)?;
        conn.query_row("SELECT count(*) FROM stat_cache", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(|source| StoreError::Index { path: db, source })
    }
}

/// The path an ingested directory's rows are keyed under: absolute, without
/// symlinks, so that two spellings of one directory share their rows.
pub(crate) fn canonical_root(dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir).map_err(|source| StoreError::Read {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IngestOptions;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        tree: PathBuf,
        file: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        let file = tree.join("etc/hostname");
        fs::write(&file, "real\n").unwrap();
        Fixture {
            _dir: dir,
            store,
            tree,
            file,
        }
    }

    /// Records a row for `etc/hostname` saying it holds `blob`, as if an
    /// ingest that started at `recorded_ns` had read it.
    fn forge(f: &Fixture, blob: BlobId, recorded_ns: impl Fn(&StatKey) -> i64) {
        let stat = StatKey::of(&fs::symlink_metadata(&f.file).unwrap());
        let root = canonical_root(&f.tree).unwrap();
        let cache = StatCache::load(&f.store, &root).unwrap();
        let row = Row {
            stat,
            blob,
            recorded_ns: recorded_ns(&stat),
        };
        cache.write(&[("etc/hostname", row)], &[]).unwrap();
    }

    fn ingested_blob(f: &Fixture) -> (BlobId, crate::IngestReport) {
        let (m, report) = f
            .store
            .ingest_dir_report(&f.tree, IngestOptions::default(), true)
            .unwrap();
        (*m.get("etc/hostname").unwrap().blob().unwrap(), report)
    }

    #[test]
    fn a_settled_matching_row_is_taken_without_reading_the_file() {
        let f = fixture();
        let real = Digest::of_bytes(b"real\n");
        // A blob the file never held: getting it back proves the file was not read.
        let stale = f.store.put_bytes(b"stale\n").unwrap();
        forge(&f, stale, |stat| {
            stat.ctime_ns.max(stat.mtime_ns) + 2 * RACY_MARGIN_NS
        });
        let (blob, report) = ingested_blob(&f);
        assert_eq!(blob, stale);
        assert_eq!((report.hashed, report.reused, report.files), (0, 1, 1));

        // A chmod there and back leaves mode and mtime as they were but not
        // the ctime: the row no longer matches.
        fs::set_permissions(&f.file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&f.file, fs::Permissions::from_mode(0o644)).unwrap();
        let (blob, report) = ingested_blob(&f);
        assert_eq!(blob, real);
        assert_eq!((report.hashed, report.reused), (1, 0));
        assert_eq!(report.bytes_hashed, 5);
    }

    #[test]
    fn racy_rows_are_not_trusted() {
        let f = fixture();
        let stale = f.store.put_bytes(b"stale\n").unwrap();
        // Recorded less than the margin after the file's last change: the
        // file could have changed again within the same timestamp tick.
        forge(&f, stale, |stat| stat.ctime_ns + RACY_MARGIN_NS);
        let (blob, report) = ingested_blob(&f);
        assert_eq!(blob, Digest::of_bytes(b"real\n"));
        assert_eq!(report.hashed, 1);
        // The file is still too recent: hashing it again wrote no row.
        assert_eq!(f.store.stat_cache_rows().unwrap(), 1);
        let root = canonical_root(&f.tree).unwrap();
        let rows = StatCache::load(&f.store, &root).unwrap().rows;
        assert_eq!(rows["etc/hostname"].blob, stale);

        // An mtime set in the past does not help: the ctime still counts.
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, &f.file, &old, rustix::fs::AtFlags::empty())
            .unwrap();
        forge(&f, stale, |stat| stat.mtime_ns + 10 * RACY_MARGIN_NS);
        let (blob, _) = ingested_blob(&f);
        assert_eq!(blob, Digest::of_bytes(b"real\n"));
    }

    #[test]
    fn verify_drops_rows_whose_blob_is_missing() {
        let f = fixture();
        // A row naming a blob the store lacks (its object deleted by hand).
        let missing = Digest::of_bytes(b"deleted\n");
        forge(&f, missing, |stat| stat.ctime_ns + 2 * RACY_MARGIN_NS);
        let kept = f.store.put_bytes(b"kept\n").unwrap();
        let root = canonical_root(&f.tree).unwrap();
        let other = Row {
            stat: StatKey::of(&fs::symlink_metadata(&f.tree).unwrap()),
            blob: kept,
            recorded_ns: 0,
        };
        StatCache::load(&f.store, &root)
            .unwrap()
            .write(&[("other", other)], &[])
            .unwrap();
        let report = f.store.verify().unwrap();
        assert_eq!(report.stat_rows_removed, 1);
        assert!(report.to_string().contains("dropped 1 stat cache rows"));
        let rows = StatCache::load(&f.store, &root).unwrap().rows;
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["other"]);
        // The file is read again and its real blob remembered.
        let (blob, report) = ingested_blob(&f);
        assert_eq!(blob, Digest::of_bytes(b"real\n"));
        assert_eq!(report.hashed, 1);
    }

    #[test]
    fn the_rule_needs_both_times_a_margin_older() {
        let stat = |mtime_ns, ctime_ns| StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns,
            mode: 0o100644,
            uid: 0,
            gid: 0,
        };
        let row = |mtime, ctime, recorded| Row {
            stat: stat(mtime, ctime),
            blob: Digest::of_bytes(b""),
            recorded_ns: recorded,
        };
        let t = 1_700_000_000 * RACY_MARGIN_NS;
        assert!(row(t, t, t + RACY_MARGIN_NS + 1).is_settled());
        assert!(!row(t, t, t + RACY_MARGIN_NS).is_settled());
        assert!(!row(t - 5 * RACY_MARGIN_NS, t, t + RACY_MARGIN_NS).is_settled());
        assert!(!row(t, t - 5 * RACY_MARGIN_NS, t + RACY_MARGIN_NS).is_settled());
        // A file from the future is never settled.
        assert!(!row(t + 10 * RACY_MARGIN_NS, t, t + 2 * RACY_MARGIN_NS).is_settled());
    }

    #[test]
    fn keys_of_a_directory_do_not_match_its_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        for name in ["a", "a-b", "a0"] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("f"), name).unwrap();
        }
        let root = canonical_root(&dir.path().join("a")).unwrap();
        let row = Row {
            stat: StatKey::of(&fs::symlink_metadata(dir.path().join("a/f")).unwrap()),
            blob: Digest::of_bytes(b"a"),
            recorded_ns: 0,
        };
        for name in ["a", "a-b", "a0"] {
            let root = canonical_root(&dir.path().join(name)).unwrap();
            StatCache::load(&store, &root)
                .unwrap()
                .write(&[("f", row)], &[])
                .unwrap();
        }
        let rows = StatCache::load(&store, &root).unwrap().rows;
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["f"]);
        assert_eq!(store.stat_cache_rows().unwrap(), 3);
    }
}
