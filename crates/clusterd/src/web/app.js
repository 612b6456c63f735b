// The status page: polls /api/status once a second and redraws. Text only (textContent), no framework.
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function ago(nowMs, atMs) {
  const seconds = Math.max(0, Math.round((nowMs - atMs) / 1000));
  if (seconds < 120) return seconds + " s ago";
  if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function fill(id, rows, draw) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    draw(row, item);
    body.appendChild(row);
  }
}

function render(status) {
  document.getElementById("error").textContent = status.error ? "cannot get the status: " + status.error : "";
  const summary = status.error
    ? "served by " + status.served_by
    : "leader: " + (status.leader || "none") + " · term " + status.term + " · quorum " +
      (status.quorum ? "ok" : "LOST") + " · commit " + (status.commit_index ?? "-") +
      " · reported by " + status.reporter + " · served by " + status.served_by;
  document.getElementById("summary").textContent = summary;
  const warnings = document.getElementById("warnings");
  warnings.replaceChildren();
  for (const warning of status.warnings || []) {
    const item = document.createElement("li");
    item.className = "warn";
    item.textContent = warning;
    warnings.appendChild(item);
  }
  fill("nodes", status.nodes || [], (row, node) => {
    row.dataset.node = node.name;
    cell(row, node.name + (node.leader ? " *" : ""));
    cell(row, node.address);
    cell(row, node.role);
    cell(row, node.lease);
    cell(row, node.protection, node.protection === "lease-only" ? "warn" : "");
    cell(row, node.leaving ? "leaving" : node.standby ? "standby" : "online");
    cell(row, node.last_contact_ms === null ? null : node.last_contact_ms + " ms ago");
  });
  fill("packages", status.packages || [], (row, pkg) => {
    row.dataset.package = pkg.name;
    row.dataset.phase = pkg.phase;
    row.dataset.owner = pkg.owner || "";
    cell(row, pkg.name + (pkg.frozen ? " (frozen)" : ""));
    cell(row, pkg.phase, "phase-" + pkg.phase);
    cell(row, pkg.owner);
    cell(row, pkg.epoch);
    cell(row, ago(status.now_ms, pkg.since_ms));
    cell(row, pkg.restarts);
    cell(row, pkg.last_failure);
  });
  const events = (status.events || []).slice().reverse();
  fill("events", events, (row, event) => {
    cell(row, event.seq);
    cell(row, new Date(event.at_ms).toISOString().replace("T", " ").replace("Z", ""));
    cell(row, event.package);
    cell(row, event.node);
    cell(row, event.epoch);
    cell(row, event.what);
    cell(row, event.reason);
  });
  document.body.dataset.updated = String(status.now_ms);
}

async function poll() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    document.getElementById("error").textContent = "cannot reach clusterd: " + err.message;
  }
  setTimeout(poll, 1000);
}

poll();
