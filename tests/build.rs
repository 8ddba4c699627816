//! End-to-end tests of `kiln build`, `graph show` and `graph explain` on `recipes/tiny`, a
//! Distribution=custom recipe with a base tree, an extra tree, RemoveFiles, a postinst and a
//! finalize script.
//!
//! These tests need root: script stages mount overlays and the store keeps owners. Without
//! root each test prints that it is skipped and returns.

#[macro_use]
mod common;

use kiln_test_support::{Facts, Need, tree_listing};

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use common::{Project, ran, stage};

/// A copy of recipes/tiny and a store of its own.
fn tiny() -> Project {
    Project::copy_of("tiny", "tiny")
}

fn reason_inputs(stage: &Value) -> Vec<String> {
    stage["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|reason| reason["input"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_second_build_with_nothing_changed_is_all_cached_and_identical() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    let first = project.build(&[]);
    assert_eq!(
        ran(&first),
        vec![
            "base-trees",
            "extra-trees",
            "finalize",
            "os-release",
            "output",
            "postinst",
            "remove-files"
        ]
    );
    let before = tree_listing(&project.output_dir(), Facts::Copy);
    let second = project.build(&[]);
    assert!(ran(&second).is_empty(), "{second:?}");
    assert_eq!(second.len(), 7);
    assert_eq!(tree_listing(&project.output_dir(), Facts::Copy), before);
    // -f rewrites the output, still bit-identical.
    let forced = project.build(&["-f"]);
    assert!(ran(&forced).is_empty());
    assert_eq!(tree_listing(&project.output_dir(), Facts::Copy), before);
    // -ff re-runs every stage and gets the same image.
    let rerun = project.build(&["-ff"]);
    assert_eq!(ran(&rerun).len(), 7);
    assert_eq!(tree_listing(&project.output_dir(), Facts::Copy), before);
}

#[test]
fn two_stores_build_bit_identical_images_and_tarballs() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let one = tiny();
    let two = tiny();
    one.build(&[]);
    two.build(&[]);
    assert_eq!(
        tree_listing(&one.output_dir(), Facts::Copy),
        tree_listing(&two.output_dir(), Facts::Copy)
    );
    for project in [&one, &two] {
        let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
        project.write(
            "mkosi.conf",
            &conf.replace("Format=directory", "Format=tar"),
        );
        project.build(&[]);
    }
    let tar_one = std::fs::read(one.root.join("mkosi.output/tiny.tar")).unwrap();
    let tar_two = std::fs::read(two.root.join("mkosi.output/tiny.tar")).unwrap();
    assert!(tar_one.len() > 1024);
    assert!(tar_one == tar_two, "the two tarballs differ");
}

#[test]
fn editing_finalize_reruns_only_finalize_and_output() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    let finalize = std::fs::read_to_string(project.root.join("mkosi.finalize")).unwrap();
    project.write(
        "mkosi.finalize",
        &format!("{finalize}echo edited >> \"$BUILDROOT/etc/motd\"\n"),
    );
    let outcomes = project.build(&[]);
    assert_eq!(ran(&outcomes), vec!["finalize", "output"]);
    let explanation = project.explain();
    assert_eq!(
        reason_inputs(stage(&explanation, "finalize")),
        vec!["mkosi.finalize"]
    );
    assert_eq!(stage(&explanation, "postinst")["status"], "cached");
}

#[test]
fn editing_an_extra_file_names_that_path_and_stops_where_the_output_is_unchanged() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    project.write("mkosi.extra/etc/motd", "A different welcome.\n");
    let outcomes = project.build(&[]);
    assert_eq!(outcomes["extra-trees"], "ran");
    // postinst rewrites /etc/motd, so its output is the same as before.
    assert_eq!(outcomes["postinst"], "ran, output unchanged");
    assert_eq!(outcomes["remove-files"], "cached");
    assert_eq!(outcomes["finalize"], "cached");
    assert_eq!(outcomes["output"], "cached");
    let explanation = project.explain();
    let extra = stage(&explanation, "extra-trees");
    assert_eq!(reason_inputs(extra), vec!["mkosi.extra:etc/motd"]);
    assert!(
        extra["reasons"][0]["before"]
            .as_str()
            .unwrap()
            .starts_with("file ")
    );
    let postinst = stage(&explanation, "postinst");
    assert_eq!(postinst["output_changed"], false);
    assert_eq!(reason_inputs(postinst), vec!["base"]);
    let text = project.kiln(&["graph", "explain"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("upstream stage `extra-trees` changed its output"),
        "{text}"
    );
    assert!(text.contains("postinst: ran, output unchanged"), "{text}");
    // The output was updated in place of a full copy: it must equal a full rewrite.
    project.write("mkosi.extra/etc/hostname", "edited\n");
    project.build(&[]);
    let updated = tree_listing(&project.output_dir(), Facts::Copy);
    assert!(updated.contains_key(Path::new("etc/hostname")));
    project.build(&["-f"]);
    assert_eq!(tree_listing(&project.output_dir(), Facts::Copy), updated);
}

#[test]
fn an_image_version_change_is_explained_and_reruns_only_what_reads_it() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&["--image-version", "1"]);
    assert!(project.root.join("mkosi.output/tiny_1").is_dir());
    // IMAGE_VERSION= in os-release, as mkosi writes it, and the finalize script that reads
    // $IMAGE_VERSION: those stages and what follows them.
    let outcomes = project.build(&["--image-version", "2"]);
    assert_eq!(
        ran(&outcomes),
        vec!["finalize", "os-release", "output", "remove-files"]
    );
    let explanation = project.explain();
    let os_release = stage(&explanation, "os-release");
    assert_eq!(os_release["reasons"][0]["input"], "ImageVersion");
    assert!(
        std::fs::read_to_string(project.root.join("mkosi.output/tiny_2/etc/os-release"))
            .unwrap()
            .contains("IMAGE_VERSION=\"2\"")
    );
    let finalize = stage(&explanation, "finalize");
    assert_eq!(finalize["reasons"][0]["input"], "IMAGE_VERSION");
    assert_eq!(finalize["reasons"][0]["before"], "1");
    assert_eq!(finalize["reasons"][0]["after"], "2");
    let text = project.kiln(&["graph", "explain", "finalize"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("IMAGE_VERSION 1 -> 2"));
    let os_release =
        std::fs::read_to_string(project.root.join("mkosi.output/tiny_2/etc/os-release")).unwrap();
    assert!(
        os_release.contains("PRETTY_NAME=\"Tiny (2)\""),
        "{os_release}"
    );
    let link = std::fs::read_link(project.root.join("mkosi.output/tiny")).unwrap();
    assert_eq!(link, Path::new("tiny_2"));

    // Back to no version: the unversioned link gives way to the output itself, and the
    // versioned outputs stay.
    project.build(&[]);
    let unversioned = project.root.join("mkosi.output/tiny");
    assert!(unversioned.is_dir() && !unversioned.is_symlink());
    assert!(project.root.join("mkosi.output/tiny_2").is_dir());
    assert!(
        std::fs::read_to_string(unversioned.join("etc/os-release"))
            .unwrap()
            .contains("PRETTY_NAME=\"Tiny (n/a)\"")
    );
}

#[test]
fn a_failing_script_stops_the_build_and_caches_nothing_of_its_stage() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    let before = tree_listing(&project.output_dir(), Facts::Copy);
    project.write(
        "mkosi.postinst",
        "#!/bin/sh\necho 'preparing the tree'\necho 'something went wrong' >&2\nexit 3\n",
    );
    let output = project.kiln(&["build"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Stage `postinst` failed"), "{stderr}");
    assert!(stderr.contains("mkosi.postinst"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");
    assert!(stderr.contains("something went wrong"), "{stderr}");
    assert_eq!(
        tree_listing(&project.output_dir(), Facts::Copy),
        before,
        "the previous output changed"
    );
    // Nothing of the failed run was cached: postinst is still to run.
    let show = project.kiln(&["graph", "show"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("postinst [scripts]: will run"), "{show}");
    let verify = project.kiln(&["cache", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn graph_show_prints_each_stage_state_as_text_and_dot() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    // Without a store every stage will run, and showing so creates no store.
    let show = project.kiln(&["graph", "show"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("base-trees [trees]: will run"), "{text}");
    assert!(
        text.contains("finalize [scripts]: will run (after remove-files)"),
        "{text}"
    );
    assert!(!project.store.exists(), "graph show wrote a store");
    project.build(&[]);
    project.write("mkosi.extra/etc/hostname", "renamed\n");
    let stored = |dir: &str| {
        walkdir::WalkDir::new(project.store.join("v1").join(dir))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_file())
            .count()
    };
    let before = (stored("objects"), stored("trees"));
    let show = project.kiln(&["graph", "show"]);
    // The edited file was hashed, not stored.
    assert_eq!((stored("objects"), stored("trees")), before);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("base-trees [trees]: cached"), "{text}");
    assert!(text.contains("extra-trees [trees]: will run"), "{text}");
    assert!(
        text.contains("postinst [scripts]: will run unless `extra-trees`"),
        "{text}"
    );
    let dot = project.kiln(&["graph", "show", "--format", "dot"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph kiln {"), "{dot}");
    assert!(dot.contains("\"extra-trees\" -> \"postinst\";"), "{dot}");
}

#[test]
fn symlinks_are_copied_and_nothing_is_written_or_removed_outside_the_tree() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "outside").unwrap();
    // A link in the base tree that points outside, and RemoveFiles globs that would follow it.
    std::os::unix::fs::symlink(outside.path(), project.root.join("base/escape")).unwrap();
    let conf = std::fs::read_to_string(project.root.join("mkosi.conf")).unwrap();
    project.write(
        "mkosi.conf",
        &conf.replace(
            "RemoveFiles=\n",
            "RemoveFiles=\n    /escape/*\n    /escape/keep\n",
        ),
    );
    project.build(&[]);
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep")).unwrap(),
        "outside"
    );
    let resolv = project.output_dir().join("etc/resolv.conf");
    assert_eq!(
        std::fs::read_link(&resolv).unwrap(),
        Path::new("/run/systemd/resolve/stub-resolv.conf")
    );
    assert_eq!(
        std::fs::read_link(project.output_dir().join("escape")).unwrap(),
        outside.path()
    );
    // An extra tree entry below that link lands inside the image or fails; never outside.
    std::fs::create_dir_all(project.root.join("mkosi.extra/escape")).unwrap();
    project.write("mkosi.extra/escape/planted", "planted");
    let _ = project.kiln(&["build"]);
    assert!(
        !outside.path().join("planted").exists(),
        "wrote outside the tree"
    );
    // A glob with `..` is refused.
    project.write(
        "mkosi.conf",
        &conf.replace("RemoveFiles=\n", "RemoveFiles=\n    /../../etc\n"),
    );
    let _ = std::fs::remove_dir_all(project.root.join("mkosi.extra/escape"));
    let output = project.kiln(&["build"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("leads outside the image"));
}

#[test]
fn two_builds_at_once_on_one_store_both_succeed_and_agree() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let one = tiny();
    let two = tiny();
    let mut children: Vec<_> = [&one, &two]
        .iter()
        .map(|project| {
            project
                .command(&["build"])
                .arg("--cache-dir")
                .arg(&one.store)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children.drain(..) {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        tree_listing(&one.output_dir(), Facts::Copy),
        tree_listing(&two.output_dir(), Facts::Copy)
    );
    let verify = one.kiln(&["cache", "verify"]);
    assert!(verify.status.success());
}

#[test]
fn builds_killed_at_random_moments_leave_the_store_consistent() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    // A bigger base tree so that kills land inside stages and while committing.
    let big = project.root.join("base/usr/share/data");
    std::fs::create_dir_all(&big).unwrap();
    for index in 0..1500 {
        std::fs::write(
            big.join(format!("file-{index}")),
            format!("content {index}\n").repeat(50),
        )
        .unwrap();
    }
    let reference = tiny();
    std::fs::create_dir_all(reference.root.join("base/usr/share/data")).unwrap();
    for index in 0..1500 {
        std::fs::write(
            reference
                .root
                .join(format!("base/usr/share/data/file-{index}")),
            format!("content {index}\n").repeat(50),
        )
        .unwrap();
    }
    reference.build(&[]);

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for round in 0..20 {
        // Alternate edits so that stages have work to do in every round.
        project.write(
            "mkosi.extra/etc/hostname",
            &format!("round-{}\n", round % 3),
        );
        let mut child = project
            .command(&["build"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next() % 900));
        let _ = child.kill();
        let _ = child.wait();
        let verify = project.kiln(&["cache", "verify"]);
        let report = String::from_utf8_lossy(&verify.stdout);
        assert!(verify.status.success(), "round {round}: {report}");
        assert!(report.contains("corrupt: 0"), "round {round}: {report}");
    }
    // One more killed build, and no verify: the next build reclaims its scratch itself.
    project.write("mkosi.extra/etc/hostname", "killed\n");
    let mut child = project
        .command(&["build"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    project.write("mkosi.extra/etc/hostname", "tiny\n");
    project.build(&[]);
    let left: Vec<_> = std::fs::read_dir(project.store.join("v1/tmp"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        tree_listing(&project.output_dir(), Facts::Copy),
        tree_listing(&reference.output_dir(), Facts::Copy)
    );
}

#[test]
fn explain_names_stages_that_appear_and_disappear() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.write("mkosi.local.conf", "[Content]\nHostname=first\n");
    project.build(&[]);

    // A typo drops the hostname stage: the stage after it now reads postinst.
    project.write("mkosi.local.conf", "[Content]\nHostnme=first\n");
    let outcomes = project.build(&[]);
    assert!(!outcomes.contains_key("hostname"), "{outcomes:?}");
    assert_eq!(outcomes["postinst"], "cached");
    let explanation = project.explain();
    let after = stage(&explanation, "remove-files");
    assert_eq!(after["status"], "ran");
    let reason = &after["reasons"][0];
    assert_eq!(reason["upstream"], "os-release", "{after:#}");
    let summary = reason["summary"].as_str().unwrap();
    assert_eq!(
        summary, "upstream stage `hostname` removed: now reads `os-release`",
        "{after:#}"
    );
    assert!(!summary.contains("changed its output"));

    // A stage no earlier build had is new.
    let outcomes = project.build(&["--autologin"]);
    assert!(outcomes.contains_key("autologin"), "{outcomes:?}");
    let explanation = project.explain();
    let autologin = stage(&explanation, "autologin");
    assert_eq!(
        autologin["reasons"][0]["summary"], "new stage",
        "{autologin:#}"
    );
    let text = project.kiln(&["graph", "explain", "autologin"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("new stage"));
}

#[test]
fn every_verb_ends_quietly_when_its_reader_stops_early() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    let efi = project.root.join("not-a-pe.efi");
    std::fs::write(&efi, "MZ").unwrap();
    let verbs: &[&[&str]] = &[
        &["recipe", "show"],
        &["graph", "show"],
        &["graph", "show", "--format", "dot"],
        &["graph", "explain"],
        &["graph", "explain", "--json"],
        &["cache", "stats"],
        &["cache", "verify"],
        &["--help"],
        &["--version"],
    ];
    for verb in verbs {
        // As `kiln … | head -c1` once head has exited: the pipe's reading end is closed before
        // kiln writes anything, so its first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let kiln = project
            .command(verb)
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = kiln.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{verb:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{verb:?}: {stderr}");
    }
}

#[test]
fn check_reruns_every_stage_and_names_one_that_is_not_reproducible() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    // Before anything is built there is nothing to check.
    let output = project.kiln(&["build", "--check"]);
    assert_eq!(output.status.code(), Some(1));
    project.build(&[]);
    let output = project.kiln(&["build", "--check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("reproducible"), "{stderr}");

    // A finalize script that writes the time: the check names the stage and the path.
    let finalize = std::fs::read_to_string(project.root.join("mkosi.finalize")).unwrap();
    project.write(
        "mkosi.finalize",
        &format!("{finalize}date +%s%N > \"$BUILDROOT/etc/stamp\"\n"),
    );
    project.build(&[]);
    let explained = project.explain();
    let output = project.kiln(&["build", "--check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Stage `finalize` is not reproducible"),
        "{stderr}"
    );
    assert!(stderr.contains("etc/stamp"), "{stderr}");
    // A check records nothing.
    assert_eq!(project.explain(), explained);
}

/// `v1/objects/ab/cdef…` of the blob holding `content` in the project's store.
fn blob_object(project: &common::Project, content: &[u8]) -> std::path::PathBuf {
    let id = blake3::hash(content).to_hex();
    project
        .store
        .join("v1/objects")
        .join(&id[..2])
        .join(&id[2..])
}

#[test]
fn a_blob_changed_in_place_in_the_store_never_reaches_the_image() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    let hostname = std::fs::read(project.root.join("mkosi.extra/etc/hostname")).unwrap();
    let object = blob_object(&project, &hostname);
    // Written in place, same length: the shared checkout finalize runs on links this inode.
    let inode = std::fs::metadata(&object).unwrap().ino();
    let mut canary = b"CANARY".to_vec();
    canary.resize(hostname.len(), b'!');
    std::fs::write(&object, &canary).unwrap();
    assert_eq!(std::fs::metadata(&object).unwrap().ino(), inode);

    // A late-stage edit: finalize runs again on the tree it had, and reads the file.
    let finalize = std::fs::read_to_string(project.root.join("mkosi.finalize")).unwrap();
    project.write(
        "mkosi.finalize",
        &format!("{finalize}cat \"$BUILDROOT/etc/hostname\" > \"$BUILDROOT/etc/read\"\n"),
    );
    let output = project.kiln(&["build"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("corrupt blob `{}`", object.display())),
        "{stderr}"
    );
    let read = project.read("etc/read");
    assert!(!read.contains("CANARY"), "{read}");
    assert_eq!(read.as_bytes(), hostname);
    assert_eq!(project.read("etc/hostname").as_bytes(), hostname);
    assert_eq!(std::fs::read(&object).unwrap(), hostname);
    let verify = project.kiln(&["cache", "verify"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("corrupt: 0"),
        "{stdout}"
    );
}

#[test]
fn a_symlink_planted_in_the_store_never_lets_a_script_read_a_host_file() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = tiny();
    project.build(&[]);
    let hostname = std::fs::read(project.root.join("mkosi.extra/etc/hostname")).unwrap();
    let object = blob_object(&project, &hostname);
    let host = project.root.join("host-secret");
    std::fs::write(&host, "CANARY host file\n").unwrap();
    std::fs::remove_file(&object).unwrap();
    std::os::unix::fs::symlink(&host, &object).unwrap();

    // postinst makes a new tree, so finalize runs on a new checkout, which links the blob;
    // finalize, a host script, reads the file.
    let postinst = std::fs::read_to_string(project.root.join("mkosi.postinst")).unwrap();
    project.write(
        "mkosi.postinst",
        &format!("{postinst}echo again > \"$BUILDROOT/etc/again\"\n"),
    );
    let finalize = std::fs::read_to_string(project.root.join("mkosi.finalize")).unwrap();
    project.write(
        "mkosi.finalize",
        &format!("{finalize}cat \"$BUILDROOT/etc/hostname\" > \"$BUILDROOT/etc/read\"\n"),
    );
    let output = project.kiln(&["build"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&object.display().to_string()), "{stderr}");
    let read = project.read("etc/read");
    assert!(!read.contains("CANARY"), "{read}");
    assert_eq!(read.as_bytes(), hostname);
    let meta = std::fs::symlink_metadata(project.output_dir().join("etc/hostname")).unwrap();
    assert!(meta.is_file());
    assert!(std::fs::symlink_metadata(&object).unwrap().is_file());
    assert_eq!(std::fs::read(&host).unwrap(), b"CANARY host file\n");
}
