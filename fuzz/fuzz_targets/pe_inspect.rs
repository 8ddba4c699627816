//! Any bytes given to `kiln inspect`'s reader: it returns an inspection or an error, never
//! panics, and allocates nothing from header values beyond the input's size.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::pe_inspect(data));
