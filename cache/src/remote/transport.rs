//! Moving bytes to and from the shared cache: HTTP(S) with GET, HEAD and PUT, or a directory
//! (`file://`, for a shared filesystem and for tests). One request per call, no retries: the
//! caller retries whole objects (see `transfer`).
//!
//! HTTP goes through `ureq`, a small blocking client, with the system's certificate roots
//! (rustls' platform verifier), a connect timeout, and a stall timeout on every read and write,
//! so a server that stops answering is noticed. A body must also keep a minimum average rate
//! once the stall timeout has passed since it began ([`Timeouts::min_rate`]): a server that
//! trickles a byte now and then under a huge length never trips the stall timeout, but it
//! cannot hold a build for longer than that. The same holds for `file://` (a FIFO trickles too).
//! Credentials become one `Authorization` header; they are never part of a URL, so no error
//! message can carry them.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::remote::error::{RemoteError, Result};

/// How to authenticate to an HTTP shared cache.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl Credentials {
    /// The `Authorization` header's value.
    fn header(&self) -> String {
        match self {
            Credentials::Basic { user, password } => {
                format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
            }
            Credentials::Bearer(token) => format!("Bearer {token}"),
        }
    }

    /// `basic auth` or `bearer token`: what kind they are, never what they are.
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::Basic { .. } => "basic auth",
            Credentials::Bearer(_) => "bearer token",
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.describe())
    }
}

/// A shared cache's base URL, checked: `http://`, `https://` or `file://`, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    text: String,
    scheme: Scheme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    File,
}

impl RemoteUrl {
    /// Checks `url`. A URL with credentials in it (`https://user:secret@host`) is refused,
    /// and the error shows it without them.
    pub fn parse(url: &str) -> Result<RemoteUrl> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").ok_or(RemoteError::InvalidUrl {
            url: url.to_owned(),
            reason: "it has no scheme",
        })?;
        let scheme_kind = match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => Scheme::Http,
            "file" => Scheme::File,
            _ => {
                return Err(RemoteError::InvalidUrl {
                    url: url.to_owned(),
                    reason: "only http://, https:// and file:// are supported",
                });
            }
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((_, host)) = authority.rsplit_once('@') {
            return Err(RemoteError::InvalidUrl {
                url: format!("{scheme}://{host}{path}"),
                reason: "credentials do not belong in the URL",
            });
        }
        if url.contains(['?', '#']) {
            return Err(RemoteError::InvalidUrl {
                url: url.to_owned(),
                reason: "a query or fragment cannot be a cache's base",
            });
        }
        match scheme_kind {
            Scheme::Http if authority.is_empty() => Err(RemoteError::InvalidUrl {
                url: url.to_owned(),
                reason: "it has no host",
            }),
            Scheme::File if !authority.is_empty() || !path.starts_with('/') => {
                Err(RemoteError::InvalidUrl {
                    url: url.to_owned(),
                    reason: "a file:// URL names an absolute path: file:///srv/kiln-cache",
                })
            }
            _ => Ok(RemoteUrl {
                text: format!(
                    "{}://{authority}{}",
                    scheme.to_ascii_lowercase(),
                    path.trim_end_matches('/')
                ),
                scheme: scheme_kind,
            }),
        }
    }

    /// The URL as text, with no trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `host[:port]` of an HTTP URL: what the credentials file is keyed by.
    pub fn host(&self) -> Option<&str> {
        if self.scheme != Scheme::Http {
            return None;
        }
        let rest = self.text.split_once("://")?.1;
        Some(rest.split('/').next().unwrap_or(rest))
    }
}

/// Timeouts of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For the server to answer, and for any single read or write of a body to progress.
    pub stall: Duration,
    /// The least average rate of a body being received, in bytes per second, counted from
    /// its start once `stall` has passed: a slower body is cut off as timed out.
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            stall: Duration::from_secs(20),
            min_rate: 16 << 10,
        }
    }
}

/// Why a body was cut off by kiln rather than by the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It came in slower than [`Timeouts::min_rate`].
    TooSlow,
    /// It was longer than the caller allowed ([`Incoming::limit_wire`]).
    TooLong,
}

/// Where objects go and come from.
pub(crate) struct Transport {
    kind: TransportKind,
    timeouts: Timeouts,
}

enum TransportKind {
    Http(Http),
    Directory(PathBuf),
}

pub(crate) struct Http {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

/// A body being received, and whether reading it failed on the connection (as opposed to
/// the decoder above it finding garbage), or was cut off.
pub(crate) struct Incoming {
    reader: Box<dyn Read>,
    pub(crate) wire_bytes: u64,
    pub(crate) connection_error: Option<ErrorKind>,
    pub(crate) cut: Option<Cut>,
    started: Instant,
    patience: Duration,
    min_rate: u64,
    wire_limit: Option<u64>,
}

impl Incoming {
    /// Refuses a body longer than `limit` bytes on the wire.
    pub(crate) fn limit_wire(&mut self, limit: u64) {
        self.wire_limit = Some(limit);
    }

    fn cut(&mut self, cut: Cut) -> io::Error {
        self.cut = Some(cut);
        match cut {
            Cut::TooSlow => {
                self.connection_error = Some(ErrorKind::TimedOut);
                io::Error::new(ErrorKind::TimedOut, "the body comes in too slowly")
            }
            Cut::TooLong => io::Error::other("the body is longer than allowed"),
        }
    }
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(cut) = self.cut {
            return Err(self.cut(cut));
        }
        match self.reader.read(buf) {
            Ok(n) => {
                self.wire_bytes += n as u64;
                if self.wire_limit.is_some_and(|limit| self.wire_bytes > limit) {
                    return Err(self.cut(Cut::TooLong));
                }
                let elapsed = self.started.elapsed();
                if n > 0
                    && elapsed > self.patience
                    && (self.wire_bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
                {
                    return Err(self.cut(Cut::TooSlow));
                }
                Ok(n)
            }
            Err(error) => {
                self.connection_error = Some(error.kind());
                Err(error)
            }
        }
    }
}

/// A body being sent, counting its bytes.
pub(crate) struct Counting<'a, R> {
    pub(crate) inner: R,
    pub(crate) count: &'a AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Sequence number of temp files of the directory transport.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Transport {
    pub(crate) fn new(
        url: &RemoteUrl,
        credentials: Option<&Credentials>,
        timeouts: Timeouts,
        connections: usize,
    ) -> Transport {
        let kind = match url.scheme {
            Scheme::File => {
                TransportKind::Directory(PathBuf::from(url.as_str().trim_start_matches("file://")))
            }
            Scheme::Http => {
                let tls = ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build();
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_connect(Some(timeouts.connect))
                    .timeout_recv_response(Some(timeouts.stall))
                    .timeout_per_read(Some(timeouts.stall))
                    .timeout_per_write(Some(timeouts.stall))
                    .max_idle_connections_per_host(connections.max(1))
                    .max_idle_connections(connections.max(1) * 2)
                    .user_agent(format!("kiln/{}", env!("CARGO_PKG_VERSION")))
                    .tls_config(tls)
                    .build()
                    .into();
                TransportKind::Http(Http {
                    agent,
                    base: url.as_str().to_owned(),
                    authorization: credentials.map(Credentials::header),
                })
            }
        };
        Transport { kind, timeouts }
    }

    /// Whether `path` (`cas/…`, `ac/…`) exists.
    pub(crate) fn exists(&self, location: &str, path: &str) -> Result<bool> {
        match &self.kind {
            TransportKind::Directory(base) => Ok(base.join(path).is_file()),
            TransportKind::Http(http) => {
                let what = format!("HEAD {path}");
                let response = http
                    .authorize(http.agent.head(format!("{}/{path}", http.base)))
                    .call()
                    .map_err(|error| request_error(location, &what, error))?;
                match response.status().as_u16() {
                    200..=299 => Ok(true),
                    404 | 410 => Ok(false),
                    status => Err(RemoteError::Status {
                        location: location.to_owned(),
                        what,
                        status,
                    }),
                }
            }
        }
    }

    /// The body of `path`, or `None` when there is none.
    pub(crate) fn get(&self, location: &str, path: &str) -> Result<Option<Incoming>> {
        let reader: Box<dyn Read> = match &self.kind {
            TransportKind::Directory(base) => match File::open(base.join(path)) {
                Ok(file) => Box::new(file),
                Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
                Err(error) => {
                    return Err(RemoteError::Unreachable {
                        location: location.to_owned(),
                        what: format!("read {path}"),
                        message: error.to_string(),
                    });
                }
            },
            TransportKind::Http(http) => {
                let what = format!("GET {path}");
                let response = http
                    .authorize(http.agent.get(format!("{}/{path}", http.base)))
                    .call()
                    .map_err(|error| request_error(location, &what, error))?;
                match response.status().as_u16() {
                    200 => Box::new(response.into_body().into_reader()),
                    404 | 410 => return Ok(None),
                    status => {
                        return Err(RemoteError::Status {
                            location: location.to_owned(),
                            what,
                            status,
                        });
                    }
                }
            }
        };
        Ok(Some(Incoming {
            reader,
            wire_bytes: 0,
            connection_error: None,
            cut: None,
            started: Instant::now(),
            patience: self.timeouts.stall,
            min_rate: self.timeouts.min_rate,
            wire_limit: None,
        }))
    }

    /// Stores everything `body` yields at `path`, replacing what is there.
    pub(crate) fn put(&self, location: &str, path: &str, body: &mut dyn Read) -> Result<()> {
        match &self.kind {
            TransportKind::Directory(base) => {
                let dest = base.join(path);
                let failed = |error: io::Error| RemoteError::Unreachable {
                    location: location.to_owned(),
                    what: format!("write {path}"),
                    message: error.to_string(),
                };
                let parent = dest.parent().unwrap_or(base);
                fs::create_dir_all(parent).map_err(failed)?;
                let temp = parent.join(format!(
                    ".{}-{}.tmp",
                    std::process::id(),
                    TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                let written = File::create(&temp).and_then(|mut file| {
                    io::copy(body, &mut file)?;
                    file.flush()
                });
                match written.and_then(|()| fs::rename(&temp, &dest)) {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        let _ = fs::remove_file(&temp);
                        Err(failed(error))
                    }
                }
            }
            TransportKind::Http(http) => {
                let what = format!("PUT {path}");
                let response = http
                    .authorize(http.agent.put(format!("{}/{path}", http.base)))
                    .header("Content-Type", "application/octet-stream")
                    .send(ureq::SendBody::from_reader(body))
                    .map_err(|error| request_error(location, &what, error))?;
                match response.status().as_u16() {
                    200..=299 => Ok(()),
                    status => Err(RemoteError::Status {
                        location: location.to_owned(),
                        what,
                        status,
                    }),
                }
            }
        }
    }
}

impl Http {
    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }
}

/// A failed request as a [`RemoteError`]: timeouts apart, everything else is a connection
/// problem. ureq's messages name the URL at most, which holds no credentials.
fn request_error(location: &str, what: &str, error: ureq::Error) -> RemoteError {
    let timed_out = match &error {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => io.kind() == ErrorKind::TimedOut,
        _ => false,
    };
    if timed_out {
        RemoteError::TimedOut {
            location: location.to_owned(),
            what: what.to_owned(),
        }
    } else {
        RemoteError::Unreachable {
            location: location.to_owned(),
            what: what.to_owned(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_credentials_refused_without_echoing_them() {
        let url = RemoteUrl::parse("https://Cache.example.org:8443/kiln/").unwrap();
        assert_eq!(url.as_str(), "https://Cache.example.org:8443/kiln");
        assert_eq!(url.host(), Some("Cache.example.org:8443"));
        let file = RemoteUrl::parse("file:///srv/kiln").unwrap();
        assert_eq!(file.host(), None);
        let error = RemoteUrl::parse("https://ci:hunter2@cache.example.org/kiln").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("https://cache.example.org/kiln"));
        for bad in [
            "cache.example.org",
            "ftp://cache.example.org",
            "http:///kiln",
            "file://host/srv",
            "file://relative",
            "https://cache.example.org/?token=1",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_show_their_kind_only() {
        let basic = Credentials::Basic {
            user: "ci".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert_eq!(format!("{basic:?}"), "Credentials(basic auth, <secret>)");
        assert_eq!(basic.header(), "Basic Y2k6aHVudGVyMg==");
        let bearer = Credentials::Bearer("t0ken".to_owned());
        assert!(!format!("{bearer:?}").contains("t0ken"));
        assert_eq!(bearer.header(), "Bearer t0ken");
    }

    #[test]
    fn a_directory_transport_puts_gets_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let url = RemoteUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
        let transport = Transport::new(&url, None, Timeouts::default(), 1);
        assert!(!transport.exists("here", "cas/x").unwrap());
        assert!(transport.get("here", "cas/x").unwrap().is_none());
        transport
            .put("here", "cas/x", &mut &b"content"[..])
            .unwrap();
        assert!(transport.exists("here", "cas/x").unwrap());
        let mut body = String::new();
        let mut incoming = transport.get("here", "cas/x").unwrap().unwrap();
        incoming.read_to_string(&mut body).unwrap();
        assert_eq!(body, "content");
        assert_eq!(incoming.wire_bytes, 7);
        // No temp file is left next to it.
        assert_eq!(fs::read_dir(dir.path().join("cas")).unwrap().count(), 1);
    }
}
