//! The sign module against the tools firmware people trust: UKIs signed by kiln verify with
//! `sbverify --cert` and `osslsigncode verify -CAfile`, and stop verifying when one byte of a
//! section changes; kiln's signature is sbsign's, byte for byte, for the same key, image and
//! signing time (sbsign run under `faketime`); the sign stage re-runs alone when only the key
//! changes and leaves no trace of the private key in the store; every bad key is a clear report.
//!
//! UKIs come from Debian's systemd-stub and kernel (the Debian mirror, or the packages earlier
//! runs left in `/var/tmp/kiln-test-debs`) or, for tests that need no mirror, from a synthetic
//! stub. Tests say they are skipped when a tool is missing.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use kiln_cache::{Digest, OutputKind, Store};
use kiln_engine::{
    BuildOptions, Graph, Input, PlanOptions, PlannedState, SilentReporter, Stage, StageContext,
    StageError, execute, plan,
};
use kiln_recipe::{Recipe, SecureBootSignTool};
use kiln_stages::host::{Host, RealHost, RecordingHost};
use kiln_stages::sign::genkey::{generate_key_pair, write_key_pair};
use kiln_stages::sign::image::{Signer, sign_image};
use kiln_stages::sign::keys::{PrivateKey, read_certificate};
use kiln_stages::sign::{SignError, SignStage, check_signing};
use kiln_stages::uki::{
    PeHeaders, UkiInputs, UkiSection, assemble_uki, inspect_file, ukify_sections,
};
use kiln_test_support::{Need, require};
use support::debian::{self, BootFiles};
use support::synthetic_pe::SyntheticPe;

/// Debian's stub and kernel, or `None` (the test is skipped) when the mirror is unreachable and
/// no earlier run left them.
fn debian_files(test: &str) -> Option<BootFiles> {
    match debian::boot_files() {
        Ok(files) => Some(files),
        Err(reason) => {
            if require(test, &[Need::Mirror]) {
                panic!(
                    "the mirror answers, yet Debian's stub and kernel could not be had: {reason}"
                );
            }
            None
        }
    }
}

const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";

/// A UKI from Debian's stub and kernel with an initrd of `initrd_len` bytes, at `dir/uki.efi`.
fn debian_uki(dir: &Path, files: &BootFiles, initrd_len: usize) -> PathBuf {
    let initrd: Vec<u8> = (0..initrd_len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("os-release"), OS_RELEASE).unwrap();
    std::fs::write(dir.join("initrd"), initrd).unwrap();
    let inputs = UkiInputs {
        stub: files.stub.clone(),
        kernel: files.kernel.clone(),
        kernel_version: files.kernel_version.clone(),
        os_release: dir.join("os-release"),
        initrd: dir.join("initrd"),
        cmdline: "console=ttyS0".to_string(),
    };
    let uki = dir.join("uki.efi");
    assemble_uki(&inputs.stub, &ukify_sections(&inputs).unwrap(), &uki).unwrap();
    uki
}

/// A UKI around a synthetic stub, at `dir/name`.
fn synthetic_uki(dir: &Path, name: &str) -> PathBuf {
    std::fs::write(dir.join("stub"), SyntheticPe::stub_like().build()).unwrap();
    let uki = dir.join(name);
    assemble_uki(
        &dir.join("stub"),
        &[
            UkiSection::bytes(".osrel", OS_RELEASE),
            UkiSection::bytes(".initrd", vec![0x5a; 70_001]),
            UkiSection::bytes(".linux", vec![0x90; 3000]),
        ],
        &uki,
    )
    .unwrap();
    uki
}

/// `mkosi.key` and `mkosi.crt` as `kiln genkey` writes them, in `dir`.
fn kiln_key_pair(dir: &Path, common_name: &str) {
    let pair = generate_key_pair(common_name, SystemTime::now(), 730).unwrap();
    write_key_pair(dir, &pair, true).unwrap();
}

/// `mkosi.key` and `mkosi.crt` as `mkosi genkey` writes them (OpenSSL), in `dir`; `ec` makes a
/// P-256 key instead of RSA 2048.
fn openssl_key_pair(dir: &Path, ec: bool) {
    let mut command = Command::new("openssl");
    command.args(["req", "-new", "-x509"]);
    if ec {
        command.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    } else {
        command.args(["-newkey", "rsa:2048"]);
    }
    let status = command
        .args(["-keyout", "mkosi.key", "-out", "mkosi.crt", "-days", "730"])
        .args(["-subj", "/CN=mkosi of kiln-test/", "-nodes"])
        .env("OPENSSL_CONF", "/dev/null")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

fn signer(dir: &Path) -> Signer {
    Signer {
        key: PrivateKey::read(&dir.join("mkosi.key"), "mkosi.key".as_ref()).unwrap(),
        certificate: read_certificate(&dir.join("mkosi.crt"), "mkosi.crt".as_ref()).unwrap(),
        key_name: "mkosi.key".into(),
    }
}

fn sbverify(certificate: &Path, image: &Path) -> bool {
    Command::new("sbverify")
        .arg("--cert")
        .arg(certificate)
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}

fn osslsigncode_verify(certificate: &Path, image: &Path) -> bool {
    Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(certificate)
        .arg("-in")
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}

/// Flips one byte in the middle of section `name`.
fn flip_byte_in(image: &Path, name: &str) {
    let headers = PeHeaders::read(&mut std::fs::File::open(image).unwrap()).unwrap();
    let range = headers.section(name).unwrap().raw_range();
    let at = (range.start + (range.end - range.start) / 2) as usize;
    let mut bytes = std::fs::read(image).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(image, bytes).unwrap();
}

/// A clock frozen at `epoch` for faketime: `-f` with an absolute time freezes it.
fn frozen(epoch: u64) -> String {
    let date = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{epoch}"))
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .unwrap();
    String::from_utf8(date.stdout).unwrap().trim().to_string()
}

/// Signs `image` with sbsign while the clock stands still at `epoch`.
fn sbsign_frozen(dir: &Path, image: &Path, output: &Path, epoch: u64) {
    let result = Command::new("faketime")
        .arg("-f")
        .arg(frozen(epoch))
        .env("TZ", "UTC")
        .args([
            "sbsign",
            "--key",
            "mkosi.key",
            "--cert",
            "mkosi.crt",
            "--output",
        ])
        .arg(output)
        .arg(image)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(result.status.success(), "{result:?}");
}

const EPOCH: u64 = 1_798_859_045; // 2027-01-02T03:04:05Z

#[test]
fn a_debian_uki_signed_by_kiln_verifies_until_one_byte_of_a_section_changes() {
    require!(Need::Tool("sbverify"), Need::Tool("osslsigncode"));
    let Some(files) = debian_files("a_debian_uki_signed_by_kiln_verifies") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    kiln_key_pair(dir.path(), "mkosi of kiln-test");
    // Several 1 MiB chunks, and an initrd that does not end on a chunk boundary.
    let uki = debian_uki(dir.path(), &files, 5 * 1024 * 1024 + 12_345);
    let signed = dir.path().join("signed.efi");
    let result = sign_image(&uki, &signed, &signer(dir.path()), Some(EPOCH)).unwrap();
    let certificate = dir.path().join("mkosi.crt");
    assert!(sbverify(&certificate, &signed));
    assert!(osslsigncode_verify(&certificate, &signed));

    let inspection = inspect_file(&signed).unwrap();
    let signature = inspection.signature.clone().unwrap();
    assert_eq!(signature.signer.as_deref(), Some("CN=mkosi of kiln-test"));
    assert!(signature.valid, "{signature:?}");
    assert_eq!(
        inspection.authenticode_sha256.as_deref(),
        Some(hex(&result.digest).as_str())
    );
    assert_eq!(
        inspection.signature_size,
        result.certificate_table.end - result.certificate_table.start
    );

    for section in [".initrd", ".linux", ".osrel"] {
        let broken = dir.path().join(format!("broken{section}"));
        std::fs::copy(&signed, &broken).unwrap();
        flip_byte_in(&broken, section);
        assert!(
            !sbverify(&certificate, &broken),
            "sbverify accepts a changed {section}"
        );
        assert!(
            !osslsigncode_verify(&certificate, &broken),
            "osslsigncode accepts a changed {section}"
        );
        let inspection = inspect_file(&broken).unwrap();
        let signature = inspection.signature.unwrap();
        assert!(!signature.valid);
        assert!(!signature.digest_matches);
    }

    // Another key's certificate does not vouch for it.
    let other = tempfile::tempdir().unwrap();
    kiln_key_pair(other.path(), "someone else");
    assert!(!sbverify(&other.path().join("mkosi.crt"), &signed));
    assert!(!osslsigncode_verify(
        &other.path().join("mkosi.crt"),
        &signed
    ));
}

#[test]
fn kilns_signature_is_sbsigns_byte_for_byte() {
    require!(
        Need::Tool("sbsign"),
        Need::Tool("faketime"),
        Need::Tool("openssl")
    );
    let Some(files) = debian_files("kilns_signature_is_sbsigns_byte_for_byte") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let uki = debian_uki(dir.path(), &files, 3 * 1024 * 1024 + 7);
    // A key as mkosi genkey makes it (OpenSSL), and one as kiln genkey makes it.
    for (how, make) in [
        (
            "openssl",
            &(|dir: &Path| openssl_key_pair(dir, false)) as &dyn Fn(&Path),
        ),
        ("kiln genkey", &|dir: &Path| {
            kiln_key_pair(dir, "mkosi of kiln-test")
        }),
    ] {
        make(dir.path());
        let by_sbsign = dir.path().join("sbsign.efi");
        let by_kiln = dir.path().join("kiln.efi");
        sbsign_frozen(dir.path(), &uki, &by_sbsign, EPOCH);
        sign_image(&uki, &by_kiln, &signer(dir.path()), Some(EPOCH)).unwrap();
        let sbsign_bytes = std::fs::read(&by_sbsign).unwrap();
        let kiln_bytes = std::fs::read(&by_kiln).unwrap();
        assert_eq!(sbsign_bytes.len(), kiln_bytes.len(), "{how}");
        assert!(
            sbsign_bytes == kiln_bytes,
            "{how}: kiln's signed UKI differs from sbsign's"
        );
    }
}

#[test]
fn an_image_of_odd_length_is_padded_and_hashed_as_sbsign_does() {
    require!(
        Need::Tool("sbsign"),
        Need::Tool("sbverify"),
        Need::Tool("osslsigncode"),
        Need::Tool("faketime")
    );
    let dir = tempfile::tempdir().unwrap();
    kiln_key_pair(dir.path(), "mkosi of kiln-test");
    let uki = synthetic_uki(dir.path(), "uki.efi");
    // Data after the last section, ending at an odd offset: hashed as trailing data, then
    // padded to 8 bytes before the certificate table.
    let mut bytes = std::fs::read(&uki).unwrap();
    bytes.extend_from_slice(b"trailing");
    bytes.push(0x42);
    assert_eq!(bytes.len() % 8, 1);
    std::fs::write(&uki, bytes).unwrap();

    let by_kiln = dir.path().join("kiln.efi");
    let by_sbsign = dir.path().join("sbsign.efi");
    let signed = sign_image(&uki, &by_kiln, &signer(dir.path()), Some(EPOCH)).unwrap();
    assert_eq!(signed.certificate_table.start % 8, 0);
    sbsign_frozen(dir.path(), &uki, &by_sbsign, EPOCH);
    assert!(std::fs::read(&by_kiln).unwrap() == std::fs::read(&by_sbsign).unwrap());
    let certificate = dir.path().join("mkosi.crt");
    assert!(sbverify(&certificate, &by_kiln));
    assert!(osslsigncode_verify(&certificate, &by_kiln));
}

#[test]
fn ecdsa_signatures_verify_and_cover_the_digest_sbsign_covers() {
    require!(
        Need::Tool("sbsign"),
        Need::Tool("sbverify"),
        Need::Tool("osslsigncode"),
        Need::Tool("openssl")
    );
    let dir = tempfile::tempdir().unwrap();
    openssl_key_pair(dir.path(), true);
    let uki = synthetic_uki(dir.path(), "uki.efi");
    let by_kiln = dir.path().join("kiln.efi");
    let by_sbsign = dir.path().join("sbsign.efi");
    sign_image(&uki, &by_kiln, &signer(dir.path()), Some(EPOCH)).unwrap();
    let status = Command::new("sbsign")
        .args(["--key", "mkosi.key", "--cert", "mkosi.crt", "--output"])
        .arg(&by_sbsign)
        .arg(&uki)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let certificate = dir.path().join("mkosi.crt");
    for image in [&by_kiln, &by_sbsign] {
        assert!(sbverify(&certificate, image), "{}", image.display());
        assert!(
            osslsigncode_verify(&certificate, image),
            "{}",
            image.display()
        );
    }
    // ECDSA signatures differ (sbsign's nonce is random, kiln's RFC 6979's); what they sign
    // does not.
    let kiln = inspect_file(&by_kiln).unwrap();
    let sbsign = inspect_file(&by_sbsign).unwrap();
    assert_eq!(kiln.authenticode_sha256, sbsign.authenticode_sha256);
    let (kiln, sbsign) = (kiln.signature.unwrap(), sbsign.signature.unwrap());
    assert!(kiln.valid && sbsign.valid);
    assert_eq!(kiln.signed_digest, sbsign.signed_digest);
    assert_eq!(kiln.signer, sbsign.signer);
}

#[test]
fn a_signature_without_a_signing_time_verifies() {
    require!(Need::Tool("sbverify"), Need::Tool("osslsigncode"));
    let dir = tempfile::tempdir().unwrap();
    kiln_key_pair(dir.path(), "mkosi of kiln-test");
    let uki = synthetic_uki(dir.path(), "uki.efi");
    let signed = dir.path().join("signed.efi");
    sign_image(&uki, &signed, &signer(dir.path()), None).unwrap();
    let certificate = dir.path().join("mkosi.crt");
    assert!(sbverify(&certificate, &signed));
    assert!(osslsigncode_verify(&certificate, &signed));
    let signature = inspect_file(&signed).unwrap().signature.unwrap();
    assert_eq!(signature.signing_time, None);
    assert!(signature.valid);

    // Signing twice gives the same bytes.
    let again = dir.path().join("again.efi");
    sign_image(&uki, &again, &signer(dir.path()), None).unwrap();
    assert!(std::fs::read(&signed).unwrap() == std::fs::read(&again).unwrap());
}

#[test]
fn a_signed_image_is_not_signed_again() {
    let dir = tempfile::tempdir().unwrap();
    kiln_key_pair(dir.path(), "mkosi of kiln-test");
    let uki = synthetic_uki(dir.path(), "uki.efi");
    let signed = dir.path().join("signed.efi");
    sign_image(&uki, &signed, &signer(dir.path()), None).unwrap();
    let error = sign_image(
        &signed,
        &dir.path().join("twice.efi"),
        &signer(dir.path()),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(error, SignError::AlreadySigned { .. }),
        "{error:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

// The sign stage, run by the engine.

/// The stage before `sign` in these tests: a UKI file of the project, as a blob.
struct UkiFile;

impl Stage for UkiFile {
    fn name(&self) -> &str {
        "uki"
    }
    fn kind(&self) -> &'static str {
        "uki-file"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::file("image", "uki.efi")]
    }
    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        // The engine stored the file when it resolved the input: its blob is the output.
        ctx.input("image")
    }
}

fn signing_recipe(epoch: Option<u64>) -> Recipe {
    let mut recipe = Recipe::default();
    recipe.validation.secure_boot = true;
    recipe.validation.secure_boot_key = Some("mkosi.key".into());
    recipe.validation.secure_boot_certificate = Some("mkosi.crt".into());
    recipe.content.source_date_epoch = epoch;
    recipe
}

struct Project {
    dir: tempfile::TempDir,
    store_dir: PathBuf,
    store: Store,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir(&project).unwrap();
        kiln_key_pair(&project, "mkosi of kiln-test");
        synthetic_uki(&project, "uki.efi");
        let store_dir = dir.path().join("store");
        let store = Store::open(&store_dir).unwrap();
        Project {
            dir,
            store_dir,
            store,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    fn graph(&self, recipe: &Recipe, host: Arc<dyn Host>) -> Graph {
        let sign = SignStage::for_recipe(recipe, &self.path(), "uki", host)
            .unwrap()
            .unwrap();
        Graph::new(vec![Box::new(UkiFile), Box::new(sign)]).unwrap()
    }

    /// Plans and builds; returns the plan, the stages that ran and the signed UKI's path.
    fn build(&self, graph: &Graph) -> (kiln_engine::Plan, Vec<String>, PathBuf) {
        let plan = plan(
            graph,
            Some(&self.store),
            &self.path(),
            PlanOptions::build(false, false),
        )
        .unwrap();
        let options = BuildOptions {
            started: std::time::SystemTime::now(),
            recipe: "sign-test".to_string(),
            project_dir: self.path(),
            force_rerun: false,
            jobs: 1,
        };
        let report = execute(graph, &plan, &self.store, &options, &SilentReporter).unwrap();
        let ran = report.ran().iter().map(|name| name.to_string()).collect();
        let output = report.stage("sign").unwrap().output;
        (plan, ran, self.store.blob_path(&output).unwrap())
    }
}

fn key_of(plan: &kiln_engine::Plan, stage: &str) -> Option<Digest> {
    plan.by_name(stage).unwrap().key
}

#[test]
fn a_new_key_re_signs_without_re_assembling() {
    let project = Project::new();
    let host: Arc<dyn Host> = Arc::new(RealHost::new());
    let recipe = signing_recipe(Some(EPOCH));
    let graph = project.graph(&recipe, Arc::clone(&host));
    let (_, ran, signed) = project.build(&graph);
    assert_eq!(ran, ["uki", "sign"]);
    let first = inspect_file(&signed).unwrap().signature.unwrap();
    assert!(first.valid);

    // Nothing changed: nothing runs.
    let (first_plan, ran, _) = project.build(&project.graph(&recipe, Arc::clone(&host)));
    assert!(ran.is_empty(), "{ran:?}");

    // A new key (and its certificate): the UKI is cached, only the sign stage re-runs.
    kiln_key_pair(&project.path(), "mkosi of kiln-test, rotated");
    let graph = project.graph(&recipe, Arc::clone(&host));
    let rotated_plan = plan(
        &graph,
        Some(&project.store),
        &project.path(),
        PlanOptions::read_only(),
    )
    .unwrap();
    assert_eq!(key_of(&rotated_plan, "uki"), key_of(&first_plan, "uki"));
    assert!(matches!(
        rotated_plan.by_name("uki").unwrap().state,
        PlannedState::Cached { .. }
    ));
    assert_ne!(key_of(&rotated_plan, "sign"), key_of(&first_plan, "sign"));
    assert_eq!(
        rotated_plan.by_name("sign").unwrap().state,
        PlannedState::WillRun
    );
    let changed: Vec<&str> = rotated_plan
        .by_name("sign")
        .unwrap()
        .inputs
        .iter()
        .filter(|input| !first_plan.by_name("sign").unwrap().inputs.contains(input))
        .map(|input| input.name.as_str())
        .collect();
    assert_eq!(changed, ["SecureBootKey", "SecureBootCertificate"]);
    let (_, ran, signed) = project.build(&graph);
    assert_eq!(ran, ["sign"]);
    let rotated = inspect_file(&signed).unwrap().signature.unwrap();
    assert_eq!(
        rotated.signer.as_deref(),
        Some("CN=mkosi of kiln-test\\, rotated")
    );
    assert_eq!(rotated.signed_digest, first.signed_digest);

    // The signing time is an input too.
    let (_, ran, _) = project.build(&project.graph(&signing_recipe(Some(EPOCH + 1)), host));
    assert_eq!(ran, ["sign"]);
}

#[test]
fn the_key_is_read_when_the_stage_runs_and_must_be_the_planned_one() {
    let project = Project::new();
    let recipe = signing_recipe(None);
    let graph = project.graph(&recipe, Arc::new(RealHost::new()));
    // Another key appears between planning and running: the stage refuses to sign with it.
    let plan = plan(
        &graph,
        Some(&project.store),
        &project.path(),
        PlanOptions::build(false, false),
    )
    .unwrap();
    kiln_key_pair(&project.path(), "mkosi of kiln-test, swapped");
    let options = BuildOptions {
        started: std::time::SystemTime::now(),
        recipe: "sign-test".to_string(),
        project_dir: project.path(),
        force_rerun: false,
        jobs: 1,
    };
    let Err(error) = execute(&graph, &plan, &project.store, &options, &SilentReporter) else {
        panic!("signing with another key than planned succeeded");
    };
    let text = format!("{error:?}");
    assert!(text.contains("KeyChanged"), "{text}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn the_private_key_never_enters_the_store() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    use rsa::traits::PrivateKeyParts;

    let project = Project::new();
    let (_, ran, signed) =
        project.build(&project.graph(&signing_recipe(Some(EPOCH)), Arc::new(RealHost::new())));
    assert_eq!(ran, ["uki", "sign"]);
    assert!(inspect_file(&signed).unwrap().signature.unwrap().valid);

    let pem = std::fs::read_to_string(project.path().join("mkosi.key")).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("the PEM body".into(), body.clone().into_bytes()),
        (
            "the PKCS#8 DER".into(),
            key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
        ),
        (
            "the PKCS#1 DER".into(),
            key.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        ),
        ("the private exponent".into(), key.d().to_bytes_be()),
        ("the first prime".into(), key.primes()[0].to_bytes_be()),
    ];
    for (index, line) in pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .enumerate()
    {
        needles.push((format!("PEM line {index}"), line.as_bytes().to_vec()));
    }
    let files = files_under(&project.store_dir);
    assert!(files.len() > 3, "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for (what, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "{what} of the private key is in {}",
                file.display()
            );
        }
    }
}

#[test]
fn sign_tool_sbsign_signs_through_the_host() {
    require!(Need::Tool("sbsign"), Need::Tool("sbverify"));
    let project = Project::new();
    let mut recipe = signing_recipe(None);
    recipe.validation.secure_boot_sign_tool = SecureBootSignTool::Sbsign;
    let host = Arc::new(RecordingHost::new());
    let (plan, ran, signed) = project.build(&project.graph(&recipe, host.clone()));
    assert_eq!(ran, ["uki", "sign"]);
    let tools = host.tools_run();
    assert_eq!(tools.len(), 1, "{tools:?}");
    let shown = tools[0].shown();
    assert!(shown.starts_with("sbsign --key "), "{shown}");
    assert!(shown.contains(" --cert "), "{shown}");
    assert!(sbverify(&project.path().join("mkosi.crt"), &signed));
    let method = plan
        .by_name("sign")
        .unwrap()
        .inputs
        .iter()
        .find(|input| input.name == "SecureBootSignTool")
        .and_then(|input| input.value.clone());
    assert_eq!(method.as_deref(), Some("sbsign"));
}

#[test]
fn a_key_only_sbsign_can_read_is_signed_by_sbsign() {
    require!(
        Need::Tool("sbsign"),
        Need::Tool("sbverify"),
        Need::Tool("openssl")
    );
    let project = Project::new();
    // P-384: sbsign (OpenSSL) signs with it, kiln does not.
    let output = Command::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:secp384r1",
            "-keyout",
            "mkosi.key",
            "-out",
            "mkosi.crt",
        ])
        .args(["-days", "30", "-subj", "/CN=p384/", "-nodes"])
        .env("OPENSSL_CONF", "/dev/null")
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let error = check_signing(&signing_recipe(None), &project.path()).unwrap_err();
    assert!(
        matches!(
            error,
            SignError::KeyInvalid {
                problem: kiln_stages::sign::KeyProblem::UnsupportedAlgorithm,
                ..
            }
        ),
        "{error:?}"
    );

    let mut recipe = signing_recipe(None);
    recipe.validation.secure_boot_sign_tool = SecureBootSignTool::Sbsign;
    let host = Arc::new(RecordingHost::new());
    let graph = project.graph(&recipe, host.clone());
    let (plan, ran, signed) = project.build(&graph);
    assert_eq!(ran, ["uki", "sign"]);
    assert_eq!(host.tools_run().len(), 1);
    assert!(sbverify(&project.path().join("mkosi.crt"), &signed));
    // The stage is keyed on the public key the certificate holds.
    let identity = plan
        .by_name("sign")
        .unwrap()
        .inputs
        .iter()
        .find(|input| input.name == "SecureBootKey")
        .and_then(|input| input.value.clone())
        .unwrap();
    assert!(identity.starts_with("sha256:"), "{identity}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_key_readable_by_its_group_is_accepted_as_mkosi_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    kiln_key_pair(dir.path(), "mkosi of kiln-test");
    chmod(&dir.path().join("mkosi.key"), 0o640);
    check_signing(&signing_recipe(None), dir.path()).unwrap();
    let mut recipe = signing_recipe(None);
    recipe.validation.secure_boot = false;
    std::fs::remove_file(dir.path().join("mkosi.key")).unwrap();
    // Without SecureBoot=yes nothing is checked.
    check_signing(&recipe, dir.path()).unwrap();
}

// A mkosi project: `mkosi.key` and `mkosi.crt` are the defaults, read as mkosi reads them.

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

#[test]
fn a_mkosi_project_signs_with_mkosi_key_and_mkosi_crt() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().canonicalize().unwrap();
    std::fs::write(
        project.join("mkosi.conf"),
        "[Output]\nFormat=uki\n[Validation]\nSecureBoot=yes\n",
    )
    .unwrap();
    kiln_key_pair(&project, "mkosi of kiln-test");
    let loaded = load(&project).unwrap();
    let validation = &loaded.recipe.validation;
    assert_eq!(
        validation.secure_boot_key.as_deref(),
        Some(Path::new("mkosi.key"))
    );
    assert_eq!(
        validation.secure_boot_certificate.as_deref(),
        Some(Path::new("mkosi.crt"))
    );
    let stage = SignStage::for_recipe(
        &loaded.recipe,
        &loaded.dir,
        "uki",
        Arc::new(RealHost::new()),
    )
    .unwrap()
    .expect("SecureBoot=yes gives a sign stage");
    let key = PrivateKey::read(&project.join("mkosi.key"), "mkosi.key".as_ref()).unwrap();
    let inputs = stage.inputs();
    let value = |name: &str| {
        inputs
            .iter()
            .find(|input| input.name == name)
            .map(|input| input.source.clone())
    };
    assert_eq!(
        value("SecureBootKey"),
        Some(kiln_engine::InputSource::Value(key.identity()))
    );
    assert!(key.identity().starts_with("sha256:"));
    assert_eq!(
        value("SecureBootCertificate"),
        Some(kiln_engine::InputSource::File("mkosi.crt".into()))
    );
    assert_eq!(stage.name(), "sign");
    assert_eq!(stage.kind(), "sign");
    assert_eq!(stage.output_kind(), OutputKind::Blob);
}
