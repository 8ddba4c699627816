//! `verify` and `gc` on real stores. None of these needs root.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Scratch;
use kiln_cache::{
    ActionResult, CheckoutMode, CheckoutOptions, Digest, Entry, EntryKind, GcPolicy, Manifest,
    OutputKind, RecordedInput, RunStatus, StageRun, Store, StoreError, TreeId,
};

/// Stores a tree of one file and returns its id and the file's blob.
fn small_tree(store: &Store, content: &str, mode: u32) -> (TreeId, Digest) {
    let blob = store.put_bytes(content.as_bytes()).unwrap();
    let m = Manifest::from_entries(vec![
        Entry::new("", EntryKind::Dir, 0o755),
        Entry::new(
            "file",
            EntryKind::File {
                blob,
                size: content.len() as u64,
            },
            mode,
        ),
    ])
    .unwrap();
    (store.put_manifest(&m).unwrap(), blob)
}

fn run(stage: &str, output: Digest, kind: OutputKind, inputs: &[Digest]) -> StageRun {
    StageRun {
        notes: Vec::new(),
        stage: stage.to_owned(),
        kind: "test".to_owned(),
        key: Digest::of_bytes(format!("{stage}{output}").as_bytes()),
        status: RunStatus::Ran,
        output_changed: true,
        duration: Duration::from_millis(5),
        output: ActionResult { output, kind },
        inputs: inputs
            .iter()
            .enumerate()
            .map(|(i, digest)| RecordedInput {
                name: format!("in{i}"),
                kind: "tree".to_owned(),
                digest: *digest,
                value: None,
            })
            .collect(),
    }
}

/// Records a finished build with the given runs, each also in the action cache.
fn record_build(store: &Store, recipe: &str, runs: &[StageRun]) {
    let index = store.index().unwrap();
    let build = index
        .begin_build(recipe, Path::new("/recipes"), std::time::SystemTime::now())
        .unwrap();
    for r in runs {
        index.record_action(&r.key, r.output).unwrap();
        index.record_run(build, r).unwrap();
    }
    index.finish_build(build, true).unwrap();
}

fn overwrite(path: &Path, content: &[u8]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(path, content).unwrap();
}

fn variant_files(store_root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(store_root.join("v1/variants"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn verify_removes_a_corrupt_blob_and_the_actions_that_need_it() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, blob) = small_tree(store, "precious", 0o644);
    // Executable: its checkout links a variant.
    let (other_tree, _) = small_tree(store, "fine", 0o755);
    let uki = store.put_bytes(b"uki").unwrap();
    let runs = [
        run("rootfs", tree, OutputKind::Tree, &[]),
        run("blob", blob, OutputKind::Blob, &[]),
        run("other", other_tree, OutputKind::Tree, &[]),
        run("uki", uki, OutputKind::Blob, &[]),
    ];
    record_build(store, "r", &runs);
    // A variant for the 0755 file, then corrupt it and a tree too.
    store
        .checkout(
            &store.manifest(&other_tree).unwrap(),
            &s.path("out"),
            CheckoutOptions::default(),
        )
        .unwrap();
    assert!(store.verify().unwrap().is_clean());

    overwrite(&store.blob_path(&blob).unwrap(), b"tampered");
    let bogus_tree_path = store.tree_path(&Digest::of_bytes(b"bogus"));
    fs::create_dir_all(bogus_tree_path.parent().unwrap()).unwrap();
    fs::write(&bogus_tree_path, b"not a manifest").unwrap();
    let report = store.verify().unwrap();
    eprintln!("{report}");
    assert!(!report.is_clean());
    assert_eq!(report.blobs_checked, 3);
    assert_eq!(report.trees_checked, 3);
    assert_eq!(report.variants_checked, 1);
    let mut removed = report.removed.clone();
    removed.sort();
    let mut want = vec![store.blob_path(&blob).unwrap(), bogus_tree_path];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(report.incomplete_trees, vec![tree]);
    let mut dropped = report.actions_removed.clone();
    dropped.sort();
    let mut want = vec![runs[0].key, runs[1].key];
    want.sort();
    assert_eq!(dropped, want);
    assert!(!store.has_blob(&blob));

    let index = store.index().unwrap();
    assert_eq!(index.lookup_action(&runs[0].key).unwrap(), None);
    assert_eq!(
        index.lookup_action(&runs[2].key).unwrap(),
        Some(runs[2].output)
    );
    assert_eq!(
        index.lookup_action(&runs[3].key).unwrap(),
        Some(runs[3].output)
    );

    // A variant whose content or metadata changed is corrupt too.
    let variants = variant_files(store.root());
    assert!(!variants.is_empty());
    fs::set_permissions(&variants[0], fs::Permissions::from_mode(0o777)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.removed, vec![variants[0].clone()]);

    // A plain blob whose mode was changed is repaired, not removed.
    let mode_changed = store.blob_path(&uki).unwrap();
    fs::set_permissions(&mode_changed, fs::Permissions::from_mode(0o444)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.repaired, vec![mode_changed.clone()]);
    assert_eq!(
        fs::metadata(&mode_changed).unwrap().permissions().mode() & 0o7777,
        kiln_cache::OBJECT_MODE
    );
}

#[test]
fn gc_keeps_what_the_last_builds_use() {
    let s = Scratch::new();
    let store = &s.store;
    let (old_tree, old_blob) = small_tree(store, "old", 0o755);
    let (input_tree, input_blob) = small_tree(store, "input", 0o750);
    let (new_tree, new_blob) = small_tree(store, "new", 0o755);
    let old_uki = store.put_bytes(b"old uki").unwrap();
    let new_uki = store.put_bytes(b"new uki").unwrap();
    let stray = store.put_bytes(b"never referenced").unwrap();
    let other_recipe_uki = store.put_bytes(b"other recipe").unwrap();
    for tree in [old_tree, new_tree, input_tree] {
        let dest = s.path(&format!("co-{}", tree.short()));
        store
            .checkout(
                &store.manifest(&tree).unwrap(),
                &dest,
                CheckoutOptions::default(),
            )
            .unwrap();
    }
    assert_eq!(variant_files(store.root()).len(), 3);

    let old_runs = [
        run("rootfs", old_tree, OutputKind::Tree, &[]),
        run("uki", old_uki, OutputKind::Blob, &[old_tree]),
    ];
    let new_runs = [
        run("rootfs", new_tree, OutputKind::Tree, &[input_tree]),
        run(
            "uki",
            new_uki,
            OutputKind::Blob,
            &[new_tree, Digest::of_bytes(b"env")],
        ),
    ];
    record_build(store, "rescue", &old_runs);
    record_build(store, "rescue", &new_runs);
    record_build(
        store,
        "other",
        &[run("uki", other_recipe_uki, OutputKind::Blob, &[])],
    );

    // Another user of the store blocks gc.
    let other = Store::open(store.root()).unwrap();
    let policy = GcPolicy {
        keep_builds_per_recipe: 1,
        max_bytes: None,
        lock_timeout: Duration::from_millis(100),
        drop_package_files: false,
    };
    let err = store.gc(policy).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(other);

    let report = store.gc(policy).unwrap();
    eprintln!("{report}");
    assert_eq!(report.builds_removed, 1);
    assert_eq!(report.builds_kept, 2);
    assert_eq!(report.trees_removed, 1);
    assert_eq!(report.blobs_removed, 3, "old blob, old uki, stray");
    assert_eq!(report.variants_removed, 1);
    assert_eq!(report.actions_removed, 2);
    for kept in [new_blob, input_blob, new_uki, other_recipe_uki] {
        assert!(store.has_blob(&kept));
    }
    for gone in [old_blob, old_uki, stray] {
        assert!(!store.has_blob(&gone));
    }
    assert!(store.has_tree(&new_tree) && store.has_tree(&input_tree));
    assert!(!store.has_tree(&old_tree));
    assert_eq!(variant_files(store.root()).len(), 2);

    let index = store.index().unwrap();
    assert_eq!(index.builds(Some("rescue")).unwrap().len(), 1);
    assert_eq!(index.lookup_action(&old_runs[0].key).unwrap(), None);
    assert_eq!(
        index.lookup_action(&new_runs[1].key).unwrap(),
        Some(new_runs[1].output)
    );
    // The store still works after gc: the shared lock is back.
    store.put_bytes(b"after gc").unwrap();
    assert!(store.verify().unwrap().is_clean());
    let stats = store.stats().unwrap();
    assert_eq!((stats.builds, stats.trees, stats.actions), (2, 2, 3));
}

#[test]
fn gc_drops_oldest_builds_to_fit_max_bytes() {
    let s = Scratch::new();
    let store = &s.store;
    let big = |n: u8| store.put_bytes(&vec![n; 100_000]).unwrap();
    let (a, b, c) = (big(1), big(2), big(3));
    for (i, blob) in [a, b, c].into_iter().enumerate() {
        record_build(
            store,
            "r",
            &[run(&format!("s{i}"), blob, OutputKind::Blob, &[])],
        );
    }
    let policy = GcPolicy {
        keep_builds_per_recipe: 10,
        max_bytes: Some(250_000),
        lock_timeout: Duration::from_secs(1),
        drop_package_files: false,
    };
    let report = store.gc(policy).unwrap();
    assert_eq!(report.builds_removed, 1);
    // What is kept is then frozen: 100,000 equal bytes compress to a few.
    assert_eq!(report.blobs_frozen, 2);
    assert!(report.bytes_kept < 1_000, "{report}");
    assert!(!store.has_blob(&a));
    assert!(store.has_blob(&b) && store.has_blob(&c));
}

#[test]
fn gc_keeps_the_last_successful_build() {
    let s = Scratch::new();
    let store = &s.store;
    let good = store.put_bytes(b"good").unwrap();
    let failed_output = store.put_bytes(b"partial").unwrap();
    record_build(store, "r", &[run("uki", good, OutputKind::Blob, &[])]);
    let index = store.index().unwrap();
    let failed = index
        .begin_build("r", Path::new("/r"), std::time::SystemTime::now())
        .unwrap();
    index
        .record_run(failed, &run("rootfs", failed_output, OutputKind::Blob, &[]))
        .unwrap();
    index.finish_build(failed, false).unwrap();
    let report = store
        .gc(GcPolicy {
            keep_builds_per_recipe: 1,
            ..GcPolicy::default()
        })
        .unwrap();
    assert_eq!(report.builds_removed, 0);
    assert!(store.has_blob(&good) && store.has_blob(&failed_output));
}

#[test]
fn stats_count_objects() {
    let s = Scratch::new();
    let store = &s.store;
    // An executable: not the plain objects' mode, so the checkout makes a variant.
    let (tree, _) = small_tree(store, "x", 0o755);
    store
        .checkout(
            &store.manifest(&tree).unwrap(),
            &s.path("out"),
            CheckoutOptions {
                mode: CheckoutMode::Hardlink,
                ..CheckoutOptions::default()
            },
        )
        .unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.blobs, stats.trees, stats.variants), (1, 1, 1));
    assert_eq!(stats.blob_bytes, 1);
    let text = stats.to_string();
    assert!(
        text.contains("blobs") && text.contains("variants"),
        "{text}"
    );
}

/// `du -sb`'s count of `path`: apparent sizes, each inode once.
fn du_sb(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn stats_count_everything_in_the_store_as_du_does() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, _) = small_tree(store, "some content", 0o755);
    let (plain, _) = small_tree(store, "plain content", 0o644);
    record_build(store, "r", &[run("rootfs", tree, OutputKind::Tree, &[])]);
    // Hardlink checkouts where shared ones live (as the user running the test).
    for (id, name) in [(tree, "a"), (plain, "b")] {
        let options = CheckoutOptions {
            mode: CheckoutMode::Hardlink,
            ignore_owner: true,
            ..CheckoutOptions::default()
        };
        let dest = s.path("cache/v1/checkouts").join(name);
        store
            .checkout(&store.manifest(&id).unwrap(), &dest, options)
            .unwrap();
    }
    // What the packages stage keeps: a package file, linked into a temp folder
    // as a build's snapshot does, and a state folder.
    let packages = s.path("cache/v1/packages");
    fs::create_dir_all(packages.join("debs")).unwrap();
    fs::create_dir_all(packages.join("apt/0123/root")).unwrap();
    fs::write(packages.join("debs/a_1_amd64.deb"), vec![7u8; 50_000]).unwrap();
    fs::write(packages.join("apt/0123/root/lists"), vec![1u8; 3_000]).unwrap();
    let snapshot = s.path("cache/v1/tmp/1-snapshot.tmp");
    fs::create_dir_all(&snapshot).unwrap();
    fs::hard_link(packages.join("debs/a_1_amd64.deb"), snapshot.join("a.deb")).unwrap();

    let stats = store.stats().unwrap();
    assert_eq!(stats.total_bytes(), du_sb(&s.path("cache")), "{stats}");
    assert!(stats.package_bytes >= 53_000, "{stats}");
    assert!(
        stats.temp_bytes < 50_000,
        "the linked package counts once: {stats}"
    );
    assert!(stats.index_bytes > 0 && stats.checkout_bytes > 0, "{stats}");
    assert_eq!(stats.blob_bytes, 25);
    assert!(stats.to_string().contains("packages"), "{stats}");
}

/// Sets the modification time of `path` to `seconds_ago` before now.
fn age(path: &Path, seconds_ago: u64) {
    let file = fs::File::open(path).unwrap();
    let when = std::time::SystemTime::now() - Duration::from_secs(seconds_ago);
    file.set_modified(when).unwrap();
}

#[test]
fn gc_removes_package_files_and_states_no_kept_build_used() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, _) = small_tree(store, "x", 0o644);
    let packages = s.path("cache/v1/packages");
    for dir in ["debs", "apt/old/root", "apt/used/root"] {
        fs::create_dir_all(packages.join(dir)).unwrap();
    }
    for file in [
        "debs/old.deb",
        "debs/used.deb",
        "apt/old/root/l",
        "apt/used/root/l",
    ] {
        fs::write(packages.join(file), b"package data").unwrap();
    }
    // Used before the kept build started: only by builds gc drops.
    age(&packages.join("debs/old.deb"), 3600);
    age(&packages.join("apt/old"), 3600);
    record_build(store, "r", &[run("rootfs", tree, OutputKind::Tree, &[])]);
    // Used by the kept build, as the packages stage marks what it uses.
    age(&packages.join("debs/used.deb"), 0);
    age(&packages.join("apt/used"), 0);
    let report = store.gc(GcPolicy::default()).unwrap();
    assert_eq!(report.packages_removed, 2, "{report}");
    assert!(report.bytes_freed >= 24, "{report}");
    assert!(!packages.join("debs/old.deb").exists());
    assert!(!packages.join("apt/old").exists());
    assert!(packages.join("debs/used.deb").exists());
    assert!(packages.join("apt/used/root/l").exists());

    // Asked to, gc drops every package file, and still keeps the states kept builds used.
    let report = store
        .gc(GcPolicy {
            drop_package_files: true,
            ..GcPolicy::default()
        })
        .unwrap();
    assert_eq!(report.packages_removed, 1, "{report}");
    assert!(!packages.join("debs/used.deb").exists());
    assert!(packages.join("apt/used/root/l").exists());

    // With no build to keep, nothing of it is kept.
    let empty = Scratch::new();
    let debs = empty.path("cache/v1/packages/debs");
    fs::create_dir_all(&debs).unwrap();
    fs::write(debs.join("fresh.deb"), b"package data").unwrap();
    let report = empty.store.gc(GcPolicy::default()).unwrap();
    assert_eq!(report.packages_removed, 1, "{report}");
    assert!(fs::read_dir(&debs).unwrap().next().is_none());
}

#[test]
fn lost_page_cache_leaves_no_record_pointing_at_a_missing_object() {
    let s = Scratch::new();
    let store = &s.store;
    // The seam has teeth: objects written and not flushed are lost with it.
    let (lost, lost_blob) = small_tree(store, "never flushed", 0o644);
    assert_eq!(store.lose_unsynced_objects(), 2);
    assert!(!store.has_tree(&lost) && !store.has_blob(&lost_blob));

    // Recording flushes first: losing what is unflushed just before each
    // record takes nothing a record names.
    store.lose_unsynced_before_records(true);
    let (tree, blob) = small_tree(store, "flushed before its record", 0o644);
    let (other, _) = small_tree(store, "a second stage", 0o755);
    record_build(
        store,
        "r",
        &[
            run("rootfs", tree, OutputKind::Tree, &[]),
            run("finalize", other, OutputKind::Tree, &[tree]),
        ],
    );
    assert!(store.has_tree(&tree) && store.has_blob(&blob));
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(store.make_durable().unwrap(), 0, "nothing left to flush");
}

/// A blob's plain object file and its frozen file.
fn blob_files(store: &Store, blob: &Digest) -> (PathBuf, PathBuf) {
    let hex = blob.to_hex();
    let plain = store
        .root()
        .join("v1/objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    let frozen = plain.with_file_name(format!("{}.zst", &hex[2..]));
    (plain, frozen)
}

#[test]
fn gc_freezes_blobs_nothing_links_and_a_read_thaws_them() {
    let s = Scratch::new();
    let store = &s.store;
    let text = "a line of a manual page that repeats\n".repeat(2000);
    let (tree, compressible) = small_tree(store, &text, 0o644);
    let mut noise = vec![0u8; 64 * 1024];
    blake3::Hasher::new()
        .update(b"noise")
        .finalize_xof()
        .fill(&mut noise);
    let incompressible = store.put_bytes(&noise).unwrap();
    let one_block = store.put_bytes(&text.as_bytes()[..3000]).unwrap();
    let (linked_tree, linked) = small_tree(store, &text.replace("page", "note"), 0o644);
    let hardlinks = CheckoutOptions {
        mode: CheckoutMode::Hardlink,
        ..CheckoutOptions::default()
    };
    let out = s.path("linked");
    let linked_manifest = store.manifest(&linked_tree).unwrap();
    store.checkout(&linked_manifest, &out, hardlinks).unwrap();
    let runs = [
        run("rootfs", tree, OutputKind::Tree, &[linked_tree]),
        run("uki", incompressible, OutputKind::Blob, &[]),
        run("os-release", one_block, OutputKind::Blob, &[]),
    ];
    record_build(store, "rescue", &runs);

    let report = store.gc(GcPolicy::default()).unwrap();
    assert_eq!(report.blobs_frozen, 1, "{report}");
    assert_eq!(report.blobs_removed, 0, "{report}");
    let (plain, frozen) = blob_files(store, &compressible);
    assert!(!plain.exists() && frozen.exists());
    assert!(fs::metadata(&frozen).unwrap().len() < 4096);
    for stays_plain in [incompressible, one_block, linked] {
        let (plain, frozen) = blob_files(store, &stays_plain);
        assert!(plain.exists() && !frozen.exists(), "{stays_plain}");
    }
    assert!(store.has_blob(&compressible));
    let stats = store.stats().unwrap();
    assert_eq!((stats.blobs, stats.frozen_blobs), (4, 1));
    assert!(store.verify().unwrap().is_clean());

    // A read thaws it, checked against its name; the frozen file waits for gc.
    assert_eq!(store.read_blob(&compressible).unwrap(), text.as_bytes());
    assert!(plain.exists() && frozen.exists());
    assert_eq!(store.stats().unwrap().blobs, 4);
    store.gc(GcPolicy::default()).unwrap();
    assert!(
        !plain.exists() && frozen.exists(),
        "nothing links it: frozen again"
    );
    // A checkout links it: gc keeps the plain form and drops the frozen one.
    let manifest = store.manifest(&tree).unwrap();
    store.checkout(&manifest, &s.path("co"), hardlinks).unwrap();
    assert_eq!(fs::read(s.path("co/file")).unwrap(), text.as_bytes());
    store.gc(GcPolicy::default()).unwrap();
    assert!(plain.exists() && !frozen.exists());
    fs::remove_dir_all(s.path("co")).unwrap();
    store.gc(GcPolicy::default()).unwrap();
    assert!(!plain.exists() && frozen.exists());

    // A damaged frozen file is found, named and removed, on read and by verify.
    let good = fs::read(&frozen).unwrap();
    overwrite(&frozen, b"not zstd at all");
    let error = store.read_blob(&compressible).unwrap_err();
    assert!(
        matches!(&error, StoreError::CorruptBlob { path, .. } if *path == frozen),
        "{error:?}"
    );
    assert!(!frozen.exists() && !plain.exists());
    assert_eq!(store.take_damaged(), vec![compressible]);
    let mut flipped = good;
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    fs::write(&frozen, flipped).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.removed, vec![frozen.clone()]);
    assert!(!store.has_blob(&compressible));
}

#[test]
fn a_blob_made_from_a_larger_blob_is_frozen_as_a_difference_from_it() {
    let s = Scratch::new();
    let store = &s.store;
    // An initrd (compressed: incompressible) and a UKI that holds it.
    let mut initrd = vec![0u8; 512 * 1024];
    blake3::Hasher::new()
        .update(b"initrd")
        .finalize_xof()
        .fill(&mut initrd);
    let mut uki_bytes = b"MZ stub and sections\n".repeat(100);
    uki_bytes.extend_from_slice(&initrd);
    uki_bytes.extend_from_slice(b".cmdline console=ttyS0\n");
    let initrd_blob = store.put_bytes(&initrd).unwrap();
    let uki = store.put_bytes(&uki_bytes).unwrap();
    record_build(
        store,
        "rescue",
        &[
            run("initrd", initrd_blob, OutputKind::Blob, &[]),
            run("uki", uki, OutputKind::Blob, &[initrd_blob]),
        ],
    );
    let report = store.gc(GcPolicy::default()).unwrap();
    assert_eq!(report.blobs_frozen, 1, "{report}");
    let (initrd_plain, _) = blob_files(store, &initrd_blob);
    assert!(initrd_plain.exists(), "an incompressible blob stays plain");
    let (uki_plain, uki_frozen) = blob_files(store, &uki);
    assert!(!uki_plain.exists());
    let frozen_len = fs::metadata(&uki_frozen).unwrap().len();
    assert!(frozen_len < 8 * 1024, "{frozen_len} bytes");
    assert!(store.verify().unwrap().is_clean());

    // A later build keeps only the UKI: gc keeps what it is decoded with.
    record_build(store, "rescue", &[run("sign", uki, OutputKind::Blob, &[])]);
    let policy = GcPolicy {
        keep_builds_per_recipe: 1,
        ..GcPolicy::default()
    };
    let report = store.gc(policy).unwrap();
    assert_eq!(report.builds_removed, 1, "{report}");
    assert!(initrd_plain.exists(), "the reference went: {report}");
    assert_eq!(store.read_blob(&uki).unwrap(), uki_bytes);

    // Without its reference the difference cannot be decoded: a corrupt blob.
    store.gc(policy).unwrap();
    assert!(!uki_plain.exists());
    fs::remove_file(&initrd_plain).unwrap();
    let error = store.read_blob(&uki).unwrap_err();
    assert!(
        matches!(&error, StoreError::CorruptBlob { path, .. } if *path == uki_frozen),
        "{error:?}"
    );
}

#[test]
fn an_anchored_cache_entry_lives_as_long_as_its_anchor() {
    let s = Scratch::new();
    let store = &s.store;
    let initrd = store.put_bytes(b"an initrd").unwrap();
    let location = store.put_bytes(b"segment 1 of the initrd").unwrap();
    let key = Digest::of_bytes(b"segment key");
    let result = ActionResult {
        output: location,
        kind: OutputKind::Blob,
    };
    let index = store.index().unwrap();
    index.record_anchored_action(&key, result, &initrd).unwrap();
    record_build(store, "r", &[run("initrd", initrd, OutputKind::Blob, &[])]);
    let report = store.gc(GcPolicy::default()).unwrap();
    assert_eq!((report.actions_removed, report.blobs_removed), (0, 0));
    assert_eq!(index.lookup_action(&key).unwrap(), Some(result));
    assert!(store.has_blob(&location));

    // The next build makes another initrd: once the first goes, so does its entry.
    let other = store.put_bytes(b"another initrd").unwrap();
    record_build(store, "r", &[run("initrd", other, OutputKind::Blob, &[])]);
    let policy = GcPolicy {
        keep_builds_per_recipe: 1,
        ..GcPolicy::default()
    };
    store.gc(policy).unwrap();
    assert_eq!(index.lookup_action(&key).unwrap(), None);
    assert!(!store.has_blob(&initrd) && !store.has_blob(&location));
}

// ------------------------------------------------------------------------------------------
// Damage a build could read without hashing it: what verify drops, what the store refuses.

/// Writes `content` into the object at `path` in place: the same inode, so every hard link of
/// it (a shared checkout) sees the change.
fn write_in_place(path: &Path, content: &[u8]) {
    use std::io::Write;
    let before = std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(content).unwrap();
    drop(file);
    let after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    assert_eq!(before, after);
}

#[test]
fn verify_drops_the_actions_made_from_a_removed_blob() {
    let s = Scratch::new();
    let store = &s.store;
    // `rootfs` made a tree holding `blob`; `script` read it and made a tree of its own, which
    // does not hold `blob` but may carry what the script read of it.
    let (rootfs, blob) = small_tree(store, "NAME=tiny\n", 0o644);
    let (scripted, _) = small_tree(store, "PRETTY_NAME=tiny\n", 0o644);
    let (unrelated, _) = small_tree(store, "unrelated\n", 0o644);
    let runs = [
        run("rootfs", rootfs, OutputKind::Tree, &[]),
        run("script", scripted, OutputKind::Tree, &[rootfs]),
        run("other", unrelated, OutputKind::Tree, &[scripted]),
        run("file", blob, OutputKind::Blob, &[]),
        run("reads-file", unrelated, OutputKind::Tree, &[blob]),
    ];
    record_build(store, "r", &runs);
    assert!(store.verify().unwrap().is_clean());

    let object = store.blob_path(&blob).unwrap();
    write_in_place(&object, b"NAME=CANARY\n");
    let report = store.verify().unwrap();
    eprintln!("{report}");
    assert_eq!(report.removed, vec![object]);
    let mut dropped = report.actions_removed.clone();
    dropped.sort();
    let mut want = vec![runs[0].key, runs[1].key, runs[3].key, runs[4].key];
    want.sort();
    assert_eq!(dropped, want, "every action made from the damaged blob");
    let index = store.index().unwrap();
    assert_eq!(index.lookup_action(&runs[1].key).unwrap(), None);
    // What the script made is sound: a stage reading it keeps its entry.
    assert_eq!(
        index.lookup_action(&runs[2].key).unwrap(),
        Some(runs[2].output)
    );
}

#[test]
fn a_blob_changed_in_place_is_found_before_its_shared_checkout_is_used_again() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, blob) = small_tree(store, "NAME=tiny\n", 0o644);
    let checkout = store.shared_checkout(&tree).unwrap();
    let object = store.blob_path(&blob).unwrap();
    assert_eq!(fs::read(checkout.join("file")).unwrap(), b"NAME=tiny\n");

    // Same length, and the modification time set back: only the ctime tells.
    write_in_place(&object, b"NAME=CANA\n");
    let epoch = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &object,
        &epoch,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    assert_eq!(fs::read(checkout.join("file")).unwrap(), b"NAME=CANA\n");

    let error = store.shared_checkout(&tree).unwrap_err();
    assert!(
        matches!(&error, StoreError::CorruptBlob { id, path } if *id == blob && *path == object),
        "{error:?}"
    );
    assert!(!object.exists(), "the changed blob is still there");
    assert!(!checkout.exists(), "the checkout linking it is still there");
    assert_eq!(store.take_damaged(), vec![blob]);
    assert!(store.take_repairs()[0].contains("corrupt blob"));

    // The build forgets it and its stage stores it again: the checkout is sound again.
    store.forget_damaged(&blob).unwrap();
    store.put_bytes(b"NAME=tiny\n").unwrap();
    let checkout = store.shared_checkout(&tree).unwrap();
    assert_eq!(fs::read(checkout.join("file")).unwrap(), b"NAME=tiny\n");
}

#[test]
fn a_file_replaced_in_a_shared_checkout_makes_it_again() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, _) = small_tree(store, "NAME=tiny\n", 0o644);
    let checkout = store.shared_checkout(&tree).unwrap();
    let host = s.path("hostname");
    fs::write(&host, "NAME=tiny\n").unwrap();
    fs::remove_file(checkout.join("file")).unwrap();
    std::os::unix::fs::symlink(&host, checkout.join("file")).unwrap();
    let again = store.shared_checkout(&tree).unwrap();
    assert_eq!(again, checkout);
    assert!(fs::symlink_metadata(again.join("file")).unwrap().is_file());
}

#[test]
fn a_symlink_in_objects_is_not_a_blob() {
    let s = Scratch::new();
    let store = &s.store;
    let (tree, blob) = small_tree(store, "rescue\n", 0o644);
    record_build(store, "r", &[run("rootfs", tree, OutputKind::Tree, &[])]);
    // A host file with the very content of the blob: hashing through the link would pass.
    let host = s.path("etc-hostname");
    fs::write(&host, "rescue\n").unwrap();
    let object = store.blob_path(&blob).unwrap();
    let plant = || {
        let _ = fs::remove_file(&object);
        std::os::unix::fs::symlink(&host, &object).unwrap();
    };

    plant();
    let error = store.blob_path(&blob).unwrap_err();
    assert!(
        matches!(&error, StoreError::NotABlob { id, path, found: "symlink" } if *id == blob && *path == object),
        "{error:?}"
    );
    assert!(error.help().unwrap().contains("build again"), "{error}");
    assert!(
        fs::symlink_metadata(&object).is_err(),
        "the symlink is still there"
    );
    assert_eq!(store.take_damaged(), vec![blob]);
    assert!(!store.has_blob(&blob));

    // A checkout never links it.
    plant();
    let dest = s.path("checkout");
    let manifest = store.manifest(&tree).unwrap();
    let error = store
        .checkout(&manifest, &dest, CheckoutOptions::default())
        .unwrap_err();
    assert!(matches!(error, StoreError::NotABlob { .. }), "{error:?}");
    assert!(fs::symlink_metadata(dest.join("file")).is_err());

    // Storing the content again replaces what is there.
    plant();
    store.put_bytes(b"rescue\n").unwrap();
    assert!(fs::symlink_metadata(&object).unwrap().is_file());

    // Verify removes it, and drops the actions that need it.
    plant();
    let report = store.verify().unwrap();
    eprintln!("{report}");
    assert_eq!(report.removed, vec![object.clone()]);
    assert_eq!(report.actions_removed.len(), 1);
    assert!(fs::symlink_metadata(&object).is_err());
    assert_eq!(
        fs::read(&host).unwrap(),
        b"rescue\n",
        "the host file was touched"
    );

    // A directory in its place is no blob either.
    fs::create_dir(&object).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.removed, vec![object.clone()]);

    // Nor one reached through a symlinked prefix folder.
    store.put_bytes(b"rescue\n").unwrap();
    let prefix = object.parent().unwrap().to_owned();
    let elsewhere = s.path("elsewhere");
    fs::rename(&prefix, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &prefix).unwrap();
    let error = store.blob_path(&blob).unwrap_err();
    assert!(
        matches!(&error, StoreError::NotABlob { path, .. } if *path == prefix),
        "{error:?}"
    );
    assert!(fs::symlink_metadata(&prefix).is_err());
    std::os::unix::fs::symlink(&elsewhere, &prefix).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.removed, vec![prefix.clone()]);
    assert!(fs::symlink_metadata(&prefix).is_err());
}

/// A tree of one file claiming `claimed` bytes for a blob of `content`.
fn lying_tree(store: &Store, content: &[u8], claimed: u64) -> (TreeId, Digest) {
    let blob = store.put_bytes(content).unwrap();
    let m = Manifest::from_entries(vec![
        Entry::new("", EntryKind::Dir, 0o755),
        Entry::new(
            "file",
            EntryKind::File {
                blob,
                size: claimed,
            },
            0o644,
        ),
    ])
    .unwrap();
    (store.put_manifest(&m).unwrap(), blob)
}

#[test]
fn a_tree_claiming_another_length_than_its_blob_is_damage() {
    let s = Scratch::new();
    let store = &s.store;
    let content = b"thirty-three bytes of file data!\n";
    assert_eq!(content.len(), 33);
    let (tree, _) = lying_tree(store, content, 1 << 40);
    let tree_file = store.tree_path(&tree);
    record_build(store, "r", &[run("rootfs", tree, OutputKind::Tree, &[])]);

    // Nothing reads it as if it held 1 TiB.
    let manifest = store.manifest(&tree).unwrap();
    for mode in [CheckoutMode::Hardlink, CheckoutMode::Copy] {
        let dest = s.path(&format!("checkout-{mode:?}"));
        let options = CheckoutOptions {
            mode,
            ..CheckoutOptions::default()
        };
        let error = store.checkout(&manifest, &dest, options).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::WrongLength {
                    claimed: 1_099_511_627_776,
                    actual: 33,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(fs::symlink_metadata(dest.join("file")).is_err());
    }
    let error = store
        .verify_tree_blobs(&tree, manifest.blobs())
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::CorruptTree { id, .. } if *id == tree),
        "{error:?}"
    );
    assert!(!tree_file.exists());
    assert_eq!(store.take_damaged(), vec![tree]);

    // A shared checkout names the tree as damaged.
    let (tree, _) = lying_tree(store, content, 1 << 40);
    let error = store.shared_checkout(&tree).unwrap_err();
    assert!(
        matches!(&error, StoreError::CorruptTree { id, .. } if *id == tree),
        "{error:?}"
    );
    assert!(!tree_file.exists());

    // Verify calls it corrupt and drops the action that made it.
    let (tree, _) = lying_tree(store, content, 1 << 40);
    let report = store.verify().unwrap();
    eprintln!("{report}");
    assert!(!report.is_clean());
    assert_eq!(report.removed, vec![tree_file.clone()]);
    assert_eq!(report.actions_removed.len(), 1);
    assert!(!store.has_tree(&tree));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever length a tree claims, it is read only when it is its blob's.
    #[test]
    fn only_the_true_length_is_accepted(
        content in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        claimed in proptest::prop_oneof![
            proptest::prelude::any::<u64>(),
            0u64..400,
            proptest::prelude::Just(u64::MAX),
        ],
    ) {
        let s = Scratch::new();
        let store = &s.store;
        let truth = content.len() as u64;
        let (tree, _) = lying_tree(store, &content, claimed);
        let manifest = store.manifest(&tree).unwrap();
        let copied = store.checkout(
            &manifest,
            &s.path("copy"),
            CheckoutOptions { mode: CheckoutMode::Copy, ..CheckoutOptions::default() },
        );
        let linked = store.checkout(&manifest, &s.path("link"), CheckoutOptions::default());
        let verified = store.verify_tree_blobs(&tree, manifest.blobs());
        proptest::prop_assert_eq!(copied.is_ok(), claimed == truth);
        proptest::prop_assert_eq!(linked.is_ok(), claimed == truth);
        proptest::prop_assert_eq!(verified.is_ok(), claimed == truth);
        let (tree, _) = lying_tree(store, &content, claimed);
        let report = store.verify().unwrap();
        proptest::prop_assert_eq!(report.is_clean(), claimed == truth);
        proptest::prop_assert_eq!(store.has_tree(&tree), claimed == truth);
    }
}
