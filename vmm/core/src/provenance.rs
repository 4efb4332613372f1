// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which source this binary was built from (recorded by `vmm/core/build.rs`): every report,
//! campaign summary and measurement names it, so a figure can be traced to its code.

use serde::Serialize;

/// The build's version, git commit and whether the tree had uncommitted changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Build {
    pub version: &'static str,
    /// `git rev-parse --short=12 HEAD` at build time, or "unknown" (no git, not a checkout).
    pub git_commit: &'static str,
    /// Whether tracked files differed from that commit (None: unknown).
    pub git_dirty: Option<bool>,
}

/// This binary's build.
pub const BUILD: Build = Build {
    version: env!("CARGO_PKG_VERSION"),
    git_commit: env!("PINVMM_GIT_COMMIT"),
    git_dirty: match env!("PINVMM_GIT_DIRTY").as_bytes() {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    },
};

impl Build {
    /// `0.1.0 (abc123def456)`, `... (abc123def456, dirty)` or `... (unknown commit)`.
    pub fn describe(&self) -> String {
        let state = match self.git_dirty {
            Some(true) => ", dirty",
            Some(false) => "",
            None => ", tree state unknown",
        };
        if self.git_commit == "unknown" {
            format!("{} (unknown commit)", self.version)
        } else {
            format!("{} ({}{state})", self.version, self.git_commit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_names_its_commit() {
        // Built from this repository: a 12-digit hex commit (or "unknown" without git).
        let c = BUILD.git_commit;
        assert!(
            c == "unknown" || (c.len() == 12 && c.chars().all(|x| x.is_ascii_hexdigit())),
            "{c}"
        );
        assert!(BUILD.describe().starts_with(BUILD.version));
        let d = Build {
            version: "1",
            git_commit: "0123456789ab",
            git_dirty: Some(true),
        };
        assert_eq!(d.describe(), "1 (0123456789ab, dirty)");
    }
}
