//! `kiln cache stats|gc|verify|push|pull`: looking after the local store.

use kiln_cache::{GcPolicy, Store};

use crate::cli::CacheVerb;
use crate::project::store_dir;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;
use crate::stdout::outln;

pub fn run(settings: &Settings, renderer: &Renderer, verb: CacheVerb) -> Result<(), CliError> {
    let store = open_store(settings, renderer)?;
    let store_error = |source| CliError::Store {
        path: store.root().to_path_buf(),
        source,
    };
    match verb {
        CacheVerb::Stats => {
            let stats = store.stats().map_err(store_error)?;
            outln!("store       {}", store.root().display());
            outln!("{}", stats.to_string().trim_end());
            Ok(())
        }
        CacheVerb::Gc { keep, max_size } => {
            let report = store
                .gc(GcPolicy {
                    keep_builds_per_recipe: keep,
                    max_bytes: max_size,
                    ..GcPolicy::default()
                })
                .map_err(store_error)?;
            outln!("{}", report.to_string().trim_end());
            Ok(())
        }
        CacheVerb::Verify => {
            let report = store.verify().map_err(store_error)?;
            outln!("{}", report.to_string().trim_end());
            let corrupt =
                report.removed.len() + report.incomplete_trees.len() + report.actions_removed.len();
            outln!("corrupt: {corrupt}");
            if report.is_clean() {
                Ok(())
            } else {
                Err(CliError::StoreRepaired {
                    path: store.root().to_path_buf(),
                })
            }
        }
        CacheVerb::Push => Err(CliError::NotImplemented { verb: "cache push" }),
        CacheVerb::Pull => Err(CliError::NotImplemented { verb: "cache pull" }),
    }
}

/// The store named by `--cache-dir`, or the project's.
fn open_store(settings: &Settings, renderer: &Renderer) -> Result<Store, CliError> {
    let dir = match &settings.cache_dir {
        Some(dir) => dir.clone(),
        None => {
            let loaded = crate::commands::load_recipe(settings, renderer)?;
            store_dir(settings, &loaded)
        }
    };
    Store::open(&dir).map_err(|source| CliError::Store { path: dir, source })
}
