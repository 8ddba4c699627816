//! A project directory read as a whole: which recipe it holds (a mkosi project or `kiln.ron`),
//! how it is read ([`LoadOptions`]) and what reading it yields ([`Loaded`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::diagnostics::{ConfigErrors, ConfigIssue, ConfigWarning, LoadError};
use super::host::Env;
use super::load::Assignment;
use super::model::Recipe;
use super::reader_host::ReaderHost;
use super::ron::from_ron;
use super::{finalize, load};

/// How a project is read: the command line's overrides and how strict to be.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--image-version`: overrides `ImageVersion=` and `mkosi.version` (empty unsets it).
    pub image_version: Option<String>,
    /// `--autologin`: overrides `Autologin=`.
    pub autologin: Option<bool>,
    /// `--profile`: profiles selected in addition to `Profiles=`.
    pub profiles: Vec<String>,
    /// Turn every warning into an error.
    pub strict: bool,
    /// The environment `$VAR`, `~`, `Environment=KEY` and `$SOURCE_DATE_EPOCH` are read from;
    /// `None` reads the process environment.
    pub environment: Option<BTreeMap<String, String>>,
}

/// Where a recipe came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeOrigin {
    /// A mkosi project: `mkosi.conf` and friends.
    Mkosi,
    /// `kiln.ron`.
    Ron,
}

/// A loaded project.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The project directory, absolute and canonical.
    pub dir: PathBuf,
    pub recipe: Recipe,
    /// Problems kiln worked around, in the order they were found.
    pub warnings: Vec<ConfigWarning>,
    pub origin: RecipeOrigin,
    /// The configuration files read, in order, relative to the project directory.
    pub files: Vec<String>,
    /// Every assignment applied, with its file, line and column, in the order applied.
    pub assignments: Vec<Assignment>,
}

/// Reads the project in `dir`: `kiln.ron` when the directory has no `mkosi.conf`, else the mkosi
/// configuration (also from a `mkosi/` subdirectory, as mkosi allows). Programs the
/// configuration calls for (`systemctl --version`, an executable `mkosi.version`) run through
/// `host`.
pub fn load_project(
    dir: &Path,
    opts: &LoadOptions,
    host: &dyn ReaderHost,
) -> Result<Loaded, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::NoProjectDir {
            path: dir.to_path_buf(),
        });
    }
    let dir = std::fs::canonicalize(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let configdir = config_dir(&dir);
    let has_mkosi = configdir.join("mkosi.conf").exists();
    let ron_path = dir.join("kiln.ron");
    if ron_path.exists() {
        if has_mkosi {
            return Err(LoadError::TwoRecipes { dir });
        }
        let text = std::fs::read_to_string(&ron_path).map_err(|source| LoadError::Io {
            path: ron_path.clone(),
            source,
        })?;
        let recipe = from_ron(&text, "kiln.ron")?;
        return Ok(Loaded {
            dir,
            recipe,
            warnings: Vec::new(),
            origin: RecipeOrigin::Ron,
            files: vec!["kiln.ron".to_string()],
            assignments: Vec::new(),
        });
    }
    if !has_mkosi && !configdir.join("mkosi.conf.d").is_dir() {
        return Err(LoadError::NoRecipe { dir });
    }

    let env = Env::new(opts.environment.as_ref());
    let mut shared = load::Shared::new(&env, host, dir.clone());
    let recipe = finalize::load_mkosi(&mut shared, &configdir, opts);

    let mut seen = BTreeSet::new();
    let mut issues = Vec::new();
    for issue in std::mem::take(&mut shared.issues) {
        let key = (
            issue.message().to_string(),
            issue.location().cloned(),
            issue.is_error(),
        );
        if seen.insert(key) {
            issues.push(if opts.strict {
                issue.into_error()
            } else {
                issue
            });
        }
    }
    let issues = in_reading_order(issues);
    if issues.iter().any(ConfigIssue::is_error) {
        return Err(LoadError::Config(ConfigErrors::new(issues)));
    }
    Ok(Loaded {
        dir,
        recipe,
        warnings: issues,
        origin: RecipeOrigin::Mkosi,
        files: shared.files,
        assignments: shared.assignments,
    })
}

/// Issues grouped by file, in the order the files were first reported on, and by line within a
/// file (syntax errors are found before the values they sit between).
fn in_reading_order(issues: Vec<ConfigIssue>) -> Vec<ConfigIssue> {
    let mut files: Vec<Option<String>> = Vec::new();
    for issue in &issues {
        let file = issue.location().map(|l| l.file.clone());
        if !files.contains(&file) {
            files.push(file);
        }
    }
    let mut keyed: Vec<((usize, usize, usize), ConfigIssue)> = issues
        .into_iter()
        .map(|issue| {
            let file = issue.location().map(|l| l.file.clone());
            let rank = files.iter().position(|f| *f == file).unwrap_or(files.len());
            let (line, column) = issue.location().map_or((0, 0), |l| (l.line, l.column));
            ((rank, line, column), issue)
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, issue)| issue).collect()
}

/// mkosi's `finalize_configdir`: the configuration may live in a `mkosi/` subdirectory.
fn config_dir(dir: &Path) -> PathBuf {
    let sub = dir.join("mkosi");
    if !dir.join("mkosi.conf").exists()
        && !dir.join("mkosi.tools.conf").exists()
        && (sub.join("mkosi.conf").is_file() || sub.join("mkosi.tools.conf").exists())
    {
        return sub;
    }
    dir.to_path_buf()
}
