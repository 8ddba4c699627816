//! The fuzz targets on stable Rust: each target's seed corpus (`fuzz/corpus/<target>/`) is
//! replayed, then a bounded, deterministic run of mutations of it (bit flips, byte edits,
//! duplicated and spliced chunks, interesting integers) goes through the same entry functions
//! the cargo-fuzz targets call (`fuzz/src/lib.rs`). A few seconds per target; the long run is
//! `cargo +nightly fuzz run <target> /tmp/kiln-corpus/<target> fuzz/corpus/<target> --
//! -max_total_time=600`, a scratch directory first so the committed corpus is only read (see the
//! README).
//!
//! `KILN_FUZZ_ITERATIONS` and `KILN_FUZZ_SECONDS` bound a run otherwise (both caps apply);
//! `KILN_FUZZ_SEED` changes the mutations. An input that makes a reader panic is written to the
//! temporary directory and named in the failure: it then becomes a test in `regressions` below.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod entries;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use entries::Workdir;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("the seed corpus `{}`: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    let inputs: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "`{}` holds no seeds", dir.display());
    inputs
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that make parsers take their edge paths.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX / 2,
    u64::MAX,
];

/// One mutation of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let byte = *b"\0\n=[]%$/.\\\"'()\xff"
                    .get(rng.below(16))
                    .unwrap_or(&b'x');
                data.insert(at, byte);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                data.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(256));
                let chunk = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, chunk);
            }
            5 if len >= 8 => {
                let at = rng.below(len - 7);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                data.truncate(rng.below(len));
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

/// Runs `target` on `data`; on a panic, keeps the input and fails naming it.
fn run_one(workdir: &mut Workdir, target: &str, data: &[u8], what: &str) {
    let outcome = catch_unwind(AssertUnwindSafe(|| workdir.run(target, data)));
    if outcome.is_err() {
        let saved = std::env::temp_dir().join(format!(
            "kiln-fuzz-{target}-{}",
            blake3::hash(data).to_hex()
        ));
        let _ = std::fs::write(&saved, data);
        panic!(
            "the `{target}` target panicked on {what} ({} bytes, saved as `{}`): {:?}",
            data.len(),
            saved.display(),
            String::from_utf8_lossy(data)
        );
    }
}

/// The seeds, then mutations until the iteration or time budget is spent.
fn fuzz(target: &str) {
    let seeds = corpus(target);
    let dir = tempfile::tempdir().unwrap();
    let mut workdir = Workdir::new(dir.path());
    for (n, seed) in seeds.iter().enumerate() {
        run_one(&mut workdir, target, seed, &format!("seed {n}"));
    }
    let iterations = env_number("KILN_FUZZ_ITERATIONS", 3000);
    let budget = Duration::from_secs(env_number("KILN_FUZZ_SECONDS", 4));
    let mut rng = Rng(env_number("KILN_FUZZ_SEED", 0x6b69_6c6e) | 1);
    let started = Instant::now();
    let mut done = 0;
    while done < iterations && started.elapsed() < budget {
        let input = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let data = mutate(&mut rng, input, other);
        run_one(&mut workdir, target, &data, &format!("mutation {done}"));
        done += 1;
    }
    assert!(done > 0, "no mutation of `{target}` ran");
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for target in entries::TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "{target}"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} is not a [[bin]] of fuzz/Cargo.toml"
        );
        assert!(!corpus(target).is_empty());
    }
}

#[test]
fn mkosi_conf_reader_survives_its_corpus_and_mutations() {
    fuzz("mkosi_conf");
}

#[test]
fn recipe_ron_reader_survives_its_corpus_and_mutations() {
    fuzz("recipe_ron");
}

#[test]
fn manifest_decoder_survives_its_corpus_and_mutations() {
    fuzz("manifest_decode");
}

#[test]
fn tar_reader_survives_its_corpus_and_mutations() {
    fuzz("tar_ingest");
}

#[test]
fn pe_reader_survives_its_corpus_and_mutations() {
    fuzz("pe_inspect");
}

#[test]
fn uki_assembler_survives_any_stub() {
    fuzz("stub_assemble");
}

/// The mutator changes its inputs: a fuzz run that only replayed the seeds could not fail on
/// anything new.
#[test]
fn mutations_differ_from_their_seeds() {
    let mut rng = Rng(7);
    let seed = b"[Distribution]\nDistribution=debian\n".to_vec();
    let changed = (0..100)
        .filter(|_| mutate(&mut rng, &seed, b"[Output]\nFormat=uki\n") != seed)
        .count();
    assert!(changed > 90, "{changed}");
}

/// Runs `target` once on `data` in a workdir of its own.
#[allow(dead_code)]
fn fuzz_one(target: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    Workdir::new(dir.path()).run(target, data);
}

/// Inputs the fuzzers found that once made a reader panic, each replayed by name:
/// `#[test] fn what_it_was() { super::fuzz_one("<target>", b"<the input>") }`. None so far:
/// 150 s of this mutator on each target found nothing, nor did 6 minutes of libFuzzer on each.
mod regressions {}
