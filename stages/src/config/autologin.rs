//! `Autologin=`: agetty drop-ins that log root in on the console, the first virtual terminal and
//! the serial consoles, as mkosi writes them.

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

/// Each getty unit and the agetty arguments mkosi gives it.
pub const UNITS: [(&str, &str); 4] = [
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
pub fn dropin(extra: &str) -> String {
    format!(
        "[Service]\nExecStart=\nExecStart=-agetty -o '-f -p -- \\\\u' --autologin root {extra} $TERM\n\
         StandardInput=tty\nStandardOutput=tty\n"
    )
}

pub struct AutologinStage {
    pub base: String,
}

impl Stage for AutologinStage {
    fn name(&self) -> &str {
        "autologin"
    }

    fn kind(&self) -> &'static str {
        "autologin"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("base", &self.base)]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        for (unit, extra) in UNITS {
            let path = format!("usr/lib/systemd/system/{unit}.d/autologin.conf");
            super::put_file(ctx.store, &mut tree, &path, dropin(extra).as_bytes(), 0o644)?;
        }
        Ok(ctx.store.put_manifest(&tree)?)
    }
}
