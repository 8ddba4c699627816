//! What kiln's tests share: one place that decides whether a test can run on this machine, one
//! way to run the kiln binary ([`kiln()`]) and one listing of a tree for comparisons
//! ([`tree_listing`]), and fixtures made once per run and shared ([`SharedFixture`]).
//!
//! Many tests need root, a host tool, or the Debian mirror. A test that cannot run says so and
//! returns, and the suite tells how many were skipped; but a skipped test is not a passed one:
//! with `KILN_TEST_STRICT=1` (CI sets it) a missing need fails the test instead. When
//! `KILN_TEST_SKIP_LOG` names a file, each skip is also appended to it, one line each, so that
//! `scripts/test` can count them (cargo hides the output of passing tests).
//!
//! ```
//! use kiln_test_support::{Need, require};
//! fn a_test() {
//!     if !require("a_test", &[Need::Tool("sh")]) {
//!         return;
//!     }
//!     // ... the test ...
//! }
//! # a_test();
//! ```

mod fixture;
mod kiln;
mod tree;

pub use fixture::SharedFixture;
pub use kiln::kiln;
pub use tree::{Facts, Listing, assert_same_tree, tree_listing, xattrs};

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (mounts, owners, chroots, package managers).
    Root,
    /// A program on the `PATH` (or in the usual system directories).
    Tool(&'static str),
    /// A file that a Debian package installs (a keyring, firmware).
    File(&'static str),
    /// The Debian mirror the machine's apt uses (`deb.debian.org` unless apt says otherwise).
    Mirror,
}

impl Need {
    /// Why it is missing, or `None` when it is there.
    pub fn missing(&self) -> Option<String> {
        match self {
            Need::Root => (!is_root()).then(|| "it needs root".to_string()),
            Need::Tool(tool) => {
                (!has_tool(tool)).then(|| format!("it needs `{tool}`, which is not installed"))
            }
            Need::File(path) => {
                (!Path::new(path).exists()).then(|| format!("it needs `{path}`, which is missing"))
            }
            Need::Mirror => (!mirror_reachable())
                .then(|| format!("it needs the Debian mirror `{}`", mirror_host())),
        }
    }
}

/// Whether the test `test` can run: `true` when every need is met. Otherwise it prints
/// `SKIP <test>: <why>` and returns `false`, or, with `KILN_TEST_STRICT=1`, panics.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    if missing.is_empty() {
        return true;
    }
    skip(test, &missing.join("; "));
    false
}

/// Whether the running test can go on: `true` when `reason_if_missing` is `None`, else a skip
/// as [`require`] makes one (said, logged, or a panic under `KILN_TEST_STRICT=1`), for needs
/// [`Need`] cannot name. The test is named by its thread, as libtest names it.
pub fn skip_unless(reason_if_missing: Option<String>) -> bool {
    let Some(reason) = reason_if_missing else {
        return true;
    };
    let thread = std::thread::current();
    skip(thread.name().unwrap_or("a test"), &reason);
    false
}

/// Says that `test` is skipped for `why` and logs it, or panics under `KILN_TEST_STRICT=1`.
fn skip(test: &str, why: &str) {
    let line = format!("SKIP {test}: {why}");
    if strict() {
        panic!("{line} (KILN_TEST_STRICT=1: a test that cannot run fails)");
    }
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("KILN_TEST_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Return from the calling test unless its needs are met (see [`require`]).
#[macro_export]
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        if !$crate::require(
            &format!("{}::{}", module_path!(), line!()),
            &[$($need),+],
        ) {
            return;
        }
    };
}

/// `KILN_TEST_STRICT=1`: every test must run.
pub fn strict() -> bool {
    std::env::var("KILN_TEST_STRICT").is_ok_and(|value| value == "1")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has_tool(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(Into::into))
        .map(|dir| dir.join(tool))
        .any(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The host of the first Debian archive in apt's sources, else `deb.debian.org`.
pub fn mirror_host() -> String {
    let mut texts = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        texts.extend(
            paths
                .iter()
                .filter_map(|path| std::fs::read_to_string(path).ok()),
        );
    }
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| {
            word.strip_prefix("http://")
                .or(word.strip_prefix("https://"))
        })
        .filter(|rest| rest.contains("/debian"))
        .filter_map(|rest| rest.split('/').next())
        .map(str::to_string)
        .next()
        .unwrap_or_else(|| "deb.debian.org".to_string())
}

fn mirror_reachable() -> bool {
    let host = mirror_host();
    let address = if host.contains(':') {
        host
    } else {
        format!("{host}:80")
    };
    let Ok(addresses) = address.to_socket_addrs() else {
        return false;
    };
    addresses
        .into_iter()
        .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(5)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_tool_is_no_reason_to_skip() {
        assert_eq!(Need::Tool("sh").missing(), None);
        assert!(Need::Tool("kiln-no-such-tool").missing().is_some());
        assert!(Need::File("/kiln/no/such/file").missing().is_some());
    }
}
