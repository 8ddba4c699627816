//! Why resolving or installing packages failed, with what the user can do about it.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum PackagesError {
    #[error("`{tool}` is not installed on this machine; kiln needs it to install packages")]
    #[diagnostic(help("Install the Debian package that provides it: `apt-get install {package}`"))]
    ToolMissing { tool: String, package: String },

    #[error("Installing packages with `{tool}` needs root")]
    #[diagnostic(help(
        "Run kiln as root (for example with sudo): the package manager's maintainer scripts run \
         chrooted into the image, and the image's files belong to many users"
    ))]
    NeedsRoot { tool: String },

    #[error("User `{user}` has no {count} subordinate ids in `{}`", path.display())]
    #[diagnostic(help(
        "Without root, kiln installs packages in a user namespace that maps subordinate ids of \
         the user. Give `{user}` a range in /etc/subuid and /etc/subgid, as root: `usermod \
         --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`; or run kiln as root"
    ))]
    NoSubordinateIds {
        user: String,
        path: PathBuf,
        count: u64,
    },

    #[error("Cannot store the installed tree")]
    Store {
        #[source]
        source: kiln_cache::StoreError,
    },

    #[error("`Distribution={distribution}` is not supported for `Architecture={architecture}`")]
    #[diagnostic(help(
        "Choose an architecture the distribution builds for, such as `x86-64` or `arm64`"
    ))]
    UnsupportedArchitecture {
        distribution: String,
        architecture: String,
    },

    #[error("The archive keyring `{}` is missing", path.display())]
    #[diagnostic(help("Install the Debian package that provides it: `apt-get install {package}`"))]
    KeyringMissing { path: PathBuf, package: String },

    #[error("Cannot reach the mirror at `{url}`: {message}")]
    #[diagnostic(help(
        "Check `Mirror=` (and `Release=`), the network and any proxy, or build from the last \
         resolution with `--offline`; the previous output is left as it was"
    ))]
    MirrorUnreachable { url: String, message: String },

    #[error(
        "These packages have never been resolved against the mirror, so `--offline` has nothing to build from"
    )]
    #[diagnostic(help(
        "Build once without `--offline` (or run `kiln lock`) while the mirror is reachable; later \
         offline builds use that resolution"
    ))]
    NoResolution,

    #[error("The mirror has no package {}", names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", "))]
    #[diagnostic(help(
        "Check the name in `Packages=` and the `Repositories=` that should hold it. The mirror's \
         answer:\n{answer}"
    ))]
    UnknownPackage { names: Vec<String>, answer: String },

    #[error("The packages cannot be resolved against the mirror's index")]
    #[diagnostic(help("{tool} said:\n{output}"))]
    Unresolvable { tool: String, output: String },

    #[error("The maintainer script of `{package}` failed")]
    #[diagnostic(help(
        "Nothing was stored and the previous output is unchanged. The last lines of output:\n{output}"
    ))]
    MaintainerScript { package: String, output: String },

    #[error("`{tool}` failed with exit code {code}")]
    #[diagnostic(help(
        "Nothing was stored and the previous output is unchanged. The last lines of output:\n{output}"
    ))]
    InstallFailed {
        tool: String,
        code: i32,
        output: String,
    },

    #[error("Cannot run `{tool}`")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },

    #[error("The installed packages differ from the resolved set:\n{changes}")]
    #[diagnostic(help(
        "The mirror's index changed while kiln was building, or the package manager chose \
         differently; build again"
    ))]
    InstalledDiffers { changes: String },

    #[error("The resolved packages of stage `{stage}` differ from `kiln.lock`:\n{changes}")]
    #[diagnostic(help(
        "The mirror now resolves the recipe to other packages. Run `kiln lock` to accept them, \
         or build without `--locked`"
    ))]
    LockMismatch { stage: String, changes: String },

    #[error("`kiln.lock` has no package set for stage `{stage}`")]
    #[diagnostic(help("Run `kiln lock` to write it, or build without `--locked`"))]
    NotLocked { stage: String },

    #[error("Cannot read `{}`: line {line}: {message}", path.display())]
    #[diagnostic(help("`kiln lock` writes this file; run it again to replace the file"))]
    LockSyntax {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("The stage's resolved package set is not readable")]
    #[diagnostic(help("This is a bug in kiln: the stage ran without resolving first"))]
    ResolvedSetUnreadable(#[from] super::listing::ListingError),

    #[error("Failed to {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<kiln_cache::StoreError> for PackagesError {
    fn from(source: kiln_cache::StoreError) -> Self {
        PackagesError::Store { source }
    }
}

impl PackagesError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PackagesError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
