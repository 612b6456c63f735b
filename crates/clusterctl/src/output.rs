//! Text and JSON rendering of replies and errors, and the exit code that goes with each.

use std::process::ExitCode;

use cluster_api::{ApiError, ClientReply, NodeStatus, StatusReport};
use serde_json::json;

/// Where and how results are printed.
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output { json }
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

    pub(crate) fn failure(
        &self,
        code: u8,
        message: &str,
        current: Option<&Option<String>>,
    ) -> ExitCode {
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
                    json!(entries
                        .iter()
                        .map(|(k, v)| json!({ "key": k, "value": v }))
                        .collect::<Vec<_>>())
                }
                ClientReply::Deleted { key, existed } => json!({ "key": key, "deleted": existed }),
                ClientReply::Settings { entries } => {
                    json!(entries
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect::<serde_json::Map<String, serde_json::Value>>())
                }
                ClientReply::Status(report) => {
                    serde_json::to_value(report).expect("status serializes")
                }
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
        "leader: {leader}   term: {}   quorum: {quorum}\n",
        report.term
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
    let rows: Vec<[String; 5]> = report
        .nodes
        .iter()
        .map(|node: &NodeStatus| {
            let name = if Some(&node.name) == report.leader.as_ref() {
                format!("{} *", node.name)
            } else {
                node.name.clone()
            };
            [
                name,
                node.address.clone(),
                format!("{:?}", node.role).to_lowercase(),
                or_dash(node.matched_index),
                node.last_contact_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms ago")),
            ]
        })
        .collect();
    let header = ["NODE", "ADDRESS", "ROLE", "MATCHED", "LAST CONTACT"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|row| row[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}
