//! A resolved package set: every package that will be installed, with its exact version and
//! architecture, and the text form it is keyed, recorded and locked in.
//!
//! The text is one line per package, `NAME VERSION ARCH`, sorted by name and ending in a newline,
//! so `graph explain` shows a change line by line (`systemd 252.38 amd64 -> 252.39 amd64`).

use std::collections::BTreeMap;
use std::fmt;

/// One package of a resolved set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    /// As the package manager names it: `amd64`, `all`, `x86_64`, `any`.
    pub arch: String,
}

impl fmt::Display for ResolvedPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.name, self.version, self.arch)
    }
}

/// Every package a resolution yields, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageSet {
    packages: BTreeMap<String, ResolvedPackage>,
}

/// A line of a listing that is not `NAME VERSION ARCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Line {line} is not `NAME VERSION ARCH`: `{text}`")]
pub struct ListingError {
    pub line: usize,
    pub text: String,
}

impl PackageSet {
    /// The set of `packages`; a name given twice keeps its last entry.
    pub fn new(packages: impl IntoIterator<Item = ResolvedPackage>) -> PackageSet {
        PackageSet {
            packages: packages
                .into_iter()
                .map(|package| (package.name.clone(), package))
                .collect(),
        }
    }

    /// Read the text form back. Blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<PackageSet, ListingError> {
        let mut packages = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            let [name, version, arch] = words[..] else {
                return Err(ListingError {
                    line: number + 1,
                    text: line.to_string(),
                });
            };
            packages.push(ResolvedPackage {
                name: name.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
            });
        }
        Ok(PackageSet::new(packages))
    }

    /// The text form: one `NAME VERSION ARCH` line per package, sorted, each ending in `\n`.
    pub fn listing(&self) -> String {
        self.packages
            .values()
            .map(|package| format!("{package}\n"))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&ResolvedPackage> {
        self.packages.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResolvedPackage> {
        self.packages.values()
    }

    pub fn len(&self) -> usize {
        self.packages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// What changes from `self` to `newer`, in order of name.
    pub fn changes(&self, newer: &PackageSet) -> Vec<PackageChange> {
        let mut changes = Vec::new();
        for (name, new) in &newer.packages {
            match self.packages.get(name) {
                None => changes.push(PackageChange::Added(new.clone())),
                Some(old) if old != new => changes.push(PackageChange::Changed {
                    before: old.clone(),
                    after: new.clone(),
                }),
                Some(_) => {}
            }
        }
        for (name, old) in &self.packages {
            if !newer.packages.contains_key(name) {
                changes.push(PackageChange::Removed(old.clone()));
            }
        }
        changes.sort_by(|a, b| a.name().cmp(b.name()));
        changes
    }
}

/// One difference between two package sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageChange {
    Added(ResolvedPackage),
    Removed(ResolvedPackage),
    Changed {
        before: ResolvedPackage,
        after: ResolvedPackage,
    },
}

impl PackageChange {
    pub fn name(&self) -> &str {
        match self {
            PackageChange::Added(package) | PackageChange::Removed(package) => &package.name,
            PackageChange::Changed { after, .. } => &after.name,
        }
    }
}

impl fmt::Display for PackageChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageChange::Added(package) => {
                write!(
                    f,
                    "{} {} {} added",
                    package.name, package.version, package.arch
                )
            }
            PackageChange::Removed(package) => {
                write!(
                    f,
                    "{} {} {} removed",
                    package.name, package.version, package.arch
                )
            }
            PackageChange::Changed { before, after } => write!(
                f,
                "{} {} {} -> {} {}",
                after.name, before.version, before.arch, after.version, after.arch
            ),
        }
    }
}

/// Changes as indented lines, for error messages.
pub(super) fn describe_changes(changes: &[PackageChange]) -> String {
    changes
        .iter()
        .map(|change| format!("  {change}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, version: &str, arch: &str) -> ResolvedPackage {
        ResolvedPackage {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
        }
    }

    #[test]
    fn the_listing_is_sorted_and_reads_back() {
        let set = PackageSet::new([
            package("systemd", "252.39-1~deb12u1", "amd64"),
            package("base-files", "12.4+deb12u11", "amd64"),
            package("adduser", "3.134", "all"),
        ]);
        let text = set.listing();
        assert_eq!(
            text,
            "adduser 3.134 all\nbase-files 12.4+deb12u11 amd64\nsystemd 252.39-1~deb12u1 amd64\n"
        );
        assert_eq!(PackageSet::parse(&text).unwrap(), set);
        assert_eq!(
            PackageSet::parse(&format!("# comment\n\n{text}")).unwrap(),
            set
        );
    }

    #[test]
    fn a_malformed_line_names_its_number() {
        let error = PackageSet::parse("a 1 all\nb 2\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert_eq!(error.text, "b 2");
    }

    #[test]
    fn changes_say_what_was_added_removed_and_upgraded() {
        let old = PackageSet::new([
            package("systemd", "252.38", "amd64"),
            package("nano", "7.2", "amd64"),
            package("less", "590", "amd64"),
        ]);
        let new = PackageSet::new([
            package("systemd", "252.39", "amd64"),
            package("less", "590", "amd64"),
            package("linux-image-6.1.0-50-amd64", "6.1.1", "amd64"),
        ]);
        let shown: Vec<String> = old.changes(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "linux-image-6.1.0-50-amd64 6.1.1 amd64 added",
                "nano 7.2 amd64 removed",
                "systemd 252.38 amd64 -> 252.39 amd64",
            ]
        );
        assert!(new.changes(&new).is_empty());
    }
}
