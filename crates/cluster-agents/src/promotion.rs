//! Promotion scores of OCF agents: Pacemaker's agents set how fit an instance is to be promoted with
//! `crm_master -l reboot -v N` (or `crm_attribute --promotion -v N`, which `ocf_promotion_score` of
//! `ocf-shellfuncs` calls as `${HA_SBIN_DIR}/crm_attribute -p -v N`), remove it with `-D`, and read
//! it with `-G`. clusterd has no CIB: it installs a small stand-in for both commands and runs the
//! agents of promoted resources with `HA_SBIN_DIR` and `PATH` pointing at it, and with
//! `CLUSTERD_PROMOTION_SCORE` naming the file the score of that instance and resource goes to. The
//! executor reads the files after the agents ran and reports the score to the cluster.
//!
//! ```text
//!   <dir>/bin/crm_master, <dir>/bin/crm_attribute   the stand-in (one POSIX shell script)
//!   <dir>/scores/<instance>.<resource>               one score per instance and resource
//! ```
//! `<dir>` lives on a runtime filesystem (under `/run`), so that scores, like Pacemaker's
//! `-l reboot` attributes, end with a reboot of the node.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The stand-in for `crm_master` and `crm_attribute --promotion` (`-p`): `-v N` / `--update N` sets the
/// score, `-D` / `--delete` removes it, `-G` / `--query` prints it (with `-q` / `--quiet`: the value
/// alone); the other options (`-l reboot`, `-N node`, `-n name`, `-r resource`) are accepted and
/// ignored. Any other use of `crm_attribute` (a node attribute of Pacemaker's CIB, as `ocf:heartbeat:pgsql`
/// keeps) fails with a message: clusterd has no CIB.
pub const STAND_IN: &str = r#"#!/bin/sh
# clusterd's stand-in for Pacemaker's crm_master and crm_attribute --promotion: the OCF agents clusterd
# runs set, remove or read the promotion score of their instance with it (see clusterd's docs/agents.md).
file="${CLUSTERD_PROMOTION_SCORE:-}"
if [ -z "$file" ]; then
  echo "$(basename "$0"): not run by clusterd for a promoted resource (CLUSTERD_PROMOTION_SCORE is unset)" >&2
  exit 1
fi
action=""
value=""
quiet=""
promotion=""
[ "$(basename "$0")" = crm_master ] && promotion=1
while [ $# -gt 0 ]; do
  case "$1" in
    -p|--promotion|--promotion=*) promotion=1; shift ;;
    -v|--update|--attr-value) value="$2"; action=set; shift 2 ;;
    --update=*|--attr-value=*) value="${1#*=}"; action=set; shift ;;
    -v*) value="${1#-v}"; action=set; shift ;;
    -D|--delete) action=delete; shift ;;
    -G|--query) action=query; shift ;;
    -q|-Q|--quiet) quiet=1; shift ;;
    -l|--lifetime|-N|--node|-n|--name|-r|--resource|-t|--type|-i|--id|-s|--set-name|-z|--utilization) shift 2 ;;
    *) shift ;;
  esac
done
if [ -z "$promotion" ]; then
  echo "$(basename "$0"): clusterd's stand-in keeps promotion scores only (crm_master, crm_attribute --promotion); other node attributes need Pacemaker's CIB" >&2
  exit 1
fi
case "$action" in
  set)
    case "$value" in
      INFINITY|+INFINITY|-INFINITY) ;;
      ''|*[!0-9-]*|?*-*) echo "$(basename "$0"): invalid score '$value'" >&2; exit 1 ;;
    esac
    printf '%s\n' "$value" > "$file.new" && mv -f "$file.new" "$file"
    ;;
  delete) rm -f "$file" ;;
  query)
    if [ ! -f "$file" ]; then
      [ -n "$quiet" ] || echo "Error performing operation: No such device or address" >&2
      exit 105
    fi
    if [ -n "$quiet" ]; then cat "$file"; else printf 'scope=status  name=master-%s value=%s\n' "${OCF_RESOURCE_INSTANCE:-}" "$(cat "$file")"; fi
    ;;
  *) echo "$(basename "$0"): expected -v SCORE, -D or -G" >&2; exit 1 ;;
esac
"#;

/// Installs the stand-in under `dir` (`bin/crm_master`, `bin/crm_attribute`) and makes `scores/`.
pub fn install(dir: &Path) -> std::io::Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(dir.join("scores"))?;
    for name in ["crm_master", "crm_attribute"] {
        let path = bin.join(name);
        let temporary = bin.join(format!(".{name}.new"));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(STAND_IN.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&temporary, &path)?;
    }
    Ok(())
}

/// The environment of an agent whose promotion score goes to `score_file`.
pub(crate) fn environment(dir: &Path, score_file: &Path) -> BTreeMap<String, String> {
    let bin: PathBuf = dir.join("bin");
    let path = match std::env::var("PATH") {
        Ok(path) if !path.is_empty() => format!("{}:{path}", bin.display()),
        _ => format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
    };
    BTreeMap::from([
        ("HA_SBIN_DIR".to_owned(), bin.display().to_string()),
        ("PATH".to_owned(), path),
        ("CLUSTERD_PROMOTION_SCORE".to_owned(), score_file.display().to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn run(dir: &Path, score: &Path, command: &str, args: &[&str]) -> (Option<i32>, String) {
        let output = Command::new(dir.join("bin").join(command))
            .args(args)
            .env("CLUSTERD_PROMOTION_SCORE", score)
            .env("OCF_RESOURCE_INSTANCE", "data")
            .output()
            .expect("the stand-in runs");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    #[test]
    fn the_stand_in_sets_removes_and_reads_a_score_as_agents_call_it() {
        let directory = tempfile::tempdir().expect("tempdir");
        install(directory.path()).expect("install");
        let score = directory.path().join("scores").join("db:0.data");
        // As ocf_promotion_score calls it (`crm_attribute -p -v 5`) and as crm_master is called.
        assert_eq!(run(directory.path(), &score, "crm_attribute", &["-p", "-v", "5"]).0, Some(0));
        assert_eq!(std::fs::read_to_string(&score).unwrap(), "5\n");
        assert_eq!(run(directory.path(), &score, "crm_master", &["-l", "reboot", "-v", "10"]).0, Some(0));
        assert_eq!(crate::parse_promotion_score(&std::fs::read_to_string(&score).unwrap()), Some(10));
        assert_eq!(run(directory.path(), &score, "crm_master", &["-Q", "-G"]), (Some(0), "10\n".into()));
        assert_eq!(run(directory.path(), &score, "crm_master", &["-l", "reboot", "-v", "-INFINITY"]).0, Some(0));
        assert_eq!(crate::parse_promotion_score(&std::fs::read_to_string(&score).unwrap()), Some(-1_000_000));
        assert_eq!(run(directory.path(), &score, "crm_master", &["-v", "ten"]).0, Some(1));
        assert_eq!(run(directory.path(), &score, "crm_master", &["-l", "reboot", "-D"]).0, Some(0));
        assert!(!score.exists());
        assert_eq!(run(directory.path(), &score, "crm_master", &["-G", "-q"]).0, Some(105));
        // A node attribute, not a promotion score: refused, nothing written.
        assert_eq!(
            run(directory.path(), &score, "crm_attribute", &["-N", "n1", "-n", "pgsql-status", "-v", "PRI"]).0,
            Some(1)
        );
        assert!(!score.exists());
    }
}
