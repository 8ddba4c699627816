//! Benchmark of kernel module pruning: kiln's native, parallel `.modinfo` reading against the
//! same selection made by calling kmod's `modinfo`, as mkosi does.
//!
//! ```text
//! cargo run --release -p kiln-stages --example modules_bench -- KERNEL_ROOT [RUNS]
//! ```
//!
//! `KERNEL_ROOT` is an image-like root holding `usr/lib/modules/<kver>` with a `modules.dep`
//! (the modules tests leave one in `/var/tmp/kiln-test-kernel/<package>/root`). The rules are
//! the seed's (recipes/debian-rescue: `KernelModulesExclude=.*`, eight includes, and a host
//! without loaded modules). Printed, as medians of RUNS runs:
//!
//! - kiln: selecting the modules and firmware on the manifest (modules read from the store);
//! - kiln + depmod: the same followed by depmod on a checkout of the kept modules;
//! - modinfo per module: the selection with one `modinfo` process per module reached;
//! - modinfo per round: mkosi's own batching, one `modinfo` process per dependency level;
//!
//! then the ratios and the module tree's size before and after.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_cache::{EntryKind, IngestOptions, Manifest, Store};
use kiln_stages::host::RealHost;
use kiln_stages::modules::rules::{module_name_of_path, normalize_module_name};
use kiln_stages::modules::{ModuleRules, depmod, inventory, kernels, prune_tree};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: modules_bench KERNEL_ROOT [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5).max(1);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&scratch.path().join("store")).expect("store");

    let start = Instant::now();
    let manifest = store
        .ingest_dir(
            &root,
            IngestOptions {
                owner: Some((0, 0)),
                ..IngestOptions::default()
            },
        )
        .expect("ingest the kernel root");
    println!(
        "ingest of {}: {:.2?} (once, not measured below)",
        root.display(),
        start.elapsed()
    );
    let kvers = kernels(&manifest);
    let Some(kver) = kvers.first().cloned() else {
        eprintln!("no kernel below {}/usr/lib/modules", root.display());
        std::process::exit(1);
    };
    let rules = ModuleRules {
        kernel_modules_exclude: vec![".*".into()],
        kernel_modules_include: [
            "fs/", "hid/", "input/", "usb/", "dm-.*", "crypto/", "tpm/", "virtio",
        ]
        .map(String::from)
        .to_vec(),
        ..ModuleRules::default()
    };
    let compiled = rules.compile(&[]).expect("the seed's rules compile");
    let depmod_tool = kiln_stages::host::find_tool("depmod").expect("depmod (kmod)");
    let host = RealHost::new();

    let mut kiln_times = Vec::new();
    let mut kiln_depmod_times = Vec::new();
    let mut pruned = Manifest::new();
    let mut kiln_kept = BTreeSet::new();
    for run in 0..runs {
        let mut tree = manifest.clone();
        let start = Instant::now();
        let mut log = Vec::new();
        let reports = prune_tree(&store, &mut tree, &compiled, &mut |line| {
            log.push(line.to_string())
        })
        .expect("prune")
        .expect("rules are set");
        kiln_times.push(start.elapsed());
        if run == 0 {
            for line in &log {
                println!("  log: {line}");
            }
        }
        let dir = scratch.path().join(format!("depmod-{run}"));
        depmod::reindex(
            &store,
            &mut tree,
            &kver,
            &depmod_tool,
            &host,
            &dir,
            &mut |_| {},
        )
        .expect("depmod");
        kiln_depmod_times.push(start.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
        kiln_kept = reports[0].kept.clone();
        pruned = tree;
    }

    let inv = inventory(&store, &manifest, &kver).expect("inventory");
    let kdir = root.join("usr/lib/modules").join(&kver);
    let passed: Vec<String> = compiled
        .filter_modules(&inv.modules)
        .into_iter()
        .map(|i| inv.modules[i].clone())
        .collect();
    let files: HashMap<String, String> = inv
        .modules
        .iter()
        .map(|rel| (module_name_of_path(rel), rel.clone()))
        .collect();
    let builtin: Vec<String> = inv.builtin.iter().cloned().collect();

    let mut per_module_times = Vec::new();
    let mut per_round_times = Vec::new();
    let mut spawned = (0, 0);
    for _ in 0..runs {
        let start = Instant::now();
        let (kept, processes) =
            shell_selection(&root, &kver, &kdir, &files, &builtin, &passed, false, true);
        per_module_times.push(start.elapsed());
        spawned.0 = processes;
        assert_eq!(kept, kiln_kept, "modinfo per module disagrees with kiln");
        let start = Instant::now();
        let (kept, processes) =
            shell_selection(&root, &kver, &kdir, &files, &builtin, &passed, true, true);
        per_round_times.push(start.elapsed());
        spawned.1 = processes;
        assert_eq!(kept, kiln_kept, "modinfo per round disagrees with kiln");
    }

    // mkosi splits `modinfo --null`'s `softdep=pre: x` at its first `:`, so it drops every
    // soft dependency: what it would keep.
    let (without_softdeps, _) =
        shell_selection(&root, &kver, &kdir, &files, &builtin, &passed, true, false);

    let kiln = median(&mut kiln_times);
    let kiln_depmod = median(&mut kiln_depmod_times);
    let per_module = median(&mut per_module_times);
    let per_round = median(&mut per_round_times);
    println!("kernel {kver}, seed rules, medians of {runs} runs:");
    println!("  kiln select + prune (manifest)    {:>10.1?}", kiln);
    println!("  kiln select + prune + depmod      {:>10.1?}", kiln_depmod);
    println!(
        "  modinfo once per module           {:>10.1?}  ({} processes)",
        per_module, spawned.0
    );
    println!(
        "  modinfo once per round (mkosi)    {:>10.1?}  ({} processes)",
        per_round, spawned.1
    );
    println!(
        "  ratio per module / kiln           {:>10.1}x",
        per_module.as_secs_f64() / kiln.as_secs_f64()
    );
    println!(
        "  ratio per round / kiln            {:>10.1}x",
        per_round.as_secs_f64() / kiln.as_secs_f64()
    );
    println!(
        "  kept: {} modules ({} without soft dependencies, as mkosi's parsing of modinfo keeps)",
        kiln_kept.len(),
        without_softdeps.len()
    );
    let (before_count, before_bytes) = module_tree_size(&manifest, &kver);
    let (after_count, after_bytes) = module_tree_size(&pruned, &kver);
    println!(
        "  module tree before: {before_count} modules, {:.1} MB; after: {after_count} modules, {:.1} MB \
         (all of usr/lib/modules/{kver}, indexes included)",
        before_bytes as f64 / 1e6,
        after_bytes as f64 / 1e6,
    );
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// How many modules and how many bytes of files the kernel's directory holds.
fn module_tree_size(tree: &Manifest, kver: &str) -> (usize, u64) {
    let kdir = format!("usr/lib/modules/{kver}");
    let mut count = 0;
    let mut bytes = 0;
    for entry in tree.subtree(&kdir) {
        if let EntryKind::File { size, .. } = entry.kind {
            bytes += size;
            if kiln_stages::modules::is_module_file(&entry.path) {
                count += 1;
            }
        }
    }
    (count, bytes)
}

/// The selection done by shelling out to `modinfo`: one process per module, or one per round
/// with every name of the round (mkosi's `modinfo --null --modname`). Returns the kept module
/// files and how many processes ran.
#[allow(clippy::too_many_arguments)]
fn shell_selection(
    root: &Path,
    kver: &str,
    kdir: &Path,
    files: &HashMap<String, String>,
    builtin: &[String],
    passed: &[String],
    batched: bool,
    follow_softdeps: bool,
) -> (BTreeSet<String>, usize) {
    let builtin_set: BTreeSet<&String> = builtin.iter().collect();
    let mut visited: BTreeSet<String> = BTreeSet::new();
    let mut frontier: BTreeSet<String> = builtin.iter().cloned().collect();
    frontier.extend(passed.iter().map(|rel| module_name_of_path(rel)));
    let mut processes = 0;
    while !frontier.is_empty() {
        visited.extend(frontier.iter().cloned());
        let mut outputs = Vec::new();
        if batched {
            let mut command = modinfo(root, kver);
            command.arg("--modname").args(frontier.iter());
            outputs.push(command.output().expect("modinfo").stdout);
            processes += 1;
        } else {
            for name in &frontier {
                let mut command = modinfo(root, kver);
                match files.get(name) {
                    Some(rel) => command.arg(kdir.join(rel)),
                    None => command.arg("--modname").arg(name),
                };
                outputs.push(command.output().expect("modinfo").stdout);
                processes += 1;
            }
        }
        let mut next = BTreeSet::new();
        for output in outputs {
            for record in output.split(|&b| b == 0) {
                let record = String::from_utf8_lossy(record);
                let Some((key, value)) = record.split_once('=') else {
                    continue;
                };
                let names: Vec<String> = match key.trim() {
                    "depends" => value
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(normalize_module_name)
                        .collect(),
                    "softdep" if follow_softdeps => value
                        .split_whitespace()
                        .filter(|w| !w.ends_with(':'))
                        .map(normalize_module_name)
                        .collect(),
                    _ => continue,
                };
                for name in names {
                    if files.contains_key(&name)
                        && !visited.contains(&name)
                        && !builtin_set.contains(&name)
                    {
                        next.insert(name);
                    }
                }
            }
        }
        frontier = next;
    }
    let kept = visited
        .iter()
        .filter_map(|name| files.get(name))
        .cloned()
        .collect();
    (kept, processes)
}

fn modinfo(root: &Path, kver: &str) -> Command {
    let mut command = Command::new("modinfo");
    command
        .arg("--null")
        .arg("-b")
        .arg(root)
        .arg("-k")
        .arg(kver);
    command
}
