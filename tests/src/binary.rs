//! Locates a workspace binary for a test, building it first so a test never runs a stale one.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The build's outcome: `Err` holds cargo's output, so every test asking after it says why.
static BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// Returns the path of binary `name` of package `package`, built with the test's profile.
/// Panics with cargo's output when the build fails: the test cannot run without it.
///
/// Binaries are built for the whole workspace, as `scripts/test.sh` builds them before the
/// tests run, so the build here is a no-op there. Built alone (`-p tbird --bin tbird`), a
/// package resolves its dependencies' features differently and cargo compiles every
/// dependency a second time: minutes per binary in CI. A test run (the dev profile) builds
/// every target as `cargo test --workspace` does; a benchmark builds only the binaries.
pub fn path(package: &str, name: &str) -> PathBuf {
    // The test runs from target/<profile>/deps/; the binary lands in target/<profile>/.
    let exe = std::env::current_exe().expect("locate the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    if let Err(output) = BUILT.get_or_init(|| build(profile_dir)) {
        panic!("cargo build of the workspace's binaries failed:\n{output}");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "package {package} built no binary {name} at {}",
        path.display()
    );
    path
}

/// Builds the workspace's binaries into `profile_dir`'s target directory.
fn build(profile_dir: &Path) -> Result<(), String> {
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Cargo gives a test the package's own variables (CARGO_PKG_NAME=tests, ...). Build
    // scripts that watch them (ring's `rerun-if-env-changed`) would see them changed and
    // rebuild, and every crate above them with it, so the build runs without them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*name)
            || ["CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    build.args(["build", "--quiet", "--workspace", "--target-dir"]);
    build.arg(target_dir);
    if profile == "debug" {
        build.arg("--all-targets");
    } else {
        build.args(["--bins", "--profile", profile]);
    }
    let output = build.output().map_err(|err| format!("run cargo: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
