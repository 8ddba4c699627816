//! Moving objects between the local store and the shared cache: downloads verified on
//! arrival and streamed into the store, uploads compressed on the fly, trees in parallel.
//!
//! # What "already there" means
//!
//! Anyone who can write to the server can put anything under any name. So before it signs a
//! record, a pusher downloads each object the record names that the server already has and
//! checks it as a reader would (its digest, and its size when known); an object that fails is
//! uploaded again over it. Objects this client uploaded or checked once are not checked again.
//! Re-uploading everything instead would cost the same traffic the other way, rewrite the
//! server's files under readers, and upload blobs that trees share again for every tree. A
//! record already signed by this client's key only gets what the server lacks (a HEAD each):
//! nothing new is vouched for.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::sync::atomic::Ordering;

use rayon::prelude::*;

use crate::blob::set_object_mode;
use crate::digest::{BlobId, Digest, TreeId};
use crate::error::StoreError;
use crate::index::{ActionResult, OutputKind};
use crate::manifest::Manifest;
use crate::remote::Remote;
use crate::remote::error::{RemoteError, Result};
use crate::remote::record::{ActionRecord, SignedRecord, Verdict};
use crate::remote::transport::{Counting, Incoming};
use crate::store::Store;

/// zstd level of uploads: fast to write, and decompression speed does not depend on it.
const LEVEL: i32 = 3;

/// The largest tree manifest read (a manifest is held in memory to be checked and decoded).
const TREE_LIMIT: u64 = 1 << 30;

/// Buffer size for streaming bodies into the store (smaller for smaller blobs).
const CHUNK: usize = 1 << 20;

/// The most bytes a zstd body of `size` bytes of content may take on the wire: zstd's bound for
/// one frame, and room for a checksum, a dictionary id and a few frames.
fn wire_limit(size: u64) -> u64 {
    let bound = usize::try_from(size).map_or(u64::MAX, |size| {
        zstd::zstd_safe::compress_bound(size) as u64
    });
    bound.saturating_add(4 << 10)
}

thread_local! {
    /// A zstd decompression context per transfer thread, reused from object to object: a tree
    /// of 30,000 small files would otherwise spend more time setting contexts up than decoding.
    static DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

/// How a pusher makes sure the server holds an object it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// An object on the server is taken as it is (HEAD).
    Present,
    /// An object on the server is downloaded and verified, and replaced when it fails.
    Content,
}

/// What [`Remote::push`] did with an action record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The record was not there, or no trusted key signed the one there: its objects and the
    /// signed record were uploaded.
    Uploaded,
    /// The same result was there, signed by others: this client's signature was added.
    Cosigned,
    /// The same result was there, signed by this client's key already.
    AlreadyThere,
    /// The server holds another output for this key (a build that is not reproducible); it
    /// was kept.
    Conflict {
        /// The output the server has.
        theirs: Digest,
    },
}

impl Remote {
    /// Makes `output` and every object it refers to present in `store`, downloading what is
    /// missing. Objects are verified before they are stored; a tree's manifest is stored last.
    /// `size` is the output's size as its signed record says (see
    /// [`ActionRecord::output_size`]): a download stops there. A blob needs it; a tree without
    /// it (a record of format 1) is bounded by the largest manifest read.
    pub fn fetch(&self, store: &Store, output: ActionResult, size: Option<u64>) -> Result<()> {
        match output.kind {
            OutputKind::Blob => match size {
                Some(size) => self.fetch_blob(store, &output.output, Some(size)),
                None => Err(RemoteError::Corrupt {
                    location: self.location().to_owned(),
                    id: output.output,
                    reason: "its record does not say its size".to_owned(),
                }),
            },
            OutputKind::Tree => self.fetch_tree(store, &output.output, size),
        }
    }

    /// Uploads what `record.output` refers to, then the record signed with this client's key.
    /// The record's output size is taken from `store`, whatever `record` says.
    ///
    /// A record on the server counts only when a trusted key signed it and it names an output
    /// size: anything else, anyone who can write there could have put there, and it is
    /// replaced.
    pub fn push(&self, store: &Store, record: &ActionRecord) -> Result<Pushed> {
        let key = self.signing.as_ref().ok_or(RemoteError::NoSigningKey)?;
        let mut record = record.clone();
        record.output_size = Some(self.local_size(store, record.output)?);
        let path = format!("ac/{}", record.key);
        let existing = self.retrying(|| self.read_record(&record.key))?;
        let theirs = existing
            .and_then(|text| SignedRecord::parse(&text).ok())
            .filter(|theirs| {
                theirs.record.key == record.key
                    && matches!(theirs.verify(&self.trusted), Verdict::Trusted { .. })
            });
        if let Some(theirs) = &theirs
            && theirs.record.output != record.output
        {
            return Ok(Pushed::Conflict {
                theirs: theirs.record.output.output,
            });
        }
        // A record of format 1 (no size) is replaced by one that says it.
        let theirs = theirs.filter(|theirs| theirs.record.output_size == record.output_size);
        if let Some(theirs) = &theirs
            && theirs.signed_by(&key.public())
        {
            self.upload_output(store, record.output, Check::Present)?;
            return Ok(Pushed::AlreadyThere);
        }
        self.upload_output(store, record.output, Check::Content)?;
        let (mut signed, pushed) = match theirs {
            // Same result: sign what is there, keeping its notes and signatures.
            Some(theirs) => (theirs, Pushed::Cosigned),
            None => (SignedRecord::unsigned(record), Pushed::Uploaded),
        };
        signed.sign(key);
        let text = signed.to_json();
        self.retrying(|| {
            self.transport
                .put(self.location(), &path, &mut text.as_bytes())
        })?;
        self.counters.pushed_records.fetch_add(1, Ordering::Relaxed);
        Ok(pushed)
    }

    /// Whether the server has a record for `key` (signed by anyone).
    pub fn has_record(&self, key: &Digest) -> Result<bool> {
        self.retrying(|| self.transport.exists(self.location(), &format!("ac/{key}")))
    }

    fn fetch_blob(&self, store: &Store, id: &BlobId, size: Option<u64>) -> Result<()> {
        if store.has_blob(id) {
            return Ok(());
        }
        self.retrying(|| self.download_blob(store, id, size))
    }

    fn fetch_tree(&self, store: &Store, id: &TreeId, size: Option<u64>) -> Result<()> {
        if store.has_tree(id) {
            return Ok(());
        }
        let limit = size.map_or(TREE_LIMIT, |size| size.min(TREE_LIMIT));
        let bytes = self.retrying(|| self.download_bytes(id, limit))?;
        let corrupt = |reason: String| RemoteError::Corrupt {
            location: self.location().to_owned(),
            id: *id,
            reason,
        };
        if size.is_some_and(|size| bytes.len() as u64 != size) {
            return Err(corrupt(
                "its size is not the one its record says".to_owned(),
            ));
        }
        if Digest::of_bytes(&bytes) != *id {
            return Err(corrupt("its content does not match its name".to_owned()));
        }
        let manifest = Manifest::decode_canonical(&bytes)
            .map_err(|error| corrupt(format!("it is not a tree manifest: {error}")))?;
        match store.manifest_id(&manifest) {
            Ok(again) if again == *id => {}
            Ok(_) => return Err(corrupt("its manifest is not canonical".to_owned())),
            Err(error) => return Err(corrupt(format!("its manifest is invalid: {error}"))),
        }
        let mut missing: BTreeMap<BlobId, u64> = BTreeMap::new();
        for (blob, size) in manifest.blobs() {
            if !store.has_blob(blob) {
                missing.insert(*blob, size);
            }
        }
        let missing: Vec<(BlobId, u64)> = missing.into_iter().collect();
        self.pool.install(|| {
            missing
                .par_iter()
                .try_for_each(|(blob, size)| self.fetch_blob(store, blob, Some(*size)))
        })?;
        store.put_manifest(&manifest)?;
        self.count_fetched(bytes.len() as u64, None);
        Ok(())
    }

    /// Downloads one blob into the store, hashing it on the way; `size` is what the tree or
    /// the record naming it says.
    fn download_blob(&self, store: &Store, id: &BlobId, size: Option<u64>) -> Result<()> {
        let path = format!("cas/{id}");
        let mut incoming = self.transport.get(self.location(), &path)?.ok_or_else(|| {
            RemoteError::MissingObject {
                location: self.location().to_owned(),
                id: *id,
            }
        })?;
        if let Some(size) = size {
            incoming.limit_wire(wire_limit(size));
        }
        DECOMPRESSOR.with(|context| {
            let mut context = context.borrow_mut();
            let context = context.get_or_insert_with(zstd::zstd_safe::DCtx::create);
            context
                .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                .map_err(|_| RemoteError::Corrupt {
                    location: self.location().to_owned(),
                    id: *id,
                    reason: "the decompressor cannot be reset".to_owned(),
                })?;
            let input = BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), incoming);
            let decoder = zstd::stream::read::Decoder::with_context(input, context);
            self.store_blob(store, id, size, &path, decoder)
        })
    }

    /// Streams a decompressing body into the store as blob `id`, checking its digest (and its
    /// size, when the tree or record naming it says it). Reading stops as soon as the content
    /// is longer than that size, or the compressed body longer than any compression of it.
    fn store_blob(
        &self,
        store: &Store,
        id: &BlobId,
        size: Option<u64>,
        path: &str,
        mut decoder: zstd::stream::read::Decoder<'_, BufReader<Incoming>>,
    ) -> Result<()> {
        let corrupt = |reason: String| RemoteError::Corrupt {
            location: self.location().to_owned(),
            id: *id,
            reason,
        };
        let (mut file, temp) = store.create_temp()?;
        let result = (|| {
            let mut hasher = blake3::Hasher::new();
            let capacity = size.map_or(CHUNK, |size| (size as usize).clamp(1 << 12, CHUNK));
            let mut buf = vec![0u8; capacity];
            let mut total = 0u64;
            loop {
                let n = match decoder.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(error) => {
                        let incoming = decoder.get_ref().get_ref();
                        return Err(self.object_error(path, id, incoming, error));
                    }
                };
                total += n as u64;
                if size.is_some_and(|size| total > size) {
                    return Err(corrupt("it is longer than recorded".to_owned()));
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(|source| StoreError::Write {
                        path: temp.clone(),
                        source,
                    })?;
            }
            if Digest::from(hasher.finalize()) != *id {
                return Err(corrupt("its content does not match its name".to_owned()));
            }
            set_object_mode(&file, &temp)?;
            Ok(total)
        })();
        drop(file);
        match result {
            Ok(total) => {
                store.install(&temp, &store.plain_blob_path(id))?;
                let wire = decoder.get_ref().get_ref().wire_bytes;
                self.count_fetched(total, Some(wire));
                Ok(())
            }
            Err(error) => {
                let _ = fs::remove_file(&temp);
                Err(error)
            }
        }
    }

    /// Downloads an object into memory (a tree manifest), refusing more than `limit` bytes.
    fn download_bytes(&self, id: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = format!("cas/{id}");
        let incoming = self.transport.get(self.location(), &path)?.ok_or_else(|| {
            RemoteError::MissingObject {
                location: self.location().to_owned(),
                id: *id,
            }
        })?;
        let corrupt = |reason: String| RemoteError::Corrupt {
            location: self.location().to_owned(),
            id: *id,
            reason,
        };
        let mut incoming = incoming;
        incoming.limit_wire(wire_limit(limit));
        let decoder = zstd::stream::read::Decoder::new(incoming)
            .map_err(|error| corrupt(format!("it does not decompress: {error}")))?;
        let mut limited = decoder.take(limit + 1);
        let mut bytes = Vec::new();
        if let Err(error) = limited.read_to_end(&mut bytes) {
            let incoming = limited.get_ref().get_ref().get_ref();
            return Err(self.object_error(&path, id, incoming, error));
        }
        if bytes.len() as u64 > limit {
            return Err(corrupt(if limit < TREE_LIMIT {
                "it is longer than recorded".to_owned()
            } else {
                "it is larger than any tree manifest".to_owned()
            }));
        }
        let wire = limited.get_ref().get_ref().get_ref().wire_bytes;
        self.counters
            .fetched_wire_bytes
            .fetch_add(wire, Ordering::Relaxed);
        Ok(bytes)
    }

    fn count_fetched(&self, bytes: u64, wire: Option<u64>) {
        let c = &self.counters;
        c.fetched_objects.fetch_add(1, Ordering::Relaxed);
        c.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(wire) = wire {
            c.fetched_wire_bytes.fetch_add(wire, Ordering::Relaxed);
        }
    }

    /// The size of an output in `store`: a blob's length, a tree manifest's encoded length.
    fn local_size(&self, store: &Store, output: ActionResult) -> Result<u64> {
        Ok(match output.kind {
            OutputKind::Blob => {
                let file = store.open_blob(&output.output)?;
                file.metadata()
                    .map_err(|source| StoreError::Read {
                        path: store.plain_blob_path(&output.output),
                        source,
                    })?
                    .len()
            }
            OutputKind::Tree => {
                let path = store.tree_path(&output.output);
                fs::metadata(&path)
                    .map_err(|source| StoreError::Read { path, source })?
                    .len()
            }
        })
    }

    fn upload_output(&self, store: &Store, output: ActionResult, check: Check) -> Result<()> {
        match output.kind {
            OutputKind::Blob => self.upload_blob(store, &output.output, check),
            OutputKind::Tree => self.upload_tree(store, &output.output, check),
        }
    }

    /// Whether the server holds object `id` as `check` asks: present, or also with the
    /// content its name says (and `size` bytes of it). What this client uploaded or checked
    /// before is taken as it is.
    fn holds(&self, id: &Digest, size: u64, check: Check) -> Result<bool> {
        if self.lock_known().contains(id) {
            return Ok(true);
        }
        let path = format!("cas/{id}");
        let holds = match check {
            Check::Present => self.retrying(|| self.transport.exists(self.location(), &path))?,
            Check::Content => self.retrying(|| self.verify_object(id, size))?,
        };
        if holds && check == Check::Content {
            self.lock_known().insert(*id);
        }
        Ok(holds)
    }

    /// Downloads object `id` and checks it without storing it: `false` when it is missing,
    /// does not decompress, is not `size` bytes long or does not hash to its name.
    fn verify_object(&self, id: &Digest, size: u64) -> Result<bool> {
        let path = format!("cas/{id}");
        let Some(mut incoming) = self.transport.get(self.location(), &path)? else {
            return Ok(false);
        };
        incoming.limit_wire(wire_limit(size));
        let Ok(decoder) = zstd::stream::read::Decoder::new(incoming) else {
            return Ok(false);
        };
        let mut limited = decoder.take(size + 1);
        let mut hasher = blake3::Hasher::new();
        let result = io::copy(&mut limited, &mut hasher);
        let incoming = limited.get_ref().get_ref().get_ref();
        if let Err(error) = result {
            return match incoming.connection_error {
                Some(_) => Err(self.body_error(&path, incoming, error)),
                None => Ok(false),
            };
        }
        Ok(hasher.count() == size && Digest::from(hasher.finalize()) == *id)
    }

    /// The objects this client uploaded or found intact on the server.
    fn lock_known(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<Digest>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Uploads a blob unless the server holds it (as `check` asks).
    fn upload_blob(&self, store: &Store, id: &BlobId, check: Check) -> Result<()> {
        let path = format!("cas/{id}");
        let size = store
            .open_blob(id)?
            .metadata()
            .map(|meta| meta.len())
            .unwrap_or(0);
        if self.holds(id, size, check)? {
            return Ok(());
        }
        self.retrying(|| {
            let file = store.open_blob(id)?;
            let encoder = zstd::stream::read::Encoder::new(file, LEVEL).map_err(|source| {
                StoreError::Read {
                    path: store.plain_blob_path(id),
                    source,
                }
            })?;
            let mut body = Counting {
                inner: encoder,
                count: &self.counters.pushed_wire_bytes,
            };
            self.transport.put(self.location(), &path, &mut body)
        })?;
        self.lock_known().insert(*id);
        self.counters.pushed_objects.fetch_add(1, Ordering::Relaxed);
        self.counters
            .pushed_bytes
            .fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads a tree's blobs, then its manifest, unless the server holds them (as `check`
    /// asks). With [`Check::Present`], a manifest on the server stands for its blobs (it only
    /// gets there after them); with [`Check::Content`], every blob is checked too: anyone can
    /// put a manifest there.
    fn upload_tree(&self, store: &Store, id: &TreeId, check: Check) -> Result<()> {
        let path = format!("cas/{id}");
        let tree_path = store.tree_path(id);
        let bytes = fs::read(&tree_path).map_err(|source| StoreError::Read {
            path: tree_path.clone(),
            source,
        })?;
        if check == Check::Present && self.holds(id, bytes.len() as u64, check)? {
            return Ok(());
        }
        let manifest = store.manifest(id)?;
        let mut blobs: Vec<BlobId> = manifest.blobs().map(|(blob, _)| *blob).collect();
        blobs.sort();
        blobs.dedup();
        self.pool.install(|| {
            blobs
                .par_iter()
                .try_for_each(|blob| self.upload_blob(store, blob, check))
        })?;
        if check == Check::Content && self.holds(id, bytes.len() as u64, check)? {
            return Ok(());
        }
        let compressed =
            zstd::encode_all(&bytes[..], LEVEL).map_err(|source| StoreError::Read {
                path: tree_path,
                source,
            })?;
        self.retrying(|| {
            self.transport
                .put(self.location(), &path, &mut &compressed[..])
        })?;
        self.lock_known().insert(*id);
        let c = &self.counters;
        c.pushed_objects.fetch_add(1, Ordering::Relaxed);
        c.pushed_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        c.pushed_wire_bytes
            .fetch_add(compressed.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
