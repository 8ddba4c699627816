//! Ingesting with the stat cache against the real filesystem and index.
//! None of these needs root. Files must be older than the racy margin to
//! be remembered, so the trees are made a little over a second before use.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{Scratch, chmod, make_removable, sample_tree};
use kiln_cache::{
    ActionResult, GcPolicy, IngestOptions, IngestReport, Manifest, OutputKind, PutMode,
    RACY_MARGIN_NS, RecordedInput, RunStatus, StageRun, TreeId,
};

fn cached(s: &Scratch, dir: &Path) -> (Manifest, IngestReport) {
    s.store
        .ingest_dir_report(dir, IngestOptions::default(), true)
        .unwrap()
}

fn plain(s: &Scratch, dir: &Path) -> Manifest {
    s.store.ingest_dir(dir, IngestOptions::default()).unwrap()
}

/// A run whose input is the tree `tree`, which gc then keeps.
fn run(tree: TreeId) -> StageRun {
    StageRun {
        notes: Vec::new(),
        stage: "extra".to_owned(),
        kind: "trees".to_owned(),
        key: kiln_cache::Digest::of_bytes(b"key"),
        status: RunStatus::Ran,
        output_changed: true,
        duration: Duration::ZERO,
        output: ActionResult {
            output: tree,
            kind: OutputKind::Tree,
        },
        inputs: vec![RecordedInput {
            name: "tree".to_owned(),
            kind: "tree".to_owned(),
            digest: tree,
            value: None,
        }],
    }
}

/// Waits until files written now are older than the racy margin.
fn settle() {
    std::thread::sleep(Duration::from_nanos(RACY_MARGIN_NS as u64) + Duration::from_millis(150));
}

/// Sets a file's mtime (and atime) back to what `meta` says.
fn restore_mtime(path: &Path, meta: &fs::Metadata) {
    let at = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = rustix::fs::Timestamps {
        last_access: at(meta.atime(), meta.atime_nsec()),
        last_modification: at(meta.mtime(), meta.mtime_nsec()),
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
}

#[test]
fn second_ingest_reads_no_file_and_changes_are_seen() {
    let s = Scratch::new();
    let src = s.path("src");
    // A file with xattrs is never remembered: a hit does not read them.
    let with_xattrs = usize::from(sample_tree(&src));
    fs::write(src.join("etc/motd"), "hello\n").unwrap();
    settle();

    let (first, cold) = cached(&s, &src);
    // Regular files, a hard link group counting once.
    let files = 9;
    assert_eq!((cold.files, cold.hashed, cold.reused), (files, files, 0));
    assert_eq!(first.id(), plain(&s, &src).id());

    let (second, warm) = cached(&s, &src);
    assert_eq!(second.id(), first.id());
    assert_eq!(
        (warm.hashed, warm.reused),
        (with_xattrs, files - with_xattrs)
    );
    assert_eq!(warm.bytes_hashed == 0, with_xattrs == 0);
    assert_eq!(
        s.store.stats().unwrap().stat_cache_rows,
        (files - with_xattrs) as u64
    );

    // New content of the same size, with the old mtime put back: the
    // ctime gives it away.
    let motd = src.join("etc/motd");
    let meta = fs::metadata(&motd).unwrap();
    fs::write(&motd, "HELLO\n").unwrap();
    restore_mtime(&motd, &meta);
    assert_eq!(fs::metadata(&motd).unwrap().mtime_nsec(), meta.mtime_nsec());
    let (third, report) = cached(&s, &src);
    assert_eq!(
        (report.hashed, report.reused),
        (1 + with_xattrs, files - 1 - with_xattrs)
    );
    assert_eq!(third.id(), plain(&s, &src).id());
    assert_ne!(third.id(), first.id());

    // A mode changed there and back is rehashed too.
    chmod(&src.join("usr/bin/tool"), 0o700);
    chmod(&src.join("usr/bin/tool"), 0o755);
    let (_, report) = cached(&s, &src);
    // motd too: it was too recent to be remembered.
    assert_eq!(report.hashed, 2 + with_xattrs);

    // Once settled, both are remembered again.
    settle();
    cached(&s, &src);
    let (fourth, report) = cached(&s, &src);
    assert_eq!(
        (report.hashed, report.reused),
        (with_xattrs, files - with_xattrs)
    );
    assert_eq!(fourth.id(), third.id());
    make_removable(&src);
}

#[test]
fn rows_follow_files_away_and_blobs_out_of_the_store() {
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("a/f{i}")), format!("file {i}")).unwrap();
    }
    settle();
    let (m, _) = cached(&s, &src);
    assert_eq!(s.store.stats().unwrap().stat_cache_rows, 5);

    // A removed file's row goes with it.
    fs::remove_file(src.join("a/f4")).unwrap();
    let (_, report) = cached(&s, &src);
    assert_eq!((report.hashed, report.reused), (0, 4));
    assert_eq!(s.store.stats().unwrap().stat_cache_rows, 4);

    // gc keeps the rows of the blobs it keeps...
    let tree = s.store.put_manifest(&m).unwrap();
    let index = s.store.index().unwrap();
    let build = index
        .begin_build("r", Path::new("/r"), std::time::SystemTime::now())
        .unwrap();
    index.record_run(build, &run(tree)).unwrap();
    index.finish_build(build, true).unwrap();
    drop(index);
    s.store.gc(GcPolicy::default()).unwrap();
    let (_, report) = cached(&s, &src);
    assert_eq!((report.hashed, report.reused), (0, 4));
    // ...and drops those of the blobs it collects: they are misses.
    fs::write(src.join("a/f0"), "changed").unwrap();
    settle();
    let (changed, report) = cached(&s, &src);
    assert_eq!(report.hashed, 1);
    let new_blob = *changed.get("a/f0").unwrap().blob().unwrap();
    let collected = s.store.gc(GcPolicy::default()).unwrap();
    assert_eq!(collected.blobs_removed, 1);
    assert!(!s.store.has_blob(&new_blob));
    assert_eq!(s.store.stats().unwrap().stat_cache_rows, 3);
    let (again, report) = cached(&s, &src);
    assert_eq!((report.hashed, report.reused), (1, 3));
    assert!(s.store.has_blob(&new_blob));
    assert_eq!(again.id(), changed.id());

    // Ingesting a subdirectory finds the same rows under another root.
    let (_, report) = cached(&s, &src.join("a"));
    assert_eq!((report.hashed, report.reused), (0, 4));

    // Moving ingests consume the files and never use the cache.
    let moved = s
        .store
        .ingest_dir_report(
            &src,
            IngestOptions {
                mode: PutMode::Move,
                owner: None,
            },
            true,
        )
        .unwrap()
        .1;
    assert_eq!((moved.hashed, moved.reused), (4, 0));
    assert!(!src.join("a/f0").exists());
}

#[test]
fn concurrent_cached_ingests_agree() {
    let s = Scratch::new();
    let src = s.path("src");
    for d in 0..10 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..50 {
            fs::write(src.join(format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    settle();
    let expected = plain(&s, &src).id();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = s.store.clone();
            let src = src.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        store
                            .ingest_dir_cached(&src, IngestOptions::default())
                            .unwrap()
                            .id()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        for id in thread.join().unwrap() {
            assert_eq!(id, expected);
        }
    }
    let (_, report) = cached(&s, &src);
    assert_eq!((report.hashed, report.reused), (0, 500));
}

#[test]
fn a_file_given_an_xattr_after_its_row_was_written_is_read_again() {
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("plain"), "content").unwrap();
    settle();
    let (first, _) = cached(&s, &src);
    let (_, warm) = cached(&s, &src);
    assert_eq!((warm.hashed, warm.reused), (0, 1));
    if !common::set_user_xattr(&src.join("plain"), "user.kiln.late", b"x") {
        return;
    }
    let (second, report) = cached(&s, &src);
    assert_eq!(report.hashed, 1, "the xattr must be seen");
    assert_ne!(second.id(), first.id());
    assert_eq!(second.id(), plain(&s, &src).id());
}
