//! The README's settings section is the settings table: this renders the table and checks the
//! README holds exactly that between its markers. When the table changes, the failure prints
//! the section to paste.

use kiln_recipe::{Built, settings_table};

const BEGIN: &str = "<!-- settings table: begin -->\n";
const END: &str = "<!-- settings table: end -->";

fn rendered() -> String {
    let table = settings_table();
    let mut out = String::from("| setting | section | what builds it |\n|---|---|---|\n");
    let mut unread = Vec::new();
    for setting in &table {
        let built = match setting.built {
            Built::Unread => {
                unread.push(format!("`{}=`", setting.name));
                continue;
            }
            Built::Reader => "the configuration reader".to_string(),
            Built::Plan => {
                "the plan (which stages run, where outputs and the store go)".to_string()
            }
            Built::Stages(stages) => stages
                .iter()
                .map(|stage| format!("`{stage}`"))
                .collect::<Vec<_>>()
                .join(", "),
            Built::Not { differs, .. } => format!("**not built yet**: {differs}"),
            Built::NoEffect(reason) => format!("nothing: {reason}"),
        };
        out.push_str(&format!(
            "| `{}=` | `[{}]` | {built} |\n",
            setting.name, setting.section
        ));
    }
    out.push_str(&format!(
        "\nNot read yet ({} settings; each warns at the line that sets it): {}.\n",
        unread.len(),
        unread.join(", ")
    ));
    out
}

#[test]
fn the_readme_lists_the_settings_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let expected = rendered();
    let section = readme
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(section, _)| section);
    assert_eq!(
        section,
        Some(expected.as_str()),
        "The README's settings section differs from the table; it should read:\n{BEGIN}{expected}{END}"
    );
}

/// The code spans of a Markdown table cell, as their text (one space trimmed at each end, as
/// Markdown does, and `\|` read as `|`).
fn code_spans(cell: &str) -> Vec<String> {
    let cell = cell.replace("\\|", "|");
    let bytes = cell.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'`' {
            at += 1;
            continue;
        }
        let run = bytes[at..].iter().take_while(|&&b| b == b'`').count();
        let start = at + run;
        // The closing run has exactly as many backticks.
        let mut end = start;
        let close = loop {
            if end >= bytes.len() {
                break None;
            }
            if bytes[end] == b'`' {
                let n = bytes[end..].iter().take_while(|&&b| b == b'`').count();
                if n == run {
                    break Some(end);
                }
                end += n;
            } else {
                end += 1;
            }
        };
        let Some(close) = close else { break };
        let text = &cell[start..close];
        let text = text.strip_prefix(' ').unwrap_or(text);
        let text = text.strip_suffix(' ').unwrap_or(text);
        spans.push(text.to_string());
        at = close + run;
    }
    spans
}

/// Every text kiln's answers can come from: the rendered reports and the sources.
fn answers_corpus() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut corpus = String::new();
    for dir in [
        "tests/snapshots",
        "src",
        "recipe/src",
        "engine/src",
        "stages/src",
        "cache/src",
    ] {
        for entry in walkdir::WalkDir::new(root.join(dir)) {
            let entry = entry.unwrap();
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "rs" || ext == "snap")
            {
                corpus.push_str(&std::fs::read_to_string(path).unwrap());
                corpus.push('\n');
            }
        }
    }
    corpus
}

#[test]
fn the_bad_input_table_quotes_answers_kiln_gives() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split_once("\n## Bad input\n")
        .expect("the README has a `Bad input` section")
        .1;
    let section = section.split("\n## ").next().unwrap();
    let corpus = answers_corpus();
    let rows: Vec<&str> = section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| bad input"))
        .collect();
    assert!(rows.len() >= 40, "only {} rows", rows.len());
    let mut quoted = 0;
    for row in rows {
        let answer = row
            .trim_end_matches('|')
            .rsplit(" | ")
            .next()
            .unwrap_or_default();
        for span in code_spans(answer) {
            for fragment in span.split('…') {
                // Only fragments that say something: not the punctuation around a value.
                if fragment.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
                    continue;
                }
                assert!(
                    corpus.contains(fragment),
                    "The README's bad-input row\n{row}\nquotes `{fragment}`, which no report or \
                     source of kiln holds"
                );
                quoted += 1;
            }
        }
    }
    assert!(quoted >= 60, "only {quoted} fragments checked");
}

#[test]
fn code_spans_are_read_as_markdown_reads_them() {
    assert_eq!(
        code_spans("``Unknown `X=` here``, ``` `a` b ``` (⚠)"),
        ["Unknown `X=` here", "`a` b"]
    );
    assert_eq!(code_spans("`` a `\\|` b ``"), ["a `|` b"]);
}
