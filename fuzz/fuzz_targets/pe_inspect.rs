//! Any bytes given to `kiln inspect`'s reader: it returns an inspection or an error, never
//! panics, and allocates nothing from header values beyond the input's size.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = std::io::Cursor::new(data);
    if let Ok(inspection) = kiln_stages::uki::inspect(&mut file) {
        let _ = inspection.to_text();
        let _ = inspection.to_json();
    }
});
