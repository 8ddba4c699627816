//! Nothing a recipe holds writes or deletes outside the image: trees whose symlinks lead out
//! of them (absolute, or climbing with `..`), tree targets and `RemoveFiles=` globs with `..`,
//! and scripts, on the host and inside the tree, that write and delete through such symlinks.
//! Each test keeps a canary directory outside the project and checks after every build that it
//! holds exactly what it held before. And scripts see only the documented environment: the
//! README's list, never a secret of kiln's own environment.
//!
//! These tests build `recipes/tiny` and need root (overlays, owners) and bubblewrap; the
//! `.chroot` script runs the static busybox copied into the tree.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use kiln_test_support::{Facts, Need, tree_listing};

use common::Project;

/// A directory outside the project with a file and a subdirectory, and what it held.
struct Canary {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, String>,
}

impl Canary {
    /// In `/var/tmp`: a host script's sandbox has a private `/tmp`, and the canary must be
    /// where an unconfined script could reach it.
    fn new() -> Canary {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(dir.path().join("keep"), "canary\n").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/keep"), "canary too\n").unwrap();
        let before = tree_listing(dir.path(), Facts::Copy);
        Canary { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The canary's path without its leading `/`, for links that climb to it with `..`.
    fn relative(&self) -> String {
        self.path().to_str().unwrap().trim_start_matches('/').into()
    }

    #[track_caller]
    fn is_untouched(&self, after: &str) {
        assert_eq!(
            tree_listing(self.path(), Facts::Copy),
            self.before,
            "something outside the image changed after {after}"
        );
    }
}

/// recipes/tiny whose base tree holds `abs` (an absolute link to the canary) and `rel` (a
/// relative link that climbs out of the tree to it).
fn tiny_with_links(canary: &Canary) -> Project {
    let project = Project::copy_of("tiny", "tiny");
    symlink(canary.path(), project.root.join("base/abs")).unwrap();
    symlink(
        format!("{}{}", "../".repeat(40), canary.relative()),
        project.root.join("base/rel"),
    )
    .unwrap();
    project
}

fn set_conf(project: &Project, content: &str) {
    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    project.write("mkosi.conf", &format!("{conf}{content}"));
}

fn stderr_of(project: &Project, args: &[&str]) -> (Option<i32>, String) {
    let output = project.kiln(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code(), stderr)
}

#[test]
fn trees_laid_through_escaping_links_stay_in_the_image() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let canary = Canary::new();
    let project = tiny_with_links(&canary);
    project.write("extra-abs/planted", "planted\n");
    project.write("extra-rel/planted", "planted\n");
    project.write("skel/planted", "planted\n");

    // A tree whose target is an absolute link: refused while the link leads nowhere in the
    // image, and laid where it leads in the image once that exists.
    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    set_conf(&project, "ExtraTrees=extra-abs:/abs\n");
    let (code, stderr) = stderr_of(&project, &["build"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("`abs` is not a directory in the image"),
        "{stderr}"
    );
    canary.is_untouched("a tree laid at a dangling absolute link");
    std::fs::create_dir_all(project.root.join("base").join(canary.relative())).unwrap();
    project.build(&[]);
    canary.is_untouched("a tree laid at an absolute link");
    let inside = project.output_dir().join(canary.relative()).join("planted");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "planted\n");
    assert_eq!(
        std::fs::read_link(project.output_dir().join("abs")).unwrap(),
        canary.path(),
        "the link itself is kept as it is"
    );

    // A link that climbs above the root, and a target with `..`: refused.
    for (setting, what) in [
        (
            "ExtraTrees=extra-rel:/rel\n",
            "a tree laid at a climbing link",
        ),
        (
            &format!("ExtraTrees=extra-rel:/../../../../{}\n", canary.relative()),
            "a tree target with `..`",
        ),
        (
            "SkeletonTrees=skel:/rel/d\n",
            "a skeleton tree at a climbing link",
        ),
    ] {
        project.write("mkosi.conf", &format!("{conf}{setting}"));
        let (code, stderr) = stderr_of(&project, &["build"]);
        assert_eq!(code, Some(1), "{what} was not refused:\n{stderr}");
        assert!(stderr.contains("leads outside the image"), "{stderr}");
        canary.is_untouched(what);
    }

    // The output directory of the last build holds `abs` as a link to the canary; a build that
    // makes `abs` a directory replaces the link there, never writes through it.
    project.write("mkosi.conf", &conf);
    project.write("mkosi.extra/abs/planted", "planted\n");
    project.build(&[]);
    project.build(&["-f"]);
    canary.is_untouched("an output whose link became a directory");
    assert_eq!(project.read("abs/planted"), "planted\n");
}

#[test]
fn remove_files_never_deletes_outside_the_image() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let canary = Canary::new();
    let project = tiny_with_links(&canary);
    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    project.write(
        "mkosi.conf",
        &conf.replace(
            "RemoveFiles=\n",
            "RemoveFiles=\n    /abs/keep\n    /abs/*\n    /rel/**\n    /abs/d\n    /**/keep\n",
        ),
    );
    project.build(&[]);
    canary.is_untouched("RemoveFiles= globs through links");
    for glob in ["/../*", "/usr/../../*", "../**"] {
        project.write(
            "mkosi.conf",
            &conf.replace("RemoveFiles=\n", &format!("RemoveFiles=\n    {glob}\n")),
        );
        let (code, stderr) = stderr_of(&project, &["build"]);
        assert_eq!(code, Some(1), "`{glob}` was not refused:\n{stderr}");
        assert!(stderr.contains("leads outside the image"), "{stderr}");
        canary.is_untouched(glob);
    }
}

/// Writes, deletes and makes directories through both links; each step may fail, the script
/// goes on.
fn hostile_script(prefix: &str, tool: &str) -> String {
    let mut text = String::from("#!/bin/sh\n");
    for link in ["abs", "rel"] {
        let at = format!("{prefix}/{link}");
        text.push_str(&format!(
            "echo planted > \"{at}/planted\" 2>/dev/null || true\n\
             echo changed > \"{at}/keep\" 2>/dev/null || true\n\
             {tool}rm -rf \"{at}/d\" 2>/dev/null || true\n\
             {tool}rm -f \"{at}/keep\" 2>/dev/null || true\n\
             {tool}mkdir \"{at}/new\" 2>/dev/null || true\n\
             {tool}touch \"{at}/d/keep\" 2>/dev/null || true\n"
        ));
    }
    text.push_str("echo done\n");
    text
}

fn executable(project: &Project, path: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    project.write(path, text);
    let full = project.root.join(path);
    std::fs::set_permissions(full, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The static busybox as the tree's `/bin/sh`, so that `.chroot` scripts run.
fn with_busybox(project: &Project) {
    std::fs::create_dir_all(project.root.join("base/bin")).unwrap();
    std::fs::copy("/bin/busybox", project.root.join("base/bin/busybox")).unwrap();
    symlink("busybox", project.root.join("base/bin/sh")).unwrap();
}

#[test]
fn scripts_writing_through_escaping_links_change_nothing_outside() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::File("/bin/busybox"));
    let canary = Canary::new();
    let project = tiny_with_links(&canary);
    with_busybox(&project);
    // On the host, through `$BUILDROOT`; inside the tree, through `/`.
    executable(
        &project,
        "mkosi.postinst",
        &hostile_script("$BUILDROOT", ""),
    );
    project.remove("mkosi.finalize");
    executable(
        &project,
        "mkosi.finalize.chroot",
        &hostile_script("", "/bin/busybox "),
    );
    let (code, stderr) = stderr_of(&project, &["build"]);
    canary.is_untouched("scripts writing through links");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        project.output_dir().join("rel").is_symlink(),
        "the links are still there"
    );
}

/// The variables the README's "Script environment" section lists.
fn documented_variables() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split_once("## Script environment")
        .expect("the README has a `Script environment` section")
        .1;
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split(", "))
        .map(|name| name.trim().trim_matches('`').to_string())
        .collect()
}

/// `NAME=value` lines of `env`, by name; a value may not span lines here.
fn environment(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn scripts_see_only_the_documented_environment() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::File("/bin/busybox"));
    let project = Project::copy_of("tiny", "tiny");
    with_busybox(&project);
    set_conf(&project, "\n[Build]\nEnvironment=FROM_RECIPE=yes\n");
    // Naming every variable makes each an input, so each is set.
    let names = "# $DISTRIBUTION $RELEASE $ARCHITECTURE $IMAGE_ID $IMAGE_VERSION \
                 $SOURCE_DATE_EPOCH $WITH_DOCS $FROM_RECIPE $KILN_SECRET $AWS_SECRET_ACCESS_KEY\n";
    executable(
        &project,
        "mkosi.postinst",
        &format!(
            "#!/bin/sh\n{names}mkdir -p \"$BUILDROOT/var/lib/tiny\"\n\
             env > \"$BUILDROOT/var/lib/tiny/env-host\"\n"
        ),
    );
    project.remove("mkosi.finalize");
    executable(
        &project,
        "mkosi.finalize.chroot",
        &format!("#!/bin/sh\n{names}/bin/busybox env > /var/lib/tiny/env-chroot\n"),
    );
    let output = project
        .command(&["--image-version", "1.0", "build"])
        .env("KILN_SECRET", "hunter2")
        .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
        .env("TERM", "dumb")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let documented = documented_variables();
    assert!(documented.contains("BUILDROOT"), "{documented:?}");
    // What a shell exports of its own.
    let shell = ["PWD", "OLDPWD", "SHLVL", "_"];
    for file in ["env-host", "env-chroot"] {
        let text = project.read(&format!("var/lib/tiny/{file}"));
        assert!(
            !text.contains("hunter2") && !text.contains("wJalrXUtnFEMI"),
            "a secret of kiln's environment reached a script ({file}):\n{text}"
        );
        let seen = environment(&text);
        for name in seen.keys() {
            assert!(
                documented.contains(name)
                    || shell.contains(&name.as_str())
                    || name == "FROM_RECIPE",
                "{file}: `{name}` is not in the README's list"
            );
        }
        for (name, value) in [
            ("FROM_RECIPE", "yes"),
            ("IMAGE_VERSION", "1.0"),
            ("DISTRIBUTION", "custom"),
            ("IMAGE_ID", "tiny"),
            ("TERM", "dumb"),
            ("LANG", "C.UTF-8"),
        ] {
            assert_eq!(
                seen.get(name).map(String::as_str),
                Some(value),
                "{file}:\n{text}"
            );
        }
        for name in ["BUILDROOT", "SRCDIR", "OUTPUTDIR", "PATH", "HOME", "SCRIPT"] {
            assert!(seen.contains_key(name), "{file} lacks `{name}`:\n{text}");
        }
    }
}

/// The output's name comes from `ImageId=` and `ImageVersion=` (and `--image-version`): one that
/// climbs out of the output directory, or is absolute, would have replaced the canary directory
/// with the image. Each is refused at its line or flag, before anything is written, and the
/// canary stays as it was.
#[test]
fn output_names_never_leave_the_output_directory() {
    kiln_test_support::require!(Need::Root);
    let canary = Canary::new();
    let project = Project::copy_of("tiny", "tiny");
    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    let climbing = format!("{}{}", "../".repeat(40), canary.relative());
    let absolute = canary.path().to_str().unwrap().to_string();
    for (id, version, line) in [
        (climbing.as_str(), None, "ImageId="),
        (absolute.as_str(), None, "ImageId="),
        ("tiny", Some(climbing.as_str()), "ImageVersion="),
        ("..", None, "ImageId="),
    ] {
        let mut text = conf.replace("ImageId=tiny\n", &format!("ImageId={id}\n"));
        if let Some(version) = version {
            text = text.replace("[Output]\n", &format!("[Output]\nImageVersion={version}\n"));
        }
        project.write("mkosi.conf", &text);
        let stderr = unwrapped(&project.build_fails(&[]));
        assert!(
            stderr.contains("cannot be part of the output's file name")
                && stderr.contains(line)
                && stderr.contains("mkosi.conf:"),
            "{id:?} {version:?}:\n{stderr}"
        );
        canary.is_untouched(&format!("`ImageId={id}`, `ImageVersion={version:?}`"));
    }

    // The flag, once an output of the same image exists.
    project.write("mkosi.conf", &conf);
    project.build(&["--image-version", "1"]);
    let flag = format!("x/../../{climbing}");
    let stderr = unwrapped(&project.build_fails(&["--image-version", &flag]));
    assert!(
        stderr.contains("cannot be part of the output's file name")
            && stderr.contains("--image-version"),
        "{stderr}"
    );
    canary.is_untouched("`--image-version` with `..`");
    assert!(
        project.root.join("mkosi.output/tiny_1/etc/motd").is_file(),
        "the earlier output is still there"
    );

    // A native recipe is checked as well, before any stage runs.
    let shown = project.kiln(&["recipe", "show"]);
    assert!(shown.status.success());
    let ron = String::from_utf8(shown.stdout).unwrap();
    let hostile = ron.replace(
        "image_id: Some(\"tiny\")",
        &format!("image_id: Some({absolute:?})"),
    );
    assert_ne!(ron, hostile, "the recipe names its image:\n{ron}");
    project.remove("mkosi.conf");
    project.write("kiln.ron", &hostile);
    let stderr = project.build_fails(&[]);
    assert!(stderr.contains("is not a file name"), "{stderr}");
    canary.is_untouched("a native recipe with an absolute image id");
}

/// A report's words on one line, without the frame miette draws where it wraps them.
fn unwrapped(report: &str) -> String {
    report
        .split_whitespace()
        .filter(|word| *word != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

/// A file name in the image with terminal control sequences is shown escaped by `graph
/// explain`, never sent to the terminal as it is.
#[test]
fn explain_escapes_control_characters_in_file_names() {
    kiln_test_support::require!(Need::Root);
    let project = Project::copy_of("tiny", "tiny");
    project.build(&[]);
    project.write(
        "mkosi.extra/evil\x1b]0;owned\x07\x1b[2J\nfake: cached",
        "x\n",
    );
    project.build(&[]);
    let output = project.kiln(&["graph", "explain"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters reached the terminal:\n{text:?}"
    );
    assert!(
        text.contains(r"evil\u{1b}]0;owned\u{7}\u{1b}[2J\nfake: cached"),
        "{text}"
    );
    assert!(
        !text.lines().any(|line| line.starts_with("fake:")),
        "{text}"
    );
}
