//! `kiln qemu` end to end: a tiny UKI (Debian's systemd-stub and kernel around a busybox initrd
//! whose `/init` prints a marker with the kernel command line and powers off) in a project's
//! `mkosi.output/`, booted under OVMF with TCG: from the ESP, and with extra kernel arguments;
//! kiln's exit code is qemu's; killing kiln leaves no qemu behind, and a SIGTERM to kiln stops
//! qemu, whose status kiln returns.
//!
//! Every run of kiln here has a deadline ([`DEADLINE`]) and leads its own process group, which
//! is killed whole (kiln and qemu) when the deadline passes or the test fails.

mod common;
#[path = "../stages/tests/support/debian.rs"]
mod debian;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_test_support::Need;

use kiln_stages::initrd::newc::{self, Header, file_type};
use kiln_stages::uki::{UkiInputs, assemble_uki, ukify_sections};

/// The line the guest's `/init` prints, followed by the kernel command line.
const MARKER: &str = "KILN-QEMU-MARKER";

/// The longest a boot may take before the test gives up and kills it. A boot with TCG takes
/// about 20 s here.
const DEADLINE: Duration = Duration::from_secs(180);

/// The UKI's own command line.
const BUILT_IN_CMDLINE: &str = "console=ttyS0 panic=-1";

/// qemu's isa-debug-exit device: the guest's write of N to port 0xf4 ends qemu with 2N + 1.
const DEBUG_EXIT: &str = "-device isa-debug-exit,iobase=0xf4,iosize=0x04";

/// The guest's `/init`: mounts what it needs, prints the marker and the command line, then
/// leaves with the status asked for by `kiln_test_exit=N` (through qemu's isa-debug-exit port,
/// which makes qemu exit with `2N + 1`), stays up for good with `kiln_test_stay`, or powers
/// off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
cmdline=$(/bin/busybox cat /proc/cmdline)
/bin/busybox echo "KILN-QEMU-MARKER $cmdline"
for word in $cmdline; do
    case "$word" in
        kiln_test_exit=*)
            code=${word#kiln_test_exit=}
            /bin/busybox printf "\\$(/bin/busybox printf %o "$code")" \
                | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
            ;;
        kiln_test_stay)
            while :; do /bin/busybox sleep 3600; done
            ;;
    esac
done
/bin/busybox poweroff -f
"#;

/// An uncompressed newc archive holding busybox and the marker `/init`.
fn busybox_initrd() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut out = Vec::new();
    let mut ino = 0;
    let mut entry = |name: &str, mode: u32, data: &[u8], out: &mut Vec<u8>| {
        ino += 1;
        Header {
            ino,
            mode,
            nlink: if mode & file_type::DIR != 0 { 2 } else { 1 },
            file_size: data.len() as u32,
            ..Header::default()
        }
        .encode(name, out);
        out.extend_from_slice(data);
        out.resize(out.len() + newc::padding(data.len()), 0);
    };
    for dir in ["bin", "dev", "proc", "sys"] {
        entry(dir, file_type::DIR | 0o755, &[], &mut out);
    }
    entry(
        "bin/busybox",
        file_type::REGULAR | 0o755,
        &busybox,
        &mut out,
    );
    entry(
        "init",
        file_type::REGULAR | 0o755,
        INIT.as_bytes(),
        &mut out,
    );
    newc::encode_trailer(&mut out);
    out
}

/// Assembles the test UKI at `out`, its command line [`BUILT_IN_CMDLINE`].
fn build_test_uki(files: &debian::BootFiles, work: &Path, out: &Path) {
    std::fs::write(work.join("initrd"), busybox_initrd()).unwrap();
    std::fs::write(
        work.join("os-release"),
        "PRETTY_NAME=\"kiln qemu test\"\nID=kiln-test\n",
    )
    .unwrap();
    let inputs = UkiInputs {
        stub: files.stub.clone(),
        kernel: files.kernel.clone(),
        kernel_version: files.kernel_version.clone(),
        os_release: work.join("os-release"),
        initrd: work.join("initrd"),
        cmdline: BUILT_IN_CMDLINE.to_string(),
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), out).unwrap();
}

/// The running test's name, for skip messages.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("qemu test")
        .to_string()
}

/// Whether the test can go on (see [`kiln_test_support::skip_unless`]).
fn require(reason_if_missing: Option<String>) -> bool {
    kiln_test_support::skip_unless(reason_if_missing)
}

/// A project whose `mkosi.output/` holds the test UKI as a versioned file and its unversioned
/// link, as `kiln build` leaves a `Format=uki` output; `None` (after saying why) when the
/// machine lacks qemu, OVMF, a static busybox or Debian's stub and kernel.
fn booting_project() -> Option<tempfile::TempDir> {
    if !kiln_test_support::require(
        &test_name(),
        &[
            Need::Tool("qemu-system-x86_64"),
            Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            Need::File("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            Need::File("/bin/busybox"),
        ],
    ) {
        return None;
    }
    let dynamic = Command::new("ldd")
        .arg("/bin/busybox")
        .output()
        .is_ok_and(|output| output.status.success());
    if !require(dynamic.then(|| "/bin/busybox is not static: install busybox-static".to_string())) {
        return None;
    }
    let files = match debian::boot_files() {
        Ok(files) => files,
        Err(reason) => {
            require(Some(reason));
            return None;
        }
    };
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Output]\nFormat=uki\nImageId=qemu-test\nImageVersion=1.0\n",
    )
    .unwrap();
    let output = project.path().join("mkosi.output");
    let work = project.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    build_test_uki(&files, &work, &output.join("qemu-test_1.0.efi"));
    std::os::unix::fs::symlink("qemu-test_1.0.efi", output.join("qemu-test.efi")).unwrap();
    Some(project)
}

/// A running `kiln`, leading its own process group; the group (kiln and its qemu) is killed
/// when this is dropped.
struct Kiln {
    child: Child,
    /// Each chunk of stdout (the guest's serial console) as it comes.
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
}

impl Kiln {
    fn start(project: &Path, args: &[&str]) -> Kiln {
        let mut child = common::kiln()
            .arg("-C")
            .arg(project)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (chunks, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 || chunks.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = err.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        Kiln {
            child,
            stdout,
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    fn time_left(&self) -> Duration {
        DEADLINE.saturating_sub(self.started.elapsed())
    }

    /// Reads the console until `wanted` says it has seen enough; panics at the deadline.
    fn read_until(&self, console: &mut Vec<u8>, wanted: impl Fn(&[u8]) -> bool) {
        while !wanted(console) {
            match self.stdout.recv_timeout(self.time_left()) {
                Ok(chunk) => console.extend(chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the console closed early:\n{}",
                        String::from_utf8_lossy(console)
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no boot within {DEADLINE:?}:\n{}",
                    String::from_utf8_lossy(console)
                ),
            }
        }
    }

    /// Waits for kiln to exit; returns its status, the console and its stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let mut console = Vec::new();
        loop {
            while let Ok(chunk) = self.stdout.try_recv() {
                console.extend(chunk);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything qemu printed is in the pipe once kiln (which waited for it) exits.
                while let Ok(chunk) = self.stdout.recv_timeout(Duration::from_secs(5)) {
                    console.extend(chunk);
                }
                let stderr = self.stderr.take().unwrap().join().unwrap();
                return (
                    status,
                    String::from_utf8_lossy(&console).into_owned(),
                    stderr,
                );
            }
            if self.time_left().is_zero() {
                panic!(
                    "kiln qemu did not finish within {DEADLINE:?}:\n{}",
                    String::from_utf8_lossy(&console)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        // SAFETY: plain system call on the group this test created.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The marker line the guest printed.
fn marker_line(console: &str) -> &str {
    console
        .lines()
        .find(|line| line.starts_with(MARKER))
        .unwrap_or_else(|| panic!("no marker on the console:\n{console}"))
        .trim_end()
}

/// The pids of the processes whose parent is `parent` and whose name starts with `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((comm, rest)) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
        else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) && comm.starts_with(name) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is gone (or a zombie waiting to be reaped).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Boots a guest that stays up until it has printed its marker; returns kiln and the pid of
/// its qemu.
fn running_qemu(project: &Path) -> (Kiln, u32) {
    let kiln = Kiln::start(project, &["qemu", "--accel", "tcg", "--", "kiln_test_stay"]);
    let mut console = Vec::new();
    kiln.read_until(&mut console, |seen| {
        String::from_utf8_lossy(seen).contains(&format!("{MARKER} "))
    });
    let qemu = children_named(kiln.child.id(), "qemu-system");
    assert_eq!(qemu.len(), 1, "kiln's qemu children: {qemu:?}");
    (kiln, qemu[0])
}

#[test]
fn boots_the_uki_from_the_esp_with_its_own_command_line() {
    let Some(project) = booting_project() else {
        return;
    };
    let kiln = Kiln::start(project.path(), &["qemu", "--accel", "tcg", "--ram", "512M"]);
    let (status, console, stderr) = kiln.finish();
    assert_eq!(
        marker_line(&console),
        format!("{MARKER} {BUILT_IN_CMDLINE}"),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(0), "the guest powered off: {stderr}");
    assert!(stderr.contains("with TCG, 512 MiB, 1 CPU"), "{stderr}");
}

#[test]
fn extra_kernel_arguments_reach_the_kernel_and_qemus_status_is_kilns() {
    let Some(project) = booting_project() else {
        return;
    };
    let kiln = Kiln::start(
        project.path(),
        &[
            "qemu",
            "--accel",
            "tcg",
            "--qemu-args",
            DEBUG_EXIT,
            "--",
            "kiln.marker=extra-42",
            "kiln_test_exit=21",
        ],
    );
    let (status, console, stderr) = kiln.finish();
    // Debian's systemd-stub 252 takes the load options instead of its `.cmdline`: kiln passes
    // the UKI's own command line, then the extra arguments.
    assert_eq!(
        marker_line(&console),
        format!("{MARKER} {BUILT_IN_CMDLINE} kiln.marker=extra-42 kiln_test_exit=21"),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(2 * 21 + 1), "{stderr}");
}

#[test]
fn killing_kiln_leaves_no_qemu() {
    let Some(project) = booting_project() else {
        return;
    };
    let (mut kiln, qemu) = running_qemu(project.path());
    let kiln_pid = kiln.child.id();
    kiln.child.kill().unwrap();
    kiln.child.wait().unwrap();
    // What the killed kiln could not remove (the next `kiln qemu` would).
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("kiln-qemu-{kiln_pid}-"))
        {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    let gone = Instant::now() + Duration::from_secs(30);
    while !is_gone(qemu) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = !is_gone(qemu);
    // Never leave it running, whatever the outcome.
    // SAFETY: plain system call.
    unsafe {
        libc::kill(qemu as libc::pid_t, libc::SIGKILL);
    }
    assert!(!left, "qemu {qemu} outlived kiln");
}

#[test]
fn sigterm_to_kiln_stops_qemu_and_kiln_exits_with_its_status() {
    let Some(project) = booting_project() else {
        return;
    };
    let (kiln, qemu) = running_qemu(project.path());
    // SAFETY: plain system call on the kiln this test started.
    unsafe {
        libc::kill(kiln.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let (status, _, stderr) = kiln.finish();
    assert!(is_gone(qemu), "qemu {qemu} outlived kiln");
    // qemu ends on SIGTERM with status 0, and kiln, which waited for it, with the same.
    assert!(stderr.contains("terminating on signal 15"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn an_image_not_built_yet_or_not_a_uki_is_a_clear_error() {
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Output]\nFormat=uki\nImageId=qemu-test\nImageVersion=1.0\n",
    )
    .unwrap();
    let output = common::kiln()
        .arg("-C")
        .arg(project.path())
        .arg("qemu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mkosi.output/qemu-test_1.0.efi"),
        "{stderr}"
    );
    assert!(stderr.contains("Run `kiln build` first"), "{stderr}");

    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Output]\nFormat=directory\n",
    )
    .unwrap();
    let output = common::kiln()
        .arg("-C")
        .arg(project.path())
        .arg("qemu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Format=directory"), "{stderr}");
}
