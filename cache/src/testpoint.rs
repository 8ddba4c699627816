//! Named points where a test can stop kiln, to kill it at an exact instant.
//!
//! Killing a build at a random moment rarely lands in the few microseconds between writing an
//! object and renaming it into place, inside an index transaction, or between the two renames
//! that swap an output. Tests set `KILN_TEST_PAUSE_AT=<point>` (or `<point>@<n>` for the n-th
//! time the point is reached, counting from 1): when the process reaches that point it stops
//! itself with `SIGSTOP`, and the test, seeing it stopped, kills it with `SIGKILL`.
//!
//! The points:
//!
//! | point           | where                                                              |
//! |-----------------|--------------------------------------------------------------------|
//! | `store-commit`  | an object is complete in `tmp/`, about to be renamed into place    |
//! | `index-write`   | inside the transaction recording a stage's run, before its commit  |
//! | `output-rename` | the new output is staged beside the old one, about to replace it   |
//!
//! Only debug builds (`debug_assertions`, which `cargo test` builds have) read the variable: in
//! a release build [`pause_at`] is an empty function and the variable means nothing, so no user
//! of a released kiln can stop it this way by accident.

/// Stop this process with `SIGSTOP` if `KILN_TEST_PAUSE_AT` names `point` (debug builds only).
#[cfg(debug_assertions)]
pub fn pause_at(point: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The point asked for and at which of its hits to stop.
    static WANTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    let wanted = WANTED.get_or_init(|| {
        let value = std::env::var("KILN_TEST_PAUSE_AT").ok()?;
        Some(match value.split_once('@') {
            Some((name, nth)) => (name.to_string(), nth.parse().unwrap_or(1)),
            None => (value, 1),
        })
    });
    let Some((name, nth)) = wanted else { return };
    if name != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}

/// Stop this process with `SIGSTOP` if `KILN_TEST_PAUSE_AT` names `point` (debug builds only).
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn pause_at(_point: &str) {}
