//! Standard output: when the reader stops early (`kiln graph explain --json | head -1`), kiln
//! ends quietly with status 0, as ripgrep does, instead of panicking on the broken pipe.

use std::io::Write;

/// Write `text` to standard output.
pub(crate) fn write(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("kiln: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// `print!` that survives a closed standard output.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(&format!($($arg)*))
    };
}

/// `println!` that survives a closed standard output.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
