//! Any bytes as a tar archive ingested into the store: a valid tree (nothing outside its root,
//! nothing below a symlink) or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::shared_workdir().lock().unwrap().tar_ingest(data);
});
