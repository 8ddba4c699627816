//! mkosi's globs, matched as Python's `fnmatch.fnmatchcase` matches them: `*` is any run of
//! characters (`/` included), `?` any one character (`/` included), `[...]` a class (`!`
//! negates, `a-z` is a range, an empty range such as `z-a` is dropped, a `]` first in the class
//! is a member), an unclosed `[` is literal, and there are no escapes (`\` is a plain character)
//! and no braces. globset's dialect differs on each of these (`*` and `/`, `\`, `{a,b}`, an
//! unclosed `[`, `z-a`), so a glob is translated into a regex here, the way
//! `fnmatch.translate` does.
//!
//! [`matches`] answers for one name; [`translate`] gives the regex, for callers that match many
//! globs at once with a `regex::RegexSet`.
//!
//! ```
//! use kiln_recipe::fnmatch;
//! assert!(fnmatch::matches("drivers/net/virtio_net.ko", "*virtio*"));
//! assert!(!fnmatch::matches("raidx", "raid[0-9]*"));
//! ```

/// Whether `name` matches the glob `pattern`, as Python's `fnmatch.fnmatchcase(name, pattern)`.
pub fn matches(name: &str, pattern: &str) -> bool {
    // `translate` emits only valid syntax; a glob too large for the regex crate matches nothing.
    translate(pattern)
        .and_then(|regex| regex::Regex::new(&regex).ok())
        .is_some_and(|regex| regex.is_match(name))
}

/// Translates a glob into an anchored regex for the `regex` crate, or `None` when it can never
/// match (an empty class such as `[z-a]`). Follows `fnmatch.translate`: `*` is any run of
/// characters (`/` included), `?` one character, `[...]` a class (`!` negates, an empty range
/// such as `z-a` is dropped), an unclosed `[` and everything else literal.
pub fn translate(pattern: &str) -> Option<String> {
    let pat: Vec<char> = pattern.chars().collect();
    let n = pat.len();
    let mut out = String::from(r"\A(?s:");
    let mut i = 0;
    let mut last_star = false;
    while i < n {
        let c = pat[i];
        i += 1;
        if c != '*' {
            last_star = false;
        }
        match c {
            '*' => {
                if !last_star {
                    out.push_str(".*");
                }
                last_star = true;
            }
            '?' => out.push('.'),
            '[' => {
                let mut j = i;
                if j < n && pat[j] == '!' {
                    j += 1;
                }
                if j < n && pat[j] == ']' {
                    j += 1;
                }
                while j < n && pat[j] != ']' {
                    j += 1;
                }
                if j >= n {
                    out.push_str(r"\[");
                    continue;
                }
                match bracket_class(&pat, i, j) {
                    Class::Never => return None,
                    Class::Any => out.push('.'),
                    Class::Set(class) => out.push_str(&class),
                }
                i = j + 1;
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push_str(r")\z");
    Some(out)
}

enum Class {
    Never,
    Any,
    Set(String),
}

/// The class `pat[start..end]` (between `[` and `]`), as Python's `fnmatch.translate` reads it.
fn bracket_class(pat: &[char], start: usize, end: usize) -> Class {
    let negated_start = pat[start] == '!';
    // Python splits the class at the hyphens that make ranges: the first character never is
    // one, and after a range the search resumes past its end.
    let mut chunks: Vec<Vec<char>> = Vec::new();
    let mut i = start;
    let mut k = if negated_start { start + 2 } else { start + 1 };
    loop {
        let found = (k..end).find(|&p| pat[p] == '-');
        match found {
            Some(hyphen) => {
                chunks.push(pat[i..hyphen].to_vec());
                i = hyphen + 1;
                k = hyphen + 3;
            }
            None => break,
        }
    }
    let tail: Vec<char> = if i < end {
        pat[i..end].to_vec()
    } else {
        Vec::new()
    };
    if !tail.is_empty() {
        chunks.push(tail);
    } else if let Some(last) = chunks.last_mut() {
        last.push('-');
    } else {
        chunks.push(Vec::new());
    }
    // Drop empty ranges (`z-a`), as Python does: the range's ends disappear with it.
    let mut index = chunks.len();
    while index > 1 {
        index -= 1;
        let (before, after) = (&chunks[index - 1], &chunks[index]);
        if let (Some(&lo), Some(&hi)) = (before.last(), after.first())
            && lo > hi
        {
            let mut merged = before[..before.len() - 1].to_vec();
            merged.extend_from_slice(&after[1..]);
            chunks[index - 1] = merged;
            chunks.remove(index);
        }
    }
    let all: Vec<char> = chunks.concat();
    if all.is_empty() && chunks.len() <= 1 {
        return Class::Never;
    }
    let (negated, first_chunk_skip) = match all.first() {
        Some('!') => (true, 1),
        _ => (false, 0),
    };
    if negated && all.len() == 1 && chunks.len() <= 1 {
        return Class::Any;
    }
    // Escapes exactly the characters the regex syntax gives a meaning (`[`, `-`, `&`, `~`...),
    // which are also the ones it allows escaped inside a class.
    let escape = |c: char| regex::escape(&c.to_string());
    let mut class = String::from(if negated { "[^" } else { "[" });
    for (index, chunk) in chunks.iter().enumerate() {
        let skip = if index == 0 { first_chunk_skip } else { 0 };
        if index > 0 {
            class.push('-');
        }
        for &c in &chunk[skip.min(chunk.len())..] {
            class.push_str(&escape(c));
        }
    }
    class.push(']');
    Class::Set(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnmatch(name: &str, pattern: &str) -> bool {
        matches(name, pattern)
    }

    #[test]
    fn separators_single_characters_classes_and_backslashes() {
        // `*` and `?` cross `/`: a glob is not a path pattern.
        assert!(fnmatch("a/b", "*"));
        assert!(fnmatch("a/b", "a?b"));
        assert!(fnmatch("kernel/drivers/net/e1000.ko", "kernel/*.ko"));
        assert!(fnmatch("", "*"));
        assert!(!fnmatch("", "?"));
        assert!(fnmatch("line\nbreak", "line*break"));
        assert!(fnmatch("line\nbreak", "line?break"));
        assert!(fnmatch("ab\n", "ab?"));
        // Whole names only.
        assert!(!fnmatch("debian-rescue", "debian"));
        assert!(!fnmatch("xdebian", "debian"));
        assert!(fnmatch("archlinux-rescue", "arch*"));
        assert!(fnmatch("archlinux-rescue", "*-rescue"));
        assert!(fnmatch("aXbXc", "a*b*c"));
        assert!(fnmatch("abc", "a**c"));
        // Classes: ranges, negation, `]` first, a class of `/`.
        assert!(fnmatch("bx", "[a-c]x"));
        assert!(!fnmatch("bx", "[!a-c]x"));
        assert!(fnmatch("dx", "[!a-c]x"));
        assert!(fnmatch("a/b", "a[/]b"));
        assert!(!fnmatch("a/b", "a[!/]b"));
        assert!(fnmatch("]", "[!a]"));
        assert!(!fnmatch("]", "[!]]"));
        assert!(fnmatch("^", "[^a]"));
        assert!(fnmatch("z", "[b-a-z]"));
        assert!(fnmatch("-", "[b-a-z]"));
        assert!(!fnmatch("a", "[b-a-z]"));
        // An unclosed `[` is a plain character, and so is the `]` of `[!]`.
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("[!]", "[!]"));
        assert!(fnmatch("a[", "a["));
        // No escapes: a backslash is a plain character and leaves what follows a wildcard.
        assert!(fnmatch("a\\xyz", "a\\*"));
        assert!(!fnmatch("a*", "a\\*"));
        assert!(fnmatch("a\\?", "a\\?"));
        assert!(fnmatch("a\\b", "a\\?"));
        assert!(fnmatch("\\", "[\\]"));
        // Characters the regex syntax gives a meaning are literal outside a class too.
        assert!(fnmatch("a.b+c(d)|e$", "a.b+c(d)|e$"));
        assert!(!fnmatch("aXb", "a.b"));
        // Not ASCII: one character each.
        assert!(fnmatch("é", "?"));
        assert!(fnmatch("ü", "[ä-ü]"));
    }

    #[test]
    fn every_punctuation_character_works_in_a_class_and_a_range() {
        for c in (0x21u8..0x7f)
            .map(char::from)
            .filter(char::is_ascii_punctuation)
        {
            if c == ']' || c == '!' {
                continue;
            }
            let class = format!("a[{c}]");
            assert!(fnmatch(&format!("a{c}"), &class), "{class}");
            assert!(fnmatch(&format!("{c}"), &format!("{c}")), "{c}");
        }
        assert!(fnmatch("#", "[!-~]"));
        assert!(!fnmatch("-", "[!-~]"));
        assert!(!fnmatch("~", "[!-~]"));
        assert!(fnmatch("~", "[%-~]"));
    }

    #[test]
    fn fnmatch_follows_python() {
        assert!(fnmatch("a/b/c", "a*c"));
        assert!(fnmatch("virtio-blk", "virtio-*"));
        assert!(!fnmatch("xvirtio", "virtio*"));
        assert!(fnmatch("raid1", "raid[0-9]*"));
        assert!(fnmatch("raid456", "raid[0-9]*"));
        assert!(!fnmatch("raidx", "raid[0-9]*"));
        assert!(fnmatch("b", "[!a]"));
        assert!(!fnmatch("a", "[!a]"));
        assert!(fnmatch("]", "[]]"));
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("{a,b}", "{a,b}"));
        assert!(!fnmatch("a", "{a,b}"));
        assert!(fnmatch(r"a\b", r"a\b"));
        assert!(fnmatch("-", "[a-]"));
        assert!(fnmatch("e", "[a-c-e]"));
        assert!(fnmatch("-", "[a-c-e]"));
        assert!(!fnmatch("d", "[a-c-e]"));
        // An empty range matches nothing; `[!z-a]` matches anything.
        assert!(translate("[z-a]").is_none());
        assert!(fnmatch("q", "[!z-a]"));
        assert!(fnmatch("a.b", "a?b"));
        assert!(!fnmatch("ab", "a?b"));
        assert!(fnmatch("a&&b", "a[&]&b"));
    }
}
