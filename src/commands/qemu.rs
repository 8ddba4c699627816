//! `kiln qemu`: boot the recipe's built UKI under OVMF (mkosi's `qemu`/`vm` verb).
//!
//! The UKI is the output of `kiln build` for `Format=uki`: `<OutputDirectory>/<Output>.efi`
//! (`mkosi.output/<ImageId>[_<ImageVersion>].efi`), else the unversioned link
//! `<ImageId>.efi`. As with mkosi, an image that was not built is an error unless `-f` is given,
//! which builds it first (any `-f` rebuilds, as `mkosi -f vm` does). The virtual machine itself
//! is [`kiln_stages::vm`]'s; its exit code is kiln's.
//!
//! mkosi passes what follows `--` to qemu and extra kernel arguments with
//! `--kernel-command-line-extra`; kiln takes kernel arguments after `--` (and with
//! `--kernel-command-line-extra`), and qemu arguments with `--qemu-args`.

use std::path::PathBuf;

use kiln_recipe::{Loaded, load_project};
use kiln_stages::host::RealHost;
use kiln_stages::host::reader::RealReaderHost;
use kiln_stages::vm::{AccelChoice, VmRequest};

use crate::cli::{AccelArg, QemuArgs};
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

pub(crate) fn run(
    settings: &Settings,
    renderer: &Renderer,
    args: &QemuArgs,
) -> Result<u8, CliError> {
    let loaded = load_project(&settings.project_dir, &settings.load, &RealReaderHost)?;
    let Some(suffix) = boot_suffix(&loaded) else {
        return Err(CliError::NotUki {
            format: loaded.recipe.output.format.as_str(),
        });
    };
    if settings.force >= 1 {
        crate::commands::build::run(settings, renderer)?;
    } else {
        for warning in &loaded.warnings {
            renderer.eprint(warning);
        }
    }
    let uki = built_uki(&loaded, suffix).ok_or_else(|| CliError::NotBuilt {
        path: uki_candidates(&loaded, suffix).remove(0),
    })?;
    let request = request(&loaded, uki, args);
    let code = kiln_stages::vm::boot(&RealHost::new(), &request, &mut |note| {
        eprintln!("kiln: {note}")
    })?;
    Ok(code.clamp(0, 255) as u8)
}

/// What to boot, from the recipe and the command line.
fn request(loaded: &Loaded, uki: PathBuf, args: &QemuArgs) -> VmRequest {
    let accel = match args.accel.or(args.kvm) {
        None | Some(AccelArg::Auto) => AccelChoice::Auto,
        Some(AccelArg::Kvm) => AccelChoice::Kvm,
        Some(AccelArg::Tcg) => AccelChoice::Tcg,
    };
    let words = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .flat_map(|value| value.split_whitespace())
            .map(str::to_string)
            .collect()
    };
    let mut kernel_args = words(&args.kernel_command_line_extra);
    kernel_args.extend(args.kernel_args.iter().cloned());
    VmRequest {
        uki,
        architecture: loaded.recipe.distribution.architecture.clone(),
        ram_bytes: args.ram,
        cpus: args.cpus,
        accel,
        kernel_args,
        qemu_args: words(&args.qemu_args),
    }
}

/// The suffix of what the recipe's format makes to boot, when it makes one (`.efi`).
fn boot_suffix(loaded: &Loaded) -> Option<&'static str> {
    kiln_stages::formats::for_format(loaded.recipe.output.format)?.boot_suffix()
}

/// Where the build writes the UKI: the versioned name first, then the unversioned link.
fn uki_candidates(loaded: &Loaded, suffix: &str) -> Vec<PathBuf> {
    let recipe = &loaded.recipe;
    let output_dir = recipe.output_dir(&loaded.dir);
    let mut names = vec![recipe.output_name()];
    if recipe.image_name() != names[0] {
        names.push(recipe.image_name());
    }
    names
        .into_iter()
        .map(|name| output_dir.join(format!("{name}{suffix}")))
        .collect()
}

/// The built UKI, if there is one.
fn built_uki(loaded: &Loaded, suffix: &str) -> Option<PathBuf> {
    uki_candidates(loaded, suffix)
        .into_iter()
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use kiln_recipe::LoadOptions;

    use super::*;
    use crate::cli::{Cli, Verb};

    fn qemu_args(line: &[&str]) -> QemuArgs {
        let cli = Cli::try_parse_from(["kiln", "qemu"].iter().chain(line)).unwrap();
        match cli.verb {
            Some(Verb::Qemu(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    fn project(conf: &str) -> (tempfile::TempDir, Loaded) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mkosi.conf"), conf).unwrap();
        let loaded = load_project(dir.path(), &LoadOptions::default(), &RealReaderHost).unwrap();
        (dir, loaded)
    }

    const UKI: &str = "[Output]\nFormat=uki\nImageId=rescue\nImageVersion=2\n";

    #[test]
    fn mkosi_names_and_defaults() {
        let (_dir, loaded) = project(UKI);
        let defaults = request(&loaded, "x.efi".into(), &qemu_args(&[]));
        assert_eq!(defaults.ram_bytes, 2 << 30);
        assert_eq!(defaults.cpus, 1);
        assert_eq!(defaults.accel, AccelChoice::Auto);
        assert_eq!(
            defaults.architecture,
            loaded.recipe.distribution.architecture
        );

        let old_names = qemu_args(&["--qemu-mem", "1G", "--qemu-smp", "2", "--qemu-kvm", "no"]);
        let asked = request(&loaded, "x.efi".into(), &old_names);
        assert_eq!(
            (asked.ram_bytes, asked.cpus, asked.accel),
            (1 << 30, 2, AccelChoice::Tcg)
        );
        let new_names = qemu_args(&["--ram", "512M", "--cpus", "0", "--kvm", "yes"]);
        let asked = request(&loaded, "x.efi".into(), &new_names);
        assert_eq!(
            (asked.ram_bytes, asked.cpus, asked.accel),
            (512 << 20, 0, AccelChoice::Kvm)
        );
        for (accel, choice) in [
            ("auto", AccelChoice::Auto),
            ("kvm", AccelChoice::Kvm),
            ("tcg", AccelChoice::Tcg),
        ] {
            let asked = request(&loaded, "x.efi".into(), &qemu_args(&["--accel", accel]));
            assert_eq!(asked.accel, choice);
        }
        assert!(Cli::try_parse_from(["kiln", "qemu", "--accel", "tcg", "--kvm", "yes"]).is_err());
        assert!(Cli::try_parse_from(["kiln", "qemu", "--ram", "lots"]).is_err());
    }

    #[test]
    fn kernel_and_qemu_arguments() {
        let (_dir, loaded) = project(UKI);
        let args = qemu_args(&[
            "--kernel-command-line-extra",
            "a=1 b",
            "--qemu-args",
            "-device isa-debug-exit",
            "--",
            "systemd.unit=rescue.target",
            "c=x y",
        ]);
        let asked = request(&loaded, "x.efi".into(), &args);
        assert_eq!(
            asked.kernel_args,
            ["a=1", "b", "systemd.unit=rescue.target", "c=x y"]
        );
        assert_eq!(asked.qemu_args, ["-device", "isa-debug-exit"]);
    }

    #[test]
    fn the_uki_is_where_the_build_writes_it() {
        let (dir, loaded) = project(UKI);
        assert_eq!(boot_suffix(&loaded), Some(".efi"));
        let output = dir.path().canonicalize().unwrap().join("mkosi.output");
        assert_eq!(
            uki_candidates(&loaded, ".efi"),
            [output.join("rescue_2.efi"), output.join("rescue.efi")]
        );
        assert_eq!(built_uki(&loaded, ".efi"), None);
        std::fs::create_dir_all(&output).unwrap();
        std::fs::write(output.join("rescue.efi"), "").unwrap();
        assert_eq!(built_uki(&loaded, ".efi"), Some(output.join("rescue.efi")));
        std::fs::write(output.join("rescue_2.efi"), "").unwrap();
        assert_eq!(
            built_uki(&loaded, ".efi"),
            Some(output.join("rescue_2.efi"))
        );

        let (_, directory) = project("[Output]\nFormat=directory\n");
        assert_eq!(boot_suffix(&directory), None, "a directory does not boot");
        let (dir, loaded) = project("[Output]\nFormat=uki\nOutputDirectory=out\n");
        let output = dir.path().canonicalize().unwrap().join("out");
        assert_eq!(uki_candidates(&loaded, ".efi"), [output.join("image.efi")]);
    }
}
