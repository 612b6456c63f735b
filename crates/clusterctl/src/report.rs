//! `clusterctl report [--since DURATION] OUTPUT.tar.gz`: what a bug report needs, in one archive.
//!
//! ```text
//!   clusterd-report-<time>/README.txt            what is inside, and everything that could not be collected
//!   clusterd-report-<time>/cluster/status.json   (and status.txt) as `clusterctl status`
//!   clusterd-report-<time>/cluster/settings.json fence parameters that look like secrets redacted
//!   clusterd-report-<time>/cluster/alerts.json
//!   clusterd-report-<time>/cluster/events.json   (and events.txt) since --since
//!   clusterd-report-<time>/cluster/packages.json definitions and state; secret-looking parameters redacted
//!   clusterd-report-<time>/nodes/NODE/...        each node's clusterd.toml (redacted), clusterd.log,
//!                                                raft.json, system.txt, notes.txt
//! ```
//!
//! Left out: the key-value map (application data), private keys (only their paths appear), and
//! the value of every parameter whose name looks like a secret (`cluster_api::redact`). A part that
//! cannot be collected (a node down, no quorum) is named in README.txt; the archive is still written.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_api::redact::{is_secret_name, redact_assignment, REDACTED};
use cluster_api::{Client, ClientReply, ClientRequest};

use crate::exit;
use crate::output::{render_event, render_status, Output};

/// Files of the archive, in order: (path inside the archive, contents).
type Files = Vec<(String, String)>;

/// Replaces, anywhere in `value`, the string values of keys that look like secrets.
pub(crate) fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if is_secret_name(key) && !item.is_object() && !item.is_array() && !item.is_null() {
                    *item = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact_json(item);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|err| format!("cannot encode: {err}")) + "\n"
}

/// Collects everything and writes the archive.
pub(crate) async fn write(client: &mut Client, since: Option<Duration>, output: &Path, out: &Output) -> ExitCode {
    if output.exists() {
        return out.failure(
            exit::ERROR,
            &format!("{} already exists: refusing to overwrite it", output.display()),
            None,
        );
    }
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = since.map(|since| now_ms.saturating_sub(since.as_millis() as u64));
    let stamp = humantime::format_rfc3339_seconds(now).to_string().replace([':', '-'], "").replace('T', "-");
    let root = format!("clusterd-report-{}", stamp.trim_end_matches('Z'));
    let (files, problems) = collect(client, since_ms).await;

    let mut readme = format!(
        "clusterd report written by clusterctl {} at {}\n\nevents and logs: {}\n\n\
         cluster/  status, settings, alert hooks, events and package definitions (as the leader has them)\n\
         nodes/    each node's node file, log, Raft view and host facts\n\n\
         left out: the key-value map, private keys, and the value of every parameter whose name looks like a \
         secret (password, token, key, ...), shown as {REDACTED}\n",
        env!("CARGO_PKG_VERSION"),
        humantime::format_rfc3339_seconds(now),
        match since {
            Some(since) => format!("the last {}", humantime::format_duration(since)),
            None => "everything retained".to_owned(),
        },
    );
    if !problems.is_empty() {
        readme.push_str("\nnot collected:\n");
        for problem in &problems {
            readme.push_str(&format!("- {problem}\n"));
        }
    }
    let mut all = vec![("README.txt".to_owned(), readme)];
    all.extend(files);
    if let Err(err) = write_archive(output, &root, &all, now) {
        return out.failure(exit::ERROR, &format!("cannot write {}: {err}", output.display()), None);
    }
    if out.is_json() {
        println!(
            "{}",
            serde_json::json!({ "ok": true, "path": output, "files": all.len(), "not_collected": problems })
        );
    } else {
        println!("wrote {} ({} files)", output.display(), all.len());
        for problem in &problems {
            eprintln!("not collected: {problem}");
        }
    }
    ExitCode::SUCCESS
}

async fn collect(client: &mut Client, since_ms: Option<u64>) -> (Files, Vec<String>) {
    let mut files = Files::new();
    let mut problems = Vec::new();
    let mut nodes = Vec::new();
    match client.call(ClientRequest::Status).await {
        Ok(ClientReply::Status(report)) => {
            nodes = report.nodes.iter().map(|node| node.name.clone()).collect();
            let mut value = serde_json::to_value(&report).unwrap_or_default();
            redact_json(&mut value);
            files.push(("cluster/status.json".into(), pretty(&value)));
            files.push(("cluster/status.txt".into(), render_status(&report)));
        }
        other => problems.push(format!("status: {}", failure(other))),
    }
    match client.call(ClientRequest::SettingsGet).await {
        Ok(ClientReply::Settings { entries }) => {
            let settings: serde_json::Map<String, serde_json::Value> = entries
                .into_iter()
                .map(|(name, value)| {
                    let value = if name.starts_with("fence.") {
                        value.split(' ').map(redact_assignment).collect::<Vec<_>>().join(" ")
                    } else {
                        value
                    };
                    (name, serde_json::Value::String(value))
                })
                .collect();
            files.push(("cluster/settings.json".into(), pretty(&settings)));
        }
        other => problems.push(format!("settings: {}", failure(other))),
    }
    match client.call(ClientRequest::AlertList).await {
        Ok(ClientReply::Alerts { hooks, next }) => {
            let hooks: Vec<serde_json::Value> =
                hooks.iter().map(|(path, hook)| serde_json::json!({ "path": path, "hook": hook })).collect();
            files.push((
                "cluster/alerts.json".into(),
                pretty(&serde_json::json!({ "hooks": hooks, "next_event": next })),
            ));
        }
        other => problems.push(format!("alert hooks: {}", failure(other))),
    }
    match client.call(ClientRequest::Events { after: None }).await {
        Ok(ClientReply::Events { events }) => {
            let events: Vec<_> = events.into_iter().filter(|e| since_ms.is_none_or(|since| e.at_ms >= since)).collect();
            let text: String = events.iter().map(|event| render_event(event) + "\n").collect();
            files.push(("cluster/events.json".into(), pretty(&events)));
            files.push(("cluster/events.txt".into(), text));
        }
        other => problems.push(format!("events: {}", failure(other))),
    }
    match client.call(ClientRequest::PkgStatus { name: None }).await {
        Ok(ClientReply::Packages { packages } | ClientReply::PackageStatus { packages, .. }) => {
            let mut value = serde_json::to_value(&packages).unwrap_or_default();
            redact_json(&mut value);
            files.push(("cluster/packages.json".into(), pretty(&value)));
        }
        other => problems.push(format!("packages: {}", failure(other))),
    }
    if nodes.is_empty() {
        // Without a status, at least the node asked.
        nodes.push(String::new());
    }
    for name in nodes {
        let target = (!name.is_empty()).then(|| name.clone());
        match client.call(ClientRequest::Diagnostics { node: target, since_ms }).await {
            Ok(ClientReply::Diagnostics(diagnostics)) => {
                let folder = format!("nodes/{}", diagnostics.node);
                let mut notes = format!("clusterd {} on node {}\n", diagnostics.version, diagnostics.node);
                for note in &diagnostics.notes {
                    notes.push_str(note);
                    notes.push('\n');
                }
                files.push((format!("{folder}/notes.txt"), notes));
                for (file, text) in diagnostics.files {
                    // Only plain names: a node cannot place files elsewhere in the archive.
                    if !file.is_empty() && !file.contains('/') && file != ".." {
                        files.push((format!("{folder}/{file}"), text));
                    }
                }
            }
            other => {
                problems.push(format!("node {}: {}", if name.is_empty() { "asked" } else { &name }, failure(other)))
            }
        }
    }
    (files, problems)
}

fn failure(result: Result<ClientReply, cluster_api::ClientError>) -> String {
    match result {
        Ok(other) => format!("unexpected reply {other:?}"),
        Err(err) => err.to_string(),
    }
}

fn write_archive(output: &Path, root: &str, files: &Files, now: SystemTime) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(output)?;
    let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut archive = tar::Builder::new(gzip);
    let mtime = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        archive.append_data(&mut header, format!("{root}/{path}"), text.as_bytes())?;
    }
    archive.into_inner()?.finish()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_are_redacted_anywhere() {
        let mut value = serde_json::json!({
            "def": { "resources": [ { "params": { "password": "hunter2", "ip": "192.0.2.1" },
                                      "environment": { "DB_PASSWD": "x", "HOME": "/" } } ] },
            "token": null,
        });
        redact_json(&mut value);
        let text = value.to_string();
        assert!(!text.contains("hunter2") && !text.contains("\"x\""), "{text}");
        assert!(text.contains("192.0.2.1") && text.contains("\"HOME\":\"/\""), "{text}");
    }
}
