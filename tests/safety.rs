//! Reliability on a real recipe: `recipes/debian-rescue` (a UKI, from the Debian mirror) built
//! and killed at random moments and at named points, built four at a time beside `cache gc`,
//! and built again after its store was damaged; and `recipes/tiny` on a full disk.
//!
//! One cold build of debian-rescue (the reference, in a store that only ever sees whole builds)
//! is shared by the test binary. Each test works on a copy of that store, so it starts warm, and
//! compares what it builds with what the reference builds for the same recipe state, bit for
//! bit: outputs are deterministic. The tests take turns on the reference.
//!
//! Every test needs root; the debian-rescue ones also need the mirror and mmdebstrap.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::{Project, copy_store};
use kiln_test_support::{Facts, Need, tree_listing};

// ------------------------------------------------------------------------------------------
// The reference: built on the run's one cold build of debian-rescue, and the outputs of every
// recipe state.

/// What a test changes in the recipe. Each field is a counter whose value goes into one file, so
/// a value not built before makes the stages from there on run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct State {
    /// `mkosi.extra/etc/kiln-state`: extra-trees and everything after it.
    extra: u32,
    /// `Hostname=`: the configuration stages and everything after them.
    hostname: u32,
    /// A line of `mkosi.finalize`: finalize and everything after it.
    finalize: u32,
    /// `KernelCommandLine=`: the uki stage only.
    cmdline: u32,
}

/// Which edit makes a stage run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Edit {
    /// `-ff`: every stage, packages included.
    RerunAll,
    Extra,
    Hostname,
    Finalize,
}

impl State {
    fn apply(&self, project: &Project, finalize: &str) {
        project.write(
            "mkosi.extra/etc/kiln-state",
            &format!("extra {}\n", self.extra),
        );
        project.write(
            "mkosi.local.conf",
            &format!(
                "[Content]\nHostname=rescue-{}\nKernelCommandLine=kiln.state={}\n\
                 # The host's loaded modules change while the tests run (other tests load\n\
                 # some): the reference and the copies must see the same recipe.\n\
                 KernelModulesIncludeHost=no\n",
                self.hostname, self.cmdline
            ),
        );
        project.write(
            "mkosi.finalize",
            &format!(
                "{finalize}echo {} > \"${{BUILDROOT}}/etc/kiln-finalize\"\n",
                self.finalize
            ),
        );
    }

    /// The next state after `edit`, with a value no build saw yet (`seq` counts up).
    fn after(self, edit: Edit, seq: u32) -> State {
        match edit {
            Edit::RerunAll => self,
            Edit::Extra => State { extra: seq, ..self },
            Edit::Hostname => State {
                hostname: seq,
                ..self
            },
            Edit::Finalize => State {
                finalize: seq,
                ..self
            },
        }
    }
}

struct Suite {
    /// A project whose store only ever sees whole builds.
    reference: Project,
    /// debian-rescue's own `mkosi.finalize`.
    finalize: String,
    /// The UKI each state builds: its blake3.
    outputs: BTreeMap<State, String>,
    /// Each stage's kind, from `graph show`.
    kinds: BTreeMap<String, String>,
    /// The stages in the order the cold build started them.
    order: Vec<String>,
    /// How long each stage ran when the reference last built after each edit.
    durations: BTreeMap<(Edit, String), Duration>,
    cold_build: Duration,
}

static SUITE: OnceLock<Mutex<Suite>> = OnceLock::new();

fn suite() -> MutexGuard<'static, Suite> {
    let suite = SUITE.get_or_init(|| {
        // The cold build is the one the whole run shares; the reference builds its state on a
        // copy of that store, which runs the stages from extra-trees on.
        let cold = common::debian_rescue();
        let cold_stderr = cold.read("build.stderr");
        let cold_build = Duration::from_secs_f64(cold.read("seconds").parse().unwrap());
        // In a folder of its own, emptied by the next run: a static is never dropped.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safety-suite");
        let reference = Project::copy_of_in(&dir, "debian-rescue", "debian-rescue");
        copy_store(&cold.path().join("store"), &reference.store);
        let finalize = std::fs::read_to_string(reference.root.join("mkosi.finalize")).unwrap();
        State::default().apply(&reference, &finalize);
        let stderr = build_ok(&reference, &["-v"]);
        eprintln!("reference: cold build of debian-rescue (shared) in {cold_build:.1?}");
        let order: Vec<String> = cold_stderr
            .lines()
            .filter_map(|line| line.strip_suffix(": started"))
            .filter(|stage| !stage.starts_with(' '))
            .map(str::to_string)
            .collect();
        assert!(
            order.iter().any(|stage| stage == "packages"),
            "{cold_stderr}"
        );
        let show = reference.graph_show();
        let kinds = show
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.split_once(" [")?;
                let (kind, _) = rest.split_once(']')?;
                Some((name.trim().to_string(), kind.to_string()))
            })
            .collect();
        let mut suite = Suite {
            outputs: BTreeMap::from([(State::default(), uki_hash(&reference))]),
            reference,
            finalize,
            kinds,
            order,
            durations: BTreeMap::new(),
            cold_build,
        };
        // Every stage ran in the cold build; those the state changes ran again just now.
        suite.record_durations(Edit::RerunAll, &cold_stderr);
        suite.record_durations(Edit::RerunAll, &stderr);
        Mutex::new(suite)
    });
    suite
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Suite {
    /// The UKI `state` builds, built by the reference when it has not yet.
    fn output(&mut self, state: State, edit: Edit) -> String {
        if let Some(hash) = self.outputs.get(&state) {
            return hash.clone();
        }
        state.apply(&self.reference, &self.finalize);
        let stderr = build_ok(&self.reference, &["-v"]);
        self.record_durations(edit, &stderr);
        let hash = uki_hash(&self.reference);
        self.outputs.insert(state, hash.clone());
        hash
    }

    fn record_durations(&mut self, edit: Edit, stderr: &str) {
        for (stage, duration) in durations(stderr) {
            self.durations.insert((edit, stage), duration);
        }
    }

    /// How long `stage` ran the last time the reference built after `edit`.
    fn duration(&self, edit: Edit, stage: &str) -> Duration {
        self.durations
            .get(&(edit, stage.to_string()))
            .copied()
            .unwrap_or(Duration::from_millis(200))
    }

    /// The cheapest edit that made `stage` run again when the reference built after it.
    fn edit_for(&self, stage: &str) -> Edit {
        [Edit::Finalize, Edit::Hostname, Edit::Extra]
            .into_iter()
            .find(|edit| self.durations.contains_key(&(*edit, stage.to_string())))
            .unwrap_or(Edit::RerunAll)
    }

    /// A copy of debian-rescue in `state`, with a store of its own that does not exist yet.
    fn project(&self, state: State) -> Project {
        let project = Project::copy_of("debian-rescue", "debian-rescue");
        state.apply(&project, &self.finalize);
        project
    }

    /// [`Suite::project`] on a copy of the reference's store.
    fn copy(&self, state: State) -> Project {
        let project = self.project(state);
        copy_store(&self.reference.store, &project.store);
        project
    }
}

/// `kiln ARGS build`, which must succeed; its stderr.
fn build_ok(project: &Project, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("build");
    let output = project.kiln(&all);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "build failed:\n{stderr}");
    stderr
}

/// `stage: ran (1.23 s)` lines: how long each stage ran.
fn durations(stderr: &str) -> Vec<(String, Duration)> {
    stderr
        .lines()
        .filter(|line| !line.starts_with(' '))
        .filter_map(|line| {
            let (stage, rest) = line.split_once(": ran")?;
            let time = rest.rsplit_once('(')?.1.strip_suffix(')')?;
            let duration = if let Some(ms) = time.strip_suffix(" ms") {
                Duration::from_millis(ms.parse().ok()?)
            } else {
                Duration::from_secs_f64(time.strip_suffix(" s")?.parse().ok()?)
            };
            Some((stage.to_string(), duration))
        })
        .collect()
}

fn uki_path(project: &Project) -> PathBuf {
    project.root.join("mkosi.output/debian-rescue.efi")
}

fn uki_hash(project: &Project) -> String {
    let bytes = std::fs::read(uki_path(project)).unwrap();
    assert!(bytes.starts_with(b"MZ"), "not a PE file");
    blake3::hash(&bytes).to_hex().to_string()
}

/// `kiln cache verify`, which must find nothing wrong.
#[track_caller]
fn assert_verified(project: &Project, what: &str) {
    let verify = project.kiln(&["cache", "verify"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stdout.contains("corrupt: 0"),
        "{what}: the store is not consistent:\n{stdout}\n{stderr}"
    );
}

/// Files in the store's `tmp/`.
fn scratch(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("v1/tmp"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Flips one bit of a file (made writable for it, and read-only again after).
fn flip_bit(path: &Path, offset: u64, bit: u8) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A small random number generator; the seed is printed so that a failure can be replayed
/// with `KILN_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("KILN_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed {seed} (replay with KILN_TEST_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A duration in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % micros)
    }
}

// ------------------------------------------------------------------------------------------
// Watching a build and killing it.

/// A build running with `-v`, its stderr read line by line as it comes.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(project: &Project, args: &[&str], pause_at: Option<&str>) -> Watched {
        let mut all = vec!["-v", "build"];
        all.extend(args);
        let mut command = project.command(&all);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(point) = pause_at {
            command.env("KILN_TEST_PAUSE_AT", point);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one is `line`; false when the build ended first.
    fn wait_for(&mut self, line: &str) -> bool {
        loop {
            if self.seen.iter().any(|seen| seen == line) {
                return true;
            }
            match self.lines.recv_timeout(Duration::from_secs(600)) {
                Ok(next) => self.seen.push(next),
                Err(_) => return false,
            }
        }
    }

    /// Waits until kiln stopped itself at a pause point; false when the build ended first.
    fn wait_stopped(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            // The state follows the command name in parentheses.
            if stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Stops the build, reads what it printed until then, and kills it. `None` when it had
    /// already ended (nothing was killed); otherwise where the kill landed.
    fn kill(mut self, stages: usize) -> Option<String> {
        self.signal(libc::SIGSTOP);
        let ended = self.child.try_wait().unwrap().is_some();
        // Everything it wrote before it stopped is in the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
            self.seen.push(line);
        }
        self.signal(libc::SIGKILL);
        let status = self.child.wait().unwrap();
        if ended || status.code().is_some() {
            return None;
        }
        Some(landed(&self.seen, stages))
    }
}

/// Where a build was when it was stopped, from what it printed: the stages running then (as
/// `stage` or `stage+stage`), `plan` before any stage, `between stages`, or `export` once every
/// stage had finished.
fn landed(lines: &[String], stages: usize) -> String {
    let mut running = BTreeSet::new();
    let mut finished = 0;
    let mut any = false;
    for line in lines.iter().filter(|line| !line.starts_with(' ')) {
        if let Some(stage) = line.strip_suffix(": started") {
            running.insert(stage.to_string());
            any = true;
        } else if let Some((stage, outcome)) = line.split_once(": ")
            && ["ran", "cached", "remote"]
                .iter()
                .any(|word| outcome.starts_with(word))
        {
            running.remove(stage);
            finished += 1;
            any = true;
        }
    }
    if !running.is_empty() {
        running.into_iter().collect::<Vec<_>>().join("+")
    } else if !any {
        "plan".to_string()
    } else if finished >= stages {
        "export".to_string()
    } else {
        "between stages".to_string()
    }
}

// ------------------------------------------------------------------------------------------
// 1. Builds killed at random moments.

/// How a round picks its moment.
#[derive(Debug, Clone)]
enum Trigger {
    /// Once `stage` started, after a random part of the time it takes.
    InStage(String),
    /// Where kiln stops itself: `KILN_TEST_PAUSE_AT`.
    Pause(&'static str),
    /// At a random moment of the whole build.
    Anytime,
}

/// Network: needs the Debian mirror.
#[test]
fn debian_killed_builds_at_random_moments_and_named_points_keep_store_and_output_sound() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let started = Instant::now();
    let mut suite = suite();
    let mut rng = Rng::from_env();
    let mut state = State::default();
    let project = suite.copy(state);
    let copied = started.elapsed();
    // The copy builds what the reference built, from its cache.
    build_ok(&project, &[]);
    assert_eq!(uki_hash(&project), suite.output(state, Edit::RerunAll));

    // What each edit makes run, and how long it takes, from one reference build each.
    let mut seq = 1;
    for edit in [Edit::Finalize, Edit::Hostname, Edit::Extra] {
        suite.output(State::default().after(edit, seq), edit);
        seq += 1;
    }
    // Every stage once, with the cheapest edit that makes it run (packages with -ff); the named
    // points three times each; then moments anywhere in a rebuild until 50 kills landed.
    let mut rounds: Vec<(Edit, Trigger)> = Vec::new();
    for stage in suite.order.clone() {
        let edit = suite.edit_for(&stage);
        if edit == Edit::RerunAll && stage != "packages" {
            // Only packages is worth a rebuild of everything; the others have their kind
            // covered by a cheaper stage (base-trees by extra-trees).
            continue;
        }
        rounds.push((edit, Trigger::InStage(stage.clone())));
    }
    for point in ["store-commit", "index-write", "output-rename"] {
        for edit in [Edit::Finalize, Edit::Hostname, Edit::Finalize] {
            rounds.push((edit, Trigger::Pause(point)));
        }
    }
    for i in (1..rounds.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        rounds.swap(i, j);
    }

    let stages = suite.order.len();
    // A kill aimed at a short stage can land after it (it finished sooner than the reference's
    // run of it): such a stage is aimed at again, earlier in its run, a few times at most.
    let mut retries: BTreeMap<String, u32> = BTreeMap::new();
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills = 0;
    let mut round = 0;
    while round < rounds.len() || (kills < 50 && round < rounds.len() + 60) {
        let (edit, trigger) = rounds.get(round).cloned().unwrap_or_else(|| {
            let edit = [Edit::Finalize, Edit::Hostname][round % 2];
            (edit, Trigger::Anytime)
        });
        round += 1;
        // Both stores keep the last builds only, as a user's would.
        if round % 5 == 0 {
            for store in [&project, &suite.reference] {
                let gc = store.kiln(&["cache", "gc"]);
                assert!(
                    gc.status.success(),
                    "{}",
                    String::from_utf8_lossy(&gc.stderr)
                );
            }
        }
        let round_started = Instant::now();
        let previous = uki_hash(&project);
        let next = state.after(edit, seq);
        seq += 1;
        // The reference builds the state first: its output, and how long its stages take.
        let expected = suite.output(next, edit);
        next.apply(&project, &suite.finalize);
        state = next;
        let args: &[&str] = if edit == Edit::RerunAll {
            &["-ff"]
        } else {
            &[]
        };
        let (pause, nth) = match &trigger {
            Trigger::Pause(point) => {
                // The first rename is the UKI's (the initrd and kernel beside it follow, and are
                // skipped when up to date); objects and runs come by the dozen.
                let nth = if *point == "output-rename" {
                    1
                } else {
                    1 + rng.next() % 3
                };
                (Some(format!("{point}@{nth}")), nth)
            }
            _ => (None, 0),
        };
        let mut build = Watched::spawn(&project, args, pause.as_deref());
        let ready = match &trigger {
            Trigger::InStage(stage) => {
                let ready = build.wait_for(&format!("{stage}: started"));
                // Packages run again under -ff with their downloads cached: quicker than cold.
                let part = if edit == Edit::RerunAll { 0.5 } else { 0.8 };
                let part = part / f64::from(1 << retries.get(stage).copied().unwrap_or(0));
                let took = suite.duration(edit, stage);
                std::thread::sleep(rng.below(took.mul_f64(part)));
                ready
            }
            Trigger::Pause(_) => build.wait_stopped(),
            Trigger::Anytime => {
                let total: Duration = suite
                    .durations
                    .iter()
                    .filter(|((of, _), _)| *of == edit)
                    .map(|(_, took)| *took)
                    .sum();
                std::thread::sleep(rng.below(total + Duration::from_secs(2)));
                true
            }
        };
        let landed = if ready { build.kill(stages) } else { None };
        let landed = match (landed, &trigger) {
            (Some(_), Trigger::Pause(point)) => Some(format!("{point}@{nth}")),
            (landed, _) => landed,
        };
        // Whatever happened, the output is a whole one: the previous or the new.
        let now = uki_hash(&project);
        assert!(
            now == previous || now == expected,
            "round {round} ({landed:?}): the output is neither the previous nor the new one"
        );
        // Half the rounds check the store as the kill left it; the other half build first, so
        // that the build itself must clean up what the killed one left.
        let verify_first = round % 2 == 0;
        if verify_first {
            assert_verified(&project, &format!("round {round} ({landed:?})"));
        }
        let stderr = build_ok(&project, &[]);
        assert!(
            !stderr.contains("warning:"),
            "round {round} ({landed:?}): the build found something to repair:\n{stderr}"
        );
        assert_eq!(
            uki_hash(&project),
            expected,
            "round {round} ({landed:?}): the build differs from the reference"
        );
        let left = scratch(&project.store);
        assert!(
            left.is_empty(),
            "round {round} ({landed:?}): the build left scratch behind: {left:?}"
        );
        if !verify_first {
            assert_verified(&project, &format!("round {round} ({landed:?})"));
        }
        let leftovers: Vec<String> = std::fs::read_dir(project.root.join("mkosi.output"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".kiln-"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
        eprintln!(
            "round {round}: {edit:?}, {trigger:?}: {} ({:.1?})",
            landed.as_deref().unwrap_or("finished before the kill"),
            round_started.elapsed()
        );
        if let Trigger::InStage(stage) = &trigger
            && !landed
                .as_deref()
                .is_some_and(|landed| landed.split('+').any(|at| at == stage))
        {
            let tries = retries.entry(stage.clone()).or_default();
            if *tries < 3 {
                *tries += 1;
                rounds.insert(round, (edit, trigger.clone()));
            }
        }
        if let Some(landed) = landed {
            kills += 1;
            for stage in landed.split('+') {
                *hits.entry(stage.to_string()).or_default() += 1;
            }
        }
    }

    // The spread: by stage kind, and the named points.
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (place, count) in &hits {
        let kind = suite
            .kinds
            .get(place)
            .cloned()
            .unwrap_or_else(|| place.split('@').next().unwrap().to_string());
        *by_kind.entry(kind).or_default() += count;
    }
    eprintln!(
        "{kills} kills in {round} rounds ({:.1?}, store copied in {copied:.1?}, reference cold \
         build {:.1?})\nby stage: {hits:?}\nby kind: {by_kind:?}",
        started.elapsed(),
        suite.cold_build
    );
    assert!(kills >= 50, "only {kills} kills");
    let kinds: BTreeSet<&String> = suite.kinds.values().collect();
    for kind in kinds {
        assert!(
            by_kind.contains_key(kind.as_str()),
            "no kill landed in a stage of kind `{kind}`: {by_kind:?}"
        );
    }
    for point in ["store-commit", "index-write", "output-rename"] {
        assert!(
            by_kind.contains_key(point),
            "no kill at {point}: {by_kind:?}"
        );
    }
    drop(project);
}

// ------------------------------------------------------------------------------------------
// 3. Builds at once on one store, beside `cache gc`.

/// A copy of recipes/tiny whose extra tree says `tag`, building into `store`.
fn tiny_on(store: &Path, tag: &str) -> Project {
    let mut project = Project::copy_of("tiny", "tiny");
    project.write("mkosi.extra/etc/kiln-tag", &format!("{tag}\n"));
    project.store = store.to_path_buf();
    project
}

/// Network: needs the Debian mirror.
#[test]
fn debian_four_builds_of_two_recipes_at_once_beside_gc_all_succeed_and_agree() {
    kiln_test_support::require!(
        Need::Root,
        Need::Mirror,
        Need::Tool("mmdebstrap"),
        Need::Tool("bwrap")
    );
    let started = Instant::now();
    let mut suite = suite();
    // Two states of debian-rescue that run from extra-trees and from the configuration on.
    let states = [
        State {
            extra: 1_000_001,
            ..State::default()
        },
        State {
            hostname: 1_000_002,
            ..State::default()
        },
    ];
    // The copy is taken before the reference builds them: the builds at once run their stages.
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("store");
    copy_store(&suite.reference.store, &store);
    let expected: Vec<String> = states
        .iter()
        .zip([Edit::Extra, Edit::Hostname])
        .map(|(state, edit)| suite.output(*state, edit))
        .collect();
    let rescues: Vec<Project> = states
        .iter()
        .map(|state| {
            let mut project = suite.project(*state);
            project.store = store.clone();
            project
        })
        .collect();
    // Two states of tiny, built alone first, each on a store of its own.
    let tinies: Vec<Project> = ["one", "two"]
        .iter()
        .map(|tag| tiny_on(&store, tag))
        .collect();
    let tiny_expected: Vec<kiln_test_support::Listing> = ["one", "two"]
        .iter()
        .map(|tag| {
            let alone = tempfile::tempdir().unwrap();
            let project = tiny_on(alone.path(), tag);
            build_ok(&project, &[]);
            tree_listing(&project.output_dir(), Facts::Copy)
        })
        .collect();
    let prepared = started.elapsed();

    // gc in a loop beside the builds: it may collect, or find the store in use; nothing else.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let stop = std::sync::Arc::clone(&stop);
        let store = store.clone();
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let output = common::kiln()
                    .arg("--cache-dir")
                    .arg(&store)
                    .args(["cache", "gc"])
                    .output()
                    .unwrap();
                runs.push((
                    output.status.success(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            runs
        })
    };
    let builds: Vec<(String, Child)> = rescues
        .iter()
        .chain(&tinies)
        .enumerate()
        .map(|(n, project)| {
            let child = project
                .command(&["build"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (format!("build {n} of {}", project.root.display()), child)
        })
        .collect();
    let mut failures = Vec::new();
    let mut stderrs = Vec::new();
    for (name, child) in builds {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            failures.push(format!("{name}:\n{stderr}"));
        }
        stderrs.push(stderr);
    }
    let together = started.elapsed() - prepared;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let gc_runs = gc.join().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The debian-rescue builds ran their stages (from extra-trees, and from the configuration).
    for (stderr, first) in stderrs.iter().zip(["extra-trees", "hostname"]) {
        let outcomes = common::outcomes(stderr);
        assert!(
            outcomes[first].starts_with("ran") && outcomes["uki"].starts_with("ran"),
            "{stderr}"
        );
    }
    for (ok, stderr) in &gc_runs {
        assert!(
            *ok || stderr.contains("is in use by another kiln process"),
            "gc failed otherwise than finding the store in use:\n{stderr}"
        );
    }
    let collected = gc_runs.iter().filter(|(ok, _)| *ok).count();
    eprintln!(
        "4 builds at once in {together:.1?} beside {} gc runs ({collected} collected, the others \
         found the store in use)",
        gc_runs.len()
    );
    assert!(!gc_runs.is_empty());
    for (project, expected) in rescues.iter().zip(&expected) {
        assert_eq!(&uki_hash(project), expected, "{}", project.root.display());
    }
    for (project, expected) in tinies.iter().zip(&tiny_expected) {
        assert_eq!(&tree_listing(&project.output_dir(), Facts::Copy), expected);
    }
    assert_verified(&rescues[0], "after the builds at once");
    assert!(scratch(&store).is_empty(), "{:?}", scratch(&store));

    // After a gc with nobody beside it, each build is still there or rebuilt the same.
    let gc = rescues[0].kiln(&["cache", "gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    for (project, expected) in rescues.iter().zip(&expected) {
        build_ok(project, &[]);
        assert_eq!(&uki_hash(project), expected);
    }
    assert_verified(&rescues[0], "after gc");
    eprintln!("concurrency test: {:.1?}", started.elapsed());
}

// ------------------------------------------------------------------------------------------
// 4. Damage: bit flips in blobs, manifests and the index, and a full disk.

/// The output of `stage` in the last build, from `graph explain --json`.
fn stage_output(project: &Project, stage: &str) -> String {
    let explanation = project.explain();
    common::stage(&explanation, stage)["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output for {stage}: {explanation:#}"))
        .to_string()
}

/// `v1/<dir>/ab/cdef…` of an object.
fn object_path(store: &Path, dir: &str, id: &str) -> PathBuf {
    store.join("v1").join(dir).join(&id[..2]).join(&id[2..])
}

/// Network: needs the Debian mirror.
#[test]
fn debian_flipped_bits_in_blobs_manifests_and_the_index_are_found_named_and_rebuilt() {
    kiln_test_support::require!(Need::Root, Need::Mirror, Need::Tool("mmdebstrap"));
    let started = Instant::now();
    let mut suite = suite();
    let mut state = State::default();
    let project = suite.copy(state);
    build_ok(&project, &[]);

    // A blob that is the output: the UKI itself. Writing the output again reads it.
    let uki = stage_output(&project, "uki");
    let blob = object_path(&project.store, "objects", &uki);
    let size = std::fs::metadata(&blob).unwrap().len();
    flip_bit(&blob, size / 2, 3);
    let stderr = build_ok(&project, &["-f"]);
    assert!(
        stderr.contains(&format!("corrupt blob `{}`", blob.display())),
        "{stderr}"
    );
    assert!(
        common::outcomes(&stderr)["uki"].starts_with("ran"),
        "{stderr}"
    );
    assert_eq!(uki_hash(&project), suite.output(state, Edit::RerunAll));
    assert_verified(&project, "after the UKI blob was rebuilt");

    // A blob a stage reads: the initrd, read by the uki stage when the command line changes.
    let initrd = stage_output(&project, "initrd");
    let blob = object_path(&project.store, "objects", &initrd);
    flip_bit(&blob, 100, 0);
    state.cmdline = 1;
    state.apply(&project, &suite.finalize);
    let stderr = build_ok(&project, &[]);
    assert!(
        stderr.contains(&format!("corrupt blob `{}`", blob.display())),
        "{stderr}"
    );
    let outcomes = common::outcomes(&stderr);
    assert!(outcomes["initrd"].starts_with("ran"), "{stderr}");
    assert_eq!(outcomes["finalize"], "cached", "{stderr}");
    assert_eq!(uki_hash(&project), suite.output(state, Edit::Finalize));
    assert!(blob.is_file(), "the initrd was not stored again");
    assert_verified(&project, "after the initrd was rebuilt");

    // A manifest: the tree finalize made, read by initrd and uki.
    let tree = stage_output(&project, "finalize");
    let manifest = object_path(&project.store, "trees", &tree);
    let size = std::fs::metadata(&manifest).unwrap().len();
    flip_bit(&manifest, size / 3, 5);
    state.cmdline = 2;
    state.apply(&project, &suite.finalize);
    let stderr = build_ok(&project, &[]);
    assert!(
        stderr.contains(&format!("corrupt tree manifest `{}`", manifest.display())),
        "{stderr}"
    );
    assert!(
        common::outcomes(&stderr)["finalize"].starts_with("ran"),
        "{stderr}"
    );
    assert_eq!(uki_hash(&project), suite.output(state, Edit::Finalize));
    assert!(manifest.is_file(), "the manifest was not stored again");
    assert_verified(&project, "after the manifest was rebuilt");

    // The index: the uki action's output id, one bit flipped wherever it is written.
    let uki = stage_output(&project, "uki");
    let index = project.store.join("v1/index.sqlite");
    let bytes = std::fs::read(&index).unwrap();
    // A hex digit whose lowest bit flips into another hex digit: 0-9 and b-e.
    let digit = uki
        .bytes()
        .position(|b| b.is_ascii_digit() || (b'b'..=b'e').contains(&b))
        .unwrap();
    let mut flipped = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(uki.len())
        .position(|window| window == uki.as_bytes())
    {
        flip_bit(&index, (at + found + digit) as u64, 0);
        flipped += 1;
        at += found + uki.len();
    }
    assert!(flipped > 0, "the uki output is not in {}", index.display());
    let stderr = build_ok(&project, &["-f"]);
    assert!(
        stderr.contains(&format!("`{}`", index.display())) && stderr.contains("runs again"),
        "{stderr}"
    );
    assert!(
        common::outcomes(&stderr)["uki"].starts_with("ran"),
        "{stderr}"
    );
    assert_eq!(uki_hash(&project), suite.output(state, Edit::Finalize));
    assert_verified(&project, "after the index entry was dropped");
    eprintln!("corruption test: {:.1?}", started.elapsed());
}

#[test]
fn a_damaged_index_is_moved_aside_named_and_the_build_starts_a_new_one() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"));
    let project = Project::copy_of("tiny", "tiny");
    project.build(&[]);
    let expected = tree_listing(&project.output_dir(), Facts::Copy);
    // The second page holds a table's b-tree: garbage in its header makes SQLite report the
    // database malformed.
    let index = project.store.join("v1/index.sqlite");
    let page_size = {
        let bytes = std::fs::read(&index).unwrap();
        u16::from_be_bytes([bytes[16], bytes[17]]) as u64
    };
    for offset in 0..8 {
        flip_bit(&index, page_size + offset, 7);
        flip_bit(&index, page_size + offset, 2);
    }
    let output = project.kiln(&["build", "-f"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the build index `{}` was damaged",
            index.display()
        )),
        "{stderr}"
    );
    let moved: Vec<String> = std::fs::read_dir(project.store.join("v1"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("index.sqlite.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(tree_listing(&project.output_dir(), Facts::Copy), expected);
    assert_verified(&project, "after the index was replaced");
    // The new index works: a second build is all cached.
    let again = project.build(&[]);
    assert!(common::ran(&again).is_empty(), "{again:?}");
}

/// Unmounts a filesystem when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_build_clearly_and_leaves_the_store_usable() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::Tool("mount"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=24m",
            "kiln-test-full",
            store.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cannot mount a tmpfs");
    let _mounted = Mounted(store.clone());
    let mut project = Project::copy_of("tiny", "tiny");
    project.store = store.clone();
    // A first build fits.
    project.build(&[]);
    // 32 MiB that do not compress or repeat: more than the store has room for.
    let mut big = vec![0u8; 32 << 20];
    let mut rng = Rng(7);
    for chunk in big.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
    std::fs::create_dir_all(project.root.join("mkosi.extra/usr/share/big")).unwrap();
    std::fs::write(project.root.join("mkosi.extra/usr/share/big/data"), &big).unwrap();
    let stderr = project.build_fails(&[]);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains("is full") && stderr.contains("kiln cache gc"),
        "no help that says what to do:\n{stderr}"
    );
    assert!(stderr.contains(store.to_str().unwrap()), "{stderr}");
    // The extra tree was read: what failed is storing it.
    assert!(
        stderr.contains("cannot store `mkosi.extra`") && !stderr.contains("cannot read"),
        "{stderr}"
    );
    // Nothing half-written stays, and the store is sound.
    assert!(scratch(&store).is_empty(), "{:?}", scratch(&store));
    assert_verified(&project, "after the disk was full");
    // With room, the same build succeeds.
    let status = Command::new("mount")
        .args(["-o", "remount,size=256m", store.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    project.build(&[]);
    assert_eq!(
        std::fs::read(project.output_dir().join("usr/share/big/data")).unwrap(),
        big
    );
    assert_verified(&project, "after the build with room");
}
