//! Why an initrd could not be written or read, with what to do about it.

use std::path::PathBuf;

use kiln_cache::BlobId;
use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum InitrdError {
    #[error("`{path}` is {size} bytes; a cpio (newc) archive cannot hold a file of 4 GiB or more")]
    #[diagnostic(help(
        "Leave the file out of the image (RemoveFiles=), or ship it in another format than an initrd"
    ))]
    FileTooLarge { path: String, size: u64 },

    #[error(
        "SOURCE_DATE_EPOCH `{mtime}` is past 2106, the last date a cpio (newc) header can hold"
    )]
    #[diagnostic(help("Set SOURCE_DATE_EPOCH to a time before 2106-02-07"))]
    MtimeOutOfRange { mtime: u64 },

    #[error("zstd has no compression level `{level}`; levels go from {min} to {max}")]
    #[diagnostic(help("Set CompressLevel= to a level in that range (3 is zstd's default)"))]
    Level { level: i32, min: i32, max: i32 },

    #[error("Cannot read blob `{blob}` (`{}`) from the store", path.display())]
    #[diagnostic(help(
        "Run `kiln cache verify` to find and drop damaged objects, then build again"
    ))]
    ReadBlob {
        blob: BlobId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Blob `{blob}` holds {found} bytes where its tree says {expected}")]
    #[diagnostic(help("The store is damaged: run `kiln cache verify`, then build again"))]
    BlobSize {
        blob: BlobId,
        expected: u64,
        found: u64,
    },

    #[error("Cannot compress a segment of the initrd")]
    #[diagnostic(help("Check that the machine has free memory; this is a bug if it persists"))]
    Compress {
        #[source]
        source: std::io::Error,
    },

    #[error("Cannot write the initrd to `{}`", path.display())]
    #[diagnostic(help("Check that the disk holding the store has room"))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("The initrd is not a sequence of zstd frames: {reason} at byte {offset}")]
    #[diagnostic(help(
        "Give a file written by kiln's initrd stage, not a truncated or other file"
    ))]
    Frames { offset: usize, reason: String },

    #[error(transparent)]
    #[diagnostic(help("Run `kiln cache verify` if the store may be damaged, then build again"))]
    Store(#[from] kiln_cache::StoreError),
}
