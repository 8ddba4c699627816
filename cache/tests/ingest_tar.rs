//! `Store::ingest_tar`: a tree archived by GNU tar is recorded exactly as `ingest_dir` records
//! the tree itself, and archives that do not describe a tree are refused.
//!
//! The comparison with `ingest_dir` needs root (other owners, device nodes, `trusted.*`
//! attributes) and GNU tar; without root it says it is skipped. The other tests build their
//! archives with the `tar` crate and need nothing.

mod common;

use std::fs;
use std::os::unix::fs::lchown;
use std::path::Path;
use std::process::Command;

use common::{Scratch, chmod, make_removable, sample_tree};
use kiln_cache::{EntryKind, IngestOptions, StoreError};
use rustix::fs::{CWD, FileType, Mode, XattrFlags, makedev, mknodat};

fn is_root() -> bool {
    kiln_test_support::require(module_path!(), &[kiln_test_support::Need::Root])
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

/// The sample tree (files, a hard link group of three, symlinks, a fifo, setuid, `user.*`
/// attributes) plus devices, other owners and attributes only root can set.
fn privileged_tree(root: &Path) {
    assert!(
        sample_tree(root),
        "the scratch filesystem needs user xattrs"
    );
    fs::create_dir(root.join("dev")).unwrap();
    mknodat(
        CWD,
        root.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    chmod(&root.join("dev/null"), 0o666);
    mknodat(
        CWD,
        root.join("dev/loop0"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        makedev(7, 0),
    )
    .unwrap();
    lchown(root.join("dev/loop0"), Some(0), Some(6)).unwrap();
    fs::create_dir_all(root.join("var/log/man")).unwrap();
    lchown(root.join("var/log/man"), Some(6), Some(12)).unwrap();
    fs::write(root.join("usr/bin/newgrp"), "newgrp").unwrap();
    lchown(root.join("usr/bin/newgrp"), Some(0), Some(50)).unwrap();
    chmod(&root.join("usr/bin/newgrp"), 0o6755);
    lchown(root.join("etc/rel-link"), Some(7), Some(8)).unwrap();
    // A hard link pair owned by someone else, with a long name.
    let long = format!("usr/lib/{}", "x".repeat(150));
    fs::write(root.join(&long), "long").unwrap();
    fs::hard_link(root.join(&long), root.join("usr/lib/short")).unwrap();
    lchown(root.join(&long), Some(33), Some(33)).unwrap();
    set_xattr(&root.join("usr/bin/tool"), "trusted.kiln", b"t");
    set_xattr(
        &root.join("usr/bin/tool"),
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    // overlayfs bookkeeping is recorded by neither.
    set_xattr(&root.join("srv/shared"), "trusted.overlay.opaque", b"y");
    chmod(root, 0o750);
    lchown(root, Some(0), Some(4)).unwrap();
}

#[test]
fn a_gnu_tar_archive_of_a_tree_is_the_tree() {
    // Needs root: mknod, chown to other users, trusted.* xattrs.
    if !is_root() {
        return;
    }
    let s = Scratch::new();
    let src = s.path("src");
    privileged_tree(&src);
    let archive = s.path("tree.tar");
    let status = Command::new("tar")
        .args([
            "--create",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
        ])
        .arg("--file")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());

    let from_dir = s.store.ingest_dir(&src, IngestOptions::default()).unwrap();
    let from_tar = s.store.ingest_tar(&archive).unwrap();
    let get = |path: &str| from_tar.get(path).unwrap();
    assert_eq!(
        get("dev/null").kind,
        EntryKind::CharDev {
            rdev: makedev(1, 3)
        }
    );
    assert_eq!((get("var/log/man").uid, get("var/log/man").gid), (6, 12));
    assert_eq!(get("usr/bin/newgrp").mode, 0o6755);
    assert_eq!((get("").mode, get("").gid), (0o750, 4));
    assert_eq!(get("usr/bin/tool").xattrs.len(), 2);
    assert!(get("srv/shared").xattrs.contains_key("user.kiln.dir"));
    assert!(get("usr/lib/short").hardlink.is_some());
    assert_eq!(from_tar, from_dir);
    assert_eq!(
        s.store.put_manifest(&from_tar).unwrap(),
        s.store.put_manifest(&from_dir).unwrap()
    );
    // Every file's content is stored.
    for (blob, _) in from_tar.blobs() {
        assert!(s.store.has_blob(blob));
    }
    make_removable(&src);
}

/// An archive of `entries` written with the `tar` crate: (name, type, content or link target,
/// mode).
fn archive(path: &Path, entries: &[(&str, tar::EntryType, &str, u32)]) {
    let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, kind, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                header.set_size(0);
                builder
                    .append_link(&mut header, name, data)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => {
                header.set_size(data.len() as u64);
                // Bypass the crate's path checks: names such as `../x` are the point.
                let bytes = name.as_bytes();
                header.as_gnu_mut().unwrap().name[..bytes.len()].copy_from_slice(bytes);
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
    }
    builder.finish().unwrap();
}

#[test]
fn an_archive_without_a_root_entry_gets_a_root_owned_root_and_later_entries_win() {
    let s = Scratch::new();
    let path = s.path("a.tar");
    let long = format!("etc/{}", "n".repeat(200));
    archive(
        &path,
        &[
            ("etc/", tar::EntryType::Directory, "", 0o755),
            ("etc/hostname", tar::EntryType::Regular, "old\n", 0o644),
            ("etc/hostname", tar::EntryType::Regular, "new\n", 0o600),
            (&long, tar::EntryType::Symlink, "hostname", 0o777),
            ("etc/alias", tar::EntryType::Link, "etc/hostname", 0o600),
        ],
    );
    let tree = s.store.ingest_tar(&path).unwrap();
    let root = tree.get("").unwrap();
    assert_eq!((root.mode, root.uid, root.gid), (0o755, 0, 0));
    let hostname = tree.get("etc/hostname").unwrap();
    assert_eq!(hostname.mode, 0o600);
    assert_eq!(
        s.store.read_blob(hostname.blob().unwrap()).unwrap(),
        b"new\n"
    );
    assert_eq!(
        tree.get(&long).unwrap().kind,
        EntryKind::Symlink {
            target: "hostname".to_string()
        }
    );
    let alias = tree.get("etc/alias").unwrap();
    assert_eq!(alias.hardlink, Some(0));
    assert_eq!(hostname.hardlink, Some(0));
    assert_eq!(tree.len(), 5);
}

#[test]
fn names_leaving_the_root_or_below_a_symlink_are_refused() {
    let s = Scratch::new();
    let escape = s.path("escape.tar");
    archive(
        &escape,
        &[("./../outside", tar::EntryType::Regular, "x", 0o644)],
    );
    match s.store.ingest_tar(&escape) {
        Err(StoreError::Read { path, source }) => {
            assert_eq!(path, escape);
            assert!(source.to_string().contains("leaves its root"), "{source}");
        }
        other => panic!("{other:?}"),
    }

    let below = s.path("below.tar");
    archive(
        &below,
        &[
            ("etc", tar::EntryType::Symlink, "/tmp", 0o777),
            ("etc/passwd", tar::EntryType::Regular, "x", 0o644),
        ],
    );
    match s.store.ingest_tar(&below) {
        Err(StoreError::InvalidManifest { path, .. }) => assert_eq!(path, below),
        other => panic!("{other:?}"),
    }

    let orphan = s.path("orphan.tar");
    archive(
        &orphan,
        &[("usr/bin/sh", tar::EntryType::Regular, "x", 0o755)],
    );
    assert!(matches!(
        s.store.ingest_tar(&orphan),
        Err(StoreError::InvalidManifest { .. })
    ));
}
