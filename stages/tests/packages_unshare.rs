//! The Debian packages stage without root: mmdebstrap's unshare mode, read back from its tar
//! archive, gives the tree root mode gives.
//!
//! Needs root (to create the unprivileged user `kiln-rootless` with subordinate ids, and for the
//! root-mode build), the network (the host's Debian mirror), mmdebstrap, `setpriv` and `uidmap`;
//! without root it says it is skipped. It builds Debian bookworm's essential set plus `hostname`
//! twice through the engine: once as root, once as `kiln-rootless` by running this test binary's
//! ignored `rootless_build` test as that user, into a store the user owns.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_cache::{Manifest, Store, TreeId};
use kiln_engine::{BuildOptions, Graph, SilentReporter, Stage, execute, plan};
use kiln_recipe::Distribution;
use kiln_stages::host::RealHost;
use kiln_stages::packages::apt::AptSetup;
use kiln_stages::packages::package_cache::PackageCache;
use kiln_stages::packages::{Installer, PackagesStage, mirror};
use kiln_stages::trees::{TreeLayer, TreesStage};

const USER: &str = "kiln-rootless";

/// Where the outer test tells the inner one to build.
const DIR_VARIABLE: &str = "KILN_TEST_ROOTLESS_DIR";

/// Builds the packages stage over an empty base in `dir` (holding `project/` and `store/`);
/// returns the store and the stage's tree.
fn build(dir: &Path) -> (Store, TreeId) {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("base")).unwrap();
    let store = Store::open(&dir.join("store")).unwrap();
    let setup = AptSetup {
        distribution: Distribution::Debian,
        release: "bookworm".to_string(),
        mirror: mirror::mirror(None, Distribution::Debian, "x86-64"),
        components: vec!["main".to_string()],
        architecture: "amd64".to_string(),
        packages: vec!["hostname".to_string()],
        with_docs: false,
    };
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(TreesStage {
            name: "base-trees".to_string(),
            base: None,
            layers: vec![TreeLayer {
                source: "base".into(),
                target: None,
                owned_by_root: true,
            }],
        }),
        Box::new(PackagesStage::new(
            "base-trees",
            Installer::Apt(setup),
            None,
            Arc::new(RealHost::new()),
        )),
    ];
    let graph = Graph::new(stages).unwrap();
    let plan = plan(
        &graph,
        Some(&store),
        &project,
        kiln_engine::PlanOptions::build(false, false),
    )
    .unwrap();
    let options = BuildOptions {
        started: std::time::SystemTime::now(),
        recipe: "rootless".to_string(),
        project_dir: project.clone(),
        force_rerun: false,
        jobs: 1,
    };
    let report = execute(&graph, &plan, &store, &options, &SilentReporter)
        .unwrap_or_else(|error| panic!("{error:?}"));
    let tree = report.stage("packages").unwrap().output;
    (store, tree)
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed");
}

fn output(command: &mut Command) -> String {
    let output = command.output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Creates `kiln-rootless` with subordinate ids unless it exists; returns its uid and gid.
fn rootless_user() -> (String, String) {
    if !Command::new("id")
        .arg(USER)
        .output()
        .unwrap()
        .status
        .success()
    {
        run(Command::new("useradd").args(["--create-home", USER]));
    }
    for (file, option) in [
        ("/etc/subuid", "--add-subuids"),
        ("/etc/subgid", "--add-subgids"),
    ] {
        let ranges = std::fs::read_to_string(file).unwrap_or_default();
        if !ranges
            .lines()
            .any(|line| line.starts_with(&format!("{USER}:")))
        {
            run(Command::new("usermod").args([option, "1065536-1131071", USER]));
        }
    }
    (
        output(Command::new("id").args(["-u", USER])),
        output(Command::new("id").args(["-g", USER])),
    )
}

/// The entries that differ between two trees, for the failure message.
fn differences(a: &Manifest, b: &Manifest) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in a.entries() {
        match b.get(&entry.path) {
            None => lines.push(format!("only as root: /{}", entry.path)),
            Some(other) if other != entry => lines.push(format!(
                "/{}: root {:?} {:o} {}:{}, rootless {:?} {:o} {}:{}",
                entry.path,
                entry.kind.type_name(),
                entry.mode,
                entry.uid,
                entry.gid,
                other.kind.type_name(),
                other.mode,
                other.uid,
                other.gid
            )),
            Some(_) => {}
        }
    }
    for entry in b.entries() {
        if a.get(&entry.path).is_none() {
            lines.push(format!("only rootless: /{}", entry.path));
        }
    }
    lines
}

/// Run by `debian_packages_without_root_equal_the_packages_as_root` as `kiln-rootless`.
#[test]
#[ignore = "run as an unprivileged user by debian_packages_without_root_equal_the_packages_as_root"]
fn rootless_build() {
    let Some(dir) = std::env::var_os(DIR_VARIABLE) else {
        return;
    };
    assert!(
        !kiln_test_support::is_root(),
        "the rootless build runs without root"
    );
    let dir = PathBuf::from(dir);
    let (store, tree) = build(&dir);
    // The downloaded packages came out of the namespace into the package cache.
    let cache = PackageCache::open(&store, "debs").unwrap();
    let debs = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".deb")
        })
        .count();
    assert!(debs > 50, "{debs} packages in the package cache");
    std::fs::write(dir.join("tree"), tree.to_hex()).unwrap();
}

#[test]
fn debian_packages_without_root_equal_the_packages_as_root() {
    kiln_test_support::require!(
        kiln_test_support::Need::Root,
        kiln_test_support::Need::Mirror,
        kiln_test_support::Need::Tool("mmdebstrap"),
        kiln_test_support::Need::Tool("newuidmap")
    );
    let (uid, gid) = rootless_user();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rootless = scratch.path().join("rootless");
    std::fs::create_dir(&rootless).unwrap();
    run(Command::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(&rootless));
    let home =
        output(Command::new("sh").args(["-c", &format!("getent passwd {USER} | cut -d: -f6")]));
    run(Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "rootless_build", "--nocapture"])
        .env(DIR_VARIABLE, &rootless)
        .env("HOME", home));
    let rootless_tree = std::fs::read_to_string(rootless.join("tree"))
        .expect("the rootless build records its tree");

    let (store, root_tree) = build(&scratch.path().join("root"));
    let as_root = store.manifest(&root_tree).unwrap();
    let rootless_store = Store::open(&rootless.join("store")).unwrap();
    let without_root = rootless_store
        .manifest(&rootless_tree.parse().unwrap())
        .unwrap();
    // Root-owned where root mode makes them root-owned; the `shadow` group (42) keeps its file.
    for path in ["", "usr/bin", "usr/bin/hostname"] {
        let entry = without_root
            .get(path)
            .unwrap_or_else(|| panic!("no /{path}"));
        assert_eq!((entry.uid, entry.gid), (0, 0), "/{path}");
    }
    // System groups keep theirs: `mail` (8) and `shadow` (42).
    let owner = |path: &str| {
        let entry = without_root
            .get(path)
            .unwrap_or_else(|| panic!("no /{path}"));
        (entry.uid, entry.gid, entry.mode)
    };
    assert_eq!(owner("var/mail"), (0, 8, 0o2775));
    assert_eq!(owner("usr/sbin/unix_chkpwd"), (0, 42, 0o2755));
    let differences = differences(&as_root, &without_root);
    assert!(
        differences.is_empty(),
        "{} entries differ:\n{}",
        differences.len(),
        differences
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(root_tree.to_hex(), rootless_tree);
}
