//! Any bytes given to the UKI assembler as a systemd-stub: it writes a UKI or returns an
//! error, never panics. The stub and the UKI live in a private directory of /dev/shm.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_stages::uki::{UkiSection, assemble_uki};
use libfuzzer_sys::fuzz_target;

fn workdir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/kiln-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a private directory in /dev/shm");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let stub = workdir().join("stub");
    let out = workdir().join("uki.efi");
    std::fs::write(&stub, data).expect("writing the stub");
    let sections = [
        UkiSection::bytes(".osrel", "ID=fuzz\n"),
        UkiSection::bytes(".uname", "6.1.0"),
        UkiSection::bytes(".linux", vec![0x90; 700]).with_virtual_size(Some(0x2000)),
        UkiSection::bytes(".sbat", vec![b's'; 300]),
    ];
    if assemble_uki(&stub, &sections, &out).is_ok() {
        // What kiln writes, kiln reads back.
        let mut file = std::fs::File::open(&out).expect("the UKI just written");
        kiln_stages::uki::inspect(&mut file).expect("kiln reads the UKIs it writes");
    }
});
