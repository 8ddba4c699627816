//! Paths from the command line, the environment and the recipe, made absolute and normal once.
//!
//! Tools that receive a path (systemctl's `--root`, gpg's home, mmdebstrap's target) must never
//! see `..` or `.` components: systemctl, for one, refuses a root that holds `..` ("path is
//! outside of the specified root"). [`absolute`] resolves a path against a base, then resolves
//! the part that exists on disk through its symlinks (as the kernel would) and appends the rest,
//! whose `..` components are then plain names of directories that do not exist yet and can be
//! dropped lexically.

use std::path::{Component, Path, PathBuf};

/// Whether `name` names one entry of a directory: not empty, not `.` or `..`, without `/` or NUL.
/// Every name kiln writes into the output directory passes it, so no output lands elsewhere.
pub fn is_file_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

/// `path` made absolute against `base` (itself absolute), without `.` or `..` components.
///
/// The longest prefix that exists is canonicalised (symlinks resolved); what follows it is
/// normalised lexically.
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    let lexical = lexically_normal(&joined);
    // Walk up from the full path to the first ancestor that exists, canonicalise it, and put the
    // missing components back. `..` must be resolved on disk while the prefix exists (a symlink
    // followed by `..` leads elsewhere than the lexical parent), so the walk uses `joined`.
    let mut existing = joined.as_path();
    let mut missing: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut result = canonical;
            for name in missing.iter().rev() {
                result.push(name);
            }
            return lexically_normal(&result);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            // The ancestors hold `..` or nothing exists at all: fall back to the lexical form.
            _ => return lexical,
        }
    }
}

/// `path` with `.` removed and each `..` taking away the component before it (never above the
/// root).
pub fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let at_root = out.has_root() && out.parent().is_none();
                let climbs = out.file_name().is_none() && !at_root;
                if at_root {
                    // `/..` is `/`.
                } else if climbs || !out.pop() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_components_are_resolved_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("project")).unwrap();
        assert_eq!(
            absolute(&base.join("project"), Path::new("../store")),
            base.join("store")
        );
        assert_eq!(
            absolute(&base.join("project"), Path::new("./a/../../store/./x")),
            base.join("store/x")
        );
        assert_eq!(
            absolute(&base, Path::new("/abs/./p")),
            PathBuf::from("/abs/p")
        );
    }

    #[test]
    fn a_symlink_followed_by_parent_leads_where_the_kernel_goes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(base.join("real/inner"), base.join("link")).unwrap();
        // link/.. is real/, not base/.
        assert_eq!(
            absolute(&base, Path::new("link/../store")),
            base.join("real/store")
        );
    }

    #[test]
    fn lexical_normalisation_never_climbs_above_the_root() {
        assert_eq!(
            lexically_normal(Path::new("/../a/./b/..")),
            PathBuf::from("/a")
        );
        assert_eq!(lexically_normal(Path::new("a/..")), PathBuf::from("."));
    }
}
