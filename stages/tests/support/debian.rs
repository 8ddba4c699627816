//! A real systemd-stub and kernel from the Debian mirror configured in apt, for the UKI tests.
//!
//! `systemd-boot-efi` and the kernel `linux-image-amd64` depends on are downloaded with
//! `apt-get download` into `/var/tmp/kiln-test-debs` (kept between runs), and the stub and the
//! kernel are extracted once into `extracted/<package file>/` there. Without the mirror, the
//! `.deb`s already there are used; without any, the caller skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where downloaded packages and extracted files are kept.
pub(crate) const DEB_CACHE: &str = "/var/tmp/kiln-test-debs";

/// A systemd-stub and a kernel.
#[derive(Debug, Clone)]
pub(crate) struct BootFiles {
    pub stub: PathBuf,
    pub kernel: PathBuf,
    /// The kernel's version (`6.1.0-57-amd64`).
    pub kernel_version: String,
}

static LOCK: Mutex<()> = Mutex::new(());

/// The stub and kernel, or why they cannot be had.
pub(crate) fn boot_files() -> Result<BootFiles, String> {
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = Path::new(DEB_CACHE);
    std::fs::create_dir_all(cache).map_err(|e| format!("cannot create {DEB_CACHE}: {e}"))?;
    for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar"] {
        if !tool_exists(tool) {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    let kernel_package = current_kernel_package();
    let mut wanted = vec!["systemd-boot-efi".to_string()];
    wanted.extend(kernel_package.clone());
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|package| cached_deb(cache, package).is_none())
        .collect();
    if !missing.is_empty() {
        // Failure is fine when older copies are there: they are used below.
        let _ = Command::new("apt-get")
            .arg("download")
            .args(&missing)
            .current_dir(cache)
            .output();
    }

    let stub_deb = cached_deb(cache, "systemd-boot-efi")
        .ok_or("cannot download systemd-boot-efi from the Debian mirror")?;
    let kernel_deb = kernel_package
        .as_deref()
        .and_then(|package| cached_deb(cache, package))
        .or_else(|| cached_deb(cache, "linux-image-"))
        .ok_or("cannot download a linux-image package from the Debian mirror")?;

    let stub_dir = extract(&stub_deb, "./usr/lib/systemd/boot/efi/")?;
    let kernel_dir = extract(&kernel_deb, "./boot/")?;
    let stub = stub_dir.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    let kernel = std::fs::read_dir(kernel_dir.join("boot"))
        .map_err(|e| format!("cannot list the kernel package's /boot: {e}"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or("the kernel package has no /boot/vmlinuz-*")?;
    let kernel_version = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    Ok(BootFiles {
        stub,
        kernel,
        kernel_version,
    })
}

fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The package `linux-image-amd64` depends on (`linux-image-6.1.0-57-amd64`).
fn current_kernel_package() -> Option<String> {
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|package| package.starts_with("linux-image-"))
        .map(str::to_string)
}

/// The newest cached `.deb` whose name starts with `prefix` (`package_`, or a prefix).
fn cached_deb(cache: &Path, prefix: &str) -> Option<PathBuf> {
    let exact = format!("{prefix}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".deb")
                && if prefix.ends_with('-') {
                    name.starts_with(prefix)
                } else {
                    name.starts_with(&exact)
                }
        })
        .collect();
    found.sort();
    found.pop()
}

/// Extracts the members under `member` of a `.deb` once; returns the extraction root.
fn extract(deb: &Path, member: &str) -> Result<PathBuf, String> {
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let root = Path::new(DEB_CACHE).join("extracted").join(&name);
    if root.is_dir() {
        return Ok(root);
    }
    let partial = Path::new(DEB_CACHE)
        .join("extracted")
        .join(format!("{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("cannot create {partial:?}: {e}"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "$3*""#)
        .args(["sh"])
        .arg(deb)
        .arg(&partial)
        .arg(member)
        .status()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !status.success() {
        return Err(format!("cannot extract {member} from {}", deb.display()));
    }
    match std::fs::rename(&partial, &root) {
        Ok(()) => Ok(root),
        // Another process extracted it first.
        Err(_) if root.is_dir() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(root)
        }
        Err(e) => Err(format!("cannot rename {partial:?}: {e}")),
    }
}
