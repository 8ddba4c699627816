//! Drawing a build: one line per stage (cached / remote / ran / ran, output unchanged) with its
//! time, and a spinner for each stage that has been running (or downloading its output from the
//! shared cache) for more than a second, showing the last line the stage's tools printed. The
//! tools' output itself is shown with `-v`; without it, a failure shows its tail in the error.
//! Plain lines, and no spinners, when stderr is not a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_cache::Digest;
use kiln_engine::{Outcome, Reporter};

/// How long a stage runs before it gets a spinner.
const SPINNER_AFTER: Duration = Duration::from_secs(1);

/// A running stage: when it started, and its spinner once it has one.
struct Running {
    started: Instant,
    bar: Option<ProgressBar>,
}

pub(crate) struct TerminalReporter {
    bars: MultiProgress,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
    interactive: bool,
    /// Print every line the stages' tools print (`-v`).
    verbose: bool,
}

impl TerminalReporter {
    pub(crate) fn new(verbose: bool) -> TerminalReporter {
        let interactive = std::io::stderr().is_terminal();
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let reporter = TerminalReporter {
            bars: MultiProgress::with_draw_target(target),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            interactive,
            verbose,
        };
        if interactive {
            reporter.start_ticker();
        }
        reporter
    }

    /// A thread that gives every stage running longer than [`SPINNER_AFTER`] its spinner. It
    /// ends with the process.
    fn start_ticker(&self) {
        let running = Arc::downgrade(&self.running);
        let bars = self.bars.clone();
        std::thread::spawn(move || {
            while let Some(running) = running.upgrade() {
                {
                    let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
                    for (stage, state) in running.iter_mut() {
                        if state.bar.is_none() && state.started.elapsed() >= SPINNER_AFTER {
                            let bar = bars.add(
                                ProgressBar::new_spinner().with_elapsed(state.started.elapsed()),
                            );
                            bar.set_style(
                                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            bar.set_message(stage.clone());
                            bar.enable_steady_tick(Duration::from_millis(120));
                            state.bar = Some(bar);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    fn println(&self, line: &str) {
        if self.interactive {
            let _ = self.bars.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

impl Reporter for TerminalReporter {
    fn stage_started(&self, stage: &str) {
        // In a log (`-v`, no terminal), say when each stage starts, not only when it ends.
        if self.verbose && !self.interactive {
            self.println(&format!("{stage}: started"));
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.insert(
            stage.to_string(),
            Running {
                started: Instant::now(),
                bar: None,
            },
        );
    }

    fn stage_output(&self, stage: &str, line: &str) {
        if self.verbose {
            self.println(&format!("  {stage} | {line}"));
            return;
        }
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bar) = running.get(stage).and_then(|state| state.bar.as_ref()) {
            let line: String = line.chars().take(60).collect();
            bar.set_message(format!("{stage}: {line}"));
        }
    }

    fn stage_warning(&self, stage: &str, line: &str) {
        self.println(&format!("  {stage} | {line}"));
    }

    fn stage_finished(&self, stage: &str, outcome: Outcome, _output: &Digest, duration: Duration) {
        let finished = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(stage);
        if let Some(bar) = finished.and_then(|state| state.bar) {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
        let time = match outcome {
            Outcome::Cached => String::new(),
            Outcome::Remote if duration.is_zero() => String::new(),
            Outcome::Ran { .. } | Outcome::Remote => format!(" ({})", format_duration(duration)),
        };
        self.println(&format!("{stage}: {}{time}", outcome.describe()));
    }
}

pub(crate) fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}
