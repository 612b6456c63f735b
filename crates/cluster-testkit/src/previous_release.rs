//! The previous release's binaries, for the upgrade tests: `CLUSTERD_V0_1_BIN` and
//! `CLUSTERCTL_V0_1_BIN` when set (`scripts/test.sh` builds them first), else built now by
//! `scripts/build-previous-release.sh` (its tag, falling back to its commit; once, a few minutes).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The previous release: its tag and the commit the tag points at.
pub const PREVIOUS_TAG: &str = "v0.1.0";
pub const PREVIOUS_COMMIT: &str = "99d889580de0eae7cac037c71c1c7b021c07c244";

/// Paths of the previous release's programs.
#[derive(Debug, Clone)]
pub struct PreviousRelease {
    pub clusterd: PathBuf,
    pub clusterctl: PathBuf,
}

/// Returns the previous release's binaries, building them if needed.
pub fn previous_release() -> PreviousRelease {
    if let (Ok(clusterd), Ok(clusterctl)) = (std::env::var("CLUSTERD_V0_1_BIN"), std::env::var("CLUSTERCTL_V0_1_BIN")) {
        return PreviousRelease { clusterd: clusterd.into(), clusterctl: clusterctl.into() };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-previous-release.sh");
    let output = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    assert!(output.status.success(), "{} failed ({})", script.display(), output.status);
    let folder = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    PreviousRelease { clusterd: folder.join("clusterd"), clusterctl: folder.join("clusterctl") }
}
