//! Finding what a UKI is made of inside the image tree, through its manifest: the
//! systemd-stub, the kernel and os-release. Symlinks are followed inside the tree only.
//!
//! The kernel is found with mkosi's rules (`gen_kernel_images` and `fixup_vmlinuz_location` in
//! mkosi): the directories of `usr/lib/modules/`, newest version first (the UAPI version
//! comparison); in each, `vmlinuz`, else `boot/vmlinuz-<kver>` when the modules directory has
//! no kernel of its own (Debian and Ubuntu install it there), else another `vmlinuz*` file that
//! is not itself a UKI, else the same for an uncompressed `vmlinux`. The first version that has
//! a kernel wins.
//!
//! `.osrel` is `usr/lib/os-release`, the file mkosi hands to ukify (and the one its
//! IMAGE_ID=/IMAGE_VERSION= edit writes), else `etc/os-release`.

use kiln_cache::{BlobId, Entry, EntryKind, Manifest, Store};
use kiln_recipe::compare_versions;

use super::error::UkiError;
use crate::pe::PeHeaders;
use crate::trees::resolve_in_tree;

/// Where kernels' modules directories are.
const MODULES_DIR: &str = "usr/lib/modules";

/// A regular file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path in the tree, symlinks resolved (`usr/lib/os-release`).
    pub path: String,
    pub blob: BlobId,
    pub size: u64,
}

/// The kernel a UKI boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// The name of its `usr/lib/modules/` directory (`6.1.0-57-amd64`): the `.uname` section.
    pub version: String,
    pub file: TreeFile,
}

/// The EFI name of an architecture in mkosi's spelling (`x86-64` -> `x64`), as systemd names
/// its stubs; `None` for architectures without UEFI.
pub fn efi_arch(architecture: &str) -> Option<&'static str> {
    Some(match architecture {
        "x86" => "ia32",
        "x86-64" => "x64",
        "arm" => "arm",
        "arm64" => "aa64",
        "riscv32" => "riscv32",
        "riscv64" => "riscv64",
        "loongarch64" => "loongarch64",
        _ => return None,
    })
}

/// The stub's path in the tree for an EFI architecture.
pub fn stub_path(efi_arch: &str) -> String {
    format!("usr/lib/systemd/boot/efi/linux{efi_arch}.efi.stub")
}

/// What is at a path of the tree, symlinks resolved.
enum Lookup {
    File(TreeFile),
    Missing,
    Other(&'static str, String),
}

fn lookup(tree: &Manifest, path: &str) -> Result<Lookup, UkiError> {
    let resolved = resolve_in_tree(tree, path)?;
    Ok(match tree.get(&resolved) {
        Some(Entry {
            kind: EntryKind::File { blob, size },
            ..
        }) => Lookup::File(TreeFile {
            path: resolved,
            blob: *blob,
            size: *size,
        }),
        Some(entry) => Lookup::Other(entry.kind.type_name(), resolved),
        None => Lookup::Missing,
    })
}

/// A regular file at `path`, `None` if nothing is there, an error if something else is.
fn regular_file(tree: &Manifest, path: &str) -> Result<Option<TreeFile>, UkiError> {
    match lookup(tree, path)? {
        Lookup::File(file) => Ok(Some(file)),
        Lookup::Missing => Ok(None),
        Lookup::Other(kind, path) => Err(UkiError::NotAFile { path, kind }),
    }
}

/// The tree's os-release, if it has one.
pub fn find_os_release(tree: &Manifest) -> Result<Option<TreeFile>, UkiError> {
    match regular_file(tree, "usr/lib/os-release")? {
        Some(file) => Ok(Some(file)),
        None => regular_file(tree, "etc/os-release"),
    }
}

/// The systemd-stub for `efi_arch`.
pub fn find_stub(
    tree: &Manifest,
    efi_arch: &str,
    hints: &PackageHints,
) -> Result<TreeFile, UkiError> {
    let path = stub_path(efi_arch);
    regular_file(tree, &path)?.ok_or_else(|| UkiError::MissingStub {
        path,
        package: hints.stub.clone(),
    })
}

/// The kernel mkosi would put in the UKI.
pub fn find_kernel(
    store: &Store,
    tree: &Manifest,
    hints: &PackageHints,
) -> Result<KernelImage, UkiError> {
    let modules = resolve_in_tree(tree, MODULES_DIR)?;
    let mut versions: Vec<String> = Vec::new();
    if matches!(tree.get(&modules), Some(entry) if entry.kind.is_dir()) {
        for entry in tree.subtree(&modules) {
            let Some(name) = child_name(&modules, &entry.path) else {
                continue;
            };
            let is_dir = match &entry.kind {
                EntryKind::Dir => true,
                EntryKind::Symlink { .. } => {
                    let resolved = resolve_in_tree(tree, &entry.path)?;
                    matches!(tree.get(&resolved), Some(target) if target.kind.is_dir())
                }
                _ => false,
            };
            if is_dir {
                versions.push(name.to_string());
            }
        }
    }
    versions.sort_by(|a, b| compare_versions(b, a).then_with(|| a.cmp(b)));

    for version in &versions {
        let dir = resolve_in_tree(tree, &format!("{modules}/{version}"))?;
        if let Some(file) = kernel_in(store, tree, &dir, version)? {
            return Ok(KernelImage {
                version: version.clone(),
                file,
            });
        }
    }
    let version = versions.first().map_or("<version>", String::as_str);
    Err(UkiError::MissingKernel {
        modules_path: format!("{MODULES_DIR}/{version}/vmlinuz"),
        boot_path: format!("boot/vmlinuz-{version}"),
        package: hints.kernel.clone(),
    })
}

/// The kernel of one modules directory, if it has one.
fn kernel_in(
    store: &Store,
    tree: &Manifest,
    dir: &str,
    version: &str,
) -> Result<Option<TreeFile>, UkiError> {
    let mut names: Vec<String> = tree
        .subtree(dir)
        .filter_map(|entry| child_name(dir, &entry.path).map(str::to_string))
        .collect();
    names.sort();
    for kind in ["vmlinuz", "vmlinux"] {
        let mut candidates: Vec<TreeFile> = Vec::new();
        match lookup(tree, &format!("{dir}/{kind}"))? {
            Lookup::File(file) => candidates.push(file),
            // mkosi copies /boot's kernel into a modules directory that has none of its own;
            // it ignores /boot's symlinks.
            _ => {
                if let Some(Entry {
                    kind: EntryKind::File { blob, size },
                    path,
                    ..
                }) = tree.get(&format!("boot/{kind}-{version}"))
                {
                    candidates.push(TreeFile {
                        path: path.clone(),
                        blob: *blob,
                        size: *size,
                    });
                }
            }
        }
        for name in names
            .iter()
            .filter(|name| name.starts_with(kind) && *name != kind)
        {
            if let Lookup::File(file) = lookup(tree, &format!("{dir}/{name}"))? {
                candidates.push(file);
            }
        }
        if let Some(kernel) = candidates
            .into_iter()
            .find(|candidate| !is_uki(store, candidate))
        {
            return Ok(Some(kernel));
        }
    }
    Ok(None)
}

/// The name of `path` if it is a direct child of `dir`.
fn child_name<'a>(dir: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// mkosi's test for a UKI among kernel images: a PE with `.linux`, `.sdmagic` and `.osrel`.
fn is_uki(store: &Store, file: &TreeFile) -> bool {
    let Ok(mut blob) = store.open_blob(&file.blob) else {
        return false;
    };
    match PeHeaders::read(&mut blob) {
        Ok(headers) => [".linux", ".sdmagic", ".osrel"]
            .iter()
            .all(|name| headers.section(name).is_some()),
        Err(_) => false,
    }
}

/// Which package provides the stub and the kernel on the image's distribution, for error
/// messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageHints {
    pub stub: String,
    pub kernel: String,
}

impl PackageHints {
    /// From the image's os-release (`ID=`, `ID_LIKE=`), if it has one.
    pub fn for_os_release(os_release: Option<&str>, architecture: &str) -> PackageHints {
        let mut ids: Vec<String> = Vec::new();
        for line in os_release.unwrap_or_default().lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            match key.trim() {
                "ID" => ids.insert(0, value.to_string()),
                "ID_LIKE" => ids.extend(value.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        let known = ids.iter().find_map(|id| match id.as_str() {
            "ubuntu" => Some(("systemd-boot-efi", "linux-image-generic".to_string())),
            "debian" => Some((
                "systemd-boot-efi",
                format!("linux-image-{}", debian_arch(architecture)),
            )),
            "arch" => Some(("systemd", "linux".to_string())),
            "fedora" => Some(("systemd-boot-unsigned", "kernel-core".to_string())),
            "opensuse" | "suse" => Some(("systemd-boot", "kernel-default".to_string())),
            _ => None,
        });
        match known {
            Some((stub, kernel)) => PackageHints {
                stub: format!("`{stub}`"),
                kernel: format!("`{kernel}`"),
            },
            None => PackageHints {
                stub: "the package that provides it (`systemd-boot-efi` on Debian and Ubuntu, `systemd` on Arch Linux)".to_string(),
                kernel: format!(
                    "the distribution's kernel package (`linux-image-{}` on Debian, `linux` on Arch Linux)",
                    debian_arch(architecture)
                ),
            },
        }
    }
}

/// Debian's name of an architecture, as its kernel meta-packages use it.
fn debian_arch(architecture: &str) -> &str {
    match architecture {
        "x86-64" => "amd64",
        "x86" => "686",
        "arm" => "armmp",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_distribution() {
        let debian = PackageHints::for_os_release(Some("ID=debian\n"), "x86-64");
        assert_eq!(debian.stub, "`systemd-boot-efi`");
        assert_eq!(debian.kernel, "`linux-image-amd64`");
        let arch = PackageHints::for_os_release(Some("NAME=\"Arch Linux\"\nID=arch\n"), "x86-64");
        assert_eq!(
            (arch.stub.as_str(), arch.kernel.as_str()),
            ("`systemd`", "`linux`")
        );
        let mint = PackageHints::for_os_release(
            Some("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n"),
            "x86-64",
        );
        assert_eq!(mint.kernel, "`linux-image-generic`");
        let unknown = PackageHints::for_os_release(None, "arm64");
        assert!(
            unknown.stub.contains("systemd-boot-efi"),
            "{}",
            unknown.stub
        );
        assert!(
            unknown.kernel.contains("linux-image-arm64"),
            "{}",
            unknown.kernel
        );
    }

    #[test]
    fn efi_names() {
        assert_eq!(efi_arch("x86-64"), Some("x64"));
        assert_eq!(efi_arch("arm64"), Some("aa64"));
        assert_eq!(efi_arch("s390x"), None);
        assert_eq!(
            stub_path("x64"),
            "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
        );
    }
}
