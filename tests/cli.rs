//! The command line itself: usage errors, exit codes, and verbs that need no image.
//! None of these needs root. The shared cache's own tests, against nginx, are in `remote.rs`.

mod common;

use std::process::Output;

fn kiln(args: &[&str]) -> Output {
    common::kiln().args(args).output().unwrap()
}

fn tiny() -> String {
    format!("{}/recipes/tiny", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn usage_errors_exit_with_2() {
    let output = kiln(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
    let output = kiln(&["graph", "show", "--format", "svg"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_lists_every_verb() {
    let output = kiln(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for verb in [
        "build", "recipe", "graph", "inspect", "genkey", "qemu", "cache",
    ] {
        assert!(help.contains(verb), "{verb} missing from:\n{help}");
    }
}

#[test]
fn explain_without_a_build_says_what_to_do() {
    let store = tempfile::tempdir().unwrap();
    let output = kiln(&[
        "-C",
        &tiny(),
        "--cache-dir",
        store.path().to_str().unwrap(),
        "graph",
        "explain",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No build of `tiny@"), "{stderr}");
    assert!(stderr.contains("Run `kiln build` first"), "{stderr}");
}

#[test]
fn a_format_kiln_cannot_build_yet_is_shown_at_its_line() {
    let store = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=disk\n",
    )
    .unwrap();
    let output = kiln(&[
        "-C",
        project.path().to_str().unwrap(),
        "--cache-dir",
        store.path().to_str().unwrap(),
        "build",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`Format=disk` is not supported by `kiln build` yet"),
        "{stderr}"
    );
    assert!(stderr.contains("[mkosi.conf:5:8]"), "{stderr}");
    assert!(stderr.contains("set here"), "{stderr}");
}

#[test]
fn a_missing_tree_is_shown_at_the_entry_that_names_it() {
    let store = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=directory\n\n[Content]\nExtraTrees=\n    nowhere\n",
    )
    .unwrap();
    let output = kiln(&[
        "-C",
        project.path().to_str().unwrap(),
        "--cache-dir",
        store.path().to_str().unwrap(),
        "build",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`nowhere` does not exist"), "{stderr}");
    assert!(stderr.contains("[mkosi.conf:9:5]"), "{stderr}");
    assert!(stderr.contains("set here"), "{stderr}");
}

#[test]
fn a_script_that_is_not_executable_is_refused_before_anything_runs() {
    use std::os::unix::fs::PermissionsExt;
    let store = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=directory\n",
    )
    .unwrap();
    let finalize = project.path().join("mkosi.finalize");
    std::fs::write(&finalize, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&finalize, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "-C",
        project.path().to_str().unwrap(),
        "--cache-dir",
        store.path().to_str().unwrap(),
        "graph",
        "show",
    ];
    let output = kiln(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mkosi.finalize` is not executable"),
        "{stderr}"
    );
    assert!(stderr.contains("chmod +x"), "{stderr}");
    assert!(stderr.contains("MakeScriptsExecutable=yes"), "{stderr}");
    // As mkosi, MakeScriptsExecutable=yes lets it run.
    std::fs::write(
        project.path().join("mkosi.conf"),
        "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=directory\n\n[Build]\nMakeScriptsExecutable=yes\n",
    )
    .unwrap();
    let output = kiln(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_seed_recipe_is_read_planned_and_locked_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("arch-rescue");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/arch-rescue"))
        .arg(&project)
        .status()
        .unwrap();
    assert!(status.success());
    let run = |verb: &[&str]| {
        let mut args = vec!["-C", project.to_str().unwrap()];
        args.extend_from_slice(verb);
        kiln(&args)
    };
    let shown = run(&["recipe", "show"]);
    assert!(shown.status.success());
    let graph = run(&["graph", "show"]);
    let text = String::from_utf8_lossy(&graph.stdout);
    assert!(
        graph.status.success(),
        "{}",
        String::from_utf8_lossy(&graph.stderr)
    );
    for stage in [
        "packages [packages-pacman]",
        "modules [modules]",
        "uki [uki]",
    ] {
        assert!(text.contains(stage), "{text}");
    }
    // Locking needs an Arch Linux mirror: without one, a clear error and no panic.
    let lock = run(&["lock"]);
    let stderr = String::from_utf8_lossy(&lock.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        lock.status.success() || stderr.contains("Cannot reach the mirror"),
        "{stderr}"
    );
}

/// `kiln ARGS` with no shared cache configured anywhere (an empty config directory).
fn kiln_without_a_shared_cache(args: &[&str], config: &std::path::Path) -> Output {
    let mut command = common::kiln();
    command.args(args);
    command.env("XDG_CONFIG_HOME", config);
    for name in ["KILN_CONFIG", "KILN_CACHE_REMOTE", "KILN_CACHE_CREDENTIALS"] {
        command.env_remove(name);
    }
    command.output().unwrap()
}

#[test]
fn push_and_pull_without_a_shared_cache_say_how_to_name_one() {
    let store = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let dir = tiny();
    let store = store.path().to_str().unwrap();
    for verb in ["push", "pull"] {
        let output = kiln_without_a_shared_cache(
            &["-C", &dir, "--cache-dir", store, "cache", verb],
            config.path(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{verb}: {stderr}");
        assert!(stderr.contains("No shared cache is configured"), "{stderr}");
        assert!(stderr.contains("--cache-remote URL"), "{stderr}");
    }
    let output = kiln_without_a_shared_cache(
        &["-C", &dir, "--cache-dir", store, "cache", "stats"],
        config.path(),
    );
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("remote      none"));
    // Credentials in the URL are refused, and not shown.
    let output = kiln_without_a_shared_cache(
        &[
            "-C",
            &dir,
            "--cache-dir",
            store,
            "--cache-remote",
            "https://ci:hunter2@cache.example.org/kiln",
            "cache",
            "stats",
        ],
        config.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("credentials do not belong in the"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn keygen_writes_a_private_secret_and_a_public_key_and_never_overwrites() {
    use std::os::unix::fs::MetadataExt;
    let config = tempfile::tempdir().unwrap();
    let keys = config.path().join("keys");
    let keys_arg = keys.to_str().unwrap();
    let output = kiln_without_a_shared_cache(
        &["cache", "keygen", "ci-1", "--dir", keys_arg],
        config.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let public = std::fs::read_to_string(keys.join("ci-1.public")).unwrap();
    assert!(public.starts_with("ci-1:"), "{public}");
    assert!(stdout.contains(public.trim()), "{stdout}");
    let secret = std::fs::read_to_string(keys.join("ci-1.secret")).unwrap();
    assert!(!stdout.contains(secret.trim()), "the secret was printed");
    assert_eq!(
        std::fs::metadata(keys.join("ci-1.secret")).unwrap().mode() & 0o777,
        0o600
    );
    let again = kiln_without_a_shared_cache(
        &["cache", "keygen", "ci-1", "--dir", keys_arg],
        config.path(),
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(
        std::fs::read_to_string(keys.join("ci-1.secret")).unwrap(),
        secret
    );
    let bad = kiln_without_a_shared_cache(&["cache", "keygen", "not a name"], config.path());
    assert_eq!(bad.status.code(), Some(1));
}
