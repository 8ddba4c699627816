//! The project a verb works on: its recipe, its store and its stage pipeline.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_recipe::Loaded;
use kiln_recipe::paths::absolute;
use kiln_stages::host::RealHost;
use kiln_stages::packages::PackagesError;
use kiln_stages::pipeline::{Pipeline, PipelineOptions, pipeline_with};

use crate::report::{CliError, Renderer, SettingSource};
use crate::settings::Settings;

pub(crate) struct Project {
    pub loaded: Loaded,
    /// Where the local store is (it may not exist yet).
    pub store_dir: PathBuf,
    /// The recipe's name in the build index: its image name and directory.
    pub recipe_key: String,
    /// How the pipeline is planned (`--locked`).
    pub options: PipelineOptions,
}

impl Project {
    /// Read the recipe (printing its warnings); the store is not touched.
    pub(crate) fn load(settings: &Settings, renderer: &Renderer) -> Result<Project, CliError> {
        let loaded = crate::commands::load_recipe(settings, renderer)?;
        let store_dir = store_dir(settings, &loaded);
        let recipe_key = format!("{}@{}", loaded.recipe.image_name(), loaded.dir.display());
        Ok(Project {
            loaded,
            store_dir,
            recipe_key,
            options: PipelineOptions {
                locked: settings.locked,
            },
        })
    }

    /// Open the store for building, creating it if needed.
    pub(crate) fn open_store(&self) -> Result<Store, CliError> {
        Store::open(&self.store_dir).map_err(|source| CliError::Store {
            path: self.store_dir.clone(),
            source,
        })
    }

    /// Open the store for reading only; `None` when there is none yet.
    pub(crate) fn existing_store(&self) -> Result<Option<Store>, CliError> {
        Store::open_existing(&self.store_dir).map_err(|source| CliError::Store {
            path: self.store_dir.clone(),
            source,
        })
    }

    /// The recipe's stages. A setting kiln cannot build yet is reported at its line.
    pub(crate) fn pipeline(&self) -> Result<Pipeline, CliError> {
        pipeline_with(
            &self.loaded.recipe,
            &self.loaded.dir,
            Arc::new(RealHost::default()),
            self.options,
        )
        .map_err(|error| {
            match error
                .setting()
                .and_then(|setting| SettingSource::find(&self.loaded, setting))
            {
                Some(source) => CliError::Setting(Box::new(source.report(error))),
                None => CliError::from(error),
            }
        })
    }
}

/// The local store: `--cache-dir`, else `CacheDirectory=` (mkosi.cache/ when it exists), else
/// `$XDG_CACHE_HOME/kiln` (`~/.cache/kiln`); always absolute and without `..`.
pub(crate) fn store_dir(settings: &Settings, loaded: &Loaded) -> PathBuf {
    if let Some(dir) = &settings.cache_dir {
        return dir.clone();
    }
    if let Some(dir) = &loaded.recipe.output.cache_directory {
        return absolute(&loaded.dir, dir);
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return absolute(&settings.cwd, &PathBuf::from(cache).join("kiln"));
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    absolute(&settings.cwd, &PathBuf::from(home).join(".cache/kiln"))
}

impl Project {
    /// `error` shown at the line of the setting that caused it, when one did: an unknown
    /// package at its `Packages=` entry, a missing tree at its `*Trees=` entry.
    pub(crate) fn locate(&self, error: CliError) -> CliError {
        use kiln_engine::inputs::InputError;
        use kiln_engine::plan::PlanError;
        match error {
            CliError::Plan(PlanError::Resolve {
                stage,
                source: kiln_engine::StageError::Failed(inner),
            }) => {
                let unknown = (inner.as_ref() as &(dyn std::error::Error + 'static))
                    .downcast_ref::<PackagesError>()
                    .and_then(|error| match error {
                        PackagesError::UnknownPackage { names, .. } => names.first().cloned(),
                        _ => None,
                    });
                match unknown
                    .and_then(|name| SettingSource::find_item(&self.loaded, "Packages", &name))
                {
                    Some(source) => CliError::Setting(Box::new(source.report_boxed(inner))),
                    None => CliError::Plan(PlanError::Resolve {
                        stage,
                        source: kiln_engine::StageError::Failed(inner),
                    }),
                }
            }
            CliError::Plan(PlanError::Input(InputError::Missing {
                ref stage,
                ref path,
                ..
            })) => {
                let setting = match stage.as_str() {
                    "base-trees" => "BaseTrees",
                    "skeleton-trees" => "SkeletonTrees",
                    "extra-trees" => "ExtraTrees",
                    _ => "",
                };
                let path = path.display().to_string();
                match SettingSource::find_item(&self.loaded, setting, &path) {
                    Some(source) => CliError::Setting(Box::new(source.report(error))),
                    None => error,
                }
            }
            other => other,
        }
    }
}
