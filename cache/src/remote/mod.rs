//! The shared cache: a remote store that any HTTP server answering GET, HEAD and PUT can hold
//! (nginx with WebDAV's `dav_methods PUT`), or a directory (`file://`), so a team builds once
//! and everyone reuses it.
//!
//! # Layout on the server
//!
//! ```text
//! {base}/
//! ├── cas/{blake3}     content-addressed objects: blobs (file contents, images) and tree
//! │                    manifests in their canonical encoding, each named by
//! │                    the blake3 of its uncompressed content and stored as one zstd frame
//! └── ac/{key}         action results: one signed JSON record per stage key (see `record`)
//! ```
//!
//! # Trust
//!
//! Content-addressed objects need none: each is streamed through a zstd decoder and blake3
//! into the local store's `tmp/`, and renamed into place only when its digest is its name
//! (a 150 MB blob never sits in memory). A tree's manifest is checked the same way and stored
//! only after every blob it names, so the store's integrity rule holds for what comes from
//! the remote too. An action record is accepted only when one of the client's trusted public
//! keys signed it ([`keys`], as Nix binary caches do); the key of the client's own signing key
//! is trusted too. A record signed by no trusted key, or changed after it was signed, is
//! [`Lookup::Rejected`], never used.
//!
//! A record says its output's size, under its signature: a download stops there, so a server
//! cannot fill the local disk under a trusted name. Records of format 1, written before they
//! said it, are still used for trees (a manifest is bounded, and so is each blob by the
//! manifest naming it) but not for blobs ([`Rejection::Unsized`]).
//!
//! # Writes
//!
//! [`Remote::push`] uploads blobs, then the tree manifest, then the signed record. An object
//! the server has already is downloaded and checked first, and uploaded again when it fails
//! (see `transfer`): anyone who can write there may have put garbage under its name. A record
//! a trusted key signed is never replaced by one with another output: the first writer wins,
//! as in the local action cache; a second signer of the same result adds its signature. A
//! record no trusted key signed counts for nothing and is replaced.
//!
//! # Failures
//!
//! Every request has a connect timeout and a stall timeout, and every body a minimum rate
//! (see `transport`). A whole object is retried with exponential backoff after a broken
//! connection or a 5xx, 408 or 429 answer; a timeout is not retried. What still fails is a
//! [`RemoteError`]. When it is about one entry only ([`RemoteError::is_bad_entry`]: a corrupt
//! or missing object, a malformed record), the engine does without that entry; otherwise it
//! stops asking this remote for the rest of the build. Objects move in parallel on a pool of
//! [`RemoteConfig::transfers`] threads.

pub mod error;
pub mod keys;
pub mod record;
mod transfer;
mod transport;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::digest::Digest;
use crate::index::OutputKind;
use crate::maintenance::human_bytes;

pub use error::RemoteError;
pub use keys::{KeyError, PublicKey, SecretKey};
pub use record::{ActionRecord, RECORD_FORMAT, RecordError, SignedRecord, Verdict};
pub use transfer::Pushed;
pub use transport::{Credentials, RemoteUrl, Timeouts};

use error::Result;
use transport::{Cut, Incoming, Transport};

/// The largest action record read.
const RECORD_LIMIT: u64 = 16 << 20;

/// The first wait before a retry; each further retry waits four times longer.
const BACKOFF: Duration = Duration::from_millis(100);

/// How to reach a shared cache and whom to trust.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The base URL.
    pub url: RemoteUrl,
    /// How to authenticate, if the server wants it.
    pub credentials: Option<Credentials>,
    /// Keys whose signed records are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// The key that signs what this client pushes.
    pub signing_key: Option<SecretKey>,
    /// How many objects move at once.
    pub transfers: usize,
    /// Connect and stall timeouts, and the minimum rate of a body.
    pub timeouts: Timeouts,
    /// How many times a failed transfer is tried again.
    pub retries: u32,
}

impl RemoteConfig {
    /// A configuration for `url` with default timeouts and parallelism, trusting no key.
    pub fn new(url: RemoteUrl) -> RemoteConfig {
        RemoteConfig {
            url,
            credentials: None,
            trusted_keys: Vec::new(),
            signing_key: None,
            transfers: 8,
            timeouts: Timeouts::default(),
            retries: 3,
        }
    }
}

/// A shared cache, ready to use. Cheap to share between threads.
pub struct Remote {
    url: RemoteUrl,
    transport: Transport,
    trusted: Vec<PublicKey>,
    signing: Option<SecretKey>,
    retries: u32,
    pool: rayon::ThreadPool,
    counters: Counters,
    /// Objects this client uploaded, or downloaded and found intact, while pushing.
    known: Mutex<BTreeSet<Digest>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.as_str())
            .field("trusted", &self.trusted)
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

/// What [`Remote::lookup`] found for a stage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A record a trusted key signed.
    Hit(RemoteAction),
    /// Nothing under that key.
    Miss,
    /// A record that must not be used.
    Rejected(Rejection),
}

/// A trusted action record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAction {
    /// The record.
    pub record: ActionRecord,
    /// The name of the trusted key that signed it.
    pub signer: String,
    /// The signed text as served, to keep and check again later.
    pub signed: String,
}

/// Why a record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Its signatures: untrusted, broken, or none.
    Signature(Verdict),
    /// It is the record of another key, served under this one.
    OtherKey {
        /// The key it is about.
        found: Digest,
    },
    /// A newer kiln wrote it.
    UnknownFormat(String),
    /// An older kiln wrote it: it does not say the size of its output, a blob, so nothing
    /// would bound the download.
    Unsized,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Signature(verdict) => verdict.fmt(f),
            Rejection::OtherKey { found } => {
                write!(f, "it is the record of another key, `{}`", found.short())
            }
            Rejection::UnknownFormat(format) => {
                write!(
                    f,
                    "it is written in format `{format}`, unknown to this kiln"
                )
            }
            Rejection::Unsized => write!(
                f,
                "an older kiln wrote it without its output's size; push the build again"
            ),
        }
    }
}

/// Objects moved so far by a [`Remote`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Objects downloaded into the local store.
    pub fetched_objects: u64,
    /// Their size.
    pub fetched_bytes: u64,
    /// Bytes received for them (compressed).
    pub fetched_wire_bytes: u64,
    /// Objects uploaded.
    pub pushed_objects: u64,
    /// Their size.
    pub pushed_bytes: u64,
    /// Bytes sent for them (compressed).
    pub pushed_wire_bytes: u64,
    /// Action records uploaded or signed.
    pub pushed_records: u64,
}

impl TransferStats {
    /// `12 objects, 3.5 MiB (1.2 MiB on the wire)` for downloads.
    pub fn describe_fetched(&self) -> String {
        format!(
            "{} objects, {} ({} on the wire)",
            self.fetched_objects,
            human_bytes(self.fetched_bytes),
            human_bytes(self.fetched_wire_bytes)
        )
    }

    /// The same for uploads.
    pub fn describe_pushed(&self) -> String {
        format!(
            "{} objects, {} ({} on the wire)",
            self.pushed_objects,
            human_bytes(self.pushed_bytes),
            human_bytes(self.pushed_wire_bytes)
        )
    }
}

#[derive(Debug, Default)]
struct Counters {
    fetched_objects: AtomicU64,
    fetched_bytes: AtomicU64,
    fetched_wire_bytes: AtomicU64,
    pushed_objects: AtomicU64,
    pushed_bytes: AtomicU64,
    pushed_wire_bytes: AtomicU64,
    pushed_records: AtomicU64,
}

impl Remote {
    /// Prepares to talk to the shared cache of `config`; nothing is sent yet.
    pub fn open(config: RemoteConfig) -> Result<Remote> {
        let transfers = config.transfers.max(1);
        let transport = Transport::new(
            &config.url,
            config.credentials.as_ref(),
            config.timeouts,
            transfers,
        );
        let mut trusted = config.trusted_keys;
        if let Some(own) = config.signing_key.as_ref().map(SecretKey::public)
            && !trusted.contains(&own)
        {
            trusted.push(own);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(transfers)
            .thread_name(|n| format!("kiln-transfer-{n}"))
            .build()
            .map_err(|source| RemoteError::Threads { source })?;
        Ok(Remote {
            url: config.url,
            transport,
            trusted,
            signing: config.signing_key,
            retries: config.retries,
            pool,
            counters: Counters::default(),
            known: Mutex::new(BTreeSet::new()),
        })
    }

    /// The base URL, for messages (it never holds credentials).
    pub fn location(&self) -> &str {
        self.url.as_str()
    }

    /// Whether this client can push (it has a signing key).
    pub fn can_push(&self) -> bool {
        self.signing.is_some()
    }

    /// The keys whose records are accepted.
    pub fn trusted_keys(&self) -> &[PublicKey] {
        &self.trusted
    }

    /// What moved so far.
    pub fn stats(&self) -> TransferStats {
        let c = &self.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        TransferStats {
            fetched_objects: get(&c.fetched_objects),
            fetched_bytes: get(&c.fetched_bytes),
            fetched_wire_bytes: get(&c.fetched_wire_bytes),
            pushed_objects: get(&c.pushed_objects),
            pushed_bytes: get(&c.pushed_bytes),
            pushed_wire_bytes: get(&c.pushed_wire_bytes),
            pushed_records: get(&c.pushed_records),
        }
    }

    /// Looks up the record of a stage key and checks it.
    pub fn lookup(&self, key: &Digest) -> Result<Lookup> {
        match self.retrying(|| self.read_record(key))? {
            None => Ok(Lookup::Miss),
            Some(text) => self.accept(key, &text),
        }
    }

    /// Checks the text of a record for `key` (as served, or as kept from an earlier build)
    /// against the trusted keys.
    pub fn accept(&self, key: &Digest, text: &str) -> Result<Lookup> {
        let signed = match SignedRecord::parse(text) {
            Ok(signed) => signed,
            Err(RecordError::UnknownFormat(format)) => {
                return Ok(Lookup::Rejected(Rejection::UnknownFormat(format)));
            }
            Err(RecordError::Malformed(reason)) => {
                return Err(RemoteError::MalformedRecord {
                    location: self.location().to_owned(),
                    key: *key,
                    reason,
                });
            }
        };
        if signed.record.key != *key {
            return Ok(Lookup::Rejected(Rejection::OtherKey {
                found: signed.record.key,
            }));
        }
        Ok(match signed.verify(&self.trusted) {
            Verdict::Trusted { .. }
                if signed.record.output.kind == OutputKind::Blob
                    && signed.record.output_size.is_none() =>
            {
                Lookup::Rejected(Rejection::Unsized)
            }
            Verdict::Trusted { signer } => Lookup::Hit(RemoteAction {
                record: signed.record,
                signer,
                signed: text.to_owned(),
            }),
            verdict => Lookup::Rejected(Rejection::Signature(verdict)),
        })
    }

    /// The text at `ac/{key}`, if any.
    fn read_record(&self, key: &Digest) -> Result<Option<String>> {
        let path = format!("ac/{key}");
        let Some(mut incoming) = self.transport.get(self.location(), &path)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        if let Err(error) = (&mut incoming).take(RECORD_LIMIT).read_to_end(&mut bytes) {
            return Err(self.body_error(&path, &incoming, error));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| RemoteError::MalformedRecord {
                location: self.location().to_owned(),
                key: *key,
                reason: "it is not UTF-8".to_owned(),
            })
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are used up.
    fn retrying<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match op() {
                Err(error) if error.is_transient() && attempt < self.retries => {
                    std::thread::sleep(BACKOFF * 4u32.pow(attempt));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// An error while a body was coming in, on the connection itself.
    fn body_error(&self, path: &str, incoming: &Incoming, error: std::io::Error) -> RemoteError {
        if incoming.cut == Some(Cut::TooSlow) {
            RemoteError::TooSlow {
                location: self.location().to_owned(),
                what: format!("GET {path}"),
                received: incoming.wire_bytes,
            }
        } else if incoming.connection_error == Some(std::io::ErrorKind::TimedOut) {
            RemoteError::TimedOut {
                location: self.location().to_owned(),
                what: format!("GET {path}"),
            }
        } else {
            RemoteError::Unreachable {
                location: self.location().to_owned(),
                what: format!("GET {path}"),
                message: error.to_string(),
            }
        }
    }

    /// An error while the body of object `id` was read through a decoder: on the
    /// connection, or in what the server sent.
    fn object_error(
        &self,
        path: &str,
        id: &Digest,
        incoming: &Incoming,
        error: std::io::Error,
    ) -> RemoteError {
        let reason = match incoming.cut {
            Some(Cut::TooLong) => {
                "it is longer on the wire than any compression of its recorded size".to_owned()
            }
            _ if incoming.connection_error.is_some() => {
                return self.body_error(path, incoming, error);
            }
            _ => format!("it does not decompress: {error}"),
        };
        RemoteError::Corrupt {
            location: self.location().to_owned(),
            id: *id,
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
