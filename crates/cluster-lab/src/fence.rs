//! The lab fence agent, following the fence-agents convention: `name=value` lines on stdin (`action=`,
//! `plug=` or `port=`, `nodename=`, and `lab=` to pick the lab), exit 0 only when the result is verified.
//!
//! ```text
//!   action=off     power the node off (as `clusterlab kill`), verify no process is left   → 0
//!   action=on      power it on (as `clusterlab start`), verify its holder process runs     → 0
//!   action=reboot  off then on                                                              → 0
//!   action=status  0 when on, 2 when off, 1 on error
//!   action=list    one `NODE,` line per node;  action=monitor: 0 when the lab is up;  action=metadata: XML
//! ```

use std::collections::BTreeMap;

use crate::lab::{cgroup_pids, Lab};

/// fence-agents exit code: success / powered on.
pub const EXIT_SUCCESS: i32 = 0;
/// fence-agents exit code: error.
pub const EXIT_ERROR: i32 = 1;
/// fence-agents exit code for `status`: powered off.
pub const EXIT_OFF: i32 = 2;

/// Parses `name=value` lines (comments and blank lines ignored; later values win).
pub fn parse_arguments(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The agent's metadata (fence-agents XML).
pub fn metadata() -> String {
    r#"<?xml version="1.0" ?>
<resource-agent name="fence_clusterlab" shortdesc="Fence agent for clusterlab nodes">
<longdesc>Powers clusterlab lab nodes off and on (every process of the node killed, its link down).</longdesc>
<parameters>
  <parameter name="action" unique="0" required="1"><getopt mixed="-o, --action=[action]"/><content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc></parameter>
  <parameter name="plug" unique="0" required="1" obsoletes="port"><getopt mixed="-n, --plug=[id]"/><content type="string"/><shortdesc lang="en">Lab node name</shortdesc></parameter>
  <parameter name="lab" unique="0" required="0"><content type="string"/><shortdesc lang="en">Lab name (or --name)</shortdesc></parameter>
</parameters>
<actions>
  <action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
  <action name="list"/><action name="monitor"/><action name="metadata"/>
</actions>
</resource-agent>
"#
    .to_string()
}

fn verify_off(lab: &Lab, node: &str) -> bool {
    lab.node(node).map(|record| !record.powered).unwrap_or(false)
        && cgroup_pids(&lab.paths().cgroup().join(node)).is_empty()
}

/// Runs the agent; returns the exit code and what to print on stdout. `default_lab` is used when the
/// arguments carry no `lab=`.
pub fn run(arguments: &BTreeMap<String, String>, default_lab: Option<&str>) -> (i32, String) {
    let action = arguments.get("action").or_else(|| arguments.get("option")).map(String::as_str).unwrap_or("reboot");
    if action == "metadata" {
        return (EXIT_SUCCESS, metadata());
    }
    let Some(lab_name) = arguments.get("lab").map(String::as_str).or(default_lab) else {
        return (EXIT_ERROR, "no lab given (lab= or --name)\n".into());
    };
    let mut lab = match Lab::open(lab_name) {
        Ok(lab) => lab,
        Err(error) => return (EXIT_ERROR, format!("{error}\n")),
    };
    if action == "monitor" {
        return (EXIT_SUCCESS, String::new());
    }
    if action == "list" {
        let list: String = lab.node_names().iter().map(|node| format!("{node},\n")).collect();
        return (EXIT_SUCCESS, list);
    }
    let plug = arguments.get("plug").or_else(|| arguments.get("port")).or_else(|| arguments.get("nodename"));
    let Some(node) = plug.cloned() else {
        return (EXIT_ERROR, "no plug given\n".into());
    };
    if let Err(error) = lab.node(&node) {
        return (EXIT_ERROR, format!("{error}\n"));
    }
    let off = |lab: &mut Lab| -> Result<(), String> {
        if lab.node(&node).map(|record| record.powered).unwrap_or(false) {
            crate::lab::record_fault(lab.paths(), "fence-off", &node);
            lab.kill(&node).map_err(|error| error.to_string())?;
        }
        if verify_off(lab, &node) {
            Ok(())
        } else {
            Err(format!("node {node} is not verified off"))
        }
    };
    let on = |lab: &mut Lab| -> Result<(), String> {
        lab.start(&node).map_err(|error| error.to_string())?;
        if lab.node(&node).map(|record| record.powered).unwrap_or(false) {
            Ok(())
        } else {
            Err(format!("node {node} is not verified on"))
        }
    };
    let result = match action {
        "off" => off(&mut lab),
        "on" => on(&mut lab),
        "reboot" => off(&mut lab).and_then(|()| on(&mut lab)),
        "status" => {
            let powered = lab.node(&node).map(|record| record.powered).unwrap_or(false);
            return if powered { (EXIT_SUCCESS, "Status: ON\n".into()) } else { (EXIT_OFF, "Status: OFF\n".into()) };
        }
        other => Err(format!("unsupported action {other}")),
    };
    match result {
        Ok(()) => (EXIT_SUCCESS, "Success: Powered OFF/ON as requested\n".into()),
        Err(error) => (EXIT_ERROR, format!("Failed: {error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fence_agent_arguments() {
        let arguments = parse_arguments("# comment\naction=off\nplug = n2\n\nnodename=n2\n");
        assert_eq!(arguments["action"], "off");
        assert_eq!(arguments["plug"], "n2");
        assert_eq!(arguments.len(), 3);
    }

    #[test]
    fn metadata_needs_no_lab() {
        let (code, text) = run(&parse_arguments("action=metadata"), None);
        assert_eq!(code, EXIT_SUCCESS);
        assert!(text.contains("<action name=\"off\"/>"));
    }

    #[test]
    fn missing_lab_is_an_error() {
        let (code, _) = run(&parse_arguments("action=status\nplug=n1"), None);
        assert_eq!(code, EXIT_ERROR);
    }
}
