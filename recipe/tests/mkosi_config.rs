//! Reading mkosi projects from real directories: the seed's rescue image, and each rule of
//! mkosi's configuration language (drop-ins, resets, continuation lines, includes, specifiers,
//! matches, versions, subimages, profiles, local configuration, command-line overrides).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_recipe::{
    Bootloader, CertificateSource, ConfigIssue, Distribution, Feature, KeySource, LoadError,
    LoadOptions, Loaded, OutputFormat, ReaderHost, Recipe, RecipeOrigin, RootPassword,
    SecureBootSignTool, TreeSource, from_ron, load_project, to_ron,
};
use kiln_stages::host::reader::RealReaderHost;

/// The environment every test loads with: a Debian host, so defaults do not depend on the machine.
fn environment() -> BTreeMap<String, String> {
    [
        ("MKOSI_HOST_DISTRIBUTION", "debian"),
        ("MKOSI_HOST_RELEASE", "trixie"),
        ("HOME", "/home/builder"),
        ("PATH", "/usr/bin:/bin"),
        ("KILN_TEST_DIR", "/srv/shared"),
        ("FROM_HOST", "host-value"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn options() -> LoadOptions {
    LoadOptions {
        environment: Some(environment()),
        ..LoadOptions::default()
    }
}

/// A project directory holding `files` (a trailing `/` makes a directory).
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let full = dir.path().join(path);
        if let Some(dirname) = path.strip_suffix('/') {
            std::fs::create_dir_all(dir.path().join(dirname)).expect("mkdir");
            continue;
        }
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
    }
    dir
}

fn executable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn load(dir: &Path) -> Loaded {
    load_with(dir, &options())
}

fn load_with(dir: &Path, opts: &LoadOptions) -> Loaded {
    match load_project(dir, opts, &RealReaderHost) {
        Ok(loaded) => loaded,
        Err(error) => panic!("loading failed: {}", describe(&error)),
    }
}

fn describe(error: &LoadError) -> String {
    match error {
        LoadError::Config(errors) => errors
            .issues()
            .iter()
            .map(|i| format!("{i} ({:?})", i.location()))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

fn errors(dir: &Path) -> Vec<ConfigIssue> {
    errors_with(dir, &options())
}

fn errors_with(dir: &Path, opts: &LoadOptions) -> Vec<ConfigIssue> {
    match load_project(dir, opts, &RealReaderHost) {
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.recipe),
        Err(LoadError::Config(errors)) => errors.errors().cloned().collect(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn messages(issues: &[ConfigIssue]) -> Vec<String> {
    issues.iter().map(|i| i.message().to_string()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn native_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A copy of the seed's project (tests/fixtures/arch-rescue) outside the repository, made once
/// per test binary: git keeps no file modes but the executable bit, and mkosi refuses a root
/// password file others can read, so the copy's `mkosi.rootpw` is made 0600 there.
fn fixture() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch-rescue");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arch-rescue-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg(&dir)
            .status()
            .expect("cp");
        assert!(status.success());
        std::fs::set_permissions(
            dir.join("mkosi.rootpw"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod mkosi.rootpw");
        for empty in ["mkosi.cache", "mkosi.output"] {
            std::fs::create_dir_all(dir.join(empty)).expect("mkdir");
        }
        dir
    })
    .clone()
}

fn expected_rescue_recipe(root_password: RootPassword) -> Recipe {
    let mut recipe = Recipe::default();
    recipe.config.dependencies = Vec::new();
    recipe.distribution.distribution = Distribution::Arch;
    recipe.distribution.release = Some("rolling".into());
    recipe.distribution.architecture = native_architecture().into();
    recipe.output.image_id = Some("archlinux-rescue".into());
    recipe.output.format = OutputFormat::Uki;
    recipe.output.output = Some("archlinux-rescue".into());
    recipe.output.output_directory = Some("mkosi.output".into());
    recipe.output.cache_directory = Some("mkosi.cache".into());
    let content = &mut recipe.content;
    content.packages = strings(&[
        "arch-install-scripts",
        "base",
        "intel-ucode",
        "iwd",
        "less",
        "linux",
        "linux-firmware",
        "man-pages",
        "mandoc",
        "nano",
        "wireless-regdb",
    ]);
    content.remove_files = strings(&[
        "/usr/include/",
        "/usr/share/include",
        "/usr/share/pkgconfig",
        "/usr/lib/**/*.a",
        "/usr/share/locale",
    ]);
    content.hostname = Some("archlinux-rescue".into());
    content.bootable = Feature::Disabled;
    content.bootloader = Bootloader::None;
    content.kernel_modules_exclude = strings(&[".*"]);
    content.kernel_modules_include_host = true;
    content.kernel_modules_include = strings(&[
        "fs/", "hid/", "input/", "usb/", "dm-.*", "crypto/", "tpm/", "virtio",
    ]);
    content.root_password = Some(root_password);
    content.extra_trees = vec![TreeSource {
        source: "mkosi.extra".into(),
        target: None,
    }];
    content.with_docs = true;
    recipe.scripts.postinst = vec!["mkosi.postinst.chroot".into()];
    recipe.scripts.finalize = vec!["mkosi.finalize".into()];
    recipe
}

#[test]
fn the_seed_rescue_image_resolves() {
    let dir = fixture();
    let loaded = load(&dir);
    assert!(
        loaded.warnings.is_empty(),
        "{:?}",
        messages(&loaded.warnings)
    );
    assert_eq!(loaded.origin, RecipeOrigin::Mkosi);
    assert_eq!(loaded.dir, std::fs::canonicalize(&dir).expect("canonical"));
    assert_eq!(loaded.files, vec!["mkosi.conf".to_string()]);

    let hash = std::fs::read_to_string(dir.join("mkosi.rootpw")).expect("read rootpw");
    let hash = hash
        .trim()
        .strip_prefix("hashed:")
        .expect("hashed")
        .to_string();
    let expected = expected_rescue_recipe(RootPassword {
        value: hash,
        hashed: true,
    });
    assert_eq!(loaded.recipe, expected);
    assert_eq!(loaded.recipe.content.packages.len(), 11);
    assert_eq!(loaded.recipe.image_name(), "archlinux-rescue");
    assert_eq!(loaded.recipe.output_name(), "archlinux-rescue");

    // Each value keeps where it was set.
    let format = loaded
        .assignments
        .iter()
        .find(|a| a.setting == "Format")
        .expect("Format assigned");
    assert_eq!(
        (
            format.location.file.as_str(),
            format.location.line,
            format.location.column
        ),
        ("mkosi.conf", 6, 8)
    );
    let extra = loaded
        .assignments
        .iter()
        .find(|a| a.setting == "ExtraTrees")
        .expect("ExtraTrees assigned");
    assert_eq!(extra.location.file, "mkosi.extra");

    // The printed recipe reads back the same.
    assert_eq!(
        from_ron(&to_ron(&loaded.recipe), "recipe").expect("reads back"),
        loaded.recipe
    );
}

#[test]
fn the_seed_rescue_image_with_a_version_from_the_command_line() {
    let dir = fixture();
    let opts = LoadOptions {
        image_version: Some("20240128082906".into()),
        autologin: Some(true),
        ..options()
    };
    let loaded = load_with(&dir, &opts);
    assert_eq!(
        loaded.recipe.output.image_version.as_deref(),
        Some("20240128082906")
    );
    assert_eq!(
        loaded.recipe.output_name(),
        "archlinux-rescue_20240128082906"
    );
    assert!(loaded.recipe.content.autologin);
}

#[test]
fn the_recipes_directory_matches_the_fixture() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/arch-rescue");
    assert!(
        recipes.join("mkosi.conf").exists(),
        "the repository holds recipes/arch-rescue"
    );
    let loaded = load(&recipes);
    // The committed recipe holds its test password in mkosi.conf, hashed: a file's 0600 mode
    // would not survive `git clone`.
    let conf = std::fs::read_to_string(recipes.join("mkosi.conf")).expect("read mkosi.conf");
    let hash = conf
        .lines()
        .find_map(|line| line.strip_prefix("RootPassword="))
        .expect("RootPassword= in the recipe");
    let password = values_root_password(hash);
    let mut expected = expected_rescue_recipe(password);
    expected.output.output_directory = recipes
        .join("mkosi.output")
        .exists()
        .then(|| "mkosi.output".into());
    expected.output.cache_directory = recipes
        .join("mkosi.cache")
        .exists()
        .then(|| "mkosi.cache".into());
    assert_eq!(loaded.recipe, expected);
}

fn values_root_password(text: &str) -> RootPassword {
    let text = text.trim_end_matches('\n').trim();
    match text.strip_prefix("hashed:") {
        Some(hash) => RootPassword {
            value: hash.into(),
            hashed: true,
        },
        None => RootPassword {
            value: text.into(),
            hashed: false,
        },
    }
}

#[test]
fn dropins_are_read_in_sorted_order_after_mkosi_conf() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Content]\nHostname=main\nRemoveFiles=/from-main\n",
        ),
        (
            "mkosi.conf.d/20-last.conf",
            "[Content]\nHostname=last\nRemoveFiles=/from-20\n",
        ),
        (
            "mkosi.conf.d/10-first.conf",
            "[Content]\nHostname=first\nRemoveFiles=/from-10\n",
        ),
        (
            "mkosi.conf.d/15-dir/mkosi.conf",
            "[Content]\nRemoveFiles=/from-15-dir\n",
        ),
        (
            "mkosi.conf.d/15-dir/mkosi.conf.d/1.conf",
            "[Content]\nRemoveFiles=/from-15-dir-1\n",
        ),
        ("mkosi.conf.d/README", "not read"),
    ]);
    let loaded = load(dir.path());
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("last"));
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&[
            "/from-main",
            "/from-10",
            "/from-15-dir",
            "/from-15-dir-1",
            "/from-20"
        ])
    );
    assert_eq!(
        loaded.files,
        strings(&[
            "mkosi.conf",
            "mkosi.conf.d/10-first.conf",
            "mkosi.conf.d/15-dir/mkosi.conf",
            "mkosi.conf.d/15-dir/mkosi.conf.d/1.conf",
            "mkosi.conf.d/20-last.conf",
        ])
    );
    assert_eq!(
        messages(&loaded.warnings).len(),
        1,
        "README is reported as ignored"
    );
    assert!(loaded.warnings[0].message().contains("mkosi.conf.d/README"));
}

#[test]
fn an_empty_assignment_resets_a_list_and_repeated_keys_append() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Content]\nPackages=a\nPackages=b\nRemoveFiles=/x\nRemoveFiles=\nRemoveFiles=/y\n[Content]\nPackages=c\n",
        ),
        (
            "mkosi.conf.d/10.conf",
            "[Content]\nPackages=\nPackages=d\nHostname=h\n",
        ),
        ("mkosi.conf.d/20.conf", "[Content]\nHostname=\n"),
    ]);
    let loaded = load(dir.path());
    assert_eq!(loaded.recipe.content.packages, strings(&["d"]));
    assert_eq!(loaded.recipe.content.remove_files, strings(&["/y"]));
    assert_eq!(loaded.recipe.content.hostname, None);
}

#[test]
fn continuation_lines_comments_and_commas() {
    let dir = project(&[(
        "mkosi.conf",
        "  [Content]  # the content\n  RemoveFiles = /a,/b # two\n      /c\n      # a comment line between items\n\n      /d,,/e\n  KernelCommandLine=console=ttyS0 quiet\n      rw\n  Hostname=box # trailing comment\n  [Output]\n  ImageId=rescue",
    )]);
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/a", "/b", "/c", "/d", "/e"])
    );
    assert_eq!(
        loaded.recipe.content.kernel_command_line,
        strings(&["console=ttyS0", "quiet", "rw"])
    );
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("box"));
    assert_eq!(loaded.recipe.output.image_id.as_deref(), Some("rescue"));
}

#[test]
fn includes_are_read_in_place_relative_to_the_current_directory_and_once() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Content]\nRemoveFiles=/before\n[Include]\nInclude=common/extra.conf,shared\n[Content]\nRemoveFiles=/after\n[Include]\nInclude=common/extra.conf\n",
        ),
        (
            "common/extra.conf",
            "[Content]\nRemoveFiles=/from-file\nHostname=included\n",
        ),
        ("shared/mkosi.conf", "[Content]\nRemoveFiles=/from-dir\n"),
        (
            "shared/mkosi.conf.d/1.conf",
            "[Content]\nRemoveFiles=/from-dir-dropin\n",
        ),
        ("shared/mkosi.postinst", "#!/bin/sh\n"),
    ]);
    executable(&dir.path().join("shared/mkosi.postinst"));
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&[
            "/before",
            "/from-file",
            "/from-dir",
            "/from-dir-dropin",
            "/after"
        ])
    );
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("included"));
    // An included directory brings its default files.
    assert_eq!(
        loaded.recipe.scripts.postinst,
        vec![PathBuf::from("shared/mkosi.postinst")]
    );
}

#[test]
fn an_include_cycle_and_a_missing_include_are_errors() {
    let dir = project(&[
        ("mkosi.conf", "[Include]\nInclude=a.conf\n"),
        ("a.conf", "[Include]\nInclude=b.conf\n"),
        ("b.conf", "[Include]\nInclude=a.conf,missing.conf\n"),
    ]);
    let found = errors(dir.path());
    assert_eq!(
        messages(&found),
        strings(&[
            "Including `a.conf` makes a cycle",
            "Included `missing.conf` does not exist"
        ])
    );
    assert!(
        found[0]
            .help_text()
            .expect("help")
            .contains("a.conf -> b.conf -> a.conf")
    );
    let location = found[0].location().expect("location");
    assert_eq!(
        (location.file.as_str(), location.line, location.column),
        ("b.conf", 2, 9)
    );
}

/// A chain of includes far deeper than any project holds (deep enough to overflow the reader's
/// stack before there was a limit) is an error at the include that goes too deep.
#[test]
fn a_deep_include_chain_is_an_error_not_a_crash() {
    let dir = include_chain(5_000);
    let found = errors(dir.path());
    assert_eq!(
        messages(&found),
        strings(&["Including `inc/62.conf` nests configuration more than 64 levels deep"])
    );
    let location = found[0].location().expect("location");
    assert_eq!((location.file.as_str(), location.line), ("inc/61.conf", 2));
}

/// A drop-in directory that holds a link back up to itself is an error at the depth limit;
/// before the limit, the same files were read again at every level until the kernel's symlink
/// limit stopped the walk.
#[test]
fn a_drop_in_directory_linking_back_up_is_an_error_not_a_crash() {
    let dir = project(&[
        ("mkosi.conf", "[Content]\nHostname=loop\n"),
        ("mkosi.conf.d/", ""),
    ]);
    std::os::unix::fs::symlink("..", dir.path().join("mkosi.conf.d/again")).unwrap();
    let found = errors(dir.path());
    assert!(
        messages(&found)
            .iter()
            .all(|m| m.contains("levels of configuration deep")),
        "{:?}",
        messages(&found)
    );
    assert!(!found.is_empty());
}

/// `[Match] ImageVersion=` and `SystemdVersion=` compare versions as mkosi does.
#[test]
fn version_conditions_compare_versions() {
    let dir = project(&[
        ("mkosi.conf", "[Output]\nImageVersion=1.10\n"),
        (
            "mkosi.conf.d/01.conf",
            "[Match]\nImageVersion=>=1.9\n[Content]\nRemoveFiles=/ge\n",
        ),
        (
            "mkosi.conf.d/02.conf",
            "[Match]\nImageVersion=<1.9\n[Content]\nRemoveFiles=/lt\n",
        ),
        (
            "mkosi.conf.d/04.conf",
            "[Match]\nImageVersion=1.10\n[Content]\nRemoveFiles=/eq\n",
        ),
        (
            "mkosi.conf.d/05.conf",
            "[Match]\nSystemdVersion=>=1\n[Content]\nRemoveFiles=/systemd-new\n",
        ),
        (
            "mkosi.conf.d/06.conf",
            "[Match]\nSystemdVersion=<1\n[Content]\nRemoveFiles=/systemd-old\n",
        ),
    ]);
    let loaded = load(dir.path());
    let mut expected = vec!["/ge", "/eq"];
    let systemctl = RealReaderHost.systemd_version(&environment()).is_some();
    // Without systemd, neither SystemdVersion= section matches: that half is checked alone.
    if kiln_test_support::skip_unless(
        (!systemctl).then(|| {
            "`systemctl` is missing: a matching SystemdVersion= is not checked".to_owned()
        }),
    ) {
        expected.push("/systemd-new");
    }
    assert_eq!(loaded.recipe.content.remove_files, strings(&expected));
}

/// `ImageId=` and `ImageVersion=` name the output file: each is refused at its line when it
/// would lead out of the output directory, and `--image-version` names the flag.
#[test]
fn output_name_parts_that_leave_the_output_directory_are_errors() {
    for (conf, line) in [
        ("[Output]\nImageId=../../x\n", 2),
        ("[Output]\nImageId=/srv/x\n", 2),
        ("[Output]\nImageId=..\n", 2),
        ("[Output]\nImageId=ok\nImageVersion=1/../../../x\n", 3),
    ] {
        let dir = project(&[("mkosi.conf", conf)]);
        let found = errors(dir.path());
        assert_eq!(found.len(), 1, "{conf}: {:?}", messages(&found));
        assert!(
            found[0]
                .message()
                .contains("cannot be part of the output's file name"),
            "{}",
            found[0].message()
        );
        let location = found[0].location().expect("location");
        assert_eq!(
            (location.file.as_str(), location.line),
            ("mkosi.conf", line)
        );
    }
    let dir = project(&[("mkosi.conf", "[Output]\nImageId=ok\n")]);
    let opts = LoadOptions {
        image_version: Some("x/../../../y".into()),
        ..options()
    };
    let found = errors_with(dir.path(), &opts);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].location().expect("location").file,
        "`--image-version`"
    );
}

/// A chain of `depth` includes ending in a file that sets `Hostname=`.
fn include_chain(depth: usize) -> tempfile::TempDir {
    let mut files: Vec<(String, String)> = (0..depth)
        .map(|i| {
            (
                format!("inc/{i}.conf"),
                format!("[Include]\nInclude=inc/{}.conf\n", i + 1),
            )
        })
        .collect();
    files.push((
        format!("inc/{depth}.conf"),
        "[Content]\nHostname=deep\n".into(),
    ));
    files.push((
        "mkosi.conf".into(),
        "[Include]\nInclude=inc/0.conf\n".into(),
    ));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    project(&files)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any chain of includes loads while it is shallower than the limit, and is one error at
    /// the include that crosses it otherwise.
    #[test]
    fn include_chains_load_up_to_the_limit_and_no_further(depth in 0usize..200) {
        let dir = include_chain(depth);
        match load_project(dir.path(), &options(), &RealReaderHost) {
            Ok(loaded) => {
                proptest::prop_assert!(depth < 62, "{} levels loaded", depth);
                proptest::prop_assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("deep"));
            }
            Err(LoadError::Config(errors)) => {
                proptest::prop_assert!(depth >= 62, "{} levels: {:?}", depth, errors.issues());
                proptest::prop_assert_eq!(errors.errors().count(), 1);
            }
            Err(other) => proptest::prop_assert!(false, "{}", other),
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever `ImageId=` and `ImageVersion=` say, a recipe that loads names its output with
    /// one file name.
    #[test]
    fn any_loaded_output_name_is_one_file_name(
        id in "[a-z./_\\\\ -]{0,12}",
        version in proptest::option::of("[0-9a-z./~ -]{0,10}"),
    ) {
        let mut conf = format!("[Output]\nImageId={id}\n");
        if let Some(version) = &version {
            conf.push_str(&format!("ImageVersion={version}\n"));
        }
        let dir = project(&[("mkosi.conf", conf.as_str())]);
        if let Ok(loaded) = load_project(dir.path(), &options(), &RealReaderHost) {
            let name = loaded.recipe.output_name();
            proptest::prop_assert!(
                kiln_recipe::paths::is_file_name(&name),
                "`{}` from ImageId={:?} ImageVersion={:?}", name, id, version
            );
            proptest::prop_assert_eq!(
                std::path::Path::new(&name).components().count(),
                1
            );
        }
    }
}

#[test]
fn specifiers_expand_to_current_values() {
    let dir = project(&[(
        "mkosi.conf",
        "[Distribution]\nDistribution=arch\n[Output]\nImageId=rescue\nImageVersion=7\n[Content]\nKernelCommandLine=%d %r %a %i %v %t %o %I %F 100%% %z\nHostname=%i-%v\n[Build]\nEnvironment=DIR=%D CONF=%C CWD=%P OUT=%O\n",
    )]);
    let loaded = load(dir.path());
    let project_dir = loaded.dir.to_string_lossy().into_owned();
    let arch = native_architecture();
    assert_eq!(
        loaded.recipe.content.kernel_command_line,
        strings(&[
            "arch", "rolling", arch, "rescue", "7", "disk", "rescue_7", "main", "ext4", "100%"
        ])
    );
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("rescue-7"));
    let env = &loaded.recipe.config.environment;
    assert_eq!(env["DIR"], project_dir);
    assert_eq!(env["CONF"], project_dir);
    assert_eq!(env["CWD"], project_dir);
    // %O has no value: OutputDirectory= is not set and there is no mkosi.output/.
    assert_eq!(env["OUT"], "");
    let warnings = messages(&loaded.warnings);
    assert_eq!(
        warnings,
        strings(&[
            "Unknown specifier `%z`: it expands to nothing",
            "Specifier `%O` expands to nothing: `OutputDirectory=` is not set yet",
        ])
    );
}

#[test]
fn match_sections_and_them_together_and_or_with_bars() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Distribution]\nDistribution=arch\n[Output]\nImageId=arch-rescue\n",
        ),
        (
            "mkosi.conf.d/01-debian.conf",
            "[Match]\nDistribution=debian\n[Content]\nRemoveFiles=/debian\n",
        ),
        (
            "mkosi.conf.d/02-arch.conf",
            "[Match]\nDistribution=arch\n[Content]\nRemoveFiles=/arch\n",
        ),
        (
            "mkosi.conf.d/03-not-debian.conf",
            "[Match]\nDistribution=!debian\n[Content]\nRemoveFiles=/not-debian\n",
        ),
        (
            "mkosi.conf.d/04-or.conf",
            "[Match]\nDistribution=|fedora\nDistribution=|arch\n[Content]\nRemoveFiles=/fedora-or-arch\n",
        ),
        (
            "mkosi.conf.d/05-and.conf",
            "[Match]\nDistribution=arch\n[Match]\nRelease=bookworm\n[Content]\nRemoveFiles=/arch-and-bookworm\n",
        ),
        (
            "mkosi.conf.d/06-glob.conf",
            "[Match]\nImageId=arch-*\nArchitecture=uefi\nRelease=rolling\n[Content]\nRemoveFiles=/glob\n",
        ),
        (
            "mkosi.conf.d/07-path.conf",
            "[Match]\nPathExists=mkosi.conf.d\nPathExists=!nowhere\nImage=main\n[Content]\nRemoveFiles=/path\n",
        ),
        (
            "mkosi.conf.d/08-late.conf",
            "[Content]\nRemoveFiles=/late\n[Match]\nDistribution=debian\n",
        ),
        (
            "mkosi.conf.d/09-unset.conf",
            "[Match]\nImageVersion=>=1\n[Content]\nRemoveFiles=/versioned\n",
        ),
        (
            "mkosi.conf.d/10-default.conf",
            "[Match]\nFormat=disk\nBootable=auto\n[Content]\nRemoveFiles=/defaults\n",
        ),
        (
            "mkosi.conf.d/11-dir/mkosi.conf",
            "[Match]\nDistribution=fedora\n",
        ),
        (
            "mkosi.conf.d/11-dir/mkosi.conf.d/x.conf",
            "[Content]\nRemoveFiles=/skipped-with-its-dir\n",
        ),
    ]);
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&[
            "/arch",
            "/not-debian",
            "/fedora-or-arch",
            "/glob",
            "/path",
            "/defaults"
        ])
    );
}

#[test]
fn trigger_match_sections_are_alternatives() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Distribution]\nDistribution=arch\nRelease=rolling\n",
        ),
        (
            "mkosi.conf.d/01.conf",
            "[TriggerMatch]\nDistribution=debian\nRelease=trixie\n[TriggerMatch]\nDistribution=arch\nRelease=rolling\n[Content]\nRemoveFiles=/one-group-holds\n",
        ),
        (
            "mkosi.conf.d/02.conf",
            "[TriggerMatch]\nDistribution=debian\n[TriggerMatch]\nDistribution=arch\nRelease=bookworm\n[Content]\nRemoveFiles=/no-group-holds\n",
        ),
        (
            "mkosi.conf.d/03.conf",
            "[Match]\nDistribution=arch\n[TriggerMatch]\nRelease=rolling\n[TriggerMatch]\nRelease=other\n[Content]\nRemoveFiles=/match-and-trigger\n",
        ),
    ]);
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/one-group-holds", "/match-and-trigger"])
    );
}

#[test]
fn mkosi_version_as_a_file_and_as_a_script() {
    let file = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        ("mkosi.version", "1.2.3\n\n"),
    ]);
    let loaded = load(file.path());
    assert_eq!(loaded.recipe.output.image_version.as_deref(), Some("1.2.3"));
    assert_eq!(loaded.recipe.output_name(), "img_1.2.3");

    let script = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        ("mkosi.version", "#!/bin/sh\necho \"$FROM_HOST-42\"\n"),
    ]);
    executable(&script.path().join("mkosi.version"));
    let loaded = load(script.path());
    assert_eq!(
        loaded.recipe.output.image_version.as_deref(),
        Some("host-value-42")
    );

    // The command line wins over mkosi.version.
    let opts = LoadOptions {
        image_version: Some("cli".into()),
        ..options()
    };
    assert_eq!(
        load_with(script.path(), &opts)
            .recipe
            .output
            .image_version
            .as_deref(),
        Some("cli")
    );

    let failing = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        ("mkosi.version", "#!/bin/sh\necho broken >&2\nexit 3\n"),
    ]);
    executable(&failing.path().join("mkosi.version"));
    let found = errors(failing.path());
    assert_eq!(found.len(), 1);
    assert!(
        found[0].message().starts_with("`mkosi.version` failed"),
        "{}",
        found[0]
    );
    assert!(found[0].help_text().expect("help").contains("broken"));

    let not_executable = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        ("mkosi.version", "#!/bin/sh\necho 1\n"),
    ]);
    let found = errors(not_executable.path());
    assert!(
        found[0].message().contains("starts with a shebang"),
        "{}",
        found[0]
    );
}

#[test]
fn subimages_inherit_universal_settings_and_are_built_in_dependency_order() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Distribution]\nDistribution=arch\n[Output]\nImageVersion=5\n[Content]\nHostname=main\n[Build]\nEnvironment=SHARED=1 PRIVATE=2\n[Config]\nPassEnvironment=SHARED\n",
        ),
        (
            "mkosi.images/initrd.conf",
            "[Output]\nFormat=cpio\n[Content]\nPackages=systemd\n",
        ),
        (
            "mkosi.images/app/mkosi.conf",
            "[Config]\nDependencies=initrd\n[Output]\nFormat=sysext\nImageVersion=9\n",
        ),
        ("mkosi.images/app/mkosi.extra/", ""),
        (
            "mkosi.images/skipped.conf",
            "[Match]\nDistribution=fedora\n",
        ),
    ]);
    let loaded = load(dir.path());
    let recipe = &loaded.recipe;
    assert_eq!(recipe.config.dependencies, strings(&["app", "initrd"]));
    let names: Vec<&str> = recipe.subimages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["initrd", "app"]);
    let initrd = &recipe.subimages[0].recipe;
    assert_eq!(initrd.distribution.distribution, Distribution::Arch);
    assert_eq!(initrd.output.format, OutputFormat::Cpio);
    assert_eq!(initrd.output.image_version.as_deref(), Some("5"));
    assert_eq!(initrd.output.output.as_deref(), Some("initrd_5"));
    assert_eq!(
        initrd.content.hostname, None,
        "Hostname= is not passed down"
    );
    assert_eq!(
        initrd.config.environment,
        BTreeMap::from([("SHARED".to_string(), "1".to_string())])
    );
    let app = &recipe.subimages[1].recipe;
    assert_eq!(app.output.image_version.as_deref(), Some("9"));
    assert_eq!(app.config.dependencies, strings(&["initrd"]));
    assert_eq!(
        app.content.extra_trees,
        vec![TreeSource {
            source: "mkosi.images/app/mkosi.extra".into(),
            target: None
        }]
    );
}

#[test]
fn subimages_may_not_set_universal_settings_and_dependencies_must_exist() {
    let dir = project(&[
        ("mkosi.conf", "[Config]\nDependencies=missing\n"),
        (
            "mkosi.images/one.conf",
            "[Distribution]\nDistribution=fedora\n",
        ),
    ]);
    let found = messages(&errors(dir.path()));
    assert_eq!(
        found,
        strings(&[
            "Setting `Distribution=` cannot be configured in the `one` image",
            "`Dependencies=` names `missing`, but no image has that name",
        ])
    );

    let cycle = project(&[
        ("mkosi.conf", "[Distribution]\nDistribution=arch\n"),
        ("mkosi.images/a.conf", "[Config]\nDependencies=b\n"),
        ("mkosi.images/b.conf", "[Config]\nDependencies=a\n"),
    ]);
    assert_eq!(
        messages(&errors(cycle.path())),
        strings(&["Image dependency cycle between `a`, `b`"])
    );
}

#[test]
fn profiles_select_drop_ins_from_mkosi_profiles() {
    let files = [
        (
            "mkosi.conf",
            "[Config]\nProfiles=desktop\n[Content]\nRemoveFiles=/main\n",
        ),
        (
            "mkosi.conf.d/10.conf",
            "[Match]\nProfiles=desktop\n[Content]\nRemoveFiles=/dropin-for-desktop\n",
        ),
        (
            "mkosi.profiles/desktop.conf",
            "[Content]\nRemoveFiles=/desktop\n",
        ),
        (
            "mkosi.profiles/debug/mkosi.conf",
            "[Content]\nRemoveFiles=/debug\n",
        ),
        (
            "mkosi.profiles/debug/mkosi.conf.d/1.conf",
            "[Content]\nRemoveFiles=/debug-dropin\n",
        ),
        (
            "mkosi.profiles/unused.conf",
            "[Content]\nRemoveFiles=/unused\n",
        ),
    ];
    let dir = project(&files);
    let loaded = load(dir.path());
    assert_eq!(loaded.recipe.config.profiles, strings(&["desktop"]));
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/main", "/dropin-for-desktop", "/desktop"])
    );

    let opts = LoadOptions {
        profiles: strings(&["debug"]),
        ..options()
    };
    let loaded = load_with(dir.path(), &opts);
    assert_eq!(
        loaded.recipe.config.profiles,
        strings(&["desktop", "debug"])
    );
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&[
            "/main",
            "/dropin-for-desktop",
            "/desktop",
            "/debug",
            "/debug-dropin"
        ])
    );
}

#[test]
fn local_configuration_overrides_files_but_not_the_command_line() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Content]\nHostname=from-conf\nRemoveFiles=/conf\n[Output]\nImageVersion=1\n",
        ),
        ("mkosi.conf.d/10.conf", "[Content]\nHostname=from-dropin\n"),
        (
            "mkosi.local.conf",
            "[Content]\nHostname=from-local\nRemoveFiles=/local\n[Output]\nImageVersion=2\n",
        ),
    ]);
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.hostname.as_deref(),
        Some("from-local")
    );
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/conf", "/local"])
    );
    assert_eq!(loaded.recipe.output.image_version.as_deref(), Some("2"));
    let opts = LoadOptions {
        image_version: Some("3".into()),
        ..options()
    };
    assert_eq!(
        load_with(dir.path(), &opts)
            .recipe
            .output
            .image_version
            .as_deref(),
        Some("3")
    );
}

#[test]
fn a_root_password_file_others_can_read_is_refused() {
    let dir = project(&[
        ("mkosi.conf", "[Content]\nHostname=h\n"),
        ("mkosi.rootpw", "hashed:$6$x\n"),
    ]);
    let rootpw = dir.path().join("mkosi.rootpw");
    std::fs::set_permissions(&rootpw, std::fs::Permissions::from_mode(0o604)).expect("chmod");
    let found = errors(dir.path());
    assert_eq!(
        messages(&found),
        strings(&["`mkosi.rootpw` is accessible by others (mode 0604)"])
    );
    // As strict as mkosi (`mode & 0o007`), no stricter: its group may read it.
    std::fs::set_permissions(&rootpw, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let loaded = load(dir.path());
    assert_eq!(
        loaded.recipe.content.root_password,
        Some(RootPassword {
            value: "$6$x".into(),
            hashed: true
        })
    );
}

#[test]
fn environment_paths_and_expansions() {
    let dir = project(&[
        (
            "mkosi.conf",
            "[Build]\nEnvironment=A=1 \"B=two words\" FROM_HOST\nEnvironment=SOURCE_DATE_EPOCH=1700000000\n[Content]\nBaseTrees=$KILN_TEST_DIR/base,~/trees/base\nExtraTrees=extra:/opt/extra,../outside\nSkeletonTrees=skel\n[Validation]\nSecureBootKey=pkcs11:token=kiln\nSecureBootCertificate=db.crt\n",
        ),
        ("extra/", ""),
        ("skel/", ""),
        ("db.crt", "certificate"),
    ]);
    let loaded = load(dir.path());
    let env = &loaded.recipe.config.environment;
    assert_eq!(env["A"], "1");
    assert_eq!(env["B"], "two words");
    assert_eq!(env["FROM_HOST"], "host-value");
    assert_eq!(loaded.recipe.content.source_date_epoch, Some(1_700_000_000));
    assert_eq!(
        loaded.recipe.content.base_trees,
        vec![
            PathBuf::from("/srv/shared/base"),
            PathBuf::from("/home/builder/trees/base")
        ]
    );
    let outside = loaded.dir.parent().expect("parent").join("outside");
    assert_eq!(
        loaded.recipe.content.extra_trees,
        vec![
            TreeSource {
                source: "extra".into(),
                target: Some("/opt/extra".into())
            },
            TreeSource {
                source: outside,
                target: None
            },
        ]
    );
    assert_eq!(
        loaded.recipe.content.skeleton_trees,
        vec![TreeSource {
            source: "skel".into(),
            target: None
        }]
    );
    assert_eq!(
        loaded.recipe.validation.secure_boot_key,
        Some(PathBuf::from("pkcs11:token=kiln"))
    );
    assert_eq!(
        loaded.recipe.validation.secure_boot_certificate,
        Some(PathBuf::from("db.crt"))
    );
}

#[test]
fn secure_boot_sources_and_sign_tool_read_as_mkosi_spells_them() {
    let dir = project(&[(
        "mkosi.conf",
        "[Validation]\nSecureBoot=yes\nSecureBootKey=pkcs11:token=kiln\nSecureBootKeySource=engine:pkcs11\nSecureBootCertificate=db.crt\nSecureBootCertificateSource=provider:pkcs11\nSecureBootSignTool=systemd-sbsign\n",
    )]);
    let validation = load(dir.path()).recipe.validation;
    assert!(validation.secure_boot);
    assert_eq!(
        validation.secure_boot_key_source,
        KeySource::Engine("pkcs11".to_string())
    );
    assert_eq!(
        validation.secure_boot_certificate_source,
        CertificateSource::Provider("pkcs11".to_string())
    );
    assert_eq!(
        validation.secure_boot_sign_tool,
        SecureBootSignTool::SystemdSbsign
    );
    assert_eq!(
        validation.secure_boot_key_source.to_mkosi(),
        "engine:pkcs11"
    );

    // mkosi's defaults; an empty assignment is the default again.
    let dir = project(&[(
        "mkosi.conf",
        "[Validation]\nSecureBootKeySource=engine:x\nSecureBootKeySource=\n",
    )]);
    let validation = load(dir.path()).recipe.validation;
    assert_eq!(validation.secure_boot_key_source, KeySource::File);
    assert_eq!(
        validation.secure_boot_certificate_source,
        CertificateSource::File
    );
    assert_eq!(validation.secure_boot_sign_tool, SecureBootSignTool::Auto);

    let dir = project(&[(
        "mkosi.conf",
        "[Validation]\nSecureBootKeySource=token:x\nSecureBootCertificateSource=engine:x\nSecureBootSignTool=pesign\n",
    )]);
    assert_eq!(
        messages(&errors(dir.path())),
        vec![
            "`token:x` is not a valid source for `SecureBootKeySource=`",
            "`engine:x` is not a valid source for `SecureBootCertificateSource=`",
            "`pesign` is not a valid value for `SecureBootSignTool=`",
        ]
    );
}

#[test]
fn defaults_follow_mkosi() {
    let dir = project(&[("mkosi.conf", "[Content]\nHostname=h\n")]);
    let loaded = load(dir.path());
    let recipe = &loaded.recipe;
    // The host runs Debian trixie (MKOSI_HOST_*): an unset distribution is the host's.
    assert_eq!(recipe.distribution.distribution, Distribution::Debian);
    assert_eq!(recipe.distribution.release.as_deref(), Some("trixie"));
    assert_eq!(recipe.distribution.architecture, native_architecture());
    assert_eq!(recipe.output.format, OutputFormat::Disk);
    assert_eq!(recipe.output.output.as_deref(), Some("image"));
    assert_eq!(recipe.content.bootloader, Bootloader::SystemdBoot);
    assert_eq!(recipe.content.bootable, Feature::Auto);
    assert!(recipe.content.with_docs);
    assert_eq!(recipe.output.output_directory, None);

    for (distribution, release) in [
        ("ubuntu", "devel"),
        ("fedora", "rawhide"),
        ("arch", "rolling"),
        ("debian", "trixie"),
    ] {
        let dir = project(&[(
            "mkosi.conf",
            &format!("[Distribution]\nDistribution={distribution}\n"),
        )]);
        assert_eq!(
            load(dir.path()).recipe.distribution.release.as_deref(),
            Some(release),
            "{distribution}"
        );
    }
    let custom = project(&[("mkosi.conf", "[Distribution]\nDistribution=custom\n")]);
    assert_eq!(load(custom.path()).recipe.distribution.release, None);
}

#[test]
fn warnings_point_at_the_line_and_strict_makes_them_errors() {
    let dir = project(&[(
        "mkosi.conf",
        "[Content]\nPackagse=vim\nBootLoader=none\n[Output]\nHostname=misplaced\n[Content]\nSsh=yes\nPostInstallationScript=\n",
    )]);
    let loaded = load(dir.path());
    let found: Vec<(String, Option<String>, usize)> = loaded
        .warnings
        .iter()
        .map(|w| {
            (
                w.message().to_string(),
                w.help_text().map(str::to_string),
                w.location().map_or(0, |l| l.line),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("Unknown setting `Packagse=`: it is ignored".into(), Some("Did you mean `Packages=`? Setting names are case-sensitive".into()), 2),
            ("Unknown setting `BootLoader=`: it is ignored".into(), Some("Did you mean `Bootloader=`? Setting names are case-sensitive".into()), 3),
            ("Setting `Hostname=` should be configured in `[Content]`, not `[Output]`".into(), Some("It is applied anyway; move it below `[Content]`".into()), 5),
            ("`Ssh=` is a mkosi setting that kiln does not implement yet; it is ignored".into(), Some("The image kiln builds may differ from mkosi's; remove the setting to silence this".into()), 7),
            ("Setting `PostInstallationScript=` is deprecated, please use `PostInstallationScripts=` instead".into(), Some("Rename it to `PostInstallationScripts=`; the old name still works".into()), 8),
        ]
    );
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("misplaced"));
    assert!(loaded.recipe.content.packages.is_empty());

    let strict = LoadOptions {
        strict: true,
        ..options()
    };
    assert_eq!(errors_with(dir.path(), &strict).len(), 5);
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let dir = project(&[(
        "mkosi.conf",
        "Outside=1\n[Output]\nFormat=ukii\n[Content]\nBootable=maybe\nNoEquals\n[Broken\nPrepareScripts=missing.sh\n",
    )]);
    let found = errors(dir.path());
    let located: Vec<(String, usize)> = found
        .iter()
        .map(|e| (e.message().to_string(), e.location().map_or(0, |l| l.line)))
        .collect();
    // Reported in the order of the file's lines; the lines below the broken header belong to no
    // section and are skipped with it.
    assert_eq!(
        located,
        vec![
            ("`Outside=1` is outside of any section".to_string(), 1),
            ("`ukii` is not a valid value for `Format=`".to_string(), 3),
            ("Invalid value `maybe` for `Bootable=`".to_string(), 5),
            ("Setting `NoEquals` must be followed by `=`".to_string(), 6),
            ("`[Broken` is not a valid section header".to_string(), 7),
        ]
    );
    assert!(
        found[1]
            .help_text()
            .expect("help")
            .starts_with("Did you mean `uki`? Valid values are `confext`")
    );
}

#[test]
fn kiln_ron_is_read_when_there_is_no_mkosi_conf() {
    let mut recipe = Recipe::default();
    recipe.distribution.distribution = Distribution::Arch;
    recipe.output.image_id = Some("from-ron".into());
    let dir = project(&[("kiln.ron", &to_ron(&recipe))]);
    let loaded = load(dir.path());
    assert_eq!(loaded.origin, RecipeOrigin::Ron);
    assert_eq!(loaded.recipe, recipe);

    std::fs::write(dir.path().join("mkosi.conf"), "[Content]\n").expect("write");
    assert!(matches!(
        load_project(dir.path(), &options(), &RealReaderHost),
        Err(LoadError::TwoRecipes { .. })
    ));

    let bad = project(&[("kiln.ron", "(output: (image_id: 3))")]);
    match load_project(bad.path(), &options(), &RealReaderHost) {
        Err(LoadError::Ron { name, .. }) => assert_eq!(name, "kiln.ron"),
        other => panic!("expected a RON error, got {other:?}"),
    }
}

#[test]
fn configuration_in_a_mkosi_subdirectory() {
    let dir = project(&[
        ("mkosi/mkosi.conf", "[Content]\nHostname=sub\n"),
        ("mkosi/mkosi.extra/", ""),
    ]);
    let loaded = load(dir.path());
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("sub"));
    assert_eq!(loaded.files, strings(&["mkosi/mkosi.conf"]));
    assert_eq!(
        loaded.recipe.content.extra_trees[0].source,
        PathBuf::from("mkosi/mkosi.extra")
    );
}

#[test]
fn missing_directories_and_empty_projects() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        load_project(&dir.path().join("nope"), &options(), &RealReaderHost),
        Err(LoadError::NoProjectDir { .. })
    ));
    assert!(matches!(
        load_project(dir.path(), &options(), &RealReaderHost),
        Err(LoadError::NoRecipe { .. })
    ));
}

#[test]
fn scripts_from_default_names_and_settings() {
    let dir = project(&[
        ("mkosi.conf", "[Content]\nFinalizeScripts=scripts/last.sh\n"),
        ("mkosi.prepare", "#!/bin/sh\n"),
        ("mkosi.prepare.chroot", "#!/bin/sh\n"),
        ("mkosi.postinst.d/20-b.sh", "#!/bin/sh\n"),
        ("mkosi.postinst.d/10-a.chroot", "#!/bin/sh\n"),
        ("mkosi.finalize.chroot", "#!/bin/sh\n"),
        ("scripts/last.sh", "#!/bin/sh\n"),
        ("mkosi.build", "#!/bin/sh\n"),
    ]);
    let loaded = load(dir.path());
    let scripts = &loaded.recipe.scripts;
    assert_eq!(
        scripts.prepare,
        vec![
            PathBuf::from("mkosi.prepare"),
            PathBuf::from("mkosi.prepare.chroot")
        ]
    );
    assert_eq!(
        scripts.postinst,
        vec![
            PathBuf::from("mkosi.postinst.d/10-a.chroot"),
            PathBuf::from("mkosi.postinst.d/20-b.sh")
        ]
    );
    assert_eq!(
        scripts.finalize,
        vec![
            PathBuf::from("mkosi.finalize.chroot"),
            PathBuf::from("scripts/last.sh")
        ]
    );
    assert_eq!(
        messages(&loaded.warnings),
        strings(&[
            "`mkosi.build` sets `BuildScripts=`, which kiln does not implement yet; it is ignored"
        ])
    );
}

#[test]
fn local_directory_environment_matches_and_asserts() {
    let dir = project(&[
        ("mkosi.conf", "[Build]\nEnvironment=STAGE=ci\n"),
        ("mkosi.local/mkosi.conf", "[Content]\nHostname=local-dir\n"),
        (
            "mkosi.conf.d/10.conf",
            "[Match]\nEnvironment=STAGE=ci\nEnvironment=!MISSING\n[Content]\nRemoveFiles=/ci\n",
        ),
        (
            "mkosi.conf.d/20.conf",
            "[Match]\nEnvironment=STAGE=release\n[Content]\nRemoveFiles=/release\n",
        ),
        (
            "mkosi.conf.d/30.conf",
            "[Assert]\nEnvironment=STAGE\n[Content]\nRemoveFiles=/asserted\n",
        ),
    ]);
    let loaded = load(dir.path());
    assert_eq!(loaded.recipe.content.hostname.as_deref(), Some("local-dir"));
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/ci", "/asserted"])
    );

    std::fs::write(
        dir.path().join("mkosi.conf.d/40.conf"),
        "[Assert]\nEnvironment=STAGE=release\n",
    )
    .expect("write");
    let found = errors(dir.path());
    assert_eq!(
        messages(&found),
        strings(&["`Environment=STAGE=release` in `[Assert]` is not satisfied"])
    );
    let location = found[0].location().expect("location");
    assert_eq!(
        (location.file.as_str(), location.line),
        ("mkosi.conf.d/40.conf", 2)
    );
}

/// A machine that runs nothing: it answers with the systemd version and script result it is
/// given, and records what the reader asked.
#[derive(Default)]
struct RecordingReaderHost {
    systemd: Option<String>,
    script: Option<(i32, &'static str, &'static str)>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl ReaderHost for RecordingReaderHost {
    fn systemd_version(&self, env: &BTreeMap<String, String>) -> Option<String> {
        let path = env.get("PATH").cloned().unwrap_or_default();
        self.calls
            .lock()
            .unwrap()
            .push(format!("systemctl --version with PATH={path}"));
        self.systemd.clone()
    }

    fn run_script(
        &self,
        script: &Path,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> std::io::Result<std::process::Output> {
        use std::os::unix::process::ExitStatusExt;
        let name = script.file_name().unwrap_or_default().to_string_lossy();
        let same_env = env == &environment();
        self.calls.lock().unwrap().push(format!(
            "{name} in {} with the recipe's environment: {same_env}",
            cwd.display()
        ));
        match self.script {
            Some((code, stdout, stderr)) => Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: stdout.as_bytes().to_vec(),
                stderr: stderr.as_bytes().to_vec(),
            }),
            None => Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        }
    }
}

impl RecordingReaderHost {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// `SystemdVersion=` compares the version the machine reports, asked with the recipe's
/// environment; a machine without systemd fails the condition with a warning at its line.
#[test]
fn systemd_version_conditions_compare_the_machines_version() {
    let dir = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        (
            "mkosi.conf.d/01.conf",
            "[Match]\nSystemdVersion=>=250\n[Content]\nRemoveFiles=/at-least-250\n",
        ),
        (
            "mkosi.conf.d/02.conf",
            "[Match]\nSystemdVersion=<250\n[Content]\nRemoveFiles=/older\n",
        ),
        (
            "mkosi.conf.d/03.conf",
            "[Match]\nSystemdVersion=!255~rc1\n[Content]\nRemoveFiles=/not-rc\n",
        ),
    ]);
    let host = RecordingReaderHost {
        systemd: Some("255".to_string()),
        ..RecordingReaderHost::default()
    };
    let loaded = match load_project(dir.path(), &options(), &host) {
        Ok(loaded) => loaded,
        Err(error) => panic!("loading failed: {}", describe(&error)),
    };
    assert_eq!(
        loaded.recipe.content.remove_files,
        strings(&["/at-least-250", "/not-rc"])
    );
    assert_eq!(
        host.calls(),
        vec!["systemctl --version with PATH=/usr/bin:/bin"; 3]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let without = RecordingReaderHost::default();
    let loaded = load_project(dir.path(), &options(), &without).expect("loads");
    // A condition that cannot be evaluated does not hold; `!` negates that as any other.
    assert_eq!(loaded.recipe.content.remove_files, strings(&["/not-rc"]));
    let codes: Vec<(&str, Option<usize>)> = loaded
        .warnings
        .iter()
        .map(|w| (w.code_str(), w.location().map(|l| l.line)))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("kiln::config::systemd_version", Some(2)),
            ("kiln::config::systemd_version", Some(2)),
            ("kiln::config::systemd_version", Some(2)),
        ]
    );
}

/// An executable `mkosi.version` is run by the machine in the project directory with the
/// recipe's environment; its output is the version, its failure an error at the file.
#[test]
fn an_executable_version_file_runs_through_the_machine() {
    let dir = project(&[
        ("mkosi.conf", "[Output]\nImageId=img\n"),
        ("mkosi.version", "#!/bin/sh\nexit 99\n"),
    ]);
    executable(&dir.path().join("mkosi.version"));
    let project_dir = dir.path().canonicalize().expect("canonical");
    let host = RecordingReaderHost {
        script: Some((0, "7.1\n\n", "")),
        ..RecordingReaderHost::default()
    };
    let loaded = load_project(dir.path(), &options(), &host).expect("loads");
    assert_eq!(loaded.recipe.output.image_version.as_deref(), Some("7.1"));
    assert_eq!(
        host.calls(),
        vec![format!(
            "mkosi.version in {} with the recipe's environment: true",
            project_dir.display()
        )]
    );

    let failing = RecordingReaderHost {
        script: Some((3, "", "no tag found\n")),
        ..RecordingReaderHost::default()
    };
    let found = match load_project(dir.path(), &options(), &failing) {
        Err(LoadError::Config(errors)) => errors.errors().cloned().collect::<Vec<_>>(),
        other => panic!("expected errors, got {other:?}"),
    };
    assert_eq!(
        messages(&found),
        strings(&["`mkosi.version` failed (exit status: 3)"])
    );
    assert!(
        found[0]
            .help_text()
            .expect("help")
            .ends_with("Its error output:\nno tag found")
    );

    let unstartable = RecordingReaderHost::default();
    let found = match load_project(dir.path(), &options(), &unstartable) {
        Err(LoadError::Config(errors)) => errors.errors().cloned().collect::<Vec<_>>(),
        other => panic!("expected errors, got {other:?}"),
    };
    assert!(
        found[0]
            .message()
            .starts_with("Cannot run `mkosi.version`: "),
        "{}",
        found[0]
    );
}
