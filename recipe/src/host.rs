//! What the loader needs to know about the machine it runs on: the environment, the host's
//! distribution and release (mkosi's defaults for `Distribution=` and `Release=`), its
//! architecture, and shell-like expansion of `$VAR` and `~` in paths.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::model::Distribution;

/// The environment the project is loaded in.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// `None` reads the process environment.
    pub(crate) fn new(vars: Option<&BTreeMap<String, String>>) -> Env {
        let vars = match vars {
            Some(vars) => vars.clone(),
            None => std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        };
        Env { vars }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub(crate) fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The host's distribution and release, as mkosi detects them: `$MKOSI_HOST_DISTRIBUTION`
    /// and `$MKOSI_HOST_RELEASE` when both are set, else `/etc/os-release` (or
    /// `/usr/lib/os-release`). The distribution is `None` when the host runs one mkosi does not
    /// know.
    pub(crate) fn host_distribution(&self) -> (Option<Distribution>, Option<String>) {
        if let (Some(d), Some(r)) = (
            self.get("MKOSI_HOST_DISTRIBUTION"),
            self.get("MKOSI_HOST_RELEASE"),
        ) {
            return (Distribution::from_mkosi(d), Some(r.to_string()));
        }
        detect_distribution(Path::new("/"))
    }

    /// mkosi's default `Distribution=`: `$MKOSI_HOST_DISTRIBUTION`, else the host's, else `custom`.
    pub(crate) fn default_distribution(&self) -> Distribution {
        if let Some(d) = self.get("MKOSI_HOST_DISTRIBUTION") {
            return Distribution::from_mkosi(d).unwrap_or(Distribution::Custom);
        }
        detect_distribution(Path::new("/"))
            .0
            .unwrap_or(Distribution::Custom)
    }

    /// mkosi's default `Release=` for `distribution`: the host's release when the host runs the
    /// same distribution, else the distribution's default.
    pub(crate) fn default_release(&self, distribution: Distribution) -> Option<String> {
        let (host, release) = self.host_distribution();
        if host == Some(distribution)
            && let Some(release) = release
        {
            return Some(release);
        }
        distribution.default_release().map(str::to_string)
    }

    /// Python's `os.path.expandvars`: `$NAME` and `${NAME}` of set variables are replaced, others
    /// are left as written.
    pub(crate) fn expand_vars(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            match (name.is_empty(), self.get(name)) {
                (false, Some(value)) => out.push_str(value),
                _ => out.push_str(&rest[dollar..dollar + 1 + consumed]),
            }
            rest = &rest[dollar + 1 + consumed..];
        }
        out.push_str(rest);
        out
    }

    /// Python's `Path.expanduser` for the invoking user: a leading `~` is `$HOME`.
    pub(crate) fn expand_user(&self, path: &str) -> String {
        let Some(home) = self.get("HOME") else {
            return path.to_string();
        };
        if path == "~" {
            return home.to_string();
        }
        match path.strip_prefix("~/") {
            Some(rest) => format!("{}/{rest}", home.trim_end_matches('/')),
            None => path.to_string(),
        }
    }
}

/// Reads `os-release` below `root` as mkosi's `detect_distribution()` does.
pub(crate) fn detect_distribution(root: &Path) -> (Option<Distribution>, Option<String>) {
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")));
    let Ok(text) = text else {
        return (None, None);
    };
    let fields = parse_env_file(&text);
    let id = fields.get("ID").cloned().unwrap_or_default();
    let id_like = fields.get("ID_LIKE").cloned().unwrap_or_default();
    let mut version = if id == "opensuse-tumbleweed" {
        Some("tumbleweed".to_string())
    } else {
        fields.get("VERSION_ID").cloned()
    };
    let codename = fields.get("VERSION_CODENAME").cloned();
    let distribution = std::iter::once(id.as_str())
        .chain(id_like.split_whitespace())
        .filter(|i| !i.is_empty())
        .find_map(|i| {
            if i == "azurelinux" {
                Some(Distribution::Azure)
            } else {
                Distribution::from_mkosi(i)
            }
        });
    if let Some(d) = distribution {
        if matches!(
            d,
            Distribution::Debian | Distribution::Ubuntu | Distribution::Kali
        ) && codename.is_some()
        {
            version = codename;
        }
        if version.is_none() {
            version = d.default_release().map(str::to_string);
        }
    }
    (distribution, version)
}

/// `KEY=VALUE` lines with optional shell quotes, as in `os-release`.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let unquoted = match value.chars().next() {
            Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
                let inner = &value[1..value.len() - 1];
                if q == '"' {
                    unescape_double_quoted(inner)
                } else {
                    inner.to_string()
                }
            }
            _ => value.to_string(),
        };
        fields.insert(key.trim().to_string(), unquoted);
    }
    fields
}

fn unescape_double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ ('"' | '\\' | '$' | '`')) => out.push(next),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The host's architecture in mkosi's spelling.
pub(crate) fn native_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "riscv32" => "riscv32",
        "loongarch64" => "loongarch64",
        "s390x" => "s390x",
        "powerpc" => "ppc",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64-le",
        "powerpc64" => "ppc64",
        "mips" => "mips-le",
        "mips64" => "mips64-le",
        other => other,
    }
}

/// `path` made absolute against `base`, with `.` and `..` resolved without looking at the file
/// system.
pub(crate) fn absolutize(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Python's `Path.resolve()`: absolute, with symlinks resolved when the path exists.
pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    let absolute = absolutize(base, path);
    std::fs::canonicalize(&absolute).unwrap_or(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::new(Some(&vars))
    }

    #[test]
    fn expands_variables_like_python() {
        let e = env(&[("A", "x"), ("B_2", "y"), ("HOME", "/home/me")]);
        assert_eq!(e.expand_vars("$A/${B_2}/$C/${D}/$"), "x/y/$C/${D}/$");
        assert_eq!(e.expand_vars("a$A.b"), "ax.b");
        assert_eq!(e.expand_user("~/keys"), "/home/me/keys");
        assert_eq!(e.expand_user("~"), "/home/me");
        assert_eq!(e.expand_user("a/~"), "a/~");
    }

    #[test]
    fn host_from_the_environment() {
        let e = env(&[
            ("MKOSI_HOST_DISTRIBUTION", "debian"),
            ("MKOSI_HOST_RELEASE", "trixie"),
        ]);
        assert_eq!(e.default_distribution(), Distribution::Debian);
        assert_eq!(
            e.default_release(Distribution::Debian).as_deref(),
            Some("trixie")
        );
        assert_eq!(
            e.default_release(Distribution::Arch).as_deref(),
            Some("rolling")
        );
        assert_eq!(
            e.default_release(Distribution::Ubuntu).as_deref(),
            Some("devel")
        );
        assert_eq!(e.default_release(Distribution::Custom), None);
    }

    #[test]
    fn reads_os_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/os-release"),
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"22\"\nVERSION_CODENAME=noble\n",
        )
        .expect("write");
        assert_eq!(
            detect_distribution(dir.path()),
            (Some(Distribution::Ubuntu), Some("noble".into()))
        );
        std::fs::write(dir.path().join("etc/os-release"), "ID=arch\n").expect("write");
        assert_eq!(
            detect_distribution(dir.path()),
            (Some(Distribution::Arch), Some("rolling".into()))
        );
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(
            absolutize(Path::new("/a/b"), Path::new("../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            absolutize(Path::new("/a"), Path::new("/x/y")),
            PathBuf::from("/x/y")
        );
    }
}
