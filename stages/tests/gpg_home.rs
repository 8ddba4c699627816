//! pacman's keyring in a store deep below a project: gpg's agent puts its socket in the keyring's
//! folder, and a Unix socket's path holds at most 107 bytes. kiln hands gpg a short path to the
//! folder instead.
//!
//! Needs root (pacman-key), `pacman-key`, `gpg` and Debian's `archlinux-keyring`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use kiln_stages::host::RealHost;
use kiln_stages::packages::gpg_home::GpgHome;
use kiln_test_support::Need;

fn pacman_key(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("pacman-key")
        .arg("--gpgdir")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_pacman_keyring_initialises_in_a_store_deep_below_a_project() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("pacman-key"),
        Need::Tool("gpg"),
        Need::Tool("gpgconf"),
        Need::File("/usr/share/keyrings/archlinux.gpg")
    );
    let dir = tempfile::tempdir().unwrap();
    let deep = dir
        .path()
        .join("a-project-folder-with-a-long-name".repeat(2))
        .join("mkosi.cache/v1/packages/pacman/0123456789abcdef0123456789abcdef/gnupg");
    assert!(deep.join("S.gpg-agent").as_os_str().len() > 107);

    // The keyring's folder does not exist yet on a store's first use: the short path makes it.
    let host = RealHost::new();
    let home = GpgHome::for_dir(&deep, &host).unwrap();
    assert_eq!(deep.metadata().unwrap().permissions().mode() & 0o777, 0o700);
    assert!(
        home.path().as_os_str().len() < 40,
        "{}",
        home.path().display()
    );
    for step in [&["--init"][..], &["--populate", "archlinux"][..]] {
        let output = pacman_key(home.path(), step);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "pacman-key {step:?}:\n{text}");
        assert!(
            !text.contains("error running"),
            "pacman-key {step:?}:\n{text}"
        );
    }
    // The keyring is in the store's folder, and the agent is gone with the short path.
    assert!(deep.join("pubring.gpg").is_file() || deep.join("pubring.kbx").is_file());
    let link = home.path().to_path_buf();
    drop(home);
    assert!(!link.exists());
}
