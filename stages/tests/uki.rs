//! The uki module: assembling UKIs by ukify's rules, the uki stage's lookups in an image tree,
//! and reading malformed PE files without panicking.
//!
//! Synthetic stubs (built byte by byte) test the layout rules everywhere. The tests on a real
//! Debian systemd-stub and kernel need the Debian mirror (or the packages it left in
//! `/var/tmp/kiln-test-debs`) and binutils' objdump/objcopy; they skip without them.

mod support;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_cache::{Digest, IngestOptions, Store};
use kiln_engine::{Stage, StageContext, StageLog};
use kiln_stages::uki::lookup::PackageHints;
use kiln_stages::uki::sbat::{KILN_SBAT_LINE, SBAT_FORMAT_LINE};
use kiln_stages::uki::{
    PeHeaders, Placement, UkiError, UkiInputs, UkiSection, UkiStage, assemble_uki, inspect,
    ukify_sections,
};
use sha2::{Digest as _, Sha256};
use support::debian::{self, BootFiles};
use support::synthetic_pe::{self as synthetic, SyntheticPe, SyntheticSection};

/// Whether the test can go on (see [`kiln_test_support::skip_unless`]).
fn require(reason_if_missing: Option<String>) -> bool {
    kiln_test_support::skip_unless(reason_if_missing)
}

fn tool_missing(tool: &str) -> Option<String> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|output| output.status.success());
    (!found).then(|| format!("`{tool}` is not installed"))
}

fn debian_files() -> Option<BootFiles> {
    match debian::boot_files() {
        Ok(files) => Some(files),
        Err(reason) => {
            require(Some(reason));
            None
        }
    }
}

fn sha256(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn headers(path: &Path) -> PeHeaders {
    PeHeaders::read(&mut std::fs::File::open(path).unwrap()).unwrap()
}

/// The content of a section, as the file holds it.
fn section_bytes(path: &Path, name: &str) -> Vec<u8> {
    let headers = headers(path);
    let section = headers.section(name).unwrap_or_else(|| panic!("no {name}"));
    headers
        .read_section(&mut std::fs::File::open(path).unwrap(), section, u64::MAX)
        .unwrap()
}

const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";

/// Writes `files` under a temporary directory.
fn write_files(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// A UKI's parts as files in `dir`, around the stub at `stub`.
fn parts(dir: &Path, stub: &Path, kernel: &Path, kernel_version: &str) -> UkiInputs {
    let initrd: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_files(
        dir,
        &[("os-release", OS_RELEASE.as_bytes()), ("initrd", &initrd)],
    );
    UkiInputs {
        stub: stub.to_path_buf(),
        kernel: kernel.to_path_buf(),
        kernel_version: kernel_version.to_string(),
        os_release: dir.join("os-release"),
        initrd: dir.join("initrd"),
        cmdline: "console=ttyS0 quiet".to_string(),
    }
}

#[test]
fn synthetic_stub_gets_its_sections_by_ukify_rules() {
    let dir = tempfile::tempdir().unwrap();
    let stub_image = SyntheticPe::stub_like().build();
    let kernel = SyntheticPe {
        symbols: None,
        ..SyntheticPe::stub_like()
    }
    .build();
    write_files(
        dir.path(),
        &[("stub", &stub_image), ("vmlinuz", kernel.as_slice())],
    );
    let inputs = parts(
        dir.path(),
        &dir.path().join("stub"),
        &dir.path().join("vmlinuz"),
        "6.1.0-57-amd64",
    );
    let out = dir.path().join("uki.efi");
    let layout = assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &out).unwrap();
    assert!(layout.symbol_table_dropped);

    let stub = headers(&inputs.stub);
    let uki = headers(&out);
    let names: Vec<String> = uki.sections.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            ".text", ".data", ".sbat", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"
        ]
    );
    // `.sbat` fits where the stub's was: replaced in place.
    assert_eq!(
        layout.sections.last().unwrap().placement,
        Placement::Replaced
    );
    assert_eq!(
        uki.file_header
            .pointer_to_symbol_table
            .get(object::LittleEndian),
        0
    );
    assert_eq!(
        uki.file_header.number_of_symbols.get(object::LittleEndian),
        0
    );
    assert_ne!(
        uki.file_header.characteristics.get(object::LittleEndian).0 & 0x0008,
        0
    );
    assert_eq!(uki.optional.check_sum, 0);
    assert_eq!(uki.optional.file_alignment, stub.optional.file_alignment);
    assert_eq!(
        uki.optional.section_alignment,
        stub.optional.section_alignment
    );

    let mut previous_end = stub
        .sections
        .iter()
        .map(|s| s.virtual_address() + s.virtual_size())
        .max()
        .unwrap();
    let mut added_virtual = 0;
    for section in &uki.sections[3..] {
        assert_eq!(section.raw_offset() % 0x200, 0, "{}", section.name());
        assert_eq!(section.raw_size() % 0x200, 0, "{}", section.name());
        assert_eq!(
            section.virtual_address(),
            previous_end.div_ceil(0x1000) * 0x1000
        );
        previous_end = section.virtual_address() + section.virtual_size();
        added_virtual += section.virtual_size();
        let expected = if section.name() == ".linux" {
            0x4000_0020
        } else {
            0x4000_0040
        };
        assert_eq!(section.characteristics(), expected, "{}", section.name());
    }
    assert_eq!(
        uki.optional.size_of_image,
        previous_end.div_ceil(0x1000) * 0x1000
    );
    assert_eq!(
        uki.optional.size_of_initialized_data,
        stub.optional.size_of_initialized_data + added_virtual
    );
    assert_eq!(
        uki.section(".linux").unwrap().virtual_size(),
        headers(&inputs.kernel).optional.size_of_image
    );
    assert_eq!(section_bytes(&out, ".osrel"), OS_RELEASE.as_bytes());
    assert_eq!(section_bytes(&out, ".cmdline"), b"console=ttyS0 quiet\0");
    assert_eq!(section_bytes(&out, ".uname"), b"6.1.0-57-amd64");
    assert_eq!(
        section_bytes(&out, ".initrd"),
        std::fs::read(&inputs.initrd).unwrap()
    );
    let sbat = String::from_utf8(section_bytes(&out, ".sbat")).unwrap();
    assert_eq!(
        sbat,
        format!(
            "{SBAT_FORMAT_LINE}\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\n{KILN_SBAT_LINE}\n\0"
        ),
        "the stub's lines, the kernel's, then kiln's"
    );
    // The stub's own bytes are untouched, the section table and patched fields aside.
    let stub_bytes = std::fs::read(&inputs.stub).unwrap();
    let uki_bytes = std::fs::read(&out).unwrap();
    let sbat_offset = uki.section(".sbat").unwrap().raw_offset() as usize;
    assert_eq!(
        uki_bytes[0x400..sbat_offset],
        stub_bytes[0x400..sbat_offset]
    );
}

#[test]
fn sbat_too_big_for_its_place_moves_after_the_new_sections() {
    let dir = tempfile::tempdir().unwrap();
    // As in Debian's stub: 512-byte file alignment, `.sdmagic` 256 bytes after `.sbat`.
    let long_sbat = format!(
        "{SBAT_FORMAT_LINE}\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\nsystemd.debian,1,Debian GNU/Linux,systemd,252.39-1~deb12u2,https://bugs.debian.org/\n\0"
    );
    let mut stub = SyntheticPe::stub_like();
    stub.section_alignment = 0x100;
    stub.sections[2].data = long_sbat.into_bytes();
    stub.sections.push(SyntheticSection {
        name: ".sdmagic",
        data: b"#### LoaderInfo: systemd-stub 252 ####\0".to_vec(),
        virtual_size: 0,
        characteristics: synthetic::SCN_DATA | synthetic::SCN_READ,
    });
    write_files(
        dir.path(),
        &[("stub", &stub.build()), ("vmlinuz", b"not a PE kernel")],
    );
    let inputs = parts(
        dir.path(),
        &dir.path().join("stub"),
        &dir.path().join("vmlinuz"),
        "6.1.0-57-amd64",
    );
    let out = dir.path().join("uki.efi");
    let layout = assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &out).unwrap();
    let sbat = layout.sections.last().unwrap();
    assert_eq!(
        (sbat.name.as_str(), sbat.placement),
        (".sbat", Placement::Appended)
    );

    let uki = headers(&out);
    let names: Vec<String> = uki.sections.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            ".text", ".data", ".sdmagic", ".osrel", ".cmdline", ".uname", ".initrd", ".linux",
            ".sbat"
        ]
    );
    // Sorted by address, none overlapping in memory.
    for pair in uki.sections.windows(2) {
        assert!(
            pair[0].virtual_address() + pair[0].virtual_size() <= pair[1].virtual_address(),
            "{} overlaps {}",
            pair[0].name(),
            pair[1].name()
        );
    }
    // A kernel that is not PE: `.linux` VirtualSize is its size.
    assert_eq!(uki.section(".linux").unwrap().virtual_size(), 15);
    let text = String::from_utf8(section_bytes(&out, ".sbat")).unwrap();
    assert!(text.contains("systemd.debian,1,"), "{text}");
    assert!(text.ends_with(&format!("{KILN_SBAT_LINE}\n\0")), "{text}");
    // The old copy is gone and the stub's later data moved into its place: no gap in the file.
    let stub_sbat_at = headers(&inputs.stub).section(".sbat").unwrap().raw_range();
    assert_eq!(
        u64::from(uki.section(".sdmagic").unwrap().raw_offset()),
        stub_sbat_at.start
    );
    let mut ranges: Vec<_> = uki.sections.iter().map(|s| s.raw_range()).collect();
    ranges.sort_by_key(|range| range.start);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].end, pair[1].start);
    }
    let bytes = std::fs::read(&out).unwrap();
    let copies = bytes
        .windows(b"systemd.debian".len())
        .filter(|window| *window == b"systemd.debian")
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn stubs_kiln_cannot_extend_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sections = [
        UkiSection::bytes(".osrel", OS_RELEASE),
        UkiSection::bytes(".uname", "6.1"),
        UkiSection::bytes(".linux", "kernel"),
    ];
    let out = dir.path().join("uki.efi");

    // Three section headers fill 0x188..0x200 exactly: no room for more.
    let full = SyntheticPe {
        size_of_headers: 0x200,
        ..SyntheticPe::stub_like()
    };
    write_files(dir.path(), &[("full", &full.build())]);
    let error = assemble_uki(&dir.path().join("full"), &sections, &out).unwrap_err();
    assert!(matches!(error, UkiError::NoHeaderRoom { .. }), "{error:?}");

    let mut signed = SyntheticPe::stub_like().build();
    let at = signed.len() as u32 - 16;
    let directories = synthetic::OPTIONAL_HEADER + 112;
    synthetic::put32(&mut signed, directories + 32, at);
    synthetic::put32(&mut signed, directories + 36, 16);
    write_files(dir.path(), &[("signed", &signed)]);
    let error = assemble_uki(&dir.path().join("signed"), &sections, &out).unwrap_err();
    assert!(matches!(error, UkiError::StubSigned { .. }), "{error:?}");

    write_files(dir.path(), &[("stub", &SyntheticPe::stub_like().build())]);
    let stub = dir.path().join("stub");
    for (bad, expected) in [
        (
            vec![UkiSection::bytes(".toolongname", "x")],
            "BadSectionName",
        ),
        (vec![UkiSection::bytes(".a\u{7f}", "x")], "BadSectionName"),
        (
            vec![UkiSection::bytes(".a", "x"), UkiSection::bytes(".a", "y")],
            "DuplicateSection",
        ),
        (vec![UkiSection::bytes(".data", "x")], "StubSectionClash"),
        (vec![UkiSection::bytes(".text", "x")], "StubSectionClash"),
        (vec![UkiSection::bytes(".empty", "")], "EmptySection"),
        (vec![UkiSection::file(".initrd", "/nonexistent")], "Read"),
    ] {
        let error = assemble_uki(&stub, &bad, &out).unwrap_err();
        assert!(format!("{error:?}").starts_with(expected), "{error:?}");
    }
}

#[test]
fn assembly_is_deterministic_and_streams_large_sections() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("stub", &SyntheticPe::stub_like().build())]);
    let big: Vec<u8> = (0..40_000_000u32).map(|i| (i % 253) as u8).collect();
    write_files(dir.path(), &[("initrd", &big)]);
    let sections = [
        UkiSection::bytes(".osrel", OS_RELEASE),
        UkiSection::file(".initrd", dir.path().join("initrd")),
        UkiSection::bytes(".linux", "kernel").with_virtual_size(Some(0x10_0000)),
    ];
    let first = dir.path().join("first.efi");
    let second = dir.path().join("second.efi");
    let layout = assemble_uki(&dir.path().join("stub"), &sections, &first).unwrap();
    assemble_uki(&dir.path().join("stub"), &sections, &second).unwrap();
    assert_eq!(sha256(&first), sha256(&second));
    assert_eq!(std::fs::metadata(&first).unwrap().len(), layout.file_len);
    assert_eq!(section_bytes(&first, ".initrd"), big);
    assert_eq!(
        headers(&first).section(".linux").unwrap().virtual_size(),
        0x10_0000
    );
}

#[test]
fn malformed_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let stub = SyntheticPe::stub_like().build();
    write_files(dir.path(), &[("stub", &stub)]);
    let uki = dir.path().join("uki.efi");
    assemble_uki(
        &dir.path().join("stub"),
        &[
            UkiSection::bytes(".osrel", OS_RELEASE),
            UkiSection::bytes(".linux", vec![0x90; 5000]),
        ],
        &uki,
    )
    .unwrap();
    let mut valid = vec![("synthetic UKI", std::fs::read(&uki).unwrap())];
    if let Ok(files) = debian::boot_files() {
        let debian_uki = dir.path().join("debian.efi");
        let inputs = parts(
            dir.path(),
            &files.stub,
            &files.kernel,
            &files.kernel_version,
        );
        assemble_uki(&files.stub, &ukify_sections(&inputs).unwrap(), &debian_uki).unwrap();
        valid.push(("Debian stub", std::fs::read(&files.stub).unwrap()));
        valid.push(("Debian UKI", std::fs::read(&debian_uki).unwrap()));
    }
    for (origin, bytes) in valid {
        assert!(inspect(&mut Cursor::new(&bytes)).is_ok(), "{origin}");
        let variants = synthetic::malformed_variants(&bytes);
        assert!(variants.len() >= 20, "{}", variants.len());
        for (what, variant) in variants {
            let error = inspect(&mut Cursor::new(&variant))
                .expect_err(&format!("{origin}, {what}: accepted"));
            let message = error.to_string();
            assert!(!message.is_empty());
            // The same bytes as a stub: refused as well.
            let path = dir.path().join("variant");
            std::fs::write(&path, &variant).unwrap();
            let error = assemble_uki(&path, &[UkiSection::bytes(".osrel", "x")], &uki)
                .expect_err(&format!("{origin}, {what}: accepted as a stub"));
            assert!(
                matches!(error, UkiError::Stub { .. }),
                "{origin}, {what}: {error:?}"
            );
        }
    }
}

/// A store, and a tree ingested from `files` (path, content) and `symlinks` (path, target).
fn tree_in_store(
    store: &Store,
    root: &Path,
    files: &[(&str, &[u8])],
    symlinks: &[(&str, &str)],
) -> Digest {
    write_files(root, files);
    for (path, target) in symlinks {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }
    let manifest = store
        .ingest_dir(
            root,
            IngestOptions {
                owner: Some((0, 0)),
                ..Default::default()
            },
        )
        .unwrap();
    store.put_manifest(&manifest).unwrap()
}

struct NoLog;

impl StageLog for NoLog {
    fn line(&self, _line: &str) {}
}

/// Runs the stage as the engine would; returns its output blob's path.
fn run_stage(
    stage: &UkiStage,
    store: &Store,
    tree: Digest,
    initrd: Digest,
) -> Result<PathBuf, String> {
    let scratch = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([("tree".to_string(), tree), ("initrd".to_string(), initrd)]);
    let values = BTreeMap::new();
    let ctx = StageContext {
        store,
        project_dir: Path::new("/"),
        scratch: scratch.path(),
        inputs: &inputs,
        values: &values,
        log: &NoLog,
    };
    // The message and its help as text, not as a report wrapped to the terminal's width.
    let output = stage.run(&ctx).map_err(|error| {
        let help = miette::Diagnostic::help(&error)
            .map(|help| help.to_string())
            .unwrap_or_default();
        format!("{error}\nhelp: {help}")
    })?;
    Ok(store.blob_path(&output).unwrap())
}

const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[test]
fn stage_names_the_missing_stub_or_kernel_and_its_package() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let initrd = store.put_bytes(b"initrd").unwrap();
    let stage = UkiStage::new("tree", "initrd", "x86-64", vec![]);
    let stub = SyntheticPe::stub_like().build();

    for (distro, stub_package, kernel_package) in [
        ("ID=debian", "`systemd-boot-efi`", "`linux-image-amd64`"),
        ("ID=arch", "`systemd`", "`linux`"),
    ] {
        let os_release = format!("{distro}\n");
        let no_stub = tree_in_store(
            &store,
            &dir.path().join(format!("{distro}-no-stub")),
            &[("usr/lib/os-release", os_release.as_bytes())],
            &[],
        );
        let error = run_stage(&stage, &store, no_stub, initrd).unwrap_err();
        assert!(error.contains(&format!("/{STUB}")), "{error}");
        assert!(error.contains(stub_package), "{error}");

        let no_kernel = tree_in_store(
            &store,
            &dir.path().join(format!("{distro}-no-kernel")),
            &[
                ("usr/lib/os-release", os_release.as_bytes()),
                (STUB, &stub),
                ("usr/lib/modules/6.1.0-57-amd64/modules.dep", b""),
            ],
            &[],
        );
        let error = run_stage(&stage, &store, no_kernel, initrd).unwrap_err();
        assert!(
            error.contains("/usr/lib/modules/6.1.0-57-amd64/vmlinuz")
                && error.contains("/boot/vmlinuz-6.1.0-57-amd64"),
            "{error}"
        );
        assert!(error.contains(kernel_package), "{error}");
    }

    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let hints = PackageHints::for_os_release(None, "x86-64");
    assert!(hints.stub.contains("systemd-boot-efi"));
    let error = run_stage(
        &UkiStage::new("tree", "initrd", "s390x", vec![]),
        &store,
        tree_in_store(&store, &dir.path().join("empty"), &[], &[]),
        initrd,
    )
    .unwrap_err();
    assert!(error.contains("s390x"), "{error}");
}

#[test]
fn stage_finds_the_kernel_as_mkosi_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let initrd = store.put_bytes(b"initrd").unwrap();
    let stub = SyntheticPe::stub_like().build();
    // A UKI in a modules directory is not a kernel (Fedora's vmlinuz-virt.efi).
    let uki_path = dir.path().join("old.efi");
    write_files(dir.path(), &[("stub", &stub)]);
    assemble_uki(
        &dir.path().join("stub"),
        &[
            UkiSection::bytes(".osrel", "ID=x\n"),
            UkiSection::bytes(".linux", "k"),
        ],
        &uki_path,
    )
    .unwrap();
    let uki = std::fs::read(&uki_path).unwrap();
    // Add `.sdmagic` by name: reuse the synthetic stub's `.data` header slot.
    let mut fake_uki = uki.clone();
    let (_, slots) = synthetic::section_table(&fake_uki);
    fake_uki[slots[1]..slots[1] + 8].copy_from_slice(b".sdmagic");

    let tree = tree_in_store(
        &store,
        &dir.path().join("tree"),
        &[
            (STUB, &stub),
            ("usr/lib/os-release", OS_RELEASE.as_bytes()),
            // 6.1.0-10 is newer than 6.1.0-9, which sorts after it as text.
            ("usr/lib/modules/6.1.0-9-amd64/vmlinuz", b"kernel 9"),
            ("usr/lib/modules/6.1.0-10-amd64/modules.dep", b""),
            ("boot/vmlinuz-6.1.0-10-amd64", b"kernel 10 in /boot"),
            // Versions without a kernel are passed over: no kernel at all, or only a UKI.
            ("usr/lib/modules/6.2.0-1-amd64/modules.dep", b""),
            ("usr/lib/modules/6.1.0-11-amd64/vmlinuz-virt.efi", &fake_uki),
        ],
        &[("etc/os-release", "../usr/lib/os-release")],
    );
    let stage = UkiStage::new("tree", "initrd", "x86-64", vec!["quiet".to_string()]);
    let out = run_stage(&stage, &store, tree, initrd).unwrap();
    assert_eq!(section_bytes(&out, ".uname"), b"6.1.0-10-amd64");
    assert_eq!(section_bytes(&out, ".linux"), b"kernel 10 in /boot");
    assert_eq!(section_bytes(&out, ".osrel"), OS_RELEASE.as_bytes());
    assert_eq!(section_bytes(&out, ".cmdline"), b"quiet\0");
    assert_eq!(section_bytes(&out, ".initrd"), b"initrd");

    // The modules directory's own vmlinuz wins over /boot's.
    let tree = tree_in_store(
        &store,
        &dir.path().join("tree2"),
        &[
            (STUB, &stub),
            ("etc/os-release", OS_RELEASE.as_bytes()),
            (
                "usr/lib/modules/6.1.0-10-amd64/vmlinuz",
                b"kernel 10 in modules",
            ),
            ("boot/vmlinuz-6.1.0-10-amd64", b"kernel 10 in /boot"),
        ],
        &[],
    );
    let stage = UkiStage::new("tree", "initrd", "x86-64", vec![]);
    let out = run_stage(&stage, &store, tree, initrd).unwrap();
    assert_eq!(section_bytes(&out, ".linux"), b"kernel 10 in modules");
    assert!(
        headers(&out).section(".cmdline").is_none(),
        "no command line, no section"
    );
    // etc/os-release when usr/lib/os-release is missing.
    assert_eq!(section_bytes(&out, ".osrel"), OS_RELEASE.as_bytes());
}

/// `objdump -h -w`: (name, size, vma, file offset) of each section.
fn objdump_sections(path: &Path) -> Vec<(String, u64, u64, u64)> {
    let output = Command::new("objdump")
        .arg("-h")
        .arg("-w")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 || fields[0].parse::<u32>().is_err() {
                return None;
            }
            let hex = |field: &str| u64::from_str_radix(field, 16).unwrap();
            Some((
                fields[1].to_string(),
                hex(fields[2]),
                hex(fields[3]),
                hex(fields[5]),
            ))
        })
        .collect()
}

/// `objcopy -O binary --only-section=NAME`.
fn objcopy_section(path: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("section{name}"));
    let status = Command::new("objcopy")
        .args(["-O", "binary", &format!("--only-section={name}")])
        .arg(path)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[test]
fn debian_uki_is_laid_out_as_objdump_expects() {
    if !require(tool_missing("objdump").or_else(|| tool_missing("objcopy"))) {
        return;
    }
    let Some(files) = debian_files() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inputs = parts(
        dir.path(),
        &files.stub,
        &files.kernel,
        &files.kernel_version,
    );
    let out = dir.path().join("uki.efi");
    let sections = ukify_sections(&inputs).unwrap();
    assemble_uki(&inputs.stub, &sections, &out).unwrap();

    let listed = objdump_sections(&out);
    let names: Vec<&str> = listed.iter().map(|(name, ..)| name.as_str()).collect();
    for name in [
        ".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym", ".sdmagic", ".osrel",
        ".cmdline", ".uname", ".initrd", ".linux", ".sbat",
    ] {
        assert!(names.contains(&name), "objdump lists no {name}: {names:?}");
    }
    let uki = headers(&out);
    let file_alignment = u64::from(uki.optional.file_alignment);
    let mut by_offset = listed.clone();
    by_offset.sort_by_key(|(_, _, _, offset)| *offset);
    for (name, _, _, offset) in &listed[names.iter().position(|n| *n == ".osrel").unwrap()..] {
        assert_eq!(offset % file_alignment, 0, "{name} at {offset:#x}");
    }
    for section in &uki.sections {
        assert_eq!(
            listed
                .iter()
                .find(|(name, ..)| *name == section.name())
                .map(|(_, _, vma, offset)| (*vma, *offset)),
            Some((
                u64::from(section.virtual_address()),
                u64::from(section.raw_offset())
            )),
            "{}",
            section.name()
        );
    }
    // No overlap in the file (raw data) or in memory (objdump's VMA and size).
    let mut raw: Vec<_> = uki
        .sections
        .iter()
        .map(|s| (s.raw_range(), s.name()))
        .collect();
    raw.sort_by_key(|(range, _)| range.start);
    for pair in raw.windows(2) {
        assert!(
            pair[0].0.end <= pair[1].0.start,
            "{} and {} overlap",
            pair[0].1,
            pair[1].1
        );
    }
    let mut memory: Vec<_> = listed
        .iter()
        .map(|(name, size, vma, _)| (*vma, vma + size, name))
        .collect();
    memory.sort();
    for pair in memory.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} and {} overlap in memory",
            pair[0].2,
            pair[1].2
        );
    }

    // Byte-exact sections, as objcopy extracts them.
    assert_eq!(
        objcopy_section(&out, ".osrel", dir.path()),
        OS_RELEASE.as_bytes()
    );
    assert_eq!(
        objcopy_section(&out, ".cmdline", dir.path()),
        b"console=ttyS0 quiet\0"
    );
    assert_eq!(
        objcopy_section(&out, ".uname", dir.path()),
        files.kernel_version.as_bytes()
    );
    assert_eq!(section_bytes(&out, ".osrel"), OS_RELEASE.as_bytes());
    assert_eq!(
        section_bytes(&out, ".initrd"),
        std::fs::read(&inputs.initrd).unwrap()
    );
    let linux = uki.section(".linux").unwrap();
    assert_eq!(
        linux.virtual_size(),
        headers(&files.kernel).optional.size_of_image
    );
    let kernel = std::fs::read(&files.kernel).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let start = linux.raw_offset() as usize;
    assert_eq!(&bytes[start..start + kernel.len()], kernel.as_slice());
    let sbat = String::from_utf8(section_bytes(&out, ".sbat")).unwrap();
    assert!(
        sbat.starts_with(SBAT_FORMAT_LINE) && sbat.contains("\nsystemd,1,"),
        "{sbat}"
    );
    assert!(sbat.ends_with(&format!("{KILN_SBAT_LINE}\n\0")), "{sbat}");
    assert_eq!(
        uki.file_header
            .pointer_to_symbol_table
            .get(object::LittleEndian),
        0
    );

    // A second assembly gives the same bytes.
    let again = dir.path().join("again.efi");
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &again).unwrap();
    assert_eq!(sha256(&out), sha256(&again));
}

#[test]
fn debian_uki_is_a_pe_the_signing_tools_read() {
    let Some(files) = debian_files() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inputs = parts(
        dir.path(),
        &files.stub,
        &files.kernel,
        &files.kernel_version,
    );
    let out = dir.path().join("uki.efi");
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &out).unwrap();

    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program).args(args).arg(&out).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    if require(tool_missing("sbverify")) {
        let (_, text) = run("sbverify", &["--list"]);
        assert!(text.contains("No signature table present"), "{text}");
        assert!(
            !text.contains("gap") && !text.contains("data remaining"),
            "{text}"
        );
    }
    if require(tool_missing("osslsigncode")) {
        let (_, text) = run("osslsigncode", &["verify", "-in"]);
        assert!(text.contains("No signature found"), "{text}");
        assert!(
            !text.contains("Corrupt") && !text.contains("Unrecognized"),
            "{text}"
        );
    }
    if require(tool_missing("pesign")) {
        let (ok, text) = run("pesign", &["-S", "-i"]);
        assert!(ok && text.contains("No signatures found"), "{text}");
        assert!(!text.contains("gap"), "{text}");
    }
    // Signed with a throwaway key, it verifies with both verifiers: the file has no gap they
    // would hash differently.
    if require(
        tool_missing("sbsign")
            .or_else(|| tool_missing("openssl"))
            .or_else(|| tool_missing("osslsigncode")),
    ) {
        let (key, cert, signed) = (
            dir.path().join("db.key"),
            dir.path().join("db.crt"),
            dir.path().join("signed.efi"),
        );
        let status = Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=kiln test/", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap()
            .status;
        assert!(status.success());
        let output = Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .arg("--output")
            .arg(&signed)
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && !text.contains("gap"), "{text}");
        let output = Command::new("sbverify")
            .arg("--cert")
            .arg(&cert)
            .arg(&signed)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = Command::new("osslsigncode")
            .args(["verify", "-in"])
            .arg(&signed)
            .arg("-CAfile")
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Signature verification: ok"), "{text}");
        let inspection = kiln_stages::uki::inspect_file(&signed).unwrap();
        assert!(inspection.signed && inspection.signature_size > 0);
    }
}

#[test]
fn debian_tree_builds_the_uki_the_stage_promises() {
    let Some(files) = debian_files() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let stub = std::fs::read(&files.stub).unwrap();
    let kernel = std::fs::read(&files.kernel).unwrap();
    let version = files.kernel_version.as_str();
    let modules_dep = format!("usr/lib/modules/{version}/modules.dep");
    let boot_kernel = format!("boot/vmlinuz-{version}");
    let tree = tree_in_store(
        &store,
        &dir.path().join("tree"),
        &[
            (STUB, &stub),
            ("usr/lib/os-release", OS_RELEASE.as_bytes()),
            (&modules_dep, b""),
            (&boot_kernel, &kernel),
        ],
        &[
            ("etc/os-release", "../usr/lib/os-release"),
            ("lib", "usr/lib"),
        ],
    );
    let initrd_bytes: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd = store.put_bytes(&initrd_bytes).unwrap();
    let stage = UkiStage::new(
        "tree",
        "initrd",
        "x86-64",
        vec!["console=ttyS0".to_string(), "quiet".to_string()],
    );
    assert_eq!(stage.kind(), "uki");
    let out = run_stage(&stage, &store, tree, initrd).unwrap();

    let direct = dir.path().join("direct.efi");
    let inputs = parts(dir.path(), &files.stub, &files.kernel, version);
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &direct).unwrap();
    assert_eq!(
        sha256(&out),
        sha256(&direct),
        "the stage and assemble_uki agree"
    );
    // And a second run of the stage gives the same blob.
    assert_eq!(run_stage(&stage, &store, tree, initrd).unwrap(), out);
}
