//! Running mkosi scripts on the host and inside a tree with bubblewrap.
//!
//! The chroot tests and the host-script tests that check cleanup need root (bubblewrap mounts
//! without a user namespace then); run as another user, they print that they are skipped and
//! return. The chroot tree is built from nothing: the host's `/usr` is bound read-only into it,
//! with the host's top-level `/bin`, `/lib`... links copied, so no package is installed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_test_support::{Facts, tree_listing};

use kiln_stages::host::{
    Host, HostCall, RealHost, RecordingHost, ScriptError, ScriptInvocation, TAIL_LINES, Tools,
};

fn is_root(test: &str) -> bool {
    kiln_test_support::require(test, &[kiln_test_support::Need::Root])
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A project directory, an output directory and an (empty) tree root.
struct Layout {
    _tmp: tempfile::TempDir,
    project: PathBuf,
    output: PathBuf,
    root: PathBuf,
}

fn layout() -> Layout {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let output = tmp.path().join("output");
    let root = tmp.path().join("root");
    for dir in [&project, &output, &root] {
        fs::create_dir(dir).unwrap();
    }
    fs::write(project.join("mkosi.conf"), "[Distribution]\n").unwrap();
    Layout {
        _tmp: tmp,
        project,
        output,
        root,
    }
}

/// A minimal image tree: `/usr` as an empty mount point for the host's, the host's top-level
/// links (`/bin -> usr/bin`...) or binds for real directories, `/etc/resolv.conf` as the seed's
/// absolute symlink, and no `/proc`, `/run`, `/tmp` or `/work`.
fn minimal_tree(inv: &mut ScriptInvocation) {
    let root = &inv.root;
    fs::create_dir_all(root.join("usr")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::create_dir_all(root.join("sys")).unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        root.join("etc/resolv.conf"),
    )
    .unwrap();
    inv.ro_binds.push(("/usr".into(), "/usr".into()));
    for top in ["bin", "sbin", "lib", "lib32", "lib64"] {
        let host = Path::new("/").join(top);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                symlink(fs::read_link(&host).unwrap(), root.join(top)).unwrap();
            }
            Ok(meta) if meta.is_dir() => inv.ro_binds.push((host.clone(), host)),
            _ => {}
        }
    }
}

fn collect(
    host: &dyn Host,
    inv: &ScriptInvocation,
) -> (Result<Vec<String>, ScriptError>, Vec<String>) {
    let mut lines = Vec::new();
    let result = host
        .run_script(inv, &mut |line| lines.push(line.to_owned()))
        .map(|outcome| outcome.output_tail);
    (result, lines)
}

#[test]
fn host_script_sees_mkosi_variables_and_writes_into_buildroot() {
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.finalize",
        r#"#!/bin/sh
set -e
echo "finalizing $1"
printf '%s\n' "$BUILDROOT" "$SRCDIR" "$OUTPUTDIR" "$CHROOT_SCRIPT" "$IMAGE_VERSION" "$(pwd)" \
  "${CARGO_MANIFEST_DIR:-unset}" "$WITH_NETWORK" > "$BUILDROOT/seen"
cat > "$OUTPUTDIR/stdin"
"#,
    );
    let mut inv = ScriptInvocation::new(&s, "finalize", &l.root, &l.project, &l.output);
    inv.args.push("final".into());
    inv.env.insert("IMAGE_VERSION".into(), "1.2.3".into());
    assert!(!inv.chroot);
    let host = RealHost::new();
    let (tail, lines) = collect(&host, &inv);
    assert_eq!(tail.unwrap(), vec!["finalizing final".to_owned()]);
    assert_eq!(lines, vec!["finalizing final".to_owned()]);
    let seen = fs::read_to_string(l.root.join("seen")).unwrap();
    let expected = [
        l.root.to_str().unwrap(),
        l.project.to_str().unwrap(),
        l.output.to_str().unwrap(),
        "/work/finalize",
        "1.2.3",
        l.project.to_str().unwrap(),
        "unset",
        "0",
    ]
    .join("\n")
        + "\n";
    assert_eq!(seen, expected, "the host environment does not leak in");
    assert_eq!(fs::read(l.output.join("stdin")).unwrap(), b"");
}

#[test]
fn failing_host_script_reports_exit_code_and_output_tail() {
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.finalize",
        "#!/bin/sh\ni=1\nwhile [ $i -le 60 ]; do echo \"line $i\"; i=$((i+1)); done\necho oops >&2\nexit 3\n",
    );
    let inv = ScriptInvocation::new(&s, "finalize", &l.root, &l.project, &l.output);
    let (result, lines) = collect(&RealHost::new(), &inv);
    assert_eq!(lines.len(), 61);
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "`mkosi.finalize` failed with exit code 3");
    assert_eq!(err.exit_code(), Some(3));
    let ScriptError::Failed {
        output_tail, stage, ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(stage, "finalize");
    assert_eq!(output_tail.len(), TAIL_LINES);
    assert_eq!(output_tail.last().map(String::as_str), Some("oops"));
    assert_eq!(output_tail[0], format!("line {}", 62 - TAIL_LINES));
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("line 60\noops"), "{help}");
}

#[test]
fn missing_or_non_executable_scripts_say_what_to_do() {
    let l = layout();
    let s = l.project.join("mkosi.postinst");
    fs::write(&s, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&s, fs::Permissions::from_mode(0o644)).unwrap();
    let inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    let err = RealHost::new().run_script(&inv, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ScriptError::NotExecutable { .. }), "{err:?}");
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("chmod +x"), "{help}");

    let inv = ScriptInvocation::new(
        l.project.join("mkosi.prepare"),
        "prepare",
        &l.root,
        &l.project,
        &l.output,
    );
    let err = RealHost::new().run_script(&inv, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ScriptError::NotFound { .. }), "{err:?}");
}

#[test]
fn chroot_script_without_bubblewrap_names_the_package() {
    let l = layout();
    let s = script(&l.project, "mkosi.postinst.chroot", "#!/bin/sh\n");
    let inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    let err = RealHost::with_tools(Tools::default())
        .run_script(&inv, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, ScriptError::BubblewrapMissing { .. }),
        "{err:?}"
    );
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("`bubblewrap`"), "{help}");
}

#[test]
fn recording_host_records_calls_copies_trees_and_runs_host_scripts() {
    let l = layout();
    fs::write(l.root.join("file"), "lower").unwrap();
    let host = RecordingHost::new();
    let scratch = l.output.join("scratch");
    let tree = host.mutable_tree(&l.root, &scratch).unwrap();
    assert!(!tree.is_overlay());
    let s = script(
        &l.project,
        "mkosi.postinst",
        "#!/bin/sh\necho changed > \"$BUILDROOT/file\"\n",
    );
    let host_inv = ScriptInvocation::new(&s, "postinst", tree.root(), &l.project, &l.output);
    host.run_script(&host_inv, &mut |_| {}).unwrap();
    let c = script(&l.project, "mkosi.finalize.chroot", "#!/bin/sh\nexit 1\n");
    let chroot_inv = ScriptInvocation::new(&c, "finalize", tree.root(), &l.project, &l.output);
    host.run_script(&chroot_inv, &mut |_| {}).unwrap();
    assert_eq!(
        fs::read_to_string(tree.root().join("file")).unwrap(),
        "changed\n"
    );
    assert_eq!(fs::read_to_string(l.root.join("file")).unwrap(), "lower");
    assert_eq!(
        host.calls(),
        vec![
            HostCall::MutableTree {
                lower: l.root.clone(),
                scratch,
            },
            HostCall::RunScript(host_inv.clone()),
            HostCall::RunScript(chroot_inv.clone()),
        ]
    );
    assert_eq!(host.scripts(), vec![host_inv, chroot_inv]);
}

#[test]
fn chroot_script_runs_inside_the_tree_and_leaves_only_its_writes() {
    if !is_root("chroot_script_runs_inside_the_tree_and_leaves_only_its_writes") {
        return;
    }
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.postinst.chroot",
        r#"#!/bin/sh
set -e
test -r /proc/self/status
echo "pid $$"
echo "args $*"
echo "env $BUILDROOT $SRCDIR $OUTPUTDIR $CHROOT_SCRIPT $IMAGE_ID $WITH_NETWORK"
echo "cwd $(pwd)"
echo written > /etc/from-chroot
cat /etc/resolv.conf > /work/out/resolv-seen
ls /work/src > /work/out/src-list
echo scratch > /tmp/not-in-tree
mkdir -p /run/not-in-tree
"#,
    );
    let mut inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    assert!(inv.chroot);
    inv.network = true;
    inv.args.push("final".into());
    inv.env.insert("IMAGE_ID".into(), "rescue".into());
    minimal_tree(&mut inv);
    let before: BTreeMap<_, _> = tree_listing(&l.root, Facts::Kinds);

    let (tail, _) = collect(&RealHost::new(), &inv);
    let tail = tail.unwrap();
    assert!(tail[0].starts_with("pid "), "{tail:?}");
    let pid: u32 = tail[0][4..].parse().unwrap();
    assert!(
        pid < 10,
        "the script runs in its own PID namespace: {tail:?}"
    );
    assert_eq!(tail[1], "args final");
    assert_eq!(tail[2], "env / /work/src /work/out /work/postinst rescue 1");
    assert_eq!(tail[3], "cwd /work/src");

    assert_eq!(
        fs::read_to_string(l.root.join("etc/from-chroot")).unwrap(),
        "written\n"
    );
    assert_eq!(
        fs::read_to_string(l.output.join("resolv-seen")).unwrap(),
        fs::read_to_string("/etc/resolv.conf").unwrap(),
        "the host's resolv.conf is visible through the image's symlink"
    );
    assert!(
        fs::read_to_string(l.output.join("src-list"))
            .unwrap()
            .contains("mkosi.conf")
    );
    assert_eq!(
        fs::read_link(l.root.join("etc/resolv.conf")).unwrap(),
        Path::new("/run/systemd/resolve/stub-resolv.conf"),
        "the image's resolv.conf symlink is unchanged"
    );
    let mut after = tree_listing(&l.root, Facts::Kinds);
    assert_eq!(
        after.remove(Path::new("etc/from-chroot")),
        Some("file".to_owned())
    );
    assert_eq!(after, before, "only the script's write is left in the tree");
}

/// What a root script inside bubblewrap could do with every capability: mount over the project's
/// bind, make a device node for the host's disk, open a host file by handle through a bind. Each
/// attempt is made, and each must be refused; the capabilities left are the kept ones.
#[test]
fn chroot_script_cannot_mount_make_devices_or_open_by_handle() {
    if !is_root("chroot_script_cannot_mount_make_devices_or_open_by_handle") {
        return;
    }
    let l = layout();
    fs::write(l.project.join("canary"), "host file\n").unwrap();
    let s = script(
        &l.project,
        "mkosi.postinst.chroot",
        r#"#!/bin/sh
grep CapEff /proc/self/status
grep CapPrm /proc/self/status
grep NoNewPrivs /proc/self/status
mount -t tmpfs none /work/src 2>/dev/null && echo mount allowed || echo mount refused
mknod /tmp/disk b 8 0 2>/dev/null && echo mknod allowed || echo mknod refused
/usr/bin/python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 128)]
handle, mount_id = Handle(), ctypes.c_int()
handle.bytes = 128
if libc.name_to_handle_at(-100, b"/work/src/canary", ctypes.byref(handle), ctypes.byref(mount_id), 0):
    print("name_to_handle_at failed:", os.strerror(ctypes.get_errno()))
fd = libc.open_by_handle_at(os.open("/work/src", os.O_RDONLY), ctypes.byref(handle), 0)
print("open_by_handle_at allowed" if fd >= 0 else "open_by_handle_at refused: " + os.strerror(ctypes.get_errno()))
PY
"#,
    );
    let mut inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    minimal_tree(&mut inv);
    let (tail, _) = collect(&RealHost::new(), &inv);
    let tail = tail.unwrap();
    let kept: u64 = [0u32, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31]
        .iter()
        .map(|bit| 1u64 << bit)
        .sum();
    let mask =
        |line: &str| u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(tail[0].starts_with("CapEff:"), "{tail:?}");
    assert_eq!(mask(&tail[0]), kept, "effective capabilities: {tail:?}");
    assert_eq!(mask(&tail[1]), kept, "permitted capabilities: {tail:?}");
    assert_eq!(
        tail[2], "NoNewPrivs:\t1",
        "neither set-uid programs nor file capabilities give any back"
    );
    assert_eq!(
        tail[3..],
        [
            "mount refused".to_owned(),
            "mknod refused".to_owned(),
            "open_by_handle_at refused: Operation not permitted".to_owned(),
        ],
    );
    assert_eq!(
        fs::read_to_string(l.project.join("canary")).unwrap(),
        "host file\n"
    );
}

#[test]
fn host_script_can_enter_the_tree_with_mkosi_chroot() {
    if !is_root("host_script_can_enter_the_tree_with_mkosi_chroot") {
        return;
    }
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.postinst",
        r#"#!/bin/sh
set -e
mkdir "$BUILDROOT/tmp"
mkosi-chroot sh -c 'echo "inside $BUILDROOT $SRCDIR $(pwd)"; echo via-helper > /etc/helper'
echo "outside $SRCDIR"
"#,
    );
    let mut inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    minimal_tree(&mut inv);
    let before = tree_listing(&l.root, Facts::Kinds);
    let (tail, _) = collect(&RealHost::new(), &inv);
    assert_eq!(
        tail.unwrap(),
        vec![
            "inside / /work/src /work/src".to_owned(),
            format!("outside {}", l.project.display()),
        ]
    );
    let mut after = tree_listing(&l.root, Facts::Kinds);
    assert_eq!(
        after.remove(Path::new("etc/helper")),
        Some("file".to_owned())
    );
    assert_eq!(
        after.remove(Path::new("tmp")),
        Some("dir".to_owned()),
        "what the host script created itself stays"
    );
    assert_eq!(after, before, "the helper's mount points are removed");
}

#[test]
fn chroot_script_without_network_has_only_loopback_and_no_resolv_conf() {
    if !is_root("chroot_script_without_network_has_only_loopback_and_no_resolv_conf") {
        return;
    }
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.finalize.chroot",
        "#!/bin/sh\nset -e\ngrep -c : /proc/net/dev\ntest -e /etc/resolv.conf && echo resolv || echo no-resolv\n",
    );
    let mut inv = ScriptInvocation::new(&s, "finalize", &l.root, &l.project, &l.output);
    minimal_tree(&mut inv);
    let (tail, _) = collect(&RealHost::new(), &inv);
    assert_eq!(tail.unwrap(), vec!["1".to_owned(), "no-resolv".to_owned()]);
}

#[test]
fn failing_chroot_script_reports_exit_code_and_output_tail() {
    if !is_root("failing_chroot_script_reports_exit_code_and_output_tail") {
        return;
    }
    let l = layout();
    let s = script(
        &l.project,
        "mkosi.finalize.chroot",
        "#!/bin/sh\necho before\necho 'it broke' >&2\nexit 3\n",
    );
    let mut inv = ScriptInvocation::new(&s, "finalize", &l.root, &l.project, &l.output);
    minimal_tree(&mut inv);
    let before = tree_listing(&l.root, Facts::Kinds);
    let err = RealHost::new().run_script(&inv, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`mkosi.finalize.chroot` failed with exit code 3"
    );
    let ScriptError::Failed { output_tail, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(
        output_tail,
        &vec!["before".to_owned(), "it broke".to_owned()]
    );
    assert_eq!(
        tree_listing(&l.root, Facts::Kinds),
        before,
        "mount points are removed after a failure too"
    );
}

#[test]
fn chroot_mount_point_on_a_symlink_is_refused() {
    if !is_root("chroot_mount_point_on_a_symlink_is_refused") {
        return;
    }
    let l = layout();
    let s = script(&l.project, "mkosi.postinst.chroot", "#!/bin/sh\n");
    let mut inv = ScriptInvocation::new(&s, "postinst", &l.root, &l.project, &l.output);
    minimal_tree(&mut inv);
    symlink("/elsewhere", l.root.join("tmp")).unwrap();
    let err = RealHost::new().run_script(&inv, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ScriptError::Sandbox { .. }), "{err:?}");
    assert!(err.to_string().contains("`/tmp` is a symlink"), "{err}");
}

/// Kills a process running a script and checks that the script dies with it. The process is
/// this test binary, started again to run [`script_child_process`].
fn killed_runner_takes_its_script_along(chroot: bool) {
    let tag = format!(
        "{}.{}{}",
        3000 + std::process::id() % 1000,
        std::process::id(),
        u8::from(chroot)
    );
    let l = layout();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "script_child_process",
            "--nocapture",
        ])
        .env("KILN_TEST_SLEEP", &tag)
        .env("KILN_TEST_CHROOT", if chroot { "1" } else { "0" })
        .env("KILN_TEST_DIR", l.project.parent().unwrap())
        // Where the killed process leaves its helper directory.
        .env("TMPDIR", l.project.parent().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleepers(&tag).is_empty() {
        assert!(Instant::now() < deadline, "the script never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleepers(&tag).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the script outlived the process that ran it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (not zombie) processes whose command line holds `tag`.
fn sleepers(tag: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == tag.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn killed_runner_takes_its_host_script_along() {
    if !is_root("killed_runner_takes_its_host_script_along") {
        return;
    }
    killed_runner_takes_its_script_along(false);
}

#[test]
fn killed_runner_takes_its_chroot_script_along() {
    if !is_root("killed_runner_takes_its_chroot_script_along") {
        return;
    }
    killed_runner_takes_its_script_along(true);
}

/// Not a test on its own: the process that the two tests above start and kill.
#[test]
#[ignore = "started by killed_runner_takes_its_*_script_along"]
fn script_child_process() {
    let (Ok(tag), Ok(chroot), Ok(dir)) = (
        std::env::var("KILN_TEST_SLEEP"),
        std::env::var("KILN_TEST_CHROOT"),
        std::env::var("KILN_TEST_DIR"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (project, output, root) = (dir.join("project"), dir.join("output"), dir.join("root"));
    let name = if chroot == "1" {
        "mkosi.postinst.chroot"
    } else {
        "mkosi.postinst"
    };
    let s = script(&project, name, &format!("#!/bin/sh\nsleep {tag}\n"));
    let mut inv = ScriptInvocation::new(&s, "postinst", &root, &project, &output);
    if inv.chroot {
        minimal_tree(&mut inv);
    }
    let _ = RealHost::new().run_script(&inv, &mut |_| {});
}
