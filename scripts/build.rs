//! Build script: the git commit `flowgate --version` names.
//!
//! `FLOWGATE_COMMIT` wins when set (a container build has no `.git`; pass it
//! as a build argument), then `git rev-parse`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FLOWGATE_COMMIT");
    let commit = std::env::var("FLOWGATE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // A commit moves a branch under refs/ (or packed-refs), a checkout HEAD.
        for path in ["HEAD", "refs", "packed-refs"] {
            let path = std::path::Path::new(&dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rustc-env=FLOWGATE_COMMIT={commit}");
}

/// What `git args` prints, trimmed, when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
