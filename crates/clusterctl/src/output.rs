//! Text and JSON rendering of replies and errors, and the exit code that goes with each.

use std::process::ExitCode;

use cluster_api::{ApiError, ClientReply, NodeStatus, StatusReport};
use cluster_model::{Event, PackageState};
use serde_json::json;

/// Where and how results are printed.
pub(crate) struct Output {
    json: bool,
    /// `pkg status NAME`: one package in detail rather than a table.
    detail: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output { json, detail: false }
    }

    pub(crate) fn set_detail(&mut self, detail: bool) {
        self.detail = detail;
    }

    /// One event line (`events`), or one JSON object per line.
    pub(crate) fn event(&self, event: &Event) {
        if self.json {
            println!("{}", serde_json::to_string(event).expect("events serialize"));
        } else {
            println!("{}", render_event(event));
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    pub(crate) fn done(&self, message: &str) -> ExitCode {
        if self.json {
            println!("{}", json!({ "ok": true, "message": message }));
        } else if !message.is_empty() {
            println!("{message}");
        }
        ExitCode::SUCCESS
    }

    pub(crate) fn failure(&self, code: u8, message: &str, current: Option<&Option<String>>) -> ExitCode {
        if self.json {
            let mut value = json!({ "error": message, "exit_code": code });
            if let Some(current) = current {
                value["current"] = json!(current);
            }
            println!("{value}");
        } else {
            if let Some(Some(current)) = current {
                println!("{current}");
            }
            eprintln!("clusterctl: {message}");
        }
        ExitCode::from(code)
    }

    pub(crate) fn api_failure(&self, code: u8, err: &ApiError) -> ExitCode {
        let current = (err.kind == cluster_api::ErrorKind::CasMismatch).then_some(&err.current);
        self.failure(code, &err.message, current)
    }

    pub(crate) fn reply(&self, reply: &ClientReply) -> ExitCode {
        if self.json {
            let value = match reply {
                ClientReply::Done { message } => json!({ "ok": true, "message": message }),
                ClientReply::Value { key, value } => json!({ "key": key, "value": value }),
                ClientReply::List { entries } => {
                    json!(entries.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>())
                }
                ClientReply::Deleted { key, existed } => json!({ "key": key, "deleted": existed }),
                ClientReply::Settings { entries } => {
                    json!(entries
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect::<serde_json::Map<String, serde_json::Value>>())
                }
                // The large replies are written straight to text: going through a `Value` tree
                // doubled the time of `status --output json` at 1,000 packages.
                ClientReply::Status(report) => {
                    println!("{}", serde_json::to_string(report).expect("status serializes"));
                    return ExitCode::SUCCESS;
                }
                ClientReply::Packages { packages } if self.detail && packages.len() == 1 => {
                    serde_json::to_value(&packages[0]).expect("packages serialize")
                }
                ClientReply::Packages { packages } => {
                    println!("{}", serde_json::to_string(packages).expect("packages serialize"));
                    return ExitCode::SUCCESS;
                }
                ClientReply::PackageStatus { packages, waiting } => {
                    // Each package with its key (`db:1`) and, if it waits, why.
                    let with_key = |package: &PackageState| {
                        let mut value = serde_json::to_value(package).expect("packages serialize");
                        let key = package.key();
                        if let Some(why) = waiting.iter().find(|(waiting, _)| *waiting == key).map(|(_, why)| why) {
                            value["waiting"] = json!(why);
                        }
                        value["key"] = json!(key);
                        value
                    };
                    if self.detail && packages.len() == 1 {
                        with_key(&packages[0])
                    } else {
                        json!(packages.iter().map(with_key).collect::<Vec<_>>())
                    }
                }
                ClientReply::Plan { lines } => json!({ "plan": lines }),
                ClientReply::Events { events } => serde_json::to_value(events).expect("events serialize"),
                ClientReply::Alerts { hooks, next } => json!({
                    "hooks": hooks.iter().map(|(path, hook)| json!({
                        "path": path,
                        "events": hook.events,
                        "timeout_ms": hook.timeout_ms,
                        "recipient": hook.recipient,
                    })).collect::<Vec<_>>(),
                    "next_event": next,
                }),
                ClientReply::Diagnostics(diagnostics) => json!({
                    "node": diagnostics.node,
                    "version": diagnostics.version,
                    "files": diagnostics.files.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                    "notes": diagnostics.notes,
                }),
                ClientReply::Token { token, expires_ms } => json!({ "token": token, "expires_ms": expires_ms }),
                ClientReply::Joined { members, .. } => json!({ "members": members }),
            };
            println!("{value}");
            return ExitCode::SUCCESS;
        }
        match reply {
            ClientReply::Done { message } => {
                if !message.is_empty() {
                    println!("{message}");
                }
            }
            ClientReply::Value { value, .. } => println!("{value}"),
            ClientReply::List { entries } => {
                for (key, value) in entries {
                    println!("{key}\t{value}");
                }
            }
            ClientReply::Deleted { .. } => {}
            ClientReply::Settings { entries } => {
                for (name, value) in entries {
                    println!("{name} = {value}");
                }
            }
            ClientReply::Status(report) => print!("{}", render_status(report)),
            ClientReply::Packages { packages } if self.detail && packages.len() == 1 => {
                print!("{}", render_package(&packages[0]))
            }
            ClientReply::Packages { packages } => print!("{}", render_packages(packages)),
            ClientReply::PackageStatus { packages, waiting } if self.detail && packages.len() == 1 => {
                print!("{}", render_package(&packages[0]));
                for (_, why) in waiting {
                    println!("  {:<13}{why}", "waiting");
                }
            }
            ClientReply::PackageStatus { packages, waiting } => {
                print!("{}", render_packages(packages));
                for (key, why) in waiting {
                    println!("{key}: {why}");
                }
            }
            ClientReply::Plan { lines } => {
                for line in lines {
                    println!("{line}");
                }
            }
            ClientReply::Events { events } => {
                for event in events {
                    println!("{}", render_event(event));
                }
            }
            ClientReply::Alerts { hooks, .. } if hooks.is_empty() => println!("no alert hooks"),
            ClientReply::Alerts { hooks, .. } => {
                let rows = hooks
                    .iter()
                    .map(|(path, hook)| {
                        vec![
                            path.clone(),
                            hook.events.join(","),
                            format!("{}s", hook.timeout_ms as f64 / 1_000.0),
                            hook.recipient.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print!("{}", table(&["HOOK", "EVENTS", "TIMEOUT", "RECIPIENT"], rows));
            }
            // The token alone on stdout, so that `TOKEN=$(clusterctl cluster token)` works.
            ClientReply::Token { token, .. } => println!("{token}"),
            ClientReply::Joined { members, .. } => {
                let members: Vec<String> = members.iter().map(|(name, address)| format!("{name}@{address}")).collect();
                println!("certificate issued; members: {}", members.join(", "));
            }
            ClientReply::Diagnostics(diagnostics) => {
                println!("node {} (clusterd {})", diagnostics.node, diagnostics.version);
                for (name, text) in &diagnostics.files {
                    println!("  {name}: {} bytes", text.len());
                }
                for note in &diagnostics.notes {
                    println!("  {note}");
                }
            }
        }
        ExitCode::SUCCESS
    }
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The text form of `clusterctl status`.
pub(crate) fn render_status(report: &StatusReport) -> String {
    let mut text = String::new();
    let leader = report.leader.as_deref().unwrap_or("none");
    let quorum = if report.quorum { "ok" } else { "LOST" };
    text.push_str(&format!(
        "leader: {leader}   term: {}   quorum: {quorum}   cluster version: {}\n",
        report.term,
        if report.cluster_version.is_empty() { "-" } else { &report.cluster_version }
    ));
    text.push_str(&format!(
        "reported by {} ({}): commit {}, applied {}, last log {}, snapshot {}\n\n",
        report.reporter,
        report.reporter_state,
        or_dash(report.commit_index),
        or_dash(report.applied_index),
        or_dash(report.last_log_index),
        or_dash(report.snapshot_index),
    ));
    text.push_str(&render_nodes(report));
    if !report.packages.is_empty() {
        text.push('\n');
        text.push_str(&render_packages(&report.packages));
    }
    for warning in &report.warnings {
        text.push_str(&format!("\nWARNING: {warning}"));
    }
    if !report.warnings.is_empty() {
        text.push('\n');
    }
    text
}

fn render_nodes(report: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|node: &NodeStatus| {
            let name =
                if Some(&node.name) == report.leader.as_ref() { format!("{} *", node.name) } else { node.name.clone() };
            vec![
                name,
                node.address.clone(),
                if node.witness { "witness".to_owned() } else { format!("{:?}", node.role).to_lowercase() },
                or_dash(node.matched_index),
                node.last_contact_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms ago")),
                node.lease.clone().unwrap_or_else(|| "-".to_owned()),
                if node.protection.is_empty() { "-".to_owned() } else { node.protection.clone() },
                node_state(node).to_owned(),
                node.version.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(&["NODE", "ADDRESS", "ROLE", "MATCHED", "LAST CONTACT", "LEASE", "PROTECTION", "STATE", "RELEASE"], rows)
}

/// What the operator asked of a node, or its clean stop.
fn node_state(node: &NodeStatus) -> &'static str {
    match (node.leaving, node.lease.as_deref(), node.standby) {
        (true, Some("alive"), _) => "leaving",
        (true, _, _) => "stopped",
        (false, _, true) => "standby",
        (false, _, false) => "online",
    }
}

/// Left-aligned columns with a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().chain(std::iter::once(&header)).map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn ago(at_ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let ms = now.saturating_sub(at_ms);
    if ms < 10_000 {
        format!("{ms} ms ago")
    } else {
        format!("{} s ago", ms / 1000)
    }
}

/// `pkg list` and the packages part of `status`.
pub(crate) fn render_packages(packages: &[PackageState]) -> String {
    let rows = packages
        .iter()
        .map(|package| {
            let failure =
                package.last_failure.as_ref().map_or_else(|| "-".to_owned(), |f| format!("{} on {}", f.reason, f.node));
            vec![
                package.key(),
                phase_words(package),
                package.owner.clone().unwrap_or_else(|| "-".to_owned()),
                package.epoch.to_string(),
                ago(package.since_ms),
                package.restarts.to_string(),
                failure,
            ]
        })
        .collect();
    table(&["PACKAGE", "PHASE", "OWNER", "EPOCH", "SINCE", "RESTARTS", "LAST FAILURE"], rows)
}

/// The phase, with the role of an instance of a promotable package and a freeze.
fn phase_words(package: &PackageState) -> String {
    let mut words = package.phase.as_str().to_owned();
    if package.def.promotable.is_some() && package.owner.is_some() {
        words.push_str(&format!(" ({})", package.role.as_str()));
    }
    if package.frozen {
        words.push_str(" (frozen)");
    }
    words
}

/// `pkg status NAME`.
fn render_package(package: &PackageState) -> String {
    let mut text = format!("package {}\n", package.key());
    let line = |name: &str, value: String| format!("  {name:<13}{value}\n");
    text.push_str(&line("desired", format!("{:?}", package.desired).to_lowercase()));
    text.push_str(&line("phase", phase_words(package)));
    if let Some(promotable) = &package.def.promotable {
        let score = package.score.map_or_else(|| "none".to_owned(), |score| score.to_string());
        text.push_str(&line(
            "role",
            format!("{} (promotion score {score}; {} primaries wanted)", package.role.as_str(), promotable.primaries),
        ));
    }
    for dependency in &package.def.depends {
        text.push_str(&line("depends on", format!("{} ({})", dependency.package, dependency.location.as_str())));
    }
    if !package.def.needs.is_empty() {
        let needs: Vec<String> = package
            .def
            .needs
            .iter()
            .map(|(name, need)| format!("{name} {}", cluster_package::format_quantity(*need)))
            .collect();
        text.push_str(&line("needs", needs.join(", ")));
    }
    if package.retired {
        text.push_str(&line("retired", "beyond `instances`: it stops, then it is removed".to_owned()));
    }
    text.push_str(&line("owner", package.owner.clone().unwrap_or_else(|| "-".to_owned())));
    text.push_str(&line("epoch", package.epoch.to_string()));
    text.push_str(&line("since", ago(package.since_ms)));
    text.push_str(&line("restarts", package.restarts.to_string()));
    if let Some(target) = &package.target {
        text.push_str(&line("moving to", target.clone()));
    }
    if !package.banned.is_empty() {
        let banned: Vec<&str> = package.banned.iter().map(String::as_str).collect();
        text.push_str(&line(
            "excluded",
            format!("{} (failed beyond the restart budget; pkg cleanup)", banned.join(", ")),
        ));
    }
    if let Some(failure) = &package.last_failure {
        let resource = failure.resource.as_deref().map(|r| format!("resource {r}: ")).unwrap_or_default();
        text.push_str(&line(
            "last failure",
            format!("{resource}{} on {} ({})", failure.reason, failure.node, ago(failure.at_ms)),
        ));
    }
    if let Some(reason) = &package.blocked_reason {
        text.push_str(&line("BLOCKED", reason.clone()));
    }
    text.push_str("  resources\n");
    for resource in &package.def.resources {
        let state = package.resources.iter().find(|r| r.name == resource.name).map_or("-", |r| r.state.as_str());
        text.push_str(&format!("    {:<12}{:<12}{state}\n", resource.name, resource_type(&resource.kind)));
    }
    text
}

fn resource_type(kind: &cluster_package::ResourceKind) -> &'static str {
    match kind {
        cluster_package::ResourceKind::Ip(_) => "ip",
        cluster_package::ResourceKind::Filesystem(_) => "filesystem",
        cluster_package::ResourceKind::Process(_) => "process",
        cluster_package::ResourceKind::Ocf(_) => "ocf",
    }
}

/// One line of `events`.
pub(crate) fn render_event(event: &Event) -> String {
    let seconds = event.at_ms / 1000;
    let (hours, minutes, secs) = ((seconds / 3600) % 24, (seconds / 60) % 60, seconds % 60);
    let mut text = format!("{hours:02}:{minutes:02}:{secs:02}.{:03}Z", event.at_ms % 1000);
    if let Some(package) = &event.package {
        text.push_str(&format!(" package {package}"));
    }
    if let Some(node) = &event.node {
        text.push_str(&format!(" node {node}"));
    }
    if event.epoch > 0 {
        text.push_str(&format!(" epoch {}", event.epoch));
    }
    text.push_str(&format!(": {}", event.what));
    if let Some(ms) = event.phase_ms {
        text.push_str(&format!(" (after {ms} ms)"));
    }
    if !event.reason.is_empty() {
        text.push_str(&format!(" — {}", event.reason));
    }
    text
}
