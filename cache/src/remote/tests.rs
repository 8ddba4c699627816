//! Pushing to and fetching from a shared cache held in a directory (`file://`): the same code
//! as over HTTP but the transport. The HTTP transport is tested against a real nginx by the
//! end-to-end tests of the binary.

use std::fs;
use std::io::Read;
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

/// The size of `output` in `store`, as a record says it.
fn size(store: &Store, output: ActionResult) -> u64 {
    let path = match output.kind {
        OutputKind::Blob => store.plain_blob_path(&output.output),
        OutputKind::Tree => store.tree_path(&output.output),
    };
    fs::metadata(path).unwrap().len()
}

fn record(key: &str, output: ActionResult) -> ActionRecord {
    ActionRecord {
        output_size: None,
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
    let record = ActionRecord {
        output_size: Some(size(&fixture.a, output)),
        ..record("key", output)
    };
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
    reader
        .fetch(&fixture.b, output, record.output_size)
        .unwrap();
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
    reader
        .fetch(&fixture.b, output, record.output_size)
        .unwrap();
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
    let error = reader.fetch(&fixture.b, output, Some(16)).unwrap_err();
    assert!(
        matches!(&error, RemoteError::Corrupt { reason, .. } if reason.contains("does not match")),
        "{error}"
    );
    // Not zstd at all.
    fs::write(fixture.object(&blob), b"garbage").unwrap();
    let error = reader.fetch(&fixture.b, output, Some(16)).unwrap_err();
    assert!(matches!(error, RemoteError::Corrupt { .. }), "{error}");
    assert!(!fixture.b.has_blob(&blob));
    assert!(fs::read_dir(fixture.b.tmp_dir()).unwrap().next().is_none());
    // Gone altogether.
    fs::remove_file(fixture.object(&blob)).unwrap();
    let error = reader.fetch(&fixture.b, output, Some(16)).unwrap_err();
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
    let error = fixture
        .reader()
        .fetch(&fixture.b, output, None)
        .unwrap_err();
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
    // The trusted key's push replaces what no trusted key signed: now it is accepted.
    assert_eq!(
        fixture.pusher().push(&fixture.a, &record).unwrap(),
        Pushed::Uploaded
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

/// A tree of `files` small files in `store`.
fn small_tree(store: &Store, files: usize) -> ActionResult {
    let mut entries = vec![Entry::new("", EntryKind::Dir, 0o755)];
    for n in 0..files {
        let content = format!("small file {n}\n").repeat(n + 1).into_bytes();
        let blob = store.put_bytes(&content).unwrap();
        entries.push(Entry::new(
            format!("s{n}"),
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

#[test]
fn a_blob_output_is_read_no_further_than_its_record_says() {
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
    let Lookup::Hit(hit) = reader.lookup(&record("key", output).key).unwrap() else {
        panic!("no hit")
    };
    assert_eq!(hit.record.output_size, Some(16));
    assert!(hit.signed.contains("kiln-action/2"), "{}", hit.signed);
    // 64 MiB of zeros in a few KiB: cut off after the 16 bytes recorded, and the chunk that
    // went over.
    let bomb = zstd::encode_all(std::io::repeat(0).take(64 << 20), 1).unwrap();
    fs::write(fixture.object(&blob), &bomb).unwrap();
    let error = reader
        .fetch(&fixture.b, output, hit.record.output_size)
        .unwrap_err();
    assert!(
        matches!(&error, RemoteError::Corrupt { reason, .. } if reason.contains("longer than recorded")),
        "{error}"
    );
    assert!(error.is_bad_entry());
    assert!(fs::read_dir(fixture.b.tmp_dir()).unwrap().next().is_none());
    // An endless body that decompresses to nothing (empty frames) is cut off on the wire.
    let empty = zstd::encode_all(&b""[..], 1).unwrap();
    fs::write(fixture.object(&blob), empty.repeat(100_000)).unwrap();
    let error = reader
        .fetch(&fixture.b, output, hit.record.output_size)
        .unwrap_err();
    assert!(
        matches!(&error, RemoteError::Corrupt { reason, .. } if reason.contains("on the wire")),
        "{error}"
    );
    // Without a size, a blob is not fetched at all.
    let error = reader.fetch(&fixture.b, output, None).unwrap_err();
    assert!(matches!(error, RemoteError::Corrupt { .. }), "{error}");
    assert!(!fixture.b.has_blob(&blob));
}

#[test]
fn records_of_format_1_are_used_for_trees_only_and_replaced_by_a_push() {
    let fixture = Fixture::new();
    let blob = ActionResult {
        output: fixture.a.put_bytes(b"content").unwrap(),
        kind: OutputKind::Blob,
    };
    let tree = small_tree(&fixture.a, 3);
    let pusher = fixture.pusher();
    let reader = fixture.reader();
    for (name, output) in [("blob", blob), ("tree", tree)] {
        // What an older kiln pushed: the objects, and a record without a size.
        pusher.push(&fixture.a, &record(name, output)).unwrap();
        let mut old = SignedRecord::unsigned(record(name, output));
        old.sign(&fixture.key);
        let text = old.to_json();
        assert!(text.contains("kiln-action/1"), "{text}");
        let path = fixture.server.join("ac").join(old.record.key.to_string());
        fs::write(&path, &text).unwrap();
        let lookup = reader.lookup(&old.record.key).unwrap();
        match output.kind {
            OutputKind::Blob => assert_eq!(lookup, Lookup::Rejected(Rejection::Unsized)),
            OutputKind::Tree => {
                assert!(matches!(lookup, Lookup::Hit(_)), "{lookup:?}");
                reader.fetch(&fixture.b, output, None).unwrap();
            }
        }
        // Pushing again writes a record that says the size.
        assert_eq!(
            pusher.push(&fixture.a, &record(name, output)).unwrap(),
            Pushed::Uploaded
        );
        assert!(
            matches!(reader.lookup(&old.record.key).unwrap(), Lookup::Hit(hit) if hit.record.output_size.is_some())
        );
    }
}

#[test]
fn a_slow_body_is_cut_off_as_too_slow() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = std::io::Read::read(&mut stream, &mut request);
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        for _ in 0..150 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if stream.write_all(b"x").is_err() {
                return;
            }
        }
    });
    let mut config = RemoteConfig::new(RemoteUrl::parse(&url).unwrap());
    config.retries = 0;
    config.timeouts = Timeouts {
        connect: std::time::Duration::from_secs(2),
        stall: std::time::Duration::from_millis(300),
        min_rate: 1024,
    };
    let remote = Remote::open(config).unwrap();
    let error = remote.lookup(&Digest::of_bytes(b"key")).unwrap_err();
    assert!(matches!(error, RemoteError::TooSlow { .. }), "{error}");
    assert!(!error.is_transient());
    assert!(!error.is_bad_entry());
}

/// What may be planted under an object's name before a push.
fn planted(how: u8, content: &[u8]) -> Vec<u8> {
    match how {
        0 => b"garbage".to_vec(),
        1 => zstd::encode_all(&b"other content"[..], 3).unwrap(),
        2 => zstd::encode_all(&[content, b"and more"].concat()[..], 3).unwrap(),
        3 => zstd::encode_all(&content[..content.len() / 2], 3).unwrap(),
        _ => Vec::new(),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever was planted under the names of a tree's objects before it is pushed (garbage,
    /// other content, longer or shorter content, an empty file; the manifest's or any blob's),
    /// readers get the whole tree after the push.
    #[test]
    fn whatever_was_planted_before_a_push_readers_get_the_tree(
        plants in proptest::collection::vec((0usize..7, 0u8..5), 0..7),
    ) {
        let fixture = Fixture::new();
        let output = small_tree(&fixture.a, 6);
        let manifest = fixture.a.manifest(&output.output).unwrap();
        let mut objects: Vec<(Digest, Vec<u8>)> = manifest
            .blobs()
            .map(|(blob, _)| (*blob, fixture.a.read_blob(blob).unwrap()))
            .collect();
        objects.push((output.output, fs::read(fixture.a.tree_path(&output.output)).unwrap()));
        fs::create_dir_all(fixture.server.join("cas")).unwrap();
        for (which, how) in &plants {
            let (id, content) = &objects[which % objects.len()];
            fs::write(fixture.object(id), planted(*how, content)).unwrap();
        }
        let record = record("key", output);
        proptest::prop_assert_eq!(
            fixture.pusher().push(&fixture.a, &record).unwrap(),
            Pushed::Uploaded
        );
        let reader = fixture.reader();
        let Lookup::Hit(hit) = reader.lookup(&record.key).unwrap() else {
            panic!("no hit")
        };
        reader.fetch(&fixture.b, output, hit.record.output_size).unwrap();
        proptest::prop_assert!(fixture.b.has_tree(&output.output));
    }

    /// A blob served with anything after its content is refused, whatever the lengths.
    #[test]
    fn a_blob_with_more_than_its_recorded_size_is_refused(
        content in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        extra in proptest::collection::vec(proptest::num::u8::ANY, 1..3000),
    ) {
        let fixture = Fixture::new();
        let output = ActionResult {
            output: fixture.a.put_bytes(&content).unwrap(),
            kind: OutputKind::Blob,
        };
        fixture.pusher().push(&fixture.a, &record("key", output)).unwrap();
        let size = Some(content.len() as u64);
        let served = zstd::encode_all(&[&content[..], &extra[..]].concat()[..], 3).unwrap();
        fs::write(fixture.object(&output.output), served).unwrap();
        let reader = fixture.reader();
        let error = reader.fetch(&fixture.b, output, size).unwrap_err();
        proptest::prop_assert!(
            matches!(&error, RemoteError::Corrupt { reason, .. } if reason.contains("longer than recorded")),
            "{}", error
        );
        proptest::prop_assert!(!fixture.b.has_blob(&output.output));
    }
}
