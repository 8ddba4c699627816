//! `kiln genkey` and `kiln inspect --cert`: the key pair mkosi genkey would write, and the
//! signature of a UKI checked as sbverify checks it. And every bad Secure Boot key or
//! certificate the planning check refuses, rendered as the binary renders reports.
//!
//! The UKI is assembled from a synthetic stub, so no test here needs the mirror; the ones that
//! ask OpenSSL or osslsigncode for a second opinion skip without them.

mod common;
#[path = "../stages/tests/support/synthetic_pe.rs"]
mod synthetic_pe;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use kiln_recipe::{Recipe, SecureBootSignTool};
use kiln_stages::sign::genkey::{generate_key_pair, write_key_pair};
use kiln_stages::sign::{SignError, check_signing};

use kiln_stages::sign::image::{Signer, sign_image};
use kiln_stages::sign::keys::{PrivateKey, read_certificate};
use kiln_stages::uki::{UkiSection, assemble_uki};
use kiln_test_support::Need;
use serde_json::Value;

fn kiln(dir: &Path, args: &[&str]) -> Output {
    common::kiln()
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("USER", "kiln-test")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn genkey_writes_a_private_key_and_its_certificate_as_mkosi_genkey_does() {
    let dir = tempfile::tempdir().unwrap();
    let output = kiln(dir.path(), &["genkey"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Generating keys rsa:2048 for CN 'mkosi of kiln-test'."),
        "{}",
        stderr(&output)
    );
    let key = dir.path().join("mkosi.key");
    let certificate = dir.path().join("mkosi.crt");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    let parsed = read_certificate(&certificate, "mkosi.crt".as_ref()).unwrap();
    assert_eq!(
        parsed.tbs_certificate.subject.to_string(),
        "CN=mkosi of kiln-test"
    );
    assert_eq!(
        parsed.tbs_certificate.issuer,
        parsed.tbs_certificate.subject
    );
    let validity = &parsed.tbs_certificate.validity;
    let days = (validity.not_after.to_unix_duration() - validity.not_before.to_unix_duration())
        .as_secs()
        / 86_400;
    assert_eq!(days, 730);
    let private = PrivateKey::read(&key, "mkosi.key".as_ref()).unwrap();
    assert!(kiln_stages::sign::keys::key_matches(&private, &parsed));

    // It refuses to replace them, unless forced; then both are new.
    let before = std::fs::read(&key).unwrap();
    let output = kiln(dir.path(), &["genkey"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("mkosi.key` already exists"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = kiln(
        dir.path(),
        &[
            "-f",
            "genkey",
            "--genkey-common-name",
            "Rescue Images",
            "--genkey-valid-days",
            "30",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "a replaced key is private again"
    );
    let parsed = read_certificate(&certificate, "mkosi.crt".as_ref()).unwrap();
    assert_eq!(
        parsed.tbs_certificate.subject.to_string(),
        "CN=Rescue Images"
    );

    // OpenSSL reads both, finds them a pair, and the certificate self-signed.
    if !kiln_test_support::require("genkey_openssl", &[Need::Tool("openssl")]) {
        return;
    }
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let from_key = openssl(&["pkey", "-in", "mkosi.key", "-pubout"]);
    let from_certificate = openssl(&["x509", "-in", "mkosi.crt", "-noout", "-pubkey"]);
    assert_eq!(from_key, from_certificate);
    assert!(openssl(&["verify", "-CAfile", "mkosi.crt", "mkosi.crt"]).contains("OK"));
    let text = openssl(&["x509", "-in", "mkosi.crt", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
}

/// A UKI around a synthetic stub, signed by the key pair in `dir`.
fn signed_uki(dir: &Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("stub"),
        synthetic_pe::SyntheticPe::stub_like().build(),
    )
    .unwrap();
    let uki = dir.join("uki.efi");
    assemble_uki(
        &dir.join("stub"),
        &[
            UkiSection::bytes(".osrel", "ID=debian\n"),
            UkiSection::bytes(".initrd", vec![0x5a; 40_000]),
            UkiSection::bytes(".linux", vec![0x90; 3000]),
        ],
        &uki,
    )
    .unwrap();
    let signed = dir.join("signed.efi");
    let signer = Signer {
        key: PrivateKey::read(&dir.join("mkosi.key"), "mkosi.key".as_ref()).unwrap(),
        certificate: read_certificate(&dir.join("mkosi.crt"), "mkosi.crt".as_ref()).unwrap(),
        key_name: "mkosi.key".into(),
    };
    sign_image(&uki, &signed, &signer, Some(1_798_859_045)).unwrap();
    signed
}

#[test]
fn inspect_shows_the_signer_and_checks_the_signature_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    assert!(kiln(dir.path(), &["genkey"]).status.success());
    let signed = signed_uki(dir.path());
    let inspect = |args: &[&str]| kiln(dir.path(), &[&["inspect"], args].concat());
    let signed_name = signed.to_str().unwrap();

    let output = inspect(&[signed_name]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    let tail: Vec<&str> = text.lines().rev().take(6).collect();
    assert_eq!(
        tail[5].split(' ').take(2).collect::<Vec<_>>(),
        ["Authenticode", "sha256:"]
    );
    let digest = tail[5].trim_start_matches("Authenticode sha256: ");
    assert_eq!(
        &tail[..5],
        [
            "  signature: valid",
            "  signing time: 2027-01-02T03:04:05Z",
            &format!("  signed digest: {digest} (the image's)"),
            "  signer: CN=mkosi of kiln-test",
            &format!(
                "Authenticode signature: present ({} bytes)",
                inspect_json(&inspect, &[signed_name])["signature_size"]
            ),
        ]
    );

    let certificate = dir.path().join("mkosi.crt");
    let output = inspect(&["--cert", certificate.to_str().unwrap(), signed_name]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .ends_with(&format!("  verified with {}: yes\n", certificate.display()))
    );
    let json = inspect_json(
        &inspect,
        &["--cert", certificate.to_str().unwrap(), signed_name],
    );
    assert_eq!(json["signature"]["signer"], "CN=mkosi of kiln-test");
    assert_eq!(json["signature"]["valid"], true);
    assert_eq!(json["signature"]["digest_matches"], true);
    assert_eq!(json["certificate_check"]["verified"], true);
    assert_eq!(json["authenticode_sha256"], digest);

    // Another key's certificate: the report says why, and the exit code is 1.
    let other = tempfile::tempdir().unwrap();
    assert!(
        kiln(
            other.path(),
            &["genkey", "--genkey-common-name", "someone else"]
        )
        .status
        .success()
    );
    let other_certificate = other.path().join("mkosi.crt");
    let output = inspect(&["--cert", other_certificate.to_str().unwrap(), signed_name]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains(": no: the signer `CN=mkosi of kiln-test` is not `CN=someone else`")
    );
    assert!(
        stderr(&output).contains("does not verify with"),
        "{}",
        stderr(&output)
    );

    // A changed byte: the signature no longer holds, whatever the certificate.
    let mut bytes = std::fs::read(&signed).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&signed, bytes).unwrap();
    let output = inspect(&["--cert", certificate.to_str().unwrap(), signed_name]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.contains("(not the image's)"), "{text}");
    assert!(
        text.contains("  signature: invalid: the signed digest is not the image's"),
        "{text}"
    );

    // The digest kiln shows is the one osslsigncode computes.
    if !kiln_test_support::require("inspect_osslsigncode", &[Need::Tool("osslsigncode")]) {
        return;
    }
    let fresh = signed_uki(dir.path());
    let output = Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(&certificate)
        .arg("-in")
        .arg(&fresh)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{report}");
    let json = inspect_json(&inspect, &[fresh.to_str().unwrap()]);
    let calculated = format!(
        "Calculated message digest : {}",
        json["authenticode_sha256"].as_str().unwrap().to_uppercase()
    );
    assert!(report.contains(&calculated), "{report}");
}

fn inspect_json(inspect: &dyn Fn(&[&str]) -> Output, args: &[&str]) -> Value {
    let output = inspect(&[&["--json"], args].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn kiln_key_pair(dir: &Path, common_name: &str) {
    let pair = generate_key_pair(common_name, SystemTime::now(), 730).unwrap();
    write_key_pair(dir, &pair, true).unwrap();
}

fn signing_recipe() -> Recipe {
    let mut recipe = Recipe::default();
    recipe.validation.secure_boot = true;
    recipe.validation.secure_boot_key = Some("mkosi.key".into());
    recipe.validation.secure_boot_certificate = Some("mkosi.crt".into());
    recipe
}

fn load(project: &Path) -> Result<kiln_recipe::Loaded, kiln_recipe::LoadError> {
    let options = kiln_recipe::LoadOptions {
        environment: Some(BTreeMap::from([
            ("MKOSI_HOST_DISTRIBUTION".to_string(), "debian".to_string()),
            ("MKOSI_HOST_RELEASE".to_string(), "bookworm".to_string()),
        ])),
        ..Default::default()
    };
    kiln_recipe::load_project(
        project,
        &options,
        &kiln_stages::host::reader::RealReaderHost,
    )
}

// Reports: every bad key, rendered as the binary renders reports (plain text, 100 columns).

fn render(error: &SignError, project: &Path) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, error)
        .unwrap();
    let setting = error
        .setting()
        .map_or("(none)".to_string(), |setting| setting.name().to_string());
    format!("setting: {setting}\n{out}")
        .replace(&project.to_string_lossy().into_owned(), "[PROJECT]")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The report `check_signing` gives for `recipe` in a project prepared by `prepare`.
fn bad_key_report(recipe: Recipe, prepare: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().canonicalize().unwrap();
    kiln_key_pair(&project, "mkosi of kiln-test");
    prepare(&project);
    let error = check_signing(&recipe, &project).expect_err("the check fails");
    render(&error, &project)
}

/// A key pair of `dir/other/` whose certificate is valid from `not_before` for `days` days.
fn dated_certificate(dir: &Path, not_before: SystemTime, days: u32) {
    let pair = generate_key_pair("mkosi of kiln-test", not_before, days).unwrap();
    write_key_pair(dir, &pair, true).unwrap();
}

fn at(date: &str) -> SystemTime {
    let seconds = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .unwrap();
    let seconds: u64 = String::from_utf8(seconds.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

macro_rules! report {
    ($test:ident, $recipe:expr, $prepare:expr) => {
        #[test]
        fn $test() {
            insta::assert_snapshot!(stringify!($test), bad_key_report($recipe, $prepare));
        }
    };
}

report!(
    no_key_configured,
    {
        let mut recipe = signing_recipe();
        recipe.validation.secure_boot_key = None;
        recipe
    },
    |_| {}
);

report!(
    no_certificate_configured,
    {
        let mut recipe = signing_recipe();
        recipe.validation.secure_boot_certificate = None;
        recipe
    },
    |_| {}
);

report!(key_file_missing, signing_recipe(), |dir: &Path| {
    std::fs::remove_file(dir.join("mkosi.key")).unwrap();
});

report!(certificate_file_missing, signing_recipe(), |dir: &Path| {
    std::fs::remove_file(dir.join("mkosi.crt")).unwrap();
});

report!(key_readable_by_others, signing_recipe(), |dir: &Path| {
    chmod(&dir.join("mkosi.key"), 0o604);
});

report!(key_not_a_key, signing_recipe(), |dir: &Path| {
    std::fs::write(dir.join("mkosi.key"), "not a key\n").unwrap();
    chmod(&dir.join("mkosi.key"), 0o600);
});

report!(key_encrypted, signing_recipe(), |dir: &Path| {
    std::fs::write(
        dir.join("mkosi.key"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
});

report!(
    key_does_not_match_the_certificate,
    signing_recipe(),
    |dir: &Path| {
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        kiln_key_pair(&other, "somebody else");
        std::fs::rename(other.join("mkosi.crt"), dir.join("mkosi.crt")).unwrap();
    }
);

report!(
    certificate_not_a_certificate,
    signing_recipe(),
    |dir: &Path| {
        std::fs::write(
            dir.join("mkosi.crt"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
    }
);

report!(certificate_expired, signing_recipe(), |dir: &Path| {
    dated_certificate(dir, at("2020-01-01 00:00:00"), 730);
});

report!(certificate_not_yet_valid, signing_recipe(), |dir: &Path| {
    dated_certificate(dir, at("2099-01-01 00:00:00"), 730);
});

#[test]
fn a_missing_sign_tool_is_reported() {
    let installed = Need::Tool("systemd-sbsign").missing().is_none()
        || Path::new("/usr/lib/systemd/systemd-sbsign").exists();
    if !kiln_test_support::skip_unless(
        installed.then(|| "systemd-sbsign is installed here, so it cannot be missing".to_owned()),
    ) {
        return;
    }
    let mut recipe = signing_recipe();
    recipe.validation.secure_boot_sign_tool = SecureBootSignTool::SystemdSbsign;
    insta::assert_snapshot!("sign_tool_missing", bad_key_report(recipe, |_| {}));
}

#[test]
fn a_key_others_can_read_is_refused_when_the_project_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().canonicalize().unwrap();
    std::fs::write(
        project.join("mkosi.conf"),
        "[Output]\nFormat=uki\n[Validation]\nSecureBoot=yes\nSecureBootKey=mkosi.key\n",
    )
    .unwrap();
    kiln_key_pair(&project, "mkosi of kiln-test");
    chmod(&project.join("mkosi.key"), 0o644);
    let Err(error) = load(&project) else {
        panic!("the loader accepted a key others can read");
    };
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &error)
        .unwrap();
    insta::assert_snapshot!(
        "key_readable_by_others_in_a_mkosi_project",
        out.replace(&project.to_string_lossy().into_owned(), "[PROJECT]")
    );
}
