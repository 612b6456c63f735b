//! How long a resource's stop may take at worst, from its parameters and the agent's own waits:
//! `pkg apply` says when a package cannot stop within the stop budget, which a node without
//! watchdog or fencing relies on when its lease lapses (docs/safety.md (d)).

use std::time::Duration;

use cluster_package::{PackageDef, ResourceDef, ResourceKind};

use crate::filesystem::{HOLDER_GRACE, UNMOUNT_RETRY_PAUSE};
use crate::process::POLL;

/// The longest stop of one resource, and what makes it that long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowStop {
    pub resource: String,
    pub up_to: Duration,
    pub why: String,
}

/// The longest the stop of `resource` may take: what its agent waits for at worst, never more than
/// its `stop_timeout` (after which the stop fails).
pub fn longest_stop(resource: &ResourceDef) -> SlowStop {
    let (natural, why) = match &resource.kind {
        ResourceKind::Ip(_) => (Duration::ZERO, "an address is removed at once".to_owned()),
        ResourceKind::Process(process) => (
            process.kill_after + POLL,
            format!("{} then {:?} before SIGKILL (kill_after)", process.stop_signal, process.kill_after),
        ),
        ResourceKind::Filesystem(filesystem) => {
            let attempts = filesystem.unmount_retries.max(1);
            let holders = if filesystem.kill_holders { HOLDER_GRACE * attempts } else { Duration::ZERO };
            let pauses = UNMOUNT_RETRY_PAUSE * (attempts - 1);
            (
                holders + pauses,
                format!(
                    "{attempts} unmount attempts{}",
                    if filesystem.kill_holders {
                        format!(", each giving holders {HOLDER_GRACE:?}")
                    } else {
                        String::new()
                    }
                ),
            )
        }
        ResourceKind::Ocf(ocf) => (resource.stop_timeout, format!("{} stop, bounded by stop_timeout", ocf.agent)),
    };
    let up_to = natural.min(resource.stop_timeout);
    let why =
        if natural > resource.stop_timeout { format!("stop_timeout {:?} ({why})", resource.stop_timeout) } else { why };
    SlowStop { resource: resource.name.clone(), up_to, why }
}

/// The longest the stop of the whole package may take (its resources stop one after the other),
/// with every resource that may take any time.
pub fn longest_package_stop(package: &PackageDef) -> (Duration, Vec<SlowStop>) {
    let slow: Vec<SlowStop> =
        package.resources.iter().map(longest_stop).filter(|stop| stop.up_to > Duration::ZERO).collect();
    (slow.iter().map(|stop| stop.up_to).sum(), slow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_stop_follows_each_agents_own_waits() {
        let text = "name = \"web\"\n\
            [[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n\
            [[resource]]\nname = \"data\"\ntype = \"filesystem\"\ndevice = \"/dev/loop0\"\nmountpoint = \"/srv\"\nfstype = \"ext4\"\n\
            [[resource]]\nname = \"logs\"\ntype = \"filesystem\"\ndevice = \"/dev/loop1\"\nmountpoint = \"/logs\"\nfstype = \"ext4\"\nstop_timeout = \"1s\"\n\
            [[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\n\
            [[resource]]\nname = \"cache\"\ntype = \"ocf\"\nagent = \"heartbeat:Dummy\"\nstop_timeout = \"3s\"\n";
        let package = cluster_package::parse_package("web.toml", text).expect("valid package");
        let (total, slow) = longest_package_stop(&package);
        let names: Vec<&str> = slow.iter().map(|stop| stop.resource.as_str()).collect();
        assert_eq!(names, ["data", "logs", "server", "cache"], "an address stops at once");
        assert_eq!(slow[0].up_to, Duration::from_millis(6_600), "3 attempts, 2 s for holders each: {}", slow[0].why);
        assert_eq!(slow[1].up_to, Duration::from_secs(1), "capped by stop_timeout");
        assert!(slow[1].why.starts_with("stop_timeout 1s"), "{}", slow[1].why);
        assert_eq!(slow[2].up_to, Duration::from_millis(10_100), "default kill_after 10 s: {}", slow[2].why);
        assert_eq!(slow[3].up_to, Duration::from_secs(3), "an OCF agent: its stop_timeout");
        assert_eq!(total, slow.iter().map(|stop| stop.up_to).sum::<Duration>());
    }
}
