//! `kiln.lock`: the package set each packages stage resolved to, written by `kiln lock` and
//! checked by `kiln build --locked`.
//!
//! ```text
//! # kiln.lock: …
//! [packages]
//! adduser 3.134 all
//! base-files 12.4+deb12u11 amd64
//! ```
//!
//! One section per packages stage, named by the stage, holding its listing
//! ([`PackageSet::listing`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::PackagesError;
use super::listing::PackageSet;

/// The file's name in the project directory.
pub const LOCK_FILE: &str = "kiln.lock";

const HEADER: &str = "# kiln.lock: the exact packages each image installs, written by `kiln lock`.\n\
# `kiln build --locked` fails when the mirror resolves the recipe to anything else.\n";

/// The resolved set of each packages stage, by stage name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockFile {
    pub stages: BTreeMap<String, PackageSet>,
}

impl LockFile {
    /// The lock file of a project, `None` when there is none.
    pub fn read(project_dir: &Path) -> Result<Option<LockFile>, PackagesError> {
        let path = project_dir.join(LOCK_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => LockFile::parse(&text, &path).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PackagesError::io("read", path, source)),
        }
    }

    /// Read the text of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<LockFile, PackagesError> {
        let syntax = |line: usize, message: String| PackagesError::LockSyntax {
            path: PathBuf::from(path),
            line,
            message,
        };
        let mut sections: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(name) = trimmed
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
            {
                if sections.contains_key(name) {
                    return Err(syntax(
                        number + 1,
                        format!("section `[{name}]` appears twice"),
                    ));
                }
                sections.insert(name.to_string(), (number + 1, String::new()));
                current = Some(name.to_string());
                continue;
            }
            let Some(section) = current.as_ref().and_then(|name| sections.get_mut(name)) else {
                return Err(syntax(
                    number + 1,
                    "a package line before any `[stage]` section".to_string(),
                ));
            };
            section.1.push_str(trimmed);
            section.1.push('\n');
        }
        let mut stages = BTreeMap::new();
        for (name, (first_line, listing)) in sections {
            let set = PackageSet::parse(&listing)
                .map_err(|error| syntax(first_line, error.to_string()))?;
            stages.insert(name, set);
        }
        Ok(LockFile { stages })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = HEADER.to_string();
        for (name, set) in &self.stages {
            text.push_str(&format!("\n[{name}]\n"));
            text.push_str(&set.listing());
        }
        text
    }

    /// Write it to the project directory (to a temporary file, renamed into place).
    pub fn write(&self, project_dir: &Path) -> Result<PathBuf, PackagesError> {
        let path = project_dir.join(LOCK_FILE);
        let temp = project_dir.join(format!(".{LOCK_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&temp, self.render())
            .map_err(|source| PackagesError::io("write", &temp, source))?;
        std::fs::rename(&temp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            PackagesError::io("write", &path, source)
        })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_reads_back_what_it_wrote() {
        let mut lock = LockFile::default();
        lock.stages.insert(
            "packages".to_string(),
            PackageSet::parse("systemd 252.39 amd64\nadduser 3.134 all\n").unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = lock.write(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("kiln.lock"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[packages]\nadduser 3.134 all\nsystemd 252.39 amd64\n"),
            "{text}"
        );
        assert_eq!(LockFile::read(dir.path()).unwrap(), Some(lock));
    }

    #[test]
    fn a_missing_lock_file_is_none_and_a_bad_one_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LockFile::read(dir.path()).unwrap(), None);
        let error = LockFile::parse("# c\nfoo 1 all\n", Path::new("kiln.lock")).unwrap_err();
        assert!(
            matches!(error, PackagesError::LockSyntax { line: 2, .. }),
            "{error:?}"
        );
        let error = LockFile::parse("[packages]\nfoo 1\n", Path::new("kiln.lock")).unwrap_err();
        assert!(
            matches!(error, PackagesError::LockSyntax { .. }),
            "{error:?}"
        );
    }
}
