//! clusterctl against real clusterd processes: output, JSON and the documented exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cluster_testkit::TestCluster;

fn clusterctl() -> &'static str {
    env!("CARGO_BIN_EXE_clusterctl")
}

/// `clusterd` is built next to `clusterctl` by a workspace build (`cargo test --workspace`).
fn clusterd() -> PathBuf {
    let path = Path::new(clusterctl()).with_file_name("clusterd");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn run(socket: &Path, args: &[&str]) -> Output {
    Command::new(clusterctl()).arg("--socket").arg(socket).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn ca_init_and_issue_write_certificates_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ok = Command::new(clusterctl()).args(["ca", "init", "--dir"]).arg(&pki).output().unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let issued = Command::new(clusterctl())
        .args(["ca", "issue", "n1", "--ip", "192.0.2.11", "--dns", "n1.example", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", stderr(&issued));
    let mode = |name: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(pki.join(name)).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("n1.key"), 0o600);
    assert!(pki.join("n1.crt").exists());
    let again = Command::new(clusterctl()).args(["ca", "init", "--dir"]).arg(&pki).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("ca.crt already exists"), "{}", stderr(&again));
    let bad = Command::new(clusterctl())
        .args(["ca", "issue", "n1", "--ip", "not-an-ip", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// Completion scripts and man pages come from the parser: every command is in them, an unknown shell
/// is a usage error.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let bash = Command::new(clusterctl()).args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = stdout(&bash);
    assert!(script.contains("complete -F _clusterctl"), "not a bash completion script:\n{script}");
    for word in ["pkg", "apply", "transfer-leader", "completions", "--endpoint"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let zsh = Command::new(clusterctl()).args(["completions", "zsh"]).output().unwrap();
    assert!(zsh.status.success() && stdout(&zsh).starts_with("#compdef clusterctl"), "{}", stdout(&zsh));
    let bad = Command::new(clusterctl()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));

    let dir = tempfile::tempdir().unwrap();
    let man = Command::new(clusterctl()).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(man.status.success(), "{}", stderr(&man));
    let main_page = std::fs::read_to_string(dir.path().join("clusterctl.1")).unwrap();
    assert!(main_page.contains(".TH CLUSTERCTL 1"), "{main_page}");
    for section in [".SH SYNOPSIS", ".SH EXIT STATUS", "clusterctl\\-pkg(1)"] {
        assert!(main_page.contains(section), "clusterctl.1 lacks {section}");
    }
    let apply = std::fs::read_to_string(dir.path().join("clusterctl-pkg-apply.1")).unwrap();
    assert!(apply.contains("Validate, then load package definitions"), "{apply}");
    // Hidden commands and clap's own `help` get no page.
    assert!(!dir.path().join("clusterctl-man.1").exists() && !dir.path().join("clusterctl-help.1").exists());
    // Every page says what its command does (an empty NAME line is lintian's `bad-whatis-entry`,
    // which fails the package test: a merge once moved `report`'s description onto `join`).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let page = std::fs::read_to_string(&path).unwrap();
        let name = page.split(".SH NAME\n").nth(1).and_then(|rest| rest.lines().next()).unwrap_or_default();
        assert!(name.contains(" \\- "), "{}: NAME line `{name}` has no description", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_print_values_and_use_the_documented_exit_codes() {
    let mut cluster = TestCluster::new(clusterd(), 131, 1);
    cluster.form().await;
    let socket = cluster.nodes[0].socket.clone();
    tokio::task::spawn_blocking(move || {
        let set = run(&socket, &["kv", "set", "web/port", "8080"]);
        assert!(set.status.success(), "{}", stderr(&set));
        let get = run(&socket, &["kv", "get", "web/port"]);
        assert_eq!((get.status.code(), stdout(&get).as_str()), (Some(0), "8080\n"));

        let missing = run(&socket, &["kv", "get", "web/none"]);
        assert_eq!(missing.status.code(), Some(3));
        assert!(stderr(&missing).contains("key `web/none` not found"));

        let mismatch = run(&socket, &["kv", "cas", "web/port", "9999", "1"]);
        assert_eq!(mismatch.status.code(), Some(4));
        assert_eq!(stdout(&mismatch), "8080\n", "the current value is printed");
        assert!(run(&socket, &["kv", "cas", "web/port", "8080", "8081"]).status.success());
        assert_eq!(stdout(&run(&socket, &["kv", "get", "web/port"])), "8081\n");

        assert!(run(&socket, &["kv", "cas", "web/new", "--absent", "x"]).status.success());
        assert_eq!(run(&socket, &["kv", "cas", "web/new", "--absent", "y"]).status.code(), Some(4));

        let list = run(&socket, &["kv", "list", "web/"]);
        assert_eq!(stdout(&list), "web/new\tx\nweb/port\t8081\n");
        let json = run(&socket, &["--output", "json", "kv", "list", "web/"]);
        let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(parsed[1]["key"], "web/port");

        assert!(run(&socket, &["kv", "del", "web/new"]).status.success());
        assert_eq!(run(&socket, &["kv", "del", "web/new"]).status.code(), Some(3));

        let json_error = run(&socket, &["--output", "json", "kv", "cas", "web/port", "1", "2"]);
        assert_eq!(json_error.status.code(), Some(4));
        let parsed: serde_json::Value = serde_json::from_slice(&json_error.stdout).unwrap();
        assert_eq!(parsed["current"], "8081");
        assert!(parsed["error"].as_str().unwrap().contains("web/port"));

        let usage = run(&socket, &["kv", "cas", "k"]);
        assert_eq!(usage.status.code(), Some(2));
        let usage = run(&socket, &["kv", "frobnicate"]);
        assert_eq!(usage.status.code(), Some(2));

        let long_key = "k".repeat(2000);
        let oversize = run(&socket, &["kv", "set", &long_key, "v"]);
        assert_eq!(oversize.status.code(), Some(1));
        assert!(stderr(&oversize).contains("key is 2000 bytes: expected at most 1024 bytes"), "{}", stderr(&oversize));

        let status = run(&socket, &["status"]);
        assert!(stdout(&status).starts_with("leader: n1"), "{}", stdout(&status));
        let status = run(&socket, &["--output", "json", "status"]);
        let parsed: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(parsed["leader"], "n1");
        assert_eq!(parsed["nodes"][0]["role"], "voter");

        let unreachable = run(Path::new("/nonexistent/clusterd.sock"), &["status"]);
        assert_eq!(unreachable.status.code(), Some(1));
        assert!(stderr(&unreachable).contains("/nonexistent/clusterd.sock"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_endpoint_with_the_admin_certificate_and_no_quorum_exit_code() {
    let mut cluster = TestCluster::new(clusterd(), 132, 3);
    cluster.form().await;
    let files = cluster.admin_files();
    let address = cluster.nodes[1].address.clone();
    let remote = move |args: &[&str]| {
        Command::new(clusterctl())
            .args(["--endpoint", &address, "--ca"])
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key)
            .args(args)
            .output()
            .unwrap()
    };
    let set = tokio::task::spawn_blocking({
        let remote = remote.clone();
        move || remote(&["kv", "set", "remote", "yes"])
    })
    .await
    .unwrap();
    assert!(set.status.success(), "{}", stderr(&set));
    let settings = run(&cluster.nodes[0].socket, &["cluster", "settings"]);
    let settings = stdout(&settings);
    assert!(settings.starts_with("snapshot_period = 10000\nheartbeat = 100ms\nlease = 1000ms\n"), "{settings}");
    let bad = run(&cluster.nodes[0].socket, &["cluster", "set", "snapshot_period", "3"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("invalid value `3` for setting `snapshot_period`"), "{}", stderr(&bad));

    // Two of three voters gone: no quorum, exit 5 after the request timeout.
    cluster.kill(0);
    cluster.kill(2);
    let no_quorum = tokio::task::spawn_blocking(move || remote(&["kv", "set", "lonely", "1"])).await.unwrap();
    assert_eq!(no_quorum.status.code(), Some(5), "{}", stderr(&no_quorum));
}

#[test]
fn pkg_validate_accepts_the_shipped_examples_and_reports_every_error() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages.d");
    let ok = Command::new(clusterctl()).args(["pkg", "validate"]).arg(&examples).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("ok"), "{}", stdout(&ok));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"web\"\nnodes = []\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"300.1.2.3/24\"\ninterface = \"eth0\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let failed = Command::new(clusterctl()).args(["pkg", "validate"]).arg(&bad).output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let errors = stderr(&failed);
    assert!(errors.contains("bad.toml:"), "{errors}");
    assert!(errors.lines().count() >= 3, "every error is reported: {errors}");
    assert!(errors.contains("colour"), "{errors}");
    assert!(errors.contains("address"), "{errors}");
    assert!(errors.contains("nodes"), "{errors}");

    // A directory is checked as a set: each file is valid, together they are not.
    let set = tempfile::tempdir().unwrap();
    let package = |name: &str, depends: &str| {
        format!(
            "name = \"{name}\"\ndepends = [{depends}]\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\n\
             address = \"192.0.2.1/24\"\ninterface = \"eth0\"\n"
        )
    };
    std::fs::write(set.path().join("app.toml"), package("app", "{ package = \"db\", where = \"same-node\" }")).unwrap();
    std::fs::write(set.path().join("db.toml"), package("db", "{ package = \"app\", where = \"any-node\" }")).unwrap();
    std::fs::write(set.path().join("web.toml"), package("web", "{ package = \"cache\", where = \"any-node\" }"))
        .unwrap();
    let together = Command::new(clusterctl()).args(["pkg", "validate"]).arg(set.path()).output().unwrap();
    assert_eq!(together.status.code(), Some(1), "{}", stdout(&together));
    let errors = stderr(&together);
    assert!(errors.contains("packages together: package `web` depends on `cache`, which is not defined"), "{errors}");
    assert!(errors.contains("packages together: dependency cycle: app -> db -> app"), "{errors}");
    let json =
        Command::new(clusterctl()).args(["pkg", "validate", "--output", "json"]).arg(set.path()).output().unwrap();
    let value: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(value["valid"], false);
    assert_eq!(value["set_errors"].as_array().map(Vec::len), Some(2), "{value}");
}
