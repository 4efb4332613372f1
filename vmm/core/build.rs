// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Records which source pinvmm was built from: the git commit and whether the tree differed
//! from it (`vmm::provenance`, in every report and campaign summary).
//!
//! Works in git worktrees, where `.git` is a file: the HEAD, index and branch ref watched for a
//! rerun come from `git rev-parse --git-dir / --git-common-dir`, not from `../../.git/...`.
//! A tracked file edited since the last build must flip "dirty": every top-level tracked entry
//! of the tree is watched too (Cargo scans a directory recursively; `target/` is not tracked,
//! so the build's own output never triggers a rerun).

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Watches `p` for a rerun; a missing file would make Cargo rerun the script on every build.
fn watch(p: &Path) {
    if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("vmm/core lives two levels below the workspace root")
        .to_owned();
    let commit = git(&root, &["rev-parse", "--short=12", "HEAD"]);
    // Tracked files only: a stray untracked file does not change what was built.
    let dirty =
        git(&root, &["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    println!(
        "cargo:rustc-env=PINVMM_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=PINVMM_GIT_DIRTY={}",
        match dirty {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        }
    );
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { root.join(p) }
    };
    if let Some(d) = git(&root, &["rev-parse", "--git-dir"]).map(abs) {
        watch(&d.join("HEAD"));
        watch(&d.join("index"));
    }
    if let Some(d) = git(&root, &["rev-parse", "--git-common-dir"]).map(abs) {
        watch(&d.join("packed-refs"));
        if let Some(r) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
            watch(&d.join(r));
        }
    }
    for entry in git(&root, &["ls-tree", "--name-only", "HEAD"])
        .unwrap_or_default()
        .lines()
    {
        watch(&root.join(entry));
    }
    println!("cargo:rerun-if-changed=build.rs");
}
