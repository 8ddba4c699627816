//! Any bytes given to the UKI assembler as a systemd-stub: it writes a UKI or returns an
//! error, never panics, and kiln reads back the UKIs it writes. The stub and the UKI live in a
//! private directory of /dev/shm.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::shared_workdir().lock().unwrap().stub_assemble(data);
});
