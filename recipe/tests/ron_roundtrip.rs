//! Any recipe printed as RON reads back equal: `kiln recipe show` output is a valid `kiln.ron`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_recipe::{
    Bootloader, CertificateSource, ConfigSettings, ContentSettings, Distribution,
    DistributionSettings, Feature, KeySource, OutputFormat, OutputSettings, Recipe, RootPassword,
    Scripts, SecureBootSignTool, Subimage, TreeSource, ValidationSettings, from_ron, to_ron,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9._/-]{0,12}"]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

fn path() -> impl Strategy<Value = PathBuf> {
    text().prop_map(PathBuf::from)
}

fn paths() -> impl Strategy<Value = Vec<PathBuf>> {
    prop::collection::vec(path(), 0..3)
}

fn trees() -> impl Strategy<Value = Vec<TreeSource>> {
    prop::collection::vec(
        (path(), prop::option::of(path()))
            .prop_map(|(source, target)| TreeSource { source, target }),
        0..3,
    )
}

fn distribution() -> impl Strategy<Value = Distribution> {
    prop::sample::select(Distribution::ALL.to_vec())
}

fn format() -> impl Strategy<Value = OutputFormat> {
    prop::sample::select(OutputFormat::ALL.to_vec())
}

fn bootloader() -> impl Strategy<Value = Bootloader> {
    prop::sample::select(Bootloader::ALL.to_vec())
}

fn feature() -> impl Strategy<Value = Feature> {
    prop::sample::select(vec![Feature::Auto, Feature::Enabled, Feature::Disabled])
}

fn environment() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..3)
}

fn config() -> impl Strategy<Value = ConfigSettings> {
    (texts(), texts(), environment(), texts()).prop_map(
        |(profiles, dependencies, environment, pass_environment)| ConfigSettings {
            profiles,
            dependencies,
            environment,
            pass_environment,
        },
    )
}

fn distribution_settings() -> impl Strategy<Value = DistributionSettings> {
    (
        distribution(),
        prop::option::of(text()),
        prop::option::of(text()),
        texts(),
        text(),
    )
        .prop_map(
            |(distribution, release, mirror, repositories, architecture)| DistributionSettings {
                distribution,
                release,
                mirror,
                repositories,
                architecture,
            },
        )
}

fn output() -> impl Strategy<Value = OutputSettings> {
    (
        prop::option::of(text()),
        prop::option::of(text()),
        format(),
        prop::option::of(text()),
        prop::option::of(path()),
        prop::option::of(path()),
    )
        .prop_map(
            |(image_id, image_version, format, output, output_directory, cache_directory)| {
                OutputSettings {
                    image_id,
                    image_version,
                    format,
                    output,
                    output_directory,
                    cache_directory,
                }
            },
        )
}

fn content() -> impl Strategy<Value = ContentSettings> {
    let lists = (
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
        texts(),
    );
    let scalars = (
        prop::option::of(text()),
        feature(),
        bootloader(),
        any::<bool>(),
        prop::option::of(
            (text(), any::<bool>()).prop_map(|(value, hashed)| RootPassword { value, hashed }),
        ),
        any::<bool>(),
        prop::option::of(any::<u64>()),
        any::<bool>(),
    );
    let firstboot = (
        feature(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
    );
    (lists, scalars, trees(), trees(), paths(), firstboot).prop_map(
        |(
            (
                packages,
                remove_packages,
                remove_files,
                kernel_command_line,
                kernel_modules_include,
                kernel_modules_exclude,
                kernel_modules,
                firmware_files,
                firmware_include,
                firmware_exclude,
            ),
            (
                hostname,
                bootable,
                bootloader,
                kernel_modules_include_host,
                root_password,
                autologin,
                source_date_epoch,
                with_docs,
            ),
            skeleton_trees,
            extra_trees,
            base_trees,
            (clean_package_metadata, locale, locale_messages, keymap, timezone, root_shell),
        )| ContentSettings {
            packages,
            remove_packages,
            remove_files,
            hostname,
            bootable,
            bootloader,
            kernel_command_line,
            kernel_modules_include,
            kernel_modules_exclude,
            kernel_modules_include_host,
            kernel_modules,
            firmware_files,
            firmware_include,
            firmware_exclude,
            root_password,
            autologin,
            skeleton_trees,
            extra_trees,
            base_trees,
            source_date_epoch,
            with_docs,
            clean_package_metadata,
            locale,
            locale_messages,
            keymap,
            timezone,
            root_shell,
        },
    )
}

fn key_source() -> impl Strategy<Value = KeySource> {
    prop_oneof![
        Just(KeySource::File),
        text().prop_map(KeySource::Engine),
        text().prop_map(KeySource::Provider),
    ]
}

fn certificate_source() -> impl Strategy<Value = CertificateSource> {
    prop_oneof![
        Just(CertificateSource::File),
        text().prop_map(CertificateSource::Provider),
    ]
}

fn validation() -> impl Strategy<Value = ValidationSettings> {
    (
        any::<bool>(),
        prop::option::of(path()),
        key_source(),
        prop::option::of(path()),
        certificate_source(),
        prop::sample::select(SecureBootSignTool::ALL.to_vec()),
    )
        .prop_map(
            |(
                secure_boot,
                secure_boot_key,
                secure_boot_key_source,
                secure_boot_certificate,
                secure_boot_certificate_source,
                secure_boot_sign_tool,
            )| {
                ValidationSettings {
                    secure_boot,
                    secure_boot_key,
                    secure_boot_key_source,
                    secure_boot_certificate,
                    secure_boot_certificate_source,
                    secure_boot_sign_tool,
                }
            },
        )
}

fn scripts() -> impl Strategy<Value = Scripts> {
    (paths(), paths(), paths(), any::<bool>()).prop_map(
        |(prepare, postinst, finalize, make_executable)| Scripts {
            prepare,
            postinst,
            finalize,
            make_executable,
        },
    )
}

fn image() -> impl Strategy<Value = Recipe> {
    (
        config(),
        distribution_settings(),
        output(),
        content(),
        validation(),
        scripts(),
    )
        .prop_map(
            |(config, distribution, output, content, validation, scripts)| Recipe {
                config,
                distribution,
                output,
                content,
                validation,
                scripts,
                subimages: Vec::new(),
            },
        )
}

fn recipe() -> impl Strategy<Value = Recipe> {
    (image(), prop::collection::vec((text(), image()), 0..3)).prop_map(|(mut recipe, subimages)| {
        recipe.subimages = subimages
            .into_iter()
            .map(|(name, recipe)| Subimage { name, recipe })
            .collect();
        recipe
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn recipes_read_back_equal(recipe in recipe()) {
        let text = to_ron(&recipe);
        let read = from_ron(&text, "kiln.ron");
        prop_assert!(read.is_ok(), "cannot read back:\n{text}\n{read:?}");
        prop_assert_eq!(read.ok(), Some(recipe));
    }

    #[test]
    fn printing_is_stable(recipe in recipe()) {
        let once = to_ron(&recipe);
        let read = from_ron(&once, "kiln.ron").expect("reads back");
        prop_assert_eq!(to_ron(&read), once);
    }
}
