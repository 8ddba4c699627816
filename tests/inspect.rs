//! `kiln inspect`: the sections of a UKI as objdump sees them, and clean errors (exit code 1, a
//! help line, no panic) for files that are not PE, are truncated or are damaged.
//!
//! The UKI is assembled from a real Debian systemd-stub and kernel (from the Debian mirror, or
//! the packages it left in `/var/tmp/kiln-test-debs`); without them, or without objdump, the
//! test that needs them skips.

mod common;
#[path = "../stages/tests/support/debian.rs"]
mod debian;
#[path = "../stages/tests/support/synthetic_pe.rs"]
mod synthetic_pe;

use std::path::Path;
use std::process::{Command, Output};

use kiln_stages::uki::{PeHeaders, UkiInputs, UkiSection, assemble_uki, ukify_sections};
use serde_json::Value;

/// Whether the test can go on (see [`kiln_test_support::skip_unless`]).
fn require(reason_if_missing: Option<String>) -> bool {
    kiln_test_support::skip_unless(reason_if_missing)
}

fn inspect(args: &[&str], file: &Path) -> Output {
    common::kiln()
        .arg("inspect")
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";

#[test]
fn inspect_json_agrees_with_objdump() {
    let objdump = Command::new("objdump").arg("--version").output();
    if !require(
        objdump
            .is_err()
            .then(|| "`objdump` is not installed".to_string()),
    ) {
        return;
    }
    let files = match debian::boot_files() {
        Ok(files) => files,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("os-release"), OS_RELEASE).unwrap();
    std::fs::write(dir.path().join("initrd"), vec![0x5a; 70_000]).unwrap();
    let inputs = UkiInputs {
        stub: files.stub.clone(),
        kernel: files.kernel.clone(),
        kernel_version: files.kernel_version.clone(),
        os_release: dir.path().join("os-release"),
        initrd: dir.path().join("initrd"),
        cmdline: "console=ttyS0".to_string(),
    };
    let uki = dir.path().join("uki.efi");
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &uki).unwrap();

    let output = inspect(&["--json"], &uki);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["signed"], false);
    let sections = json["sections"].as_array().unwrap();

    let objdump = Command::new("objdump")
        .arg("-h")
        .arg("-w")
        .arg(&uki)
        .output()
        .unwrap();
    let listed: Vec<(String, u64)> = String::from_utf8_lossy(&objdump.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 6 && fields[0].parse::<u32>().is_ok()).then(|| {
                (
                    fields[1].to_string(),
                    u64::from_str_radix(fields[2], 16).unwrap(),
                )
            })
        })
        .collect();
    let names: Vec<&str> = sections
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let objdump_names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, objdump_names);
    // objdump shows a section's VirtualSize cut at its raw size; ukify (and kiln) the
    // VirtualSize. They differ only for `.linux`, whose VirtualSize is the kernel's SizeOfImage.
    let headers = PeHeaders::read(&mut std::fs::File::open(&uki).unwrap()).unwrap();
    for ((section, (name, objdump_size)), header) in
        sections.iter().zip(&listed).zip(&headers.sections)
    {
        let size = section["size"].as_u64().unwrap();
        assert_eq!(size, u64::from(header.virtual_size()), "{name}");
        assert_eq!(
            size.min(u64::from(header.raw_size())),
            *objdump_size,
            "{name}"
        );
        assert_eq!(section["sha256"].as_str().unwrap().len(), 64, "{name}");
    }
    let text = |name: &str| {
        sections
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["text"].as_str())
            .unwrap_or_else(|| panic!("no text for {name}"))
            .to_string()
    };
    assert_eq!(text(".osrel"), OS_RELEASE);
    assert_eq!(text(".cmdline"), "console=ttyS0\0");
    assert_eq!(text(".uname"), files.kernel_version);
    assert!(text(".sbat").starts_with("sbat,1,"));
    let initrd = sections.iter().find(|s| s["name"] == ".initrd").unwrap();
    assert!(initrd.get("text").is_none());
    assert_eq!(initrd["sha256"], sha256_hex(&[0x5a; 70_000]).as_str());

    // The text form, as ukify prints it.
    let output = inspect(&[], &uki);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(&format!(
            ".uname:\n  size: {} bytes\n  sha256: {}\n  text:\n    {}\n",
            files.kernel_version.len(),
            sha256_hex(files.kernel_version.as_bytes()),
            files.kernel_version
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("Authenticode signature: none\n"),
        "{stdout}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&output.stdout)[..64].to_string()
}

#[test]
fn inspect_rejects_malformed_files_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let stub = synthetic_pe::SyntheticPe::stub_like().build();
    std::fs::write(dir.path().join("stub"), &stub).unwrap();
    let uki = dir.path().join("uki.efi");
    assemble_uki(
        &dir.path().join("stub"),
        &[
            UkiSection::bytes(".osrel", OS_RELEASE),
            UkiSection::bytes(".linux", vec![0x90; 3000]),
        ],
        &uki,
    )
    .unwrap();
    let valid = std::fs::read(&uki).unwrap();
    assert!(inspect(&[], &uki).status.success());

    let variants = synthetic_pe::malformed_variants(&valid);
    assert!(variants.len() >= 20);
    for (what, bytes) in variants {
        let path = dir.path().join("malformed.efi");
        std::fs::write(&path, &bytes).unwrap();
        for args in [&[][..], &["--json"][..]] {
            let output = inspect(args, &path);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
            assert!(output.stdout.is_empty(), "{what}");
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            assert!(stderr.contains("malformed.efi`: "), "{what}: {stderr}");
            assert!(stderr.contains("help: "), "{what}: {stderr}");
        }
    }

    let output = inspect(&[], &dir.path().join("missing.efi"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Cannot open"));
}
