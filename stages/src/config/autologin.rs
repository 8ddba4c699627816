//! `Autologin=`: agetty drop-ins that log root in on the console, the first virtual terminal and
//! the serial consoles, as mkosi writes them.

use kiln_cache::{Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

/// Each getty unit and the agetty arguments mkosi gives it.
pub(super) const UNITS: [(&str, &str); 4] = [
    (
        "console-getty.service",
        "--noclear --keep-baud console 115200,38400,9600",
    ),
    ("getty@tty1.service", "--noclear -"),
    (
        "serial-getty@ttyS0.service",
        "--keep-baud 115200,57600,38400,9600 -",
    ),
    (
        "serial-getty@hvc0.service",
        "--keep-baud 115200,57600,38400,9600 -",
    ),
];

/// The drop-in of one unit.
pub(super) fn dropin(extra: &str) -> String {
    format!(
        "[Service]\nExecStart=\nExecStart=-agetty -o '-f -p -- \\\\u' --autologin root {extra} $TERM\n\
         StandardInput=tty\nStandardOutput=tty\n"
    )
}

/// The drop-ins of every unit of [`UNITS`].
pub struct Autologin;

impl TreeEdit for Autologin {
    fn name(&self) -> &'static str {
        "autologin"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        for (unit, extra) in UNITS {
            let path = format!("usr/lib/systemd/system/{unit}.d/autologin.conf");
            super::put_file(store, tree, &path, dropin(extra).as_bytes(), 0o644)?;
        }
        Ok(())
    }
}
