//! Several processes on one store: concurrent writers, gc against a live
//! user, a writer killed mid-way. Children are this test binary re-run with
//! `KILN_CACHE_CHILD` set. None of these needs root.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Scratch;
use kiln_cache::{
    ActionResult, Digest, GcPolicy, OutputKind, PutMode, RunStatus, StageRun, Store, StoreError,
};

const CHILD_ENV: &str = "KILN_CACHE_CHILD";

/// What a child prints once it holds the store.
const READY: &str = "kiln-child-ready";

/// Not a test: the body of the child processes the tests below start (ignored, so a run of
/// the suite does not count it as a test that passed). Does nothing unless
/// `KILN_CACHE_CHILD=<mode>:<store>` is set.
#[test]
#[ignore = "started by the tests below"]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, root) = spec.split_once(':').unwrap();
    let store = Store::open(Path::new(root)).unwrap();
    match mode {
        "write" => write_builds(&store, &format!("child{}", std::process::id()), 20),
        "hold" => {
            println!("{READY}");
            std::io::stdout().flush().unwrap();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        "write-forever" => {
            let index = store.index().unwrap();
            let scratch = tempfile::tempdir().unwrap();
            println!("{READY}");
            std::io::stdout().flush().unwrap();
            for i in 0u64.. {
                let file = scratch.path().join("f");
                let content: Vec<u8> = (0..(2u64 << 20)).map(|b| (b ^ i) as u8).collect();
                std::fs::write(&file, content).unwrap();
                let blob = store.put_file(&file, PutMode::Copy).unwrap();
                let key = Digest::of_bytes(&i.to_le_bytes());
                index
                    .record_action(
                        &key,
                        ActionResult {
                            output: blob,
                            kind: OutputKind::Blob,
                        },
                    )
                    .unwrap();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn(mode: &str, root: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}:{}", root.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits until the child prints [`READY`].
fn wait_ready(child: &mut Child) {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        // libtest prints the test's name on the same line.
        if line.contains(READY) {
            return;
        }
        line.clear();
    }
    panic!("child exited before it was ready");
}

fn write_builds(store: &Store, recipe: &str, runs: usize) {
    let index = store.index().unwrap();
    let build = index
        .begin_build(recipe, Path::new("/r"), std::time::SystemTime::now())
        .unwrap();
    for i in 0..runs {
        let output = store.put_bytes(format!("{recipe}/{i}").as_bytes()).unwrap();
        let shared = store.put_bytes(b"shared by all writers").unwrap();
        let run = StageRun {
            notes: Vec::new(),
            stage: format!("stage{i}"),
            kind: "test".to_owned(),
            key: Digest::of_bytes(format!("key{i}").as_bytes()),
            status: RunStatus::Ran,
            output_changed: true,
            duration: Duration::from_millis(1),
            output: ActionResult {
                output,
                kind: OutputKind::Blob,
            },
            inputs: vec![kiln_cache::RecordedInput {
                name: "shared".to_owned(),
                kind: "file".to_owned(),
                digest: shared,
                value: None,
            }],
        };
        index.record_action(&run.key, run.output).unwrap();
        index.record_run(build, &run).unwrap();
    }
    index.finish_build(build, true).unwrap();
}

#[test]
fn processes_record_concurrently() {
    let s = Scratch::new();
    let root = s.store.root().to_owned();
    let children: Vec<Child> = (0..2).map(|_| spawn("write", &root)).collect();
    write_builds(&s.store, "parent", 20);
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let index = s.store.index().unwrap();
    let builds = index.builds(None).unwrap();
    assert_eq!(builds.len(), 3);
    for build in builds {
        assert_eq!(index.runs(build.id).unwrap().len(), 20, "{}", build.recipe);
    }
    let stats = s.store.stats().unwrap();
    assert_eq!(stats.runs, 60);
    // Same keys from every process: the first record of each wins.
    assert_eq!(stats.actions, 20);
    assert_eq!(stats.blobs, 61);
    assert!(s.store.verify().unwrap().is_clean());
}

#[test]
fn gc_fails_while_another_process_uses_the_store() {
    let s = Scratch::new();
    let mut child = spawn("hold", s.store.root());
    wait_ready(&mut child);
    let policy = GcPolicy {
        lock_timeout: Duration::from_millis(200),
        ..GcPolicy::default()
    };
    let err = s.store.gc(policy).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.help().unwrap().contains("Wait"));
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    s.store.gc(policy).unwrap();
}

#[test]
fn a_killed_writer_leaves_the_store_consistent() {
    let s = Scratch::new();
    let mut child = spawn("write-forever", s.store.root());
    wait_ready(&mut child);
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();

    let report = s.store.verify().unwrap();
    eprintln!("{report}");
    assert!(report.removed.is_empty(), "{report}");
    assert!(report.actions_removed.is_empty(), "{report}");
    assert_eq!(s.store.stats().unwrap().temp_files, 0);
    // Every recorded action can be served.
    let index = s.store.index().unwrap();
    let stats = s.store.stats().unwrap();
    assert!(stats.actions > 0, "the child recorded nothing in 400 ms");
    for i in 0..stats.actions {
        let key = Digest::of_bytes(&i.to_le_bytes());
        let result = index.lookup_action(&key).unwrap().unwrap();
        assert!(s.store.has_blob(&result.output));
    }
}
