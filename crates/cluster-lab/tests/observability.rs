//! Root lab test of observability (issue 15) on a real failover: an alert hook receives the
//! failover with the right variables, and the status page, open in headless Chromium (Debian's
//! `chromium` driven through `chromium-driver`) inside a surviving node, shows the package and
//! updates by itself when its owner's node is killed.
//!
//! Every lab `clusterd` serves metrics and the status page on 127.0.0.1:9464 of its own node
//! (`cluster_lab::lab::LAB_METRICS`); ChromeDriver and Chromium run inside n3 (`Lab::node_command`),
//! and this test talks to ChromeDriver from a thread in n3's network namespace.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec, LAB_METRICS};
use common::{in_netns, lab_name, require_root};
use serde_json::{json, Value};

/// The node the browser runs in: never killed here (n1 owns the package and is killed).
const BROWSER_NODE: &str = "n3";
const DRIVER_PORT: u16 = 9515;

/// The hook: records its environment and its stdin, one pair of files per alert.
const HOOK: &str = r#"#!/bin/sh
set -eu
name="$CLUSTER_ALERT_KIND-${CLUSTER_ALERT_SEQUENCE:-none}-${CLUSTER_ALERT_NODE:-none}-$$"
env | grep '^CLUSTER_ALERT_' | sort > "$DIR/$name.env.tmp"
cat > "$DIR/$name.json.tmp"
mv "$DIR/$name.json.tmp" "$DIR/$name.json"
mv "$DIR/$name.env.tmp" "$DIR/$name.env"
"#;

fn package_toml() -> String {
    r#"name = "web"
nodes = ["n1", "n2", "n3"]
restart = { max = 3, within = "1m" }

[[resource]]
name = "server"
type = "process"
command = ["/bin/sleep", "3600"]
monitor = { interval = "500ms", timeout = "2s" }
"#
    .to_owned()
}

/// One HTTP request to ChromeDriver from inside the browser's node; the JSON answer.
fn webdriver(lab: &str, method: &'static str, path: String, body: Option<Value>) -> Value {
    let lab = lab.to_owned();
    in_netns(&lab, BROWSER_NODE, move || {
        let mut stream = TcpStream::connect(("127.0.0.1", DRIVER_PORT)).expect("connect to chromedriver");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // ChromeDriver keeps the connection open: read the head, then Content-Length bytes.
        let mut response = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let body = loop {
            let read = stream.read(&mut chunk).expect("read chromedriver's answer");
            assert!(read > 0, "chromedriver closed the connection: {}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&chunk[..read]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .expect("a Content-Length");
            if response.len() >= end + 4 + length {
                break response[end + 4..end + 4 + length].to_vec();
            }
        };
        serde_json::from_slice(&body)
            .unwrap_or_else(|err| panic!("chromedriver answered {}: {err}", String::from_utf8_lossy(&response)))
    })
    .join()
    .expect("webdriver thread")
}

/// ChromeDriver in the browser's node, stopped (by its PID) when the test ends; Chromium goes with
/// the session, and the whole node cgroup with the lab.
struct Browser {
    lab: String,
    driver: Child,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start(lab: &Lab) -> Browser {
        let argv: Vec<String> = vec!["chromedriver".into(), format!("--port={DRIVER_PORT}")];
        let log = lab.paths().node_run_dir(BROWSER_NODE).join("chromedriver.log");
        let log = std::fs::File::create(&log).unwrap();
        let driver = lab
            .node_command(BROWSER_NODE, &argv)
            .unwrap()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { lab: lab.name().to_owned(), driver, session: None, profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lab = browser.lab.clone();
            let ready =
                in_netns(&lab, BROWSER_NODE, || TcpStream::connect(("127.0.0.1", DRIVER_PORT)).is_ok()).join().unwrap();
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1200,900",
                format!("--user-data-dir={}", browser.profile.path().display()),
            ],
        }}}});
        let created = webdriver(&browser.lab, "POST", "/session".into(), Some(capabilities));
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser.session = Some(session);
        browser
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_ref().expect("a session"))
    }

    fn open(&self, url: &str) {
        let answer = webdriver(&self.lab, "POST", self.session_path("/url"), Some(json!({ "url": url })));
        assert!(answer["value"].is_null(), "navigating to {url}: {answer}");
    }

    /// Runs `script` in the page; its return value.
    fn evaluate(&self, script: &str) -> Value {
        let answer = webdriver(
            &self.lab,
            "POST",
            self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        );
        answer["value"].clone()
    }

    /// The package rows as the page shows them: name → (phase, owner).
    fn packages(&self) -> BTreeMap<String, (String, String)> {
        let rows = self.evaluate(
            "return Array.from(document.querySelectorAll('#packages tbody tr'))\
             .map(r => [r.dataset.package, r.dataset.phase, r.dataset.owner, r.innerText]);",
        );
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        let text = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
                        // What a person sees must say the same as the data attributes.
                        assert!(text(3).contains(&text(1)) && text(3).contains(&text(2)), "row {row}");
                        (text(0), (text(1), text(2)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A PNG of the page into `CLUSTERLAB_SCREENSHOTS` (a folder), when that is set.
    fn screenshot(&self, lab: &str, when: &str) {
        let Some(folder) = std::env::var_os("CLUSTERLAB_SCREENSHOTS") else { return };
        let path = Path::new(&folder).join(format!("{lab}-page-{when}.png"));
        let answer = webdriver(&self.lab, "GET", self.session_path("/screenshot"), None);
        if let Some(png) = answer["value"].as_str() {
            if let Ok(bytes) = decode_base64(png) {
                let _ = std::fs::write(path, bytes);
            }
        }
    }

    /// Waits until the page shows `web` as `phase` on `owner`, without reloading it.
    fn wait_for(&self, phase: &str, owner: &str, limit: Duration) -> Duration {
        let began = Instant::now();
        loop {
            let packages = self.packages();
            if packages.get("web") == Some(&(phase.to_owned(), owner.to_owned())) {
                return began.elapsed();
            }
            assert!(
                began.elapsed() < limit,
                "the page did not show web {phase} on {owner} within {limit:?}: {packages:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.is_some() {
            let lab = self.lab.clone();
            let path = self.session_path("");
            let _ = std::panic::catch_unwind(move || webdriver(&lab, "DELETE", path, None));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, ()> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Ok(c - b'A'),
        b'a'..=b'z' => Ok(c - b'a' + 26),
        b'0'..=b'9' => Ok(c - b'0' + 52),
        b'+' => Ok(62),
        b'/' => Ok(63),
        _ => Err(()),
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Ok(out)
}

/// Every alert the hook recorded: (environment, stdin document).
fn recorded(dir: &Path) -> Vec<(BTreeMap<String, String>, Value)> {
    let mut alerts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("env") {
            continue;
        }
        let env = std::fs::read_to_string(&path).unwrap();
        let env = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let Ok(json) = std::fs::read_to_string(path.with_extension("json")) else { continue };
        alerts.push((env, serde_json::from_str(&json).unwrap_or(Value::Null)));
    }
    alerts
}

#[test]
fn a_failover_runs_the_alert_hook_and_updates_the_status_page_in_chromium() {
    if !require_root("a_failover_runs_the_alert_hook_and_updates_the_status_page_in_chromium") {
        return;
    }
    let started = Instant::now();
    let (clusterd, clusterctl) = common::clusterd_binaries();
    let name = lab_name("obs");
    let guard = LabGuard::new(&name);
    let mut lab = Lab::up(&LabSpec {
        daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog: false },
        ..LabSpec::bare(&name, 3)
    })
    .unwrap_or_else(|error| panic!("lab {name}: {error}"));
    let ctl = |lab: &Lab, args: &[&str]| {
        lab.clusterctl(BROWSER_NODE, args).unwrap_or_else(|error| panic!("[{name}] clusterctl {args:?}: {error}"))
    };

    // The hook and its output folder (on the host's filesystem, which every node sees).
    let work = tempfile::tempdir().unwrap();
    let alerts_dir = work.path().join("alerts");
    std::fs::create_dir(&alerts_dir).unwrap();
    let hook: PathBuf = work.path().join("record-alert");
    std::fs::write(&hook, HOOK.replace("$DIR", &alerts_dir.display().to_string())).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hook = hook.display().to_string();
    ctl(&lab, &["cluster", "alert", "add", &hook, "--events", "failover,node-lost", "--timeout", "10s"]);
    let package = work.path().join("web.toml");
    std::fs::write(&package, package_toml()).unwrap();
    ctl(&lab, &["pkg", "apply", &package.display().to_string()]);

    // The page in Chromium inside n3, on n3's own listener.
    let browser = Browser::start(&lab);
    browser.open(&format!("http://{LAB_METRICS}/"));
    let shown = browser.wait_for("running", "n1", Duration::from_secs(30));
    eprintln!("[{name}] the page shows web running on n1 ({shown:?} after opening)");
    let title = browser.evaluate("return document.title;");
    assert_eq!(title, "clusterd");
    // The style sheet applied (the page's content security policy allows only its own files).
    let font = browser.evaluate("return getComputedStyle(document.body).fontSize;");
    assert_eq!(font, "14px", "style.css not applied");
    let leader_shown = browser.evaluate("return document.getElementById('summary').textContent;");
    assert!(leader_shown.as_str().unwrap_or_default().contains("leader: n"), "{leader_shown}");
    browser.screenshot(&name, "before");
    assert!(recorded(&alerts_dir).is_empty(), "no failover yet: {:?}", recorded(&alerts_dir));

    // Power loss of the owner (n1, also the Raft leader after `cluster init`).
    let killed = Instant::now();
    lab.kill("n1").unwrap();
    let updated = browser.wait_for("running", "n2", Duration::from_secs(30));
    eprintln!("[{name}] the page showed web running on n2 {updated:?} after n1 was killed, without a reload");
    browser.screenshot(&name, "after");
    let events = browser.evaluate(
        "return Array.from(document.querySelectorAll('#events tbody tr')).map(r => r.innerText).join('\\n');",
    );
    assert!(events.as_str().unwrap_or_default().contains("node n1 lost its lease"), "events on the page: {events}");

    // The hook ran on the new leader for the failover and for the lost node.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (failover, lost) = loop {
        let alerts = recorded(&alerts_dir);
        let failover =
            alerts.iter().find(|(env, _)| env.get("CLUSTER_ALERT_KIND").map(String::as_str) == Some("failover"));
        let lost =
            alerts.iter().find(|(env, _)| env.get("CLUSTER_ALERT_KIND").map(String::as_str) == Some("node-lost"));
        if let (Some(failover), Some(lost)) = (failover, lost) {
            break (failover.clone(), lost.clone());
        }
        assert!(Instant::now() < deadline, "[{name}] alerts recorded: {alerts:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("[{name}] failover alert {:?} after the kill: {:#?}", killed.elapsed(), failover.0);
    let (env, document) = failover;
    let var = |name: &str| env.get(&format!("CLUSTER_ALERT_{name}")).cloned().unwrap_or_default();
    assert_eq!(var("PACKAGE"), "web");
    assert_eq!(var("NODE"), "n2", "the new owner");
    assert_eq!(var("TASK"), "running -> starting");
    assert_eq!(var("PHASE_FROM"), "running");
    assert_eq!(var("PHASE_TO"), "starting");
    assert!(var("DESC").starts_with("node n1 lost its lease"), "{env:?}");
    assert_eq!(var("KINDS"), "failover,package");
    assert!(var("SEQUENCE").parse::<u64>().is_ok(), "{env:?}");
    assert!(var("EPOCH").parse::<u64>().unwrap() >= 2, "{env:?}");
    assert!(["n2", "n3"].contains(&var("LEADER").as_str()), "run by the new leader: {env:?}");
    assert!(var("TIMESTAMP").ends_with('Z') && var("TIMESTAMP_MS").parse::<u64>().is_ok(), "{env:?}");
    assert_eq!(document["package"], "web");
    assert_eq!(document["sequence"].as_u64().map(|s| s.to_string()), Some(var("SEQUENCE")));
    assert_eq!(document["phase_to"], "starting");
    let (env, document) = lost;
    assert_eq!(env.get("CLUSTER_ALERT_NODE").map(String::as_str), Some("n1"));
    assert_eq!(env.get("CLUSTER_ALERT_SEQUENCE").map(String::as_str), Some(""), "node-lost is not replicated");
    assert_eq!(document["what"], "lost");

    // The new leader records the delivery, so the alert is not repeated by a later leader.
    let listed: Value = serde_json::from_str(&ctl(&lab, &["cluster", "alert", "list", "--output", "json"])).unwrap();
    let next = listed["next_event"].as_u64().unwrap();
    assert!(next > var("SEQUENCE").parse::<u64>().unwrap(), "{listed}");
    drop(browser);
    eprintln!("[{name}] done after {:?}", started.elapsed());
    drop(lab);
    drop(guard);
}
