//! Observability against real clusterd processes on loopback: the metrics listener (checked by
//! `promtool check metrics`), the status page's API, alert hooks set with clusterctl, and a
//! `clusterctl report` archive unpacked and checked (no secrets in it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tls::rustls::ClientConfig;

use cluster_testkit::TestCluster;

const SUBNET: u8 = 141;
/// A fence password that must not appear in a report.
const SECRET: &str = "s3cret-fence-pw";

fn clusterctl() -> &'static str {
    env!("CARGO_BIN_EXE_clusterctl")
}

fn clusterd() -> PathBuf {
    let path = Path::new(clusterctl()).with_file_name("clusterd");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn run(socket: &Path, args: &[&str]) -> Output {
    Command::new(clusterctl()).arg("--socket").arg(socket).args(args).output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "stdout: {}\nstderr: {}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP/1.1 GET; returns the status code, the headers (lowercase names) and the body.
fn http_get(address: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
    http_get_accepting(address, path, "*/*", None)
}

/// One HTTP/1.1 GET, over TLS with `tls`; the status code, the headers (lowercase names), the body.
fn http_get_accepting(
    address: &str,
    path: &str,
    accept: &str,
    tls: Option<Arc<ClientConfig>>,
) -> (u16, BTreeMap<String, String>, String) {
    let mut tcp = TcpStream::connect(address).unwrap_or_else(|err| panic!("connect {address}: {err}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match tls {
        None => {
            tcp.write_all(request.as_bytes()).unwrap();
            tcp.read_to_end(&mut response).unwrap();
        }
        Some(config) => {
            let name = cluster_tls::server_name_for(address).unwrap();
            let connection = cluster_tls::rustls::ClientConnection::new(config, name).unwrap();
            let mut stream = cluster_tls::rustls::StreamOwned::new(connection, tcp);
            stream.write_all(request.as_bytes()).unwrap();
            // hyper closes without a TLS close_notify: what was read until then is the answer.
            let _ = stream.read_to_end(&mut response);
        }
    }
    let response = text(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header block: {response:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// `promtool`, or why the test cannot use it (a failure when CI=true).
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("promtool")).find(|p| p.exists()))
        .unwrap_or_default();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing (scripts/install-deps.sh installs it) and CI=true forbids skipping the check"
        );
        eprintln!("skipping the promtool check: promtool is not installed (scripts/install-deps.sh)");
    }
    found
}

fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_page_alerts_and_report_on_a_real_cluster() {
    let mut cluster = TestCluster::new(clusterd(), SUBNET, 3);
    let mut metrics_addresses = Vec::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let address = format!("127.0.{SUBNET}.{}:9464", 11 + index);
        // n1: the status page and a log file; n2: plain metrics; n3: metrics and page over mutual TLS.
        let extra = match index {
            0 => format!(
                "metrics = \"{address}\"\nstatus_page = true\nlog_file = \"{}\"\n",
                node.log.with_extension("file.log").display()
            ),
            1 => format!("metrics = \"{address}\"\n"),
            _ => format!("metrics = \"{address}\"\nmetrics_tls = true\nstatus_page = true\n"),
        };
        let config = std::fs::read_to_string(&node.config).unwrap();
        std::fs::write(&node.config, format!("{extra}{config}")).unwrap();
        metrics_addresses.push(address);
    }
    cluster.form().await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    let socket = cluster.nodes[0].socket.clone();

    // The shipped webhook example, called by the leader for package events, posts to this listener.
    let (webhook_url, posts) = webhook_receiver();
    let webhook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../alerts/webhook").canonicalize().unwrap();
    let webhook = webhook.display().to_string();
    ok(run(&socket, &["cluster", "alert", "add", &webhook, "--events", "package", "--recipient", &webhook_url]));

    // A package with a process resource runs somewhere: package gauges and agent actions.
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("sleeper.toml");
    std::fs::write(
        &package,
        "name = \"sleeper\"\n[[resource]]\nname = \"sleep\"\ntype = \"process\"\ncommand = [\"/bin/sleep\", \"600\"]\n",
    )
    .unwrap();
    ok(run(&socket, &["pkg", "apply", package.to_str().unwrap()]));
    ok(run(&socket, &["kv", "set", "greeting", "kv-value-7c1d"]));
    ok(run(&socket, &["kv", "get", "greeting"]));
    ok(run(&socket, &["cluster", "fence", "set", "n3", "fence_dummy", "plug=n3", &format!("password={SECRET}")]));

    // Alert hooks: set, listed, refused when malformed.
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hook = hook.display().to_string();
    ok(run(&socket, &["cluster", "alert", "add", &hook, "--events", "failover,fence", "--timeout", "10s"]));
    let listed = ok(run(&socket, &["cluster", "alert", "list"]));
    assert!(listed.contains(&hook) && listed.contains("failover,fence") && listed.contains("10s"), "{listed}");
    let bad = run(&socket, &["cluster", "alert", "add", &hook, "--events", "failovr"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("unknown event kind `failovr`"), "{}", text(&bad.stderr));
    let relative = run(&socket, &["cluster", "alert", "add", "hook.sh", "--events", "fence"]);
    assert!(text(&relative.stderr).contains("expected an absolute path"), "{}", text(&relative.stderr));

    // Wait until the package runs, so its gauges show an owner.
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let listed = ok(run(&socket, &["--output", "json", "pkg", "list"]));
        let packages: serde_json::Value = serde_json::from_str(&listed).unwrap();
        if packages[0]["phase"] == "running" {
            break packages[0]["owner"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the package never ran: {listed}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The webhook received the package's events as JSON, with the kind in a header.
    let mut received = Vec::new();
    while let Ok(post) = posts.recv_timeout(Duration::from_secs(10)) {
        let ran = post.1["what"] == "starting -> running";
        received.push(post);
        if ran {
            break;
        }
    }
    let (headers, document) = received
        .iter()
        .find(|(_, document)| document["what"] == "starting -> running")
        .unwrap_or_else(|| panic!("no webhook post for the package's start: {received:?}\n{}", cluster.logs()));
    assert_eq!(headers["x-clusterd-alert-kind"], "package", "{headers:?}");
    assert_eq!(document["package"], "sleeper");
    assert_eq!(document["node"], owner.as_str());
    assert_eq!(document["kinds"], serde_json::json!(["package"]));
    assert!(document["sequence"].as_u64().is_some(), "{document}");
    ok(run(&socket, &["cluster", "alert", "remove", &webhook]));

    // /metrics on every node; the leader's has the lease view and the replication lag.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let leader_index = cluster.index_of(&leader);
    // Prometheus' Accept header gets OpenMetrics; other clients the classic text format.
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    // n3 serves over mutual TLS: the admin certificate of the cluster CA opens it.
    let admin_tls = cluster_tls::client_config(&cluster.admin_files()).unwrap();
    let tls_for = |index: usize| (index == 2).then(|| admin_tls.clone());
    let (status, headers, openmetrics) =
        http_get_accepting(&metrics_addresses[leader_index], "/metrics", prometheus, tls_for(leader_index));
    assert_eq!(status, 200, "{openmetrics}");
    assert!(headers["content-type"].starts_with("application/openmetrics-text"), "{headers:?}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE clusterd_client_requests counter\n"), "{openmetrics}");
    let (status, headers, metrics) =
        http_get_accepting(&metrics_addresses[leader_index], "/metrics", "*/*", tls_for(leader_index));
    assert_eq!(status, 200, "{metrics}");
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"), "{headers:?}");
    assert!(!metrics.contains("# EOF"), "{metrics}");
    for series in [
        "clusterd_raft_leader 1",
        "clusterd_raft_state{state=\"leader\"} 1",
        "clusterd_lease_valid 1",
        "clusterd_package_phase{package=\"sleeper\",phase=\"running\"} 1",
        &format!("clusterd_package_owner{{package=\"sleeper\",owner=\"{owner}\"}} 1"),
        "clusterd_node_lease{node=\"n2\",state=\"alive\"} 1",
        "clusterd_build_info{version=",
        "clusterd_raft_peer_replication_lag_entries{peer=",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    assert!(metric_value(&metrics, "clusterd_raft_term").unwrap() >= 1.0, "{metrics}");
    // The request counters of the node that served clusterctl (n1).
    let (_, _, n1_metrics) = http_get(&metrics_addresses[0], "/metrics");
    assert!(n1_metrics.contains("clusterd_client_requests_total{request=\"kv_get\",result=\"ok\"} 1"), "{n1_metrics}");
    assert!(
        n1_metrics.contains("clusterd_client_request_duration_seconds_count{request=\"kv_set\"} 1"),
        "{n1_metrics}"
    );
    // The owner ran the process agent's start.
    let owner_index = cluster.index_of(&owner);
    let (_, _, owner_metrics) =
        http_get_accepting(&metrics_addresses[owner_index], "/metrics", "*/*", tls_for(owner_index));
    assert!(
        owner_metrics.contains("clusterd_agent_actions_total{type=\"process\",action=\"start\",result=\"success\"} 1"),
        "{owner_metrics}"
    );

    if let Some(promtool) = promtool() {
        for (name, body) in [("leader", &metrics), ("owner", &owner_metrics)] {
            let mut child = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics on the {name}'s metrics: {}{}\n{body}",
                text(&output.stdout),
                text(&output.stderr)
            );
        }
    }

    // The status page (n1 only) and its API; off on the other nodes.
    let (status, headers, page) = http_get(&metrics_addresses[0], "/");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/app.js\""), "{page}");
    assert!(headers["content-security-policy"].contains("default-src 'self'"), "{headers:?}");
    let (status, _, api) = http_get(&metrics_addresses[0], "/api/status");
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["leader"], leader.as_str());
    assert_eq!(api["packages"][0]["name"], "sleeper");
    assert_eq!(api["packages"][0]["owner"], owner.as_str());
    assert!(api["events"].as_array().unwrap().iter().any(|e| e["what"] == "starting -> running"), "{api}");
    assert!(!api.to_string().contains("/bin/sleep"), "package definitions stay out of the page: {api}");
    let (status, headers, _) = http_get(&metrics_addresses[0], "/style.css");
    assert_eq!((status, headers["content-type"].as_str()), (200, "text/css; charset=utf-8"));
    assert_eq!(http_get(&metrics_addresses[0], "/app.js").0, 200);
    assert_eq!(http_get(&metrics_addresses[1], "/").0, 404, "the page is off unless status_page = true");
    assert_eq!(http_get(&metrics_addresses[0], "/nothing").0, 404);

    // With metrics_tls, the page and the metrics need a certificate of the cluster CA.
    let (status, _, api) = http_get_accepting(&metrics_addresses[2], "/api/status", "*/*", tls_for(2));
    assert_eq!(status, 200, "{api}");
    assert!(api.contains("\"sleeper\""), "{api}");
    let mut plain = TcpStream::connect(&metrics_addresses[2]).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = plain.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut refused = Vec::new();
    let _ = plain.read_to_end(&mut refused);
    assert!(!text(&refused).contains("clusterd_raft_term"), "plain HTTP to a TLS listener: {}", text(&refused));

    // The report: from every node, with its log, and no secret.
    let archive = dir.path().join("report.tar.gz");
    let written = ok(run(&socket, &["report", "--since", "1h", archive.to_str().unwrap()]));
    assert!(written.contains("wrote"), "{written}");
    let again = run(&socket, &["report", archive.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "an existing archive is not overwritten");
    let files = unpack(&archive);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    for wanted in [
        "README.txt",
        "cluster/status.json",
        "cluster/settings.json",
        "cluster/alerts.json",
        "cluster/events.json",
        "cluster/packages.json",
        "nodes/n1/clusterd.toml",
        "nodes/n1/clusterd.log",
        "nodes/n1/raft.json",
        "nodes/n2/raft.json",
        "nodes/n3/system.txt",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let status: serde_json::Value = serde_json::from_str(&files["cluster/status.json"]).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let packages: serde_json::Value = serde_json::from_str(&files["cluster/packages.json"]).unwrap();
    assert_eq!(packages[0]["def"]["name"], "sleeper");
    assert!(files["cluster/settings.json"].contains("password=<redacted>"), "{}", files["cluster/settings.json"]);
    assert!(files["cluster/alerts.json"].contains(&hook));
    assert!(files["nodes/n1/clusterd.log"].contains("clusterd serving"), "{}", files["nodes/n1/clusterd.log"]);
    assert!(files["nodes/n2/notes.txt"].contains("no `log_file`"), "{}", files["nodes/n2/notes.txt"]);
    assert!(files["nodes/n1/clusterd.toml"].contains("key = \"<redacted>\""), "{}", files["nodes/n1/clusterd.toml"]);
    let private_key = std::fs::read_to_string(cluster.pki.join("n1.key")).unwrap();
    let key_body = private_key.lines().nth(1).unwrap();
    for (name, contents) in &files {
        assert!(!contents.contains(SECRET), "{name} holds the fence password");
        assert!(!contents.contains("PRIVATE KEY") && !contents.contains(key_body), "{name} holds key material");
        assert!(!contents.contains("kv-value-7c1d"), "{name} holds the key-value map");
    }

    // Removing the hook.
    ok(run(&socket, &["cluster", "alert", "remove", &hook]));
    assert!(ok(run(&socket, &["cluster", "alert", "list"])).contains("no alert hooks"));

    // The package's process is stopped before the daemons are killed (else it outlives the test).
    ok(run(&socket, &["pkg", "stop", "sleeper"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = ok(run(&socket, &["pkg", "status", "sleeper", "--output", "json"]));
        if status.contains("\"phase\":\"stopped\"") || status.contains("\"phase\": \"stopped\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sleeper did not stop: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

type Post = (BTreeMap<String, String>, serde_json::Value);

/// A one-thread HTTP server on loopback that answers 200 to every POST and passes on its headers
/// and JSON body; returns its URL.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<Post>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let read = stream.read(&mut chunk).unwrap_or(0);
                if read == 0 {
                    break (String::new(), Vec::new());
                }
                buffer.extend_from_slice(&chunk[..read]);
                let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = text(&buffer[..end]);
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                    })
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    break (head, buffer[end + 4..end + 4 + length].to_vec());
                }
            };
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect();
            if let Ok(document) = serde_json::from_slice(&body) {
                if sender.send((headers, document)).is_err() {
                    return;
                }
            }
        }
    });
    (url, receiver)
}

/// The files of a `.tar.gz`, by path below its single top folder.
fn unpack(archive: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = BTreeMap::new();
    let mut roots = std::collections::BTreeSet::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let (root, rest) = path.split_once('/').expect("files below one folder");
        roots.insert(root.to_owned());
        let mut contents = String::new();
        entry.read_to_string(&mut contents).unwrap();
        files.insert(rest.to_owned(), contents);
    }
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert!(roots.iter().next().unwrap().starts_with("clusterd-report-"), "{roots:?}");
    files
}
