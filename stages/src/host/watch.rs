//! Watching a program until it first prints: started with kiln's environment, stdin from
//! `/dev/null`, and judged by whether a byte reaches its stdout within a time, what it writes to
//! stderr meanwhile, or its exit. It is killed afterwards in every case. The KVM probe of
//! `kiln qemu` runs OVMF this way.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::HostError;
use super::process;
use super::tool::ToolInvocation;

/// How a watched program's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// It printed on its stdout.
    Printed,
    /// It wrote a line to stderr that the caller judged fatal.
    Fatal,
    /// Its stdout closed (it exited) before it printed.
    Exited,
    /// It printed nothing within the time.
    TimedOut,
}

/// What a watched program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub end: WatchEnd,
    /// The non-empty lines it wrote to stderr until then, in order.
    pub errors: Vec<String>,
}

/// What happened while the program ran.
enum Event {
    Output,
    Error(String),
    Closed,
}

/// Runs `invocation` until it prints on stdout, writes a line `fatal` accepts to stderr, exits,
/// or `timeout` passes; then kills it.
pub(crate) fn watch_output(
    invocation: &ToolInvocation,
    timeout: Duration,
    fatal: &dyn Fn(&str) -> bool,
) -> Result<Watched, HostError> {
    let mut command = Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .envs(invocation.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::die_with_kiln(&mut command);
    let mut child = command.spawn().map_err(|source| HostError::Spawn {
        program: invocation.program.clone(),
        source,
    })?;
    let (events, received) = mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        let events = events.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let event = match stdout.read(&mut byte) {
                Ok(1) => Event::Output,
                _ => Event::Closed,
            };
            let _ = events.send(event);
            // Keep draining so the program never blocks on a full pipe before it is killed.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut reader = std::io::BufReader::new(stderr);
            while {
                text.clear();
                std::io::BufRead::read_line(&mut reader, &mut text).is_ok_and(|n| n > 0)
            } {
                if events
                    .send(Event::Error(text.trim_end().to_string()))
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let mut errors: Vec<String> = Vec::new();
    let deadline = Instant::now() + timeout;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(Event::Output) => break WatchEnd::Printed,
            Ok(Event::Error(line)) => {
                let stop = fatal(&line);
                if !line.is_empty() {
                    errors.push(line);
                }
                if stop {
                    break WatchEnd::Fatal;
                }
            }
            Ok(Event::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break WatchEnd::Exited;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break WatchEnd::TimedOut,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(Watched { end, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ToolInvocation {
        ToolInvocation::new("/bin/sh").args(["-c", script])
    }

    #[test]
    fn a_program_that_prints_is_seen_at_once() {
        let watched = watch_output(
            &sh("echo oops >&2; echo hi; sleep 30"),
            Duration::from_secs(20),
            &|_| false,
        )
        .unwrap();
        assert_eq!(watched.end, WatchEnd::Printed);
    }

    #[test]
    fn silence_times_out_and_a_fatal_line_stops_the_watch() {
        let watched =
            watch_output(&sh("sleep 30"), Duration::from_millis(200), &|_| false).unwrap();
        assert_eq!(watched.end, WatchEnd::TimedOut);
        let watched = watch_output(
            &sh("echo 'bad thing' >&2; sleep 30"),
            Duration::from_secs(20),
            &|line| line.contains("bad"),
        )
        .unwrap();
        assert_eq!(
            (watched.end, watched.errors),
            (WatchEnd::Fatal, vec!["bad thing".to_string()])
        );
        let watched = watch_output(&sh("exit 1"), Duration::from_secs(20), &|_| false).unwrap();
        assert_eq!(watched.end, WatchEnd::Exited);
    }
}
