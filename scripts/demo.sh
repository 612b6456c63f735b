#!/usr/bin/env bash
# The README's main job: build, bring up a 3-node cluster in the lab (network namespaces), use the
# replicated key-value store, kill the leader's node and show the failover. Run as root.
# The lab is torn down at the end, on Ctrl-C and on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (the lab creates network namespaces)" >&2
  exit 1
fi
lab=${LAB:-demo}
scripts/install-deps.sh
echo "== building clusterd, clusterctl and clusterlab"
cargo build --locked -p clusterd -p clusterctl -p cluster-lab
export CLUSTERD_BIN="$PWD/target/debug/clusterd" CLUSTERCTL_BIN="$PWD/target/debug/clusterctl"
clusterlab="$PWD/target/debug/clusterlab"
lab() { "$clusterlab" --name "$lab" "$@"; }
step() { printf '\n== %s\n' "$*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

teardown() {
  trap - EXIT INT TERM
  step "tearing down lab $lab"
  lab down
}
trap teardown EXIT
trap 'exit 130' INT TERM

lab down >/dev/null 2>&1 || true
step "a 3-node cluster: one network namespace per node, bridged, addresses from 192.0.2.0/24"
lab up --nodes 3

step "writes and reads from every node (followers forward to the leader)"
lab exec n1 -- clusterctl kv set demo/greeting hello
lab exec n2 -- clusterctl kv set demo/answer 42
lab exec n3 -- clusterctl kv cas demo/answer 42 43
printf 'n3 reads demo/greeting: '; lab exec n3 -- clusterctl kv get demo/greeting
lab exec n1 -- clusterctl kv list demo/

step "status"
lab exec n2 -- clusterctl status
leader=$(lab exec n1 -- clusterctl --output json status | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p')
survivor=n1
[ "$leader" = n1 ] && survivor=n2

step "killing $leader, the leader (power loss: every process, link down)"
started=$(now_ms)
lab kill "$leader"
until lab exec "$survivor" -- clusterctl kv set demo/after-failover yes 2>/dev/null; do sleep 0.02; done
elapsed=$(( $(now_ms) - started ))
echo "the store accepted a write again ${elapsed} ms after the kill (election of a new leader included)"

step "status after the failover, seen from $survivor"
lab exec "$survivor" -- clusterctl status
printf 'demo/greeting is still: '; lab exec "$survivor" -- clusterctl kv get demo/greeting

cat <<EOT

Explore while the lab is up, from another terminal (as root):
  $clusterlab --name $lab exec $survivor -- clusterctl status
  $clusterlab --name $lab start $leader          # power the killed node back on
  $clusterlab --name $lab partition "n1 / n2,n3"  # and heal, pause, kill-daemon ... (docs/lab.md)
  $clusterlab --name $lab down                   # tear down by hand
EOT
if [ -t 0 ]; then
  read -r -p "Press Enter to tear the lab down (Ctrl-C works too). " _ || true
fi
