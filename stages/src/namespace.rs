//! A private mount namespace for the whole kiln process.
//!
//! Mutable stages mount overlays. If kiln is killed, a mount in the host's namespace would
//! outlive it and pin the store's scratch directories. Entered at start-up (before any thread
//! exists, as unshare(CLONE_NEWNS) requires), a private namespace takes every mount kiln made with
//! it when the last process in it exits.

use rustix::mount::{MountPropagationFlags, mount_change};
use rustix::thread::{UnshareFlags, unshare_unsafe};

/// Enter a private mount namespace. Returns false (and changes nothing) when not permitted, for
/// example when not running as root; stages then fall back to copying.
pub fn enter_private_mount_namespace() -> bool {
    // SAFETY: called before any thread is spawned, so no other thread shares our filesystem
    // state; unsharing the mount namespace affects only this process.
    if unsafe { unshare_unsafe(UnshareFlags::NEWNS) }.is_err() {
        return false;
    }
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .is_ok()
}
