//! `gc`: keep what recent builds use, delete everything else.
//!
//! Roots are the runs of the last `keep_builds_per_recipe` builds of each
//! recipe, plus the last successful build of each recipe (the baseline
//! `graph explain` compares against): their outputs and every input digest
//! that names a stored tree or blob. A kept tree keeps its manifest, every
//! blob it refers to and the variants its entries need. Everything else is
//! deleted, with the builds, action cache entries and stat cache rows that
//! would refer to it, and the shared cache's records no kept run uses.
//!
//! `v1/packages/` is not content-addressed: it holds package managers'
//! states and downloaded packages, one unit per entry of each of its folders
//! (`packages/<area>/<unit>`: a package file, a state folder). Whoever uses a
//! unit sets its modification time (the packages stage does, as mkosi keeps
//! its package cache for the builds that use it), so gc removes the units
//! last used before the oldest kept build started: no kept build used them.
//! With no build kept, every unit goes. The next build that needs one
//! downloads it again. `max_bytes` counts objects only. With
//! `drop_package_files`, every package file goes (mkosi's `clean -ff` drops
//! its package cache likewise): every stage stays cached, and the next build
//! whose package set changes downloads again what it installs.
//!
//! An action cache entry anchored to an object (an initrd segment's, to its
//! initrd) is kept with its output as long as that object is.
//!
//! Kept blobs nothing links (the shared checkouts are gone by then) are
//! frozen: compressed at rest, and thawed when a build reads them again (see
//! `freeze`). Kept variants nothing links go: a checkout makes them again.
//!
//! gc holds the store lock exclusively: no build runs meanwhile. Index rows
//! are deleted before the objects they name, trees before blobs, so a gc
//! killed half-way leaves only unreferenced objects behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::sync::PoisonError;
use std::time::{Duration, SystemTime};

use crate::digest::{BlobId, Digest, TreeId};
use crate::error::Result;
use crate::index::{BuildId, BuildInfo, BuildStatus, Index, OutputKind};
use crate::maintenance::{DiskUsage, ObjectName, human_bytes, read_dir_paths, remove_dir_tree};
use crate::manifest::{EntryKind, Manifest};
use crate::store::{ObjectDir, Store, remove_file};
use crate::variant::FileMeta;

/// What [`Store::gc`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the objects used by this many latest builds of each recipe (the
    /// last successful build of each recipe is kept too).
    pub keep_builds_per_recipe: usize,
    /// Then drop the oldest kept builds until the objects fit in this size.
    pub max_bytes: Option<u64>,
    /// How long to wait for other users of the store to go away.
    pub lock_timeout: Duration,
    /// Remove every package file of `v1/packages/` (downloaded packages),
    /// used or not; package managers' states (folders) follow the rule above.
    pub drop_package_files: bool,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            keep_builds_per_recipe: 3,
            max_bytes: None,
            lock_timeout: Duration::from_secs(5),
            drop_package_files: false,
        }
    }
}

/// What [`Store::gc`] removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Builds kept, whose objects are the roots.
    pub builds_kept: usize,
    /// Builds removed from the index.
    pub builds_removed: usize,
    /// Action cache entries removed.
    pub actions_removed: usize,
    /// Tree manifests deleted.
    pub trees_removed: usize,
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Variants deleted: those no kept build needs, and those nothing links
    /// (a checkout that needs one makes it again).
    pub variants_removed: usize,
    /// Blobs compressed at rest, nothing linking them (see `freeze`).
    pub blobs_frozen: usize,
    /// What freezing them saved.
    pub bytes_saved_by_freezing: u64,
    /// Temp files deleted.
    pub temp_removed: usize,
    /// Units of `v1/packages/` deleted: package files and package managers'
    /// states no kept build used.
    pub packages_removed: usize,
    /// Bytes deleted: object files and units of `v1/packages/`.
    pub bytes_freed: u64,
    /// Bytes of object files kept.
    pub bytes_kept: u64,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kept {} builds ({}), removed {} builds",
            self.builds_kept,
            human_bytes(self.bytes_kept),
            self.builds_removed
        )?;
        write!(
            f,
            "removed {} blobs, {} variants, {} trees, {} cache entries, {} temp files, \
             {} package files and states: {} freed; froze {} blobs nothing links \
             (compressed until a build reads them): {} saved",
            self.blobs_removed,
            self.variants_removed,
            self.trees_removed,
            self.actions_removed,
            self.temp_removed,
            self.packages_removed,
            human_bytes(self.bytes_freed),
            self.blobs_frozen,
            human_bytes(self.bytes_saved_by_freezing)
        )
    }
}

/// The objects a set of builds needs.
#[derive(Debug, Default)]
struct Live {
    trees: HashSet<TreeId>,
    blobs: HashSet<BlobId>,
    variants: HashSet<(BlobId, Digest)>,
}

/// Object files on disk with their sizes.
struct OnDisk {
    sizes: HashMap<(ObjectDir, ObjectName), u64>,
}

impl OnDisk {
    fn size(&self, dir: ObjectDir, name: ObjectName) -> u64 {
        self.sizes.get(&(dir, name)).copied().unwrap_or(0)
    }
}

impl Live {
    fn bytes(&self, disk: &OnDisk) -> u64 {
        let trees: u64 = self
            .trees
            .iter()
            .map(|t| disk.size(ObjectDir::Trees, ObjectName::Digest(*t)))
            .sum();
        let blobs: u64 = self
            .blobs
            .iter()
            .map(|b| disk.size(ObjectDir::Objects, ObjectName::Digest(*b)))
            .sum();
        let variants: u64 = self
            .variants
            .iter()
            .map(|(b, m)| disk.size(ObjectDir::Variants, ObjectName::Variant(*b, *m)))
            .sum();
        trees + blobs + variants
    }

    fn keeps(&self, dir: ObjectDir, name: ObjectName) -> bool {
        match (dir, name) {
            (ObjectDir::Trees, ObjectName::Digest(id)) => self.trees.contains(&id),
            (ObjectDir::Objects, ObjectName::Digest(id)) => self.blobs.contains(&id),
            (ObjectDir::Variants, ObjectName::Variant(blob, meta)) => {
                self.variants.contains(&(blob, meta))
            }
            _ => false,
        }
    }
}

impl Store {
    /// Deletes everything the recent builds do not use (see the module
    /// documentation of gc for what is kept).
    ///
    /// Needs the store alone: fails with [`crate::StoreError::InUse`] if
    /// another process still has it open after `policy.lock_timeout`. Other
    /// clones of this handle must not be in use meanwhile.
    pub fn gc(&self, policy: GcPolicy) -> Result<GcReport> {
        let _one_gc = self
            .gc_mutex()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _exclusive = self.lock().exclusive(policy.lock_timeout)?;
        let index = self.index()?;
        let mut report = GcReport::default();

        let builds = index.builds(None)?;
        let mut kept = kept_builds(&builds, policy.keep_builds_per_recipe);
        let disk = self.on_disk()?;
        let mut manifests: HashMap<TreeId, Manifest> = HashMap::new();
        let mut live = self.live(&index, &kept, &mut manifests)?;
        if let Some(max) = policy.max_bytes {
            while live.bytes(&disk) > max && !kept.is_empty() {
                // `kept` is sorted by id: the oldest build goes first.
                kept.remove(0);
                live = self.live(&index, &kept, &mut manifests)?;
            }
        }
        self.keep_anchored(&index, &mut live, &mut manifests)?;
        self.keep_references(&mut live);
        report.builds_kept = kept.len();

        let doomed_builds: Vec<BuildId> = builds
            .iter()
            .map(|b| b.id)
            .filter(|id| !kept.contains(id))
            .collect();
        index.delete_builds(&doomed_builds)?;
        report.builds_removed = doomed_builds.len();
        index.prune_remote_actions()?;

        let doomed_actions: Vec<Digest> = index
            .actions()?
            .into_iter()
            .filter(|(_, result)| match result.kind {
                OutputKind::Tree => !live.trees.contains(&result.output),
                OutputKind::Blob => !live.blobs.contains(&result.output),
            })
            .map(|(key, _)| key)
            .collect();
        index.delete_actions(&doomed_actions)?;
        report.actions_removed = doomed_actions.len();

        // Stat cache rows must not outlive their blobs (see `statcache`).
        self.prune_stat_cache(|blob| live.blobs.contains(blob))?;

        // Nothing links the objects any more but outputs a user keeps.
        self.remove_shared_checkouts()?;
        for dir in [ObjectDir::Trees, ObjectDir::Variants, ObjectDir::Objects] {
            for object in self.list_objects(dir)? {
                if live.keeps(dir, object.name)
                    && !(dir == ObjectDir::Variants && unlinked(&object.path))
                {
                    continue;
                }
                remove_file(&object.path)?;
                report.bytes_freed += object.size;
                match dir {
                    ObjectDir::Trees => report.trees_removed += 1,
                    ObjectDir::Variants => report.variants_removed += 1,
                    ObjectDir::Objects => report.blobs_removed += 1,
                }
            }
        }
        let references = self.delta_references(&index, &kept, &disk)?;
        let frozen = self.freeze_unlinked(&self.list_objects(ObjectDir::Objects)?, &references)?;
        report.blobs_frozen = frozen.blobs;
        report.bytes_saved_by_freezing = frozen.bytes_saved;
        report.bytes_kept = self.on_disk()?.sizes.values().sum();
        report.temp_removed = self.clean_temp(true)?.len();
        // Units used since the oldest kept build started are kept.
        let cutoff = builds
            .iter()
            .filter(|b| kept.contains(&b.id))
            .map(|b| b.started)
            .min()
            .unwrap_or_else(SystemTime::now);
        let (units, bytes) = self.collect_packages(cutoff, policy.drop_package_files)?;
        report.packages_removed = units;
        report.bytes_freed += bytes;
        index.checkpoint();
        Ok(report)
    }

    /// Removes the units of `v1/packages/` (entries of its folders) last
    /// modified before `cutoff`, and every package file (a unit that is a
    /// file) if `package_files` says so; returns how many went and their bytes.
    fn collect_packages(&self, cutoff: SystemTime, package_files: bool) -> Result<(usize, u64)> {
        let (mut units, mut bytes) = (0, 0);
        let packages = self.packages_dir();
        for area in read_dir_paths(&packages)? {
            if !fs::symlink_metadata(&area).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for unit in read_dir_paths(&area)? {
                let Ok(meta) = fs::symlink_metadata(&unit) else {
                    continue;
                };
                let dropped = package_files && meta.is_file();
                if !dropped && meta.modified().is_ok_and(|used| used >= cutoff) {
                    continue;
                }
                let size = DiskUsage::of(&unit)?;
                if meta.is_dir() {
                    remove_dir_tree(&unit)?;
                } else {
                    remove_file(&unit)?;
                }
                units += 1;
                bytes += size;
            }
        }
        Ok((units, bytes))
    }

    fn on_disk(&self) -> Result<OnDisk> {
        let mut sizes = HashMap::new();
        for dir in [ObjectDir::Trees, ObjectDir::Variants, ObjectDir::Objects] {
            for object in self.list_objects(dir)? {
                // A blob both plain and frozen (thawed since the last gc) counts both files.
                *sizes.entry((dir, object.name)).or_insert(0) += object.size;
            }
        }
        Ok(OnDisk { sizes })
    }

    /// The objects the runs of `builds` need.
    fn live(
        &self,
        index: &Index,
        builds: &[BuildId],
        manifests: &mut HashMap<TreeId, Manifest>,
    ) -> Result<Live> {
        let mut live = Live::default();
        for build in builds {
            for run in index.runs(*build)? {
                let mut roots = vec![(run.output.output, Some(run.output.kind))];
                roots.extend(run.inputs.iter().map(|input| (input.digest, None)));
                for (digest, kind) in roots {
                    let is_tree = match kind {
                        Some(kind) => kind == OutputKind::Tree,
                        None => self.has_tree(&digest),
                    };
                    if is_tree {
                        self.keep_tree(&digest, &mut live, manifests)?;
                    } else if self.has_blob(&digest) {
                        live.blobs.insert(digest);
                    }
                }
            }
        }
        Ok(live)
    }

    /// Keeps the outputs of the action cache entries anchored to a kept object
    /// (and so the entries themselves).
    fn keep_anchored(
        &self,
        index: &Index,
        live: &mut Live,
        manifests: &mut HashMap<TreeId, Manifest>,
    ) -> Result<()> {
        for (_, result, anchor) in index.anchored_actions()? {
            if !live.blobs.contains(&anchor) && !live.trees.contains(&anchor) {
                continue;
            }
            match result.kind {
                OutputKind::Blob => {
                    live.blobs.insert(result.output);
                }
                OutputKind::Tree => self.keep_tree(&result.output, live, manifests)?,
            }
        }
        Ok(())
    }

    /// Keeps the blobs that kept frozen differences are decoded with.
    fn keep_references(&self, live: &mut Live) {
        let mut todo: Vec<BlobId> = live.blobs.iter().copied().collect();
        while let Some(blob) = todo.pop() {
            if let Some(reference) = self.frozen_reference(&blob)
                && live.blobs.insert(reference)
            {
                todo.push(reference);
            }
        }
    }

    /// For each blob output of the kept runs, the largest blob among the
    /// run's inputs: what it is frozen as a difference from (see `freeze`).
    fn delta_references(
        &self,
        index: &Index,
        builds: &[BuildId],
        disk: &OnDisk,
    ) -> Result<HashMap<BlobId, BlobId>> {
        let size = |blob: &BlobId| disk.size(ObjectDir::Objects, ObjectName::Digest(*blob));
        let mut references: HashMap<BlobId, BlobId> = HashMap::new();
        for build in builds {
            for run in index.runs(*build)? {
                if run.output.kind != OutputKind::Blob
                    || references.contains_key(&run.output.output)
                {
                    continue;
                }
                let output = run.output.output;
                let largest = run
                    .inputs
                    .iter()
                    .map(|input| input.digest)
                    .filter(|digest| *digest != output && size(digest) > 0)
                    .max_by_key(|digest| (size(digest), *digest));
                let Some(reference) = largest else {
                    continue;
                };
                // Never a chain that leads back to the output.
                let mut next = Some(reference);
                let mut cycle = false;
                for _ in 0..32 {
                    let Some(link) = next else { break };
                    if link == output {
                        cycle = true;
                        break;
                    }
                    next = references
                        .get(&link)
                        .copied()
                        .or_else(|| self.frozen_reference(&link));
                }
                if !cycle && next.is_none() {
                    references.insert(output, reference);
                }
            }
        }
        Ok(references)
    }

    fn keep_tree(
        &self,
        id: &TreeId,
        live: &mut Live,
        manifests: &mut HashMap<TreeId, Manifest>,
    ) -> Result<()> {
        if !live.trees.insert(*id) {
            return Ok(());
        }
        if !manifests.contains_key(id) {
            match self.manifest(id) {
                Ok(manifest) => {
                    manifests.insert(*id, manifest);
                }
                // A missing or corrupt tree keeps nothing.
                Err(_) => return Ok(()),
            }
        }
        let Some(manifest) = manifests.get(id) else {
            return Ok(());
        };
        for entry in manifest.entries() {
            if let EntryKind::File { blob, .. } = &entry.kind {
                live.blobs.insert(*blob);
                let meta = FileMeta {
                    mode: entry.mode,
                    uid: entry.uid,
                    gid: entry.gid,
                    xattrs: &entry.xattrs,
                };
                if !self.is_plain(&meta) {
                    live.variants.insert((*blob, meta.digest()));
                }
            }
        }
        Ok(())
    }
}

/// Whether nothing but the store links the file at `path`.
fn unlinked(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).is_ok_and(|meta| meta.nlink() == 1)
}

/// The last `keep` builds of each recipe and its last successful one,
/// sorted by id.
fn kept_builds(builds: &[BuildInfo], keep: usize) -> Vec<BuildId> {
    let mut by_recipe: BTreeMap<&str, Vec<&BuildInfo>> = BTreeMap::new();
    for build in builds {
        by_recipe.entry(&build.recipe).or_default().push(build);
    }
    let mut kept = Vec::new();
    for mut recipe_builds in by_recipe.into_values() {
        recipe_builds.sort_by_key(|b| std::cmp::Reverse(b.id));
        kept.extend(recipe_builds.iter().take(keep).map(|b| b.id));
        if let Some(ok) = recipe_builds
            .iter()
            .find(|b| b.status == BuildStatus::Succeeded)
        {
            kept.push(ok.id);
        }
    }
    kept.sort();
    kept.dedup();
    kept
}
