//! kiln's content-addressed store: blobs, tree manifests, checkouts, the
//! action cache and the build index.
//!
//! This crate knows nothing of stages or recipes. The engine uses it for
//! keys, the action cache and `graph explain`; stages use it to store what
//! they produced ([`Store::ingest_dir`], or [`Store::ingest_tar`] for a tree
//! built as a tar archive) and to materialise their inputs
//! ([`Store::checkout`]).
//!
//! Two shortcuts make rebuilds cheap: [`Store::ingest_dir_cached`] skips
//! reading files whose `stat` has not changed since they were last ingested,
//! and [`Store::update_checkout`] turns a checkout of one tree into a
//! checkout of another by applying only their difference, for instance on a
//! [`clone_hardlinked`] copy of the previous output.
//!
//! # Layout
//!
//! ```text
//! <root>/                      the recipe's mkosi.cache/, or $XDG_CACHE_HOME/kiln
//! ├── CACHEDIR.TAG             marks the folder as a cache for backup tools
//! └── v1/                      layout version: a new layout gets a new folder
//!     ├── lock                 flock: shared by every user, exclusive for gc
//!     ├── index.sqlite         builds, stage runs, action cache, stat cache
//!     │                        of ingested files, signed records kept from
//!     │                        the shared cache (WAL: -wal, -shm)
//!     ├── objects/ab/cdef…     blobs, named by the blake3 of their content;
//!     │                        mode 0644, owned by the store's user, no xattrs;
//!     │                        `cdef….zst`: a blob no checkout links, kept
//!     │                        compressed by gc and thawed when read
//!     ├── trees/ab/cdef…       canonical manifest encodings, named by their blake3
//!     ├── variants/ab/cdef….m… a blob's copy with a mode, owner and xattrs,
//!     │                        for hardlink checkouts: <blob id>.<metadata digest>
//!     ├── checkouts/<tree id>/ read-only hardlink checkouts shared by builds as
//!     │                        overlay lower layers, every entry (and so every
//!     │                        object they link) dated 0 (removed by gc)
//!     ├── packages/<area>/<unit> package managers' private states and downloaded
//!     │                        packages, kept by the packages stage (not
//!     │                        content-addressed): a unit's mtime is its last
//!     │                        use; gc removes units no kept build used
//!     └── tmp/<pid>-<n>.tmp    files being written, renamed into place when done,
//!         tmp/<pid>-<label>-….tmp scratch folders of stages (Store::scratch_dir)
//! ```
//!
//! Objects are written to `tmp/` and renamed into place: a reader sees a
//! whole object or none. What goes into an output is hashed again as it is
//! read ([`Store::verify_blob`], [`Store::verify_tree_blobs`], which also holds
//! each file to the length its tree claims; manifests on every load), and a
//! shared checkout is checked against its blobs before it is handed out (by
//! `stat`, hashing what changed since it was last hashed): a damaged object is
//! removed, named in the error, and forgotten with the cache entries that used
//! it or were made from it ([`Store::forget_damaged`]), so the next build makes
//! it again. Only regular files are objects: anything else found at an
//! object's path is removed as damage. A damaged
//! index is moved aside to `index.sqlite.damaged-<ms>` when the store opens.
//! Nothing is flushed per object; the objects written since the last record
//! are flushed together, with their folders, before an action or run is
//! recorded ([`Store::make_durable`]), so a power loss never leaves a record
//! naming an object that is not on disk.
//!
//! # Locking
//!
//! - Every [`Store`] holds a shared `flock` on `v1/lock` from
//!   [`Store::open`] until its last clone is dropped. Any number of builds,
//!   `verify` runs and readers share the store: writes are atomic renames
//!   and SQLite serialises the index.
//! - [`Store::gc`] upgrades to an exclusive lock, waiting a few seconds for
//!   other users to leave, and fails with "store in use" otherwise. While it
//!   runs, [`Store::open`] waits.
//! - Locks die with their process. Temp files of a killed process are
//!   removed by `verify` (when their pid is gone; a live process's are kept
//!   however old) and by `gc` (all of them).
//! - Integrity rule: an action result is recorded only after every object
//!   it refers to is stored and flushed to disk (see [`index`]), so a
//!   process killed, or a power loss, at any instant leaves the store
//!   consistent. This holds for what comes from the
//!   shared cache too: objects are verified and stored, trees after their
//!   blobs, before the action is recorded. A run of status
//!   [`RunStatus::Remote`] is the one record that may name an output kept
//!   only on the shared cache (gc and verify only keep what is present).
//!
//! # Shared cache
//!
//! [`remote`] pushes and fetches objects and signed action records to and
//! from any HTTP server that answers GET, HEAD and PUT; its module
//! documentation draws the server's layout.
//!
//! One process should open a store once and share clones of the handle.
//!
//! # Example
//!
//! ```
//! use kiln_cache::{CheckoutMode, CheckoutOptions, IngestOptions, Store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let (cache, src, dest) = (tmp.path().join("cache"), tmp.path().join("src"), tmp.path().join("dest"));
//! # std::fs::create_dir_all(src.join("etc"))?;
//! # std::fs::write(src.join("etc/hostname"), "rescue\n")?;
//! let store = Store::open(&cache)?;
//! let manifest = store.ingest_dir(&src, IngestOptions { owner: Some((0, 0)), ..Default::default() })?;
//! let tree = store.put_manifest(&manifest)?;
//!
//! let again = store.manifest(&tree)?;
//! let opts = CheckoutOptions { mode: CheckoutMode::Copy, ignore_owner: true, ..Default::default() };
//! store.checkout(&again, &dest, opts)?;
//! assert_eq!(std::fs::read_to_string(dest.join("etc/hostname"))?, "rescue\n");
//! # Ok(())
//! # }
//! ```

mod at;
mod blob;
mod canonical;
mod checkout;
mod clone;
mod diff;
mod digest;
mod error;
mod freeze;
mod gc;
pub mod index;
mod ingest;
mod ingest_tar;
mod linked;
mod lock;
mod maintenance;
mod manifest;
pub mod remote;
mod repair;
mod shared;
mod statcache;
mod store;
pub mod testpoint;
mod tree;
mod update;
mod variant;
mod verify;
pub mod xattr;

pub use blob::{OBJECT_MODE, PutMode};
pub use canonical::FORMAT_VERSION;
pub use checkout::{CheckoutMode, CheckoutOptions};
pub use clone::clone_hardlinked;
pub use diff::{Change, ChangeKind, Modification};
pub use digest::{BlobId, Digest, TreeId};
pub use error::{DecodeError, ManifestError, ParseDigestError, Result, StoreError, is_disk_full};
pub use gc::{GcPolicy, GcReport};
pub use index::{
    ActionResult, BuildId, BuildInfo, BuildStatus, Index, OutputKind, RecordedInput, RunStatus,
    StageRun,
};
pub use ingest::{IngestOptions, IngestReport};
pub use maintenance::{Stats, human_bytes};
pub use manifest::{Entry, EntryKind, Manifest, compare_paths, validate_path};
pub use repair::Forgotten;
pub use shared::SHARED_CHECKOUT_MTIME;
pub use statcache::RACY_MARGIN_NS;
pub use store::Store;
pub use update::UpdateReport;
pub use verify::VerifyReport;
