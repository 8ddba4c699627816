//! Errors of the tree stages, with what the user can do about them.

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum TreeError {
    #[error("`{path}` leads outside the image")]
    #[diagnostic(help(
        "Paths and globs are anchored at the image root; remove the `..` or the symlink that leaves the tree"
    ))]
    Escapes { path: String },

    #[error("Symlinks loop while resolving `{path}` inside the image")]
    #[diagnostic(help("Fix the symlinks of the image or of the tree copied into it"))]
    SymlinkLoop { path: String },

    #[error("`{path}` is not a directory in the image, so a tree cannot be copied below it")]
    #[diagnostic(help("Change the tree's target, or what the image has at `{path}`"))]
    NotADirectory { path: String },

    #[error("`{glob}` is not a valid glob: {message}")]
    #[diagnostic(help(
        "RemoveFiles= takes globs such as `/usr/share/locale` or `/usr/lib/**/*.a`"
    ))]
    BadGlob { glob: String, message: String },

    #[error("The tree would break a rule every image follows")]
    #[diagnostic(help(
        "A tree copied into the image clashes with what is there; check the trees' targets"
    ))]
    Manifest(#[from] kiln_cache::ManifestError),
}

#[derive(Debug, Error, Diagnostic)]
pub enum OutputError {
    #[error("Cannot write `{}`", path.display())]
    #[diagnostic(help(
        "Check that the output directory exists and is writable, and that the disk has room"
    ))]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{name}` is not a file name inside the output directory")]
    #[diagnostic(help(
        "Name the output with `Output=`: a name without `/` that is not `.` or `..`"
    ))]
    Name { name: String },

    #[error("Cannot check out the image into `{}`", path.display())]
    #[diagnostic(help(
        "Check that the output directory is writable; run `kiln cache verify` if the store may be damaged"
    ))]
    Checkout {
        path: std::path::PathBuf,
        #[source]
        source: kiln_cache::StoreError,
    },
}
