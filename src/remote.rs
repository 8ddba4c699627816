//! Where the shared cache is, whom to trust and how to sign: resolved once from the command
//! line, the environment and the user's files, never from the recipe.
//!
//! Each setting comes from the first of: a flag, an environment variable, the user's config
//! file (`$KILN_CONFIG`, else `$XDG_CONFIG_HOME/kiln/config.toml`, else
//! `~/.config/kiln/config.toml`):
//!
//! | setting        | flag                                  | environment               | `[cache]` key     |
//! |----------------|---------------------------------------|---------------------------|-------------------|
//! | base URL       | `--cache-remote URL`, `--no-cache-remote` | `KILN_CACHE_REMOTE`   | `remote`          |
//! | push builds    | `--cache-push`                        | `KILN_CACHE_PUSH`         | `push`            |
//! | trusted keys   |                                       | `KILN_CACHE_TRUSTED_KEYS` | `trusted-keys`    |
//! | signing key    |                                       | `KILN_CACHE_SIGNING_KEY`  | `signing-key`     |
//! | transfers, timeouts, retries |                         |                           | `transfers`, `timeout`, `connect-timeout`, `min-rate`, `retries` |
//!
//! `timeout` (a request's stall timeout) and `connect-timeout` are in seconds; `min-rate` is the
//! least average rate of a download, in bytes per second, once `timeout` has passed since it
//! began (16384 by default): a slower server is left for the rest of the build.
//!
//! Credentials come from `KILN_CACHE_TOKEN` (a bearer token) or `KILN_CACHE_USER` and
//! `KILN_CACHE_PASSWORD` (basic auth), else from the credentials file (`$KILN_CACHE_CREDENTIALS`,
//! else `credentials.toml` in the config directory), a table per `host[:port]`:
//!
//! ```toml
//! ["cache.example.org"]
//! token = "…"            # or: user = "…" and password = "…"
//! ```
//!
//! The credentials file and the signing key must not be readable by other users. Nothing read
//! from the credentials file ever appears in a message: its errors give a line and a column.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_cache::remote::{
    Credentials, PublicKey, Remote, RemoteConfig, RemoteUrl, SecretKey, Timeouts,
};
use serde::Deserialize;

use crate::report::CliError;
use crate::settings::Settings;

/// The shared cache flags as typed.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteArgs {
    /// `--cache-remote URL`.
    pub url: Option<String>,
    /// `--no-cache-remote`.
    pub disabled: bool,
    /// `--cache-push`.
    pub push: bool,
}

/// The shared cache, resolved, with where each part came from (for `kiln cache stats`).
#[derive(Debug)]
pub(crate) struct RemoteSettings {
    pub config: RemoteConfig,
    pub push: bool,
    /// Where the URL came from: a flag, a variable or the config file.
    pub url_from: String,
    pub push_from: String,
    /// Each trusted key's name and where it came from.
    pub trusted_from: String,
    /// The signing key's file.
    pub signing_key_file: Option<PathBuf>,
    /// Where the credentials came from, if any.
    pub credentials_from: Option<String>,
}

impl RemoteSettings {
    /// Prepares the connection; nothing is sent yet.
    pub(crate) fn open(&self) -> Result<Remote, CliError> {
        Remote::open(self.config.clone()).map_err(CliError::from)
    }
}

/// The user's config file, as far as kiln reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    cache: CacheSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CacheSection {
    remote: Option<String>,
    push: Option<bool>,
    #[serde(default)]
    trusted_keys: Vec<String>,
    signing_key: Option<PathBuf>,
    transfers: Option<usize>,
    timeout: Option<u64>,
    connect_timeout: Option<u64>,
    min_rate: Option<u64>,
    retries: Option<u32>,
}

/// One host's entry of the credentials file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialEntry {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

/// Reads the environment: an injectable view, so tests need not change the process's.
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment; empty variables count as unset.
pub(crate) struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

/// The shared cache for this invocation, or `None` when none is configured.
pub(crate) fn resolve(settings: &Settings) -> Result<Option<RemoteSettings>, CliError> {
    resolve_with(&settings.remote, &settings.cwd, &ProcessEnvironment)
}

/// [`resolve`] against any environment.
pub(crate) fn resolve_with(
    args: &RemoteArgs,
    cwd: &Path,
    env: &dyn Environment,
) -> Result<Option<RemoteSettings>, CliError> {
    let config_path = config_file(cwd, env);
    let file = read_config(config_path.as_deref())?;
    let config_dir = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.to_path_buf());
    let file_label = |key: &str| match &config_path {
        Some(path) => format!("`{key}` in {}", path.display()),
        None => key.to_string(),
    };
    if args.disabled {
        return Ok(None);
    }
    let (url, url_from) = if let Some(url) = &args.url {
        (url.clone(), "--cache-remote".to_string())
    } else if let Some(url) = env.var("KILN_CACHE_REMOTE") {
        (url, "KILN_CACHE_REMOTE".to_string())
    } else if let Some(url) = &file.cache.remote {
        (url.clone(), file_label("remote"))
    } else {
        return Ok(None);
    };
    let url = RemoteUrl::parse(&url)?;
    let mut config = RemoteConfig::new(url.clone());

    let (push, push_from) = resolve_push(args, &file.cache, env, &file_label)?;
    let (keys, trusted_from) = trusted_keys(&file.cache, env, &file_label)?;
    config.trusted_keys.extend(keys);

    let signing_key_file = match env.var("KILN_CACHE_SIGNING_KEY") {
        Some(path) => Some(kiln_recipe::paths::absolute(cwd, Path::new(&path))),
        None => file
            .cache
            .signing_key
            .as_ref()
            .map(|path| expand_path(&config_dir, path, env)),
    };
    if let Some(path) = &signing_key_file {
        config.signing_key = Some(read_signing_key(path)?);
    }
    apply_transfer_settings(&mut config, &file.cache);

    let (credentials, credentials_from) = credentials(&url, cwd, env)?;
    config.credentials = credentials;
    Ok(Some(RemoteSettings {
        config,
        push,
        url_from,
        push_from,
        trusted_from,
        signing_key_file,
        credentials_from,
    }))
}

/// Whether to push, and where that was decided: `--cache-push`, `KILN_CACHE_PUSH`, the config
/// file, else not.
fn resolve_push(
    args: &RemoteArgs,
    cache: &CacheSection,
    env: &dyn Environment,
    file_label: &dyn Fn(&str) -> String,
) -> Result<(bool, String), CliError> {
    Ok(if args.push {
        (true, "--cache-push".to_string())
    } else if let Some(value) = env.var("KILN_CACHE_PUSH") {
        (
            parse_bool("KILN_CACHE_PUSH", &value)?,
            "KILN_CACHE_PUSH".to_string(),
        )
    } else if let Some(push) = cache.push {
        (push, file_label("push"))
    } else {
        (false, "default".to_string())
    })
}

/// The keys whose signatures are trusted, and where they came from: `KILN_CACHE_TRUSTED_KEYS`,
/// else the config file.
fn trusted_keys(
    cache: &CacheSection,
    env: &dyn Environment,
    file_label: &dyn Fn(&str) -> String,
) -> Result<(Vec<PublicKey>, String), CliError> {
    let (keys, trusted_from) = match env.var("KILN_CACHE_TRUSTED_KEYS") {
        Some(keys) => (
            keys.split_whitespace().map(str::to_string).collect(),
            "KILN_CACHE_TRUSTED_KEYS".to_string(),
        ),
        None => (cache.trusted_keys.clone(), file_label("trusted-keys")),
    };
    let mut parsed = Vec::new();
    for key in keys {
        let key: PublicKey = key.parse().map_err(|source| CliError::RemoteKey {
            from: trusted_from.clone(),
            source,
        })?;
        parsed.push(key);
    }
    Ok((parsed, trusted_from))
}

/// The config file's transfer count, retries and timeouts, over the defaults.
fn apply_transfer_settings(config: &mut RemoteConfig, cache: &CacheSection) {
    if let Some(transfers) = cache.transfers {
        config.transfers = transfers.max(1);
    }
    if let Some(retries) = cache.retries {
        config.retries = retries;
    }
    let defaults = Timeouts::default();
    config.timeouts = Timeouts {
        connect: cache
            .connect_timeout
            .map_or(defaults.connect, Duration::from_secs),
        stall: cache.timeout.map_or(defaults.stall, Duration::from_secs),
        min_rate: cache.min_rate.unwrap_or(defaults.min_rate),
    };
}

/// The user's kiln config directory: `$XDG_CONFIG_HOME/kiln`, else `~/.config/kiln`.
pub(crate) fn config_dir(env: &dyn Environment) -> PathBuf {
    match env.var("XDG_CONFIG_HOME") {
        Some(dir) => PathBuf::from(dir).join("kiln"),
        None => PathBuf::from(env.var("HOME").unwrap_or_else(|| "/root".to_string()))
            .join(".config/kiln"),
    }
}

/// The config file to read: `$KILN_CONFIG` (which must exist), else `config.toml` in the
/// config directory when it exists.
fn config_file(cwd: &Path, env: &dyn Environment) -> Option<PathBuf> {
    if let Some(path) = env.var("KILN_CONFIG") {
        return Some(kiln_recipe::paths::absolute(cwd, Path::new(&path)));
    }
    let path = config_dir(env).join("config.toml");
    path.is_file().then_some(path)
}

fn read_config(path: Option<&Path>) -> Result<ConfigFile, CliError> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: format!("Cannot read the kiln config file `{}`", path.display()),
        source,
    })?;
    toml::from_str(&text).map_err(|error| CliError::ConfigFile {
        path: path.to_path_buf(),
        position: position(&text, error.span()),
        message: error.message().to_string(),
    })
}

/// `~/x` from `$HOME`, a relative path from the config file's directory.
fn expand_path(config_dir: &Path, path: &Path, env: &dyn Environment) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = env.var("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    kiln_recipe::paths::absolute(config_dir, path)
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, CliError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(CliError::RemoteSetting {
            name,
            value: value.to_string(),
        }),
    }
}

/// Refuses a secret file that other users can read.
fn check_private(path: &Path, what: &'static str) -> Result<(), CliError> {
    let meta = std::fs::metadata(path).map_err(|source| CliError::Io {
        what: format!("Cannot read the {what} `{}`", path.display()),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CliError::SecretReadable {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn read_signing_key(path: &Path) -> Result<SecretKey, CliError> {
    check_private(path, "signing key")?;
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: format!("Cannot read the signing key `{}`", path.display()),
        source,
    })?;
    SecretKey::parse(&text).map_err(|source| CliError::RemoteKey {
        from: path.display().to_string(),
        source,
    })
}

/// Credentials for `url`: from the environment, else from the credentials file's table for
/// its `host[:port]`.
fn credentials(
    url: &RemoteUrl,
    cwd: &Path,
    env: &dyn Environment,
) -> Result<(Option<Credentials>, Option<String>), CliError> {
    if let Some(token) = env.var("KILN_CACHE_TOKEN") {
        return Ok((
            Some(Credentials::Bearer(token)),
            Some("KILN_CACHE_TOKEN".to_string()),
        ));
    }
    if let (Some(user), Some(password)) =
        (env.var("KILN_CACHE_USER"), env.var("KILN_CACHE_PASSWORD"))
    {
        return Ok((
            Some(Credentials::Basic { user, password }),
            Some("KILN_CACHE_USER and KILN_CACHE_PASSWORD".to_string()),
        ));
    }
    let Some(host) = url.host() else {
        return Ok((None, None));
    };
    let path = match env.var("KILN_CACHE_CREDENTIALS") {
        Some(path) => kiln_recipe::paths::absolute(cwd, Path::new(&path)),
        None => {
            let path = config_dir(env).join("credentials.toml");
            if !path.is_file() {
                return Ok((None, None));
            }
            path
        }
    };
    check_private(&path, "credentials file")?;
    let text = std::fs::read_to_string(&path).map_err(|source| CliError::Io {
        what: format!("Cannot read the credentials file `{}`", path.display()),
        source,
    })?;
    // The parser's messages may quote the file: only the position is shown.
    let hosts: BTreeMap<String, CredentialEntry> =
        toml::from_str(&text).map_err(|error| CliError::CredentialsFile {
            path: path.clone(),
            position: position(&text, error.span()),
        })?;
    let Some(entry) = hosts.get(host) else {
        return Ok((None, None));
    };
    let from = Some(format!("{} [\"{host}\"]", path.display()));
    let credentials = match entry {
        CredentialEntry {
            token: Some(token),
            user: None,
            password: None,
        } => Credentials::Bearer(token.clone()),
        CredentialEntry {
            token: None,
            user: Some(user),
            password: Some(password),
        } => Credentials::Basic {
            user: user.clone(),
            password: password.clone(),
        },
        _ => {
            return Err(CliError::CredentialsEntry {
                path,
                host: host.to_string(),
            });
        }
    };
    Ok((Some(credentials), from))
}

/// `line L, column C` of a byte span in `text`.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "an unknown position".to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    format!("line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Env(BTreeMap<&'static str, String>);

    impl Environment for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(dir: &Path, vars: &[(&'static str, &str)]) -> Env {
        let mut map = BTreeMap::new();
        map.insert("XDG_CONFIG_HOME", dir.display().to_string());
        map.insert("HOME", dir.display().to_string());
        for (name, value) in vars {
            map.insert(*name, value.to_string());
        }
        Env(map)
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn nothing_configured_is_no_remote() {
        let dir = tempfile::tempdir().unwrap();
        let resolved =
            resolve_with(&RemoteArgs::default(), dir.path(), &env(dir.path(), &[])).unwrap();
        assert!(resolved.is_none());
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate("ci-1").unwrap();
        write_private(&dir.path().join("kiln/ci-1.secret"), &key.to_file_text());
        std::fs::write(
            dir.path().join("kiln/config.toml"),
            format!(
                "[cache]\nremote = \"http://file.example\"\npush = true\n\
                 trusted-keys = [\"{}\"]\nsigning-key = \"ci-1.secret\"\ntransfers = 3\n",
                key.public()
            ),
        )
        .unwrap();
        let from_file = resolve_with(&RemoteArgs::default(), dir.path(), &env(dir.path(), &[]))
            .unwrap()
            .unwrap();
        assert_eq!(from_file.config.url.as_str(), "http://file.example");
        assert!(from_file.push);
        assert!(from_file.url_from.contains("config.toml"));
        assert_eq!(from_file.config.trusted_keys, vec![key.public()]);
        assert_eq!(
            from_file.config.signing_key.as_ref().map(SecretKey::public),
            Some(key.public())
        );
        assert_eq!(from_file.config.transfers, 3);

        let environment = env(
            dir.path(),
            &[
                ("KILN_CACHE_REMOTE", "http://env.example"),
                ("KILN_CACHE_PUSH", "no"),
            ],
        );
        let from_env = resolve_with(&RemoteArgs::default(), dir.path(), &environment)
            .unwrap()
            .unwrap();
        assert_eq!(from_env.config.url.as_str(), "http://env.example");
        assert!(!from_env.push);
        let args = RemoteArgs {
            url: Some("http://flag.example".to_string()),
            disabled: false,
            push: true,
        };
        let from_flag = resolve_with(&args, dir.path(), &environment)
            .unwrap()
            .unwrap();
        assert_eq!(from_flag.config.url.as_str(), "http://flag.example");
        assert!(from_flag.push);
        let off = RemoteArgs {
            disabled: true,
            ..args
        };
        assert!(
            resolve_with(&off, dir.path(), &environment)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn credentials_come_from_the_environment_or_the_host_entry_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln/credentials.toml");
        write_private(
            &file,
            "[\"127.0.0.1:8080\"]\nuser = \"ci\"\npassword = \"s3cret\"\n\n[\"other\"]\ntoken = \"t\"\n",
        );
        let args = RemoteArgs {
            url: Some("http://127.0.0.1:8080/kiln".to_string()),
            ..RemoteArgs::default()
        };
        let resolved = resolve_with(&args, dir.path(), &env(dir.path(), &[]))
            .unwrap()
            .unwrap();
        assert_eq!(
            resolved.config.credentials,
            Some(Credentials::Basic {
                user: "ci".to_string(),
                password: "s3cret".to_string()
            })
        );
        assert!(!format!("{resolved:?}").contains("s3cret"));
        let token = env(dir.path(), &[("KILN_CACHE_TOKEN", "tok")]);
        let resolved = resolve_with(&args, dir.path(), &token).unwrap().unwrap();
        assert_eq!(
            resolved.config.credentials,
            Some(Credentials::Bearer("tok".to_string()))
        );
        // Another host has none.
        let other = RemoteArgs {
            url: Some("http://127.0.0.1:9090/kiln".to_string()),
            ..RemoteArgs::default()
        };
        let resolved = resolve_with(&other, dir.path(), &env(dir.path(), &[]))
            .unwrap()
            .unwrap();
        assert_eq!(resolved.config.credentials, None);
    }

    #[test]
    fn a_broken_credentials_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln/credentials.toml");
        let args = RemoteArgs {
            url: Some("http://127.0.0.1:8080/kiln".to_string()),
            ..RemoteArgs::default()
        };
        for text in [
            "[\"127.0.0.1:8080\"]\npassword = \"hunter2\n",
            "[\"127.0.0.1:8080\"]\nuser = \"ci\"\npassword = 424242\n",
            "[\"127.0.0.1:8080\"]\npasswd = \"hunter2\"\n",
        ] {
            write_private(&file, text);
            let error = resolve_with(&args, dir.path(), &env(dir.path(), &[])).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("424242"),
                "{shown}"
            );
            assert!(shown.contains("at line "), "{shown}");
        }
        write_private(&file, "[\"127.0.0.1:8080\"]\nuser = \"ci\"\n");
        let error = resolve_with(&args, dir.path(), &env(dir.path(), &[])).unwrap_err();
        assert!(
            matches!(error, CliError::CredentialsEntry { .. }),
            "{error}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = resolve_with(&args, dir.path(), &env(dir.path(), &[])).unwrap_err();
        assert!(matches!(error, CliError::SecretReadable { .. }), "{error}");
    }
}
