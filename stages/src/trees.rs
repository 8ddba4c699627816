//! Tree stages: base trees, skeleton trees and extra trees, laid over the tree before them.
//!
//! mkosi copies each tree's contents over the image (`SOURCE[:TARGET]`), directories merged,
//! files and symlinks replaced, a directory tree owned by root. Here that is done on manifests
//! alone: the trees were ingested into the store as inputs, and laying one over another is a
//! merge of entries, so nothing is written outside the store and a tree can never reach outside
//! the image. A path whose parent is a symlink inside the image (`lib -> usr/lib`) is resolved
//! through it, as a copy onto a merged-/usr system would land; a symlink leading out of the tree,
//! or a path with `..`, is an error.

use std::path::{Component, Path, PathBuf};

use kiln_cache::{Digest, Entry, EntryKind, Manifest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

use crate::error::TreeError;

/// One tree laid over the image: the input that holds it and where it goes.
#[derive(Debug, Clone)]
pub struct TreeLayer {
    /// The project path (`mkosi.extra`), also the input's name.
    pub source: PathBuf,
    /// Where in the image it goes; `/` when unset.
    pub target: Option<PathBuf>,
    /// Entries owned by root:root (trees copied from a directory), or as on disk (base trees).
    pub owned_by_root: bool,
}

/// Lays trees over the output of the stage before (or over nothing, for base trees).
pub struct TreesStage {
    pub name: String,
    /// The stage whose output the trees go over; `None` starts from an empty tree.
    pub base: Option<String>,
    pub layers: Vec<TreeLayer>,
}

impl Stage for TreesStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "trees"
    }

    fn version(&self) -> u32 {
        2
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = Vec::new();
        if let Some(base) = &self.base {
            inputs.push(Input::stage("base", base));
        }
        for (position, layer) in self.layers.iter().enumerate() {
            inputs.push(Input::tree(
                layer.source.display().to_string(),
                &layer.source,
                layer.owned_by_root,
            ));
            inputs.push(Input::value(
                format!("target {position}"),
                layer
                    .target
                    .as_deref()
                    .unwrap_or(Path::new("/"))
                    .display()
                    .to_string(),
            ));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = match &self.base {
            Some(_) => ctx.store.manifest(&ctx.input("base")?)?,
            None => empty_tree(),
        };
        for layer in &self.layers {
            let overlay = ctx
                .store
                .manifest(&ctx.input(&layer.source.display().to_string())?)?;
            let target = layer.target.as_deref().unwrap_or(Path::new("/"));
            lay_over(&mut tree, &overlay, target).map_err(StageError::failed)?;
        }
        Ok(ctx.store.put_manifest(&tree)?)
    }
}

/// Lay `overlay` over `tree` at `target` (an absolute path in the image).
pub fn lay_over(tree: &mut Manifest, overlay: &Manifest, target: &Path) -> Result<(), TreeError> {
    let target = normalize(target).ok_or_else(|| TreeError::Escapes {
        path: target.display().to_string(),
    })?;
    if !target.is_empty() {
        ensure_dirs(tree, &target)?;
    }
    let target = resolve_in_tree(tree, &target)?;
    for entry in overlay.entries() {
        let joined = if entry.path.is_empty() {
            target.clone()
        } else if target.is_empty() {
            entry.path.clone()
        } else {
            format!("{target}/{}", entry.path)
        };
        let (parent, leaf) = match joined.rsplit_once('/') {
            Some((parent, leaf)) => (resolve_in_tree(tree, parent)?, leaf.to_string()),
            None => (String::new(), joined.clone()),
        };
        let path = if parent.is_empty() {
            leaf
        } else {
            format!("{parent}/{leaf}")
        };
        let mut placed = entry.clone();
        placed.path = path.clone();
        if path.is_empty() {
            // The overlay's root directory: mkosi keeps the image root's metadata.
            continue;
        }
        // A file copied onto a symlink to a file is written through the link, as `cp` (and so
        // mkosi) does: `mkosi.extra/etc/os-release` over the image's
        // `etc/os-release -> ../usr/lib/os-release` changes `usr/lib/os-release`.
        if matches!(placed.kind, EntryKind::File { .. })
            && tree
                .get(&path)
                .is_some_and(|existing| matches!(existing.kind, EntryKind::Symlink { .. }))
            && let Ok(through) = resolve_in_tree(tree, &path)
            && tree
                .get(&through)
                .is_some_and(|target| matches!(target.kind, EntryKind::File { .. }))
        {
            placed.path = through.clone();
            tree.remove_path_recursive(&through);
            tree.insert_or_replace(placed)?;
            continue;
        }
        match tree.get(&path) {
            Some(existing)
                if matches!(existing.kind, EntryKind::Dir)
                    && matches!(placed.kind, EntryKind::Dir) => {}
            Some(_) => {
                tree.remove_path_recursive(&path);
            }
            None => {}
        }
        tree.insert_or_replace(placed)?;
    }
    Ok(())
}

/// A tree holding only its root directory (0755 root:root).
pub fn empty_tree() -> Manifest {
    let mut tree = Manifest::new();
    // The root of an empty manifest needs no parent: this cannot fail.
    let _ = tree.insert_or_replace(Entry::new("", EntryKind::Dir, 0o755));
    tree
}

/// `/a/b/../c` -> `a/c`; `None` when `..` climbs above the root.
pub fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
        }
    }
    Some(parts.join("/"))
}

/// Follow symlinks among the components of `path` inside the tree; the result names an entry
/// that is not a symlink (or does not exist yet).
pub fn resolve_in_tree(tree: &Manifest, path: &str) -> Result<String, TreeError> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|part| !part.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if resolved.pop().is_none() {
                return Err(TreeError::Escapes {
                    path: path.to_string(),
                });
            }
            continue;
        }
        resolved.push(part);
        let current = resolved.join("/");
        if let Some(Entry {
            kind: EntryKind::Symlink { target },
            ..
        }) = tree.get(&current)
        {
            hops += 1;
            if hops > 40 {
                return Err(TreeError::SymlinkLoop {
                    path: path.to_string(),
                });
            }
            resolved.pop();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|part| !part.is_empty())
                    .rev()
                    .map(String::from),
            );
        }
    }
    Ok(resolved.join("/"))
}

/// Create the directories of `path` that do not exist yet (0755 root:root, as mkdir -p would).
fn ensure_dirs(tree: &mut Manifest, path: &str) -> Result<(), TreeError> {
    let mut current = String::new();
    for part in path.split('/') {
        let next = if current.is_empty() {
            part.to_string()
        } else {
            format!("{current}/{part}")
        };
        let resolved = resolve_in_tree(tree, &next)?;
        match tree.get(&resolved) {
            Some(Entry {
                kind: EntryKind::Dir,
                ..
            }) => {}
            Some(_) => {
                return Err(TreeError::NotADirectory { path: resolved });
            }
            // A symlink to nothing in the image: mkosi's `mkdir(parents=True)` fails on it too,
            // and creating its target's parents here would guess at what was meant.
            None if resolved != next => {
                return Err(TreeError::NotADirectory { path: next });
            }
            None => {
                tree.insert_or_replace(Entry::new(resolved.clone(), EntryKind::Dir, 0o755))?;
            }
        }
        current = resolved;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::Digest;

    fn tree(entries: &[(&str, Option<&str>)]) -> Manifest {
        let mut tree = empty_tree();
        for (path, link) in entries {
            let kind = match link {
                Some(target) => EntryKind::Symlink {
                    target: target.to_string(),
                },
                None => EntryKind::Dir,
            };
            tree.insert_or_replace(Entry::new(*path, kind, 0o755))
                .unwrap();
        }
        tree
    }

    fn overlay() -> Manifest {
        let mut overlay = empty_tree();
        overlay
            .insert_or_replace(Entry::new(
                "planted",
                EntryKind::File {
                    blob: Digest::of_bytes(b"x"),
                    size: 1,
                },
                0o644,
            ))
            .unwrap();
        overlay
    }

    #[test]
    fn a_target_through_an_absolute_link_lands_where_it_leads_in_the_image() {
        let mut image = tree(&[("abs", Some("/var/lib")), ("var", None), ("var/lib", None)]);
        lay_over(&mut image, &overlay(), Path::new("/abs")).unwrap();
        assert!(image.get("var/lib/planted").is_some());
        assert!(matches!(
            image.get("abs").unwrap().kind,
            EntryKind::Symlink { .. }
        ));
    }

    #[test]
    fn a_target_through_a_dangling_or_climbing_link_is_refused() {
        let mut image = tree(&[("abs", Some("/var/tmp/elsewhere"))]);
        let before = image.clone();
        assert!(matches!(
            lay_over(&mut image, &overlay(), Path::new("/abs")),
            Err(TreeError::NotADirectory { path }) if path == "abs"
        ));
        assert_eq!(image, before, "nothing is created on the way");
        let mut image = tree(&[("rel", Some("../../../etc"))]);
        assert!(matches!(
            lay_over(&mut image, &overlay(), Path::new("/rel")),
            Err(TreeError::Escapes { .. })
        ));
        assert!(matches!(
            lay_over(&mut image, &overlay(), Path::new("/../etc")),
            Err(TreeError::Escapes { .. })
        ));
    }
}
