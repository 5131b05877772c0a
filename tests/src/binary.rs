//! Locates a workspace binary for a test, building it first so a test never runs a stale one.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Command,
    sync::{Mutex, PoisonError},
};

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Returns the path of binary `name` of package `package`, built with the test's profile.
/// Panics with cargo's output when the build fails: the test cannot run without it.
pub fn path(package: &str, name: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    // The test runs from target/<profile>/deps/; the binary lands in target/<profile>/.
    let exe = std::env::current_exe().expect("locate the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        package,
        "--bin",
        name,
        "--target-dir",
    ]);
    build.arg(target_dir);
    if profile != "debug" {
        build.args([
            "--profile",
            if profile == "release" {
                "release"
            } else {
                profile
            },
        ]);
    }
    let output = build.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build -p {package} --bin {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = profile_dir.join(name);
    built.insert(name.to_owned(), path.clone());
    path
}
