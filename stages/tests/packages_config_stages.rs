//! The image configuration stages that follow the packages (hostname, root password, autologin,
//! machine-id, /init, presets), run through the engine on a real store over a base tree made
//! here, and the stage graph `pipeline` builds for a distribution.
//!
//! Most tests need no privileges: the stages edit manifests. The presets test needs root (an
//! overlay over the tree) and the host's systemctl; without them it says it is skipped.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use kiln_cache::{Entry, EntryKind, Manifest, Store};
use kiln_engine::{BuildOptions, Graph, SilentReporter, Stage, execute, plan};
use kiln_recipe::{Distribution, OutputFormat, Recipe, RootPassword};
use kiln_stages::config::crypt::sha512_crypt;
use kiln_stages::config::{
    Autologin, EditStage, Hostname, Init, MachineId, PresetsStage, RootPasswordHash,
};
use kiln_stages::host::RealHost;
use kiln_stages::pipeline::{PipelineError, PipelineOptions, pipeline, pipeline_with};
use kiln_stages::trees::{TreeLayer, TreesStage};

/// A project directory holding `base/` with `files` (path, content, mode), and a store.
struct Fixture {
    _dir: tempfile::TempDir,
    project: std::path::PathBuf,
    store: Store,
}

impl Fixture {
    fn new(files: &[(&str, &str, u32)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        for (path, content, mode) in files {
            let full = project.join("base").join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        std::fs::create_dir_all(project.join("base")).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        Fixture {
            _dir: dir,
            project,
            store,
        }
    }

    fn base_stage() -> Box<dyn Stage> {
        Box::new(TreesStage {
            name: "base-trees".to_string(),
            base: None,
            layers: vec![TreeLayer {
                source: "base".into(),
                target: None,
                owned_by_root: true,
            }],
        })
    }

    /// Build `stages` after the base tree; returns which stages ran and the last one's tree.
    fn build(&self, stages: Vec<Box<dyn Stage>>) -> (Vec<String>, Manifest) {
        let mut all = vec![Fixture::base_stage()];
        all.extend(stages);
        let last = all.last().unwrap().name().to_string();
        let graph = Graph::new(all).unwrap();
        let plan = plan(
            &graph,
            Some(&self.store),
            &self.project,
            kiln_engine::PlanOptions::build(false, false),
        )
        .unwrap();
        let options = BuildOptions {
            started: std::time::SystemTime::now(),
            recipe: "config-stages".to_string(),
            project_dir: self.project.clone(),
            force_rerun: false,
            jobs: 1,
        };
        let report = execute(&graph, &plan, &self.store, &options, &SilentReporter).unwrap();
        let ran = report.ran().iter().map(|name| name.to_string()).collect();
        let output = report.stage(&last).unwrap().output;
        (ran, self.store.manifest(&output).unwrap())
    }

    fn text(&self, tree: &Manifest, path: &str) -> String {
        let entry = tree.get(path).unwrap_or_else(|| panic!("no {path}"));
        String::from_utf8(self.store.read_blob(entry.blob().unwrap()).unwrap()).unwrap()
    }
}

const SHADOW: &str = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";

#[test]
fn hostname_writes_etc_hostname_and_a_change_reruns_only_what_follows() {
    let fixture = Fixture::new(&[("etc/shadow", SHADOW, 0o640)]);
    let stages = |hostname: &str| -> Vec<Box<dyn Stage>> {
        vec![
            Box::new(EditStage {
                base: "base-trees".to_string(),
                edit: Hostname {
                    hostname: hostname.to_string(),
                },
            }),
            Box::new(EditStage {
                base: "hostname".to_string(),
                edit: MachineId,
            }),
        ]
    };
    let (ran, tree) = fixture.build(stages("rescue"));
    assert_eq!(ran, vec!["base-trees", "hostname", "machine-id"]);
    assert_eq!(fixture.text(&tree, "etc/hostname"), "rescue\n");
    let hostname = tree.get("etc/hostname").unwrap();
    assert_eq!((hostname.mode, hostname.uid, hostname.gid), (0o644, 0, 0));
    assert_eq!(fixture.text(&tree, "etc/machine-id"), "uninitialized\n");
    assert_eq!(tree.get("etc/machine-id").unwrap().mode, 0o444);

    let (ran, _) = fixture.build(stages("rescue"));
    assert!(ran.is_empty(), "{ran:?}");
    let (ran, tree) = fixture.build(stages("other"));
    assert_eq!(ran, vec!["hostname", "machine-id"]);
    assert_eq!(fixture.text(&tree, "etc/hostname"), "other\n");
}

#[test]
fn the_root_password_replaces_roots_hash_only() {
    let fixture = Fixture::new(&[("etc/shadow", SHADOW, 0o640)]);
    let password = RootPassword {
        value: "rescue".to_string(),
        hashed: false,
    };
    let edit = RootPasswordHash::new(&password, "debian-rescue");
    let hash = edit.hash().to_string();
    let (_, tree) = fixture.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit,
    })]);
    let shadow = fixture.text(&tree, "etc/shadow");
    assert_eq!(
        shadow,
        format!("root:{hash}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    );
    assert_eq!(tree.get("etc/shadow").unwrap().mode, 0o640);
    // The hash is SHA-512 crypt of the password with the salt it names.
    let salt = hash.split('$').nth(2).unwrap();
    assert_eq!(sha512_crypt(b"rescue", salt), hash);
}

#[test]
fn a_hashed_root_password_is_used_as_given_and_a_missing_shadow_is_created() {
    let fixture = Fixture::new(&[("etc/passwd", "root:*:0:0:root:/root:/bin/sh\n", 0o644)]);
    let password = RootPassword {
        value: "$6$salt$abc".to_string(),
        hashed: true,
    };
    let (_, tree) = fixture.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit: RootPasswordHash::new(&password, "i"),
    })]);
    assert_eq!(
        fixture.text(&tree, "etc/shadow"),
        "root:$6$salt$abc::0:99999:7:::\n"
    );
    assert_eq!(tree.get("etc/shadow").unwrap().mode, 0);
    assert_eq!(
        fixture.text(&tree, "etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
}

#[test]
fn autologin_writes_mkosis_four_getty_dropins() {
    let fixture = Fixture::new(&[]);
    let (_, tree) = fixture.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit: Autologin,
    })]);
    let dropins: Vec<&str> = tree
        .entries()
        .filter(|entry| entry.path.ends_with("autologin.conf"))
        .map(|entry| entry.path.as_str())
        .collect();
    assert_eq!(
        dropins,
        vec![
            "usr/lib/systemd/system/console-getty.service.d/autologin.conf",
            "usr/lib/systemd/system/getty@tty1.service.d/autologin.conf",
            "usr/lib/systemd/system/serial-getty@hvc0.service.d/autologin.conf",
            "usr/lib/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
        ]
    );
    let tty1 = fixture.text(
        &tree,
        "usr/lib/systemd/system/getty@tty1.service.d/autologin.conf",
    );
    assert_eq!(
        tty1,
        "[Service]\nExecStart=\nExecStart=-agetty -o '-f -p -- \\\\u' --autologin root --noclear - $TERM\n\
         StandardInput=tty\nStandardOutput=tty\n"
    );
}

#[test]
fn init_links_to_systemd_through_a_merged_usr_only_when_systemd_is_there() {
    // /lib -> usr/lib: the path to systemd goes through a symlink of the image.
    let fixture = Fixture::new(&[("usr/lib/systemd/systemd", "ELF", 0o755)]);
    std::os::unix::fs::symlink("usr/lib", fixture.project.join("base/lib")).unwrap();
    let (_, tree) = fixture.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit: Init,
    })]);
    assert_eq!(
        tree.get("init").map(|entry| entry.kind.clone()),
        Some(EntryKind::Symlink {
            target: "/usr/lib/systemd/systemd".to_string()
        })
    );

    let without = Fixture::new(&[("etc/os-release", "ID=x\n", 0o644)]);
    let (_, tree) = without.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit: Init,
    })]);
    assert!(tree.get("init").is_none());
    // Nothing to do leaves the tree, and so its id, as it was.
    let (_, base) = without.build(Vec::new());
    assert_eq!(tree, base);
}

#[test]
fn presets_enable_what_the_recipes_preset_files_say() {
    kiln_test_support::require!(
        kiln_test_support::Need::Root,
        kiln_test_support::Need::Tool("systemctl")
    );
    let unit = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";
    let fixture = Fixture::new(&[
        ("usr/bin/systemctl", "ELF", 0o755),
        ("usr/lib/systemd/system/kiln-on.service", unit, 0o644),
        ("usr/lib/systemd/system/kiln-off.service", unit, 0o644),
        // A vendor preset enables everything; the recipe's preset, sorting first, wins.
        (
            "usr/lib/systemd/system-preset/99-default.preset",
            "enable *\n",
            0o644,
        ),
        (
            "etc/systemd/system-preset/10-recipe.preset",
            "disable kiln-off.service\n",
            0o644,
        ),
    ]);
    let (ran, tree) = fixture.build(vec![Box::new(PresetsStage {
        base: "base-trees".to_string(),
        host: Arc::new(RealHost::default()),
    })]);
    assert_eq!(ran, vec!["base-trees", "presets"]);
    let wants = "etc/systemd/system/multi-user.target.wants";
    assert_eq!(
        tree.get(&format!("{wants}/kiln-on.service"))
            .map(|entry| entry.kind.clone()),
        Some(EntryKind::Symlink {
            target: "/usr/lib/systemd/system/kiln-on.service".to_string()
        })
    );
    assert!(tree.get(&format!("{wants}/kiln-off.service")).is_none());
}

#[test]
fn presets_leave_an_image_without_systemctl_as_it_is() {
    let fixture = Fixture::new(&[("etc/os-release", "ID=x\n", 0o644)]);
    let (_, base) = fixture.build(vec![]);
    let (_, tree) = fixture.build(vec![Box::new(PresetsStage {
        base: "base-trees".to_string(),
        host: Arc::new(kiln_stages::host::RecordingHost::new()),
    })]);
    assert_eq!(tree, base);
}

fn recipe(distribution: Distribution, format: OutputFormat) -> Recipe {
    let mut recipe = Recipe::default();
    recipe.distribution.distribution = distribution;
    recipe.distribution.release = Some("bookworm".to_string());
    recipe.distribution.mirror = Some("http://deb.example".to_string());
    recipe.output.format = format;
    recipe.output.image_id = Some("image".to_string());
    recipe.content.packages = vec!["systemd".to_string()];
    recipe
}

fn stage_names(graph: &Graph) -> Vec<String> {
    graph
        .order()
        .iter()
        .map(|&index| graph.stage(index).name().to_string())
        .collect()
}

#[test]
fn a_distribution_gets_packages_then_configuration_stages_in_mkosis_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut debian = recipe(Distribution::Debian, OutputFormat::Directory);
    debian.content.hostname = Some("rescue".to_string());
    debian.content.autologin = true;
    debian.content.root_password = Some(RootPassword {
        value: "x".to_string(),
        hashed: false,
    });
    debian.scripts.postinst = vec!["mkosi.postinst".into()];
    let script = dir.path().join("mkosi.postinst");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let built = pipeline(&debian, dir.path(), Arc::new(RealHost::default())).unwrap();
    assert_eq!(
        stage_names(&built.graph),
        vec![
            "base-trees",
            "packages",
            "postinst",
            "autologin",
            "os-release",
            "presets",
            "hostname",
            "root-password",
            "machine-id",
            "output"
        ]
    );
    let kinds: BTreeMap<String, &str> = built
        .graph
        .order()
        .iter()
        .map(|&index| {
            (
                built.graph.stage(index).name().to_string(),
                built.graph.stage(index).kind(),
            )
        })
        .collect();
    assert_eq!(kinds["packages"], "packages-apt");

    let arch = recipe(Distribution::Arch, OutputFormat::Tar);
    let built = pipeline(&arch, dir.path(), Arc::new(RealHost::default())).unwrap();
    assert_eq!(
        stage_names(&built.graph),
        vec![
            "base-trees",
            "packages",
            "os-release",
            "presets",
            "machine-id",
            "output"
        ]
    );

    // A UKI: the initrd and the UKI after the tree, the kernel taken before RemoveFiles=; the
    // package managers' metadata goes.
    let mut uki = recipe(Distribution::Debian, OutputFormat::Uki);
    uki.content.remove_files = vec!["/usr/share/doc".to_string()];
    let built = pipeline(&uki, dir.path(), Arc::new(RealHost::default())).unwrap();
    assert_eq!(
        stage_names(&built.graph),
        vec![
            "base-trees",
            "packages",
            "os-release",
            "init",
            "presets",
            "machine-id",
            "kernel",
            "clean-metadata",
            "remove-files",
            "initrd",
            "uki"
        ]
    );
    let suffixes: Vec<&str> = built
        .export
        .artifacts
        .iter()
        .map(|artifact| artifact.suffix.as_str())
        .collect();
    assert_eq!(suffixes, vec![".efi", ".vmlinuz", ".initrd"]);

    // Formats kiln cannot build yet, and other distributions, are refused.
    assert!(matches!(
        pipeline(
            &recipe(Distribution::Debian, OutputFormat::Disk),
            dir.path(),
            Arc::new(RealHost::default())
        ),
        Err(PipelineError::UnsupportedFormat { .. })
    ));
    assert!(matches!(
        pipeline(
            &recipe(Distribution::Fedora, OutputFormat::Directory),
            dir.path(),
            Arc::new(RealHost::default())
        ),
        Err(PipelineError::UnsupportedDistribution { .. })
    ));
    // --locked without kiln.lock says so before anything runs.
    assert!(matches!(
        pipeline_with(
            &recipe(Distribution::Debian, OutputFormat::Directory),
            dir.path(),
            Arc::new(RealHost::default()),
            PipelineOptions { locked: true }
        ),
        Err(PipelineError::NoLockFile { .. })
    ));
}

#[test]
fn a_hostname_laid_over_a_symlinked_etc_lands_in_its_target() {
    // Some images keep /etc elsewhere: the file goes where the link leads, as a copy would.
    let fixture = Fixture::new(&[("usr/etc/os-release", "ID=x\n", 0o644)]);
    std::os::unix::fs::symlink("usr/etc", fixture.project.join("base/etc")).unwrap();
    let (_, tree) = fixture.build(vec![Box::new(EditStage {
        base: "base-trees".to_string(),
        edit: Hostname {
            hostname: "h".to_string(),
        },
    })]);
    assert_eq!(fixture.text(&tree, "usr/etc/hostname"), "h\n");
    assert!(matches!(
        tree.get("etc"),
        Some(Entry {
            kind: EntryKind::Symlink { .. },
            ..
        })
    ));
}
