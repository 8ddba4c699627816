//! Ingest and checkout against the real filesystem. None of these needs
//! root: files keep the owner of whoever runs the tests.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::time::Instant;

use common::{Scratch, make_removable, sample_tree};
use kiln_cache::{
    CheckoutMode, CheckoutOptions, EntryKind, IngestOptions, Manifest, PutMode, StoreError,
};

fn ingest(s: &Scratch, dir: &Path) -> Manifest {
    s.store.ingest_dir(dir, IngestOptions::default()).unwrap()
}

fn checkout(s: &Scratch, m: &Manifest, dest: &Path, mode: CheckoutMode) {
    let opts = CheckoutOptions {
        mode,
        ..CheckoutOptions::default()
    };
    s.store.checkout(m, dest, opts).unwrap();
}

#[test]
fn ingest_records_every_kind_of_entry() {
    let s = Scratch::new();
    let src = s.path("src");
    let xattrs = sample_tree(&src);
    let m = ingest(&s, &src);
    let get = |p: &str| m.get(p).unwrap_or_else(|| panic!("{p} missing"));

    assert_eq!(m.root().unwrap().kind, EntryKind::Dir);
    let hostname = get("etc/hostname");
    let blob = *hostname.blob().unwrap();
    assert_eq!(s.store.read_blob(&blob).unwrap(), b"rescue\n");
    assert_eq!(hostname.kind, EntryKind::File { blob, size: 7 });
    assert_eq!(get("usr/bin/sudo").mode, 0o4755);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(get("srv/shared").mode, 0o2775);
    assert_eq!(get("srv/readonly").mode, 0o555);
    assert_eq!(get("tmp/fifo").kind, EntryKind::Fifo);
    assert_eq!(
        get("etc/abs-link").kind,
        EntryKind::Symlink {
            target: "/etc/passwd".to_owned()
        }
    );
    assert_eq!(
        get("bin").kind,
        EntryKind::Symlink {
            target: "usr/bin".to_owned()
        }
    );
    // The symlink to a directory was not followed.
    assert!(m.get("bin/sudo").is_none());
    let group = get("usr/bin/git").hardlink;
    assert!(group.is_some());
    assert_eq!(get("usr/bin/git-upload-pack").hardlink, group);
    assert_eq!(get("usr/lib/git-core").hardlink, group);
    assert_eq!(get("usr/bin/tool").hardlink, None);
    assert_eq!(
        get("usr/lib/big.so").kind,
        EntryKind::File {
            blob: *get("usr/lib/big.so").blob().unwrap(),
            size: (3 << 20) + 5,
        }
    );
    if xattrs {
        assert_eq!(hostname.xattrs["user.kiln.test"], b"value\0bin");
        assert_eq!(get("srv/shared").xattrs["user.kiln.dir"], b"d");
    }
    // Copy leaves the source as it was.
    assert_eq!(fs::read(src.join("etc/hostname")).unwrap(), b"rescue\n");

    // Ingesting again gives the same tree; the owner override changes it.
    assert_eq!(ingest(&s, &src).id(), m.id());
    let owned = s
        .store
        .ingest_dir(
            &src,
            IngestOptions {
                owner: Some((4321, 8765)),
                ..IngestOptions::default()
            },
        )
        .unwrap();
    assert!(owned.entries().all(|e| (e.uid, e.gid) == (4321, 8765)));
    make_removable(&src);
}

#[test]
fn checkout_in_both_modes_reproduces_the_tree() {
    let s = Scratch::new();
    let src = s.path("src");
    sample_tree(&src);
    let m = ingest(&s, &src);
    let id = s.store.put_manifest(&m).unwrap();
    let m = s.store.manifest(&id).unwrap();

    for mode in [CheckoutMode::Hardlink, CheckoutMode::Copy] {
        let dest = s.path(&format!("out-{mode:?}"));
        checkout(&s, &m, &dest, mode);
        let again = ingest(&s, &dest);
        let diff: Vec<String> = m.diff(&again).iter().map(|c| c.to_string()).collect();
        assert_eq!(again.id(), id, "{mode:?} checkout differs: {diff:?}");

        // The group is one inode of its own; other files in hardlink mode
        // are the store's objects.
        let git = fs::metadata(dest.join("usr/bin/git")).unwrap();
        assert_eq!(
            git.ino(),
            fs::metadata(dest.join("usr/lib/git-core")).unwrap().ino()
        );
        assert_eq!(git.nlink(), 3);
        let tool = fs::metadata(dest.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.nlink() > 1, mode == CheckoutMode::Hardlink, "{mode:?}");
        assert_eq!(
            fs::read_link(dest.join("etc/abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read(dest.join("usr/lib/big.so")).unwrap(),
            fs::read(src.join("usr/lib/big.so")).unwrap()
        );
        make_removable(&dest);
    }
    make_removable(&src);
}

#[test]
fn copy_checkout_is_private_and_hardlink_checkout_shares() {
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), "same").unwrap();
    fs::write(src.join("b"), "same").unwrap();
    let m = ingest(&s, &src);
    let linked = s.path("linked");
    checkout(&s, &m, &linked, CheckoutMode::Hardlink);
    // Equal files share the store object, yet are not recorded as a group.
    assert_eq!(
        fs::metadata(linked.join("a")).unwrap().ino(),
        fs::metadata(linked.join("b")).unwrap().ino()
    );
    assert_eq!(ingest(&s, &linked).id(), m.id());

    let copied = s.path("copied");
    checkout(&s, &m, &copied, CheckoutMode::Copy);
    fs::write(copied.join("a"), "changed").unwrap();
    assert_eq!(
        s.store
            .read_blob(m.get("a").unwrap().blob().unwrap())
            .unwrap(),
        b"same"
    );
}

#[test]
fn checkout_clamps_every_mtime() {
    let s = Scratch::new();
    let src = s.path("src");
    sample_tree(&src);
    let m = ingest(&s, &src);
    for mode in [CheckoutMode::Copy, CheckoutMode::Hardlink] {
        let dest = s.path(&format!("out-{mode:?}"));
        let opts = CheckoutOptions {
            mode,
            mtime: Some(1_700_000_000),
            ignore_owner: false,
        };
        s.store.checkout(&m, &dest, opts).unwrap();
        for entry in walkdir::WalkDir::new(&dest) {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            assert_eq!(meta.mtime(), 1_700_000_000, "{}", entry.path().display());
        }
        make_removable(&dest);
    }
    make_removable(&src);
}

#[test]
fn move_ingest_consumes_files_and_gives_the_same_tree() {
    let s = Scratch::new();
    let (a, b) = (s.path("a"), s.path("b"));
    sample_tree(&a);
    sample_tree(&b);
    let copied = ingest(&s, &a);
    common::chmod(&b.join("srv/readonly"), 0o755);
    let moved_manifest = s
        .store
        .ingest_dir(
            &b,
            IngestOptions {
                mode: PutMode::Move,
                owner: None,
            },
        )
        .unwrap();
    // The read-only dir was made writable to allow the move: put its mode back.
    let mut moved_manifest = moved_manifest;
    let mut ro = moved_manifest.get("srv/readonly").unwrap().clone();
    ro.mode = 0o555;
    moved_manifest.insert_or_replace(ro).unwrap();
    assert_eq!(moved_manifest.id(), copied.id());
    assert!(!b.join("etc/hostname").exists());
    assert!(!b.join("usr/lib/big.so").exists());
    // Non-files stay for the caller to remove.
    assert!(b.join("etc").is_dir());
    assert!(fs::symlink_metadata(b.join("bin")).unwrap().is_symlink());
    for entry in moved_manifest.entries() {
        if let Some(blob) = entry.blob() {
            assert!(s.store.has_blob(blob), "{}", entry.path);
        }
    }
    make_removable(&a);
}

#[test]
fn checkout_refuses_a_non_empty_destination() {
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let m = ingest(&s, &src);
    let dest = s.path("dest");
    fs::create_dir(&dest).unwrap();
    // A symlink planted in the destination could redirect writes.
    symlink("/", dest.join("f")).unwrap();
    let err = s
        .store
        .checkout(&m, &dest, CheckoutOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DestinationNotEmpty { .. }),
        "{err}"
    );
    let file = s.path("file");
    fs::write(&file, "").unwrap();
    let err = s
        .store
        .checkout(&m, &file, CheckoutOptions::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
}

#[test]
fn manifests_that_would_escape_cannot_be_built() {
    use kiln_cache::{Entry, ManifestError};
    let root = Entry::new("", EntryKind::Dir, 0o755);
    let link = Entry::new(
        "escape",
        EntryKind::Symlink {
            target: "/tmp".to_owned(),
        },
        0o777,
    );
    let file = |path: &str| Entry::new(path, EntryKind::Fifo, 0o644);
    for path in ["../x", "/abs", "a/../../x"] {
        let err = Manifest::from_entries(vec![root.clone(), file(path)]).unwrap_err();
        assert!(
            matches!(err, ManifestError::InvalidPath { .. }),
            "{path}: {err}"
        );
    }
    let err =
        Manifest::from_entries(vec![root.clone(), link.clone(), file("escape/x")]).unwrap_err();
    assert!(matches!(err, ManifestError::ParentNotDir { .. }), "{err}");
    let mut m = Manifest::from_entries(vec![root, link]).unwrap();
    assert!(m.insert_or_replace(file("escape/x")).is_err());
}

#[test]
fn hardlink_checkout_of_5000_files_is_fast() {
    use kiln_cache::Entry;
    let s = Scratch::new();
    // 500 distinct contents over 5000 files in 50 directories.
    let blobs: Vec<_> = (0..500)
        .map(|i| {
            let content = format!("content {i}");
            let blob = s.store.put_bytes(content.as_bytes()).unwrap();
            (blob, content.len() as u64)
        })
        .collect();
    let mut entries = vec![Entry::new("", EntryKind::Dir, 0o755)];
    for d in 0..50 {
        entries.push(Entry::new(format!("d{d:02}"), EntryKind::Dir, 0o755));
        for f in 0..100 {
            let (blob, size) = blobs[(d * 100 + f) % blobs.len()];
            let kind = EntryKind::File { blob, size };
            entries.push(Entry::new(format!("d{d:02}/f{f:03}"), kind, 0o644));
        }
    }
    let m = Manifest::from_entries(entries).unwrap();
    assert_eq!(m.len(), 5051);
    // Owned by root in the manifest: keep one's own owner without root.
    let opts = CheckoutOptions {
        ignore_owner: true,
        ..CheckoutOptions::default()
    };
    // The first checkout makes the metadata variants (0644 files).
    s.store.checkout(&m, &s.path("warm"), opts).unwrap();
    let start = Instant::now();
    s.store.checkout(&m, &s.path("dest"), opts).unwrap();
    let elapsed = start.elapsed();
    eprintln!("hardlink checkout of 5000 files: {elapsed:?}");
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");
    assert_eq!(fs::read(s.path("dest/d49/f099")).unwrap(), b"content 499");
}
