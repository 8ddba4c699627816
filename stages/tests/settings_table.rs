//! The settings table says, for every mkosi setting kiln reads, which stages build it. This
//! walks the table: each setting marked as built by stages is changed in a project that uses
//! every stage, and each named stage's key inputs must change with it (a setting no stage keys
//! on fails here); each setting marked as shaping the plan must change the plan (the stages, the
//! outputs, where the store is, or whether the recipe can be built at all).
//!
//! Needs nothing but the files it writes: the pipeline is laid out, nothing runs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use kiln_engine::{InputSource, Stage};
use kiln_recipe::{Built, LoadOptions, load_project, settings_table};
use kiln_stages::host::RecordingHost;
use kiln_stages::host::reader::RealReaderHost;
use kiln_stages::pipeline::pipeline;

/// A project whose graph holds every stage kind a setting can key.
const BASE: &str = "[Distribution]
Distribution=debian
Release=bookworm
Architecture=x86-64
Mirror=http://deb.debian.org
Repositories=contrib

[Output]
Format=uki
ImageId=base
ImageVersion=1
Output=base
OutputDirectory=out
CacheDirectory=cache

[Content]
Packages=systemd
WithDocs=no
BaseTrees=base
SkeletonTrees=skeleton
ExtraTrees=extra
RemoveFiles=/usr/share/doc
CleanPackageMetadata=yes
SourceDateEpoch=1
PrepareScripts=prepare.sh
PostInstallationScripts=postinst.sh
FinalizeScripts=finalize.sh
KernelCommandLine=quiet
KernelModulesInclude=fs/
KernelModulesExclude=.*
KernelModules=virtio*
KernelModulesIncludeHost=yes
FirmwareInclude=iwlwifi
FirmwareExclude=.*
FirmwareFiles=intel/*
Locale=C.UTF-8
LocaleMessages=C.UTF-8
Keymap=us
Timezone=UTC
RootShell=/bin/bash
Hostname=base
RootPassword=hashed:$6$a$b
Autologin=yes
Environment=KILN_TEST=1

[Validation]
SecureBoot=yes
SecureBootKey=mkosi.key
SecureBootCertificate=mkosi.crt
SecureBootKeySource=file
SecureBootCertificateSource=file
SecureBootSignTool=auto

[Build]
MakeScriptsExecutable=yes
";

/// The changed value of each setting, written in a drop-in read after mkosi.conf.
fn changed_value(name: &str) -> &'static str {
    match name {
        "Distribution" => "ubuntu",
        "Release" => "trixie",
        "Architecture" => "arm64",
        "Mirror" => "http://mirror.example",
        "Repositories" => "non-free",
        "Format" => "directory",
        "ImageId" => "changed",
        "ImageVersion" => "2",
        "Output" => "changed",
        "OutputDirectory" => "elsewhere",
        "CacheDirectory" => "other-cache",
        "Packages" => "nano",
        "WithDocs" => "yes",
        "BaseTrees" => "other-tree",
        "SkeletonTrees" => "other-tree",
        "ExtraTrees" => "other-tree",
        "RemoveFiles" => "/usr/include",
        "CleanPackageMetadata" => "auto",
        "SourceDateEpoch" => "2",
        "PrepareScripts" => "other.sh",
        "PostInstallationScripts" => "other.sh",
        "FinalizeScripts" => "other.sh",
        "KernelCommandLine" => "ro",
        "KernelModulesInclude" => "nvme",
        "KernelModulesExclude" => "sound/",
        "KernelModules" => "-virtio_net",
        "KernelModulesIncludeHost" => "no",
        "FirmwareInclude" => "amd",
        "FirmwareExclude" => "intel",
        "FirmwareFiles" => "amd/*",
        "Locale" => "de_DE.UTF-8",
        "LocaleMessages" => "de_DE.UTF-8",
        "Keymap" => "de",
        "Timezone" => "Europe/Berlin",
        "RootShell" => "/bin/sh",
        "Hostname" => "changed",
        "RootPassword" => "hashed:$6$c$d",
        "Autologin" => "no",
        "Environment" => "KILN_TEST=2",
        "MakeScriptsExecutable" => "no",
        "SecureBoot" => "no",
        "SecureBootKey" => "other.key",
        "SecureBootCertificate" => "other.crt",
        "SecureBootKeySource" => "engine:pkcs11",
        "SecureBootCertificateSource" => "provider:pkcs11",
        "SecureBootSignTool" => "sbsign",
        other => panic!("no changed value for `{other}=`: add one to this test"),
    }
}

fn write(dir: &Path, path: &str, text: &str, mode: u32) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The project, with `drop_in` read after its mkosi.conf.
fn project(drop_in: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mkosi.conf", BASE, 0o644);
    for tree in ["base", "skeleton", "extra", "other-tree"] {
        write(dir.path(), &format!("{tree}/etc/{tree}"), tree, 0o644);
    }
    // The scripts name the variables they read; one is not executable (MakeScriptsExecutable).
    let script = "#!/bin/sh\necho \"$KILN_TEST $IMAGE_VERSION $IMAGE_ID\"\n";
    for name in ["prepare.sh", "postinst.sh", "other.sh"] {
        write(dir.path(), name, script, 0o755);
    }
    write(dir.path(), "finalize.sh", script, 0o644);
    let (key, other) = key_pairs();
    write(dir.path(), "mkosi.key", &key.0, 0o600);
    write(dir.path(), "mkosi.crt", &key.1, 0o644);
    write(dir.path(), "other.key", &other.0, 0o600);
    write(dir.path(), "other.crt", &other.1, 0o644);
    if let Some(text) = drop_in {
        write(dir.path(), "mkosi.conf.d/99-changed.conf", text, 0o644);
    }
    dir
}

/// Two Secure Boot key pairs (key, certificate), made once.
fn key_pairs() -> &'static ((String, String), (String, String)) {
    static PAIRS: std::sync::OnceLock<((String, String), (String, String))> =
        std::sync::OnceLock::new();
    PAIRS.get_or_init(|| {
        let pair = |name: &str| {
            let pair = kiln_stages::sign::genkey::generate_key_pair(
                name,
                std::time::SystemTime::now(),
                30,
            )
            .unwrap();
            (pair.key_pem.to_string(), pair.certificate_pem.clone())
        };
        (pair("kiln test"), pair("kiln other"))
    })
}

/// What a stage's key is made of, short of its upstream stages' outputs: its kind, version and
/// each input, with files and trees by their content.
fn fingerprint(stage: &dyn Stage, project: &Path) -> String {
    let mut text = format!("{} {}\n", stage.kind(), stage.version());
    for input in stage.inputs() {
        let value = match &input.source {
            InputSource::Stage(upstream) => format!("stage {upstream}"),
            InputSource::Value(value) => format!("value {value}"),
            InputSource::File(path) => format!(
                "file {}",
                std::fs::read_to_string(project.join(path)).unwrap_or_default()
            ),
            InputSource::Tree { path, .. } => {
                let mut files: Vec<String> = walkdir::WalkDir::new(project.join(path))
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().display().to_string())
                    .collect();
                files.sort();
                format!("tree {}", files.join(","))
            }
        };
        text.push_str(&format!("{} = {value}\n", input.name));
    }
    text
}

/// Each stage's fingerprint and the plan's shape, or the error the recipe gives.
struct Laid {
    stages: BTreeMap<String, String>,
    shape: Result<String, String>,
    cache_directory: Option<std::path::PathBuf>,
}

fn lay_out(dir: &Path) -> Laid {
    let loaded = load_project(dir, &LoadOptions::default(), &RealReaderHost).unwrap();
    let cache_directory = loaded.recipe.output.cache_directory.clone();
    match pipeline(&loaded.recipe, &loaded.dir, Arc::new(RecordingHost::new())) {
        Ok(built) => {
            let mut stages = BTreeMap::new();
            let mut shape = String::new();
            for &index in built.graph.order() {
                let stage = built.graph.stage(index);
                shape.push_str(&format!("{} [{}]\n", stage.name(), stage.kind()));
                stages.insert(stage.name().to_string(), fingerprint(stage, &loaded.dir));
            }
            shape.push_str(&format!(
                "{} {:?} {:?}\n",
                built.export.main_path().display(),
                built.export.link,
                built.export.artifacts
            ));
            Laid {
                stages,
                shape: Ok(shape),
                cache_directory,
            }
        }
        Err(error) => Laid {
            stages: BTreeMap::new(),
            shape: Err(error.to_string()),
            cache_directory,
        },
    }
}

#[test]
fn every_built_setting_changes_what_the_table_says_it_changes() {
    let base_dir = project(None);
    let base = lay_out(base_dir.path());
    assert!(base.shape.is_ok(), "{:?}", base.shape);
    let mut failures = Vec::new();
    let mut checked = 0;
    for setting in settings_table() {
        let stages = match setting.built {
            Built::Stages(stages) => Some(stages),
            Built::Plan => None,
            _ => continue,
        };
        checked += 1;
        let drop_in = format!(
            "[{}]\n{}={}\n",
            setting.section,
            setting.name,
            changed_value(setting.name)
        );
        let dir = project(Some(&drop_in));
        let changed = lay_out(dir.path());
        match stages {
            Some(stages) => {
                for stage in stages {
                    let before = base.stages.get(*stage);
                    let after = changed.stages.get(*stage);
                    if before.is_none() && after.is_none() {
                        failures.push(format!(
                            "{}=: no stage `{stage}` in the graph",
                            setting.name
                        ));
                    } else if before == after {
                        failures.push(format!(
                            "{}=: changing it leaves the key of `{stage}` as it was",
                            setting.name
                        ));
                    }
                }
            }
            None => {
                if base.shape == changed.shape && base.cache_directory == changed.cache_directory {
                    failures.push(format!(
                        "{}=: changing it leaves the plan as it was",
                        setting.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked >= 40, "only {checked} settings are built");
}
