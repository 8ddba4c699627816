//! Any bytes as a project's `mkosi.conf`: kiln reads a recipe or reports where the file is
//! wrong, never panics; a recipe read prints as RON and reads back equal (see `src/lib.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::shared_workdir().lock().unwrap().mkosi_conf(data);
});
