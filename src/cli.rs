//! The command line as the user types it: clap structures, parsed once and resolved into
//! [`crate::settings::Settings`] before any verb runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Builds bootable OS images from mkosi projects as a DAG of content-addressed, cached stages.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub verb: Option<Verb>,
}

/// Options shared by every verb, spelled as mkosi spells them.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
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
pub(crate) enum Verb {
    /// Build the image (the default verb)
    Build(BuildArgs),
    /// Show the recipe as kiln understood it
    #[command(subcommand)]
    Recipe(RecipeVerb),
    /// Show the build graph, or why stages re-ran
    #[command(subcommand)]
    Graph(GraphVerb),
    /// Resolve the packages against the mirror and write them to kiln.lock
    Lock,
    /// Show the sections of a PE/UKI file, like `ukify inspect`, and check its signature
    Inspect(InspectArgs),
    /// Write a Secure Boot key and certificate (mkosi.key, mkosi.crt) into the project
    Genkey(GenkeyArgs),
    /// Boot the built UKI in qemu under OVMF, its serial console on the terminal
    Qemu(QemuArgs),
    /// Look after the local store and the shared cache
    #[command(subcommand)]
    Cache(CacheVerb),
}

#[derive(Debug, Args, Default)]
pub(crate) struct BuildArgs {
    /// Run every stage of the last build again from its cached inputs and fail if any output
    /// differs (a reproducibility check, as `nix build --check`); nothing is recorded
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecipeVerb {
    /// Print the resolved recipe as RON
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GraphVerb {
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
pub(crate) enum GraphFormat {
    Text,
    Dot,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The PE file (a .efi UKI)
    pub file: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Check that the signature verifies with this certificate (PEM or DER); exit 1 if not
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

/// `kiln genkey`, spelled as `mkosi genkey`'s options are.
#[derive(Debug, Args)]
pub(crate) struct GenkeyArgs {
    /// How many days the certificate is valid
    #[arg(long = "genkey-valid-days", value_name = "DAYS", default_value_t = kiln_stages::sign::genkey::DEFAULT_VALID_DAYS)]
    pub valid_days: u32,
    /// The certificate's common name (default: `mkosi of <user>`)
    #[arg(long = "genkey-common-name", value_name = "CN")]
    pub common_name: Option<String>,
}

/// `kiln qemu`: mkosi's `qemu`/`vm` options, under mkosi's names and their old `--qemu-*` ones.
#[derive(Debug, Args)]
#[command(
    after_help = "With -f, the image is built first. Extra kernel arguments follow `--`: \
    `kiln qemu -- systemd.unit=rescue.target`. In the console, Ctrl-A X leaves qemu."
)]
pub(crate) struct QemuArgs {
    /// Guest memory: bytes, or a number with K, M or G (mkosi's RAM=)
    #[arg(
        long = "ram",
        visible_alias = "qemu-mem",
        value_name = "BYTES",
        default_value = "2G",
        value_parser = parse_ram
    )]
    pub ram: u64,

    /// Virtual CPUs; 0: as many as the host has (mkosi's CPUs=)
    #[arg(
        long = "cpus",
        visible_alias = "qemu-smp",
        value_name = "N",
        default_value_t = kiln_stages::vm::DEFAULT_CPUS
    )]
    pub cpus: u32,

    /// The accelerator; auto uses KVM only when a guest really runs under it, else TCG
    #[arg(long, value_enum, value_name = "ACCEL", conflicts_with = "kvm")]
    pub accel: Option<AccelArg>,

    /// mkosi's KVM=: yes (KVM), no (TCG) or auto
    #[arg(
        long = "kvm",
        visible_alias = "qemu-kvm",
        value_name = "FEATURE",
        value_parser = parse_feature
    )]
    pub kvm: Option<AccelArg>,

    /// More qemu arguments, separated by spaces (mkosi's QemuArgs=); may be repeated
    #[arg(long = "qemu-args", value_name = "ARGS", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,

    /// Kernel arguments appended to the UKI's, separated by spaces (as after `--`); may be repeated
    #[arg(
        long = "kernel-command-line-extra",
        value_name = "ARGS",
        allow_hyphen_values = true
    )]
    pub kernel_command_line_extra: Vec<String>,

    /// Kernel arguments appended to the UKI's command line
    #[arg(last = true, value_name = "KERNEL_ARGS")]
    pub kernel_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

fn parse_ram(text: &str) -> Result<u64, String> {
    kiln_stages::vm::command_line::parse_bytes(text)
}

/// mkosi's feature values: a boolean or `auto`.
fn parse_feature(text: &str) -> Result<AccelArg, String> {
    match text.to_ascii_lowercase().as_str() {
        "auto" => Ok(AccelArg::Auto),
        "yes" | "y" | "true" | "t" | "on" | "1" | "enabled" => Ok(AccelArg::Kvm),
        "no" | "n" | "false" | "f" | "off" | "0" | "disabled" => Ok(AccelArg::Tcg),
        _ => Err(format!("`{text}` is not yes, no or auto")),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheVerb {
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
        /// Also remove the downloaded package files kept builds used (package managers' states
        /// stay); a build whose package set changes downloads what it needs again
        #[arg(long)]
        drop_package_files: bool,
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
