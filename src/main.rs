//! The `kiln` binary: parses the command line, resolves it into settings and hands them to one
//! verb. Everything that builds lives in the `kiln-engine`, `kiln-stages` and `kiln-cache` crates.

mod cli;
mod commands;
mod progress;
mod project;
mod remote;
mod report;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Verb};
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: overlay mounts of stages then vanish with the process.
    kiln_stages::namespace::enter_private_mount_namespace();
    let renderer = Renderer::for_stderr();
    match run(cli, &renderer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            renderer.eprint(&error);
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(cli: Cli, renderer: &Renderer) -> Result<(), CliError> {
    let verb = cli.verb.unwrap_or(Verb::Build);
    // `inspect` reads a file, not a project: it needs no project directory.
    if let Verb::Inspect(args) = &verb {
        return commands::inspect::run(args);
    }
    let settings = Settings::resolve(&cli.global)?;
    match verb {
        Verb::Build => commands::build::run(&settings, renderer),
        Verb::Recipe(cli::RecipeVerb::Show) => commands::recipe_show::run(&settings, renderer),
        Verb::Graph(cli::GraphVerb::Show { format }) => {
            commands::graph_show::run(&settings, renderer, format)
        }
        Verb::Graph(cli::GraphVerb::Explain { stage, json }) => {
            commands::graph_explain::run(&settings, renderer, stage.as_deref(), json)
        }
        Verb::Lock => commands::lock::run(&settings, renderer),
        Verb::Inspect(_) => unreachable!("handled above"),
        Verb::Qemu => commands::qemu::run(&settings),
        Verb::Cache(verb) => commands::cache::run(&settings, renderer, verb),
    }
}
