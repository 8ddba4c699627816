//! What `kiln recipe show` reports for broken mkosi configurations: every warning and error the
//! loader knows, rendered by the binary (plain text, 100 columns, as when stderr is not a
//! terminal), with its exit code. Each case is a project under `tests/fixtures/config/<case>/`,
//! or a temporary one when it needs file modes git does not keep.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kiln -C DIR recipe show ARGS...` on a Debian "host", so defaults do not depend on the machine.
fn recipe_show(dir: &Path, args: &[&str]) -> Run {
    let output = common::kiln()
        .arg("-C")
        .arg(dir)
        .args(["recipe", "show"])
        .args(args)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run kiln");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The exit code and stderr, with the machine's paths replaced.
fn report(run: &Run, dir: &Path) -> String {
    let stderr = run
        .stderr
        .replace(&dir.to_string_lossy().into_owned(), "[PROJECT]")
        .replace(&fixtures().to_string_lossy().into_owned(), "[FIXTURES]");
    format!("exit code: {}\n{stderr}", run.code)
}

fn check(name: &str, dir: &Path, args: &[&str], code: i32) {
    let run = recipe_show(dir, args);
    assert!(
        !run.stderr.contains("panicked"),
        "kiln panicked:\n{}",
        run.stderr
    );
    assert_eq!(
        run.code, code,
        "exit code of {name}; stderr:\n{}",
        run.stderr
    );
    if code == 0 {
        assert!(
            run.stdout.starts_with("(\n"),
            "no recipe printed:\n{}",
            run.stdout
        );
    } else {
        assert_eq!(run.stdout, "", "nothing is printed on errors");
    }
    insta::assert_snapshot!(name, report(&run, dir));
}

macro_rules! case {
    ($test:ident, $fixture:literal, $code:expr) => {
        case!($test, $fixture, &[], $code);
    };
    ($test:ident, $fixture:literal, $args:expr, $code:expr) => {
        #[test]
        fn $test() {
            check(stringify!($test), &fixtures().join($fixture), $args, $code);
        }
    };
}

// Warnings: the recipe is printed, the warnings go to stderr.
case!(unknown_key, "unknown-key", 0);
case!(key_case, "key-case", 0);
case!(wrong_section, "wrong-section", 0);
case!(not_implemented, "not-implemented", 0);
case!(not_built, "not-built", 0);
case!(deprecated_name, "deprecated-name", 0);
case!(unknown_section, "unknown-section", 0);
case!(unknown_specifier, "unknown-specifier", 0);
case!(unset_specifier, "unset-specifier", 0);
case!(
    default_file_not_implemented,
    "default-file-not-implemented",
    0
);
case!(builtin_include, "builtin-include", 0);
case!(ignored_dropin, "ignored-dropin", 0);
case!(list_whitespace, "list-whitespace", 0);
case!(at_prefix, "at-prefix", 0);
case!(strict_warnings_without_strict, "strict-warnings", 0);

// --strict: every warning is an error.
case!(unknown_key_strict, "unknown-key", &["--strict"], 1);
case!(strict_warnings, "strict-warnings", &["--strict"], 1);
case!(
    default_file_not_implemented_strict,
    "default-file-not-implemented",
    &["--strict"],
    1
);

// Errors: nothing is printed, exit code 1.
case!(invalid_format, "invalid-format", 1);
case!(invalid_boolean, "invalid-boolean", 1);
case!(not_utf8, "not-utf8", 1);
case!(outside_section, "outside-section", 1);
case!(missing_equals, "missing-equals", 1);
case!(unterminated_section, "unterminated-section", 1);
case!(empty_section, "empty-section", 1);
case!(missing_name, "missing-name", 1);
case!(missing_include, "missing-include", 1);
case!(include_cycle, "include-cycle", 1);
case!(missing_script, "missing-script", 1);
case!(invalid_epoch, "invalid-epoch", 1);
case!(invalid_match_key, "invalid-match-key", 1);
case!(invalid_match_value, "invalid-match-value", 1);
case!(assert_fails, "assert-fails", 1);
case!(subimage_universal, "subimage-universal", 1);
case!(unknown_dependency, "unknown-dependency", 1);
case!(
    version_shebang_not_executable,
    "version-shebang-not-executable",
    1
);
case!(two_recipes, "two-recipes", 1);
case!(invalid_ron, "invalid-ron", 1);
case!(many_errors, "many-errors", 1);
case!(invalid_output_name, "invalid-output-name", 1);
case!(unterminated_quote, "unterminated-quote", 1);
case!(relative_tree_target, "relative-tree-target", 1);
case!(warning_and_error, "warning-and-error", 1);

#[test]
fn version_script_fails() {
    let dir = fixtures().join("version-script-fails");
    // Git keeps the executable bit, but a checkout without it would test something else.
    std::fs::set_permissions(
        dir.join("mkosi.version"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod mkosi.version");
    check("version_script_fails", &dir, &[], 1);
}

#[test]
fn rootpw_readable_by_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mkosi.conf"),
        "[Distribution]\nDistribution=arch\n",
    )
    .expect("write");
    let rootpw = dir.path().join("mkosi.rootpw");
    std::fs::write(&rootpw, "hashed:$6$salt$hash\n").expect("write");
    std::fs::set_permissions(&rootpw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let canonical = dir.path().canonicalize().expect("canonical");
    check("rootpw_readable_by_others", &canonical, &[], 1);

    // As strict as mkosi and no stricter: its group may read it.
    std::fs::set_permissions(&rootpw, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let run = recipe_show(&canonical, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("value: \"$6$salt$hash\""),
        "{}",
        run.stdout
    );
}

#[test]
fn no_recipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canonical = dir.path().canonicalize().expect("canonical");
    check("no_recipe", &canonical, &[], 1);
}

#[test]
fn missing_project_directory() {
    // A short path of its own: under the checkout, a long checkout path made the 100-column
    // report wrap the line the snapshot holds.
    let dir = Path::new("/nonexistent/kiln-project");
    check("missing_project_directory", dir, &[], 2);
}

#[test]
fn seed_recipe_show() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipe/tests/fixtures/arch-rescue");
    std::fs::set_permissions(
        dir.join("mkosi.rootpw"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod mkosi.rootpw");
    for empty in ["mkosi.cache", "mkosi.output"] {
        std::fs::create_dir_all(dir.join(empty)).expect("mkdir");
    }
    let run = recipe_show(&dir, &["--image-version", "20240128082906"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "", "the seed loads without warnings");
    let native = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        other => other,
    };
    let stdout = run.stdout.replace(
        &format!("architecture: \"{native}\""),
        "architecture: \"[NATIVE]\"",
    );
    insta::assert_snapshot!("seed_recipe_show", stdout);
}
