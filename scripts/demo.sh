#!/usr/bin/env bash
# The README's main job: build, bring up a 3-node cluster in the lab (network namespaces), run the
# example package of packages.d/lab-web.toml (a VIP, a filesystem on the shared LUN, a web server),
# kill its owner's node and show the failover as an outside client sees it. Run as root.
# The lab is torn down at the end, on Ctrl-C and on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (the lab creates network namespaces and a loop device)" >&2
  exit 1
fi
lab=demo   # packages.d/lab-web.toml mounts LABEL=cl-demo, the LUN of this lab
scripts/install-deps.sh
echo "== building clusterd, clusterctl and clusterlab"
cargo build --locked -p clusterd -p clusterctl -p cluster-lab
export CLUSTERD_BIN="$PWD/target/debug/clusterd" CLUSTERCTL_BIN="$PWD/target/debug/clusterctl"
clusterlab="$PWD/target/debug/clusterlab"
lab() { "$clusterlab" --name "$lab" "$@"; }
step() { printf '\n== %s\n' "$*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
reachable() { lab client -- timeout 0.3 bash -c 'exec 3<>/dev/tcp/192.0.2.100/8080' 2>/dev/null; }
owner() { lab exec "$1" -- clusterctl --output json pkg status lab-web | sed -n 's/.*"owner":"\([^"]*\)".*/\1/p'; }

teardown() {
  trap - EXIT INT TERM
  step "tearing down lab $lab"
  lab down
}
trap teardown EXIT
trap 'exit 130' INT TERM

lab down >/dev/null 2>&1 || true
step "a 3-node cluster: a network namespace per node on one bridge (192.0.2.0/24), a shared LUN"
lab up --nodes 3 --lun-mib 32

step "the replicated key-value store, from any node"
lab exec n2 -- clusterctl kv set demo/greeting hello
printf 'n3 reads demo/greeting: '; lab exec n3 -- clusterctl kv get demo/greeting

step "apply packages.d/lab-web.toml: VIP 192.0.2.100, ext4 on the shared LUN, a web server"
lab exec n1 -- clusterctl pkg apply "$PWD/packages.d/lab-web.toml"
until reachable; do sleep 0.1; done
lab exec n1 -- clusterctl pkg status lab-web
echo "the client namespace reaches http://192.0.2.100:8080"

step "status (crm_mon-like)"
lab exec n2 -- clusterctl status

victim=$(owner n2)
survivor=n1
[ "$victim" = n1 ] && survivor=n2
step "killing $victim, the owner (power loss: every process, link down)"
started=$(now_ms)
lab kill "$victim"
until reachable; do sleep 0.02; done
elapsed=$(( $(now_ms) - started ))
echo "the client reaches the VIP again ${elapsed} ms after the kill, now served by $(owner "$survivor")"

step "status after the failover, seen from $survivor"
lab exec "$survivor" -- clusterctl status
step "what happened (clusterctl events)"
lab exec "$survivor" -- clusterctl events | tail -6

step "powering $victim on again: it rejoins (the package stays on $survivor: failback = manual)"
lab start "$victim"
until lab exec "$survivor" -- clusterctl status 2>/dev/null | grep -q "^$victim .* alive "; do sleep 0.1; done

step "stopping clusterd on $survivor as systemctl stop does (SIGTERM): it hands the package over first"
started=$(now_ms)
lab stop-daemon "$survivor"
echo "clusterd on $survivor exited after $(( $(now_ms) - started )) ms"
until reachable; do sleep 0.02; done
echo "the client reaches the VIP again $(( $(now_ms) - started )) ms after the SIGTERM, now served by $(owner "$victim")"
lab exec "$victim" -- clusterctl status
survivor=$victim

cat <<EOT

Explore while the lab is up, from another terminal (as root):
  $clusterlab --name $lab exec $survivor -- clusterctl status
  $clusterlab --name $lab start $victim               # power the killed node back on
  $clusterlab --name $lab exec $survivor -- clusterctl pkg move lab-web --to $victim
  $clusterlab --name $lab partition "n1 / n2,n3"     # heal, pause, kill-daemon ... (docs/lab.md)
  $clusterlab --name $lab down                       # tear down by hand
EOT
if [ -t 0 ]; then
  read -r -p "Press Enter to tear the lab down (Ctrl-C works too). " _ || true
fi
