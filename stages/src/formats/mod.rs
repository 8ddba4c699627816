//! Output formats, one module each behind [`Format`]: the stages a format adds after the
//! finished image tree, the artifacts the output directory receives, and what else about the
//! image depends on its format (an `/init`, package metadata, Secure Boot, booting it). A new
//! format is one module here and one line in [`for_format`]; nothing outside this directory
//! branches on the format.

mod cpio;
pub(crate) mod directory;
pub(crate) mod tar;
mod uki;

use kiln_engine::Stage;
use kiln_recipe::{OutputFormat, Recipe};

/// What a format builds on.
pub struct FormatContext<'a> {
    pub recipe: &'a Recipe,
    /// The stage whose tree is the finished image.
    pub tree: String,
    /// The stage whose tree holds the kernel and the EFI stub as mkosi takes them: after the
    /// first-boot settings, before RemoveFiles= and the finalize scripts.
    pub esp_tree: String,
    pub source_date_epoch: u64,
    /// `CompressLevel=`, when set.
    pub compress_level: Option<i32>,
}

/// The stages a format adds, and what is exported.
pub struct FormatStages {
    pub stages: Vec<Box<dyn Stage>>,
    /// The main artifact first.
    pub artifacts: Vec<Artifact>,
}

/// One output of a build: a stage's output under the output name plus a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The stage whose output it is.
    pub stage: String,
    /// Appended to the output name (`.efi`, `.vmlinuz`; empty for a directory).
    pub suffix: String,
    /// A tree exported as a directory, or a blob exported as a file.
    pub directory: bool,
}

impl Artifact {
    pub fn directory(stage: &str) -> Artifact {
        Artifact {
            stage: stage.to_string(),
            suffix: String::new(),
            directory: true,
        }
    }

    pub fn file(stage: &str, suffix: &str) -> Artifact {
        Artifact {
            stage: stage.to_string(),
            suffix: suffix.to_string(),
            directory: false,
        }
    }
}

/// A format kiln builds.
pub trait Format: Send + Sync {
    /// mkosi's name (`Format=uki`).
    fn name(&self) -> &'static str;
    /// The stages after the finished tree, and the artifacts.
    fn stages(&self, ctx: &FormatContext<'_>) -> FormatStages;
    /// Whether the kernel runs the image as its initrd, so it needs an `/init` (mkosi adds one
    /// for these formats).
    fn runs_as_initrd(&self) -> bool {
        false
    }
    /// Whether `CleanPackageMetadata=auto` keeps the package managers' metadata: for a tree
    /// someone goes on to manage with them.
    fn keeps_package_metadata(&self) -> bool {
        false
    }
    /// The stage whose output `SecureBoot=yes` signs, when the format makes an EFI binary.
    fn signed_stage(&self) -> Option<&'static str> {
        None
    }
    /// The suffix of the artifact `kiln qemu` boots, when the format makes something it boots.
    fn boot_suffix(&self) -> Option<&'static str> {
        None
    }
}

/// The format of `Format=`, when kiln builds it.
pub fn for_format(format: OutputFormat) -> Option<Box<dyn Format>> {
    Some(match format {
        OutputFormat::Directory => Box::new(directory::Directory),
        OutputFormat::Tar => Box::new(tar::Tar),
        OutputFormat::Cpio => Box::new(cpio::Cpio),
        OutputFormat::Uki => Box::new(uki::Uki),
        _ => return None,
    })
}
