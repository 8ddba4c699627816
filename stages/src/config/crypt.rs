//! SHA-512 crypt (`$6$`), the password hash of glibc's `crypt(3)` and `/etc/shadow`, after
//! Ulrich Drepper's specification "Unix crypt using SHA-256 and SHA-512".

use sha2::{Digest, Sha512};

/// The alphabet of crypt's base64.
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The rounds crypt uses when none are named.
const DEFAULT_ROUNDS: usize = 5000;

/// The longest salt crypt reads.
pub const SALT_LENGTH: usize = 16;

/// `$6$<salt>$<hash>` for `password`, with the default number of rounds. The salt is cut to 16
/// characters.
pub fn sha512_crypt(password: &[u8], salt: &str) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(SALT_LENGTH)];
    let digest = sha512_crypt_raw(password, salt, DEFAULT_ROUNDS);
    format!("$6${}${}", String::from_utf8_lossy(salt), encode(&digest))
}

/// A salt of crypt's alphabet made from `seed` (at least 12 bytes of it are used).
pub fn salt_from(seed: &[u8]) -> String {
    seed.iter()
        .cycle()
        .take(SALT_LENGTH)
        .map(|byte| ITOA64[usize::from(byte & 0x3f)] as char)
        .collect()
}

fn sha512_crypt_raw(password: &[u8], salt: &[u8], rounds: usize) -> [u8; 64] {
    let b: [u8; 64] = Sha512::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();

    let mut a = Sha512::new().chain_update(password).chain_update(salt);
    let mut remaining = password.len();
    while remaining > 64 {
        a.update(b);
        remaining -= 64;
    }
    a.update(&b[..remaining]);
    let mut length = password.len();
    while length > 0 {
        if length & 1 == 1 {
            a.update(b);
        } else {
            a.update(password);
        }
        length >>= 1;
    }
    let mut a: [u8; 64] = a.finalize().into();

    let mut dp = Sha512::new();
    for _ in 0..password.len() {
        dp.update(password);
    }
    let dp: [u8; 64] = dp.finalize().into();
    let p_sequence: Vec<u8> = dp.iter().copied().cycle().take(password.len()).collect();

    let mut ds = Sha512::new();
    for _ in 0..16 + usize::from(a[0]) {
        ds.update(salt);
    }
    let ds: [u8; 64] = ds.finalize().into();
    let s_sequence = &ds[..salt.len()];

    for round in 0..rounds {
        let mut c = Sha512::new();
        if round % 2 == 1 {
            c.update(&p_sequence);
        } else {
            c.update(a);
        }
        if round % 3 != 0 {
            c.update(s_sequence);
        }
        if round % 7 != 0 {
            c.update(&p_sequence);
        }
        if round % 2 == 1 {
            c.update(a);
        } else {
            c.update(&p_sequence);
        }
        a = c.finalize().into();
    }
    a
}

/// crypt's base64 of the 64 digest bytes, in the specification's byte order.
fn encode(digest: &[u8; 64]) -> String {
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut out = String::with_capacity(86);
    let mut push = |b2: u8, b1: u8, b0: u8, count: usize| {
        let mut word = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
        for _ in 0..count {
            out.push(ITOA64[(word & 0x3f) as usize] as char);
            word >>= 6;
        }
    };
    for (x, y, z) in ORDER {
        push(digest[x], digest[y], digest[z], 4);
    }
    push(0, 0, digest[63], 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_test_vector() {
        assert_eq!(
            sha512_crypt(b"Hello world!", "saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
    }

    #[test]
    fn long_passwords_and_salts_are_hashed_as_glibc_does() {
        // The salt is cut to 16 characters.
        assert_eq!(
            sha512_crypt(b"test", "0123456789abcdefXYZ"),
            sha512_crypt(b"test", "0123456789abcdef")
        );
        let long = sha512_crypt(&[b'x'; 150], "abc");
        assert!(long.starts_with("$6$abc$"));
        assert_eq!(long.len(), "$6$abc$".len() + 86);
    }

    #[test]
    fn salts_use_crypts_alphabet() {
        let salt = salt_from(&[0, 1, 63, 64, 255]);
        assert_eq!(salt.len(), SALT_LENGTH);
        assert!(salt.starts_with("./z.z"), "{salt}");
    }
}
