//! The modules stage on the real Debian kernel that recipes/debian-rescue installs, and on a
//! small firmware fixture made of tiny ELF modules.
//!
//! The kernel package comes from the Debian mirror configured in apt (`apt-get download`), is
//! unpacked with `dpkg-deb -x` into `/var/tmp/kiln-test-kernel/<package>/` as a merged-usr
//! image would hold it (`usr/lib/modules`, `lib -> usr/lib`, indexed by depmod as the
//! package's postinst does), and kept there so later runs start at once. The compressed copies
//! (every module recompressed with zstd, then with xz) are kept beside it.
//!
//! What the stage keeps is compared with a selection computed here independently: the seed's
//! rules applied by hand, dependencies followed with kmod's `modinfo -F depends` and
//! `modinfo -F softdep`, called once per module as mkosi does. Needs the mirror, kmod, zstd,
//! xz, gcc and objcopy; without them each test says it is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kiln_cache::{
    CheckoutMode, CheckoutOptions, Digest, IngestOptions, Manifest, OutputKind, Store,
};
use kiln_engine::{
    BuildOptions, Graph, Input, Outcome, Reporter, Stage, StageContext, StageError, execute, plan,
};
use kiln_stages::host::{Host, RealHost, RecordingHost};
use kiln_stages::modules::modinfo::{ModInfo, read_module_file};
use kiln_stages::modules::{ModuleRules, ModulesStage, Setting, explain_change};

/// Whether the test can go on (see [`kiln_test_support::skip_unless`]).
fn require(reason_if_missing: Option<String>) -> bool {
    kiln_test_support::skip_unless(reason_if_missing)
}

fn missing_tools(tools: &[(&str, &str)]) -> Option<String> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| kiln_stages::host::find_tool(tool).is_none())
        .map(|(tool, package)| format!("`{tool}` (Debian package {package})"))
        .collect();
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {command:?}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The unpacked kernel package.
struct Kernel {
    /// The image-like root: `usr/lib/modules/<kver>`, `lib -> usr/lib`, `boot/`.
    root: PathBuf,
    kver: String,
    dir: PathBuf,
}

const CACHE: &str = "/var/tmp/kiln-test-kernel";

/// Downloads and unpacks the kernel once per machine; `Err` says why it cannot.
fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(prepare_kernel)
        .as_ref()
        .map_err(Clone::clone)
}

fn prepare_kernel() -> Result<Kernel, String> {
    if let Some(missing) = missing_tools(&[
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("depmod", "kmod"),
        ("modinfo", "kmod"),
        ("modprobe", "kmod"),
    ]) {
        return Err(missing);
    }
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|dep| dep.starts_with("linux-image-"))
        .ok_or("the mirror knows no linux-image-amd64 (run apt-get update)")?
        .to_string();
    let dir = Path::new(CACHE).join(&package);
    let root = dir.join("root");
    if !dir.join("ready").exists() {
        std::fs::create_dir_all(CACHE).map_err(|e| e.to_string())?;
        let work = Path::new(CACHE).join(format!("{package}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&work))?;
        let deb = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .ok_or("apt-get download left no .deb")?;
        let unpacked = work.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        std::fs::remove_file(&deb).map_err(|e| e.to_string())?;
        merge_usr(&unpacked)?;
        let kver = only_kernel(&unpacked)?;
        run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&kver))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&work, &dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("ready"), &package).map_err(|e| e.to_string())?;
    }
    let kver = only_kernel(&root)?;
    Ok(Kernel { root, kver, dir })
}

/// Moves `lib/*` below `usr/lib` and links `lib -> usr/lib`, as a merged-usr image has it.
fn merge_usr(root: &Path) -> Result<(), String> {
    let lib = root.join("lib");
    let usr_lib = root.join("usr/lib");
    std::fs::create_dir_all(&usr_lib).map_err(|e| e.to_string())?;
    if lib.is_dir() {
        for entry in std::fs::read_dir(&lib).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            std::fs::rename(entry.path(), usr_lib.join(entry.file_name()))
                .map_err(|e| e.to_string())?;
        }
        std::fs::remove_dir(&lib).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink("usr/lib", &lib).map_err(|e| e.to_string())
}

fn only_kernel(root: &Path) -> Result<String, String> {
    let modules = root.join("usr/lib/modules");
    let mut kvers: Vec<String> = std::fs::read_dir(&modules)
        .map_err(|e| format!("{}: {e}", modules.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    kvers.sort();
    kvers
        .pop()
        .ok_or_else(|| format!("no kernel in {}", modules.display()))
}

/// A copy of the kernel's root with every module recompressed (`zstd` or `xz`), indexed by
/// depmod, kept beside the kernel.
fn compressed(kernel: &Kernel, kind: &str) -> Result<PathBuf, String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = kernel.dir.join(format!("root-{kind}"));
    let stamp = kernel.dir.join(format!("ready-{kind}"));
    if stamp.exists() {
        return Ok(root);
    }
    let work = kernel
        .dir
        .join(format!("root-{kind}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    run(Command::new("cp").arg("-a").arg(&kernel.root).arg(&work))?;
    let modules: Vec<PathBuf> = walkdir::WalkDir::new(work.join("usr/lib/modules"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| entry.into_path())
        .filter(|path| path.to_string_lossy().ends_with(".ko"))
        .collect();
    for chunk in modules.chunks(500) {
        let mut command = match kind {
            "zstd" => {
                let mut command = Command::new("zstd");
                command.args(["-q", "--rm", "-T0", "-3"]);
                command
            }
            _ => {
                // The kernel's own settings for xz-compressed modules.
                let mut command = Command::new("xz");
                command.args(["-q", "-T0", "-1", "--check=crc32", "--lzma2=dict=1MiB"]);
                command
            }
        };
        command.args(chunk);
        run(&mut command)?;
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(&work)
        .arg(&kernel.kver))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&work, &root).map_err(|e| e.to_string())?;
    std::fs::write(&stamp, kind).map_err(|e| e.to_string())?;
    Ok(root)
}

/// A stage whose output is a tree already in the store.
struct FixedTree {
    id: Digest,
}

impl Stage for FixedTree {
    fn name(&self) -> &str {
        "kernel"
    }
    fn kind(&self) -> &'static str {
        "fixed-tree"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::value("tree", self.id.to_hex())]
    }
    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }
    fn run(&self, _ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        Ok(self.id)
    }
}

/// Collects the stages' output lines.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Reporter for Lines {
    fn stage_started(&self, _stage: &str) {}
    fn stage_output(&self, _stage: &str, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn stage_finished(&self, _: &str, _: Outcome, _: &Digest, _: Duration) {}
}

/// A store in a temporary directory, with trees ingested into it.
struct Bench {
    dir: tempfile::TempDir,
    store: Store,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        Bench { dir, store }
    }

    fn ingest(&self, root: &Path) -> Digest {
        let manifest = self
            .store
            .ingest_dir(
                root,
                IngestOptions {
                    owner: Some((0, 0)),
                    ..IngestOptions::default()
                },
            )
            .unwrap();
        self.store.put_manifest(&manifest).unwrap()
    }

    /// Builds the tree `tree` through the modules stage; returns the stages that ran, the
    /// modules stage's output and its log.
    fn build(
        &self,
        tree: Digest,
        rules: &ModuleRules,
        host: Arc<dyn Host>,
        loaded_modules: &Path,
    ) -> (Vec<String>, Manifest, Vec<String>) {
        let mut stage = ModulesStage::new("kernel", rules.clone(), host);
        stage.loaded_modules = loaded_modules.to_owned();
        let graph = Graph::new(vec![Box::new(FixedTree { id: tree }), Box::new(stage)]).unwrap();
        let project = self.dir.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        let plan = plan(
            &graph,
            Some(&self.store),
            &project,
            kiln_engine::PlanOptions::build(false, false),
        )
        .unwrap();
        let options = BuildOptions {
            started: std::time::SystemTime::now(),
            recipe: "modules".to_string(),
            project_dir: project,
            force_rerun: false,
            jobs: 1,
        };
        let lines = Lines::default();
        let report = match execute(&graph, &plan, &self.store, &options, &lines) {
            Ok(report) => report,
            Err(err) => panic!("{:?}", miette::Report::new(err)),
        };
        let ran = report.ran().iter().map(|name| name.to_string()).collect();
        let output = report.stage("modules").unwrap().output;
        let mut lines = lines.0.into_inner().unwrap();
        // What resolution noted (a host without /proc/modules) is recorded with the run.
        lines.extend(
            plan.stages
                .iter()
                .flat_map(|stage| stage.notes.iter().map(|note| format!("note: {note}"))),
        );
        (ran, self.store.manifest(&output).unwrap(), lines)
    }

    fn checkout(&self, tree: &Manifest) -> PathBuf {
        let dest = self.dir.path().join("checkout");
        let _ = std::fs::remove_dir_all(&dest);
        self.store
            .checkout(
                tree,
                &dest,
                CheckoutOptions {
                    mode: CheckoutMode::Hardlink,
                    ..CheckoutOptions::default()
                },
            )
            .unwrap();
        dest
    }
}

/// The seed's rules (recipes/debian-rescue/mkosi.conf).
fn seed_rules() -> ModuleRules {
    ModuleRules {
        kernel_modules_exclude: vec![".*".into()],
        kernel_modules_include_host: true,
        kernel_modules_include: [
            "fs/", "hid/", "input/", "usb/", "dm-.*", "crypto/", "tpm/", "virtio",
        ]
        .map(String::from)
        .to_vec(),
        architecture: "x86-64".into(),
        ..ModuleRules::default()
    }
}

/// The module files below `usr/lib/modules/<kver>` of `tree`, relative to it, without the
/// compression suffix.
fn kept_modules(tree: &Manifest, kver: &str) -> BTreeSet<String> {
    let kdir = format!("usr/lib/modules/{kver}/");
    tree.entries()
        .filter(|entry| !entry.kind.is_dir())
        .filter_map(|entry| entry.path.strip_prefix(&kdir))
        .filter(|rel| kiln_stages::modules::is_module_file(rel))
        .map(strip_compression)
        .collect()
}

fn strip_compression(rel: &str) -> String {
    for suffix in [".zst", ".xz", ".gz"] {
        if let Some(stem) = rel.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    rel.to_string()
}

fn normalize(name: &str) -> String {
    name.replace('_', "-")
}

fn name_of(rel: &str) -> String {
    normalize(rel.rsplit('/').next().unwrap().split('.').next().unwrap())
}

/// `modinfo -F <field>` of each argument, one process per argument, a few at a time.
fn modinfo_fields(kernel: &Kernel, args: &[String], field: &str) -> HashMap<String, Vec<String>> {
    let results = Mutex::new(HashMap::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(arg) = args.get(i) else { break };
                    let out = run(Command::new("modinfo")
                        .arg("-b")
                        .arg(&kernel.root)
                        .arg("-k")
                        .arg(&kernel.kver)
                        .arg("-F")
                        .arg(field)
                        .arg(arg))
                    .unwrap_or_default();
                    let words: Vec<String> = match field {
                        "depends" => out
                            .lines()
                            .flat_map(|line| line.split(','))
                            .map(str::trim)
                            .filter(|word| !word.is_empty())
                            .map(str::to_string)
                            .collect(),
                        _ => out
                            .split_whitespace()
                            .filter(|word| !word.ends_with(':'))
                            .map(str::to_string)
                            .collect(),
                    };
                    results.lock().unwrap().insert(arg.clone(), words);
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// The seed's selection computed without kiln: its regexes by hand (`dm-.*` is "contains
/// `dm-`", the others are plain substrings), dependencies through kmod's modinfo.
fn reference_selection(kernel: &Kernel) -> BTreeSet<String> {
    let kdir = kernel.root.join("usr/lib/modules").join(&kernel.kver);
    let modules: Vec<String> = walkdir::WalkDir::new(&kdir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_type().is_dir())
        .map(|entry| {
            entry
                .path()
                .strip_prefix(&kdir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|rel| rel.ends_with(".ko"))
        .collect();
    let files: HashMap<String, String> = modules
        .iter()
        .map(|rel| (name_of(rel), rel.clone()))
        .collect();
    let builtin: Vec<String> = std::fs::read_to_string(kdir.join("modules.builtin"))
        .unwrap()
        .lines()
        .map(name_of)
        .collect();
    let includes = [
        "fs/", "hid/", "input/", "usb/", "dm-", "crypto/", "tpm/", "virtio",
    ];
    let selected = modules.iter().filter(|rel| {
        let legacy = rel.split_once('/').map_or(".", |(_, rest)| rest);
        includes.iter().any(|needle| legacy.contains(needle))
    });

    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(kdir.join("modules.alias"))
        .unwrap_or_default()
        .lines()
    {
        if let ["alias", alias, module] = line.split_whitespace().collect::<Vec<_>>()[..] {
            aliases
                .entry(normalize(alias))
                .or_default()
                .push(normalize(module));
        }
    }
    let builtin_soft = modinfo_fields(kernel, &builtin, "softdep");
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = selected.map(|rel| name_of(rel)).collect();
    for word in builtin_soft.values().flatten().map(|name| normalize(name)) {
        match aliases.get(&word) {
            Some(modules) if !files.contains_key(&word) => todo.extend(modules.clone()),
            _ => todo.push(word),
        }
    }
    while !todo.is_empty() {
        let batch: Vec<String> = todo
            .drain(..)
            .filter(|name| files.contains_key(name) && !kept.contains(name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        kept.extend(batch.iter().cloned());
        let paths: Vec<String> = batch
            .iter()
            .map(|name| kdir.join(&files[name]).to_string_lossy().into_owned())
            .collect();
        let depends = modinfo_fields(kernel, &paths, "depends");
        let softdeps = modinfo_fields(kernel, &paths, "softdep");
        for words in depends.values() {
            todo.extend(words.iter().map(|word| normalize(word)));
        }
        // A soft dependency names a module or one of kmod's aliases (as modprobe reads them).
        for word in softdeps.values().flatten().map(|word| normalize(word)) {
            match aliases.get(&word) {
                Some(modules) if !files.contains_key(&word) => todo.extend(modules.clone()),
                _ => todo.push(word),
            }
        }
    }
    kept.iter().map(|name| files[name].clone()).collect()
}

#[test]
fn the_seed_rules_keep_what_modinfo_says_on_the_real_kernel() {
    let kernel = match kernel() {
        Ok(kernel) => kernel,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    let bench = Bench::new();
    let tree = bench.ingest(&kernel.root);
    let host = Arc::new(RecordingHost::new());
    let no_proc_modules = bench.dir.path().join("no-proc-modules");
    let (ran, output, lines) = bench.build(tree, &seed_rules(), host.clone(), &no_proc_modules);
    assert_eq!(ran, vec!["kernel", "modules"]);
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("note:") && line.contains("no-proc-modules")),
        "{lines:#?}"
    );

    let kept = kept_modules(&output, &kernel.kver);
    let expected = reference_selection(kernel);
    let extra: Vec<_> = kept.difference(&expected).collect();
    let lacking: Vec<_> = expected.difference(&kept).collect();
    assert!(
        extra.is_empty() && lacking.is_empty(),
        "kept but not expected: {extra:?}\nexpected but not kept: {lacking:?}"
    );
    let summary = format!("{}: kept {} of ", kernel.kver, kept.len());
    assert!(
        lines.iter().any(|line| line.starts_with(&summary)),
        "{lines:#?}"
    );

    // depmod ran once, through the host, and its index lists exactly the kept modules, each
    // with dependencies that are kept.
    let tools = host.tools_run();
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert!(
        tools[0].shown().starts_with("depmod -b "),
        "{}",
        tools[0].shown()
    );
    let kdir = format!("usr/lib/modules/{}", kernel.kver);
    let dep = output.get(&format!("{kdir}/modules.dep")).unwrap();
    let dep = String::from_utf8(bench.store.read_blob(dep.blob().unwrap()).unwrap()).unwrap();
    let mut indexed = BTreeSet::new();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        indexed.insert(module.to_string());
        for needed in deps.split_whitespace() {
            assert!(
                kept.contains(needed),
                "{module} needs {needed}, which is gone"
            );
        }
    }
    assert_eq!(indexed, kept);

    // modprobe resolves a module of the pruned tree.
    let root = bench.checkout(&output);
    let resolved = run(Command::new("modprobe")
        .arg("--dry-run")
        .arg("--show-depends")
        .arg("-d")
        .arg(&root)
        .arg("-S")
        .arg(&kernel.kver)
        .arg("virtio_blk"))
    .unwrap();
    assert!(resolved.contains("virtio_blk.ko"), "{resolved}");
    run(Command::new("modprobe")
        .arg("--dry-run")
        .arg("-d")
        .arg(&root)
        .arg("-S")
        .arg(&kernel.kver)
        .arg("virtio_blk"))
    .unwrap();

    // The same rules on the same tree give the same output, bit for bit.
    let bench2 = Bench::new();
    let tree2 = bench2.ingest(&kernel.root);
    let (_, again, _) = bench2.build(
        tree2,
        &seed_rules(),
        Arc::new(RealHost::new()),
        &no_proc_modules,
    );
    assert_eq!(again.id(), output.id());
}

#[test]
fn compressed_modules_give_the_same_selection() {
    let kernel = match kernel() {
        Ok(kernel) => kernel,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    if !require(missing_tools(&[("zstd", "zstd"), ("xz", "xz-utils")])) {
        return;
    }
    let bench = Bench::new();
    let none = bench.dir.path().join("no-proc-modules");
    let host: Arc<dyn Host> = Arc::new(RealHost::new());
    let (_, plain, _) = bench.build(
        bench.ingest(&kernel.root),
        &seed_rules(),
        host.clone(),
        &none,
    );
    let plain = kept_modules(&plain, &kernel.kver);
    for kind in ["zstd", "xz"] {
        let root = compressed(kernel, kind).unwrap();
        let (_, output, _) = bench.build(bench.ingest(&root), &seed_rules(), host.clone(), &none);
        let suffix = if kind == "zstd" { ".ko.zst" } else { ".ko.xz" };
        let kdir = format!("usr/lib/modules/{}/", kernel.kver);
        assert!(
            output
                .entries()
                .filter_map(|entry| entry.path.strip_prefix(&kdir))
                .filter(|rel| kiln_stages::modules::is_module_file(rel))
                .all(|rel| rel.ends_with(suffix))
        );
        assert_eq!(kept_modules(&output, &kernel.kver), plain, "{kind}");
        let dep = output.get(&format!("{kdir}modules.dep")).unwrap();
        let dep = String::from_utf8(bench.store.read_blob(dep.blob().unwrap()).unwrap()).unwrap();
        assert_eq!(dep.lines().count(), plain.len(), "{kind}: modules.dep");
    }
}

#[test]
fn every_compression_reads_the_same_modinfo() {
    let kernel = match kernel() {
        Ok(kernel) => kernel,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    if !require(missing_tools(&[
        ("zstd", "zstd"),
        ("xz", "xz-utils"),
        ("gzip", "gzip"),
    ])) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kdir = kernel
        .root
        .join("usr/lib/modules")
        .join(&kernel.kver)
        .join("kernel/fs");
    let samples: Vec<PathBuf> = walkdir::WalkDir::new(&kdir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|entry| entry.into_path())
        .filter(|path| path.to_string_lossy().ends_with(".ko"))
        .take(25)
        .collect();
    assert!(!samples.is_empty());
    let mut nonempty = 0;
    for (index, sample) in samples.iter().enumerate() {
        let plain = read_module_file(sample).unwrap();
        if plain != ModInfo::default() {
            nonempty += 1;
        }
        for (tool, suffix) in [("zstd", "zst"), ("xz", "xz"), ("gzip", "gz")] {
            let copy = dir.path().join(format!("{index}.ko.{suffix}"));
            let out = Command::new(tool).arg("-c").arg(sample).output().unwrap();
            std::fs::write(&copy, out.stdout).unwrap();
            assert_eq!(
                read_module_file(&copy).unwrap(),
                plain,
                "{} as {suffix}",
                sample.display()
            );
        }
    }
    assert!(nonempty > 0);
}

/// Builds a tiny relocatable ELF module whose `.modinfo` holds `records`.
fn tiny_module(dir: &Path, name: &str, records: &[&str]) -> Result<PathBuf, String> {
    let empty = dir.join("empty.o");
    if !empty.exists() {
        std::fs::write(dir.join("empty.c"), "int kiln_fixture;\n").map_err(|e| e.to_string())?;
        run(Command::new("gcc")
            .arg("-c")
            .arg(dir.join("empty.c"))
            .arg("-o")
            .arg(&empty))?;
    }
    let info = dir.join(format!("{name}.modinfo"));
    let mut bytes = Vec::new();
    for record in records {
        bytes.extend_from_slice(record.as_bytes());
        bytes.push(0);
    }
    bytes.extend_from_slice(format!("name={name}\0").as_bytes());
    std::fs::write(&info, bytes).map_err(|e| e.to_string())?;
    let module = dir.join(format!("{name}.ko"));
    run(Command::new("objcopy")
        .arg(format!("--add-section=.modinfo={}", info.display()))
        .arg("--set-section-flags=.modinfo=alloc,readonly")
        .arg(&empty)
        .arg(&module))?;
    Ok(module)
}

const FIXTURE_KVER: &str = "6.0.0-kiln-fixture";

/// A kernel of three tiny modules and a firmware directory:
/// `drivers/net/fwuser` needs `vendor/fw-a.bin` (present compressed twice), `vendor/fw-b-*`
/// and, through `helper`, `helper.fw` (a symlink); `sound/unused` needs `unused.bin`.
fn firmware_fixture() -> Result<(tempfile::TempDir, PathBuf), String> {
    if let Some(missing) =
        missing_tools(&[("gcc", "gcc"), ("objcopy", "binutils"), ("depmod", "kmod")])
    {
        return Err(missing);
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    let kdir = root.join("usr/lib/modules").join(FIXTURE_KVER);
    let fw = root.join("usr/lib/firmware");
    let modules: [(&str, &str, &[&str]); 3] = [
        (
            "kernel/drivers/net",
            "fwuser",
            &[
                "firmware=vendor/fw-a.bin",
                "firmware=vendor/fw-b-*",
                "depends=helper",
            ],
        ),
        (
            "kernel/drivers/net/helpers",
            "helper",
            &["firmware=helper.fw"],
        ),
        ("kernel/sound", "unused", &["firmware=unused.bin"]),
    ];
    let mut order = String::new();
    for (subdir, name, records) in modules {
        let module = tiny_module(&build, name, records)?;
        std::fs::create_dir_all(kdir.join(subdir)).map_err(|e| e.to_string())?;
        std::fs::copy(&module, kdir.join(subdir).join(format!("{name}.ko")))
            .map_err(|e| e.to_string())?;
        order.push_str(&format!("{subdir}/{name}.ko\n"));
    }
    std::fs::write(kdir.join("modules.order"), order).map_err(|e| e.to_string())?;
    std::fs::write(kdir.join("modules.builtin"), "").map_err(|e| e.to_string())?;
    for file in [
        "vendor/fw-a.bin.zst",
        "vendor/fw-a.bin.xz",
        "vendor/fw-b-1.bin",
        "vendor/fw-b-2.bin",
        "vendor/fw-c.bin",
        "real/helper-v2.fw",
        "real/other.fw",
        "unused.bin",
        "intel-ucode/06-55-04",
        "amd-ucode/microcode_amd.bin",
        "lonely/dir/file.bin",
    ] {
        let path = fw.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink("real/helper-v2.fw", fw.join("helper.fw"))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).map_err(|e| e.to_string())?;
    run(Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(FIXTURE_KVER))?;
    Ok((dir, root))
}

fn firmware_left(tree: &Manifest) -> BTreeSet<String> {
    tree.subtree("usr/lib/firmware")
        .filter(|entry| !entry.kind.is_dir())
        .map(|entry| entry.path["usr/lib/firmware/".len()..].to_string())
        .collect()
}

fn net_rules() -> ModuleRules {
    ModuleRules {
        kernel_modules_exclude: vec![".*".into()],
        kernel_modules_include: vec!["drivers/net/".into()],
        ..ModuleRules::default()
    }
}

#[test]
fn a_module_that_names_firmware_keeps_exactly_those_files() {
    let (_dir, root) = match firmware_fixture() {
        Ok(fixture) => fixture,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    let bench = Bench::new();
    let tree = bench.ingest(&root);
    let none = bench.dir.path().join("none");
    let (_, output, lines) = bench.build(tree, &net_rules(), Arc::new(RealHost::new()), &none);
    assert_eq!(
        kept_modules(&output, FIXTURE_KVER),
        BTreeSet::from([
            "kernel/drivers/net/fwuser.ko".to_string(),
            "kernel/drivers/net/helpers/helper.ko".to_string(),
        ])
    );
    let expected: BTreeSet<String> = [
        "vendor/fw-a.bin.zst",
        "vendor/fw-a.bin.xz",
        "vendor/fw-b-1.bin",
        "vendor/fw-b-2.bin",
        "helper.fw",
        "real/helper-v2.fw",
        "intel-ucode/06-55-04",
        "amd-ucode/microcode_amd.bin",
    ]
    .map(String::from)
    .into();
    assert_eq!(firmware_left(&output), expected);
    // Emptied firmware directories go; emptied module directories stay, as mkosi leaves them.
    assert!(output.get("usr/lib/firmware/lonely").is_none());
    assert!(
        output
            .get(&format!("usr/lib/modules/{FIXTURE_KVER}/kernel/sound"))
            .is_some()
    );
    assert!(
        lines.contains(&format!(
            "{FIXTURE_KVER}: kept 2 of 3 modules, 8 firmware files"
        )),
        "{lines:#?}"
    );
    let kdir = format!("usr/lib/modules/{FIXTURE_KVER}");
    let dep = output.get(&format!("{kdir}/modules.dep")).unwrap();
    let dep = String::from_utf8(bench.store.read_blob(dep.blob().unwrap()).unwrap()).unwrap();
    assert!(!dep.contains("unused"), "{dep}");
    assert!(dep.contains("kernel/drivers/net/fwuser.ko:"), "{dep}");

    // FirmwareFiles= can drop needed firmware and add more.
    let rules = ModuleRules {
        firmware_files: vec!["-vendor/fw-b-*".into(), "lonely/".into()],
        ..net_rules()
    };
    let (_, output, _) = bench.build(tree, &rules, Arc::new(RealHost::new()), &none);
    let left = firmware_left(&output);
    assert!(left.contains("lonely/dir/file.bin"));
    assert!(!left.contains("vendor/fw-b-1.bin"));
    assert!(left.contains("vendor/fw-a.bin.zst"));
}

#[test]
fn changing_one_rule_reruns_the_modules_stage_only_and_explain_counts_modules() {
    let (_dir, root) = match firmware_fixture() {
        Ok(fixture) => fixture,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    let bench = Bench::new();
    let tree = bench.ingest(&root);
    let none = bench.dir.path().join("none");
    let host: Arc<dyn Host> = Arc::new(RealHost::new());
    let old_rules = net_rules();
    let (ran, old_output, _) = bench.build(tree, &old_rules, host.clone(), &none);
    assert_eq!(ran, vec!["kernel", "modules"]);
    let (ran, _, _) = bench.build(tree, &old_rules, host.clone(), &none);
    assert!(ran.is_empty(), "{ran:?}");

    let mut new_rules = old_rules.clone();
    new_rules.kernel_modules_include.push("sound/".into());
    let (ran, new_output, _) = bench.build(tree, &new_rules, host.clone(), &none);
    assert_eq!(ran, vec!["modules"]);
    assert!(firmware_left(&new_output).contains("unused.bin"));
    let values = |rules: &ModuleRules| -> BTreeMap<String, String> {
        Setting::ALL
            .iter()
            .map(|setting| (setting.name().to_string(), rules.value(*setting)))
            .collect()
    };
    assert_eq!(
        explain_change(
            &values(&old_rules),
            &values(&new_rules),
            &old_output,
            &new_output
        )
        .as_deref(),
        Some("KernelModulesInclude= +sound/: +1 modules, -0")
    );

    // The host's loaded modules are an input when the rules use them.
    let proc_modules = bench.dir.path().join("modules");
    std::fs::write(&proc_modules, "unused 16384 0 - Live 0x0\n").unwrap();
    let host_rules = ModuleRules {
        kernel_modules_include_host: true,
        ..old_rules.clone()
    };
    let (ran, output, _) = bench.build(tree, &host_rules, host.clone(), &proc_modules);
    assert_eq!(ran, vec!["modules"]);
    assert!(kept_modules(&output, FIXTURE_KVER).contains("kernel/sound/unused.ko"));
    std::fs::write(&proc_modules, "helper 16384 0 - Live 0x0\n").unwrap();
    let (ran, output, _) = bench.build(tree, &host_rules, host.clone(), &proc_modules);
    assert_eq!(ran, vec!["modules"]);
    assert!(!kept_modules(&output, FIXTURE_KVER).contains("kernel/sound/unused.ko"));
}

#[test]
fn a_rule_that_does_not_compile_fails_the_stage_naming_it() {
    let (_dir, root) = match firmware_fixture() {
        Ok(fixture) => fixture,
        Err(reason) => {
            require(Some(reason));
            return;
        }
    };
    let bench = Bench::new();
    let tree = bench.ingest(&root);
    let rules = ModuleRules {
        kernel_modules_include: vec!["(?<=drivers/)net".into()],
        ..net_rules()
    };
    let mut stage = ModulesStage::new("kernel", rules, Arc::new(RealHost::new()));
    stage.loaded_modules = bench.dir.path().join("none");
    let graph = Graph::new(vec![Box::new(FixedTree { id: tree }), Box::new(stage)]).unwrap();
    let project = bench.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let plan = plan(
        &graph,
        Some(&bench.store),
        &project,
        kiln_engine::PlanOptions::build(false, false),
    )
    .unwrap();
    let options = BuildOptions {
        started: std::time::SystemTime::now(),
        recipe: "modules".to_string(),
        project_dir: project,
        force_rerun: false,
        jobs: 1,
    };
    let err = execute(&graph, &plan, &bench.store, &options, &Lines::default()).unwrap_err();
    let text = format!("{:?}", miette::Report::new(err));
    assert!(
        text.contains("(?<=drivers/)net") && text.contains("KernelModulesInclude"),
        "{text}"
    );
}
