//! The command line as the user types it: clap structures, parsed once and resolved into
//! [`crate::settings::Settings`] before any verb runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Builds bootable OS images from mkosi projects as a DAG of content-addressed, cached stages.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub verb: Option<Verb>,
}

/// Options shared by every verb, spelled as mkosi spells them.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Change to DIR before doing anything (the project directory)
    #[arg(
        short = 'C',
        long = "directory",
        value_name = "DIR",
        global = true,
        default_value = "."
    )]
    pub directory: PathBuf,

    /// Force: rewrite the final output; twice re-runs every stage
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count, global = true)]
    pub force: u8,

    /// Set the image version (IMAGE_VERSION), overriding ImageVersion= and mkosi.version
    #[arg(long = "image-version", value_name = "VERSION", global = true)]
    pub image_version: Option<String>,

    /// Log in as root automatically on the console (Autologin=yes)
    #[arg(long, global = true)]
    pub autologin: bool,

    /// Use DIR as the local store instead of mkosi.cache/ or $XDG_CACHE_HOME/kiln
    #[arg(long = "cache-dir", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Turn every configuration warning into an error
    #[arg(long, global = true)]
    pub strict: bool,

    /// Select a profile (Profiles=); may be repeated
    #[arg(long = "profile", value_name = "NAME", global = true)]
    pub profiles: Vec<String>,

    /// Fail when the packages resolve to anything but what kiln.lock holds
    #[arg(long, global = true)]
    pub locked: bool,

    /// Build from the last package resolution, without asking the mirror
    #[arg(long, global = true)]
    pub offline: bool,

    /// Show the output of the tools each stage runs
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

    /// Use the shared cache at URL (http://, https:// or file://), over KILN_CACHE_REMOTE and
    /// the config file
    #[arg(long = "cache-remote", value_name = "URL", global = true)]
    pub cache_remote: Option<String>,

    /// Use no shared cache, whatever the environment and the config file say
    #[arg(
        long = "no-cache-remote",
        global = true,
        conflicts_with = "cache_remote"
    )]
    pub no_cache_remote: bool,

    /// Upload what a build made to the shared cache, signed with the signing key
    #[arg(long = "cache-push", global = true)]
    pub cache_push: bool,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Build the image (the default verb)
    Build,
    /// Show the recipe as kiln understood it
    #[command(subcommand)]
    Recipe(RecipeVerb),
    /// Show the build graph, or why stages re-ran
    #[command(subcommand)]
    Graph(GraphVerb),
    /// Resolve the packages against the mirror and write them to kiln.lock
    Lock,
    /// Show the sections of a PE/UKI file, like `ukify inspect`
    Inspect(InspectArgs),
    /// Boot the built image in qemu
    Qemu,
    /// Look after the local store and the shared cache
    #[command(subcommand)]
    Cache(CacheVerb),
}

#[derive(Debug, Subcommand)]
pub enum RecipeVerb {
    /// Print the resolved recipe as RON
    Show,
}

#[derive(Debug, Subcommand)]
pub enum GraphVerb {
    /// Print the stage DAG with each stage's state for the current inputs
    Show {
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Say why each stage of the last build ran
    Explain {
        /// Only this stage
        stage: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The PE file (a .efi UKI)
    pub file: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheVerb {
    /// Show what the store holds, and the shared cache's configuration
    Stats,
    /// Remove what recent builds do not use
    Gc {
        /// Keep what the last N builds of each recipe use
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Then drop the oldest builds until the store is under this many bytes
        #[arg(long, value_name = "BYTES")]
        max_size: Option<u64>,
    },
    /// Rehash every object; remove corrupt ones
    Verify,
    /// Upload the recipe's last build to the shared cache, signed
    Push,
    /// Download every stage of the recipe the shared cache has
    Pull,
    /// Create a key pair that signs what this machine pushes
    Keygen {
        /// The key's name, as signatures and trusted keys name it (e.g. `ci-1`)
        name: String,
        /// Where to write NAME.secret and NAME.public (default: ~/.config/kiln/keys)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}
