//! Which firmware stays, on the manifest, with mkosi's rules (`modinfo`'s firmware lookup,
//! `filter_firmware`, the symlink walk of `required_kernel_modules` and the removal of
//! `process_kernel_modules`):
//!
//! 1. each `firmware=` entry of a kept module keeps the file of that name when it exists
//!    (through symlinks) and every entry matching the name followed by `.*` (the compressed
//!    variants `.xz`, `.zst`), or the name itself when it ends in `*`, matched as Python's
//!    `pathlib` globs do (`*` within one path element, dot files included); a name with a
//!    wildcard elsewhere also keeps its uncompressed matches, which mkosi misses;
//! 2. `FirmwareExclude=` drops what it matches, and a `FirmwareFiles=` glob whose last match
//!    is a `-` drops it too; `FirmwareInclude=` and `FirmwareFiles=` add any file or symlink
//!    below `/usr/lib/firmware` they match;
//! 3. every symlink met on the way from `/usr/lib/firmware` to a kept file stays, and so does
//!    the file it finally leads to, with every directory above;
//! 4. everything else below `/usr/lib/firmware` goes, except `amd-ucode/` and `intel-ucode/`.
//!
//! mkosi rewrites a symlink into `/etc/alternatives` to point at its final target; kiln keeps
//! such a symlink as it is (and the alternative's target too).

use std::collections::{BTreeSet, HashMap};

use kiln_cache::{EntryKind, Manifest};
use kiln_recipe::fnmatch;

use super::rules::CompiledRules;

/// Where firmware lives in the image.
pub(super) const FIRMWARE_DIR: &str = "usr/lib/firmware";

/// Directories below [`FIRMWARE_DIR`] that always stay (CPU microcode).
pub(super) const MICROCODE_DIRS: [&str; 2] = ["amd-ucode", "intel-ucode"];

/// How many symlinks one path may go through before it counts as a loop (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// The manifest paths of the firmware that stays: the files and the symlinks leading to them
/// (not their directories). `needed` holds the kept modules' `firmware=` entries.
pub(super) fn required_firmware(
    tree: &Manifest,
    needed: &BTreeSet<String>,
    rules: &CompiledRules,
) -> BTreeSet<String> {
    let walker = Walker::new(tree);
    let mut firmware: BTreeSet<String> = BTreeSet::new();
    for entry in needed {
        let exact = format!("{FIRMWARE_DIR}/{entry}");
        if walker.exists(&exact) {
            firmware.insert(exact);
        }
        if entry.ends_with('*') {
            firmware.extend(walker.glob(FIRMWARE_DIR, entry));
        } else {
            firmware.extend(walker.glob(FIRMWARE_DIR, &format!("{entry}.*")));
            // mkosi globs only `name.*` here, so a wildcard in the middle of a name
            // (`iwlwifi-9000-*.ucode`) would keep compressed matches alone.
            if entry.contains(['*', '?', '[']) {
                firmware.extend(walker.glob(FIRMWARE_DIR, entry));
            }
        }
    }
    let prefix = format!("{FIRMWARE_DIR}/");
    let relative = |path: &str| path.strip_prefix(&prefix).unwrap_or(path).to_string();
    firmware.retain(|path| rules.keeps_needed_firmware(&relative(path)));
    if rules.has_firmware_rules() {
        for entry in tree.subtree(FIRMWARE_DIR).skip(1) {
            if matches!(
                entry.kind,
                EntryKind::File { .. } | EntryKind::Symlink { .. }
            ) && rules.includes_firmware(&relative(&entry.path))
            {
                firmware.insert(entry.path.clone());
            }
        }
    }
    let mut resolved = BTreeSet::new();
    for path in &firmware {
        let walk = walker.walk(path);
        resolved.extend(walk.symlinks);
        resolved.extend(walk.target);
    }
    resolved
}

/// Removes from `tree` everything below [`FIRMWARE_DIR`] that neither `required` (manifest
/// paths), a directory above one of them, nor microcode is. Returns how many entries went.
pub(super) fn prune_firmware(tree: &mut Manifest, required: &BTreeSet<String>) -> usize {
    if !tree
        .get(FIRMWARE_DIR)
        .is_some_and(|entry| entry.kind.is_dir())
    {
        return 0;
    }
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    for path in required {
        let mut current = path.as_str();
        keep.insert(current);
        while let Some((parent, _)) = current.rsplit_once('/') {
            if !keep.insert(parent) {
                break;
            }
            current = parent;
        }
    }
    let microcode: Vec<String> = MICROCODE_DIRS
        .iter()
        .map(|dir| format!("{FIRMWARE_DIR}/{dir}"))
        .collect();
    let prefix = format!("{FIRMWARE_DIR}/");
    let keep: BTreeSet<String> = keep.into_iter().map(str::to_string).collect();
    tree.retain(|entry| {
        let path = entry.path.as_str();
        !path.starts_with(&prefix)
            || keep.contains(path)
            || microcode
                .iter()
                .any(|dir| path == dir || path.starts_with(&format!("{dir}/")))
    })
}

/// Where a path leads inside the image.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Walk {
    /// Every symlink met, as manifest paths.
    pub symlinks: Vec<String>,
    /// The entry the path finally names, when it exists.
    pub target: Option<String>,
}

/// One step of a path walk.
enum Part {
    Root,
    Name(String),
}

/// Pushes `path`'s components on a stack, so they pop in order; an absolute path starts at
/// the root.
fn push_parts(todo: &mut Vec<Part>, path: &str) {
    todo.extend(
        path.split('/')
            .filter(|part| !part.is_empty())
            .rev()
            .map(|part| Part::Name(part.to_string())),
    );
    if path.starts_with('/') {
        todo.push(Part::Root);
    }
}

/// Path lookups on a manifest that follow its symlinks, never leaving the image.
pub(super) struct Walker<'a> {
    tree: &'a Manifest,
    /// Children of each directory below the firmware directory, built once.
    children: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(tree: &'a Manifest) -> Walker<'a> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for entry in tree.subtree(FIRMWARE_DIR).skip(1) {
            if let Some((parent, name)) = entry.path.rsplit_once('/') {
                children.entry(parent).or_default().push(name);
            }
        }
        Walker { tree, children }
    }

    /// mkosi's walk: component by component from the root, each symlink replaced by its
    /// target (an absolute one from the image's root), `..` to the parent.
    pub(super) fn walk(&self, path: &str) -> Walk {
        let mut walk = Walk::default();
        let mut todo: Vec<Part> = Vec::new();
        push_parts(&mut todo, path);
        let mut current: Vec<String> = Vec::new();
        let mut expansions = 0;
        while let Some(part) = todo.pop() {
            let name = match part {
                Part::Root => {
                    current.clear();
                    continue;
                }
                Part::Name(name) => name,
            };
            match name.as_str() {
                "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            current.push(name);
            let joined = current.join("/");
            let Some(EntryKind::Symlink { target }) = self.tree.get(&joined).map(|e| &e.kind)
            else {
                continue;
            };
            expansions += 1;
            if expansions > MAX_SYMLINKS {
                return Walk {
                    symlinks: walk.symlinks,
                    target: None,
                };
            }
            walk.symlinks.push(joined);
            push_parts(&mut todo, target);
            // A relative target is resolved from the symlink's directory.
            current.pop();
        }
        let joined = current.join("/");
        if self.tree.get(&joined).is_some() {
            walk.target = Some(joined);
        }
        walk
    }

    /// The entry `path` leads to, following every symlink.
    fn resolve(&self, path: &str) -> Option<&'a kiln_cache::Entry> {
        let target = self.walk(path).target?;
        self.tree.get(&target)
    }

    /// Whether `path` exists, following symlinks (Python's `Path.exists`).
    pub(super) fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    fn is_dir(&self, path: &str) -> bool {
        self.resolve(path).is_some_and(|entry| entry.kind.is_dir())
    }

    /// The names in the directory `path` leads to.
    fn list(&self, path: &str) -> Vec<&'a str> {
        let Some(dir) = self.resolve(path).filter(|entry| entry.kind.is_dir()) else {
            return Vec::new();
        };
        match self.children.get(dir.path.as_str()) {
            Some(names) => names.clone(),
            // A directory outside the firmware directory: list it from the manifest.
            None => {
                let prefix = format!("{}/", dir.path);
                self.tree
                    .subtree(&dir.path)
                    .skip(1)
                    .filter_map(|entry| entry.path.strip_prefix(&prefix))
                    .filter(|rest| !rest.contains('/'))
                    .collect()
            }
        }
    }

    /// Python's `Path(base).glob(pattern)` (3.11): the paths as spelled through `base`, not
    /// resolved. An absolute or empty pattern matches nothing (Python refuses it).
    pub(super) fn glob(&self, base: &str, pattern: &str) -> Vec<String> {
        if pattern.is_empty() || pattern.starts_with('/') {
            return Vec::new();
        }
        let parts: Vec<&str> = pattern
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        let mut current = vec![base.to_string()];
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            let mut next = Vec::new();
            if *part == "**" {
                for path in current {
                    self.directories_below(&path, &mut next);
                }
                if last {
                    // `**` alone yields directories only.
                    current = next;
                    break;
                }
            } else if part.contains(['*', '?', '[']) {
                let Some(regex) =
                    fnmatch::translate(part).and_then(|re| regex::Regex::new(&re).ok())
                else {
                    return Vec::new();
                };
                for path in &current {
                    for name in self.list(path) {
                        if regex.is_match(name) {
                            let child = format!("{path}/{name}");
                            if last || self.is_dir(&child) {
                                next.push(child);
                            }
                        }
                    }
                }
            } else {
                for path in &current {
                    let child = format!("{path}/{part}");
                    if if last {
                        self.exists(&child)
                    } else {
                        self.is_dir(&child)
                    } {
                        next.push(child);
                    }
                }
            }
            current = next;
        }
        current
    }

    /// `path` and every directory below it, not entering symlinked directories.
    fn directories_below(&self, path: &str, out: &mut Vec<String>) {
        out.push(path.to_string());
        for name in self.list(path) {
            let child = format!("{path}/{name}");
            let is_real_dir = self
                .resolve(path)
                .and_then(|dir| self.tree.get(&format!("{}/{name}", dir.path)))
                .is_some_and(|entry| entry.kind.is_dir());
            if is_real_dir {
                self.directories_below(&child, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::rules::ModuleRules;
    use kiln_cache::{Digest, Entry};

    fn tree(files: &[&str], links: &[(&str, &str)]) -> Manifest {
        let mut entries = vec![Entry::new("", EntryKind::Dir, 0o755)];
        let mut dirs = BTreeSet::new();
        let mut add_dirs = |path: &str| {
            let mut prefix = String::new();
            for part in path.split('/').take(path.split('/').count() - 1) {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                dirs.insert(prefix.clone());
            }
        };
        for file in files {
            add_dirs(file);
        }
        for (link, _) in links {
            add_dirs(link);
        }
        for dir in dirs {
            entries.push(Entry::new(dir, EntryKind::Dir, 0o755));
        }
        for file in files {
            let blob = Digest::of_bytes(file.as_bytes());
            entries.push(Entry::new(*file, EntryKind::File { blob, size: 1 }, 0o644));
        }
        for (link, target) in links {
            entries.push(Entry::new(
                *link,
                EntryKind::Symlink {
                    target: target.to_string(),
                },
                0o777,
            ));
        }
        Manifest::from_entries(entries).unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const FW: &str = "usr/lib/firmware";

    #[test]
    fn needed_firmware_keeps_compressed_variants_and_symlink_chains() {
        let t = tree(
            &[
                "usr/lib/firmware/rtl_nic/rtl8168h-2.fw.zst",
                "usr/lib/firmware/rtl_nic/rtl8168h-3.fw",
                "usr/lib/firmware/nvidia/ad102/gsp/boot.bin.xz",
                "usr/lib/firmware/iwlwifi-9000-46.ucode",
                "usr/lib/firmware/iwlwifi-9000-43.ucode",
                "usr/lib/firmware/iwlwifi-8000-36.ucode",
                "usr/lib/firmware/intel-ucode/06-55-04",
                "usr/lib/firmware/other/unused.bin",
            ],
            &[
                ("usr/lib/firmware/nvidia/ad103", "ad102"),
                (
                    "usr/lib/firmware/alias.fw",
                    "/usr/lib/firmware/rtl_nic/rtl8168h-3.fw",
                ),
            ],
        );
        let rules = ModuleRules::default().compile(&[]).unwrap();
        let needed = set(&[
            "rtl_nic/rtl8168h-2.fw",
            "nvidia/ad103/gsp/boot.bin",
            "iwlwifi-9000-*.ucode",
            "alias.fw",
            "missing.bin",
        ]);
        let required = required_firmware(&t, &needed, &rules);
        assert_eq!(
            required,
            set(&[
                "usr/lib/firmware/alias.fw",
                "usr/lib/firmware/iwlwifi-9000-43.ucode",
                "usr/lib/firmware/iwlwifi-9000-46.ucode",
                "usr/lib/firmware/nvidia/ad102/gsp/boot.bin.xz",
                "usr/lib/firmware/nvidia/ad103",
                "usr/lib/firmware/rtl_nic/rtl8168h-2.fw.zst",
                "usr/lib/firmware/rtl_nic/rtl8168h-3.fw",
            ])
        );
        let mut pruned = t.clone();
        prune_firmware(&mut pruned, &required);
        let left: BTreeSet<String> = pruned
            .subtree(FW)
            .filter(|e| !e.kind.is_dir())
            .map(|e| e.path.clone())
            .collect();
        let mut expected = required.clone();
        expected.insert("usr/lib/firmware/intel-ucode/06-55-04".into());
        assert_eq!(left, expected);
        assert!(pruned.get("usr/lib/firmware/other").is_none());
        assert!(pruned.get("usr/lib/firmware/nvidia/ad102/gsp").is_some());
    }

    #[test]
    fn firmware_rules_exclude_and_include() {
        let t = tree(
            &[
                "usr/lib/firmware/a/one.bin",
                "usr/lib/firmware/a/two.bin.xz",
                "usr/lib/firmware/b/three.bin",
            ],
            &[],
        );
        let rules = ModuleRules {
            firmware_files: vec!["-two.bin".into(), "b/".into()],
            ..ModuleRules::default()
        }
        .compile(&[])
        .unwrap();
        let required = required_firmware(&t, &set(&["a/one.bin", "a/two.bin"]), &rules);
        assert_eq!(
            required,
            set(&["usr/lib/firmware/a/one.bin", "usr/lib/firmware/b/three.bin"])
        );
    }

    #[test]
    fn the_walk_resolves_relative_absolute_and_parent_components() {
        let t = tree(
            &["usr/lib/firmware/real/file"],
            &[
                ("usr/lib/firmware/up", "../firmware/real"),
                ("usr/lib/firmware/abs", "/usr/lib/firmware/up"),
                ("usr/lib/firmware/loop", "loop"),
            ],
        );
        let walker = Walker::new(&t);
        let walk = walker.walk("usr/lib/firmware/abs/file");
        assert_eq!(
            walk.symlinks,
            vec!["usr/lib/firmware/abs", "usr/lib/firmware/up"]
        );
        assert_eq!(walk.target.as_deref(), Some("usr/lib/firmware/real/file"));
        assert_eq!(walker.walk("usr/lib/firmware/loop").target, None);
    }
}
