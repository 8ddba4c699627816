//! Times what a rebuild of a big tree costs the store: ingesting it without
//! and with the stat cache, exporting it as a directory from scratch, and
//! exporting a one-file change as a hard-linked clone plus an update.
//!
//! ```text
//! cargo run --release -p kiln-cache --example rebuild_bench -- [DIR] [FILES] [DIRS]
//! ```
//!
//! DIR (default `/var/tmp/kiln-cache-bench`) receives a generated tree of
//! FILES files (default 30000) spread over DIRS directories (default 300),
//! 1 to 39 kB each (about 600 MB), a store, and the exports. It is
//! removed at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_cache::{
    CheckoutMode, CheckoutOptions, Entry, EntryKind, IngestOptions, Store, clone_hardlinked,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = PathBuf::from(
        args.next()
            .unwrap_or("/var/tmp/kiln-cache-bench".to_owned()),
    );
    let files: usize = args.next().map_or(Ok(30_000), |a| a.parse())?;
    let dirs: usize = args.next().map_or(Ok(300), |a| a.parse())?;
    if base.exists() {
        fs::remove_dir_all(&base)?;
    }
    let tree = base.join("tree");
    let bytes = generate(&tree, files, dirs)?;
    println!(
        "tree: {files} files in {dirs} directories, {:.0} MB",
        bytes as f64 / 1e6
    );
    // Files younger than the racy margin are never remembered.
    std::thread::sleep(Duration::from_millis(1200));

    let store = Store::open(&base.join("cache"))?;
    let owner = IngestOptions {
        owner: Some((0, 0)),
        ..IngestOptions::default()
    };
    let (m, cold) = time("ingest, cold store, no stat cache", || {
        store.ingest_dir_report(&tree, owner, false)
    })?;
    println!("    {cold:?}");
    time("ingest again, no stat cache (today's rebuild)", || {
        store.ingest_dir_report(&tree, owner, false)
    })?;
    let (_, first) = time("ingest with stat cache, first time", || {
        store.ingest_dir_report(&tree, owner, true)
    })?;
    println!("    {first:?}");
    let mut warm_times = Vec::new();
    let cpu_before = cpu_time();
    for _ in 0..5 {
        let start = Instant::now();
        let (again, warm) = store.ingest_dir_report(&tree, owner, true)?;
        warm_times.push(start.elapsed());
        assert_eq!(again.id(), m.id());
        assert_eq!(warm.hashed, 0);
    }
    let cpu = (cpu_time() - cpu_before) / 5;
    warm_times.sort();
    println!(
        "{:>50}: {:?} (median of 5, min {:?}; CPU {:?} per ingest)",
        "ingest with stat cache, warm", warm_times[2], warm_times[0], cpu
    );

    let opts = CheckoutOptions {
        mode: CheckoutMode::Copy,
        mtime: Some(1_700_000_000),
        ignore_owner: true,
    };
    let old_out = base.join("out-old");
    time("export: full copy checkout", || {
        store.checkout(&m, &old_out, opts)
    })?;

    // One file of one directory changes.
    let mut m2 = m.clone();
    let victim = m
        .entries()
        .find(|e| e.blob().is_some())
        .ok_or("no file")?
        .clone();
    let content = b"one changed file\n";
    let blob = store.put_bytes(content)?;
    m2.insert_or_replace(Entry {
        kind: EntryKind::File {
            blob,
            size: content.len() as u64,
        },
        ..victim.clone()
    })?;

    let full = base.join("out-full");
    time("export of the change: full copy checkout", || {
        store.checkout(&m2, &full, opts)
    })?;
    let new_out = base.join("out-new");
    time("clone_hardlinked", || clone_hardlinked(&old_out, &new_out))?;
    let report = time("update_checkout of a one-file change", || {
        store.update_checkout(&m, &m2, &new_out, opts)
    })?;
    println!("    {report:?}");
    let other = base.join("out-new2");
    let start = Instant::now();
    clone_hardlinked(&old_out, &other)?;
    store.update_checkout(&m, &m2, &other, opts)?;
    println!(
        "{:>50}: {:?}",
        "export of the change: clone + update",
        start.elapsed()
    );
    fs::remove_dir_all(&old_out)?;
    let check = store.ingest_dir(&new_out, owner)?;
    assert_eq!(check.id(), m2.id(), "the updated export differs");
    println!("updated export verified: same tree as a full checkout");
    fs::remove_dir_all(&base)?;
    Ok(())
}

/// User and system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn time<T, E>(what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let value = f()?;
    println!("{what:>50}: {:?}", start.elapsed());
    Ok(value)
}

/// Writes `files` files of pseudo-random content over `dirs` directories;
/// returns the bytes written.
fn generate(root: &Path, files: usize, dirs: usize) -> std::io::Result<u64> {
    let mut state = 42u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let per_dir = files.div_ceil(dirs.max(1));
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("dir{:03}", i / per_dir));
        if i % per_dir == 0 {
            fs::create_dir_all(&dir)?;
        }
        let size = 1000 + (next() % 38_000) as usize;
        let content: Vec<u8> = (0..size.div_ceil(8))
            .flat_map(|_| next().to_le_bytes())
            .take(size)
            .collect();
        fs::write(dir.join(format!("file{:03}", i % per_dir)), &content)?;
        total += size as u64;
    }
    Ok(total)
}
