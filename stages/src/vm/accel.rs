//! Choosing between KVM and TCG. `/dev/kvm` can exist and still fail to run a guest (under some
//! nested hypervisors KVM stops OVMF with "KVM internal error. Suberror: 1" and qemu then waits
//! forever), so `auto` trusts KVM only once a guest has really run under it: OVMF alone, which
//! must print on its serial port within [`PROBE_TIMEOUT`]; it is killed then either way.
//!
//! The answer is kept for the rest of the host's boot (a file in `/run/kiln`, or
//! `$XDG_RUNTIME_DIR/kiln` for other users), keyed by the boot id and the identity (path, size,
//! modification time) of the qemu program and the firmware, so a new qemu or firmware is probed
//! again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command_line::Accel;
use crate::host::{Host, HostError, ToolInvocation, WatchEnd};

/// How long OVMF gets to print something under KVM. It prints within a second under KVM; TCG
/// needs about five here.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the user asked for (`--accel`, `--kvm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when a guest really runs under it, else TCG.
    #[default]
    Auto,
    /// KVM, without probing; an error when /dev/kvm cannot be opened.
    Kvm,
    Tcg,
}

/// The outcome of running a guest under KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KvmProbe {
    pub works: bool,
    /// Why not, when it does not.
    pub reason: String,
}

/// The accelerator for `choice`, and a note for the user when `auto` fell back to TCG.
/// `device` says whether /dev/kvm can be opened (or why not); `probe` runs a guest under KVM
/// (only for `auto`, only when the device is there).
pub(super) fn resolve_accel(
    choice: AccelChoice,
    device: Result<(), String>,
    probe: impl FnOnce() -> KvmProbe,
) -> Result<(Accel, Option<String>), String> {
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, None)),
        AccelChoice::Kvm => device.map(|()| (Accel::Kvm, None)),
        AccelChoice::Auto => {
            if let Err(reason) = device {
                return Ok((
                    Accel::Tcg,
                    Some(format!("{reason}: booting with TCG, which is slower")),
                ));
            }
            let probe = probe();
            if probe.works {
                Ok((Accel::Kvm, None))
            } else {
                Ok((
                    Accel::Tcg,
                    Some(format!(
                        "KVM cannot run the firmware on this host ({}): booting with TCG, which \
                         is slower (checked once per boot of the host; --accel kvm forces KVM)",
                        probe.reason
                    )),
                ))
            }
        }
    }
}

/// Whether /dev/kvm can be opened for reading and writing, or why not.
pub(super) fn kvm_device() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => "/dev/kvm does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "/dev/kvm cannot be opened (permission denied; is the user in the kvm group?)"
                    .to_string()
            }
            _ => format!("/dev/kvm cannot be opened ({error})"),
        })
}

/// The arguments of the probe: OVMF under KVM with no disk, its serial port on stdout.
pub(super) fn probe_arguments(firmware_code: &Path, firmware_vars: &Path) -> Vec<String> {
    let drive = |options: &str, path: &Path| {
        format!(
            "if=pflash,format=raw,{options}file={}",
            path.to_string_lossy().replace(',', ",,")
        )
    };
    [
        "-machine",
        "type=q35,smm=off,hpet=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
        "-smp",
        "1",
        "-no-user-config",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-nic",
        "none",
        "-drive",
        &drive("readonly=on,", firmware_code),
        "-drive",
        &drive("", firmware_vars),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// Runs OVMF under KVM (`firmware_vars` is a writable copy the probe may change) and says
/// whether it printed anything within [`PROBE_TIMEOUT`]. The guest is killed in every case.
pub(super) fn probe_kvm(
    host: &dyn Host,
    qemu: &Path,
    firmware_code: &Path,
    firmware_vars: &Path,
) -> KvmProbe {
    let failed = |reason: String| KvmProbe {
        works: false,
        reason,
    };
    let invocation = ToolInvocation::new(qemu).args(probe_arguments(firmware_code, firmware_vars));
    let fatal =
        |line: &str| line.contains("KVM internal error") || line.contains("emulation failure");
    let watched = match host.watch_output(&invocation, PROBE_TIMEOUT, &fatal) {
        Ok(watched) => watched,
        Err(HostError::Spawn { source, .. }) => {
            return failed(format!("cannot start {}: {source}", qemu.display()));
        }
        Err(error) => return failed(format!("cannot start {}: {error}", qemu.display())),
    };
    let first_error = watched.errors.first().map(|line| format!("qemu: {line}"));
    match watched.end {
        WatchEnd::Printed => KvmProbe {
            works: true,
            reason: String::new(),
        },
        WatchEnd::Fatal => failed(first_error.unwrap_or_default()),
        WatchEnd::Exited => failed(
            first_error
                .unwrap_or_else(|| "qemu exited before the firmware printed anything".to_string()),
        ),
        WatchEnd::TimedOut => failed(first_error.unwrap_or_else(|| {
            format!(
                "the firmware printed nothing within {} s",
                PROBE_TIMEOUT.as_secs()
            )
        })),
    }
}

/// Where probe answers are kept: `/run/kiln` for root, else `$XDG_RUNTIME_DIR/kiln`.
pub(super) fn cache_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/run/kiln"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join("kiln"))
}

/// What a probe answer holds for: this boot of the host, this qemu, this firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbeKey {
    pub boot_id: String,
    pub qemu: String,
    pub firmware: String,
}

impl ProbeKey {
    /// The key for the running host, or `None` when the boot id cannot be read.
    pub(super) fn current(qemu: &Path, firmware_code: &Path) -> Option<ProbeKey> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(ProbeKey {
            boot_id: boot_id.trim().to_string(),
            qemu: file_identity(qemu),
            firmware: file_identity(firmware_code),
        })
    }
}

/// A file's path, size and modification time, as one line.
fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => format!(
            "{} {} {}.{:09}",
            path.display(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
        Err(_) => format!("{} missing", path.display()),
    }
}

/// The cache file's text for `probe` under `key`.
pub(super) fn format_answer(key: &ProbeKey, probe: &KvmProbe) -> String {
    format!(
        "boot_id={}\nqemu={}\nfirmware={}\nkvm={}\nreason={}\n",
        key.boot_id,
        key.qemu,
        key.firmware,
        if probe.works { "yes" } else { "no" },
        probe.reason.replace('\n', " ")
    )
}

/// The answer in `text` when it was recorded under `key`.
pub(super) fn parse_answer(text: &str, key: &ProbeKey) -> Option<KvmProbe> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
    };
    if field("boot_id")? != key.boot_id
        || field("qemu")? != key.qemu
        || field("firmware")? != key.firmware
    {
        return None;
    }
    let works = match field("kvm")? {
        "yes" => true,
        "no" => false,
        _ => return None,
    };
    Some(KvmProbe {
        works,
        reason: field("reason").unwrap_or_default().to_string(),
    })
}

/// The kept answer for `key` in `dir`, or the probe's, which is then kept (best effort: an
/// unwritable directory only costs a probe next time).
pub(super) fn cached_probe(
    dir: Option<&Path>,
    key: Option<&ProbeKey>,
    probe: impl FnOnce() -> KvmProbe,
) -> KvmProbe {
    let file = dir.map(|dir| dir.join("kvm-probe"));
    if let (Some(file), Some(key)) = (&file, key)
        && let Ok(text) = std::fs::read_to_string(file)
        && let Some(answer) = parse_answer(&text, key)
    {
        return answer;
    }
    let answer = probe();
    if let (Some(file), Some(key), Some(dir)) = (&file, key, dir) {
        let partial = dir.join(format!(".kvm-probe.{}", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&partial, format_answer(key, &answer)))
            .and_then(|()| std::fs::rename(&partial, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn no_probe() -> KvmProbe {
        panic!("no probe expected")
    }

    fn probe(works: bool) -> KvmProbe {
        KvmProbe {
            works,
            reason: if works { "" } else { "no output" }.to_string(),
        }
    }

    #[test]
    fn tcg_and_kvm_are_taken_as_asked() {
        assert_eq!(
            resolve_accel(AccelChoice::Tcg, Err("gone".into()), no_probe),
            Ok((Accel::Tcg, None))
        );
        assert_eq!(
            resolve_accel(AccelChoice::Kvm, Ok(()), no_probe),
            Ok((Accel::Kvm, None))
        );
        assert_eq!(
            resolve_accel(
                AccelChoice::Kvm,
                Err("/dev/kvm does not exist".into()),
                no_probe
            ),
            Err("/dev/kvm does not exist".to_string())
        );
    }

    #[test]
    fn auto_uses_kvm_only_when_a_guest_ran() {
        assert_eq!(
            resolve_accel(AccelChoice::Auto, Ok(()), || probe(true)),
            Ok((Accel::Kvm, None))
        );
        let (accel, note) = resolve_accel(AccelChoice::Auto, Ok(()), || probe(false)).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(note.unwrap().contains("no output"));
        let (accel, note) = resolve_accel(
            AccelChoice::Auto,
            Err("/dev/kvm does not exist".into()),
            no_probe,
        )
        .unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(note.unwrap().starts_with("/dev/kvm does not exist"));
    }

    fn key() -> ProbeKey {
        ProbeKey {
            boot_id: "b1".into(),
            qemu: "/usr/bin/qemu-system-x86_64 100 5.000000000".into(),
            firmware: "/usr/share/OVMF/OVMF_CODE_4M.fd 200 6.000000000".into(),
        }
    }

    #[test]
    fn answers_hold_for_their_key_only() {
        let answer = probe(false);
        let text = format_answer(&key(), &answer);
        assert_eq!(parse_answer(&text, &key()), Some(answer));
        for other in [
            ProbeKey {
                boot_id: "b2".into(),
                ..key()
            },
            ProbeKey {
                qemu: "/usr/bin/qemu-system-x86_64 101 5.000000000".into(),
                ..key()
            },
            ProbeKey {
                firmware: "other".into(),
                ..key()
            },
        ] {
            assert_eq!(parse_answer(&text, &other), None);
        }
        assert_eq!(parse_answer("kvm=maybe", &key()), None);
    }

    #[test]
    fn a_kept_answer_saves_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Cell::new(0);
        let run = || {
            runs.set(runs.get() + 1);
            probe(true)
        };
        let cache = Some(dir.path());
        assert!(cached_probe(cache, Some(&key()), run).works);
        assert!(cached_probe(cache, Some(&key()), run).works);
        assert_eq!(runs.get(), 1);
        let next_boot = ProbeKey {
            boot_id: "b2".into(),
            ..key()
        };
        cached_probe(cache, Some(&next_boot), run);
        assert_eq!(runs.get(), 2);
        // Without a place to keep it, every call probes.
        cached_probe(None, Some(&key()), run);
        assert_eq!(runs.get(), 3);
    }

    #[test]
    fn probe_arguments_run_ovmf_under_kvm_without_disks() {
        let args = probe_arguments(Path::new("/fw/CODE.fd"), Path::new("/tmp/VARS.fd"));
        let text = args.join(" ");
        assert!(text.contains("-accel kvm -cpu host"), "{text}");
        assert!(text.contains("-serial stdio"), "{text}");
        assert!(
            text.contains("-drive if=pflash,format=raw,readonly=on,file=/fw/CODE.fd"),
            "{text}"
        );
        assert!(!text.contains("fat:"), "{text}");
    }
}
