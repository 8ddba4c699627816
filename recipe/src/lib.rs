//! Recipes: what an image is made of ([`Recipe`]) and how it is read from a project directory,
//! either a mkosi project (`mkosi.conf` and friends, read exactly as mkosi reads them) or kiln's
//! own `kiln.ron`.
//!
//! [`load_project`] returns the recipe with every warning found; problems point at the file,
//! line and column they are about and render as miette reports. Paths inside the project are
//! kept relative to it, so the recipe prints the same on every machine. What only running a
//! program on the machine can answer (the host's systemd version, the output of an executable
//! `mkosi.version`) the reader asks of the [`ReaderHost`] it is given; the real one is
//! `kiln_stages::host::reader::RealReaderHost`.
//!
//! ```no_run
//! use kiln_recipe::{load_project, to_ron, LoadOptions};
//! use kiln_stages::host::reader::RealReaderHost;
//! let dir = std::path::Path::new("recipes/arch-rescue");
//! let loaded = load_project(dir, &LoadOptions::default(), &RealReaderHost)?;
//! for warning in &loaded.warnings {
//!     eprintln!("{warning}");
//! }
//! print!("{}", to_ron(&loaded.recipe));
//! # Ok::<(), kiln_recipe::LoadError>(())
//! ```

mod assign;
mod default_files;
mod diagnostics;
mod finalize;
pub mod fnmatch;
mod host;
mod ini;
mod load;
mod matching;
pub mod model;
pub mod paths;
mod project;
mod reader_host;
mod ron;
mod settings;
mod specifiers;
mod values;

pub use self::diagnostics::{
    ConfigError, ConfigErrors, ConfigIssue, ConfigWarning, LoadError, Location,
};
pub use self::load::Assignment;
pub use self::model::*;
pub use self::project::{LoadOptions, Loaded, RecipeOrigin, load_project};
pub use self::reader_host::ReaderHost;
pub use self::ron::{from_ron, to_ron};
pub use self::settings::{Built, SettingInfo, settings_table};
pub use self::values::compare_versions;
