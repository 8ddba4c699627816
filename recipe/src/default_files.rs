//! Default files: what a configuration directory sets by holding files with mkosi's names
//! (`mkosi.extra/`, `mkosi.postinst.chroot`, `mkosi.rootpw`, `mkosi.version`, `mkosi.cache/`,
//! `mkosi.postinst.d/*`, ...), read before the directory's `mkosi.conf`.
//!
//! Files whose content is the value (`mkosi.version`, `mkosi.rootpw`) are run when executable
//! (by the [`ReaderHost`](crate::ReaderHost)) and their output used, as mkosi does; secrets must
//! not be readable by others. A default file
//! of a setting kiln does not implement is reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use miette::Severity;

use super::diagnostics::{ConfigIssue, Location};
use super::fnmatch;
use super::load::{Context, Input};
use super::settings::{self, Kind, Setting};

impl Context<'_, '_> {
    /// Default files of a configuration directory: `mkosi.extra/`, `mkosi.rootpw`, ...
    pub(crate) fn apply_default_files(&mut self, dir: &Path) {
        let mut unimplemented: BTreeMap<PathBuf, Vec<&'static str>> = BTreeMap::new();
        let mut implemented_suffixes: BTreeSet<&'static str> = BTreeSet::new();
        for setting in settings::SETTINGS {
            if self.prohibited(setting) {
                continue;
            }
            for suffix in setting.suffixes {
                let path = dir.join(format!("mkosi.{suffix}"));
                if !path.exists() && !path.is_symlink() {
                    continue;
                }
                if !setting.implemented() {
                    unimplemented.entry(path).or_default().push(setting.name);
                    continue;
                }
                implemented_suffixes.insert(suffix);
                self.apply_default_file(setting, &path, suffix);
            }
            for pattern in setting.recursive {
                let (subdir, glob) = pattern.split_once('/').unwrap_or((pattern, "*"));
                let subdir = dir.join(format!("mkosi.{subdir}"));
                if !subdir.is_dir() {
                    continue;
                }
                if !setting.implemented() {
                    unimplemented.entry(subdir).or_default().push(setting.name);
                    continue;
                }
                for entry in self.sorted_entries(&subdir) {
                    let file_name = entry
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !fnmatch::matches(&file_name, glob) {
                        continue;
                    }
                    let shown = self.shared.display(&entry);
                    let input = Input::default_file(&entry.to_string_lossy(), shown);
                    let location = Location {
                        file: self.shared.display(&entry),
                        line: 0,
                        column: 0,
                    };
                    self.assign(setting, input, Some(location));
                }
            }
        }
        for (path, names) in unimplemented {
            let suffix_used = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("mkosi."))
                .is_some_and(|s| implemented_suffixes.contains(s));
            if suffix_used || !self.shared.warned_files.insert(path.clone()) {
                continue;
            }
            let name = self.shared.display(&path);
            let settings: Vec<String> = names.iter().map(|n| format!("`{n}=`")).collect();
            self.issue(
                ConfigIssue::new(
                    Severity::Warning,
                    "kiln::config::not_implemented",
                    format!(
                        "`{name}` sets {}, which kiln does not implement yet; it is ignored",
                        settings.join(" and ")
                    ),
                )
                .with_help("The image kiln builds may differ from mkosi's; remove or rename the file to silence this")
                .in_file(name),
            );
        }
    }

    fn apply_default_file(&mut self, setting: &'static Setting, path: &Path, suffix: &str) {
        let name = self.shared.display(path);
        let location = Location {
            file: name.clone(),
            line: 0,
            column: 0,
        };
        if matches!(setting.kind, Kind::Password) && !self.secret_ok(path, 0o007) {
            return;
        }
        let text = if setting.read_text {
            match self.run_or_read(path) {
                Some(text) => text.trim_end_matches('\n').to_string(),
                None => return,
            }
        } else {
            format!("mkosi.{suffix}")
        };
        let input = Input::default_file(&text, name);
        self.assign(setting, input, Some(location));
    }

    /// Whether a secret file is private enough: no permission bit of `mask` set. mkosi refuses
    /// secrets others can read.
    pub(crate) fn secret_ok(&mut self, path: &Path, mask: u32) -> bool {
        let Ok(metadata) = std::fs::metadata(path) else {
            return true;
        };
        let mode = metadata.mode() & 0o777;
        if mode & mask == 0 {
            return true;
        }
        let name = self.shared.display(path);
        let who = if mask & 0o070 != 0 {
            "its group or others"
        } else {
            "others"
        };
        self.issue(
            ConfigIssue::new(
                Severity::Error,
                "kiln::config::secret_permissions",
                format!("`{name}` is accessible by {who} (mode {mode:04o})"),
            )
            .with_help(format!(
                "It holds a secret: restrict it to its owner with `chmod 600 {name}` (mkosi refuses it too)"
            ))
            .in_file(name),
        );
        false
    }

    /// mkosi's `file_run_or_read`: an executable file is run and its output is the value, any
    /// other is read (and must not start with a shebang).
    fn run_or_read(&mut self, path: &Path) -> Option<String> {
        let name = self.shared.display(path);
        let executable = std::fs::metadata(path)
            .map(|m| m.mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            let output = self
                .shared
                .host
                .run_script(path, &self.cwd, self.env().vars());
            return match output {
                Ok(output) if output.status.success() => match String::from_utf8(output.stdout) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        self.issue(
                            ConfigIssue::new(
                                Severity::Error,
                                "kiln::config::script_failed",
                                format!("`{name}` printed text that is not UTF-8"),
                            )
                            .with_help(
                                "The script's output is the setting's value: print UTF-8 text",
                            )
                            .in_file(name),
                        );
                        None
                    }
                },
                Ok(output) => {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    let stderr = stderr.trim();
                    let mut help = "The script is executable, so mkosi runs it and uses its output; fix it, or make it a plain file with `chmod -x`".to_string();
                    if !stderr.is_empty() {
                        help = format!("{help}\nIts error output:\n{stderr}");
                    }
                    self.issue(
                        ConfigIssue::new(
                            Severity::Error,
                            "kiln::config::script_failed",
                            format!("`{name}` failed ({})", output.status),
                        )
                        .with_help(help)
                        .in_file(name),
                    );
                    None
                }
                Err(error) => {
                    self.issue(
                        ConfigIssue::new(
                            Severity::Error,
                            "kiln::config::script_failed",
                            format!("Cannot run `{name}`: {error}"),
                        )
                        .with_help("The file is executable, so mkosi runs it: check its `#!` line, or make it a plain file with `chmod -x`")
                        .in_file(name),
                    );
                    None
                }
            };
        }
        match std::fs::read_to_string(path) {
            Ok(text) if text.starts_with("#!/") => {
                let first = text.lines().next().unwrap_or_default().to_string();
                self.issue(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::not_executable",
                        format!("`{name}` starts with a shebang (`{first}`) but is not executable"),
                    )
                    .with_help(format!(
                        "mkosi runs it only when it is executable: `chmod +x {name}`"
                    ))
                    .in_file(name),
                );
                None
            }
            Ok(text) => Some(text),
            Err(error) => {
                self.issue(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::io",
                        format!("Cannot read `{name}`: {error}"),
                    )
                    .in_file(name),
                );
                None
            }
        }
    }
}
