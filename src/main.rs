//! The `kiln` binary: parses the command line, resolves it into settings and hands them to one
//! verb. Everything that builds lives in the `kiln-recipe`, `kiln-engine`, `kiln-stages` and
//! `kiln-cache` crates.

mod cli;
mod commands;
mod progress;
mod project;
mod remote;
mod report;
mod settings;
mod stdout;

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
        Ok(code) => code,
        Err(error) => {
            renderer.eprint(&error);
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs the verb; its exit code is 0 unless it says otherwise (`qemu` exits with qemu's code).
fn run(cli: Cli, renderer: &Renderer) -> Result<ExitCode, CliError> {
    let verb = cli.verb.unwrap_or(Verb::Build(cli::BuildArgs::default()));
    // `inspect` reads a file, not a project: it needs no project directory.
    if let Verb::Inspect(args) = &verb {
        return commands::inspect::run(args).map(|()| ExitCode::SUCCESS);
    }
    let settings = Settings::resolve(&cli.global)?;
    if let Verb::Qemu(args) = &verb {
        return commands::qemu::run(&settings, renderer, args).map(ExitCode::from);
    }
    match verb {
        Verb::Build(args) if args.check => commands::build::check(&settings, renderer),
        Verb::Build(_) => commands::build::run(&settings, renderer),
        Verb::Recipe(cli::RecipeVerb::Show) => commands::recipe_show::run(&settings, renderer),
        Verb::Graph(cli::GraphVerb::Show { format }) => {
            commands::graph_show::run(&settings, renderer, format)
        }
        Verb::Graph(cli::GraphVerb::Explain { stage, json }) => {
            commands::graph_explain::run(&settings, renderer, stage.as_deref(), json)
        }
        Verb::Lock => commands::lock::run(&settings, renderer),
        Verb::Inspect(_) | Verb::Qemu(_) => unreachable!("handled above"),
        Verb::Genkey(args) => commands::genkey::run(&settings, &args),
        Verb::Cache(verb) => commands::cache::run(&settings, renderer, verb),
    }
    .map(|()| ExitCode::SUCCESS)
}
