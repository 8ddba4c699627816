//! Why the modules stage failed, with what the user can do about it.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use super::modinfo::ModInfoError;
use super::rules::RuleError;

#[derive(Debug, Error, Diagnostic)]
pub enum ModulesError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Rule(#[from] RuleError),

    #[error("Kernel {kver}: module `{module}` cannot be read: {source}")]
    #[diagnostic(help(
        "The module file in the image is damaged or not a kernel module; reinstall the package \
         that ships it, or remove it in a postinst script"
    ))]
    Unreadable {
        kver: String,
        module: String,
        #[source]
        source: ModInfoError,
    },

    #[error("`depmod` is not installed on this machine; kiln needs it to index the kept modules")]
    #[diagnostic(help("Install the Debian package that provides it: `apt-get install kmod`"))]
    DepmodMissing,

    #[error("`{command}` failed with exit code {code} for kernel {kver}")]
    #[diagnostic(help("The last lines of its output:\n{output}"))]
    Depmod {
        kver: String,
        command: String,
        code: i32,
        output: String,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Host(#[from] crate::host::HostError),

    #[error("Cannot {action} `{}`", path.display())]
    #[diagnostic(help("Check that the cache directory is writable and the disk has room"))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Cannot write the pruned tree")]
    #[diagnostic(help("Run `kiln cache verify` if the store may be damaged"))]
    Store(#[from] kiln_cache::StoreError),

    #[error("The pruned tree would break a rule every image follows")]
    #[diagnostic(help("Check what the packages put below /usr/lib/modules"))]
    Manifest(#[from] kiln_cache::ManifestError),
}
