//! Times what flushing a stage's objects to disk before its record costs:
//! storing a big tree into an empty store (ingest, manifest) and recording
//! its action, with the record's flush ([`Store::make_durable`]) and without
//! it, alternately, RUNS times each; prints the medians and their ratio.
//!
//! ```text
//! cargo run -p kiln-cache --example durability_bench -- [DIR] [FILES] [RUNS]
//! ```
//!
//! DIR (default `/var/tmp/kiln-durability-bench`) receives a generated tree
//! of FILES files (default 30000) in 300 directories, 1 to 39 kB each (about
//! 600 MB for 30000), and one store per run. It is removed at the end. The
//! whole filesystem is synced before each run, so no run pays for the
//! previous one's writes.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_cache::{ActionResult, Digest, IngestOptions, OutputKind, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = std::path::PathBuf::from(
        args.next()
            .unwrap_or("/var/tmp/kiln-durability-bench".to_owned()),
    );
    let files: usize = args.next().map_or(Ok(30_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    if base.exists() {
        fs::remove_dir_all(&base)?;
    }
    let tree = base.join("tree");
    let bytes = generate(&tree, files, 300)?;
    println!(
        "tree: {files} files in 300 directories, {:.0} MB",
        bytes as f64 / 1e6
    );
    let owner = IngestOptions {
        owner: Some((0, 0)),
        ..IngestOptions::default()
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..runs * 2 {
        let flush = run % 2 == 0;
        let root = base.join(format!("store-{run}"));
        rustix::fs::sync();
        let start = Instant::now();
        let store = Store::open(&root)?;
        let manifest = store.ingest_dir(&tree, owner)?;
        let id = store.put_manifest(&manifest)?;
        let key = Digest::of_bytes(format!("bench {run}").as_bytes());
        let result = ActionResult {
            output: id,
            kind: OutputKind::Tree,
        };
        if flush {
            // What a stage's record does: flush the batch, then write the row.
            store.index()?.record_action(&key, result)?;
            with.push(start.elapsed());
        } else {
            // The same without the flush: the list of objects to flush is
            // forgotten (a seam meant for benchmarks), then the row is written.
            store.forget_unsynced_objects();
            store.index()?.record_action(&key, result)?;
            without.push(start.elapsed());
        }
        drop(store);
        fs::remove_dir_all(&root)?;
    }
    fs::remove_dir_all(&base)?;
    let (with, without) = (median(with), median(without));
    println!("store + record, no flush   : {without:?} (median of {runs})");
    println!("store + flush + record     : {with:?} (median of {runs})");
    println!(
        "ratio                      : {:.3}",
        with.as_secs_f64() / without.as_secs_f64()
    );
    Ok(())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Writes `files` files of 1 to 39 kB spread over `dirs` directories.
fn generate(root: &Path, files: usize, dirs: usize) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut state = 42u64;
    for i in 0..files {
        let dir = root.join(format!("dir{:03}", i % dirs));
        fs::create_dir_all(&dir)?;
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = 1000 + (state >> 33) as usize % 38_000;
        let content: Vec<u8> = (0..size)
            .map(|j| (state >> (j % 56)) as u8 ^ j as u8)
            .collect();
        fs::write(dir.join(format!("file{i:05}")), content)?;
        total += size as u64;
    }
    Ok(total)
}
