//! Any bytes as `kiln.ron`: a recipe that prints and reads back equal, or an error whose label
//! lies inside the text, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::recipe_ron(data));
