//! The README's settings section is the settings table: this renders the table and checks the
//! README holds exactly that between its markers. When the table changes, the failure prints
//! the section to paste.

use kiln_engine::recipe::{Built, settings_table};

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
