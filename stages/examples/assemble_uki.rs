//! Assembles a UKI from files, as the uki stage does from an image tree; used by
//! `benches/uki.sh`.
//!
//!     assemble_uki STUB KERNEL KERNEL_VERSION OS_RELEASE INITRD CMDLINE OUT

use std::process::ExitCode;

use kiln_stages::uki::{UkiInputs, assemble_uki, ukify_sections};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        stub,
        kernel,
        kernel_version,
        os_release,
        initrd,
        cmdline,
        out,
    ] = args.as_slice()
    else {
        eprintln!("usage: assemble_uki STUB KERNEL KERNEL_VERSION OS_RELEASE INITRD CMDLINE OUT");
        return ExitCode::from(2);
    };
    let inputs = UkiInputs {
        stub: stub.into(),
        kernel: kernel.into(),
        kernel_version: kernel_version.clone(),
        os_release: os_release.into(),
        initrd: initrd.into(),
        cmdline: cmdline.clone(),
    };
    let result = ukify_sections(&inputs)
        .and_then(|sections| assemble_uki(&inputs.stub, &sections, out.as_ref()));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{:?}", miette::Report::new(error));
            ExitCode::FAILURE
        }
    }
}
