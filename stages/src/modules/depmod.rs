//! Re-indexing one kernel's kept modules with kmod's `depmod`, without checking out the tree.
//!
//! Only what depmod reads is checked out into scratch: the kernel's module files (hard links to
//! the store's objects, read-only), `modules.order`, `modules.builtin`,
//! `modules.builtin.modinfo`, and the image's own `depmod.d` configuration (passed with `-C`,
//! so the host's never applies). A `lib -> usr/lib` link lets a kmod that looks in
//! `/lib/modules` (Debian's) find the kernel as one that looks in `/usr/lib/modules` does.
//! `depmod -b <scratch> <kver>` then writes its `modules.*` indexes, which replace those of
//! the manifest; nothing else of the tree changes.

use std::path::Path;

use kiln_cache::{CheckoutMode, CheckoutOptions, Entry, EntryKind, Manifest, PutMode, Store};

use super::error::ModulesError;
use crate::host::{Host, ToolInvocation};

/// The files depmod reads besides the modules; they are inputs, not outputs.
const DEPMOD_INPUTS: [&str; 3] = [
    "modules.order",
    "modules.builtin",
    "modules.builtin.modinfo",
];

/// The image's depmod configuration directories, in kmod's order of precedence.
const CONFIG_DIRS: [&str; 4] = [
    "etc/depmod.d",
    "run/depmod.d",
    "usr/local/lib/depmod.d",
    "usr/lib/depmod.d",
];

/// Mode and owner of entries checked out for depmod: those of a plain store object, so the
/// checkout links the objects themselves and makes no metadata variant. depmod reads them and
/// writes its indexes under new names (`<index>.tmp`, renamed), never into an existing file.
use kiln_cache::OBJECT_MODE;

/// Runs depmod for `kver` on the kept modules of `tree` and puts the indexes it writes into
/// `tree`. `depmod` is the program to run; `scratch` an empty directory of this run; `log`
/// gets depmod's output.
pub fn reindex(
    store: &Store,
    tree: &mut Manifest,
    kver: &str,
    depmod: &Path,
    host: &dyn Host,
    scratch: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), ModulesError> {
    let kdir = format!("usr/lib/modules/{kver}");
    let root = scratch.join("root");
    let (view, config_dirs) = depmod_view(tree, &kdir)?;
    store.checkout(
        &view,
        &root,
        CheckoutOptions {
            mode: CheckoutMode::Hardlink,
            mtime: None,
            ignore_owner: true,
        },
    )?;
    let mut invocation = ToolInvocation::new(depmod).arg("-b").arg(path_text(&root));
    if config_dirs.is_empty() {
        // Without `-C`, depmod would read the host's configuration.
        let empty = scratch.join("no-depmod.d");
        std::fs::create_dir_all(&empty).map_err(|source| ModulesError::Io {
            action: "create",
            path: empty.clone(),
            source,
        })?;
        invocation = invocation.arg("-C").arg(path_text(&empty));
    }
    for dir in &config_dirs {
        invocation = invocation.arg("-C").arg(path_text(&root.join(dir)));
    }
    invocation = invocation.arg(kver);
    let outcome = host.run_tool(&invocation, log)?;
    if !outcome.success() {
        return Err(ModulesError::Depmod {
            kver: kver.to_string(),
            command: format!("depmod -b <tree> {kver}"),
            code: outcome.code,
            output: outcome.output_tail.join("\n"),
        });
    }
    collect_indexes(store, tree, &kdir, &root.join(&kdir))
}

/// The part of `tree` depmod needs, and the configuration directories it holds.
fn depmod_view(tree: &Manifest, kdir: &str) -> Result<(Manifest, Vec<String>), ModulesError> {
    let mut entries: Vec<Entry> = Vec::new();
    let dir = |path: &str| Entry::new(path, EntryKind::Dir, 0o755);
    let mut ancestors = std::collections::BTreeSet::new();
    let mut add_ancestors = |path: &str, entries: &mut Vec<Entry>| {
        let mut prefix = String::new();
        for part in path.split('/') {
            if ancestors.insert(prefix.clone()) {
                entries.push(dir(&prefix));
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
    };
    add_ancestors(kdir, &mut entries);
    let prefix = format!("{kdir}/");
    for entry in tree.subtree(kdir) {
        let name = entry.path.rsplit('/').next().unwrap_or_default();
        let wanted = match &entry.kind {
            EntryKind::Dir => true,
            EntryKind::File { .. } => {
                super::is_module_file(name)
                    || (entry.path.strip_prefix(&prefix) == Some(name)
                        && DEPMOD_INPUTS.contains(&name))
            }
            EntryKind::Symlink { .. } => super::is_module_file(name),
            _ => false,
        };
        if wanted {
            entries.push(plain(entry));
        }
    }
    let mut config_dirs = Vec::new();
    for config in CONFIG_DIRS {
        if !tree.get(config).is_some_and(|entry| entry.kind.is_dir()) {
            continue;
        }
        add_ancestors(config, &mut entries);
        for entry in tree.subtree(config) {
            if matches!(
                entry.kind,
                EntryKind::Dir | EntryKind::File { .. } | EntryKind::Symlink { .. }
            ) {
                entries.push(plain(entry));
            }
        }
        config_dirs.push(config.to_string());
    }
    if tree.get("usr/lib/modules").is_some() {
        entries.push(Entry::new(
            "lib",
            EntryKind::Symlink {
                target: "usr/lib".to_string(),
            },
            0o777,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    entries.retain(|entry| seen.insert(entry.path.clone()));
    Ok((Manifest::from_entries(entries)?, config_dirs))
}

/// `entry` with the metadata of a plain store object (files) or a plain directory.
fn plain(entry: &Entry) -> Entry {
    let mode = match entry.kind {
        EntryKind::Dir => 0o755,
        EntryKind::Symlink { .. } => 0o777,
        _ => OBJECT_MODE,
    };
    Entry::new(entry.path.clone(), entry.kind.clone(), mode)
}

/// Puts every `modules.*` index depmod wrote in `written` into `tree` at `kdir`.
fn collect_indexes(
    store: &Store,
    tree: &mut Manifest,
    kdir: &str,
    written: &Path,
) -> Result<(), ModulesError> {
    let read_dir = std::fs::read_dir(written).map_err(|source| ModulesError::Io {
        action: "read",
        path: written.to_owned(),
        source,
    })?;
    let mut names = Vec::new();
    for item in read_dir {
        let item = item.map_err(|source| ModulesError::Io {
            action: "read",
            path: written.to_owned(),
            source,
        })?;
        let name = item.file_name().to_string_lossy().into_owned();
        let is_file = item.file_type().is_ok_and(|kind| kind.is_file());
        if is_file && name.starts_with("modules.") && !DEPMOD_INPUTS.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let source = written.join(&name);
        let size = std::fs::metadata(&source)
            .map_err(|err| ModulesError::Io {
                action: "read",
                path: source.clone(),
                source: err,
            })?
            .len();
        let blob = store.put_file(&source, PutMode::Move)?;
        let path = format!("{kdir}/{name}");
        let mut entry = match tree.get(&path) {
            Some(old) if matches!(old.kind, EntryKind::File { .. }) => old.clone(),
            _ => Entry::new(path.clone(), EntryKind::Dir, 0o644),
        };
        entry.kind = EntryKind::File { blob, size };
        entry.hardlink = None;
        tree.insert_or_replace(entry)?;
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
