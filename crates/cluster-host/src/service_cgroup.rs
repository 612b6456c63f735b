//! Where the daemon and its supervised units sit in the cgroup v2 tree, with and without systemd's delegation.
//!
//! Under systemd with `Delegate=yes` (the shipped unit), the service's cgroup belongs to clusterd. systemd's
//! delegation rule is that no process stays in an inner cgroup, so the daemon moves itself into a `daemon` leaf
//! at start and every supervised unit gets a leaf of its own, named `UNIT@NODE`:
//!
//! ```text
//!   /system.slice/clusterd.service        trusted.delegate=1, no process of its own
//!   ├── daemon                            clusterd (moved there by enter_daemon_cgroup)
//!   ├── web.server@n1                     resource `server` of package `web`, started by node n1
//!   └── clusterd-units/web.server         a unit started by clusterd 0.1.0, still found and stopped
//! ```
//!
//! A restarted daemon is started by systemd in the service's cgroup again, moves into `daemon` again and
//! finds its units where they are. Without delegation (started by hand, in the lab, in tests) nothing moves
//! and the units go below the daemon's own cgroup, in `<own>/clusterd-units/UNIT@NODE`.
//!
//! The node name in every unit's name keeps two daemons that share a parent cgroup (or, without cgroup v2,
//! that find units by environment) from ever seeing each other's units.

use std::path::{Path, PathBuf};

/// The leaf the daemon moves itself into.
pub(crate) const DAEMON_LEAF: &str = "daemon";
/// The folder of units without delegation (and of every unit of clusterd 0.1.0).
pub(crate) const UNITS_FOLDER: &str = "clusterd-units";

/// Where units go, decided from the daemon's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitCgroups {
    /// Parent of the units' cgroups (created by the caller).
    pub(crate) parent: PathBuf,
    /// Parent of the units started by clusterd 0.1.0 (`<unit>` without a node), still looked at.
    pub(crate) legacy_parent: PathBuf,
}

/// The daemon's place in a delegated service, or `None` when its cgroup is not delegated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelegatedService {
    /// The service's cgroup (`…/clusterd.service`).
    pub(crate) service: PathBuf,
    /// Whether the daemon still has to move into `service/daemon`.
    pub(crate) must_move: bool,
}

/// Decides, from the cgroup2 mount, the daemon's own cgroup path (`/system.slice/clusterd.service`) and a
/// test of delegation (systemd's `trusted.delegate` attribute), whether this daemon runs in a delegated
/// service and whether it still has to move into the `daemon` leaf. Pure apart from `is_delegated`.
pub(crate) fn delegated_service(
    mount: &Path,
    own: &str,
    is_delegated: impl Fn(&Path) -> bool,
) -> Option<DelegatedService> {
    let own_path = mount.join(own.trim_start_matches('/'));
    if own_path.file_name().is_some_and(|leaf| leaf == DAEMON_LEAF) {
        let service = own_path.parent()?.to_path_buf();
        return is_delegated(&service).then_some(DelegatedService { service, must_move: false });
    }
    is_delegated(&own_path).then_some(DelegatedService { service: own_path, must_move: true })
}

/// Where units go for a daemon in `own` (after [`enter_daemon_cgroup`] ran).
pub(crate) fn unit_cgroups(mount: &Path, own: &str, is_delegated: impl Fn(&Path) -> bool) -> UnitCgroups {
    match delegated_service(mount, own, is_delegated) {
        Some(DelegatedService { service, .. }) => {
            UnitCgroups { legacy_parent: service.join(UNITS_FOLDER), parent: service }
        }
        None => {
            let parent = mount.join(own.trim_start_matches('/')).join(UNITS_FOLDER);
            UnitCgroups { legacy_parent: parent.clone(), parent }
        }
    }
}

/// The name of a unit's cgroup, pid file and `CLUSTERD_UNIT` value: `UNIT@NODE` (just `UNIT` without a node),
/// with every character other than letters, digits, `-`, `_`, `.` and `@` replaced by `_`.
pub(crate) fn unit_cgroup_name(unit: &str, node: Option<&str>) -> String {
    let qualified = match node {
        Some(node) => format!("{unit}@{node}"),
        None => unit.to_string(),
    };
    qualified
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') { c } else { '_' })
        .collect()
}

/// Whether systemd delegated this cgroup (`Delegate=yes` sets the `trusted.delegate` attribute to `1`).
pub(crate) fn systemd_delegated(cgroup: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(cgroup.as_os_str())) else {
        return false;
    };
    let mut value = [0u8; 8];
    // SAFETY: both strings are nul-terminated and outlive the call; `value` is writable for its length.
    let length =
        unsafe { libc::getxattr(path.as_ptr(), c"trusted.delegate".as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    length == 1 && value[0] == b'1'
}

/// The cgroup2 mount and this process's cgroup path in it, when the host has cgroup v2.
pub(crate) fn own_cgroup_v2() -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = crate::linux_process::cgroup2_mount(&mountinfo)?;
    let own = crate::linux_process::own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
    Some((mount, own))
}

/// A failure to move the daemon into its leaf.
#[derive(Debug, thiserror::Error)]
#[error("failed to move clusterd into cgroup {path}: {source}")]
pub struct CgroupMoveError {
    path: PathBuf,
    source: std::io::Error,
}

/// Moves this process into the `daemon` leaf of its service's cgroup when systemd delegated that cgroup
/// (`Delegate=yes`), so that units can be given cgroups beside it. Returns the leaf it moved into (`None`:
/// no cgroup v2, no delegation, or already there). Call it once at start, before units are started.
pub fn enter_daemon_cgroup() -> Result<Option<PathBuf>, CgroupMoveError> {
    let Some((mount, own)) = own_cgroup_v2() else {
        return Ok(None);
    };
    let Some(service) = delegated_service(&mount, &own, systemd_delegated) else {
        return Ok(None);
    };
    if !service.must_move {
        return Ok(None);
    }
    let leaf = service.service.join(DAEMON_LEAF);
    let failed = |source| CgroupMoveError { path: leaf.clone(), source };
    std::fs::create_dir_all(&leaf).map_err(failed)?;
    // Writing "0" moves the writing process, all its threads included.
    std::fs::write(leaf.join("cgroup.procs"), "0").map_err(failed)?;
    Ok(Some(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNT: &str = "/sys/fs/cgroup";

    fn delegated_at(service: &'static str) -> impl Fn(&Path) -> bool {
        move |path: &Path| path == Path::new(service)
    }

    #[test]
    fn a_delegated_service_moves_the_daemon_into_its_leaf_and_puts_units_beside_it() {
        let service = "/sys/fs/cgroup/system.slice/clusterd.service";
        let mount = Path::new(MOUNT);
        assert_eq!(
            delegated_service(mount, "/system.slice/clusterd.service", delegated_at(service)),
            Some(DelegatedService { service: PathBuf::from(service), must_move: true })
        );
        // After the move (or a restart that finds it there already) the daemon stays.
        assert_eq!(
            delegated_service(mount, "/system.slice/clusterd.service/daemon", delegated_at(service)),
            Some(DelegatedService { service: PathBuf::from(service), must_move: false })
        );
        let units = unit_cgroups(mount, "/system.slice/clusterd.service/daemon", delegated_at(service));
        assert_eq!(units.parent, PathBuf::from(service));
        assert_eq!(units.legacy_parent, PathBuf::from(service).join("clusterd-units"));
    }

    #[test]
    fn without_delegation_nothing_moves_and_units_go_below_the_daemon() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let nothing = |_: &Path| false;
        assert_eq!(delegated_service(mount, "/user.slice/session-1.scope", nothing), None);
        // A leaf called `daemon` that is not in a delegated service is not ours to leave.
        assert_eq!(delegated_service(mount, "/lab/n1/daemon", nothing), None);
        let units = unit_cgroups(mount, "/clusterlab/l1/n1", nothing);
        assert_eq!(units.parent, PathBuf::from("/sys/fs/cgroup/unified/clusterlab/l1/n1/clusterd-units"));
        assert_eq!(units.legacy_parent, units.parent);
    }

    #[test]
    fn unit_names_carry_the_node_so_two_daemons_never_share_one() {
        assert_eq!(unit_cgroup_name("web.server", Some("n1")), "web.server@n1");
        assert_ne!(unit_cgroup_name("web.server", Some("n1")), unit_cgroup_name("web.server", Some("n2")));
        assert_eq!(unit_cgroup_name("web/server x", None), "web_server_x");
    }

    #[test]
    fn an_ordinary_directory_is_not_delegated() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!systemd_delegated(dir.path()));
        assert!(!systemd_delegated(Path::new("/nonexistent/cgroup")));
    }
}
