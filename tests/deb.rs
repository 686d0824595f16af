//! The Debian package: `cargo deb` builds it from the release profile, and
//! `dpkg-deb` shows the binary, the unit and the configuration as a conffile.
//!
//! The release build makes this the slowest test. It shares the target
//! directory with `cargo build --release`, so a warm release build makes it
//! fast. Without cargo-deb it is skipped with a printed reason; `.ci/run`
//! installs cargo-deb, so CI always runs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

#[test]
fn deb_package_contents() {
    let version = cargo().args(["deb", "--version"]).output();
    if !version.is_ok_and(|output| output.status.success()) {
        println!("SKIPPED deb_package_contents: cargo-deb is not installed; run `cargo install cargo-deb --locked`");
        return;
    }

    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let output_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let build = cargo()
        .current_dir(manifest_dir)
        .args(["deb", "--locked", "--package", "flupd", "--output"])
        .arg(output_dir.path())
        .output()
        .unwrap();
    println!("cargo deb took {:.0}s", started.elapsed().as_secs_f64());
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "cargo deb failed:\n{stderr}");

    let debs: Vec<PathBuf> = std::fs::read_dir(output_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}", output_dir.path().display());
    let deb = &debs[0];

    let listing = Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap();
    assert!(listing.status.success(), "dpkg-deb -c failed: {}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (path, mode) in [
        ("./usr/bin/flupd", "-rwxr-xr-x"),
        ("./lib/systemd/system/flupd.service", "-rw-r--r--"),
        ("./etc/flupd/flupd.toml", "-rw-r--r--"),
        ("./usr/share/doc/flupd/operations.md", "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|line| line.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} missing in the package:\n{listing}"));
        assert!(line.starts_with(mode), "{path} should have mode {mode}: {line}");
    }

    let control = tempfile::tempdir().unwrap();
    let extracted = Command::new("dpkg-deb").arg("-e").arg(deb).arg(control.path()).status().unwrap();
    assert!(extracted.success());
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap_or_default();
    assert!(conffiles.lines().any(|line| line == "/etc/flupd/flupd.toml"), "conffiles: {conffiles:?}");
    let fields = std::fs::read_to_string(control.path().join("control")).unwrap();
    assert!(fields.contains("Package: flupd"), "{fields}");
    assert!(fields.contains("ca-certificates"), "Depends should name ca-certificates: {fields}");
    assert!(control.path().join("postinst").exists(), "postinst missing");
}
