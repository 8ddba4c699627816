//! End-to-end tests of package installation and the configuration stages after it.
//!
//! Every test here needs root (package managers chroot into the tree, the store keeps owners)
//! and prints that it is skipped without it.
//!
//! - `debian_*` tests build `recipes/debian-rescue` (as `Format=directory`) against the Debian
//!   mirror of the host: they need the network. The cold build runs once per test run, shared
//!   with the other test binaries (`common::debian_rescue`); the tests here share a project on
//!   a copy of its store and take turns.
//! - `arch_*` tests need no network: each makes a local pacman repository (packages built with
//!   makepkg, run as `nobody` because makepkg refuses root, indexed with repo-add) and builds an
//!   `Distribution=arch` tree from it through a `file://` mirror.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

use common::{Project, ran, stage};
use kiln_test_support::{Facts, Need, assert_same_tree, tree_listing};

/// What the store holds, as these tests inspect it.
impl Project {
    /// How many objects and trees the store holds.
    fn object_count(&self) -> usize {
        ["objects", "trees"]
            .iter()
            .map(|dir| {
                walkdir::WalkDir::new(self.store.join("v1").join(dir))
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_file())
                    .count()
            })
            .sum()
    }

    fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.store.join("v1/tmp"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn cached_packages(&self, cache: &str) -> usize {
        std::fs::read_dir(self.store.join("v1/packages").join(cache))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }
}

/// The `before -> after` of each reason of a stage, by input.
fn reasons(stage: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    stage["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|reason| {
            (
                reason["input"].as_str().unwrap().to_string(),
                reason["before"].as_str().map(str::to_string),
                reason["after"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The installed packages of a dpkg status file, as `NAME VERSION ARCH` lines.
fn dpkg_installed(status: &str) -> String {
    let mut lines = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}: ")))
                .map(str::to_string)
        };
        if field("Status").as_deref() == Some("install ok installed") {
            lines.push(format!(
                "{} {} {}\n",
                field("Package").unwrap(),
                field("Version").unwrap(),
                field("Architecture").unwrap()
            ));
        }
    }
    lines.sort();
    lines.concat()
}

// ------------------------------------------------------------------------------------------
// Debian: recipes/debian-rescue against the Debian mirror (network).

struct Debian {
    project: Project,
    /// The resolved listing the cold build recorded.
    listing: String,
}

static DEBIAN: OnceLock<Mutex<Debian>> = OnceLock::new();

/// The debian-rescue project, built once for the whole test binary on a copy of the run's cold
/// build.
fn debian() -> MutexGuard<'static, Debian> {
    let debian = DEBIAN.get_or_init(|| {
        let cold = common::debian_rescue();
        // In a folder of its own, emptied by the next run: a static is never dropped.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-rescue-suite");
        let project = Project::copy_of_in(&dir, "debian-rescue", "debian-rescue");
        common::copy_store(&cold.path().join("store"), &project.store);
        project.write("mkosi.local.conf", "[Output]\nFormat=directory\n");
        let outcomes = project.build(&[]);
        // The run's cold build installed the packages; this build stored them only if the
        // mirror changed since.
        let explanation = match outcomes.get("packages").map(String::as_str) {
            Some("ran") => project.explain(),
            Some("cached") => serde_json::from_str(&cold.read("explain.json")).unwrap(),
            other => panic!("packages: {other:?} in {outcomes:?}"),
        };
        let packages = reasons(stage(&explanation, "packages"));
        let listing = packages
            .iter()
            .find(|(input, _, _)| input == "packages")
            .and_then(|(_, _, after)| after.clone())
            .expect("the build that ran packages records the resolved set");
        Mutex::new(Debian { project, listing })
    });
    debian
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Network: needs the Debian mirror.
#[test]
fn debian_rescue_installs_exactly_the_resolved_set_and_a_rebuild_installs_nothing() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let root = project.output_dir();

    // What the key was computed from is what is installed, package for package.
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert_eq!(dpkg_installed(&status), debian.listing);
    for package in ["systemd ", "nano ", "iwd ", "base-files ", "dpkg "] {
        assert!(
            debian.listing.lines().any(|line| line.starts_with(package)),
            "{package} is not in the set"
        );
    }
    assert!(
        debian
            .listing
            .lines()
            .any(|line| line.starts_with("linux-image-6."))
    );
    assert!(
        !debian.listing.lines().any(|line| line.starts_with("apt ")),
        "apt is not essential"
    );

    // No initrd was generated inside the image; the kernel is there.
    let boot: Vec<String> = std::fs::read_dir(root.join("boot"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        boot.iter().any(|name| name.starts_with("vmlinuz-")),
        "{boot:?}"
    );
    assert!(
        !boot.iter().any(|name| name.starts_with("initrd")),
        "{boot:?}"
    );

    // Configuration after the packages.
    assert_eq!(project.read("etc/hostname"), "debian-rescue\n");
    let shadow = project.read("etc/shadow");
    assert!(
        shadow
            .lines()
            .any(|line| line.starts_with("root:$6$kilnrescue$")),
        "{shadow}"
    );
    // The tree's shape as mkosi leaves it: machine-id to be initialised at the first boot, an
    // empty /dev, the os-release lines, the first-boot settings.
    assert_eq!(project.read("etc/machine-id"), "uninitialized\n");
    assert_eq!(std::fs::read_dir(root.join("dev")).unwrap().count(), 0);
    let os_release = project.read("usr/lib/os-release");
    assert!(
        os_release.contains("IMAGE_ID=\"debian-rescue\"\n"),
        "{os_release}"
    );
    assert!(
        os_release.contains("VARIANT=\"Rescue Image\""),
        "{os_release}"
    );
    assert!(
        project
            .read("etc/os-release")
            .contains("PRETTY_NAME=\"Debian GNU/Linux (Rescue Image n/a)\""),
        "{}",
        project.read("etc/os-release")
    );
    assert_eq!(project.read("etc/locale.conf"), "LANG=C.UTF-8\n");
    assert_eq!(
        std::fs::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("../usr/share/zoneinfo/UTC")
    );
    // The modules the seed's rules keep, and no more: nothing of sound/ or drm/.
    let kernel_dir = std::fs::read_dir(root.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(kernel_dir.join("modules.dep").is_file());
    let sound_modules = walkdir::WalkDir::new(kernel_dir.join("kernel/sound"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .count();
    // mkosi searches the rules unanchored: `usb/` keeps sound/usb/ (and what it needs from
    // sound/core/), but no sound card on PCI; like mkosi, emptied directories stay.
    assert!(sound_modules > 0);
    assert!(
        kernel_dir
            .join("kernel/sound/usb/snd-usb-audio.ko")
            .exists()
    );
    let pci_sound_modules = walkdir::WalkDir::new(kernel_dir.join("kernel/sound/pci"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .count();
    assert_eq!(pci_sound_modules, 0);
    assert!(kernel_dir.join("kernel/fs/ext4").exists());
    assert!(
        root.join("etc/systemd/system/multi-user.target.wants/iwd.service")
            .is_symlink()
    );
    // The host's resolv.conf did not leak in: systemd-resolved made its link.
    let resolv = std::fs::read_link(root.join("etc/resolv.conf")).unwrap();
    assert!(
        resolv.ends_with("run/systemd/resolve/stub-resolv.conf"),
        "{}",
        resolv.display()
    );
    assert!(project.read("etc/apt/sources.list").contains("bookworm"));
    assert!(project.cached_packages("debs") >= debian.listing.lines().count());

    // A second build resolves again, finds the same set, and runs nothing.
    let before = tree_listing(&root, Facts::Inodes);
    let started = std::time::Instant::now();
    let again = project.build(&[]);
    assert!(ran(&again).is_empty(), "{again:?}");
    assert_eq!(again.get("packages").map(String::as_str), Some("cached"));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(tree_listing(&root, Facts::Inodes), before);
    assert!(
        project.temp_files().is_empty(),
        "{:?}",
        project.temp_files()
    );
}

/// Network: needs the Debian mirror.
#[test]
fn debian_hostname_change_reruns_only_the_hostname_stage_and_what_follows() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    project.write(
        "mkosi.local.conf",
        "[Output]\nFormat=directory\n[Content]\nHostname=changed\n",
    );
    let outcomes = project.build(&[]);
    project.write("mkosi.local.conf", "[Output]\nFormat=directory\n");
    // os-release carries the hostname as DEFAULT_HOSTNAME, as mkosi writes it: every stage
    // from there on runs.
    assert_eq!(ran(&outcomes), from_stage("os-release"), "{outcomes:?}");
    assert_eq!(project.read("etc/hostname"), "changed\n");
    let explanation = project.explain();
    let changed = (
        "Hostname".to_string(),
        Some("debian-rescue".to_string()),
        Some("changed".to_string()),
    );
    assert_eq!(
        reasons(stage(&explanation, "os-release")),
        vec![changed.clone()]
    );
    assert!(reasons(stage(&explanation, "hostname")).contains(&changed));
    // Back to the recipe's hostname: every stage is cached again.
    let back = project.build(&[]);
    assert!(
        ran(&back).iter().all(|stage| *stage == "output"),
        "{back:?}"
    );
    assert_eq!(project.read("etc/hostname"), "debian-rescue\n");
}

/// Network: needs the Debian mirror.
#[test]
fn debian_lock_writes_the_resolved_set_and_locked_builds_hold_to_it() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let output = project.kiln(&["lock"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lock = std::fs::read_to_string(project.root.join("kiln.lock")).unwrap();
    assert!(
        lock.contains(&format!("[packages]\n{}", debian.listing)),
        "{lock}"
    );
    let locked = project.build(&["--locked"]);
    assert_eq!(locked.get("packages").map(String::as_str), Some("cached"));

    // A lock the mirror no longer matches: the build names the differing packages.
    let systemd = debian
        .listing
        .lines()
        .find(|line| line.starts_with("systemd "))
        .unwrap();
    let nano = debian
        .listing
        .lines()
        .find(|line| line.starts_with("nano "))
        .unwrap();
    let tampered = lock
        .replace(&format!("{systemd}\n"), "systemd 1.0 amd64\n")
        .replace(&format!("{nano}\n"), "");
    std::fs::write(project.root.join("kiln.lock"), tampered).unwrap();
    let stderr = project.build_fails(&["--locked"]);
    std::fs::remove_file(project.root.join("kiln.lock")).unwrap();
    assert!(stderr.contains("differ from `kiln.lock`"), "{stderr}");
    let systemd_version = systemd.split(' ').nth(1).unwrap();
    assert!(
        stderr.contains(&format!("systemd 1.0 amd64 -> {systemd_version} amd64")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{nano} added")), "{stderr}");
    assert!(stderr.contains("kiln lock"), "{stderr}");
    // Without --locked the lock is not consulted.
    let unlocked = project.build(&[]);
    assert!(ran(&unlocked).is_empty(), "{unlocked:?}");
}

/// Network: needs the Debian mirror.
#[test]
fn debian_unknown_packages_and_unreachable_mirrors_fail_before_anything_is_stored() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let objects = project.object_count();
    let before = tree_listing(&project.output_dir(), Facts::Inodes);

    project.write(
        "mkosi.local.conf",
        "[Output]\nFormat=directory\n[Content]\nPackages=kiln-no-such-package\n",
    );
    let unknown = project.build_fails(&[]);
    assert!(
        unknown.contains("The mirror has no package `kiln-no-such-package`"),
        "{unknown}"
    );
    assert!(
        unknown.contains("Unable to locate package kiln-no-such-package"),
        "{unknown}"
    );
    // At the entry that asked for it.
    assert!(unknown.contains("[mkosi.local.conf:4:10]"), "{unknown}");
    assert!(unknown.contains("set here"), "{unknown}");

    project.write(
        "mkosi.local.conf",
        "[Output]\nFormat=directory\n[Distribution]\nMirror=http://127.0.0.1:9\n",
    );
    let unreachable = project.build_fails(&[]);
    project.write("mkosi.local.conf", "[Output]\nFormat=directory\n");
    assert!(
        unreachable.contains("http://127.0.0.1:9/debian"),
        "{unreachable}"
    );
    assert!(unreachable.contains("Connection refused"), "{unreachable}");

    assert_eq!(project.object_count(), objects);
    assert!(
        project.temp_files().is_empty(),
        "{:?}",
        project.temp_files()
    );
    assert_eq!(tree_listing(&project.output_dir(), Facts::Inodes), before);
}

/// Network: needs the Debian mirror.
#[test]
fn debian_a_failing_maintainer_script_shows_its_output_and_keeps_the_previous_output() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let before = tree_listing(&project.output_dir(), Facts::Inodes);
    // A kernel hook that refuses every kernel: linux-image's postinst runs it and fails.
    project.write(
        "mkosi.skeleton/etc/kernel/postinst.d/zz-kiln-refuse",
        "#!/bin/sh\necho \"kiln-test: refusing kernel $1\"\nexit 1\n",
    );
    std::fs::set_permissions(
        project
            .root
            .join("mkosi.skeleton/etc/kernel/postinst.d/zz-kiln-refuse"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let stderr = project.build_fails(&[]);
    project.remove("mkosi.skeleton");
    assert!(
        stderr.contains("The maintainer script of `linux-image-6."),
        "{stderr}"
    );
    assert!(stderr.contains("kiln-test: refusing kernel 6."), "{stderr}");
    assert!(
        project.temp_files().is_empty(),
        "{:?}",
        project.temp_files()
    );
    assert_eq!(tree_listing(&project.output_dir(), Facts::Inodes), before);
    // Nothing was recorded for the failed run: the recipe as it was is still fully cached.
    let shown = project.graph_show();
    assert!(shown.contains("packages [packages-apt]: cached"), "{shown}");
}

/// Network: needs the Debian mirror (for planning the recipe).
#[test]
fn debian_a_root_password_file_others_can_read_is_refused() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let before = tree_listing(&project.output_dir(), Facts::Inodes);
    let rootpw = project.root.join("mkosi.rootpw");
    std::fs::write(&rootpw, "hashed:$6$salt$hash\n").unwrap();
    std::fs::set_permissions(&rootpw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = project.build_fails(&[]);
    std::fs::remove_file(&rootpw).unwrap();
    assert!(stderr.contains("mkosi.rootpw"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert_eq!(tree_listing(&project.output_dir(), Facts::Inodes), before);
}

/// `kiln ARGS` run as a user runs it: from inside the project, with the store given relative to
/// it (`--cache-dir ../store`).
fn kiln_inside(project: &Project, args: &[&str]) -> std::process::Output {
    assert_eq!(project.store.parent(), project.root.parent());
    common::kiln()
        .current_dir(&project.root)
        .args(["--cache-dir", "../store"])
        .args(args)
        .output()
        .unwrap()
}

/// Build from inside the project; returns each stage's outcome.
fn build_inside(project: &Project, args: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut all = args.to_vec();
    all.push("build");
    let output = kiln_inside(project, &all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build failed:\n{stderr}");
    assert!(
        !stderr.contains("/v1/tmp/"),
        "a scratch path reached the user:\n{stderr}"
    );
    common::outcomes(&stderr)
}

/// The stages after `first` in debian-rescue's graph, `first` included.
fn from_stage(first: &str) -> Vec<&'static str> {
    const ORDER: &[&str] = &[
        "extra-trees",
        "postinst",
        "os-release",
        "presets",
        "modules",
        "firstboot",
        "hostname",
        "root-password",
        "machine-id",
        "remove-files",
        "finalize",
        "output",
    ];
    let start = ORDER.iter().position(|stage| *stage == first).unwrap();
    let mut stages = ORDER[start..].to_vec();
    stages.sort();
    stages
}

/// Network: needs the Debian mirror.
#[test]
fn debian_edit_loop_from_inside_the_project_with_a_relative_store() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    let root = project.output_dir();
    let clean = tree_listing(&root, Facts::Copy);

    // Nothing changed: nothing runs, the output is left alone.
    let outcomes = build_inside(project, &[]);
    assert!(ran(&outcomes).is_empty(), "{outcomes:?}");

    // Add, change and remove a file of mkosi.extra: every stage from extra-trees on may run
    // (postinst re-indexes the manual pages), none before it, and each build succeeds.
    project.write("mkosi.extra/etc/kiln-edit-loop", "one\n");
    let outcomes = build_inside(project, &[]);
    assert_eq!(ran(&outcomes), from_stage("extra-trees"), "{outcomes:?}");
    assert_eq!(project.read("etc/kiln-edit-loop"), "one\n");
    let explanation = project.explain();
    let extra = stage(&explanation, "extra-trees");
    assert_eq!(
        reasons(extra)
            .into_iter()
            .map(|(input, _, _)| input)
            .collect::<Vec<_>>(),
        vec!["mkosi.extra:etc/kiln-edit-loop"]
    );
    project.write("mkosi.extra/etc/kiln-edit-loop", "two\n");
    let outcomes = build_inside(project, &[]);
    assert!(ran(&outcomes).contains(&"extra-trees"), "{outcomes:?}");
    assert_eq!(project.read("etc/kiln-edit-loop"), "two\n");
    project.remove("mkosi.extra/etc/kiln-edit-loop");
    let outcomes = build_inside(project, &[]);
    assert!(!root.join("etc/kiln-edit-loop").exists());
    // Back to the recipe as it was: its stages are found in the cache.
    assert!(
        ran(&outcomes).len() <= from_stage("extra-trees").len(),
        "{outcomes:?}"
    );
    assert_same_tree(&tree_listing(&root, Facts::Copy), &clean);

    // The finalize script: only finalize and the output.
    let finalize = std::fs::read_to_string(project.root.join("mkosi.finalize")).unwrap();
    project.write(
        "mkosi.finalize",
        &format!("{finalize}echo KILN_EDITED=1 >> \"$BUILDROOT/etc/os-release\"\n"),
    );
    let outcomes = build_inside(project, &[]);
    assert_eq!(ran(&outcomes), vec!["finalize", "output"], "{outcomes:?}");
    assert!(project.read("etc/os-release").contains("KILN_EDITED=1"));
    project.write("mkosi.finalize", &finalize);

    // The postinst script: postinst and everything after it.
    let postinst = std::fs::read_to_string(project.root.join("mkosi.postinst.chroot")).unwrap();
    project.write(
        "mkosi.postinst.chroot",
        &format!("{postinst}echo edited > /etc/kiln-postinst\n"),
    );
    let outcomes = build_inside(project, &[]);
    assert_eq!(ran(&outcomes), from_stage("postinst"), "{outcomes:?}");
    assert_eq!(project.read("etc/kiln-postinst"), "edited\n");
    project.write("mkosi.postinst.chroot", &postinst);

    // The image version: os-release (IMAGE_VERSION=, as mkosi writes it) and every stage after.
    let outcomes = build_inside(project, &["--image-version", "7"]);
    assert_eq!(ran(&outcomes), from_stage("os-release"), "{outcomes:?}");
    let versioned = project.root.join("mkosi.output/debian-rescue_7");
    assert!(
        std::fs::read_to_string(versioned.join("etc/os-release"))
            .unwrap()
            .contains("(Rescue Image 7)")
    );

    // Back to the recipe: every stage is cached, and the unversioned output replaces the link,
    // equal to the clean build.
    let outcomes = build_inside(project, &[]);
    assert!(ran(&outcomes).is_empty(), "{outcomes:?}");
    assert!(!root.is_symlink());
    assert_same_tree(&tree_listing(&root, Facts::Copy), &clean);

    // `kiln cache gc` keeps every stage cached and freezes (compresses) the blobs nothing links;
    // an edit then thaws what its stages read, and the tree is the same as before.
    let gc = kiln_inside(project, &["cache", "gc"]);
    let said = String::from_utf8_lossy(&gc.stdout);
    assert!(
        gc.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let frozen: usize = said
        .split("froze ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gc said: {said}"));
    assert!(frozen > 1000, "gc froze only {frozen} blobs: {said}");
    let outcomes = build_inside(project, &[]);
    assert!(ran(&outcomes).is_empty(), "{outcomes:?}");
    project.write("mkosi.extra/etc/kiln-edit-loop", "after gc\n");
    let outcomes = build_inside(project, &[]);
    assert_eq!(ran(&outcomes), from_stage("extra-trees"), "{outcomes:?}");
    assert_eq!(project.read("etc/kiln-edit-loop"), "after gc\n");
    project.remove("mkosi.extra/etc/kiln-edit-loop");
    build_inside(project, &[]);
    assert_same_tree(&tree_listing(&root, Facts::Copy), &clean);
    let verify = kiln_inside(project, &["cache", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // A clean build (every stage run again, in the same store): the same tree.
    let outcomes = build_inside(project, &["-ff"]);
    assert!(
        outcomes
            .values()
            .all(|outcome| outcome == "ran, output unchanged"),
        "{outcomes:?}"
    );
    assert_same_tree(&tree_listing(&root, Facts::Copy), &clean);
    std::fs::remove_dir_all(&versioned).unwrap();
}

/// Network: needs the Debian mirror (once, for the resolution offline builds reuse).
#[test]
fn debian_offline_builds_and_reading_verbs_never_touch_the_network() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let debian = debian();
    let project = &debian.project;
    // A proxy that refuses every connection stands in for a machine without network.
    let offline = |args: &[&str]| {
        project
            .command(args)
            .env("http_proxy", "http://127.0.0.1:9")
            .env("https_proxy", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .output()
            .unwrap()
    };
    let online_only = offline(&["build"]);
    assert_eq!(online_only.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&online_only.stderr);
    assert!(stderr.contains("Cannot reach the mirror"), "{stderr}");
    assert!(stderr.contains("--offline"), "{stderr}");

    let built = offline(&["--offline", "build"]);
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{stderr}");
    assert!(ran(&common::outcomes(&stderr)).is_empty(), "{stderr}");
    let explain = project.kiln(&["graph", "explain", "packages"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("note: resolved offline"), "{text}");
    assert!(text.contains(" ago)"), "{text}");

    for verb in [&["graph", "show"][..], &["recipe", "show"][..]] {
        let output = offline(verb);
        assert!(
            output.status.success(),
            "{verb:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let shown = String::from_utf8_lossy(&offline(&["graph", "show"]).stdout).into_owned();
    assert!(shown.contains("packages [packages-apt]: cached"), "{shown}");
}

/// A unit the boot test adds through an extra tree of its own: once root is logged in on the
/// serial console, it prints a marker with the image's PRETTY_NAME and IMAGE_VERSION and powers
/// the machine off.
const BOOT_MARKER_UNIT: &str = "[Unit]
Description=kiln's boot test marker
After=getty.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for i in $(seq 120); do who | grep -q ttyS0 && break; sleep 1; done; . /etc/os-release; echo \"KILN-BOOTED pretty=$PRETTY_NAME version=$IMAGE_VERSION\" > /dev/ttyS0; systemctl poweroff'

[Install]
WantedBy=multi-user.target
";

/// Network: needs the Debian mirror; and qemu with OVMF. Boots with TCG (this machine's KVM
/// cannot run OVMF), a few minutes at most.
#[test]
fn debian_rescue_uki_boots_to_an_autologin_root_shell() {
    kiln_test_support::require!(
        Need::Root,
        Need::Mirror,
        Need::Tool("mmdebstrap"),
        Need::Tool("qemu-system-x86_64"),
        Need::File("/usr/share/OVMF/OVMF_CODE_4M.fd")
    );
    let debian = debian();
    let project = &debian.project;
    let extra = project.root.parent().unwrap().join("boot-test-tree");
    let unit = extra.join("etc/systemd/system/kiln-boot-marker.service");
    std::fs::create_dir_all(unit.parent().unwrap().join("multi-user.target.wants")).unwrap();
    std::fs::write(&unit, BOOT_MARKER_UNIT).unwrap();
    std::os::unix::fs::symlink(
        "../kiln-boot-marker.service",
        unit.parent()
            .unwrap()
            .join("multi-user.target.wants/kiln-boot-marker.service"),
    )
    .unwrap();
    project.write(
        "mkosi.local.conf",
        &format!(
            "[Output]\nFormat=uki\n[Content]\nExtraTrees={}\n",
            extra.display()
        ),
    );
    let built = project.build(&["--autologin", "--image-version", "e2e.7"]);
    let efi = project.root.join("mkosi.output/debian-rescue_e2e.7.efi");
    assert!(efi.is_file(), "{built:?}");
    // The UKI holds the os-release mkosi writes, and the kernel mkosi splits out beside it.
    let inspect = project.kiln(&["inspect", efi.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("IMAGE_ID=\"debian-rescue\""), "{text}");
    assert!(text.contains("IMAGE_VERSION=\"e2e.7\""), "{text}");
    assert!(
        text.contains("PRETTY_NAME=\"Debian GNU/Linux (Rescue Image e2e.7)\""),
        "{text}"
    );
    assert!(
        project
            .root
            .join("mkosi.output/debian-rescue_e2e.7.vmlinuz")
            .is_file()
    );
    assert!(
        project
            .root
            .join("mkosi.output/debian-rescue_e2e.7.initrd")
            .is_file()
    );

    let mut command = project.command(&[
        "--image-version",
        "e2e.7",
        "qemu",
        "--accel",
        "tcg",
        "--qemu-mem",
        "2G",
    ]);
    command.env_remove("NO_COLOR");
    let mut console = common::Console::start(command, std::time::Duration::from_secs(420));
    console.wait_for("debian-rescue login: root (automatic login)");
    console.wait_for("KILN-BOOTED pretty=Debian GNU/Linux (Rescue Image e2e.7) version=e2e.7");
    assert_eq!(console.exit_code(), Some(0), "{}", console.text);
    drop(console);

    project.write("mkosi.local.conf", "[Output]\nFormat=directory\n");
    std::fs::remove_dir_all(&extra).unwrap();
    for suffix in [".efi", ".vmlinuz", ".initrd"] {
        let _ = std::fs::remove_file(
            project
                .root
                .join(format!("mkosi.output/debian-rescue_e2e.7{suffix}")),
        );
    }
}

// ------------------------------------------------------------------------------------------
// Arch: a local pacman repository served by file://.

/// A pacman repository with `core` and `extra`, and packages built for it by makepkg.
struct ArchRepo {
    _dir: tempfile::TempDir,
    mirror: PathBuf,
    work: PathBuf,
}

impl ArchRepo {
    fn new() -> ArchRepo {
        let dir = tempfile::tempdir().unwrap();
        // makepkg runs as nobody: it must reach its folders.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mirror = dir.path().join("mirror");
        let work = dir.path().join("work");
        for path in [
            mirror.join("core/os/x86_64"),
            mirror.join("extra/os/x86_64"),
            work.clone(),
        ] {
            std::fs::create_dir_all(path).unwrap();
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
        ArchRepo {
            _dir: dir,
            mirror,
            work,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.mirror.display())
    }

    /// Build `name` `version`-1 with makepkg as nobody and add it to `repo`. `package` is the
    /// body of the PKGBUILD's package() function; `install` that of a post_install().
    fn add(
        &self,
        repo: &str,
        name: &str,
        version: &str,
        depends: &[&str],
        package: &str,
        install: Option<&str>,
    ) {
        let build = self.work.join(format!("{name}-{version}"));
        std::fs::create_dir_all(&build).unwrap();
        let mut pkgbuild = format!(
            "pkgname={name}\npkgver={version}\npkgrel=1\npkgdesc='kiln test package'\narch=('any')\n\
             license=('MIT')\ndepends=({})\noptions=(!strip !debug)\npackage() {{\n{package}\n}}\n",
            depends
                .iter()
                .map(|dep| format!("'{dep}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Some(body) = install {
            pkgbuild.push_str(&format!("install={name}.install\n"));
            std::fs::write(
                build.join(format!("{name}.install")),
                format!("post_install() {{\n{body}\n}}\n"),
            )
            .unwrap();
        }
        std::fs::write(build.join("PKGBUILD"), pkgbuild).unwrap();
        let status = Command::new("chmod")
            .arg("-R")
            .arg("a+rwX")
            .arg(&build)
            .status()
            .unwrap();
        assert!(status.success());
        let output = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                "makepkg",
                "--nodeps",
                "--force",
            ])
            .current_dir(&build)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &build)
            .env("PKGDEST", &build)
            .env("SRCDEST", &build)
            .env("BUILDDIR", build.join("b"))
            .env("PKGEXT", ".pkg.tar.gz")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "makepkg {name} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let file = format!("{name}-{version}-1-any.pkg.tar.gz");
        let dir = self.mirror.join(repo).join("os/x86_64");
        std::fs::copy(build.join(&file), dir.join(&file)).unwrap();
        let output = Command::new("repo-add")
            .arg("--quiet")
            .arg(format!("{repo}.db.tar.gz"))
            .arg(&file)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "repo-add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// core: kiln-base (passwd, shadow); extra: kiln-hello, which depends on it.
    fn with_base_and_hello() -> ArchRepo {
        let repo = ArchRepo::new();
        repo.base("1.0");
        repo.add(
            "extra",
            "kiln-hello",
            "1.0",
            &["kiln-base"],
            "install -d \"$pkgdir/usr/share/kiln-hello\" \"$pkgdir/usr/share/doc/kiln-hello\"\n\
             echo \"hello $pkgver\" > \"$pkgdir/usr/share/kiln-hello/hello.txt\"\n\
             echo docs > \"$pkgdir/usr/share/doc/kiln-hello/README\"",
            None,
        );
        repo
    }

    fn base(&self, version: &str) {
        self.add(
            "core",
            "kiln-base",
            version,
            &[],
            "install -d \"$pkgdir/etc\"\n\
             echo 'root:x:0:0:root:/root:/bin/sh' > \"$pkgdir/etc/passwd\"\n\
             echo 'root:!*:19000::::::' > \"$pkgdir/etc/shadow\"\nchmod 600 \"$pkgdir/etc/shadow\"\n\
             echo \"ID=kiln-base-$pkgver\" > \"$pkgdir/etc/os-release\"",
            None,
        );
    }
}

fn arch_project(repo: &ArchRepo, content: &str) -> Project {
    let project = Project::empty("arch", "arch-test");
    project.write(
        "mkosi.conf",
        &format!(
            "[Distribution]\nDistribution=arch\nMirror={}\n\n[Output]\nImageId=arch-test\nFormat=directory\n\n\
             [Content]\n{content}",
            repo.url()
        ),
    );
    project
}

#[test]
fn arch_tree_from_a_local_repository_and_a_new_version_is_explained_package_by_package() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman"),
        Need::Tool("makepkg"),
        Need::Tool("repo-add")
    );
    let repo = ArchRepo::with_base_and_hello();
    let project = arch_project(&repo, "Packages=kiln-hello\nHostname=arch-test\n");
    let first = project.build(&[]);
    assert_eq!(
        ran(&first),
        vec![
            "base-trees",
            "hostname",
            "machine-id",
            "os-release",
            "output",
            "packages",
            "presets"
        ]
    );
    assert_eq!(
        project.read("usr/share/kiln-hello/hello.txt"),
        "hello 1.0\n"
    );
    assert_eq!(project.read("usr/share/doc/kiln-hello/README"), "docs\n");
    // ImageId= (the project's name here) and Hostname= added, as mkosi adds them.
    assert_eq!(
        project.read("etc/os-release"),
        "ID=kiln-base-1.0\nIMAGE_ID=\"arch-test\"\nDEFAULT_HOSTNAME=\"arch-test\"\n"
    );
    assert_eq!(project.read("etc/hostname"), "arch-test\n");
    let local = project.output_dir().join("var/lib/pacman/local");
    assert!(local.join("kiln-base-1.0-1/desc").is_file());
    assert!(local.join("kiln-hello-1.0-1/desc").is_file());
    // The sync databases are not part of the image; the packages are in the store's cache.
    assert!(!project.output_dir().join("var/lib/pacman/sync").exists());
    assert_eq!(project.cached_packages("pkgs"), 2);
    let explanation = project.explain();
    let resolved = reasons(stage(&explanation, "packages"))
        .into_iter()
        .find(|(input, _, _)| input == "packages")
        .and_then(|(_, _, after)| after);
    assert_eq!(
        resolved.as_deref(),
        Some("kiln-base 1.0-1 any\nkiln-hello 1.0-1 any\n")
    );

    // The mirror gains a package the image does not install: same resolution, all cached.
    repo.add(
        "extra",
        "kiln-unrelated",
        "1.0",
        &[],
        "install -d \"$pkgdir/usr/share/unrelated\"",
        None,
    );
    let unrelated = project.build(&[]);
    assert!(ran(&unrelated).is_empty(), "{unrelated:?}");

    // A new version of a dependency: the stage re-runs and explain names the package.
    repo.base("1.1");
    let bumped = project.build(&[]);
    assert!(ran(&bumped).contains(&"packages"), "{bumped:?}");
    assert_eq!(
        project.read("etc/os-release"),
        "ID=kiln-base-1.1\nIMAGE_ID=\"arch-test\"\nDEFAULT_HOSTNAME=\"arch-test\"\n"
    );
    let explanation = project.explain();
    let packages = stage(&explanation, "packages");
    assert_eq!(
        reasons(packages),
        vec![(
            "packages:kiln-base".to_string(),
            Some("1.0-1 any".to_string()),
            Some("1.1-1 any".to_string())
        )]
    );
    let text = project.kiln(&["graph", "explain", "packages"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("kiln-base 1.0-1 any -> 1.1-1 any"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // Only the new package was downloaded.
    assert_eq!(project.cached_packages("pkgs"), 3);
}

#[test]
fn arch_hostname_change_reruns_only_the_hostname_stage_and_its_descendants() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman"),
        Need::Tool("makepkg"),
        Need::Tool("repo-add")
    );
    let repo = ArchRepo::with_base_and_hello();
    let conf = |hostname: &str| {
        format!(
            "Packages=kiln-hello\nWithDocs=no\nAutologin=yes\nHostname={hostname}\n\
             RootPassword=hashed:$6$kilnrescue$z9eGXFryeRfsj574tN.CrbhWYayIe5FwIIyy8Al8IPMktQZt7JKBvSXfutyiE0dXycs2uakmg.6t3VF038ttK1\n"
        )
    };
    let project = arch_project(&repo, &conf("one"));
    let first = project.build(&[]);
    assert_eq!(first.len(), 9, "{first:?}");
    let shadow = project.read("etc/shadow");
    assert!(shadow.starts_with("root:$6$kilnrescue$z9eGXF"), "{shadow}");
    // WithDocs=no: pacman extracts no documentation.
    assert_eq!(
        project.read("usr/share/kiln-hello/hello.txt"),
        "hello 1.0\n"
    );
    assert!(
        !project
            .output_dir()
            .join("usr/share/doc/kiln-hello/README")
            .exists()
    );
    assert!(
        project
            .output_dir()
            .join("usr/lib/systemd/system/getty@tty1.service.d/autologin.conf")
            .is_file()
    );

    project.write(
        "mkosi.conf",
        &std::fs::read_to_string(project.root.join("mkosi.conf"))
            .unwrap()
            .replace("Hostname=one", "Hostname=two"),
    );
    let second = project.build(&[]);
    assert_eq!(
        ran(&second),
        vec![
            "hostname",
            "machine-id",
            "os-release",
            "output",
            "presets",
            "root-password"
        ]
    );
    assert_eq!(second.get("packages").map(String::as_str), Some("cached"));
    assert_eq!(second.get("autologin").map(String::as_str), Some("cached"));
    assert_eq!(project.read("etc/hostname"), "two\n");
}

#[test]
fn arch_a_failing_scriptlet_is_named_with_its_output_and_the_previous_output_stays() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman"),
        Need::Tool("makepkg"),
        Need::Tool("repo-add")
    );
    let repo = ArchRepo::with_base_and_hello();
    // A shell for scriptlets: the host's dash and the libraries it needs.
    let mut shell = String::from(
        "install -Dm755 /bin/dash \"$pkgdir/usr/bin/sh\"\nln -s usr/bin \"$pkgdir/bin\"\n",
    );
    let ldd = Command::new("ldd").arg("/bin/dash").output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let library = line.split_whitespace().find(|word| word.starts_with('/'));
        if let Some(library) = library {
            shell.push_str(&format!("install -Dm755 {library} \"$pkgdir{library}\"\n"));
        }
    }
    repo.add("core", "kiln-shell", "1.0", &[], &shell, None);
    repo.add(
        "extra",
        "kiln-broken",
        "1.0",
        &["kiln-shell"],
        "install -d \"$pkgdir/usr/share/kiln-broken\"",
        Some("  echo 'kiln-broken: refusing to configure'\n  exit 1"),
    );
    let project = arch_project(&repo, "Packages=kiln-hello\n");
    project.build(&[]);
    let before = tree_listing(&project.output_dir(), Facts::Inodes);

    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    project.write(
        "mkosi.conf",
        &conf.replace("Packages=kiln-hello", "Packages=kiln-hello,kiln-broken"),
    );
    let stderr = project.build_fails(&[]);
    assert!(
        stderr.contains("The maintainer script of `kiln-broken` failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kiln-broken: refusing to configure"),
        "{stderr}"
    );
    assert_eq!(tree_listing(&project.output_dir(), Facts::Inodes), before);
    assert!(
        project.temp_files().is_empty(),
        "{:?}",
        project.temp_files()
    );
    let shown = project.graph_show();
    assert!(
        shown.contains("packages [packages-pacman]: will run"),
        "{shown}"
    );
}

#[test]
fn arch_unknown_packages_and_missing_repositories_are_refused() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman"),
        Need::Tool("makepkg"),
        Need::Tool("repo-add")
    );
    let repo = ArchRepo::with_base_and_hello();
    let project = arch_project(&repo, "Packages=kiln-hello,kiln-no-such-package\n");
    let stderr = project.build_fails(&[]);
    assert!(
        stderr.contains("The mirror has no package `kiln-no-such-package`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("target not found: kiln-no-such-package"),
        "{stderr}"
    );
    assert_eq!(project.object_count(), 0);

    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    project.write(
        "mkosi.conf",
        &conf.replace(&repo.url(), "file:///nonexistent/kiln-mirror"),
    );
    let stderr = project.build_fails(&[]);
    assert!(stderr.contains("Cannot reach the mirror"), "{stderr}");
    assert!(stderr.contains("core.db"), "{stderr}");
    assert!(!project.output_dir().exists());
}

#[test]
fn arch_builds_from_inside_the_project_into_its_own_mkosi_cache() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman"),
        Need::Tool("makepkg"),
        Need::Tool("repo-add")
    );
    let repo = ArchRepo::with_base_and_hello();
    let project = arch_project(&repo, "Packages=kiln-hello\nHostname=arch-local\n");
    std::fs::create_dir(project.root.join("mkosi.cache")).unwrap();
    let build = || {
        let output = common::kiln()
            .current_dir(&project.root)
            .arg("build")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        common::outcomes(&stderr)
    };
    let first = build();
    assert!(ran(&first).contains(&"packages"), "{first:?}");
    assert!(project.root.join("mkosi.cache/v1/index.sqlite").is_file());
    assert!(
        !project.store.exists(),
        "the store is the project's mkosi.cache"
    );
    assert_eq!(
        project.read("usr/share/kiln-hello/hello.txt"),
        "hello 1.0\n"
    );
    assert_eq!(project.read("etc/hostname"), "arch-local\n");
    let again = build();
    assert!(ran(&again).is_empty(), "{again:?}");
}
