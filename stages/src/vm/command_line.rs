//! The qemu command line of `kiln qemu`, as pure functions of what was decided: which
//! accelerator, how much memory, which firmware files, where the ESP is, and how the extra kernel
//! arguments reach the kernel.
//!
//! The machine follows mkosi's (`mkosi/qemu.py`): a q35 machine without SMM (the firmware is
//! OVMF without Secure Boot) or HPET, a virtio RNG and balloon, user networking with a virtio
//! NIC, `-cpu host` under KVM and `-cpu max` under TCG, no default devices. The console differs:
//! mkosi puts a virtio console on stdio and adds `console=hvc0` to the kernel command line; kiln
//! cannot add to the command line of every stub (see [`plan_boot`]), so the terminal is the
//! first serial port (`-serial mon:stdio`: Ctrl-C goes to the guest, Ctrl-A X leaves qemu,
//! Ctrl-A C toggles the monitor) and the UKI's command line should say `console=ttyS0`.
//!
//! The UKI boots from an ESP the way firmware boots a removable disk: OVMF finds
//! `EFI/BOOT/BOOTX64.EFI` on a FAT filesystem. The ESP is a directory that qemu presents as a
//! FAT disk (`fat:rw:`), so no vfat driver, loop device or mtools is needed.

use std::path::{Path, PathBuf};

/// The qemu program for x86-64 guests.
pub const QEMU: &str = "qemu-system-x86_64";

/// OVMF's firmware code, read-only (Debian's `ovmf` package, 4 MiB flash, no Secure Boot).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";

/// OVMF's variable store template; each boot writes to a private copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Where the UKI sits on the ESP: the removable-media path firmware boots without any boot entry.
pub const ESP_UKI: &str = "EFI/BOOT/BOOTX64.EFI";

/// The first systemd-stub that appends the SMBIOS OEM string
/// `io.systemd.stub.kernel-cmdline-extra` to its command line.
pub const STUB_WITH_CMDLINE_EXTRA: u32 = 254;

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// The host's CPU, through /dev/kvm.
    Kvm,
    /// qemu's emulator: slower, but runs anywhere.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// How the UKI is started and how extra kernel arguments reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The firmware boots `EFI/BOOT/BOOTX64.EFI` from the ESP; the UKI's own command line is used.
    Esp,
    /// As [`Boot::Esp`], the extra arguments in the SMBIOS OEM string
    /// `io.systemd.stub.kernel-cmdline-extra`, which systemd-stub 254 and later append to the
    /// UKI's command line (as mkosi passes them).
    EspWithCmdlineExtra { extra: String },
    /// The firmware starts the UKI given with `-kernel`, its load options set to `cmdline`
    /// (`-append`). Without Secure Boot, systemd-stub before 254 (Debian 12 has 252) takes the load
    /// options *instead of* its `.cmdline` and ignores SMBIOS: `cmdline` is therefore the UKI's
    /// own command line followed by the extra arguments.
    DirectWithCmdline { cmdline: String },
}

/// What a UKI says about itself that decides how extra arguments can reach its kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UkiFacts {
    /// The `.cmdline` section, without its trailing NUL and white space.
    pub cmdline: Option<String>,
    /// The systemd-stub major version from `.sdmagic` (`#### LoaderInfo: systemd-stub 252.39-1 ####`).
    pub stub_version: Option<u32>,
}

/// Everything the qemu command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub accel: Accel,
    /// Guest memory in bytes (rounded down to MiB for qemu).
    pub ram_bytes: u64,
    pub cpus: u32,
    /// The firmware code, mapped read-only.
    pub firmware_code: PathBuf,
    /// The private, writable copy of the variable store.
    pub firmware_vars: PathBuf,
    /// The directory qemu presents as the ESP; the UKI is at [`ESP_UKI`] in it.
    pub esp: PathBuf,
    pub boot: Boot,
    /// Appended last, as given (mkosi's `QemuArgs=`).
    pub extra_qemu_args: Vec<String>,
}

impl Machine {
    /// The UKI's path on the ESP directory.
    pub fn uki_on_esp(&self) -> PathBuf {
        self.esp.join(ESP_UKI)
    }
}

/// The arguments of the qemu program (without the program itself).
pub fn qemu_arguments(machine: &Machine) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|item| item.to_string()));
    push(&["-machine", "type=q35,smm=off,hpet=off"]);
    push(&["-smp", &machine.cpus.max(1).to_string()]);
    push(&["-m", &format!("{}M", (machine.ram_bytes >> 20).max(1))]);
    push(&[
        "-object",
        "rng-random,filename=/dev/urandom,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0,id=rng-device0",
        "-device",
        "virtio-balloon,free-page-reporting=on",
        "-no-user-config",
        "-nic",
        "user,model=virtio-net-pci",
    ]);
    match machine.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&["-nographic", "-nodefaults", "-serial", "mon:stdio"]);
    push(&[
        "-drive",
        &format!(
            "if=pflash,format=raw,readonly=on,file={}",
            option_value(&machine.firmware_code)
        ),
        "-drive",
        &format!(
            "if=pflash,format=raw,file={}",
            option_value(&machine.firmware_vars)
        ),
        "-drive",
        &format!(
            "if=none,id=esp,format=raw,file=fat:rw:{}",
            option_value(&machine.esp)
        ),
        "-device",
        "virtio-blk-pci,drive=esp,bootindex=1",
    ]);
    match &machine.boot {
        Boot::Esp => {}
        Boot::EspWithCmdlineExtra { extra } => push(&[
            "-smbios",
            &format!(
                "type=11,value=io.systemd.stub.kernel-cmdline-extra={}",
                extra.replace(',', ",,")
            ),
        ]),
        Boot::DirectWithCmdline { cmdline } => push(&[
            "-kernel",
            &machine.uki_on_esp().to_string_lossy(),
            "-append",
            cmdline,
        ]),
    }
    args.extend(machine.extra_qemu_args.iter().cloned());
    args
}

/// A path as the value of a qemu `key=value,...` option: commas doubled.
fn option_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// How the extra kernel arguments reach the kernel of a UKI with `facts` (see [`Boot`]).
pub fn plan_boot(facts: &UkiFacts, extra: &[String]) -> Boot {
    if extra.is_empty() {
        return Boot::Esp;
    }
    let extra = kernel_arguments(extra);
    if facts
        .stub_version
        .is_some_and(|version| version >= STUB_WITH_CMDLINE_EXTRA)
    {
        return Boot::EspWithCmdlineExtra { extra };
    }
    let cmdline = match facts.cmdline.as_deref().filter(|line| !line.is_empty()) {
        Some(built_in) => format!("{built_in} {extra}"),
        None => extra,
    };
    Boot::DirectWithCmdline { cmdline }
}

/// Kernel arguments as one command line; a value holding a space is quoted, as mkosi does
/// (`key="a b"`).
pub fn kernel_arguments(arguments: &[String]) -> String {
    arguments
        .iter()
        .map(|argument| match argument.split_once('=') {
            Some((key, value)) if value.contains(' ') && !value.starts_with('"') => {
                format!("{key}=\"{value}\"")
            }
            _ => argument.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads what [`UkiFacts`] holds from the `.cmdline` and `.sdmagic` section contents.
pub fn uki_facts(cmdline: Option<&[u8]>, sdmagic: Option<&[u8]>) -> UkiFacts {
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .trim_end_matches(['\0', '\n', ' ', '\t', '\r'])
            .to_string()
    };
    let stub_version = sdmagic.map(text).and_then(|magic| {
        let version = magic
            .trim_start_matches('#')
            .trim()
            .strip_prefix("LoaderInfo: systemd-stub ")?;
        let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    UkiFacts {
        cmdline: cmdline.map(text),
        stub_version,
    }
}

/// A size as mkosi's `RAM=` takes it: bytes, or a number (possibly with a fraction) followed by
/// `K`, `M` or `G` (powers of 1024), rounded up to 4 KiB.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, factor) = match text.char_indices().last() {
        Some((at, 'G')) => (&text[..at], 1u64 << 30),
        Some((at, 'M')) => (&text[..at], 1 << 20),
        Some((at, 'K')) => (&text[..at], 1 << 10),
        _ => (text, 1),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 2G, 512M or 1073741824"))?;
    let bytes = (value * factor as f64).ceil();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64 / 2.0) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok((bytes as u64).div_ceil(4096) * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(accel: Accel, boot: Boot) -> Machine {
        Machine {
            accel,
            ram_bytes: 2 << 30,
            cpus: 1,
            firmware_code: OVMF_CODE.into(),
            firmware_vars: "/tmp/kiln-qemu-x/OVMF_VARS_4M.fd".into(),
            esp: "/tmp/kiln-qemu-x/esp".into(),
            boot,
            extra_qemu_args: Vec::new(),
        }
    }

    /// The value following each occurrence of `option`.
    fn values<'a>(args: &'a [String], option: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|pair| pair[0] == option)
            .map(|pair| pair[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_and_kvm_pick_their_cpu() {
        let tcg = qemu_arguments(&machine(Accel::Tcg, Boot::Esp));
        assert_eq!(values(&tcg, "-accel"), ["tcg"]);
        assert_eq!(values(&tcg, "-cpu"), ["max"]);
        let kvm = qemu_arguments(&machine(Accel::Kvm, Boot::Esp));
        assert_eq!(values(&kvm, "-accel"), ["kvm"]);
        assert_eq!(values(&kvm, "-cpu"), ["host"]);
    }

    #[test]
    fn memory_cpus_and_console() {
        let mut m = machine(Accel::Tcg, Boot::Esp);
        m.ram_bytes = parse_bytes("1.5G").unwrap();
        m.cpus = 4;
        let args = qemu_arguments(&m);
        assert_eq!(values(&args, "-m"), ["1536M"]);
        assert_eq!(values(&args, "-smp"), ["4"]);
        assert_eq!(values(&args, "-serial"), ["mon:stdio"]);
        assert!(args.contains(&"-nographic".to_string()));
        assert!(args.contains(&"-nodefaults".to_string()));
        assert_eq!(values(&args, "-machine"), ["type=q35,smm=off,hpet=off"]);
    }

    #[test]
    fn firmware_and_esp() {
        let args = qemu_arguments(&machine(Accel::Tcg, Boot::Esp));
        assert_eq!(
            values(&args, "-drive"),
            [
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "if=pflash,format=raw,file=/tmp/kiln-qemu-x/OVMF_VARS_4M.fd",
                "if=none,id=esp,format=raw,file=fat:rw:/tmp/kiln-qemu-x/esp",
            ]
        );
        assert_eq!(
            values(&args, "-device").last(),
            Some(&"virtio-blk-pci,drive=esp,bootindex=1")
        );
        assert!(values(&args, "-kernel").is_empty());
        assert!(values(&args, "-smbios").is_empty());
        assert!(values(&args, "-append").is_empty());
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut m = machine(Accel::Tcg, Boot::Esp);
        m.esp = "/tmp/a,b/esp".into();
        let args = qemu_arguments(&m);
        assert!(
            values(&args, "-drive")
                .contains(&"if=none,id=esp,format=raw,file=fat:rw:/tmp/a,,b/esp")
        );
    }

    #[test]
    fn extra_arguments_by_stub_version() {
        let extra = ["kiln.marker=1".to_string(), "quiet".to_string()];
        let old = UkiFacts {
            cmdline: Some("console=ttyS0 rw".into()),
            stub_version: Some(252),
        };
        assert_eq!(plan_boot(&old, &[]), Boot::Esp);
        let boot = plan_boot(&old, &extra);
        assert_eq!(
            boot,
            Boot::DirectWithCmdline {
                cmdline: "console=ttyS0 rw kiln.marker=1 quiet".into()
            }
        );
        let args = qemu_arguments(&machine(Accel::Tcg, boot));
        assert_eq!(
            values(&args, "-kernel"),
            ["/tmp/kiln-qemu-x/esp/EFI/BOOT/BOOTX64.EFI"]
        );
        assert_eq!(
            values(&args, "-append"),
            ["console=ttyS0 rw kiln.marker=1 quiet"]
        );

        let new = UkiFacts {
            cmdline: Some("console=ttyS0".into()),
            stub_version: Some(256),
        };
        let boot = plan_boot(&new, &["a=x,y".to_string()]);
        assert_eq!(
            boot,
            Boot::EspWithCmdlineExtra {
                extra: "a=x,y".into()
            }
        );
        let args = qemu_arguments(&machine(Accel::Tcg, boot));
        assert_eq!(
            values(&args, "-smbios"),
            ["type=11,value=io.systemd.stub.kernel-cmdline-extra=a=x,,y"]
        );
        assert!(values(&args, "-kernel").is_empty());

        // Not a systemd-stub, or no `.cmdline`: the load options are the extra arguments.
        let unknown = UkiFacts::default();
        assert_eq!(
            plan_boot(&unknown, &extra),
            Boot::DirectWithCmdline {
                cmdline: "kiln.marker=1 quiet".into()
            }
        );
    }

    #[test]
    fn extra_qemu_arguments_come_last() {
        let mut m = machine(Accel::Tcg, Boot::Esp);
        m.extra_qemu_args = vec!["-device".into(), "isa-debug-exit".into()];
        let args = qemu_arguments(&m);
        assert_eq!(args[args.len() - 2..], ["-device", "isa-debug-exit"]);
    }

    #[test]
    fn values_with_spaces_are_quoted() {
        assert_eq!(
            kernel_arguments(&["a=b c".into(), "d".into(), "e=\"f g\"".into()]),
            "a=\"b c\" d e=\"f g\""
        );
    }

    #[test]
    fn facts_from_sections() {
        let facts = uki_facts(
            Some(b"console=ttyS0 quiet\0"),
            Some(b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0"),
        );
        assert_eq!(facts.cmdline.as_deref(), Some("console=ttyS0 quiet"));
        assert_eq!(facts.stub_version, Some(252));
        assert_eq!(
            uki_facts(None, Some(b"#### LoaderInfo: systemd-stub 257 ####")).stub_version,
            Some(257)
        );
        assert_eq!(uki_facts(None, Some(b"garbage")).stub_version, None);
        assert_eq!(uki_facts(None, None), UkiFacts::default());
    }

    #[test]
    fn sizes_as_mkosi_reads_them() {
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("1"), Ok(4096));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("").is_err());
    }
}
