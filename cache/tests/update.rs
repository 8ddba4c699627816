//! Updating a checkout in place, on a hard-linked clone of a previous
//! checkout, as outputs are replaced. None of these needs root: entries
//! keep the owner of whoever runs the tests.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use common::{Scratch, make_removable, sample_tree};
use kiln_cache::{
    CheckoutMode, CheckoutOptions, Entry, EntryKind, IngestOptions, Manifest, StoreError,
    UpdateReport, clone_hardlinked,
};
use kiln_test_support::{Facts, tree_listing};

const SDE: i64 = 1_700_000_000;

fn opts(mode: CheckoutMode) -> CheckoutOptions {
    CheckoutOptions {
        mode,
        mtime: Some(SDE),
        ignore_owner: true,
    }
}

fn me() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

fn file(s: &Scratch, path: &str, content: &[u8], mode: u32) -> Entry {
    let blob = s.store.put_bytes(content).unwrap();
    let kind = EntryKind::File {
        blob,
        size: content.len() as u64,
    };
    let mut entry = Entry::new(path, kind, mode);
    (entry.uid, entry.gid) = me();
    entry
}

fn dir(path: &str, mode: u32) -> Entry {
    let mut entry = Entry::new(path, EntryKind::Dir, mode);
    (entry.uid, entry.gid) = me();
    entry
}

fn symlink_entry(path: &str, target: &str) -> Entry {
    let mut entry = Entry::new(
        path,
        EntryKind::Symlink {
            target: target.to_owned(),
        },
        0o777,
    );
    (entry.uid, entry.gid) = me();
    entry
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// The sample tree changed in every way a tree can change (xattr changes
/// only where the filesystem has them).
fn changed(s: &Scratch, m: &Manifest, xattrs: bool) -> Manifest {
    let mut m2 = m.clone();
    let mut put = |entry: Entry| {
        m2.insert_or_replace(entry).unwrap();
    };
    // New content, same xattrs.
    let mut hostname = file(s, "etc/hostname", b"rescue2\n", 0o644);
    hostname.xattrs = m.get("etc/hostname").unwrap().xattrs.clone();
    put(hostname);
    // Added: a file, and directories with a file.
    put(file(s, "etc/new", b"new\n", 0o600));
    put(dir("opt", 0o755));
    put(dir("opt/app", 0o750));
    put(file(s, "opt/app/run", b"#!/bin/sh\n", 0o755));
    // Metadata only: a file's mode, a setuid file's xattrs, a directory's
    // mode and xattrs.
    let mut tool = m.get("usr/bin/tool").unwrap().clone();
    tool.mode = 0o700;
    put(tool);
    if xattrs {
        let mut sudo = m.get("usr/bin/sudo").unwrap().clone();
        sudo.xattrs
            .insert("user.kiln.new".to_owned(), b"1".to_vec());
        put(sudo);
    }
    let mut shared = m.get("srv/shared").unwrap().clone();
    shared.mode = 0o755;
    shared.xattrs.clear();
    put(shared);
    // Type changes: symlink to file, fifo to directory, directory to
    // symlink; and a symlink's target.
    put(file(s, "etc/abs-link", b"was a link\n", 0o644));
    put(dir("tmp/fifo", 0o700));
    put(file(s, "tmp/fifo/inside", b"inside\n", 0o644));
    put(symlink_entry("etc/ssl", "../usr/lib"));
    put(symlink_entry("etc/rel-link", "../usr/bin/sudo"));
    // Hard links: the git group gains a member and loses one; two files
    // become a new group.
    let group = m.get("usr/bin/git").unwrap().hardlink;
    let mut receive = m.get("usr/bin/git").unwrap().clone();
    receive.path = "usr/bin/git-receive-pack".to_owned();
    put(receive);
    let mut core = m.get("usr/lib/git-core").unwrap().clone();
    core.hardlink = None;
    put(core);
    let mut empty = m.get("etc/empty").unwrap().clone();
    empty.hardlink = Some(77);
    put(empty.clone());
    empty.path = "etc/empty-twin".to_owned();
    put(empty);
    assert!(group.is_some());
    // Removed: a symlink and a read-only directory with its file.
    m2.remove_path_recursive("etc/dangling");
    m2.remove_path_recursive("srv/readonly");
    m2.canonicalize_hardlinks();
    m2.validate().unwrap();
    m2
}

#[test]
fn update_of_a_hardlinked_clone_gives_the_new_tree_and_leaves_the_old_one() {
    let s = Scratch::new();
    let src = s.path("src");
    let xattrs = sample_tree(&src);
    let m = s.store.ingest_dir(&src, IngestOptions::default()).unwrap();
    let m2 = changed(&s, &m, xattrs);

    let a = s.path("a");
    s.store.checkout(&m, &a, opts(CheckoutMode::Copy)).unwrap();
    let before = tree_listing(&a, Facts::Everything);
    let b = s.path("b");
    clone_hardlinked(&a, &b).unwrap();
    assert_eq!(tree_listing(&b, Facts::Everything).len(), before.len());
    let report = s
        .store
        .update_checkout(&m, &m2, &b, opts(CheckoutMode::Copy))
        .unwrap();

    // The old checkout was not written through.
    assert_eq!(tree_listing(&a, Facts::Everything), before);
    let replaced = if xattrs { 11 } else { 10 };
    assert_eq!(
        report,
        UpdateReport {
            removed: 4,
            added: 7,
            replaced,
            // The root, etc, opt (new), srv, srv/shared, tmp, usr/bin,
            // usr/lib, less the new ones.
            dirs_updated: 7,
        }
    );

    // Every entry has the clamped time, changed or not.
    for entry in walkdir::WalkDir::new(&b) {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        assert_eq!(meta.mtime(), SDE, "{}", entry.path().display());
    }
    // Unchanged files are still shared; changed ones are new inodes.
    for same in ["usr/lib/big.so", "usr/bin/sudo", "bin"] {
        if same == "usr/bin/sudo" && xattrs {
            continue;
        }
        assert_eq!(ino(&a.join(same)), ino(&b.join(same)), "{same}");
    }
    for new in [
        "etc/hostname",
        "usr/bin/tool",
        "etc/abs-link",
        "usr/bin/git",
    ] {
        assert_ne!(ino(&a.join(new)), ino(&b.join(new)), "{new}");
    }
    let git = ino(&b.join("usr/bin/git"));
    assert_eq!(ino(&b.join("usr/bin/git-upload-pack")), git);
    assert_eq!(ino(&b.join("usr/bin/git-receive-pack")), git);
    assert_ne!(ino(&b.join("usr/lib/git-core")), git);
    assert_eq!(ino(&b.join("etc/empty")), ino(&b.join("etc/empty-twin")));

    // Once the old checkout is gone, the clone's inodes are its own and it
    // ingests to exactly the new tree.
    make_removable(&a);
    fs::remove_dir_all(&a).unwrap();
    let again = s.store.ingest_dir(&b, IngestOptions::default()).unwrap();
    let diff: Vec<String> = m2.diff(&again).iter().map(ToString::to_string).collect();
    assert_eq!(again.id(), m2.id(), "{diff:?}");
    make_removable(&b);
    make_removable(&src);
}

#[test]
fn update_in_place_works_in_both_modes_and_back() {
    let s = Scratch::new();
    let src = s.path("src");
    let xattrs = sample_tree(&src);
    let m = s.store.ingest_dir(&src, IngestOptions::default()).unwrap();
    let m2 = changed(&s, &m, xattrs);
    for mode in [CheckoutMode::Hardlink, CheckoutMode::Copy] {
        let dest = s.path(&format!("out-{mode:?}"));
        s.store.checkout(&m, &dest, opts(mode)).unwrap();
        s.store.update_checkout(&m, &m2, &dest, opts(mode)).unwrap();
        let again = s.store.ingest_dir(&dest, IngestOptions::default()).unwrap();
        assert_eq!(again.id(), m2.id(), "{mode:?}");
        // And back again.
        let report = s.store.update_checkout(&m2, &m, &dest, opts(mode)).unwrap();
        assert_eq!((report.added, report.removed), (4, 7), "{mode:?}");
        let back = s.store.ingest_dir(&dest, IngestOptions::default()).unwrap();
        assert_eq!(back.id(), m.id(), "{mode:?}");
        // Nothing to do touches only the root.
        let report = s.store.update_checkout(&m, &m, &dest, opts(mode)).unwrap();
        assert_eq!(
            report,
            UpdateReport {
                dirs_updated: 1,
                ..UpdateReport::default()
            }
        );
        make_removable(&dest);
    }
    make_removable(&src);
}

#[test]
fn update_never_follows_a_symlink_planted_in_the_destination() {
    let s = Scratch::new();
    let m = Manifest::from_entries(vec![
        dir("", 0o755),
        dir("etc", 0o755),
        file(&s, "etc/hostname", b"one\n", 0o644),
    ])
    .unwrap();
    let mut m2 = m.clone();
    m2.insert_or_replace(file(&s, "etc/hostname", b"two\n", 0o644))
        .unwrap();
    m2.insert_or_replace(file(&s, "etc/motd", b"hi\n", 0o644))
        .unwrap();

    let dest = s.path("dest");
    s.store
        .checkout(&m, &dest, opts(CheckoutMode::Copy))
        .unwrap();
    let outside = s.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("hostname"), "outside\n").unwrap();
    fs::rename(dest.join("etc"), s.path("moved-etc")).unwrap();
    symlink(&outside, dest.join("etc")).unwrap();

    let err = s
        .store
        .update_checkout(&m, &m2, &dest, opts(CheckoutMode::Copy))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
    assert_eq!(fs::read(outside.join("hostname")).unwrap(), b"outside\n");
    assert!(!outside.join("motd").exists());

    // The destination itself must not be a symlink either.
    let link = s.path("link");
    symlink(s.path("moved-etc"), &link).unwrap();
    let err = s
        .store
        .update_checkout(&m, &m2, &link, opts(CheckoutMode::Copy))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
}
