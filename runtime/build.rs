//! Build script: the source revision for `herald_build_info{revision}`.
//!
//! `HERALD_BUILD_REVISION` wins (a release build from a tree without `.git`,
//! e.g. the Containerfile's `--build-arg REVISION`); otherwise
//! `git rev-parse HEAD`; otherwise "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_BUILD_REVISION");
    let revision = match std::env::var("HERALD_BUILD_REVISION") {
        Ok(rev) if !rev.trim().is_empty() => rev.trim().to_owned(),
        _ => {
            // Build again when the commit changes: HEAD, the branch it names, packed refs.
            if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
                println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
                if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from) {
                    println!(
                        "cargo:rerun-if-changed={}",
                        common.join("packed-refs").display()
                    );
                    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                        println!("cargo:rerun-if-changed={}", common.join(branch).display());
                    }
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    // Only what a label value may safely hold.
    let revision: String = revision
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        .take(64)
        .collect();
    println!("cargo:rustc-env=HERALD_BUILD_REVISION={revision}");
}
