//! Tests that need root: other owners, device nodes, `trusted.*` xattrs.
//! Each one says so and is skipped, with a message, when not run as root.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;

use common::{Scratch, chmod, make_removable, sample_tree};
use kiln_cache::{CheckoutMode, CheckoutOptions, Entry, EntryKind, IngestOptions, Manifest};
use rustix::fs::{CWD, FileType, Mode, XattrFlags, makedev, mknodat};

fn is_root() -> bool {
    kiln_test_support::require(module_path!(), &[kiln_test_support::Need::Root])
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

/// The sample tree plus what only root can make.
fn privileged_tree(root: &Path) {
    sample_tree(root);
    fs::create_dir(root.join("dev")).unwrap();
    mknodat(
        CWD,
        root.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("dev/loop0"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        makedev(7, 0),
    )
    .unwrap();
    chmod(&root.join("dev/null"), 0o666);
    lchown(root.join("dev/loop0"), Some(0), Some(6)).unwrap();
    fs::create_dir_all(root.join("home/user")).unwrap();
    fs::write(root.join("home/user/.profile"), "PS1='$ '\n").unwrap();
    lchown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    lchown(root.join("home/user/.profile"), Some(1000), Some(100)).unwrap();
    // chown clears setuid: set the mode afterwards, as a package would.
    fs::write(root.join("usr/bin/newgrp"), "newgrp").unwrap();
    lchown(root.join("usr/bin/newgrp"), Some(0), Some(50)).unwrap();
    chmod(&root.join("usr/bin/newgrp"), 0o6755);
    lchown(root.join("etc/rel-link"), Some(7), Some(8)).unwrap();
    set_xattr(&root.join("usr/bin/tool"), "trusted.kiln", b"t");
    set_xattr(
        &root.join("usr/bin/tool"),
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    // overlayfs bookkeeping is never recorded.
    set_xattr(&root.join("srv/shared"), "trusted.overlay.opaque", b"y");
}

#[test]
fn root_roundtrip_with_owners_devices_and_xattrs() {
    // Needs root: mknod, chown to other users, trusted.* xattrs.
    if !is_root() {
        return;
    }
    let s = Scratch::new();
    let src = s.path("src");
    privileged_tree(&src);
    let m = s.store.ingest_dir(&src, IngestOptions::default()).unwrap();
    let get = |p: &str| m.get(p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(
        get("dev/null").kind,
        EntryKind::CharDev {
            rdev: makedev(1, 3)
        }
    );
    assert_eq!(
        get("dev/loop0").kind,
        EntryKind::BlockDev {
            rdev: makedev(7, 0)
        }
    );
    assert_eq!(get("dev/loop0").gid, 6);
    assert_eq!(
        (get("home/user/.profile").uid, get("home/user/.profile").gid),
        (1000, 100)
    );
    assert_eq!(
        (get("usr/bin/newgrp").mode, get("usr/bin/newgrp").gid),
        (0o6755, 50)
    );
    assert_eq!((get("etc/rel-link").uid, get("etc/rel-link").gid), (7, 8));
    assert_eq!(get("usr/bin/tool").xattrs["trusted.kiln"], b"t");
    assert!(
        get("usr/bin/tool")
            .xattrs
            .contains_key("security.capability")
    );
    assert!(
        !get("srv/shared")
            .xattrs
            .keys()
            .any(|k| k.starts_with("trusted.overlay."))
    );
    let id = s.store.put_manifest(&m).unwrap();

    for mode in [CheckoutMode::Hardlink, CheckoutMode::Copy] {
        let dest = s.path(&format!("out-{mode:?}"));
        let opts = CheckoutOptions {
            mode,
            ..CheckoutOptions::default()
        };
        s.store.checkout(&m, &dest, opts).unwrap();
        let again = s.store.ingest_dir(&dest, IngestOptions::default()).unwrap();
        let diff: Vec<String> = m.diff(&again).iter().map(|c| c.to_string()).collect();
        assert_eq!(again.id(), id, "{mode:?}: {diff:?}");
        let newgrp = fs::metadata(dest.join("usr/bin/newgrp")).unwrap();
        assert_eq!(newgrp.permissions().mode() & 0o7777, 0o6755);
        make_removable(&dest);
    }
    make_removable(&src);
}

#[test]
fn root_ingest_can_force_the_owner() {
    // Needs root: creates files owned by another user.
    if !is_root() {
        return;
    }
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    lchown(&src, Some(1000), Some(1000)).unwrap();
    lchown(src.join("f"), Some(1000), Some(1000)).unwrap();
    let m = s
        .store
        .ingest_dir(
            &src,
            IngestOptions {
                owner: Some((0, 0)),
                ..IngestOptions::default()
            },
        )
        .unwrap();
    assert!(m.entries().all(|e| (e.uid, e.gid) == (0, 0)));
    let dest = s.path("dest");
    s.store
        .checkout(&m, &dest, CheckoutOptions::default())
        .unwrap();
    assert_eq!(fs::metadata(dest.join("f")).unwrap().uid(), 0);
}

#[test]
fn root_hardlink_checkout_shares_one_variant_per_metadata() {
    // Needs root: entries owned by other users.
    if !is_root() {
        return;
    }
    let s = Scratch::new();
    let blob = s.store.put_bytes(b"shared content").unwrap();
    let file = |path: &str, mode: u32, uid: u32| {
        let mut e = Entry::new(path, EntryKind::File { blob, size: 14 }, mode);
        e.uid = uid;
        e
    };
    let mut with_xattr = file("e", 0o644, 0);
    with_xattr.xattrs = BTreeMap::from([("trusted.k".to_owned(), b"v".to_vec())]);
    let m = Manifest::from_entries(vec![
        Entry::new("", EntryKind::Dir, 0o755),
        file("plain", 0o644, 0),
        file("a", 0o444, 0),
        file("b", 0o444, 0),
        file("c", 0o755, 0),
        file("d", 0o644, 4242),
        with_xattr,
    ])
    .unwrap();
    let dest = s.path("dest");
    s.store
        .checkout(&m, &dest, CheckoutOptions::default())
        .unwrap();
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(
        ino("plain"),
        fs::metadata(s.store.blob_path(&blob).unwrap())
            .unwrap()
            .ino()
    );
    assert_eq!(ino("a"), ino("b"));
    let distinct: std::collections::HashSet<u64> = ["plain", "a", "c", "d", "e"]
        .iter()
        .map(|p| ino(p))
        .collect();
    assert_eq!(distinct.len(), 5);
    assert_eq!(fs::metadata(dest.join("d")).unwrap().uid(), 4242);
    assert_eq!(s.store.stats().unwrap().variants, 4);
}
