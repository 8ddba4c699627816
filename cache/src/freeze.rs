//! Frozen blobs: a blob no checkout links is kept zstd-compressed at rest, as
//! `v1/objects/ab/<62 more hex digits>.zst`, and thawed back into its plain
//! object the first time something reads it.
//!
//! A hardlink checkout (the edit loop, a script's input tree) is made of the
//! plain objects' inodes, so an object a checkout uses stays plain. What only
//! the outputs of earlier stages hold (files a later stage removed, the kernel
//! modules pruning dropped, the packages root before its scripts ran) is read
//! again only when such a stage runs again. So [`Store::gc`], which runs alone
//! on the store and has just removed the shared checkouts, freezes every kept
//! blob that has no other link and that compression makes smaller on disk
//! (counted in filesystem blocks: a file of one block stays plain, as do
//! compressed files such as a UKI, an initrd or a `.gz`). Frozen files are
//! flushed to the disk before the plain files go.
//!
//! A blob a stage made from a larger blob input (a UKI from its initrd, a
//! signed UKI from the UKI) is frozen as a difference from that input: zstd
//! with the input as its reference prefix, as `zstd --patch-from` does. Its
//! frozen file then opens with a zstd skippable frame naming the reference,
//! and gc keeps the reference as long as the frozen file needs it. A UKI of a
//! rescue image, whose initrd holds the kernel too, freezes to a few hundred
//! kilobytes.
//!
//! [`Store::blob_path`] thaws: it decompresses the frozen file into a temp
//! file, checks the content against the blob's name (a frozen file that does
//! not decode or hash to its name is removed and reported as a corrupt blob)
//! and renames it into place. The frozen file is left for the next gc, which
//! removes whichever form is redundant: a thaw deletes nothing, so two builds
//! may thaw one blob at once and a killed thaw leaves only a temp file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::blob::set_object_mode;
use crate::digest::{BlobId, Digest};
use crate::error::{Result, StoreError};
use crate::maintenance::{ObjectName, StoredObject};
use crate::store::{ObjectDir, Store, remove_file};

/// The extension of a frozen blob's file.
pub(crate) const FROZEN_EXTENSION: &str = "zst";

/// zstd level of frozen blobs: gc compresses what the earlier stages of every
/// kept build hold, so it favours speed (about 300 MB/s a core) over ratio.
const FREEZE_LEVEL: i32 = 3;

/// The block size by which the gain of freezing is counted.
const BLOCK: u64 = 4096;

/// A blob is frozen only if that saves at least a tenth of its blocks: an
/// already compressed blob (a UKI, an initrd) stays plain.
const MIN_GAIN_TENTHS: u64 = 1;

/// The magic of the zstd skippable frame that names a frozen difference's
/// reference (one of the sixteen skippable magics), followed by its length
/// (32) and the reference's digest.
const DELTA_MAGIC: u32 = 0x184D_2A5B;

/// Length of that frame.
const DELTA_HEADER: usize = 4 + 4 + 32;

/// The largest zstd window: a difference refers back over its whole reference.
const MAX_WINDOW_LOG: u32 = 31;

/// How deep a chain of differences may go before it is taken for damage.
const MAX_DELTA_DEPTH: usize = 16;

/// What [`Store::freeze_unlinked`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Frozen {
    /// Blobs now kept compressed.
    pub(crate) blobs: usize,
    /// Bytes of the plain files removed, less those of the frozen files written.
    pub(crate) bytes_saved: u64,
}

/// The frozen file beside a blob's plain object path.
pub(crate) fn frozen_path(plain: &Path) -> PathBuf {
    let mut path = plain.to_owned();
    path.as_mut_os_string().push(".");
    path.as_mut_os_string().push(FROZEN_EXTENSION);
    path
}

/// Whether `path` is a regular file, without following a symlink.
pub(crate) fn is_regular(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_file())
}

/// What a file type is called in messages.
pub(crate) fn file_type_name(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "symlink"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_file() {
        "regular file"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else {
        "device node"
    }
}

/// Removes whatever is at `path`, a directory with its content; "already gone" is success.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The name part of a frozen blob's file name (`None` for a plain one).
pub(crate) fn frozen_stem(name: &str) -> Option<&str> {
    name.strip_suffix(FROZEN_EXTENSION)?.strip_suffix('.')
}

impl Store {
    /// The plain object path of a blob, whether or not it exists.
    pub(crate) fn plain_blob_path(&self, id: &BlobId) -> PathBuf {
        self.object_path(ObjectDir::Objects, id)
    }

    /// Whether a frozen file of the blob exists.
    pub(crate) fn has_frozen(&self, id: &BlobId) -> bool {
        is_regular(&frozen_path(&self.plain_blob_path(id)))
    }

    /// Whether `path`, a form of blob `id`, is there: `false` when nothing is, `true` for a
    /// regular file. Anything else (a symlink, a directory, a device) was not written by the
    /// store: it is removed and reported as damage, as a corrupt blob is ([`StoreError::NotABlob`]).
    pub(crate) fn regular_object(&self, id: &BlobId, path: &Path) -> Result<bool> {
        // The prefix folder too: a symlink there would put the object elsewhere.
        if let Some(prefix) = path.parent()
            && fs::symlink_metadata(prefix).is_ok_and(|meta| meta.file_type().is_symlink())
        {
            return Err(self.not_a_blob(id, prefix, "symlink")?);
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if meta.file_type().is_file() {
            return Ok(true);
        }
        Err(self.not_a_blob(id, path, file_type_name(&meta.file_type()))?)
    }

    /// Removes `path`, a `found` (not a regular file) where blob `id` belongs, notes the
    /// damage and returns the error naming it.
    fn not_a_blob(&self, id: &BlobId, path: &Path, found: &'static str) -> Result<StoreError> {
        remove_any(path)?;
        self.note_damaged(id);
        self.note_repair(format!(
            "removed `{}`: a {found} where the store keeps a blob",
            path.display()
        ));
        Ok(StoreError::NotABlob {
            id: *id,
            path: path.to_owned(),
            found,
        })
    }

    /// Makes the plain object of a frozen blob (see the module documentation);
    /// returns its path. A blob with neither form gives its plain path too:
    /// reading it then fails as a missing blob.
    pub(crate) fn thaw(&self, id: &BlobId) -> Result<PathBuf> {
        let plain = self.plain_blob_path(id);
        if self.regular_object(id, &plain)? {
            return Ok(plain);
        }
        let frozen = frozen_path(&plain);
        if !self.regular_object(id, &frozen)? {
            return Ok(plain);
        }
        let (mut out, temp) = self.create_temp()?;
        let decoded = self
            .decode_frozen(&frozen, &mut out, &temp, 0)
            .and_then(|decoded| set_object_mode(&out, &temp).map(|()| decoded.map(|(d, _)| d)));
        drop(out);
        match decoded {
            Ok(Some(digest)) if digest == *id => {
                self.install(&temp, &plain)?;
                Ok(plain)
            }
            Ok(_) => {
                let _ = fs::remove_file(&temp);
                Err(self.frozen_is_corrupt(id, frozen)?)
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Removes a frozen file that does not decode to its blob, notes the
    /// damage and returns the error naming it.
    fn frozen_is_corrupt(&self, id: &BlobId, frozen: PathBuf) -> Result<StoreError> {
        remove_file(&frozen)?;
        self.note_damaged(id);
        self.note_repair(format!(
            "removed the corrupt frozen blob `{}`",
            frozen.display()
        ));
        Ok(StoreError::CorruptBlob {
            id: *id,
            path: frozen,
        })
    }

    /// The digest and length of a frozen file's content, `None` if it does
    /// not decode (or its reference is missing).
    pub(crate) fn frozen_digest(&self, frozen: &Path) -> Result<Option<(Digest, u64)>> {
        self.decode_frozen(frozen, &mut io::sink(), Path::new("/dev/null"), 0)
    }

    /// The reference a frozen file is a difference from, if it is one.
    pub(crate) fn frozen_reference(&self, id: &BlobId) -> Option<BlobId> {
        let mut file = File::open(frozen_path(&self.plain_blob_path(id))).ok()?;
        read_reference(&mut file).ok()?
    }

    /// A blob's content in memory, read from its plain object or decoded from
    /// its frozen file without thawing it.
    fn content(&self, id: &BlobId, depth: usize) -> Result<Vec<u8>> {
        let plain = self.plain_blob_path(id);
        if self.regular_object(id, &plain)? {
            match fs::read(&plain) {
                Ok(bytes) => return Ok(bytes),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Read {
                        path: plain,
                        source,
                    });
                }
            }
        }
        let frozen = frozen_path(&plain);
        if !frozen.exists() {
            self.note_damaged(id);
            return Err(StoreError::MissingBlob {
                id: *id,
                path: plain,
            });
        }
        let mut bytes = Vec::new();
        match self.decode_frozen(&frozen, &mut bytes, &plain, depth)? {
            Some((digest, _)) if digest == *id => Ok(bytes),
            _ => Err(self.frozen_is_corrupt(id, frozen)?),
        }
    }

    /// Decodes a frozen file into `out`, returning the digest and length of
    /// the content; `None` if it does not decode or its reference cannot be read (or is
    /// gone). A failed write is a [`StoreError::Write`] of `out_path`.
    fn decode_frozen(
        &self,
        frozen: &Path,
        out: &mut impl Write,
        out_path: &Path,
        depth: usize,
    ) -> Result<Option<(Digest, u64)>> {
        let mut file = match File::open(frozen) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    path: frozen.to_owned(),
                    source,
                });
            }
        };
        let Ok(reference) = read_reference(&mut file) else {
            return Ok(None);
        };
        let prefix = match reference {
            Some(reference) if depth < MAX_DELTA_DEPTH => {
                match self.content(&reference, depth + 1) {
                    Ok(bytes) => Some(bytes),
                    Err(
                        StoreError::CorruptBlob { .. }
                        | StoreError::NotABlob { .. }
                        | StoreError::MissingBlob { .. },
                    ) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(_) => return Ok(None),
            None => None,
        };
        let decoder = match &prefix {
            Some(prefix) => {
                zstd::stream::read::Decoder::with_ref_prefix(io::BufReader::new(file), prefix)
            }
            None => zstd::stream::read::Decoder::new(file),
        };
        let Ok(mut decoder) = decoder else {
            return Ok(None);
        };
        if decoder.window_log_max(MAX_WINDOW_LOG).is_err() {
            return Ok(None);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Ok(None),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            out.write_all(&buf[..n])
                .map_err(|source| StoreError::Write {
                    path: out_path.to_owned(),
                    source,
                })?;
        }
        Ok(Some((Digest::from(hasher.finalize()), size)))
    }

    /// Freezes every blob of `objects` (a listing of `objects/`) that no
    /// checkout links and that compresses into fewer blocks, as a difference
    /// from its entry in `references` where it has one, and removes the frozen
    /// file of every blob that also has a plain object a checkout links (or
    /// the plain one when nothing links it). Only gc calls it, holding the
    /// store alone.
    pub(crate) fn freeze_unlinked(
        &self,
        objects: &[StoredObject],
        references: &HashMap<BlobId, BlobId>,
    ) -> Result<Frozen> {
        let frozen: HashSet<&Path> = objects
            .iter()
            .filter(|o| o.frozen)
            .map(|o| o.path.as_path())
            .collect();
        let plain: Vec<&StoredObject> = objects.iter().filter(|o| !o.frozen).collect();
        // First the new frozen files, flushed; only then the plain files go.
        // Each plain file to remove, with the bytes that saves and whether it was frozen now.
        let outcomes: Vec<Option<(PathBuf, u64, bool)>> = plain
            .par_iter()
            .map(|object| {
                let ObjectName::Digest(id) = object.name else {
                    return Ok(None);
                };
                let links = match fs::symlink_metadata(&object.path) {
                    Ok(meta) => meta.nlink(),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(source) => {
                        return Err(StoreError::Read {
                            path: object.path.clone(),
                            source,
                        });
                    }
                };
                let target = frozen_path(&object.path);
                if frozen.contains(target.as_path()) {
                    // Thawed since the last gc: keep the form that is used, the frozen one only
                    // if it still decodes to the blob (a power loss may have cut it short).
                    if links == 1 && self.frozen_digest(&target)?.map(|(d, _)| d) == Some(id) {
                        return Ok(Some((object.path.clone(), object.size, false)));
                    }
                    remove_file(&target)?;
                    if links > 1 {
                        return Ok(None);
                    }
                }
                if links > 1 || blocks(object.size) <= 1 {
                    return Ok(None);
                }
                let saved = self.compress(object, references.get(&id), &target)?;
                Ok(saved.map(|saved| (object.path.clone(), saved, true)))
            })
            .collect::<Result<_>>()?;
        let outcomes: Vec<(PathBuf, u64, bool)> = outcomes.into_iter().flatten().collect();
        if outcomes.is_empty() {
            return Ok(Frozen::default());
        }
        self.sync()?;
        let mut done = Frozen::default();
        for (path, saved, frozen_now) in outcomes {
            remove_file(&path)?;
            done.blobs += usize::from(frozen_now);
            done.bytes_saved += saved;
        }
        Ok(done)
    }

    /// Writes the frozen file of a plain object, as a difference from
    /// `reference` if given, when that saves enough blocks; returns the bytes
    /// saved, `None` when it stays plain.
    fn compress(
        &self,
        object: &StoredObject,
        reference: Option<&BlobId>,
        target: &Path,
    ) -> Result<Option<u64>> {
        let plain = &object.path;
        let read_err = |source| StoreError::Read {
            path: plain.to_owned(),
            source,
        };
        let mut input = File::open(plain).map_err(read_err)?;
        let prefix = match reference {
            Some(reference) => Some((reference, self.content(reference, 0)?)),
            None => None,
        };
        let (out, temp) = self.create_temp()?;
        let write_err = |source| StoreError::Write {
            path: temp.clone(),
            source,
        };
        let written = (|| {
            let mut out = io::BufWriter::new(out);
            let mut encoder = match &prefix {
                Some((reference, bytes)) => {
                    let mut header = Vec::with_capacity(DELTA_HEADER);
                    header.extend_from_slice(&DELTA_MAGIC.to_le_bytes());
                    header.extend_from_slice(&32u32.to_le_bytes());
                    header.extend_from_slice(reference.as_bytes());
                    out.write_all(&header).map_err(write_err)?;
                    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(
                        &mut out,
                        FREEZE_LEVEL,
                        bytes,
                    )
                    .map_err(write_err)?;
                    let span = bytes.len() as u64 + object.size;
                    let window = (u64::BITS - span.leading_zeros()).clamp(10, MAX_WINDOW_LOG);
                    encoder.window_log(window).map_err(write_err)?;
                    encoder.long_distance_matching(true).map_err(write_err)?;
                    encoder
                }
                None => {
                    zstd::stream::write::Encoder::new(&mut out, FREEZE_LEVEL).map_err(write_err)?
                }
            };
            encoder.include_contentsize(true).map_err(write_err)?;
            encoder
                .set_pledged_src_size(Some(object.size))
                .map_err(write_err)?;
            io::copy(&mut input, &mut encoder).map_err(read_err)?;
            encoder.finish().map_err(write_err)?;
            let out = out.into_inner().map_err(|e| write_err(e.into_error()))?;
            set_object_mode(&out, &temp)?;
            out.metadata().map(|m| m.len()).map_err(write_err)
        })();
        let compressed = match written {
            Ok(compressed) => compressed,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        let kept_blocks = blocks(object.size) * (10 - MIN_GAIN_TENTHS);
        if blocks(compressed) * 10 > kept_blocks {
            remove_file(&temp)?;
            return Ok(None);
        }
        self.install(&temp, target)?;
        Ok(Some(object.size - compressed))
    }
}

/// Reads the skippable frame naming a difference's reference, if the file
/// opens with one; otherwise leaves the file at its start.
fn read_reference(file: &mut File) -> io::Result<Option<BlobId>> {
    use std::io::Seek;
    let mut header = [0u8; DELTA_HEADER];
    let read = file.read(&mut header)?;
    let is_delta = read == DELTA_HEADER
        && header[..4] == DELTA_MAGIC.to_le_bytes()
        && header[4..8] == 32u32.to_le_bytes();
    if !is_delta {
        file.seek(io::SeekFrom::Start(0))?;
        return Ok(None);
    }
    let digest: [u8; 32] = header[8..].try_into().expect("32 bytes");
    Ok(Some(Digest::from_bytes(digest)))
}

/// Filesystem blocks a file of `bytes` takes.
fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}
