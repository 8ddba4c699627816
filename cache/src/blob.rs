//! Blobs: file contents stored once under their blake3 digest in `v1/objects/`.
//!
//! A blob object is a plain file: mode [`OBJECT_MODE`] (`0644`), owned by the
//! store's user (root in practice), no extended attributes. It is written to a
//! temp file in `v1/tmp/` and renamed into place, so readers never see a
//! partial blob.
//!
//! `0644` root:root is what most files of a root filesystem carry, so a
//! hardlink checkout links most files to the plain blob itself and needs a
//! metadata variant (see `variant`) only for the others (executables,
//! setuid, other owners, xattrs). Stores written before objects were `0644`
//! had `0444` blobs: the index migration that marks the change re-modes them
//! ([`Store::relax_object_modes`]). The mode protects nothing from root, who
//! runs builds; what keeps objects unchanged is that nothing writes through a
//! hardlink checkout: scripts change a checkout only through an overlay whose
//! lower layer it is, and every checkout meant to be modified is a copy
//! ([`crate::CheckoutMode::Copy`]).

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;

use crate::digest::{BlobId, Digest};
use crate::error::{Result, StoreError};
use crate::store::{ObjectDir, Store, remove_file};
use crate::xattr;

/// Files up to this size are read whole, hashed, and written only if new.
const SMALL_FILE: u64 = 1 << 20;

/// Buffer size for streaming large files.
const CHUNK: usize = 1 << 20;

/// Mode of every plain object file: blobs, trees. A file entry with this
/// mode, the store's owner and no xattrs is checked out as a link to the blob.
pub const OBJECT_MODE: u32 = 0o644;

/// How [`Store::put_file`] treats its source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Copy the content; the source is left untouched.
    #[default]
    Copy,
    /// Consume the source: it is renamed into the store when it is on the
    /// same filesystem and has no other hard link, otherwise copied and then
    /// unlinked. Use it for files nobody needs afterwards (a stage's output).
    Move,
    /// Only compute the id: nothing is written to the store (for readers
    /// such as `graph show`, which must not change it).
    HashOnly,
}

impl Store {
    /// Stores `bytes` as a blob and returns its id. Storing the same bytes
    /// again is cheap and returns the same id.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobId> {
        let id = Digest::of_bytes(bytes);
        self.write_object(ObjectDir::Objects, &id, bytes)?;
        Ok(id)
    }

    /// Stores the content of the regular file at `path` as a blob.
    pub fn put_file(&self, path: &Path, mode: PutMode) -> Result<BlobId> {
        self.put_file_sized(path, mode).map(|(id, _)| id)
    }

    /// The path of a blob's object file, thawed first if gc froze it (see
    /// `freeze`). A missing blob gives the path where it belongs, so reading
    /// it fails as missing. The file is shared: never write to it.
    ///
    /// Only a regular file is a blob: anything else found at its path (a
    /// symlink, a directory) is removed and the call fails with
    /// [`StoreError::NotABlob`], naming it, as for a corrupt blob.
    pub fn blob_path(&self, id: &BlobId) -> Result<PathBuf> {
        self.thaw(id)
    }

    /// Whether the blob is in the store, plain or frozen.
    pub fn has_blob(&self, id: &BlobId) -> bool {
        crate::freeze::is_regular(&self.plain_blob_path(id)) || self.has_frozen(id)
    }

    /// Reads a whole blob into memory.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let path = self.blob_path(id)?;
        fs::read(&path).map_err(|source| self.blob_read_error(id, path, source))
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, id: &BlobId) -> Result<File> {
        let path = self.blob_path(id)?;
        File::open(&path).map_err(|source| self.blob_read_error(id, path, source))
    }

    /// Copies a blob to a new file at `dest` (replacing any file there),
    /// with mode `mode`.
    pub fn copy_blob(&self, id: &BlobId, dest: &Path, mode: u32) -> Result<()> {
        let mut src = self.open_blob(id)?;
        let _ = fs::remove_file(dest);
        let mut out = File::create_new(dest).map_err(|source| StoreError::Create {
            path: dest.to_owned(),
            source,
        })?;
        io::copy(&mut src, &mut out).map_err(|source| StoreError::Write {
            path: dest.to_owned(),
            source,
        })?;
        rustix::fs::fchmod(&out, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| {
            StoreError::SetMetadata {
                path: dest.to_owned(),
                what: "mode",
                source: e.into(),
            }
        })
    }

    pub(crate) fn blob_read_error(
        &self,
        id: &BlobId,
        path: PathBuf,
        source: io::Error,
    ) -> StoreError {
        if source.kind() == ErrorKind::NotFound {
            self.note_damaged(id);
            StoreError::MissingBlob { id: *id, path }
        } else {
            StoreError::Read { path, source }
        }
    }

    /// Stores a file and returns its id and the number of bytes stored.
    pub(crate) fn put_file_sized(&self, path: &Path, mode: PutMode) -> Result<(BlobId, u64)> {
        if mode == PutMode::HashOnly {
            let mut file = File::open(path).map_err(|source| StoreError::Read {
                path: path.to_owned(),
                source,
            })?;
            return hash_reader(&mut file, path);
        }
        if mode == PutMode::Move {
            let meta = fs::symlink_metadata(path).map_err(|source| StoreError::Read {
                path: path.to_owned(),
                source,
            })?;
            // A file with other links may share its inode with a checkout of
            // the store itself: moving it would change objects in place.
            if meta.is_file()
                && meta.nlink() == 1
                && let Some(done) = self.move_file(path)?
            {
                return Ok(done);
            }
            let done = self.copy_file(path)?;
            remove_file(path)?;
            return Ok(done);
        }
        self.copy_file(path)
    }

    /// Renames `path` into the store. `None` when it is on another
    /// filesystem, so the caller copies instead.
    fn move_file(&self, path: &Path) -> Result<Option<(BlobId, u64)>> {
        let temp = self.temp_path();
        match fs::rename(path, &temp) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Ok(None),
            Err(source) => {
                return Err(StoreError::Rename {
                    from: path.to_owned(),
                    to: temp,
                    source,
                });
            }
        }
        let result = (|| {
            let mut file = File::open(&temp).map_err(|source| StoreError::Read {
                path: temp.clone(),
                source,
            })?;
            let (id, size) = hash_reader(&mut file, &temp)?;
            self.make_plain(&file, &temp)?;
            Ok((id, size))
        })();
        match result {
            Ok((id, size)) => {
                self.install(&temp, &self.plain_blob_path(&id))?;
                Ok(Some((id, size)))
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Gives a moved-in file the metadata of a plain object.
    fn make_plain(&self, file: &File, path: &Path) -> Result<()> {
        let (uid, gid) = self.owner();
        if uid == 0 {
            rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| StoreError::SetMetadata {
                path: path.to_owned(),
                what: "owner",
                source: e.into(),
            })?;
        }
        // Without root, `user.*` attributes of a read-only file cannot be
        // removed: clear them before the mode.
        xattr::clear_fd(file.as_fd(), path)?;
        set_object_mode(file, path)
    }

    /// Copies `path` into the store, hashing as it goes.
    fn copy_file(&self, path: &Path) -> Result<(BlobId, u64)> {
        let read_err = |source| StoreError::Read {
            path: path.to_owned(),
            source,
        };
        let mut src = File::open(path).map_err(read_err)?;
        let len = src.metadata().map_err(read_err)?.len();
        self.put_reader(&mut src, len, path)
    }

    /// Stores everything `reader` yields as a blob, hashing as it goes;
    /// `len` is the expected length (content up to [`SMALL_FILE`] is read
    /// whole) and `path` names the source in errors.
    pub(crate) fn put_reader(
        &self,
        reader: &mut impl Read,
        len: u64,
        path: &Path,
    ) -> Result<(BlobId, u64)> {
        let read_err = |source| StoreError::Read {
            path: path.to_owned(),
            source,
        };
        if len <= SMALL_FILE {
            let mut bytes = Vec::with_capacity(len as usize);
            reader.read_to_end(&mut bytes).map_err(read_err)?;
            let id = self.put_bytes(&bytes)?;
            return Ok((id, bytes.len() as u64));
        }
        let (mut out, temp) = self.create_temp()?;
        let result = (|| {
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; CHUNK];
            let mut size = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(source) => return Err(read_err(source)),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|source| StoreError::Write {
                        path: temp.clone(),
                        source,
                    })?;
                size += n as u64;
            }
            set_object_mode(&out, &temp)?;
            Ok((Digest::from(hasher.finalize()), size))
        })();
        drop(out);
        match result {
            Ok((id, size)) => {
                self.install(&temp, &self.plain_blob_path(&id))?;
                Ok((id, size))
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Writes `bytes` as object `id` of `kind` unless it exists already.
    pub(crate) fn write_object(&self, kind: ObjectDir, id: &Digest, bytes: &[u8]) -> Result<()> {
        let dest = self.object_path(kind, id);
        if crate::freeze::is_regular(&dest) {
            self.found_object(&dest);
            return Ok(());
        }
        let (mut file, temp) = self.create_temp()?;
        let written = file
            .write_all(bytes)
            .map_err(|source| StoreError::Write {
                path: temp.clone(),
                source,
            })
            .and_then(|()| set_object_mode(&file, &temp));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        self.install(&temp, &dest)
    }
}

impl Store {
    /// Gives every plain object of a store written with another object mode
    /// (`0444` before) [`OBJECT_MODE`], and removes the shared checkouts,
    /// whose links to plain objects would now show the new mode. Run by the
    /// index migration that marks the change, in its write transaction.
    pub(crate) fn relax_object_modes(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [ObjectDir::Objects, ObjectDir::Trees] {
            for object in self.list_objects(dir)? {
                let Ok(meta) = fs::symlink_metadata(&object.path) else {
                    continue;
                };
                if !meta.is_file() || meta.permissions().mode() & 0o7777 == OBJECT_MODE {
                    continue;
                }
                fs::set_permissions(&object.path, fs::Permissions::from_mode(OBJECT_MODE))
                    .map_err(|source| StoreError::SetMetadata {
                        path: object.path.clone(),
                        what: "mode",
                        source,
                    })?;
            }
        }
        self.remove_shared_checkout_files()?;
        Ok(())
    }
}

pub(crate) fn set_object_mode(file: &File, path: &Path) -> Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(OBJECT_MODE)).map_err(|e| {
        StoreError::SetMetadata {
            path: path.to_owned(),
            what: "mode",
            source: e.into(),
        }
    })
}

/// Hashes everything `reader` yields; `path` names it in errors.
pub(crate) fn hash_reader(reader: &mut impl Read, path: &Path) -> Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok((Digest::from(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    fn tmp_is_empty(store: &Store) -> bool {
        fs::read_dir(store.tmp_dir()).unwrap().next().is_none()
    }

    #[test]
    fn bytes_roundtrip_and_idempotence() {
        let (_dir, store) = store();
        let id = store.put_bytes(b"hello kiln\n").unwrap();
        assert_eq!(id, Digest::of_bytes(b"hello kiln\n"));
        assert!(store.has_blob(&id));
        assert_eq!(store.read_blob(&id).unwrap(), b"hello kiln\n");
        let meta = fs::metadata(store.plain_blob_path(&id)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, OBJECT_MODE);
        let ino = meta.ino();
        assert_eq!(store.put_bytes(b"hello kiln\n").unwrap(), id);
        // Idempotent: the object was not rewritten.
        assert_eq!(fs::metadata(store.plain_blob_path(&id)).unwrap().ino(), ino);
        assert!(tmp_is_empty(&store));
        let missing = Digest::of_bytes(b"nope");
        assert!(!store.has_blob(&missing));
        assert!(matches!(
            store.read_blob(&missing),
            Err(StoreError::MissingBlob { .. })
        ));
    }

    #[test]
    fn put_file_copy_small_and_large() {
        let (dir, store) = store();
        let small = dir.path().join("small");
        fs::write(&small, b"small").unwrap();
        let large = dir.path().join("large");
        let content: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        fs::write(&large, &content).unwrap();
        for (path, bytes) in [(&small, &b"small"[..]), (&large, &content[..])] {
            let (id, size) = store.put_file_sized(path, PutMode::Copy).unwrap();
            assert_eq!(id, Digest::of_bytes(bytes));
            assert_eq!(size, bytes.len() as u64);
            assert_eq!(store.read_blob(&id).unwrap(), bytes);
            assert!(path.exists(), "copy must leave the source");
            // Storing again keeps one object and leaves no temp file.
            assert_eq!(store.put_file(path, PutMode::Copy).unwrap(), id);
        }
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn put_file_move_renames_the_inode() {
        let (dir, store) = store();
        let src = dir.path().join("f");
        fs::write(&src, b"moved content").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o4755)).unwrap();
        let ino = fs::metadata(&src).unwrap().ino();
        let id = store.put_file(&src, PutMode::Move).unwrap();
        assert!(!src.exists());
        let meta = fs::metadata(store.plain_blob_path(&id)).unwrap();
        assert_eq!(meta.ino(), ino, "same filesystem: renamed, not copied");
        assert_eq!(meta.permissions().mode() & 0o7777, OBJECT_MODE);
        assert_eq!(store.read_blob(&id).unwrap(), b"moved content");
        assert!(tmp_is_empty(&store));

        // Moving identical content again drops the source and keeps the object.
        fs::write(&src, b"moved content").unwrap();
        assert_eq!(store.put_file(&src, PutMode::Move).unwrap(), id);
        assert!(!src.exists());
        assert_eq!(fs::metadata(store.plain_blob_path(&id)).unwrap().ino(), ino);
    }

    #[test]
    fn move_of_a_hardlinked_file_copies() {
        let (dir, store) = store();
        let src = dir.path().join("a");
        let other = dir.path().join("b");
        fs::write(&src, b"linked").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(&src, &other).unwrap();
        let id = store.put_file(&src, PutMode::Move).unwrap();
        assert!(!src.exists());
        let other_meta = fs::metadata(&other).unwrap();
        assert_ne!(
            fs::metadata(store.plain_blob_path(&id)).unwrap().ino(),
            other_meta.ino()
        );
        // The other link keeps its mode: the store did not touch its inode.
        assert_eq!(other_meta.permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    fn copy_blob_writes_a_private_copy() {
        let (dir, store) = store();
        let id = store.put_bytes(b"export me").unwrap();
        let dest = dir.path().join("out.efi");
        store.copy_blob(&id, &dest, 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"export me");
        let meta = fs::metadata(&dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_ne!(
            meta.ino(),
            fs::metadata(store.plain_blob_path(&id)).unwrap().ino()
        );
    }
}
