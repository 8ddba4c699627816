//! Moving objects between the local store and the shared cache: downloads verified on
//! arrival and streamed into the store, uploads compressed on the fly, trees in parallel.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::sync::atomic::Ordering;

use rayon::prelude::*;

use crate::blob::set_object_mode;
use crate::digest::{BlobId, Digest, TreeId};
use crate::error::StoreError;
use crate::index::{ActionResult, OutputKind};
use crate::manifest::Manifest;
use crate::remote::Remote;
use crate::remote::error::{RemoteError, Result};
use crate::remote::record::{ActionRecord, SignedRecord};
use crate::remote::transport::{Counting, Incoming};
use crate::store::Store;

/// zstd level of uploads: fast to write, and decompression speed does not depend on it.
const LEVEL: i32 = 3;

/// The largest tree manifest read (a manifest is held in memory to be checked and decoded).
const TREE_LIMIT: u64 = 1 << 30;

/// Buffer size for streaming bodies into the store (smaller for smaller blobs).
const CHUNK: usize = 1 << 20;

thread_local! {
    /// A zstd decompression context per transfer thread, reused from object to object: a tree
    /// of 30,000 small files would otherwise spend more time setting contexts up than decoding.
    static DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

/// What [`Remote::push`] did with an action record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The record was not there: its objects and the signed record were uploaded.
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
    pub fn fetch(&self, store: &Store, output: ActionResult) -> Result<()> {
        match output.kind {
            OutputKind::Blob => self.fetch_blob(store, &output.output, None),
            OutputKind::Tree => self.fetch_tree(store, &output.output),
        }
    }

    /// Uploads what `record.output` refers to, then the record signed with this client's key.
    pub fn push(&self, store: &Store, record: &ActionRecord) -> Result<Pushed> {
        let key = self.signing.as_ref().ok_or(RemoteError::NoSigningKey)?;
        let path = format!("ac/{}", record.key);
        let existing = self.retrying(|| self.read_record(&record.key))?;
        let theirs = existing.and_then(|text| SignedRecord::parse(&text).ok());
        if let Some(theirs) = &theirs
            && theirs.record.output != record.output
        {
            return Ok(Pushed::Conflict {
                theirs: theirs.record.output.output,
            });
        }
        self.upload_output(store, record.output)?;
        let (mut signed, pushed) = match theirs {
            Some(theirs) if theirs.signed_by(&key.public()) => return Ok(Pushed::AlreadyThere),
            // Same result: sign what is there, keeping its notes and signatures.
            Some(theirs) => (theirs, Pushed::Cosigned),
            None => (SignedRecord::unsigned(record.clone()), Pushed::Uploaded),
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

    fn fetch_tree(&self, store: &Store, id: &TreeId) -> Result<()> {
        if store.has_tree(id) {
            return Ok(());
        }
        let bytes = self.retrying(|| self.download_bytes(id, TREE_LIMIT))?;
        let corrupt = |reason: String| RemoteError::Corrupt {
            location: self.location().to_owned(),
            id: *id,
            reason,
        };
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

    /// Downloads one blob into the store, hashing it on the way; `size` is what the tree
    /// naming it says, when known.
    fn download_blob(&self, store: &Store, id: &BlobId, size: Option<u64>) -> Result<()> {
        let path = format!("cas/{id}");
        let incoming = self.transport.get(self.location(), &path)?.ok_or_else(|| {
            RemoteError::MissingObject {
                location: self.location().to_owned(),
                id: *id,
            }
        })?;
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
    /// size, when the tree naming it says it).
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
                        let connection = decoder.get_ref().get_ref().connection_error;
                        return Err(match connection {
                            Some(kind) => self.body_error(path, Some(kind), error),
                            None => corrupt(format!("it does not decompress: {error}")),
                        });
                    }
                };
                total += n as u64;
                if size.is_some_and(|size| total > size) {
                    return Err(corrupt("it is longer than the tree says".to_owned()));
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
        let decoder = zstd::stream::read::Decoder::new(incoming)
            .map_err(|error| corrupt(format!("it does not decompress: {error}")))?;
        let mut limited = decoder.take(limit + 1);
        let mut bytes = Vec::new();
        if let Err(error) = limited.read_to_end(&mut bytes) {
            let connection = limited.get_ref().get_ref().get_ref().connection_error;
            return Err(match connection {
                Some(kind) => self.body_error(&path, Some(kind), error),
                None => corrupt(format!("it does not decompress: {error}")),
            });
        }
        if bytes.len() as u64 > limit {
            return Err(corrupt("it is larger than any tree manifest".to_owned()));
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

    fn upload_output(&self, store: &Store, output: ActionResult) -> Result<()> {
        match output.kind {
            OutputKind::Blob => self.upload_blob(store, &output.output),
            OutputKind::Tree => self.upload_tree(store, &output.output),
        }
    }

    /// Uploads a blob unless the server has it.
    fn upload_blob(&self, store: &Store, id: &BlobId) -> Result<()> {
        let path = format!("cas/{id}");
        if self.retrying(|| self.transport.exists(self.location(), &path))? {
            return Ok(());
        }
        let size = store
            .open_blob(id)?
            .metadata()
            .map(|meta| meta.len())
            .unwrap_or(0);
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
        self.counters.pushed_objects.fetch_add(1, Ordering::Relaxed);
        self.counters
            .pushed_bytes
            .fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads a tree's blobs, then its manifest, unless the server has the manifest (which
    /// it only gets after its blobs).
    fn upload_tree(&self, store: &Store, id: &TreeId) -> Result<()> {
        let path = format!("cas/{id}");
        if self.retrying(|| self.transport.exists(self.location(), &path))? {
            return Ok(());
        }
        let manifest = store.manifest(id)?;
        let mut blobs: Vec<BlobId> = manifest.blobs().map(|(blob, _)| *blob).collect();
        blobs.sort();
        blobs.dedup();
        self.pool.install(|| {
            blobs
                .par_iter()
                .try_for_each(|blob| self.upload_blob(store, blob))
        })?;
        let tree_path = store.tree_path(id);
        let bytes = fs::read(&tree_path).map_err(|source| StoreError::Read {
            path: tree_path.clone(),
            source,
        })?;
        let compressed =
            zstd::encode_all(&bytes[..], LEVEL).map_err(|source| StoreError::Read {
                path: tree_path,
                source,
            })?;
        self.retrying(|| {
            self.transport
                .put(self.location(), &path, &mut &compressed[..])
        })?;
        let c = &self.counters;
        c.pushed_objects.fetch_add(1, Ordering::Relaxed);
        c.pushed_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        c.pushed_wire_bytes
            .fetch_add(compressed.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
