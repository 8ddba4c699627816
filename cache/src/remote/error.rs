//! Errors of the shared cache. Every variant names the remote by its location, which never
//! holds credentials, and says what was asked of it; request headers are never shown.

use crate::digest::Digest;
use crate::error::StoreError;

/// Shorthand for results of shared cache operations.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// Talking to the shared cache failed, or what it served is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The configured URL cannot be used.
    #[error("Invalid shared cache URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, without any credentials it carried.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No connection, or it broke: refused, reset, name not found, TLS failed.
    #[error("Cannot reach the shared cache `{location}` ({what}): {message}")]
    Unreachable {
        /// The remote.
        location: String,
        /// The request, e.g. `GET ac/1f2e…`.
        what: String,
        /// What the connection said.
        message: String,
    },
    /// The server took longer than the timeout to answer, or stalled in the middle of a body.
    #[error("The shared cache `{location}` timed out ({what})")]
    TimedOut {
        /// The remote.
        location: String,
        /// The request.
        what: String,
    },
    /// A body came in slower than the minimum rate, for longer than the stall timeout.
    #[error(
        "The shared cache `{location}` is too slow ({what}: {received} bytes received before it was cut off)"
    )]
    TooSlow {
        /// The remote.
        location: String,
        /// The request.
        what: String,
        /// Bytes received until then.
        received: u64,
    },
    /// The server answered with an unexpected HTTP status.
    #[error("The shared cache `{location}` answered {status} to {what}")]
    Status {
        /// The remote.
        location: String,
        /// The request.
        what: String,
        /// The HTTP status code.
        status: u16,
    },
    /// An object a trusted record names is not on the server.
    #[error("The shared cache `{location}` lacks object `{id}`")]
    MissingObject {
        /// The remote.
        location: String,
        /// The object.
        id: Digest,
    },
    /// An object's content does not match its name, or does not decode.
    #[error("The shared cache `{location}` served a corrupt object `{id}`: {reason}")]
    Corrupt {
        /// The remote.
        location: String,
        /// The object it was asked for.
        id: Digest,
        /// What was wrong with it.
        reason: String,
    },
    /// An action record is not one kiln can read.
    #[error("The shared cache `{location}` holds a malformed action record for `{key}`: {reason}")]
    MalformedRecord {
        /// The remote.
        location: String,
        /// The stage key.
        key: Digest,
        /// What was wrong with it.
        reason: String,
    },
    /// Pushing needs a key to sign action records with.
    #[error("No signing key is configured: the shared cache only takes signed action records")]
    NoSigningKey,
    /// The transfer threads could not be started.
    #[error("Cannot start the threads that transfer objects")]
    Threads {
        /// What rayon said.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// The local store failed while objects moved in or out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// Whether trying the same request again may succeed: a broken connection, a server error
    /// or "too many requests". A timeout is not retried: a slow server stays slow.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Unreachable { .. } => true,
            RemoteError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            _ => false,
        }
    }

    /// Whether the error is about one entry of the shared cache only (a corrupt or missing
    /// object, a malformed record), which the server answered for: the rest of it may still
    /// be used.
    pub fn is_bad_entry(&self) -> bool {
        matches!(
            self,
            RemoteError::Corrupt { .. }
                | RemoteError::MissingObject { .. }
                | RemoteError::MalformedRecord { .. }
        )
    }

    /// A hint saying what the user can do about the error.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            RemoteError::InvalidUrl { .. } => {
                "Use http://, https:// or file:// followed by the cache's base; put credentials in \
                 the credentials file or the environment, never in the URL"
                    .to_owned()
            }
            RemoteError::Status {
                status: 401 | 403, ..
            } => "Check the credentials for this cache (KILN_CACHE_TOKEN, KILN_CACHE_USER and \
                  KILN_CACHE_PASSWORD, or the credentials file)"
                .to_owned(),
            RemoteError::Status {
                status: 405 | 501, ..
            } => {
                "The server must accept PUT to take uploads (nginx: `dav_methods PUT;`)".to_owned()
            }
            RemoteError::NoSigningKey => {
                "Create a key with `kiln cache keygen NAME` and set `signing-key` in the [cache] \
                 section of the kiln config file, or KILN_CACHE_SIGNING_KEY"
                    .to_owned()
            }
            RemoteError::Unreachable { .. } | RemoteError::TimedOut { .. } => {
                "Check the URL and that the server is up; builds go on without it".to_owned()
            }
            RemoteError::TooSlow { .. } => {
                "Check the network and the server, or lower `min-rate` (bytes per second) in the \
                 [cache] section of the kiln config file; builds go on without it"
                    .to_owned()
            }
            RemoteError::Corrupt { .. } | RemoteError::MissingObject { .. } => {
                "Push the build again from a trusted machine: pushing checks and replaces what \
                 the server holds; builds do without this object meanwhile"
                    .to_owned()
            }
            RemoteError::Store(error) => return error.help(),
            _ => return None,
        })
    }
}
