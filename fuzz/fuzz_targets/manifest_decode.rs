//! Any bytes as a stored tree manifest: a valid manifest whose encoding is exactly the input,
//! or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::manifest_decode(data));
