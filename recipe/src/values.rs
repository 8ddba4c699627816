//! mkosi's value syntax, independent of files and spans: booleans, features, shell-like word
//! splitting for `Environment=`, the `hashed:` root password, the order mkosi sorts packages in,
//! shell globs and the UAPI version comparison `[Match] ImageVersion=` uses.

use std::cmp::Ordering;

use super::model::{Feature, RootPassword};

/// mkosi's booleans: `1 true yes y t on always` and `0 false no n f off never`, in any case.
pub(crate) fn parse_boolean(value: &str) -> Option<bool> {
    match value.to_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "t" | "on" | "always" => Some(true),
        "0" | "false" | "no" | "n" | "f" | "off" | "never" => Some(false),
        _ => None,
    }
}

/// `auto`, `enabled`, `disabled` or a boolean.
pub(crate) fn parse_feature(value: &str) -> Option<Feature> {
    match value {
        "auto" => Some(Feature::Auto),
        "enabled" => Some(Feature::Enabled),
        "disabled" => Some(Feature::Disabled),
        other => parse_boolean(other).map(|b| {
            if b {
                Feature::Enabled
            } else {
                Feature::Disabled
            }
        }),
    }
}

/// `[hashed:]PASSWORD`, surrounding whitespace removed.
pub(crate) fn parse_root_password(value: &str) -> RootPassword {
    let value = value.trim();
    match value.strip_prefix("hashed:") {
        Some(hash) => RootPassword {
            value: hash.to_string(),
            hashed: true,
        },
        None => RootPassword {
            value: value.to_string(),
            hashed: false,
        },
    }
}

/// The order mkosi keeps `Packages=` in: plain names first, then paths, then conditional
/// (`(...)`) entries, each group sorted.
pub(crate) fn package_sort_key(package: &str) -> (u8, &str) {
    if package.starts_with('(') {
        (2, package)
    } else if package.starts_with('/') {
        (1, package)
    } else {
        (0, package)
    }
}

/// Why a shell-like split failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SplitError {
    UnterminatedQuote(char),
    TrailingBackslash,
}

/// Python's `shlex` in POSIX mode with `whitespace_split` and no comments, splitting at spaces
/// and newlines: how mkosi splits `Environment=`.
pub(crate) fn shell_split(text: &str) -> Result<Vec<String>, SplitError> {
    #[derive(PartialEq)]
    enum State {
        Blank,
        Word,
        Single,
        Double,
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut state = State::Blank;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            State::Blank | State::Word => match c {
                ' ' | '\n' => {
                    if state == State::Word {
                        words.push(std::mem::take(&mut word));
                        state = State::Blank;
                    }
                }
                '\\' => {
                    let next = chars.next().ok_or(SplitError::TrailingBackslash)?;
                    word.push(next);
                    state = State::Word;
                }
                '\'' => state = State::Single,
                '"' => state = State::Double,
                other => {
                    word.push(other);
                    state = State::Word;
                }
            },
            State::Single => match c {
                '\'' => state = State::Word,
                other => word.push(other),
            },
            State::Double => match c {
                '"' => state = State::Word,
                '\\' => match chars.peek() {
                    Some('"' | '\\') => word.push(chars.next().unwrap_or('\\')),
                    Some(_) => word.push('\\'),
                    None => return Err(SplitError::UnterminatedQuote('"')),
                },
                other => word.push(other),
            },
        }
    }
    match state {
        State::Single => Err(SplitError::UnterminatedQuote('\'')),
        State::Double => Err(SplitError::UnterminatedQuote('"')),
        State::Word => {
            words.push(word);
            Ok(words)
        }
        State::Blank => Ok(words),
    }
}

/// The UAPI version comparison (systemd's `strverscmp_improved`, mkosi's `GenericVersion`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn valid(c: u8) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        for sep in [b'~', b'-', b'^', b'.'] {
            if sep == b'~' {
                if at(a, i) == b'~' || at(b, j) == b'~' {
                    let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
                    if r != Ordering::Equal {
                        return r;
                    }
                    i += 1;
                    j += 1;
                }
                if i >= a.len() || j >= b.len() {
                    return at(a, i).cmp(&at(b, j));
                }
                continue;
            }
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let mut ii = i;
            while at(a, ii).is_ascii_digit() {
                ii += 1;
            }
            let mut jj = j;
            while at(b, jj).is_ascii_digit() {
                jj += 1;
            }
            let r = (i != ii).cmp(&(j != jj));
            if r != Ordering::Equal {
                return r;
            }
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            let r = (ii - i).cmp(&(jj - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a[i..ii].cmp(&b[j..jj]);
            if r != Ordering::Equal {
                return r;
            }
            i = ii;
            j = jj;
        } else {
            let mut ii = i;
            while at(a, ii).is_ascii_alphabetic() {
                ii += 1;
            }
            let mut jj = j;
            while at(b, jj).is_ascii_alphabetic() {
                jj += 1;
            }
            let n = (ii - i).min(jj - j);
            let r = a[i..i + n].cmp(&b[j..j + n]);
            if r != Ordering::Equal {
                return r;
            }
            let r = (ii - i).cmp(&(jj - j));
            if r != Ordering::Equal {
                return r;
            }
            i = ii;
            j = jj;
        }
    }
}

/// `[Match] ImageVersion=`: an optional operator (`==`, `!=`, `<=`, `>=`, `>`, `<`; equality when
/// none) and a version.
pub(crate) fn version_matches(condition: &str, value: &str) -> bool {
    type Accept = fn(Ordering) -> bool;
    let operators: [(&str, Accept); 6] = [
        ("==", |o| o == Ordering::Equal),
        ("!=", |o| o != Ordering::Equal),
        ("<=", |o| o != Ordering::Greater),
        (">=", |o| o != Ordering::Less),
        (">", |o| o == Ordering::Greater),
        ("<", |o| o == Ordering::Less),
    ];
    for (sigil, accept) in operators {
        if let Some(rhs) = condition.strip_prefix(sigil) {
            return accept(compare_versions(value, rhs));
        }
    }
    compare_versions(value, condition) == Ordering::Equal
}

/// Whether `name` is a valid file name for mkosi (`Output=`, profiles): its trimmed text names
/// one directory entry.
pub(crate) fn is_valid_filename(name: &str) -> bool {
    crate::paths::is_file_name(name.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_features() {
        for yes in ["1", "true", "YES", "y", "t", "On", "always"] {
            assert_eq!(parse_boolean(yes), Some(true), "{yes}");
        }
        for no in ["0", "false", "No", "n", "f", "off", "never"] {
            assert_eq!(parse_boolean(no), Some(false), "{no}");
        }
        assert_eq!(parse_boolean("maybe"), None);
        assert_eq!(parse_feature("auto"), Some(Feature::Auto));
        assert_eq!(parse_feature("no"), Some(Feature::Disabled));
        assert_eq!(parse_feature("enabled"), Some(Feature::Enabled));
        assert_eq!(parse_feature("maybe"), None);
    }

    #[test]
    fn root_password() {
        assert_eq!(
            parse_root_password(" hashed:$6$abc "),
            RootPassword {
                value: "$6$abc".into(),
                hashed: true
            }
        );
        assert_eq!(
            parse_root_password("secret"),
            RootPassword {
                value: "secret".into(),
                hashed: false
            }
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split("A=1 B='two words'\nC=\"q\\\"x\\n\" D\\ E=5").expect("split"),
            vec!["A=1", "B=two words", "C=q\"x\\n", "D E=5"]
        );
        assert_eq!(shell_split("  \n ").expect("split"), Vec::<String>::new());
        assert_eq!(shell_split("A=''").expect("split"), vec!["A="]);
        assert_eq!(
            shell_split("A='x"),
            Err(SplitError::UnterminatedQuote('\''))
        );
        assert_eq!(shell_split("A=x\\"), Err(SplitError::TrailingBackslash));
    }

    #[test]
    fn versions_compare_like_systemd() {
        use Ordering::*;
        let cases = [
            ("1", "1", Equal),
            ("1", "2", Less),
            ("1.10", "1.9", Greater),
            ("001", "1", Equal),
            ("1~rc1", "1", Less),
            ("1.0", "1", Greater),
            ("1-1", "1.1", Less),
            ("1^patch", "1", Greater),
            ("abc", "abcd", Less),
            ("1a", "1", Greater),
            ("123", "abc", Greater),
            ("20240128082906", "20240128082907", Less),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
        assert!(version_matches(">=2", "10"));
        assert!(version_matches("<3", "2.9"));
        assert!(version_matches("2", "2"));
        assert!(version_matches("!=2", "3"));
        assert!(!version_matches("==2", "3"));
    }

    #[test]
    fn packages_sort_like_mkosi() {
        let mut packages = vec!["(cond)", "/usr/bin/x", "zsh", "base"];
        packages.sort_by_key(|p| package_sort_key(p));
        assert_eq!(packages, vec!["base", "zsh", "/usr/bin/x", "(cond)"]);
    }

    #[test]
    fn filenames() {
        assert!(is_valid_filename("image_1"));
        assert!(!is_valid_filename("a/b"));
        assert!(!is_valid_filename(".."));
    }
}
