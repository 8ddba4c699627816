//! The `RemoveFiles=` stage: delete every path matching one of the globs, and what is below it.
//!
//! mkosi anchors each glob at the image root (a leading `/` is optional), `*` stays within one
//! path component and `**` spans any number of them. Matching runs over the manifest, so a glob
//! can only ever name entries of the image: `..` and symlinks never lead it outside.

use globset::{GlobBuilder, GlobSetBuilder};
use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

use crate::error::TreeError;

pub(crate) struct RemoveFilesStage {
    pub name: String,
    pub base: String,
    pub globs: Vec<String>,
}

impl Stage for RemoveFilesStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "remove-files"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("base", &self.base),
            Input::value("RemoveFiles", self.globs.join(" ")),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        let matcher = glob_set(&self.globs).map_err(StageError::failed)?;
        let doomed: Vec<String> = tree
            .entries()
            .filter(|entry| !entry.path.is_empty() && matcher.is_match(&entry.path))
            .map(|entry| entry.path.clone())
            .collect();
        for path in doomed {
            tree.remove_path_recursive(&path);
        }
        Ok(ctx.store.put_manifest(&tree)?)
    }
}

/// Compile `RemoveFiles=` globs, anchored at the image root.
pub(crate) fn glob_set(globs: &[String]) -> Result<globset::GlobSet, TreeError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let anchored = glob.trim_start_matches('/').trim_end_matches('/');
        if anchored.split('/').any(|part| part == "..") {
            return Err(TreeError::Escapes { path: glob.clone() });
        }
        let compiled = GlobBuilder::new(anchored)
            .literal_separator(true)
            .build()
            .map_err(|source| TreeError::BadGlob {
                glob: glob.clone(),
                message: source.kind().to_string(),
            })?;
        set.add(compiled);
    }
    set.build().map_err(|source| TreeError::BadGlob {
        glob: globs.join(" "),
        message: source.kind().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::glob_set;

    #[test]
    fn globs_are_anchored_and_star_stays_in_a_component() {
        let set = glob_set(&[
            "/usr/include/".to_string(),
            "/usr/lib/**/*.a".to_string(),
            "usr/share/locale".to_string(),
        ])
        .unwrap();
        assert!(set.is_match("usr/include"));
        assert!(!set.is_match("opt/usr/include"));
        assert!(set.is_match("usr/lib/libc.a"));
        assert!(set.is_match("usr/lib/x86_64/deep/libm.a"));
        assert!(!set.is_match("usr/lib/libc.so"));
        assert!(set.is_match("usr/share/locale"));
        assert!(!set.is_match("usr/share/locale-langpack"));
    }

    #[test]
    fn parent_components_are_refused() {
        assert!(glob_set(&["/../etc".to_string()]).is_err());
        assert!(glob_set(&["usr/../../x".to_string()]).is_err());
    }
}
