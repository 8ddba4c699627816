//! `[Match]`, `[TriggerMatch]`, `[Assert]` and `[TriggerAssert]`: whether a configuration file
//! applies, evaluated as mkosi's `match_config()` does.
//!
//! In a `[Match]` section every condition must hold, except that conditions prefixed with `|`
//! are alternatives of which at least one must hold; `!` negates a condition. Several `[Match]`
//! sections must all hold. `[TriggerMatch]` sections are alternatives: at least one of them must
//! hold (each with the rules of a `[Match]` section). Conditions compare with the value a setting
//! has at that point of reading (or its default). `[Assert]` sections use the same rules but fail
//! the load instead of skipping the file.

use std::path::Path;

use miette::Severity;

use super::diagnostics::ConfigIssue;
use super::fnmatch;
use super::host::{absolutize, native_architecture};
use super::ini::Entry;
use super::load::{Context, Parsed, Val};
use super::model::Feature;
use super::settings::{self, Matcher, Scope, Setting};
use super::values;

impl Context<'_, '_> {
    /// Whether the file's conditions hold; with `asserts`, unmet `[Assert]` conditions are
    /// reported as errors (and the result is always true).
    pub(crate) fn match_file(&mut self, parsed: &Parsed, asserts: bool) -> bool {
        let (plain, trigger) = if asserts {
            ("Assert", "TriggerAssert")
        } else {
            ("Match", "TriggerMatch")
        };
        let mut any_trigger_section: Option<bool> = None;
        for section in &parsed.ini.sections {
            let is_trigger_section = section.name == trigger;
            if section.name != plain && !is_trigger_section {
                continue;
            }
            let mut condition: Option<bool> = None;
            for entry in &section.entries {
                let raw = entry.value();
                let (is_trigger, rest) = match raw.strip_prefix('|') {
                    Some(rest) => (true, rest),
                    None => (false, raw.as_str()),
                };
                let (negate, rest) = match rest.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, rest),
                };
                let offset =
                    entry.lines.first().map_or(0, |l| l.span.offset) + (raw.len() - rest.len());
                let value = self.expand_specifiers(&parsed.source, rest, offset);
                let result = self.evaluate(parsed, &section.name, entry, &value) != negate;
                if !is_trigger && !result {
                    if is_trigger_section {
                        condition = Some(false);
                        break;
                    }
                    if asserts {
                        let span = entry.key_span;
                        self.issue(
                            ConfigIssue::new(
                                Severity::Error,
                                "kiln::config::assert",
                                format!("`{}={raw}` in `[Assert]` is not satisfied", entry.key),
                            )
                            .with_help("The configuration asserts this condition: change the settings it checks")
                            .at(&parsed.source, span.offset, span.len, "not satisfied"),
                        );
                        return true;
                    }
                    return false;
                }
                if is_trigger {
                    condition = Some(condition.unwrap_or(false) || result);
                }
            }
            if condition == Some(false) && !is_trigger_section {
                if asserts {
                    let span = section.header;
                    self.issue(
                        ConfigIssue::new(
                            Severity::Error,
                            "kiln::config::assert",
                            "None of the `|` conditions of this `[Assert]` section is satisfied"
                                .to_string(),
                        )
                        .with_help("At least one condition prefixed with `|` must hold")
                        .at(
                            &parsed.source,
                            span.offset,
                            span.len,
                            "not satisfied",
                        ),
                    );
                    return true;
                }
                return false;
            }
            if is_trigger_section {
                any_trigger_section =
                    Some(any_trigger_section.unwrap_or(false) || condition != Some(false));
            }
        }
        if any_trigger_section == Some(false) && asserts {
            self.issue(
                ConfigIssue::new(
                    Severity::Error,
                    "kiln::config::assert",
                    "None of the `[TriggerAssert]` sections is satisfied".to_string(),
                )
                .with_help("At least one `[TriggerAssert]` section must hold")
                .in_file(parsed.source.name.clone()),
            );
            return true;
        }
        any_trigger_section != Some(false)
    }

    /// One condition; a condition that cannot be evaluated is reported and does not hold.
    fn evaluate(&mut self, parsed: &Parsed, section: &str, entry: &Entry, value: &str) -> bool {
        let Some(setting) = settings::lookup(&entry.key) else {
            return self.evaluate_match_only(parsed, section, entry, value);
        };
        if !self.can_match_on(parsed, section, entry, setting)
            || !self.condition_value_valid(parsed, entry, setting, value)
        {
            return false;
        }
        let feature = if setting.matcher == Matcher::Feature {
            match values::parse_feature(value) {
                Some(f) => Some(f),
                None => {
                    self.invalid_condition_value(parsed, entry, value, &["yes", "no", "auto"]);
                    return false;
                }
            }
        } else {
            None
        };
        let Some(current) = self.finalize_value(setting) else {
            // An unset optional setting (ImageId=, ImageVersion=) matches nothing; an empty list
            // is a value.
            return setting.matcher == Matcher::List && value.is_empty();
        };
        current_matches(setting.matcher, &current, value, feature)
    }

    /// A condition on something other than a setting (`PathExists=`, `Image=`, ...); an unknown
    /// key is reported and does not hold.
    fn evaluate_match_only(
        &mut self,
        parsed: &Parsed,
        section: &str,
        entry: &Entry,
        value: &str,
    ) -> bool {
        let key = entry.key.as_str();
        let span = entry.key_span;
        match key {
            "PathExists" => !value.is_empty() && absolutize(&self.cwd, Path::new(value)).exists(),
            "Image" => value == self.image,
            "HostArchitecture" => {
                if !settings::ARCHITECTURES.contains(&value) {
                    self.invalid_condition_value(parsed, entry, value, settings::ARCHITECTURES);
                    return false;
                }
                value == native_architecture()
            }
            "SystemdVersion" => self.systemd_version_matches(parsed, entry, value),
            _ => {
                let matchable = settings::SETTINGS
                    .iter()
                    .filter(|s| s.matcher != Matcher::None)
                    .map(|s| s.name)
                    .chain(settings::MATCH_ONLY.iter().copied());
                let help = match settings::closest(key, matchable) {
                    Some(near) => format!("Did you mean `{near}=`?"),
                    None => "See mkosi(1) for the conditions `[Match]` supports".to_string(),
                };
                self.issue(cannot(key, section).with_help(help).at(
                    &parsed.source,
                    span.offset,
                    span.len,
                    "not a condition",
                ));
                false
            }
        }
    }

    /// Whether `setting` can be matched on here; when it cannot, that is reported.
    fn can_match_on(
        &mut self,
        parsed: &Parsed,
        section: &str,
        entry: &Entry,
        setting: &'static Setting,
    ) -> bool {
        let key = entry.key.as_str();
        let span = entry.key_span;
        let source = &parsed.source;
        if setting.matcher == Matcher::None {
            self.issue(
                cannot(key, section)
                    .with_help(format!("mkosi cannot match on `{}=`", setting.name))
                    .at(source, span.offset, span.len, "not a condition"),
            );
            return false;
        }
        if setting.scope == Scope::Main && !self.is_main() {
            self.issue(
                ConfigIssue::new(
                    Severity::Error,
                    "kiln::config::invalid_condition",
                    format!("`{key}=` cannot be matched on outside of the main image"),
                )
                .at(source, span.offset, span.len, "main image only"),
            );
            return false;
        }
        self.warn_if_old_name(key, setting, source, span);
        if setting.matcher == Matcher::Unsupported {
            self.issue(
                ConfigIssue::new(
                    Severity::Warning,
                    "kiln::config::not_implemented",
                    format!("kiln cannot evaluate `[{section}] {key}=` yet; the condition does not hold"),
                )
                .with_help("The files kiln reads may differ from mkosi's; avoid this condition to silence this")
                .at(source, span.offset, span.len, "not evaluated"),
            );
            return false;
        }
        true
    }

    /// Whether `value` is one a condition on `setting` can compare with (a valid choice or
    /// architecture); when it is not, that is reported.
    fn condition_value_valid(
        &mut self,
        parsed: &Parsed,
        entry: &Entry,
        setting: &'static Setting,
        value: &str,
    ) -> bool {
        if let Matcher::Enum = setting.matcher
            && let settings::Kind::Enum(choices) = setting.kind
            && !choices.contains(&value)
        {
            self.invalid_condition_value(parsed, entry, value, choices);
            return false;
        }
        if setting.matcher == Matcher::Architecture
            && value != "uefi"
            && !settings::ARCHITECTURES.contains(&value)
        {
            self.invalid_condition_value(parsed, entry, value, settings::ARCHITECTURES);
            return false;
        }
        true
    }

    fn invalid_condition_value(
        &mut self,
        parsed: &Parsed,
        entry: &Entry,
        value: &str,
        choices: &[&str],
    ) {
        let listed = choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let help = match settings::closest(value, choices.iter().copied()) {
            Some(near) => format!("Did you mean `{near}`? Valid values are {listed}"),
            None => format!("Valid values are {listed}"),
        };
        let span = entry.value_span();
        self.issue(
            ConfigIssue::new(
                Severity::Error,
                "kiln::config::invalid_value",
                format!("`{value}` is not a valid value for `{}=`", entry.key),
            )
            .with_help(help)
            .at(
                &parsed.source,
                span.offset,
                span.len.max(1),
                "invalid value",
            ),
        );
    }

    fn systemd_version_matches(&mut self, parsed: &Parsed, entry: &Entry, condition: &str) -> bool {
        match self.shared.host.systemd_version(self.env().vars()) {
            Some(version) => values::version_matches(condition, &version),
            None => {
                let span = entry.key_span;
                self.issue(
                    ConfigIssue::new(
                        Severity::Warning,
                        "kiln::config::systemd_version",
                        "Cannot find the host's systemd version; `SystemdVersion=` does not hold"
                            .to_string(),
                    )
                    .with_help(
                        "`systemctl --version` failed: install systemd or avoid this condition",
                    )
                    .at(&parsed.source, span.offset, span.len, "not evaluated"),
                );
                false
            }
        }
    }
}

/// The error for a key that cannot be a condition in `[section]`.
fn cannot(key: &str, section: &str) -> ConfigIssue {
    ConfigIssue::new(
        Severity::Error,
        "kiln::config::invalid_condition",
        format!("`{key}=` cannot be used in `[{section}]`"),
    )
}

/// Whether a setting's `current` value satisfies a condition `value` compared by `matcher`
/// (`feature` is `value` read as a feature, for `Matcher::Feature`).
fn current_matches(matcher: Matcher, current: &Val, value: &str, feature: Option<Feature>) -> bool {
    match (matcher, current) {
        (Matcher::Enum | Matcher::Text, Val::Text(text)) => text == value,
        (Matcher::Architecture, Val::Text(arch)) => {
            if value == "uefi" {
                settings::UEFI_ARCHITECTURES.contains(&arch.as_str())
            } else {
                arch == value
            }
        }
        (Matcher::Glob, Val::Text(text)) => fnmatch::matches(text, value),
        (Matcher::Version, Val::Text(text)) => values::version_matches(value, text),
        (Matcher::Feature, Val::Feature(f)) => Some(*f) == feature,
        (Matcher::List, Val::List(list)) => {
            if value.is_empty() {
                list.is_empty()
            } else {
                list.iter().any(|item| item == value)
            }
        }
        (Matcher::KeyValue, Val::Map(map)) => match value.split_once('=') {
            Some((k, v)) => map.get(k).is_some_and(|have| have == v),
            None => map.contains_key(value),
        },
        _ => false,
    }
}
