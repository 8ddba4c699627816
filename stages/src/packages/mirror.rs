//! Where packages come from when the recipe does not say: mkosi's rules for `Mirror=` and the
//! distributions' names for `Architecture=`.
//!
//! mkosi's `Mirror=` is the archive's host: for Debian `/debian` is appended (`/ubuntu` for
//! Ubuntu), for Arch `/$repo/os/$arch`. When it is unset and the host runs the same
//! distribution, the host's own mirror is used (the first archive of its apt sources, or the first
//! `Server` of its pacman mirrorlist), else mkosi's default.

use std::path::Path;

use kiln_recipe::Distribution;

/// The Debian (dpkg) name of an mkosi architecture.
pub fn dpkg_architecture(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "x86-64" => "amd64",
        "x86" => "i386",
        "arm64" => "arm64",
        "arm" => "armhf",
        "ppc64-le" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64-le" => "mips64el",
        _ => return None,
    })
}

/// The pacman name of an mkosi architecture (Arch Linux builds for x86-64; Arch Linux ARM for
/// arm64).
pub fn pacman_architecture(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "x86-64" => "x86_64",
        "arm64" => "aarch64",
        _ => return None,
    })
}

/// mkosi's default mirror of a distribution.
pub fn default_mirror(distribution: Distribution, architecture: &str) -> String {
    match distribution {
        Distribution::Ubuntu if matches!(architecture, "x86-64" | "x86") => {
            "http://archive.ubuntu.com"
        }
        Distribution::Ubuntu => "http://ports.ubuntu.com",
        Distribution::Arch => "https://fastly.mirror.pkgbuild.com",
        _ => "http://deb.debian.org",
    }
    .to_string()
}

/// The mirror to use: `Mirror=`, else the host's when it runs the same distribution, else mkosi's
/// default. Trailing slashes are dropped.
pub fn mirror(configured: Option<&str>, distribution: Distribution, architecture: &str) -> String {
    let chosen = match configured {
        Some(mirror) if !mirror.trim().is_empty() => mirror.trim().to_string(),
        _ => host_mirror(Path::new("/"), distribution)
            .unwrap_or_else(|| default_mirror(distribution, architecture)),
    };
    chosen.trim_end_matches('/').to_string()
}

/// The mirror the host at `root` uses for `distribution`, when it runs that distribution.
pub fn host_mirror(root: &Path, distribution: Distribution) -> Option<String> {
    if host_distribution(root)? != distribution.as_str() {
        return None;
    }
    match distribution {
        Distribution::Debian => apt_uris(root)
            .into_iter()
            .find_map(|uri| archive_host(&uri, "/debian")),
        Distribution::Ubuntu => apt_uris(root)
            .into_iter()
            .find_map(|uri| archive_host(&uri, "/ubuntu")),
        Distribution::Arch => {
            let text = std::fs::read_to_string(root.join("etc/pacman.d/mirrorlist")).ok()?;
            text.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                if key.trim() != "Server" {
                    return None;
                }
                let value = value.trim();
                Some(
                    value
                        .strip_suffix("/$repo/os/$arch")
                        .unwrap_or(value)
                        .to_string(),
                )
            })
        }
        _ => None,
    }
}

/// `ID=` of the host's os-release.
fn host_distribution(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("ID=")?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

/// Every URI of a `deb` source of the host, in the order apt reads them.
fn apt_uris(root: &Path) -> Vec<String> {
    let mut uris = Vec::new();
    if let Ok(text) = std::fs::read_to_string(root.join("etc/apt/sources.list")) {
        uris.extend(one_line_uris(&text));
    }
    let mut parts: Vec<_> = std::fs::read_dir(root.join("etc/apt/sources.list.d"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    parts.sort();
    for part in parts {
        let Ok(text) = std::fs::read_to_string(&part) else {
            continue;
        };
        match part.extension().and_then(|ext| ext.to_str()) {
            Some("list") => uris.extend(one_line_uris(&text)),
            Some("sources") => uris.extend(deb822_uris(&text)),
            _ => {}
        }
    }
    uris
}

fn one_line_uris(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim();
            // Options in brackets come before the URI.
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1.trim(),
                None => rest,
            };
            rest.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

fn deb822_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut stanza_uris = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim() {
                "Types" => types = value.split_whitespace().map(str::to_string).collect(),
                "URIs" => stanza_uris = value.split_whitespace().map(str::to_string).collect(),
                "Enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|kind| kind == "deb") {
            uris.extend(stanza_uris);
        }
    }
    uris
}

/// `http://deb.debian.org/debian/` -> `http://deb.debian.org`, for the archive path `/debian`.
fn archive_host(uri: &str, path: &str) -> Option<String> {
    let trimmed = uri.trim_end_matches('/');
    trimmed.strip_suffix(path).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        dir
    }

    #[test]
    fn a_debian_host_lends_its_archive_host_from_deb822_sources() {
        let root = host(&[
            ("etc/os-release", "NAME=\"Debian GNU/Linux\"\nID=debian\n"),
            (
                "etc/apt/sources.list.d/debian.sources",
                "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\nComponents: main\n\n\
                 Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n",
            ),
        ]);
        assert_eq!(
            host_mirror(root.path(), Distribution::Debian).as_deref(),
            Some("http://mirror.example")
        );
        assert_eq!(host_mirror(root.path(), Distribution::Ubuntu), None);
    }

    #[test]
    fn one_line_sources_with_options_are_read() {
        let root = host(&[
            ("etc/os-release", "ID=debian\n"),
            (
                "etc/apt/sources.list",
                "# comment\ndeb-src http://src.example/debian bookworm main\n\
                 deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n",
            ),
        ]);
        assert_eq!(
            host_mirror(root.path(), Distribution::Debian).as_deref(),
            Some("http://one.example")
        );
    }

    #[test]
    fn an_arch_host_lends_its_first_server() {
        let root = host(&[
            ("etc/os-release", "ID=arch\n"),
            (
                "etc/pacman.d/mirrorlist",
                "#Server = https://old.example/$repo/os/$arch\nServer = https://new.example/$repo/os/$arch\n",
            ),
        ]);
        assert_eq!(
            host_mirror(root.path(), Distribution::Arch).as_deref(),
            Some("https://new.example")
        );
    }

    #[test]
    fn a_configured_mirror_wins_and_defaults_are_mkosis() {
        assert_eq!(
            mirror(Some("http://m.example/"), Distribution::Debian, "x86-64"),
            "http://m.example"
        );
        assert_eq!(
            default_mirror(Distribution::Ubuntu, "arm64"),
            "http://ports.ubuntu.com"
        );
        assert_eq!(dpkg_architecture("x86-64"), Some("amd64"));
        assert_eq!(pacman_architecture("arm64"), Some("aarch64"));
        assert_eq!(pacman_architecture("s390x"), None);
    }
}
