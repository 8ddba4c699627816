//! The uki stage: the image's systemd-stub, kernel and os-release, the initrd and the command
//! line, assembled into one UKI as mkosi has ukify assemble it.
//!
//! Sections, in ukify's order: `.osrel` (the tree's os-release as it is), `.cmdline`
//! (`KernelCommandLine=` joined with spaces and ending in a NUL byte, as mkosi writes it for
//! older stubs; left out when empty, as mkosi does), `.uname` (the kernel's version),
//! `.initrd`, `.linux` (VirtualSize = the kernel's SizeOfImage) and `.sbat` (the stub's and the
//! kernel's SBAT lines plus kiln's).

use std::fs::File;
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, OutputKind, PutMode, Store};
use kiln_engine::{Input, Stage, StageContext, StageError};

use super::assemble::{UkiSection, assemble_uki};
use super::error::UkiError;
use super::lookup::{PackageHints, efi_arch, find_kernel, find_os_release, find_stub};
use super::sbat::{KILN_SBAT_LINE, merge_sbat};
use crate::pe::PeHeaders;

/// The most bytes of a `.sbat` section kiln reads.
const MAX_SBAT: u64 = 64 << 10;

/// Everything a UKI is made of, as files, for [`ukify_sections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiInputs {
    pub stub: PathBuf,
    pub kernel: PathBuf,
    /// The kernel's version: the `.uname` section.
    pub kernel_version: String,
    pub os_release: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line (empty: no `.cmdline` section).
    pub cmdline: String,
}

/// The sections ukify would add for `inputs`, in its order.
///
/// ```no_run
/// use kiln_stages::uki::{assemble_uki, ukify_sections, UkiInputs};
/// let inputs = UkiInputs {
///     stub: "linuxx64.efi.stub".into(),
///     kernel: "vmlinuz".into(),
///     kernel_version: "6.1.0-57-amd64".into(),
///     os_release: "os-release".into(),
///     initrd: "initrd.cpio.zst".into(),
///     cmdline: "console=ttyS0".into(),
/// };
/// assemble_uki(&inputs.stub, &ukify_sections(&inputs)?, "image.efi".as_ref())?;
/// # Ok::<(), kiln_stages::uki::UkiError>(())
/// ```
pub fn ukify_sections(inputs: &UkiInputs) -> Result<Vec<UkiSection>, UkiError> {
    let stub_sbat = pe_section(&inputs.stub, ".sbat")
        .map_err(|source| UkiError::Stub {
            path: inputs.stub.clone(),
            source,
        })?
        .unwrap_or_default();
    // A kernel that is not a PE image has neither SizeOfImage nor `.sbat` (ukify's rule).
    let kernel = PeHeaders::read(&mut open(&inputs.kernel)?).ok();
    let kernel_sbat = match &kernel {
        Some(_) => pe_section(&inputs.kernel, ".sbat").ok().flatten(),
        None => None,
    }
    .unwrap_or_default();

    let mut sections = vec![UkiSection::file(".osrel", &inputs.os_release)];
    if !inputs.cmdline.is_empty() {
        let mut cmdline = inputs.cmdline.clone().into_bytes();
        cmdline.push(0);
        sections.push(UkiSection::bytes(".cmdline", cmdline));
    }
    sections.push(UkiSection::bytes(
        ".uname",
        inputs.kernel_version.as_bytes(),
    ));
    sections.push(UkiSection::file(".initrd", &inputs.initrd));
    sections.push(
        UkiSection::file(".linux", &inputs.kernel)
            .with_virtual_size(kernel.map(|headers| headers.optional.size_of_image)),
    );
    sections.push(UkiSection::bytes(
        ".sbat",
        merge_sbat(
            [stub_sbat.as_slice(), kernel_sbat.as_slice()],
            &[KILN_SBAT_LINE],
        ),
    ));
    Ok(sections)
}

fn open(path: &Path) -> Result<File, UkiError> {
    File::open(path).map_err(|source| UkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The content of a PE file's section, if it has one.
fn pe_section(path: &Path, name: &str) -> Result<Option<Vec<u8>>, crate::pe::PeError> {
    let mut file = File::open(path)?;
    let headers = PeHeaders::read(&mut file)?;
    match headers.section(name) {
        Some(section) => Ok(Some(headers.read_section(&mut file, section, MAX_SBAT)?)),
        None => Ok(None),
    }
}

/// Builds the UKI of an image tree: inputs `tree` (the finished image tree) and `initrd` (a
/// blob: the compressed initrd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiStage {
    /// The node's name, `uki` unless several images need one each.
    pub name: String,
    /// The stage whose output is the finished image tree: `.osrel` comes from it.
    pub tree: String,
    /// The stage whose tree the kernel and the stub come from, when not `tree` (mkosi takes
    /// them before RemoveFiles= and the finalize scripts run).
    pub esp: Option<String>,
    /// The stage whose output is the initrd.
    pub initrd: String,
    /// `Architecture=`, in mkosi's spelling (`x86-64`): chooses the stub.
    pub architecture: String,
    /// `KernelCommandLine=`.
    pub kernel_command_line: Vec<String>,
}

impl UkiStage {
    pub fn new(
        tree: impl Into<String>,
        initrd: impl Into<String>,
        architecture: impl Into<String>,
        kernel_command_line: Vec<String>,
    ) -> UkiStage {
        UkiStage {
            name: "uki".to_string(),
            tree: tree.into(),
            esp: None,
            initrd: initrd.into(),
            architecture: architecture.into(),
            kernel_command_line,
        }
    }

    /// The `.cmdline` text: `KernelCommandLine=` joined with spaces.
    pub fn cmdline(&self) -> String {
        self.kernel_command_line.join(" ")
    }

    /// Finds the parts in the trees and assembles the UKI at `out`: the stub and the kernel in
    /// `esp`, the os-release in `tree`.
    pub fn build(
        &self,
        store: &Store,
        tree: &Digest,
        esp: &Digest,
        initrd: &Digest,
        out: &Path,
    ) -> Result<(), UkiError> {
        let efi_arch = efi_arch(&self.architecture).ok_or_else(|| UkiError::NoUefi {
            architecture: self.architecture.clone(),
        })?;
        let manifest = store.manifest(tree)?;
        let esp_manifest = if esp == tree {
            manifest.clone()
        } else {
            store.manifest(esp)?
        };
        let os_release = find_os_release(&manifest)?;
        let os_release_text = os_release
            .as_ref()
            .and_then(|file| store.read_blob(&file.blob).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let hints = PackageHints::for_os_release(os_release_text.as_deref(), &self.architecture);
        let stub = find_stub(&esp_manifest, efi_arch, &hints)?;
        let kernel = find_kernel(store, &esp_manifest, &hints)?;
        let os_release = os_release.ok_or(UkiError::MissingOsRelease)?;
        // Their bytes make the UKI: a damaged object fails the stage instead.
        store.verify_blobs([&stub.blob, &kernel.file.blob, &os_release.blob, initrd])?;
        let inputs = UkiInputs {
            stub: store.blob_path(&stub.blob)?,
            kernel: store.blob_path(&kernel.file.blob)?,
            kernel_version: kernel.version,
            os_release: store.blob_path(&os_release.blob)?,
            initrd: store.blob_path(initrd)?,
            cmdline: self.cmdline(),
        };
        assemble_uki(&inputs.stub, &ukify_sections(&inputs)?, out)?;
        Ok(())
    }
}

impl Stage for UkiStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "uki"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![
            Input::stage("tree", &self.tree),
            Input::stage("initrd", &self.initrd),
            Input::value("Architecture", &self.architecture),
            Input::value("KernelCommandLine", self.cmdline()),
        ];
        if let Some(esp) = &self.esp {
            inputs.push(Input::stage("esp", esp));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let tree = ctx.input("tree")?;
        let esp = match &self.esp {
            Some(_) => ctx.input("esp")?,
            None => tree,
        };
        let initrd = ctx.input("initrd")?;
        let out = ctx.scratch.join("image.efi");
        self.build(ctx.store, &tree, &esp, &initrd, &out)
            .map_err(StageError::failed)?;
        Ok(ctx.store.put_file(&out, PutMode::Move)?)
    }
}

/// The kernel image of a tree, found as the uki stage finds it: mkosi's `<Output>.vmlinuz`
/// split artifact.
pub struct KernelStage {
    pub name: String,
    /// The stage whose tree holds the kernel.
    pub tree: String,
    /// `Architecture=`, for the package the error names when there is no kernel.
    pub architecture: String,
}

impl Stage for KernelStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "kernel"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("tree", &self.tree),
            Input::value("Architecture", &self.architecture),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let manifest = ctx.store.manifest(&ctx.input("tree")?)?;
        let os_release = find_os_release(&manifest)
            .map_err(StageError::failed)?
            .and_then(|file| ctx.store.read_blob(&file.blob).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let hints = PackageHints::for_os_release(os_release.as_deref(), &self.architecture);
        let kernel = find_kernel(ctx.store, &manifest, &hints).map_err(StageError::failed)?;
        Ok(kernel.file.blob)
    }
}
