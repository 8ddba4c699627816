//! Pushing to and fetching from a shared cache held in a directory (`file://`): the same code
//! as over HTTP but the transport. The HTTP transport is tested against a real nginx by the
//! end-to-end tests of the binary.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::index::{ActionResult, OutputKind, RecordedInput};
use crate::manifest::{Entry, EntryKind};
use crate::store::Store;

struct Fixture {
    _dir: tempfile::TempDir,
    server: PathBuf,
    a: Store,
    b: Store,
    key: SecretKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server");
        fs::create_dir_all(&server).unwrap();
        Fixture {
            a: Store::open(&dir.path().join("a")).unwrap(),
            b: Store::open(&dir.path().join("b")).unwrap(),
            server,
            key: SecretKey::generate("ci-1").unwrap(),
            _dir: dir,
        }
    }

    fn config(&self) -> RemoteConfig {
        let url = RemoteUrl::parse(&format!("file://{}", self.server.display())).unwrap();
        RemoteConfig::new(url)
    }

    /// A client that signs with the fixture's key.
    fn pusher(&self) -> Remote {
        let mut config = self.config();
        config.signing_key = Some(self.key.clone());
        Remote::open(config).unwrap()
    }

    /// A client that trusts the fixture's key and cannot push.
    fn reader(&self) -> Remote {
        let mut config = self.config();
        config.trusted_keys = vec![self.key.public()];
        config.retries = 0;
        Remote::open(config).unwrap()
    }

    fn object(&self, id: &Digest) -> PathBuf {
        self.server.join("cas").join(id.to_string())
    }
}

/// A tree of `files` files in store `store`, one of them 3 MiB (streamed, not read whole).
fn tree(store: &Store, files: usize) -> ActionResult {
    let mut entries = vec![Entry::new("", EntryKind::Dir, 0o755)];
    for n in 0..files {
        let content = if n == 0 {
            (0..3 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>()
        } else {
            format!("file {n}\n").into_bytes()
        };
        let blob = store.put_bytes(&content).unwrap();
        entries.push(Entry::new(
            format!("f{n:03}"),
            EntryKind::File {
                blob,
                size: content.len() as u64,
            },
            0o644,
        ));
    }
    let manifest = crate::Manifest::from_entries(entries).unwrap();
    ActionResult {
        output: store.put_manifest(&manifest).unwrap(),
        kind: OutputKind::Tree,
    }
}

fn record(key: &str, output: ActionResult) -> ActionRecord {
    ActionRecord {
        key: Digest::of_bytes(key.as_bytes()),
        stage: "base-trees".to_owned(),
        kind: "trees".to_owned(),
        output,
        inputs: vec![RecordedInput {
            name: "base".to_owned(),
            kind: "tree".to_owned(),
            digest: Digest::of_bytes(b"base"),
            value: None,
        }],
        notes: vec!["a note".to_owned()],
    }
}

fn files_under(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_file())
        .count()
}

#[test]
fn a_pushed_tree_is_fetched_whole_and_verified() {
    let fixture = Fixture::new();
    let output = tree(&fixture.a, 40);
    let record = record("key", output);
    let pusher = fixture.pusher();
    assert_eq!(pusher.push(&fixture.a, &record).unwrap(), Pushed::Uploaded);
    // 40 blobs, the manifest and the record.
    assert_eq!(files_under(&fixture.server), 42);
    assert_eq!(pusher.stats().pushed_objects, 41);
    // The 3 MiB blob went over compressed.
    assert!(pusher.stats().pushed_wire_bytes < pusher.stats().pushed_bytes / 10);

    let reader = fixture.reader();
    let Lookup::Hit(hit) = reader.lookup(&record.key).unwrap() else {
        panic!("no hit")
    };
    assert_eq!(hit.record, record);
    assert_eq!(hit.signer, "ci-1");
    assert!(!fixture.b.has_tree(&output.output));
    reader.fetch(&fixture.b, output).unwrap();
    let manifest = fixture.b.manifest(&output.output).unwrap();
    for (blob, _) in manifest.blobs() {
        assert_eq!(
            fixture.b.read_blob(blob).unwrap(),
            fixture.a.read_blob(blob).unwrap()
        );
    }
    assert_eq!(reader.stats().fetched_objects, 41);
    assert!(fs::read_dir(fixture.b.tmp_dir()).unwrap().next().is_none());
    // Fetching again moves nothing.
    reader.fetch(&fixture.b, output).unwrap();
    assert_eq!(reader.stats().fetched_objects, 41);
    // Pushing again uploads nothing.
    assert_eq!(
        pusher.push(&fixture.a, &record).unwrap(),
        Pushed::AlreadyThere
    );
    assert_eq!(pusher.stats().pushed_objects, 41);
}

#[test]
fn a_missing_key_is_a_miss() {
    let fixture = Fixture::new();
    assert_eq!(
        fixture
            .reader()
            .lookup(&Digest::of_bytes(b"nothing"))
            .unwrap(),
        Lookup::Miss
    );
}

#[test]
fn a_corrupt_object_is_rejected_and_leaves_nothing_in_the_store() {
    let fixture = Fixture::new();
    let blob = fixture.a.put_bytes(b"the real content").unwrap();
    let output = ActionResult {
        output: blob,
        kind: OutputKind::Blob,
    };
    fixture
        .pusher()
        .push(&fixture.a, &record("key", output))
        .unwrap();
    let reader = fixture.reader();
    // Valid zstd of other content.
    fs::write(
        fixture.object(&blob),
        zstd::encode_all(&b"evil content"[..], 3).unwrap(),
    )
    .unwrap();
    let error = reader.fetch(&fixture.b, output).unwrap_err();
    assert!(
        matches!(&error, RemoteError::Corrupt { reason, .. } if reason.contains("does not match")),
        "{error}"
    );
    // Not zstd at all.
    fs::write(fixture.object(&blob), b"garbage").unwrap();
    let error = reader.fetch(&fixture.b, output).unwrap_err();
    assert!(matches!(error, RemoteError::Corrupt { .. }), "{error}");
    assert!(!fixture.b.has_blob(&blob));
    assert!(fs::read_dir(fixture.b.tmp_dir()).unwrap().next().is_none());
    // Gone altogether.
    fs::remove_file(fixture.object(&blob)).unwrap();
    let error = reader.fetch(&fixture.b, output).unwrap_err();
    assert!(
        matches!(error, RemoteError::MissingObject { .. }),
        "{error}"
    );
}

#[test]
fn a_tree_with_a_corrupt_blob_is_not_stored() {
    let fixture = Fixture::new();
    let output = tree(&fixture.a, 5);
    fixture
        .pusher()
        .push(&fixture.a, &record("key", output))
        .unwrap();
    let manifest = fixture.a.manifest(&output.output).unwrap();
    let (victim, _) = manifest.blobs().last().unwrap();
    fs::write(
        fixture.object(victim),
        zstd::encode_all(&b"file 9\n"[..], 3).unwrap(),
    )
    .unwrap();
    let error = fixture.reader().fetch(&fixture.b, output).unwrap_err();
    assert!(matches!(error, RemoteError::Corrupt { .. }), "{error}");
    assert!(!fixture.b.has_tree(&output.output));
}

#[test]
fn records_of_untrusted_keys_altered_records_and_misplaced_ones_are_rejected() {
    let fixture = Fixture::new();
    let blob = fixture.a.put_bytes(b"content").unwrap();
    let output = ActionResult {
        output: blob,
        kind: OutputKind::Blob,
    };
    let record = record("key", output);
    // Signed by a stranger.
    let stranger = SecretKey::generate("stranger").unwrap();
    let mut config = fixture.config();
    config.signing_key = Some(stranger);
    Remote::open(config)
        .unwrap()
        .push(&fixture.a, &record)
        .unwrap();
    let reader = fixture.reader();
    assert_eq!(
        reader.lookup(&record.key).unwrap(),
        Lookup::Rejected(Rejection::Signature(Verdict::Untrusted {
            signers: vec!["stranger".to_owned()]
        }))
    );
    // The trusted key co-signs the same result: now it is accepted.
    assert_eq!(
        fixture.pusher().push(&fixture.a, &record).unwrap(),
        Pushed::Cosigned
    );
    assert!(matches!(
        reader.lookup(&record.key).unwrap(),
        Lookup::Hit(_)
    ));
    // Altered after signing.
    let path = fixture.server.join("ac").join(record.key.to_string());
    let text = fs::read_to_string(&path).unwrap();
    let evil = fixture.a.put_bytes(b"evil").unwrap();
    fs::write(&path, text.replace(&blob.to_string(), &evil.to_string())).unwrap();
    assert!(matches!(
        reader.lookup(&record.key).unwrap(),
        Lookup::Rejected(Rejection::Signature(Verdict::BadSignature { .. }))
    ));
    // A valid record served under another key.
    let other = Digest::of_bytes(b"other key");
    fs::create_dir_all(fixture.server.join("ac")).unwrap();
    fs::write(fixture.server.join("ac").join(other.to_string()), &text).unwrap();
    assert_eq!(
        reader.lookup(&other).unwrap(),
        Lookup::Rejected(Rejection::OtherKey { found: record.key })
    );
    // Garbage is an error: the remote is not to be trusted with anything.
    fs::write(&path, "garbage").unwrap();
    assert!(matches!(
        reader.lookup(&record.key),
        Err(RemoteError::MalformedRecord { .. })
    ));
}

#[test]
fn another_output_for_the_same_key_does_not_replace_the_first() {
    let fixture = Fixture::new();
    let pusher = fixture.pusher();
    let first = ActionResult {
        output: fixture.a.put_bytes(b"first").unwrap(),
        kind: OutputKind::Blob,
    };
    let second = ActionResult {
        output: fixture.a.put_bytes(b"second").unwrap(),
        kind: OutputKind::Blob,
    };
    pusher.push(&fixture.a, &record("key", first)).unwrap();
    assert_eq!(
        pusher.push(&fixture.a, &record("key", second)).unwrap(),
        Pushed::Conflict {
            theirs: first.output
        }
    );
    let Lookup::Hit(hit) = fixture.reader().lookup(&Digest::of_bytes(b"key")).unwrap() else {
        panic!("no hit")
    };
    assert_eq!(hit.record.output, first);
}

#[test]
fn pushing_needs_a_signing_key_and_its_own_key_is_trusted() {
    let fixture = Fixture::new();
    let output = ActionResult {
        output: fixture.a.put_bytes(b"x").unwrap(),
        kind: OutputKind::Blob,
    };
    let reader = fixture.reader();
    assert!(!reader.can_push());
    assert!(matches!(
        reader.push(&fixture.a, &record("key", output)),
        Err(RemoteError::NoSigningKey)
    ));
    let pusher = fixture.pusher();
    pusher.push(&fixture.a, &record("key", output)).unwrap();
    assert!(matches!(
        pusher.lookup(&Digest::of_bytes(b"key")).unwrap(),
        Lookup::Hit(_)
    ));
}

#[test]
fn an_unreachable_server_is_an_error_that_may_pass() {
    let url = RemoteUrl::parse("http://127.0.0.1:9").unwrap();
    let mut config = RemoteConfig::new(url);
    config.retries = 0;
    let remote = Remote::open(config).unwrap();
    let error = remote.lookup(&Digest::of_bytes(b"key")).unwrap_err();
    assert!(matches!(error, RemoteError::Unreachable { .. }), "{error}");
    assert!(error.is_transient());
    assert!(error.to_string().contains("http://127.0.0.1:9"), "{error}");
}
