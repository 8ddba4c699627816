//! SHA-512 crypt (`$6$`), the password hash of glibc's `crypt(3)` and `/etc/shadow`, after
//! Ulrich Drepper's specification "Unix crypt using SHA-256 and SHA-512": the digest is the
//! `sha-crypt` crate's, written out here as `$6$<salt>$<hash>` (the crate's own string form
//! always names the rounds and encodes the salt, which shadow entries of the default rounds do
//! not).

use sha_crypt::Params;

/// The alphabet of crypt's base64.
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The longest salt crypt reads.
pub const SALT_LENGTH: usize = 16;

/// `$6$<salt>$<hash>` for `password`, with the default number of rounds. The salt is cut to 16
/// characters.
pub fn sha512_crypt(password: &[u8], salt: &str) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(SALT_LENGTH)];
    // The rounds crypt uses when none are named (5000).
    let digest = sha_crypt::sha512_crypt(password, salt, Params::RECOMMENDED);
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
    fn the_specifications_vector_with_a_salt_too_long() {
        // The specification's vector names `rounds=5000`, the default, which this form leaves out.
        assert_eq!(
            sha512_crypt(b"This is just a test", "toolongsaltstring"),
            "$6$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"
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
