//! Whether a mirror's index changed since the package manager last read it: one conditional
//! request per signed index file (apt's `InRelease`, pacman's sync databases).
//!
//! Resolving a package set costs an index update and a solver run, seconds each; the index
//! changes a few times a day. Before resolving again, each index file the last resolution read
//! is asked for with `If-Modified-Since` (its mtime, which apt and pacman set from the server's
//! `Last-Modified`): `304 Not Modified`, or a body equal to the local file, means unchanged.
//! `file://` mirrors are compared directly. The requests run in parallel, with a short timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::PackagesError;

/// How long one request may take before the mirror counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The largest index file read whole for comparison (pacman's `extra.db` is about 8 MiB).
const BODY_LIMIT: u64 = 256 << 20;

/// One index file: where the mirror serves it, and the copy the package manager read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub url: String,
    pub local: PathBuf,
}

/// Whether every index file is the same on the mirror as locally. A missing local copy counts
/// as changed; an unreachable mirror is an error.
pub(super) fn unchanged(files: &[IndexFile]) -> Result<bool, PackagesError> {
    let results: Vec<Result<bool, PackagesError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| scope.spawn(move || file_unchanged(file)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(PackagesError::MirrorUnreachable {
                        url: String::new(),
                        message: "the request panicked".to_string(),
                    })
                })
            })
            .collect()
    });
    let mut all = true;
    for result in results {
        all &= result?;
    }
    Ok(all)
}

fn file_unchanged(file: &IndexFile) -> Result<bool, PackagesError> {
    let Ok(local) = std::fs::read(&file.local) else {
        return Ok(false);
    };
    if let Some(path) = file.url.strip_prefix("file://") {
        return Ok(std::fs::read(path).is_ok_and(|remote| remote == local));
    }
    let unreachable = |message: String| PackagesError::MirrorUnreachable {
        url: file.url.clone(),
        message,
    };
    // The system's certificate roots, as apt and the shared cache use: behind a private CA
    // that apt trusts, the mirror is reachable for kiln too.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(&file.url);
    if let Some(modified) = modified(&file.local) {
        request = request.header("If-Modified-Since", httpdate::fmt_http_date(modified));
    }
    let mut response = request
        .call()
        .map_err(|error| unreachable(error.to_string()))?;
    match response.status().as_u16() {
        304 => Ok(true),
        200 => {
            let body = response
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
                .map_err(|error| unreachable(error.to_string()))?;
            Ok(body == local)
        }
        status => Err(unreachable(format!("HTTP status {status}"))),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().ok()?.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mirrors_are_compared_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.db");
        let local = dir.path().join("local.db");
        std::fs::write(&remote, "index 1").unwrap();
        std::fs::write(&local, "index 1").unwrap();
        let file = IndexFile {
            url: format!("file://{}", remote.display()),
            local: local.clone(),
        };
        assert!(unchanged(std::slice::from_ref(&file)).unwrap());
        std::fs::write(&remote, "index 2").unwrap();
        assert!(!unchanged(std::slice::from_ref(&file)).unwrap());
        std::fs::remove_file(&local).unwrap();
        assert!(!unchanged(&[file]).unwrap());
    }

    #[test]
    fn an_unreachable_mirror_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("InRelease");
        std::fs::write(&local, "x").unwrap();
        // Port 9 (discard) on loopback: refused at once.
        let file = IndexFile {
            url: "http://127.0.0.1:9/debian/dists/bookworm/InRelease".to_string(),
            local,
        };
        assert!(matches!(
            unchanged(&[file]),
            Err(PackagesError::MirrorUnreachable { .. })
        ));
    }
}
