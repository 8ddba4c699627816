//! The bubblewrap sandboxes in which scripts run: `.chroot` scripts inside the image tree, host
//! scripts on a read-only host ([`host_script_args`]).
//!
//! The tree is bound read-write as `/`, with what mkosi provides around a chroot script:
//!
//! | inside | what |
//! |---|---|
//! | `/proc` | a new procfs (own PID namespace) |
//! | `/dev` | a minimal devtmpfs from bubblewrap |
//! | `/sys` | the host's, read-only |
//! | `/run`, `/tmp` | empty tmpfs, thrown away afterwards |
//! | `/work` | tmpfs holding `/work/<stage>` (the script, read-only), `/work/src` (the project, read-only) and `/work/out` (the output directory) |
//! | `/etc/resolv.conf` | the host's, read-only, when the script has network |
//!
//! **resolv.conf.** An image's `/etc/resolv.conf` is often an absolute symlink, such as
//! `/run/systemd/resolve/stub-resolv.conf`. Bubblewrap mounts with host paths, so binding onto
//! the symlink would follow it on the host side. Instead the link is resolved inside the tree
//! here: when it ends under `/run` (a tmpfs in the sandbox) the host file is bound at that
//! target, which bubblewrap creates in the tmpfs; when it ends at a regular file of the tree the
//! host file is bound over it read-only. The tree itself is never written, so its
//! `resolv.conf`, symlink or file, comes out unchanged. Without network nothing is bound.
//!
//! **Capabilities.** Run as root, bubblewrap would leave the script every capability, enough to
//! mount over the project's and output's binds or to open host files by handle through them. A
//! chroot script keeps only what a package's maintainer scripts need ([`KEPT_CAPABILITIES`]:
//! owners, modes, set-id programs, file capabilities, signals, chroot), the set container
//! runtimes grant by default less `CAP_MKNOD` (a device node made inside would reach the host's
//! disks: there is no device cgroup around the sandbox) and `CAP_NET_RAW`. Without
//! `CAP_SYS_ADMIN` it cannot mount, without `CAP_DAC_READ_SEARCH` it cannot open by handle,
//! without `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_TIME` or `CAP_SYS_BOOT` it cannot touch
//! the kernel, the devices, the clock or the machine; bubblewrap's `no_new_privs` means no
//! set-uid program or file capability inside gives one back. A user namespace the script makes
//! itself grants it nothing over the host. Host scripts run with the user's rights, as in mkosi.
//!
//! **Mount points.** Bubblewrap creates a missing mount point in the tree (a tree without
//! `/proc`, the `/work` directory). Every mount point that did not exist is recorded before the
//! run and removed afterwards if still empty, so the tree holds only what the script wrote.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::script::{ScriptError, ScriptInvocation};

/// Where the script's parts are mounted inside the sandbox, as mkosi does.
pub(super) const WORK: &str = "/work";
pub(super) const WORK_SRC: &str = "/work/src";
pub(super) const WORK_OUT: &str = "/work/out";

/// Directories that are a fresh tmpfs inside the sandbox: nothing below them reaches the tree.
const TMPFS_DIRS: [&str; 3] = ["/run", "/tmp", WORK];

/// The API filesystems mounted over the tree.
const API_MOUNTS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// The capabilities a chroot script keeps when kiln runs as root; bubblewrap drops the rest from
/// the effective, permitted, inheritable and ambient sets, and its `no_new_privs` keeps set-id
/// programs and file capabilities from giving any back.
pub(crate) const KEPT_CAPABILITIES: [&str; 12] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// How many symlinks resolving a path inside the tree may follow.
const MAX_SYMLINKS: usize = 40;

/// The in-sandbox path of the script of `stage`: `/work/<stage>`.
pub(super) fn chroot_script_path(stage: &str) -> String {
    format!("{WORK}/{stage}")
}

/// A prepared sandbox: bubblewrap's arguments (everything before the command) and the mount
/// points it will create in the tree.
#[derive(Debug)]
pub(super) struct Sandbox {
    pub args: Vec<OsString>,
    /// For each mount point bubblewrap will create in the tree: the in-sandbox paths it
    /// creates, deepest first.
    created: Vec<Vec<PathBuf>>,
    root: PathBuf,
}

impl Sandbox {
    /// Plans the sandbox for `inv`. Fails when a mount point in the tree is a symlink or not a
    /// directory, because bubblewrap would follow it on the host.
    pub(super) fn plan(inv: &ScriptInvocation) -> Result<Sandbox, ScriptError> {
        let root = &inv.root;
        let stage = inv.stage.as_str();
        if stage.is_empty() || stage.contains('/') || [".", "..", "src", "out"].contains(&stage) {
            return Err(ScriptError::Sandbox {
                root: root.clone(),
                reason: format!("`{stage}` cannot name a script under `{WORK}`"),
            });
        }
        let stage_path = chroot_script_path(stage);
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
        push(&[
            "--die-with-parent".as_ref(),
            "--unshare-pid".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
            "--new-session".as_ref(),
        ]);
        if rustix::process::geteuid().is_root() {
            push(&["--cap-drop".as_ref(), "ALL".as_ref()]);
            for cap in KEPT_CAPABILITIES {
                push(&["--cap-add".as_ref(), cap.as_ref()]);
            }
        }
        if !inv.network {
            push(&["--unshare-net".as_ref()]);
        }
        push(&["--bind".as_ref(), root.as_os_str(), "/".as_ref()]);
        push(&["--proc".as_ref(), "/proc".as_ref()]);
        push(&["--dev".as_ref(), "/dev".as_ref()]);
        push(&["--ro-bind".as_ref(), "/sys".as_ref(), "/sys".as_ref()]);
        for dir in TMPFS_DIRS {
            push(&["--tmpfs".as_ref(), dir.as_ref()]);
        }
        push(&[
            "--ro-bind".as_ref(),
            inv.script.as_os_str(),
            stage_path.as_ref(),
        ]);
        push(&[
            "--ro-bind".as_ref(),
            inv.srcdir.as_os_str(),
            WORK_SRC.as_ref(),
        ]);
        push(&[
            "--bind".as_ref(),
            inv.outputdir.as_os_str(),
            WORK_OUT.as_ref(),
        ]);
        for (host, inside) in &inv.ro_binds {
            push(&["--ro-bind".as_ref(), host.as_os_str(), inside.as_os_str()]);
        }
        if inv.network {
            let target =
                resolve_in_tree(root, Path::new("/etc/resolv.conf")).map_err(|source| {
                    ScriptError::Io {
                        action: "resolve `/etc/resolv.conf` in",
                        path: root.clone(),
                        source,
                    }
                })?;
            let bind_at = match target {
                Resolved::InTmpfs(path) => Some(path),
                Resolved::Existing(path, meta) if meta.is_file() => Some(path),
                Resolved::Existing(..) | Resolved::Missing => None,
            };
            if let Some(at) = bind_at {
                push(&[
                    "--ro-bind-try".as_ref(),
                    "/etc/resolv.conf".as_ref(),
                    at.as_os_str(),
                ]);
            }
        }
        push(&["--chdir".as_ref(), WORK_SRC.as_ref()]);

        let mut mount_points: Vec<PathBuf> = API_MOUNTS
            .iter()
            .chain(TMPFS_DIRS.iter())
            .map(PathBuf::from)
            .collect();
        mount_points.extend(inv.ro_binds.iter().map(|(_, inside)| inside.clone()));
        let mut created = Vec::new();
        for point in &mount_points {
            if let Some(missing) = first_missing(root, point)? {
                // Bubblewrap creates `missing` and everything below it down to `point`.
                let chain: Vec<PathBuf> = point
                    .ancestors()
                    .take_while(|p| p.starts_with(&missing))
                    .map(Path::to_path_buf)
                    .collect();
                created.push(chain);
            }
        }
        Ok(Sandbox {
            args,
            created,
            root: root.clone(),
        })
    }

    /// A `/bin/sh` script that runs its arguments (a shell when there are none) inside this
    /// sandbox with `setenv` set: mkosi's `mkosi-chroot`, offered to host scripts.
    ///
    /// Before starting bubblewrap it appends to `created_log` the index of each mount point
    /// that is still missing then, so that [`Sandbox::keep_logged`] can restrict the cleanup to
    /// what the helper created (the host script may create the same paths itself).
    pub(super) fn chroot_helper(
        &self,
        bwrap: &Path,
        setenv: &[(&str, &str)],
        created_log: &Path,
    ) -> Vec<u8> {
        let mut out =
            b"#!/bin/sh\n# Runs a command inside the image tree, as mkosi-chroot does.\n".to_vec();
        for (index, chain) in self.created.iter().enumerate() {
            let Some(top) = chain.last() else { continue };
            let top = in_tree(&self.root, top);
            out.extend_from_slice(b"[ -e ");
            push_quoted(&mut out, top.as_os_str().as_bytes());
            out.extend_from_slice(b" ] || [ -L ");
            push_quoted(&mut out, top.as_os_str().as_bytes());
            out.extend_from_slice(format!(" ] || echo {index} >> ").as_bytes());
            push_quoted(&mut out, created_log.as_os_str().as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"[ $# -eq 0 ] && set -- /bin/sh\nexec ");
        push_quoted(&mut out, bwrap.as_os_str().as_bytes());
        for arg in &self.args {
            out.push(b' ');
            push_quoted(&mut out, arg.as_bytes());
        }
        for (key, value) in setenv {
            out.extend_from_slice(b" --setenv ");
            push_quoted(&mut out, key.as_bytes());
            out.push(b' ');
            push_quoted(&mut out, value.as_bytes());
        }
        out.extend_from_slice(b" -- \"$@\"\n");
        out
    }

    /// Keeps for cleanup only the mount points whose index `created_log` lists (written by
    /// [`Sandbox::chroot_helper`]); none when it does not exist.
    pub(super) fn keep_logged(&mut self, created_log: &Path) {
        let logged: std::collections::BTreeSet<usize> = fs::read_to_string(created_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let chains = std::mem::take(&mut self.created);
        self.created = chains
            .into_iter()
            .enumerate()
            .filter(|(i, _)| logged.contains(i))
            .map(|(_, chain)| chain)
            .collect();
    }

    /// Removes the mount points bubblewrap created in the tree, deepest first, as long as each
    /// is still an empty directory or empty file. Call it once the sandbox has exited; it does
    /// nothing for mount points that were never created.
    pub(super) fn cleanup(&mut self) {
        for chain in self.created.drain(..).rev() {
            for inside in chain {
                let on_host = in_tree(&self.root, &inside);
                let removed = match fs::symlink_metadata(&on_host) {
                    Ok(meta) if meta.is_dir() => fs::remove_dir(&on_host).is_ok(),
                    Ok(meta) if meta.is_file() && meta.len() == 0 => {
                        fs::remove_file(&on_host).is_ok()
                    }
                    Ok(_) => false,
                    // Shared with another chain and already gone.
                    Err(e) => e.kind() == io::ErrorKind::NotFound,
                };
                if !removed {
                    break;
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Bubblewrap's arguments for a host script (everything before the command): the host's
/// filesystem read-only, its devices and network as they are, a private `/proc` (own PID
/// namespace) and `/tmp`, and writable only what the script is given: the project directory,
/// the output directory, the image tree and `writable` (the directory holding `mkosi-chroot`).
/// Each is bound at its own path, so `$BUILDROOT`, `$SRCDIR` and `$OUTPUTDIR` are the host's
/// paths; but a write through a symlink in the tree that leads out of it, such as an image's
/// `/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf`, meets a read-only host (or the
/// private `/tmp`) instead of changing it, as in mkosi's sandbox.
pub(super) fn host_script_args(inv: &ScriptInvocation, writable: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--die-with-parent",
        "--unshare-pid",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--dev-bind",
        "/dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    // Later binds lie over earlier ones: the project first, since the output directory and
    // the tree (in a store under `mkosi.cache/`) may lie inside it.
    let mut bind = |kind: &str, path: &Path| {
        args.push(kind.into());
        args.push(path.as_os_str().to_owned());
        args.push(path.as_os_str().to_owned());
    };
    bind("--bind", &inv.srcdir);
    bind("--bind", &inv.outputdir);
    bind("--bind", &inv.root);
    bind("--ro-bind", &inv.script);
    if let Some(dir) = writable {
        bind("--bind", dir);
    }
    args.push("--chdir".into());
    args.push(inv.srcdir.as_os_str().to_owned());
    args
}

/// Appends `arg` to a shell command line, single-quoted.
fn push_quoted(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// `inside` (absolute, inside the sandbox) as a path in the tree on the host.
fn in_tree(root: &Path, inside: &Path) -> PathBuf {
    let rel: PathBuf = inside
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

fn under_tmpfs(inside: &Path) -> bool {
    TMPFS_DIRS
        .iter()
        .any(|dir| inside.starts_with(dir) && inside != Path::new(dir))
}

/// The first component of mount point `inside` that is missing in the tree, `None` when the
/// whole path exists or lies in a sandbox tmpfs. A symlink or non-directory on the way is an
/// error: bubblewrap would resolve it against the host.
fn first_missing(root: &Path, inside: &Path) -> Result<Option<PathBuf>, ScriptError> {
    if under_tmpfs(inside) {
        return Ok(None);
    }
    let mut current = PathBuf::from("/");
    let mut parts = inside
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .peekable();
    while let Some(part) = parts.next() {
        current.push(part);
        let on_host = in_tree(root, &current);
        match fs::symlink_metadata(&on_host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ScriptError::Sandbox {
                    root: root.to_owned(),
                    reason: format!(
                        "`{}` is a symlink in the image, and a mount point must not be",
                        current.display()
                    ),
                });
            }
            Ok(meta) if parts.peek().is_some() && !meta.is_dir() => {
                return Err(ScriptError::Sandbox {
                    root: root.to_owned(),
                    reason: format!("`{}` is not a directory in the image", current.display()),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(current)),
            Err(source) => {
                return Err(ScriptError::Io {
                    action: "inspect",
                    path: on_host,
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// Where a path ends up once symlinks are followed inside the tree.
#[derive(Debug)]
enum Resolved {
    /// Under a sandbox tmpfs: bubblewrap may create it there.
    InTmpfs(PathBuf),
    /// An existing entry of the tree (symlink-free in-sandbox path).
    Existing(PathBuf, fs::Metadata),
    /// Missing, or a symlink loop.
    Missing,
}

/// Resolves absolute `path` inside the tree rooted at `root`, following symlinks relative to
/// the tree (an absolute target starts again at the tree's root), lexically once inside a
/// sandbox tmpfs.
fn resolve_in_tree(root: &Path, path: &Path) -> io::Result<Resolved> {
    let mut pending: VecDeque<OsString> = normal_parts(path);
    let mut current = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&part);
        // A sandbox tmpfs starts empty: whatever the tree holds there does not count.
        if TMPFS_DIRS.iter().any(|dir| candidate.starts_with(dir)) {
            current = candidate;
            continue;
        }
        let on_host = in_tree(root, &candidate);
        match fs::symlink_metadata(&on_host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Ok(Resolved::Missing);
                }
                let target = fs::read_link(&on_host)?;
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                for part in normal_parts(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            Ok(_) => current = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resolved::Missing),
            Err(e) => return Err(e),
        }
    }
    if under_tmpfs(&current) {
        return Ok(Resolved::InTmpfs(current));
    }
    match fs::symlink_metadata(in_tree(root, &current)) {
        Ok(meta) => Ok(Resolved::Existing(current, meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Resolved::Missing),
        Err(e) => Err(e),
    }
}

/// The components of a path that matter for resolution: names and `..` (`.` and `/` dropped).
fn normal_parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stage_names_that_escape_work_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for stage in ["", "..", "a/b", "src"] {
            let inv = ScriptInvocation::new("/p/s.chroot", stage, dir.path(), "/p", "/o");
            assert!(
                matches!(Sandbox::plan(&inv), Err(ScriptError::Sandbox { .. })),
                "{stage:?}"
            );
        }
        let inv = ScriptInvocation::new("/p/s.chroot", "postinst", dir.path(), "/p", "/o");
        let plan = Sandbox::plan(&inv).unwrap();
        assert!(plan.args.iter().any(|a| a == "/work/postinst"));
        assert!(plan.args.iter().any(|a| a == "--unshare-net"));
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        let mut out = Vec::new();
        push_quoted(&mut out, b"it's");
        let printed = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", String::from_utf8(out).unwrap()))
            .output()
            .unwrap();
        assert_eq!(printed.stdout, b"it's");
    }

    #[test]
    fn absolute_symlink_into_run_resolves_to_the_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        match resolve_in_tree(root, Path::new("/etc/resolv.conf")).unwrap() {
            Resolved::InTmpfs(p) => {
                assert_eq!(p, Path::new("/run/systemd/resolve/stub-resolv.conf"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn relative_and_chained_symlinks_stay_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/resolv.conf"), "nameserver 1.1.1.1\n").unwrap();
        symlink("../../../../usr/lib/x", root.join("etc/resolv.conf")).unwrap();
        symlink("/usr/lib/resolv.conf", root.join("usr/lib/x")).unwrap();
        match resolve_in_tree(root, Path::new("/etc/resolv.conf")).unwrap() {
            Resolved::Existing(p, meta) => {
                assert_eq!(p, Path::new("/usr/lib/resolv.conf"));
                assert!(meta.is_file());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn symlink_loops_and_missing_targets_resolve_to_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        symlink("resolv.conf", root.join("etc/resolv.conf")).unwrap();
        assert!(matches!(
            resolve_in_tree(root, Path::new("/etc/resolv.conf")).unwrap(),
            Resolved::Missing
        ));
        assert!(matches!(
            resolve_in_tree(root, Path::new("/etc/hosts")).unwrap(),
            Resolved::Missing
        ));
    }
}
