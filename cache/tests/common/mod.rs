//! Helpers shared by the store's integration tests: sample trees on disk.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_cache::Store;

/// A temp dir holding a store at `cache/`.
pub(crate) struct Scratch {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        Scratch { dir, store }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub(crate) fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
}

/// Sets a `user.*` xattr; `false` where the filesystem does not support them: a skip of the
/// test's xattr part, said and counted, and a failure under `KILN_TEST_STRICT=1`.
pub(crate) fn set_user_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    match rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => true,
        Err(rustix::io::Errno::NOTSUP) => kiln_test_support::skip_unless(Some(
            "no user xattrs on this filesystem: the xattr part is skipped".to_owned(),
        )),
        Err(e) => panic!("setxattr {}: {e}", path.display()),
    }
}

/// Builds a tree using everything an unprivileged user can make: files,
/// directories, symlinks (absolute, relative, dangling), hard links, a fifo,
/// setuid/setgid/sticky modes, a read-only directory, an empty and a large
/// file, and a `user.*` xattr. Returns whether the xattr could be set.
pub(crate) fn sample_tree(root: &Path) -> bool {
    fs::create_dir_all(root.join("etc/ssl")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("srv/readonly")).unwrap();
    fs::write(root.join("etc/hostname"), "rescue\n").unwrap();
    fs::write(
        root.join("etc/ssl/cert.pem"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    fs::write(root.join("usr/bin/sudo"), "#!/bin/sh\necho sudo\n").unwrap();
    chmod(&root.join("usr/bin/sudo"), 0o4755);
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    chmod(&root.join("usr/bin/tool"), 0o755);
    // A hard link group of three.
    fs::write(root.join("usr/bin/git"), "git binary").unwrap();
    chmod(&root.join("usr/bin/git"), 0o755);
    fs::hard_link(
        root.join("usr/bin/git"),
        root.join("usr/bin/git-upload-pack"),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/git"), root.join("usr/lib/git-core")).unwrap();
    // Larger than the in-memory limit, to take the streaming path.
    let big: Vec<u8> = (0..(3 << 20) + 5)
        .map(|i: u32| (i * 7 % 256) as u8)
        .collect();
    fs::write(root.join("usr/lib/big.so"), big).unwrap();
    symlink("/etc/passwd", root.join("etc/abs-link")).unwrap();
    symlink("../usr/bin/tool", root.join("etc/rel-link")).unwrap();
    symlink("nowhere/at/all", root.join("etc/dangling")).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    mkfifo(&root.join("tmp/fifo"));
    chmod(&root.join("tmp"), 0o1777);
    fs::create_dir(root.join("srv/shared")).unwrap();
    chmod(&root.join("srv/shared"), 0o2775);
    fs::write(root.join("srv/readonly/data"), "locked").unwrap();
    chmod(&root.join("srv/readonly/data"), 0o400);
    chmod(&root.join("srv/readonly"), 0o555);
    let xattr = set_user_xattr(&root.join("etc/hostname"), "user.kiln.test", b"value\0bin");
    if xattr {
        assert!(set_user_xattr(
            &root.join("srv/shared"),
            "user.kiln.dir",
            b"d"
        ));
    }
    xattr
}

/// Makes everything under `root` writable again so the temp dir can go.
pub(crate) fn make_removable(root: &Path) {
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
}
