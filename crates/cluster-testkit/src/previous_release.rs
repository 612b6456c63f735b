//! The previous release's binaries, built from its commit, for the upgrade tests.
//!
//! The release is found by its tag, falling back to its commit hash (a clone may not carry tags);
//! it is checked out as a git worktree in `TARGET/v0.1.0/src` and built into `TARGET/v0.1.0/target`
//! (`TARGET` is the workspace's target folder), once: later runs reuse the binaries. Concurrent
//! test processes wait for each other on a lock file. `CLUSTERD_V0_1_BIN` and `CLUSTERCTL_V0_1_BIN`
//! name prebuilt binaries instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The previous release: its tag and the commit the tag points at.
pub const PREVIOUS_TAG: &str = "v0.1.0";
pub const PREVIOUS_COMMIT: &str = "99d889580de0eae7cac037c71c1c7b021c07c244";

/// Paths of the previous release's programs and source.
#[derive(Debug, Clone)]
pub struct PreviousRelease {
    pub clusterd: PathBuf,
    pub clusterctl: PathBuf,
    /// Its source tree (for the fixture generator).
    pub source: PathBuf,
}

/// The target folder of the running test binary (`TARGET/debug/deps/TEST` → `TARGET`).
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).expect("TARGET/PROFILE/deps/TEST").to_path_buf()
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The commit of the previous release in the repository at `repo`: the tag's, else the hash.
pub fn previous_commit(repo: &Path) -> String {
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(repo).args(args).output();
    if let Ok(output) = git(&["rev-parse", "--verify", "--quiet", &format!("{PREVIOUS_TAG}^{{commit}}")]) {
        let commit = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() && !commit.is_empty() {
            assert_eq!(commit, PREVIOUS_COMMIT, "tag {PREVIOUS_TAG} moved");
            return commit;
        }
    }
    let found =
        git(&["cat-file", "-e", &format!("{PREVIOUS_COMMIT}^{{commit}}")]).is_ok_and(|out| out.status.success());
    assert!(
        found,
        "neither tag {PREVIOUS_TAG} nor commit {PREVIOUS_COMMIT} is in the repository at {}: fetch the history \
         (`git fetch --unshallow` or `git fetch origin {PREVIOUS_COMMIT}`)",
        repo.display()
    );
    PREVIOUS_COMMIT.to_owned()
}

/// Builds (once) and returns the previous release's binaries.
pub fn previous_release() -> PreviousRelease {
    let target = target_dir();
    let base = target.join("v0.1.0");
    let source = base.join("src");
    if let (Ok(clusterd), Ok(clusterctl)) = (std::env::var("CLUSTERD_V0_1_BIN"), std::env::var("CLUSTERCTL_V0_1_BIN")) {
        return PreviousRelease { clusterd: clusterd.into(), clusterctl: clusterctl.into(), source };
    }
    std::fs::create_dir_all(&base).expect("create the folder of the previous release");
    // One builder at a time (nextest runs tests as parallel processes).
    let lock = std::fs::File::create(base.join("build.lock")).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("lock the build");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let commit = previous_commit(&repo);
    let checked_out = Command::new("git")
        .arg("-C")
        .arg(&source)
        .args(["rev-parse", "HEAD"])
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == commit);
    if !checked_out {
        let _ = std::fs::remove_dir_all(&source);
        run(Command::new("git").arg("-C").arg(&repo).args(["worktree", "prune"]), "git worktree prune");
        run(
            Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["worktree", "add", "--detach", "--force"])
                .arg(&source)
                .arg(&commit),
            "git worktree add of the previous release",
        );
    }
    let binaries = base.join("target").join("debug");
    let clusterd = binaries.join("clusterd");
    let clusterctl = binaries.join("clusterctl");
    if !clusterd.exists() || !clusterctl.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("building clusterd {PREVIOUS_TAG} ({commit}) into {} (a few minutes, once)", base.display());
        run(
            Command::new(cargo)
                .current_dir(&source)
                .args(["build", "--locked", "-p", "clusterd", "-p", "clusterctl", "--target-dir"])
                .arg(base.join("target"))
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS"),
            "cargo build of the previous release",
        );
    }
    let version = run(Command::new(&clusterd).arg("--version"), "clusterd --version of the previous release");
    assert_eq!(version, "clusterd 0.1.0", "{}", clusterd.display());
    PreviousRelease { clusterd, clusterctl, source }
}
