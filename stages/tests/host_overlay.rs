//! Overlay mounts, upper-layer classification and the tree copy, on the real kernel.
//!
//! These tests need root (mounting overlayfs, `chown`, `mknod`, `trusted.*` xattrs). Run as
//! another user, each prints that it is skipped and returns.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_stages::host::{
    Host, HostError, MutableTree, Overlay, RealHost, TreeChanges, UpperChange,
    copy_tree_preserving, read_upper, xattr,
};

fn is_root(test: &str) -> bool {
    kiln_test_support::require(test, &[kiln_test_support::Need::Root])
}

/// Asserts no mount below `dir` is left in this process's mount table.
fn assert_no_mounts_below(dir: &Path) {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    let leaked: Vec<&str> = table.lines().filter(|l| l.contains(dir)).collect();
    assert!(leaked.is_empty(), "mounts left below {dir}: {leaked:#?}");
}

fn write(path: impl AsRef<Path>, content: &str) {
    let path = path.as_ref();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn entry(p: &str) -> UpperChange {
    UpperChange::Entry(PathBuf::from(p))
}
fn whiteout(p: &str) -> UpperChange {
    UpperChange::Whiteout(PathBuf::from(p))
}
fn opaque(p: &str) -> UpperChange {
    UpperChange::OpaqueDir(PathBuf::from(p))
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?} failed");
}

#[test]
fn upper_layer_reports_exactly_what_changed_through_the_merged_tree() {
    if !is_root("upper_layer_reports_exactly_what_changed_through_the_merged_tree") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(lower.join("keep.txt"), "keep");
    write(lower.join("modify.txt"), "old");
    write(lower.join("delete.txt"), "gone");
    write(lower.join("chmod.txt"), "mode");
    write(lower.join("old-name"), "renamed file");
    write(lower.join("dir-a/x"), "x");
    write(lower.join("dir-a/y"), "y");
    write(lower.join("replace/old"), "hidden");
    write(lower.join("sub/deep/file"), "untouched");
    write(lower.join("gone-dir/f"), "f");
    write(lower.join("untouched-dir/f"), "f");
    fs::create_dir(lower.join("chmod-dir")).unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o750)).unwrap();
    let scratch = tmp.path().join("scratch");

    let overlay = Overlay::mount(&lower, &scratch).unwrap();
    let m = overlay.merged().to_owned();
    assert_eq!(fs::read_to_string(m.join("keep.txt")).unwrap(), "keep");
    assert_eq!(
        fs::metadata(&m).unwrap().permissions().mode() & 0o7777,
        0o750,
        "the merged root shows the lower root's mode"
    );

    fs::write(m.join("modify.txt"), "new").unwrap();
    fs::remove_file(m.join("delete.txt")).unwrap();
    fs::set_permissions(m.join("chmod.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.join("old-name"), m.join("new-name")).unwrap();
    // redirect_dir=off: renaming a lower directory is refused, tools copy it instead.
    let err = fs::rename(m.join("dir-a"), m.join("dir-b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    run(Command::new("mv").arg(m.join("dir-a")).arg(m.join("dir-b")));
    fs::remove_dir_all(m.join("replace")).unwrap();
    write(m.join("replace/new"), "fresh");
    write(m.join("sub/deep/new.txt"), "added");
    fs::remove_dir_all(m.join("gone-dir")).unwrap();
    write(m.join("newdir/f"), "new");
    symlink("/run/somewhere", m.join("link")).unwrap();
    fs::set_permissions(m.join("chmod-dir"), fs::Permissions::from_mode(0o700)).unwrap();
    let upper = overlay.upper().to_owned();
    overlay.unmount().unwrap();
    assert_no_mounts_below(&scratch);

    let changes = read_upper(&upper).unwrap();
    assert_eq!(
        changes,
        vec![
            entry("chmod-dir"),
            entry("chmod.txt"),
            whiteout("delete.txt"),
            whiteout("dir-a"),
            entry("dir-b"),
            entry("dir-b/x"),
            entry("dir-b/y"),
            whiteout("gone-dir"),
            entry("link"),
            entry("modify.txt"),
            entry("new-name"),
            entry("newdir"),
            entry("newdir/f"),
            whiteout("old-name"),
            opaque("replace"),
            entry("replace/new"),
            entry("sub"),
            entry("sub/deep"),
            entry("sub/deep/new.txt"),
        ]
    );
    assert_eq!(fs::read_to_string(upper.join("modify.txt")).unwrap(), "new");
    // metacopy=off: a chmod copies the whole file up.
    assert_eq!(fs::read_to_string(upper.join("chmod.txt")).unwrap(), "mode");
    assert_eq!(
        fs::metadata(upper.join("chmod.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    // The lower layer is untouched.
    assert_eq!(fs::read_to_string(lower.join("modify.txt")).unwrap(), "old");
    assert!(lower.join("delete.txt").exists());
    // Overlayfs' own xattrs are told apart from the image's.
    for name in xattr::list(&upper.join("replace")).unwrap() {
        assert!(
            xattr::is_overlay_xattr(&name),
            "{}",
            String::from_utf8_lossy(&name)
        );
    }
}

#[test]
fn dropping_a_mounted_overlay_detaches_it() {
    if !is_root("dropping_a_mounted_overlay_detaches_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(lower.join("f"), "f");
    let scratch = tmp.path().join("scratch");
    {
        let overlay = Overlay::mount(&lower, &scratch).unwrap();
        assert!(overlay.merged().join("f").exists());
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(table.contains(scratch.to_str().unwrap()));
    }
    assert_no_mounts_below(&scratch);
}

#[test]
fn layer_paths_with_commas_and_colons_are_escaped() {
    if !is_root("layer_paths_with_commas_and_colons_are_escaped") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("low,er:1\\x");
    write(lower.join("f"), "odd path");
    let scratch = tmp.path().join("scr:atch,2");
    let overlay = Overlay::mount(&lower, &scratch).unwrap();
    assert_eq!(
        fs::read_to_string(overlay.merged().join("f")).unwrap(),
        "odd path"
    );
    fs::write(overlay.merged().join("g"), "").unwrap();
    let upper = overlay.upper().to_owned();
    overlay.unmount().unwrap();
    assert_eq!(read_upper(&upper).unwrap(), vec![entry("g")]);
    assert_no_mounts_below(tmp.path());
}

#[test]
fn mounting_twice_in_one_scratch_fails_and_leaves_the_first_mount_alone() {
    if !is_root("mounting_twice_in_one_scratch_fails_and_leaves_the_first_mount_alone") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(lower.join("f"), "f");
    let scratch = tmp.path().join("scratch");
    let first = Overlay::mount(&lower, &scratch).unwrap();
    let err = Overlay::mount(&lower, &scratch).unwrap_err();
    assert!(matches!(err, HostError::Io { .. }), "{err:?}");
    assert!(first.merged().join("f").exists());
    assert!(lower.join("f").exists());
    fs::write(first.merged().join("g"), "g").unwrap();
    let upper = first.upper().to_owned();
    first.unmount().unwrap();
    assert_eq!(read_upper(&upper).unwrap(), vec![entry("g")]);
    assert_no_mounts_below(&scratch);
}

#[test]
fn real_host_reports_upper_changes_and_falls_back_to_a_copy_on_an_overlay_scratch() {
    if !is_root("real_host_reports_upper_changes_and_falls_back_to_a_copy_on_an_overlay_scratch") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(lower.join("etc/hostname"), "old\n");
    let host = RealHost::new();

    let tree = host.mutable_tree(&lower, &tmp.path().join("s1")).unwrap();
    assert!(tree.is_overlay());
    assert_eq!(tree.fallback_reason(), None);
    fs::write(tree.root().join("etc/hostname"), "new\n").unwrap();
    match tree.finish().unwrap() {
        TreeChanges::Upper { upper, changes } => {
            assert_eq!(changes, vec![entry("etc"), entry("etc/hostname")]);
            assert_eq!(
                fs::read_to_string(upper.join("etc/hostname")).unwrap(),
                "new\n"
            );
        }
        other => panic!("expected upper changes, got {other:?}"),
    }

    // An upper layer cannot live on overlayfs: a scratch directory inside a merged tree makes
    // the kernel refuse, and the host copies the tree instead.
    let outer = Overlay::mount(&lower, &tmp.path().join("outer")).unwrap();
    let nested_scratch = outer.merged().join("scratch");
    let tree = host.mutable_tree(&lower, &nested_scratch).unwrap();
    assert!(!tree.is_overlay());
    assert!(
        tree.fallback_reason()
            .is_some_and(|r| r.contains("Overlayfs is not available"))
    );
    fs::write(tree.root().join("etc/hostname"), "copied\n").unwrap();
    let root = match tree.finish().unwrap() {
        TreeChanges::Whole { root } => root,
        other => panic!("expected the whole tree, got {other:?}"),
    };
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "copied\n"
    );
    assert_eq!(
        fs::read_to_string(lower.join("etc/hostname")).unwrap(),
        "old\n"
    );
    assert!(
        !nested_scratch.join("merged").exists(),
        "the failed mount cleans up"
    );
    outer.unmount().unwrap();
    assert_no_mounts_below(tmp.path());
}

#[test]
fn copy_preserves_modes_owners_xattrs_links_devices_and_times() {
    if !is_root("copy_preserves_modes_owners_xattrs_links_devices_and_times") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(src.join("usr/bin/tool"), "#!/bin/sh\n");
    let tool = src.join("usr/bin/tool");
    std::os::unix::fs::chown(&tool, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(&tool, b"user.kiln-test", b"value").unwrap();
    xattr::set(&tool, b"trusted.kiln-test", b"secret").unwrap();
    fs::hard_link(&tool, src.join("usr/bin/tool-alias")).unwrap();
    symlink("tool", src.join("usr/bin/link")).unwrap();
    symlink("/absolute/dangling", src.join("dangling")).unwrap();
    std::os::unix::fs::lchown(src.join("dangling"), Some(42), Some(43)).unwrap();
    fs::create_dir_all(src.join("dev")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    run(Command::new("mkfifo").arg(src.join("fifo")));
    fs::create_dir(src.join("private")).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    run(Command::new("touch")
        .args(["-h", "-d", "2001-02-03 04:05:06"])
        .arg(src.join("usr/bin/link")));
    run(Command::new("touch")
        .args(["-d", "2000-01-01 00:00:00"])
        .arg(src.join("usr")));

    let dst = tmp.path().join("dst");
    copy_tree_preserving(&src, &dst).unwrap();

    let t = fs::metadata(dst.join("usr/bin/tool")).unwrap();
    assert_eq!((t.uid(), t.gid()), (1234, 5678));
    assert_eq!(t.mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_eq!(
        xattr::get(&dst.join("usr/bin/tool"), b"user.kiln-test").unwrap(),
        Some(b"value".to_vec())
    );
    assert_eq!(
        xattr::get(&dst.join("usr/bin/tool"), b"trusted.kiln-test").unwrap(),
        Some(b"secret".to_vec())
    );
    let alias = fs::metadata(dst.join("usr/bin/tool-alias")).unwrap();
    assert_eq!(alias.ino(), t.ino(), "hardlinks stay linked");
    assert_eq!(t.nlink(), 2);
    assert_eq!(
        fs::read_link(dst.join("usr/bin/link")).unwrap(),
        Path::new("tool")
    );
    let link = fs::symlink_metadata(dst.join("usr/bin/link")).unwrap();
    let src_link = fs::symlink_metadata(src.join("usr/bin/link")).unwrap();
    assert_eq!(link.mtime(), src_link.mtime());
    let dangling = fs::symlink_metadata(dst.join("dangling")).unwrap();
    assert_eq!((dangling.uid(), dangling.gid()), (42, 43));
    assert_eq!(
        fs::read_link(dst.join("dangling")).unwrap(),
        Path::new("/absolute/dangling")
    );
    let null = fs::symlink_metadata(dst.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(
        fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::metadata(dst.join("private")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        fs::metadata(dst.join("usr")).unwrap().mtime(),
        fs::metadata(src.join("usr")).unwrap().mtime(),
        "directory times are set after their children"
    );

    let err = copy_tree_preserving(&src, &dst).unwrap_err();
    assert!(
        matches!(err, HostError::DestinationNotEmpty { .. }),
        "{err:?}"
    );

    let copy = MutableTree::copy(&src, &tmp.path().join("scratch")).unwrap();
    assert!(copy.root().join("usr/bin/tool").exists());
}
