//! Drawing a build: one line per stage (cached / ran / ran, output unchanged) with its time, the
//! output of running stages, and a spinner for any stage running longer than a second. Plain
//! lines when stderr is not a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_cache::Digest;
use kiln_engine::{Outcome, Reporter};

pub struct TerminalReporter {
    bars: MultiProgress,
    running: Mutex<BTreeMap<String, ProgressBar>>,
    interactive: bool,
}

impl TerminalReporter {
    pub fn new() -> TerminalReporter {
        let interactive = std::io::stderr().is_terminal();
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        TerminalReporter {
            bars: MultiProgress::with_draw_target(target),
            running: Mutex::new(BTreeMap::new()),
            interactive,
        }
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
        if !self.interactive {
            return;
        }
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(stage.to_string());
        // Spinners appear only for stages that take longer than a second.
        bar.enable_steady_tick(Duration::from_millis(1000));
        if let Ok(mut running) = self.running.lock() {
            running.insert(stage.to_string(), bar);
        }
    }

    fn stage_output(&self, stage: &str, line: &str) {
        self.println(&format!("  {stage} | {line}"));
    }

    fn stage_finished(&self, stage: &str, outcome: Outcome, _output: &Digest, duration: Duration) {
        if let Ok(mut running) = self.running.lock()
            && let Some(bar) = running.remove(stage)
        {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
        let time = match outcome {
            Outcome::Cached => String::new(),
            Outcome::Ran { .. } => format!(" ({})", format_duration(duration)),
        };
        self.println(&format!("{stage}: {}{time}", outcome.describe()));
    }
}

pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}
