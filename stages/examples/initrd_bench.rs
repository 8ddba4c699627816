//! Measures the initrd stage against the pipeline it replaces, side by side in one run.
//!
//! ```text
//! cargo run --release -p kiln-stages --example initrd_bench -- DIR [RUNS] [--levels 1,3,6]
//! ```
//!
//! `--segment-target-kib` changes the segments' average length; `--sweep` measures only the
//! compression of every segment in memory at each level (no store writes), to choose a level.
//!
//! DIR (a root tree, e.g. one made by `mmdebstrap --variant=important
//! --include=linux-image-amd64,systemd bookworm DIR`) is ingested into a temporary store once.
//! Then, for each zstd level, the medians of RUNS runs of:
//!
//! - kiln full pack: every segment compressed (each run packs with a SOURCE_DATE_EPOCH not
//!   packed before, so no segment is in the cache: the same work as a cold cache);
//! - kiln re-pack after a one-file change: one file of the tree gets new content (different in
//!   every run), the other segments come from the cache;
//! - `find . | sort | cpio -o -H newc --reproducible | zstd -T2 -3`, run by sh in DIR.
//!
//! The scenarios take turns run after run, so the machine's load weighs on all alike. Each line
//! gives the median wall time, the median CPU time (user + system of this process, or of the
//! pipeline's processes), the output size, and their ratios to the GNU pipeline's. On a shared
//! machine the CPU times are the steadier comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_cache::{Entry, EntryKind, IngestOptions, Manifest, Store};
use kiln_stages::initrd::{InitrdOptions, InitrdReport, write_initrd};

const GNU_PIPELINE: &str =
    "find . | sort | cpio -o -H newc --reproducible --quiet | zstd -T2 -3 -q";

struct Args {
    dir: PathBuf,
    runs: usize,
    levels: Vec<i32>,
    segment_target: u64,
    sweep: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage =
        "usage: initrd_bench DIR [RUNS] [--levels 1,3,6] [--segment-target-kib N] [--sweep]";
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut runs = 5;
    let mut levels = vec![kiln_stages::initrd::DEFAULT_LEVEL];
    let mut segment_target = kiln_stages::initrd::DEFAULT_SEGMENT_TARGET;
    let mut sweep = false;
    while let Some(arg) = args.next() {
        if arg == "--levels" {
            let list = args.next().ok_or(usage)?;
            levels = list
                .split(',')
                .map(|l| l.trim().parse().map_err(|_| format!("bad level `{l}`")))
                .collect::<Result<_, _>>()?;
        } else if arg == "--sweep" {
            sweep = true;
        } else if arg == "--segment-target-kib" {
            let kib = args.next().ok_or(usage)?;
            segment_target = kib
                .parse::<u64>()
                .map_err(|_| format!("bad size `{kib}`"))?
                << 10;
        } else if dir.is_none() {
            dir = Some(PathBuf::from(arg));
        } else {
            runs = arg
                .parse()
                .map_err(|_| format!("bad RUNS `{arg}`\n{usage}"))?;
        }
    }
    Ok(Args {
        dir: dir.ok_or(usage)?,
        runs: runs.max(1),
        levels,
        segment_target,
        sweep,
    })
}

/// CPU time (user + system) used so far by this process, or by its waited-for children.
fn cpu_time(who: i32) -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall time and CPU time of one run.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn median_of(samples: &[Sample]) -> Sample {
    Sample {
        wall: median(samples.iter().map(|s| s.wall).collect()),
        cpu: median(samples.iter().map(|s| s.cpu).collect()),
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A regular file of the tree to change: the one in the middle of the tree's files of 4 KiB to
/// 1 MiB, a typical file.
fn file_to_change(manifest: &Manifest) -> Option<Entry> {
    let files: Vec<&Entry> = manifest
        .entries()
        .filter(|e| {
            e.hardlink.is_none()
                && matches!(e.kind, EntryKind::File { size, .. } if (4096..1 << 20).contains(&size))
        })
        .collect();
    files.get(files.len() / 2).map(|e| (*e).clone())
}

fn gnu_pipeline(dir: &Path, out: &Path) -> Result<(Sample, u64), String> {
    let cpu = cpu_time(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{GNU_PIPELINE} > '{}'", out.display()))
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let elapsed = Sample {
        wall: started.elapsed(),
        cpu: cpu_time(libc::RUSAGE_CHILDREN) - cpu,
    };
    if !status.success() {
        return Err(format!("`{GNU_PIPELINE}` failed: {status}"));
    }
    let size = std::fs::metadata(out).map_err(|e| e.to_string())?.len();
    Ok((elapsed, size))
}

fn pack(
    store: &Store,
    manifest: &Manifest,
    opts: &InitrdOptions,
) -> Result<(Sample, InitrdReport), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cpu = cpu_time(libc::RUSAGE_SELF);
    let started = Instant::now();
    let report = write_initrd(store, manifest, opts, scratch.path()).map_err(|e| e.to_string())?;
    let sample = Sample {
        wall: started.elapsed(),
        cpu: cpu_time(libc::RUSAGE_SELF) - cpu,
    };
    Ok((sample, report))
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = Store::open(&work.path().join("store")).map_err(|e| e.to_string())?;

    let started = Instant::now();
    let manifest = store
        .ingest_dir(&args.dir, IngestOptions::default())
        .map_err(|e| e.to_string())?;
    let bytes: u64 = manifest.blobs().map(|(_, size)| size).sum();
    println!(
        "{}: {} entries, {:.1} MB of distinct file content, ingested in {:.1} s",
        args.dir.display(),
        manifest.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let changed = file_to_change(&manifest).ok_or("the tree has no file of 4 KiB to 1 MiB")?;
    println!("one-file change: {}", changed.display_path());
    println!(
        "medians of {} runs, segments of {} KiB on average\n",
        args.runs,
        args.segment_target >> 10
    );

    let gnu_out = work.path().join("gnu.cpio.zst");
    let (_, gnu_size) = gnu_pipeline(&args.dir, &gnu_out)?; // also warms the page cache
    if args.sweep {
        let gnu = median_of(&[gnu_pipeline(&args.dir, &gnu_out)?.0]);
        print_header();
        line(gnu, gnu_size, "GNU pipeline", gnu, gnu_size);
        return sweep(&store, &manifest, &args, |name, time, size| {
            line(gnu, gnu_size, name, time, size)
        });
    }

    // Each level's cache is filled once at its own SOURCE_DATE_EPOCH for the one-file changes;
    // full packs use epochs never packed before.
    let warm_epoch = |i: usize| 1_600_000_000 + i as u64;
    for (i, level) in args.levels.iter().enumerate() {
        let opts = bench_opts(&args, *level, warm_epoch(i));
        pack(&store, &manifest, &opts)?;
    }

    // The scenarios take turns, so that the machine's load weighs on all of them alike.
    let mut gnu_samples = Vec::new();
    let mut full_samples = vec![Vec::new(); args.levels.len()];
    let mut change_samples = vec![Vec::new(); args.levels.len()];
    let mut full_reports = vec![None; args.levels.len()];
    let mut change_reports = vec![None; args.levels.len()];
    let mut epoch = 1_700_000_000;
    for run in 0..args.runs {
        gnu_samples.push(gnu_pipeline(&args.dir, &gnu_out)?.0);
        for (i, level) in args.levels.iter().enumerate() {
            epoch += 1;
            let (sample, report) = pack(&store, &manifest, &bench_opts(&args, *level, epoch))?;
            if report.reused() != 0 {
                return Err(format!("a cold pack reused segments: {}", report.summary()));
            }
            full_samples[i].push(sample);
            full_reports[i] = Some(report);

            let edited = change_one_file(&store, &manifest, &changed, run, *level)?;
            let opts = bench_opts(&args, *level, warm_epoch(i));
            let (sample, report) = pack(&store, &edited, &opts)?;
            change_samples[i].push(sample);
            change_reports[i] = Some(report);
        }
    }

    let gnu = median_of(&gnu_samples);
    println!("GNU: {GNU_PIPELINE}");
    print_header();
    line(gnu, gnu_size, "GNU pipeline", gnu, gnu_size);
    for (i, level) in args.levels.iter().enumerate() {
        let (Some(full), Some(change)) = (&full_reports[i], &change_reports[i]) else {
            return Err("no run".to_owned());
        };
        let full_time = median_of(&full_samples[i]);
        let change_time = median_of(&change_samples[i]);
        line(
            gnu,
            gnu_size,
            &format!("kiln full pack, level {level}"),
            full_time,
            full.size,
        );
        line(
            gnu,
            gnu_size,
            &format!("kiln one-file change, level {level}"),
            change_time,
            change.size,
        );
        println!(
            "  level {level}: full pack {:.2}x faster than GNU (wall), {:.2}x less CPU; \
             one-file change {:.1}x faster than a full pack (wall), {:.1}x less CPU\n  \
             full: {}; change: {}",
            gnu.wall.as_secs_f64() / full_time.wall.as_secs_f64(),
            gnu.cpu.as_secs_f64() / full_time.cpu.as_secs_f64(),
            full_time.wall.as_secs_f64() / change_time.wall.as_secs_f64(),
            full_time.cpu.as_secs_f64() / change_time.cpu.as_secs_f64(),
            full.summary(),
            change.summary(),
        );
    }
    Ok(())
}

fn bench_opts(args: &Args, level: i32, mtime: u64) -> InitrdOptions {
    InitrdOptions {
        level,
        mtime,
        segment_target: args.segment_target,
    }
}

/// `manifest` with new content for `changed`, different for every run and level.
fn change_one_file(
    store: &Store,
    manifest: &Manifest,
    changed: &Entry,
    run: usize,
    level: i32,
) -> Result<Manifest, String> {
    let EntryKind::File { blob, .. } = &changed.kind else {
        return Err("the changed entry is not a file".to_owned());
    };
    let mut content = store.read_blob(blob).map_err(|e| e.to_string())?;
    content.extend_from_slice(format!("\nkiln bench {level} {run}\n").as_bytes());
    let new_blob = store.put_bytes(&content).map_err(|e| e.to_string())?;
    let mut edited = manifest.clone();
    let mut entry = changed.clone();
    entry.kind = EntryKind::File {
        blob: new_blob,
        size: content.len() as u64,
    };
    edited.insert_or_replace(entry).map_err(|e| e.to_string())?;
    Ok(edited)
}

fn print_header() {
    println!(
        "{:<40} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "scenario", "wall s", "cpu s", "size MB", "wall/GNU", "cpu/GNU", "size/GNU"
    );
}

/// One line of the table: a scenario's medians, and their ratios to the GNU pipeline's.
fn line(gnu: Sample, gnu_size: u64, name: &str, time: Sample, size: u64) {
    println!(
        "{:<40} {:>8.3} {:>8.3} {:>9.2} {:>9.3} {:>8.3} {:>8.3}",
        name,
        time.wall.as_secs_f64(),
        time.cpu.as_secs_f64(),
        size as f64 / 1e6,
        time.wall.as_secs_f64() / gnu.wall.as_secs_f64(),
        time.cpu.as_secs_f64() / gnu.cpu.as_secs_f64(),
        size as f64 / gnu_size as f64
    );
}

/// Compression alone, in memory (no store writes): what each level costs and gives.
fn sweep(
    store: &Store,
    manifest: &Manifest,
    args: &Args,
    line: impl Fn(&str, Sample, u64),
) -> Result<(), String> {
    use rayon::prelude::*;
    let segments = kiln_stages::initrd::plan(manifest, 1_700_000_000, args.segment_target)
        .map_err(|e| e.to_string())?;
    for level in &args.levels {
        let mut samples = Vec::new();
        let mut size = 0;
        for _ in 0..args.runs {
            let cpu = cpu_time(libc::RUSAGE_SELF);
            let started = Instant::now();
            size = segments
                .par_iter()
                .map(|s| {
                    kiln_stages::initrd::compress_segment(store, s, *level)
                        .map(|bytes| bytes.len() as u64)
                })
                .sum::<Result<u64, _>>()
                .map_err(|e| e.to_string())?;
            samples.push(Sample {
                wall: started.elapsed(),
                cpu: cpu_time(libc::RUSAGE_SELF) - cpu,
            });
        }
        line(
            &format!(
                "compression only, level {level} ({} segments)",
                segments.len()
            ),
            median_of(&samples),
            size,
        );
    }
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("initrd_bench: {message}");
        std::process::exit(1);
    }
}
