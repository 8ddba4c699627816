//! Booting a built UKI in a virtual machine (`kiln qemu`, mkosi's `qemu`/`vm` verb): qemu with
//! OVMF, the UKI on an ESP, the serial console on the terminal.
//!
//! [`boot`] finds qemu and the firmware, reads the UKI's command line and stub version, lays out
//! a private directory (the ESP holding the UKI as `EFI/BOOT/BOOTX64.EFI`, a copy of the
//! firmware's variable store; one a killed kiln left behind is removed by the next boot),
//! chooses the accelerator ([`accel`]), builds the command line
//! ([`command_line`], pure) and runs qemu in the foreground through
//! [`Host::run_foreground`]: qemu's exit code is the result, and qemu never outlives kiln.
//!
//! ```no_run
//! use kiln_stages::host::RealHost;
//! use kiln_stages::vm::{VmRequest, boot};
//! let request = VmRequest::new("mkosi.output/image.efi");
//! let code = boot(&RealHost::new(), &request, &mut |note| eprintln!("note: {note}"))?;
//! std::process::exit(code);
//! # Ok::<(), kiln_stages::vm::VmError>(())
//! ```

mod accel;
pub mod command_line;

use std::fs::File;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::host::{Host, HostError, ToolInvocation};
use crate::pe::{PeError, PeHeaders};
pub use accel::AccelChoice;
pub use command_line::{Accel, Boot, ESP_UKI, Machine, OVMF_CODE, OVMF_VARS, QEMU, UkiFacts};

/// mkosi's default `RAM=`.
pub const DEFAULT_RAM: u64 = 2 << 30;

/// mkosi's default `CPUs=`.
pub const DEFAULT_CPUS: u32 = 1;

/// What to boot, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    /// The UKI (the output of a `Format=uki` build).
    pub uki: PathBuf,
    /// The image's architecture as the recipe names it (`x86-64`).
    pub architecture: String,
    pub ram_bytes: u64,
    /// 0: as many as the host has.
    pub cpus: u32,
    pub accel: AccelChoice,
    /// Appended to the UKI's command line.
    pub kernel_args: Vec<String>,
    /// Appended to qemu's command line.
    pub qemu_args: Vec<String>,
}

impl VmRequest {
    /// An x86-64 UKI with mkosi's defaults.
    pub fn new(uki: impl Into<PathBuf>) -> VmRequest {
        VmRequest {
            uki: uki.into(),
            architecture: "x86-64".to_string(),
            ram_bytes: DEFAULT_RAM,
            cpus: DEFAULT_CPUS,
            accel: AccelChoice::Auto,
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
        }
    }
}

/// Why a virtual machine could not be started.
#[derive(Debug, Error, Diagnostic)]
pub enum VmError {
    #[error("`{program}` is not installed")]
    #[diagnostic(help("Install qemu: apt-get install qemu-system-x86"))]
    QemuMissing { program: &'static str },

    #[error("The UEFI firmware `{}` is missing", path.display())]
    #[diagnostic(help("Install OVMF: apt-get install ovmf"))]
    FirmwareMissing { path: PathBuf },

    #[error("kiln qemu boots x86-64 images; this image is for `{architecture}`")]
    #[diagnostic(help("Build the image with Architecture=x86-64"))]
    UnsupportedArchitecture { architecture: String },

    #[error("KVM was asked for, but {reason}")]
    #[diagnostic(help(
        "Use --accel auto (KVM when it works, else TCG) or --accel tcg; to use KVM, load the kvm \
         module and give the user access to /dev/kvm"
    ))]
    KvmUnavailable { reason: String },

    #[error("Cannot read the UKI `{}`", path.display())]
    #[diagnostic(help("Rebuild it with `kiln -f build`"))]
    Uki {
        path: PathBuf,
        #[source]
        problem: PeError,
    },

    #[error("Failed to {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("The temporary directory `{}` is not valid UTF-8, which qemu's options need", path.display())]
    #[diagnostic(help("Set TMPDIR to a directory whose path is UTF-8"))]
    NonUtf8Path { path: PathBuf },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Host(#[from] HostError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io {
        action,
        path,
        source,
    }
}

/// Boots `request` and returns qemu's exit code. `note` receives what the user should know
/// (the accelerator chosen and why, how to leave) before qemu starts.
pub fn boot(
    host: &dyn Host,
    request: &VmRequest,
    note: &mut dyn FnMut(&str),
) -> Result<i32, VmError> {
    if crate::uki::lookup::efi_arch(&request.architecture) != Some("x64") {
        return Err(VmError::UnsupportedArchitecture {
            architecture: request.architecture.clone(),
        });
    }
    let qemu = crate::host::find_tool(QEMU).ok_or(VmError::QemuMissing { program: QEMU })?;
    for firmware in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(firmware).is_file() {
            return Err(VmError::FirmwareMissing {
                path: firmware.into(),
            });
        }
    }
    let facts = read_uki_facts(&request.uki)?;

    let temp = std::env::temp_dir();
    remove_abandoned_scratch(&temp);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(&temp)
        .map_err(io_error("create", &temp))?;
    if scratch.path().to_str().is_none() {
        return Err(VmError::NonUtf8Path {
            path: scratch.path().to_path_buf(),
        });
    }
    let esp = scratch.path().join("esp");
    let uki_on_esp = esp.join(ESP_UKI);
    let boot_dir = uki_on_esp.parent().expect("ESP_UKI has a directory");
    std::fs::create_dir_all(boot_dir).map_err(io_error("create", boot_dir))?;
    // A copy, not a link: qemu's `fat:rw:` writes what the guest changes back to the directory.
    std::fs::copy(&request.uki, &uki_on_esp).map_err(io_error("copy", &request.uki))?;
    let firmware_vars = scratch.path().join("OVMF_VARS_4M.fd");
    std::fs::copy(OVMF_VARS, &firmware_vars).map_err(io_error("copy", Path::new(OVMF_VARS)))?;

    let (accel, accel_note) = accel::resolve_accel(request.accel, accel::kvm_device(), || {
        let key = accel::ProbeKey::current(&qemu, Path::new(OVMF_CODE));
        accel::cached_probe(accel::cache_dir().as_deref(), key.as_ref(), || {
            let probe_vars = scratch.path().join("probe-vars.fd");
            match std::fs::copy(OVMF_VARS, &probe_vars) {
                Ok(_) => accel::probe_kvm(host, &qemu, Path::new(OVMF_CODE), &probe_vars),
                Err(error) => accel::KvmProbe {
                    works: false,
                    reason: format!("cannot copy {OVMF_VARS}: {error}"),
                },
            }
        })
    })
    .map_err(|reason| VmError::KvmUnavailable { reason })?;
    if let Some(text) = accel_note {
        note(&text);
    }

    let cpus = match request.cpus {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let machine = Machine {
        accel,
        ram_bytes: request.ram_bytes,
        cpus,
        firmware_code: OVMF_CODE.into(),
        firmware_vars,
        esp,
        boot: command_line::plan_boot(&facts, &request.kernel_args),
        extra_qemu_args: request.qemu_args.clone(),
    };
    note(&format!(
        "booting {} with {}, {} MiB, {} CPU{}; Ctrl-A X leaves qemu",
        request.uki.display(),
        accel.name(),
        machine.ram_bytes >> 20,
        cpus,
        if cpus == 1 { "" } else { "s" }
    ));
    let mut invocation = ToolInvocation::new(qemu);
    invocation.args = command_line::qemu_arguments(&machine);
    let code = host.run_foreground(&invocation)?;
    drop(scratch);
    Ok(code)
}

/// The start of the name of a boot's private directory, followed by kiln's pid and `-`.
const SCRATCH_PREFIX: &str = "kiln-qemu-";

/// Removes the private directories (each holding a copy of a UKI) that a kiln killed while
/// qemu ran left in `temp`: those named after a pid that no longer runs.
fn remove_abandoned_scratch(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owned_by_us = entry.metadata().is_ok_and(|meta| {
            std::os::unix::fs::MetadataExt::uid(&meta) == rustix::process::geteuid().as_raw()
        });
        if owned_by_us && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The UKI's `.cmdline` and stub version.
pub fn read_uki_facts(uki: &Path) -> Result<UkiFacts, VmError> {
    let malformed = |problem| VmError::Uki {
        path: uki.to_path_buf(),
        problem,
    };
    let mut file = File::open(uki).map_err(io_error("open", uki))?;
    let headers = PeHeaders::read(&mut file).map_err(malformed)?;
    let mut section = |name: &str| -> Result<Option<Vec<u8>>, VmError> {
        match headers.section(name) {
            Some(section) => headers
                .read_section(&mut file, section, 1 << 20)
                .map(Some)
                .map_err(malformed),
            None => Ok(None),
        }
    };
    let cmdline = section(".cmdline")?;
    let sdmagic = section(".sdmagic")?;
    Ok(command_line::uki_facts(
        cmdline.as_deref(),
        sdmagic.as_deref(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_dead_kilns_are_removed() {
        let temp = tempfile::tempdir().unwrap();
        let dead = (1..4_000_000u32)
            .rev()
            .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .unwrap();
        let alive = std::process::id();
        let names = [
            format!("{SCRATCH_PREFIX}{dead}-aBc123"),
            format!("{SCRATCH_PREFIX}{alive}-dEf456"),
            format!("{SCRATCH_PREFIX}notapid"),
            "other".to_string(),
        ];
        for name in &names {
            std::fs::create_dir_all(temp.path().join(name).join("esp")).unwrap();
        }
        remove_abandoned_scratch(temp.path());
        let left: Vec<bool> = names
            .iter()
            .map(|name| temp.path().join(name).exists())
            .collect();
        assert_eq!(left, [false, true, true, true]);
    }

    #[test]
    fn only_x86_64_images_boot() {
        let request = VmRequest {
            architecture: "arm64".to_string(),
            ..VmRequest::new("image.efi")
        };
        let host = crate::host::RecordingHost::new();
        let error = boot(&host, &request, &mut |_| {}).unwrap_err();
        assert!(matches!(error, VmError::UnsupportedArchitecture { .. }));
        assert!(host.calls().is_empty());
    }

    #[test]
    fn a_uki_that_cannot_be_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_pe = dir.path().join("not-pe.efi");
        std::fs::write(&not_pe, b"MZ but nothing else").unwrap();
        assert!(matches!(read_uki_facts(&not_pe), Err(VmError::Uki { .. })));
        assert!(matches!(
            read_uki_facts(&dir.path().join("missing.efi")),
            Err(VmError::Io { .. })
        ));
    }
}
