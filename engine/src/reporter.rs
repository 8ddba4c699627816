//! Progress as events: the engine says what happens, the binary decides how to draw it.

use std::time::Duration;

use kiln_cache::Digest;

/// How a stage of a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its key was in the action cache: nothing ran.
    Cached,
    /// The shared cache had a trusted record of its key: nothing ran here, and its output was
    /// downloaded only if the build needed it.
    Remote,
    /// It ran; `output_changed` is false when it produced the same output as its previous run,
    /// so the stages after it can stay cached (early cutoff).
    Ran { output_changed: bool },
}

impl Outcome {
    pub fn describe(&self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Remote => "remote",
            Outcome::Ran {
                output_changed: true,
            } => "ran",
            Outcome::Ran {
                output_changed: false,
            } => "ran, output unchanged",
        }
    }
}

/// Receives the events of a build. Implementations must be cheap: they run on the scheduler's
/// threads.
pub trait Reporter: Send + Sync {
    /// A stage starts running, or the download of its output from the shared cache starts
    /// (not sent for cached stages).
    fn stage_started(&self, stage: &str);
    /// A line of a running stage's output, or what the shared cache said about a stage (a
    /// record it ignored, a download).
    fn stage_output(&self, stage: &str, line: &str);
    /// Something a running stage warns about: shown whatever the verbosity.
    fn stage_warning(&self, stage: &str, line: &str) {
        self.stage_output(stage, line);
    }
    /// A stage finished, cached or not.
    fn stage_finished(&self, stage: &str, outcome: Outcome, output: &Digest, duration: Duration);
}

/// A reporter that says nothing.
pub struct SilentReporter;

impl Reporter for SilentReporter {
    fn stage_started(&self, _stage: &str) {}
    fn stage_output(&self, _stage: &str, _line: &str) {}
    fn stage_finished(&self, _: &str, _: Outcome, _: &Digest, _: Duration) {}
}

/// Where one running stage writes its output lines.
pub trait StageLog: Sync {
    /// A line of a tool's output: shown with `-v`, its tail on failure.
    fn line(&self, line: &str);
    /// A fact about the run worth keeping ("56 of 57 segments reused"): recorded with the
    /// stage's run and shown by `graph explain`.
    fn note(&self, note: &str) {
        self.line(note);
    }
    /// A problem that does not fail the stage (a module's missing dependency): shown whatever
    /// the verbosity, and recorded like a note.
    fn warning(&self, warning: &str) {
        self.note(&format!("warning: {warning}"));
    }
}

/// A [`StageLog`] that forwards to a [`Reporter`] under the stage's name.
pub struct ReporterLog<'a> {
    pub reporter: &'a dyn Reporter,
    pub stage: &'a str,
}

impl StageLog for ReporterLog<'_> {
    fn line(&self, line: &str) {
        self.reporter.stage_output(self.stage, line);
    }
}
