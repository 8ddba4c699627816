//! mkosi's `%` specifiers: `%%` is a percent sign; `%d %r %a %t %o %O %v %i` expand to the current
//! value of `Distribution=`, `Release=`, `Architecture=`, `Format=`, `Output=`,
//! `OutputDirectory=`, `ImageVersion=` and `ImageId=`; `%C` is the directory of the file being
//! read, `%P` the current directory, `%D` the project directory, `%F` the distribution's default
//! file system and `%I` the image's name (`main` for the main image).
//!
//! As in mkosi, an unknown specifier, or one whose setting has no value yet, expands to nothing
//! and is reported.

/// Why a specifier expanded to nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// `%c` is not a specifier mkosi knows.
    Unknown { offset: usize, c: char },
    /// The setting behind `%c` has no value yet.
    Unset {
        offset: usize,
        c: char,
        setting: &'static str,
    },
}

/// What a specifier stands for at the place it is expanded.
pub(crate) enum Expansion {
    Value(String),
    /// The specifier's setting (named) has no value yet.
    Unset(&'static str),
    Unknown,
}

/// Expands every specifier of `text`; `lookup` gives the expansion of a specifier character.
pub(crate) fn expand(
    text: &str,
    mut lookup: impl FnMut(char) -> Expansion,
) -> (String, Vec<Problem>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut chars = text.char_indices();
    while let Some((offset, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some((_, s)) = chars.next() else {
            out.push('%');
            break;
        };
        if s == '%' {
            out.push('%');
            continue;
        }
        match lookup(s) {
            Expansion::Value(value) => out.push_str(&value),
            Expansion::Unset(setting) => problems.push(Problem::Unset {
                offset,
                c: s,
                setting,
            }),
            Expansion::Unknown => problems.push(Problem::Unknown { offset, c: s }),
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(c: char) -> Expansion {
        match c {
            'd' => Expansion::Value("arch".into()),
            'v' => Expansion::Unset("ImageVersion"),
            _ => Expansion::Unknown,
        }
    }

    #[test]
    fn expands_and_reports() {
        let (text, problems) = expand("a-%d-%%-%v-%z-%", lookup);
        assert_eq!(text, "a-arch-%---%");
        assert_eq!(
            problems,
            vec![
                Problem::Unset {
                    offset: 8,
                    c: 'v',
                    setting: "ImageVersion"
                },
                Problem::Unknown { offset: 11, c: 'z' },
            ]
        );
    }
}
